//! The commands, end to end through the binary.

use super::{checksum, generate, migrate, recast, upcasters};
use predicates::str::contains;
use std::path::Path;

#[test]
fn migrate_jsonl_to_jsonl_and_sled_give_the_same_events_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 3000, 200, 11);
    migrate(d, "log.jsonl", "out.jsonl")
        .assert()
        .success()
        .stdout(contains("source events"));
    migrate(d, "log.jsonl", "sled:out.sled").assert().success();
    let jsonl = checksum(d, "out.jsonl");
    assert_eq!(jsonl, checksum(d, "sled:out.sled"));
    assert!(!jsonl.contains("(0 events)"), "{jsonl}");
    for target in ["out.jsonl", "sled:out.sled"] {
        recast(d)
            .args([
                "verify",
                "--from",
                "log.jsonl",
                "--to",
                target,
                "--upcasters",
            ])
            .arg(upcasters())
            .assert()
            .success()
            .stdout(contains("OK: every source event is accounted for"));
    }
    // Running a finished job again changes nothing.
    migrate(d, "log.jsonl", "out.jsonl").assert().success();
    assert_eq!(checksum(d, "out.jsonl"), jsonl);
}

#[test]
fn verify_fails_with_exit_3_when_the_target_differs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 200, 20, 3);
    migrate(d, "log.jsonl", "out.jsonl").assert().success();
    let text = std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    let cut: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(d.join("out.jsonl"), cut.join("\n") + "\n").unwrap();
    recast(d)
        .args([
            "verify",
            "--from",
            "log.jsonl",
            "--to",
            "out.jsonl",
            "--json",
            "--upcasters",
        ])
        .arg(upcasters())
        .assert()
        .code(3)
        .stdout(contains("\"ok\": false"))
        .stdout(contains("target holds"));
}

#[test]
fn dry_run_writes_nothing_and_reports_the_same_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 500, 50, 5);
    let dry = migrate(d, "log.jsonl", "out.jsonl")
        .args(["--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(dry.status.success());
    assert!(!d.join("out.jsonl").exists());
    let real = migrate(d, "log.jsonl", "out.jsonl")
        .arg("--json")
        .output()
        .unwrap();
    let counts =
        |out: &[u8]| serde_json::from_slice::<serde_json::Value>(out).unwrap()["counts"].clone();
    assert_eq!(counts(&dry.stdout), counts(&real.stdout));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&dry.stdout).unwrap()["dry_run"],
        true
    );
}

#[test]
fn the_source_is_never_modified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = generate(d, "log.jsonl", 300, 30, 9);
    let before = std::fs::read(&log).unwrap();
    migrate(d, "log.jsonl", "sled:out").assert().success();
    migrate(d, "sled:out", "again.jsonl")
        .arg("--template")
        .arg("{stream}-v2")
        .assert()
        .success();
    assert_eq!(std::fs::read(&log).unwrap(), before);
    migrate(d, "log.jsonl", "jsonl:log.jsonl")
        .assert()
        .failure()
        .stderr(contains("never writes into its source"));
}

#[test]
fn plan_cat_export_and_templates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 400, 40, 4);
    recast(d)
        .args(["plan", "--from", "log.jsonl", "--upcasters"])
        .arg(upcasters())
        .assert()
        .success()
        .stdout(contains("chain check: OK, 9 upcasters"))
        .stdout(contains("040-cart-viewed-v1.toml"));
    let raw = recast(d)
        .args(["cat", "order-1", "--from", "log.jsonl"])
        .output()
        .unwrap();
    assert!(raw.status.success());
    let upcast = recast(d)
        .args([
            "cat",
            "order-1",
            "--from",
            "log.jsonl",
            "--upcast",
            "--upcasters",
        ])
        .arg(upcasters())
        .output()
        .unwrap();
    let upcast = String::from_utf8(upcast.stdout).unwrap();
    assert!(
        upcast.lines().count() > 0 && upcast.lines().all(|l| l.contains("\"stream\":\"order-1\""))
    );
    assert!(
        !upcast.contains("\"ItemAdded\""),
        "ItemAdded should be renamed on read"
    );
    migrate(d, "log.jsonl", "v2.jsonl")
        .args(["--template", "{category}_v2-{id}"])
        .assert()
        .success();
    recast(d)
        .args(["export", "--from", "v2.jsonl", "--out", "exported.jsonl"])
        .assert()
        .success();
    let exported = std::fs::read_to_string(d.join("exported.jsonl")).unwrap();
    assert!(exported.contains("\"stream\":\"order_v2-1\""));
}

#[test]
fn generate_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = generate(dir.path(), "a.jsonl", 1000, 30, 77);
    let b = generate(dir.path(), "b.jsonl", 1000, 30, 77);
    assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn import_the_wikimedia_sample_with_field_mappings() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/realdata/wikimedia_recentchange_2023-07-29.ndjson");
    if !sample.exists() {
        eprintln!("skipped: {} is absent", sample.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let import = |to: &str| {
        recast(d)
            .args(["import"])
            .arg(&sample)
            .args([
                "--to",
                to,
                "--stream",
                "/title",
                "--type",
                "/type",
                "--id",
                "/meta/id",
                "--timestamp",
                "/meta/dt",
                "--json",
            ])
            .output()
            .unwrap()
    };
    let first = import("sled:wiki");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(
        (
            report["events"].as_u64(),
            report["streams"].as_u64(),
            report["written"].as_u64()
        ),
        (Some(100), Some(87), Some(100))
    );
    // Ids come from /meta/id, so a second import writes nothing.
    let second: serde_json::Value = serde_json::from_slice(&import("sled:wiki").stdout).unwrap();
    assert_eq!(
        (second["written"].as_u64(), second["duplicates"].as_u64()),
        (Some(0), Some(100))
    );
    assert!(checksum(d, "sled:wiki").ends_with("(100 events)"));
    let stream = recast(d)
        .args(["cat", "EFL Championship", "--from", "sled:wiki"])
        .output()
        .unwrap();
    assert!(String::from_utf8(stream.stdout)
        .unwrap()
        .contains("\"recorded_at\":\"2023-07-29T07:51:39Z\""));
}

#[test]
fn run_is_the_demo_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        d.join("recast.toml"),
        format!(
            "[source]\nlocation = \"{}\"\n[target]\nlocation = \"sled:demo\"\n[upcasters]\ndir = \"{}\"\n[migrate]\nstate = \"state\"\n[projections]\ndir = \"{}\"\n[rebuild]\nreadmodels = \"sled:rm\"\n",
            root.join("streams/demo").display(),
            upcasters().display(),
            root.join("projections").display()
        ),
    )
    .unwrap();
    recast(d)
        .arg("run")
        .assert()
        .success()
        .stdout(contains("OK: every source event is accounted for"))
        .stdout(contains("split"));
    recast(d).arg("run").assert().success();
    recast(d).args(["run", "--fresh"]).assert().success();
}
