//! The rebuilder through the binary: rebuild, status, query, swap/rollback/prune, follow,
//! partitions, error policies and bad projection files.

use super::{generate, recast, upcasters};
use assert_cmd::Command;
use predicates::str::contains;
use std::path::{Path, PathBuf};

fn projections() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("projections")
}

/// `recast rebuild` of `from` into `readmodels` with the demo projections and upcasters.
pub fn rebuild(d: &Path, from: &str, readmodels: &str) -> Command {
    Command::from_std(rebuild_process(d, from, readmodels))
}

/// The same rebuild as a plain std command, to spawn and kill.
pub fn rebuild_process(d: &Path, from: &str, readmodels: &str) -> std::process::Command {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("recast"));
    command
        .current_dir(d)
        .args([
            "rebuild",
            "--from",
            from,
            "--readmodels",
            readmodels,
            "--upcasters",
        ])
        .arg(upcasters())
        .arg("--projections")
        .arg(projections());
    command
}

/// The demo projections hold the same rows in both stores.
pub fn assert_same_read_models(d: &Path, one: &str, other: &str) {
    for name in ["order_summary", "customer_orders", "sku_sales"] {
        assert_eq!(
            readmodel_checksum(d, one, name),
            readmodel_checksum(d, other, name),
            "{name}: {one} vs {other}"
        );
    }
}

pub fn readmodel_checksum(d: &Path, readmodels: &str, name: &str) -> String {
    let out = recast(d)
        .args(["checksum", "--readmodel", name, "--readmodels", readmodels])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
}

#[test]
fn rebuild_then_status_query_and_blue_green() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 2000, 100, 3);
    rebuild(d, "log.jsonl", "sled:rm")
        .assert()
        .success()
        .stdout(contains("order_summary"));
    let status = recast(d)
        .args([
            "status",
            "--json",
            "--readmodels",
            "sled:rm",
            "--from",
            "log.jsonl",
        ])
        .output()
        .unwrap();
    let status = json(&status.stdout);
    let rows = status.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r["live"] == 1 && r["lag"] == 0 && r["position"] == 1999),
        "{status}"
    );
    let row = recast(d)
        .args([
            "query",
            "order_summary",
            "order-1",
            "--readmodels",
            "sled:rm",
        ])
        .output()
        .unwrap();
    assert!(json(&row.stdout)["state"]["status"].is_string());
    let all = recast(d)
        .args(["query", "customer_orders", "--readmodels", "sled:rm"])
        .output()
        .unwrap();
    assert!(String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .all(|l| l.starts_with("{\"key\":\"user-")));

    // A new generation builds beside the live one; swap, rollback and prune move between them.
    let before = super::rebuild::readmodel_checksum(d, "sled:rm", "customer_orders");
    recast(d)
        .args(["swap", "customer_orders", "--readmodels", "sled:rm"])
        .assert()
        .code(1)
        .stderr(contains("nothing to swap to"));
    recast(d)
        .args(["rollback", "customer_orders", "--readmodels", "sled:rm"])
        .assert()
        .code(1)
        .stderr(contains("no previous generation"));
    rebuild(d, "log.jsonl", "sled:rm")
        .args(["customer_orders", "--new"])
        .assert()
        .success();
    let status = json(
        &recast(d)
            .args(["status", "--json", "--readmodels", "sled:rm"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(status[0]["next"], "2 ready");
    recast(d)
        .args(["swap", "customer_orders", "--readmodels", "sled:rm"])
        .assert()
        .success()
        .stdout(contains("generation 2 is live"));
    assert_eq!(
        readmodel_checksum(d, "sled:rm", "customer_orders"),
        before,
        "same definition, same rows"
    );
    recast(d)
        .args(["rollback", "customer_orders", "--readmodels", "sled:rm"])
        .assert()
        .success()
        .stdout(contains("generation 1 is live"));
    recast(d)
        .args(["prune", "customer_orders", "--readmodels", "sled:rm"])
        .assert()
        .success()
        .stdout(contains("[2]"));
    recast(d)
        .args(["swap", "customer_orders", "--readmodels", "sled:rm"])
        .assert()
        .code(1);
}

#[test]
fn partitions_give_the_same_read_models_as_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 20_000, 700, 8);
    rebuild(d, "log.jsonl", "sled:one").assert().success();
    rebuild(d, "log.jsonl", "sled:four")
        .args(["--partitions", "4", "--memory-mb", "1"])
        .assert()
        .success();
    for name in ["order_summary", "customer_orders", "sku_sales"] {
        assert_eq!(
            readmodel_checksum(d, "sled:one", name),
            readmodel_checksum(d, "sled:four", name),
            "{name}"
        );
    }
}

#[test]
fn a_changed_definition_is_reported_stale() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 300, 30, 2);
    let own = d.join("projections");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::copy(
        projections().join("020-customer-orders.toml"),
        own.join("a.toml"),
    )
    .unwrap();
    let rebuild_own = || {
        let mut c = recast(d);
        c.args([
            "rebuild",
            "--from",
            "log.jsonl",
            "--readmodels",
            "sled:rm",
            "--projections",
            "projections",
            "--upcasters",
        ])
        .arg(upcasters());
        c
    };
    rebuild_own().assert().success();
    let text = std::fs::read_to_string(own.join("a.toml"))
        .unwrap()
        .replace(
            "{ add = { path = \"/orders\", value = 1 } }",
            "{ add = { path = \"/orders\", value = 2 } }",
        );
    std::fs::write(own.join("a.toml"), text).unwrap();
    std::fs::write(
        d.join("recast.toml"),
        format!(
            "[projections]\ndir = \"projections\"\n[upcasters]\ndir = \"{}\"\n",
            upcasters().display()
        ),
    )
    .unwrap();
    let status = json(
        &recast(d)
            .args(["status", "--json", "--readmodels", "sled:rm"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(status[0]["stale"][0], "definition changed", "{status}");
    // The changed definition builds a new generation; the live one is untouched until swap.
    let live = readmodel_checksum(d, "sled:rm", "customer_orders");
    rebuild_own().assert().success();
    assert_eq!(readmodel_checksum(d, "sled:rm", "customer_orders"), live);
    recast(d)
        .args(["swap", "customer_orders", "--readmodels", "sled:rm"])
        .assert()
        .success();
    assert_ne!(readmodel_checksum(d, "sled:rm", "customer_orders"), live);
}

fn projection_dir(d: &Path, files: &[(&str, &str)]) -> PathBuf {
    let dir = d.join("projections");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

fn rebuild_with(d: &Path, dir: &Path) -> Command {
    let mut c = recast(d);
    c.args([
        "rebuild",
        "--from",
        "log.jsonl",
        "--readmodels",
        "sled:rm",
        "--upcasters",
    ])
    .arg(upcasters())
    .arg("--projections")
    .arg(dir);
    c
}

/// A projection file: name and text.
type ProjectionFile<'a> = (&'a str, &'a str);

const COUNTS: &str = "name = \"counts\"\nversion = 1\nkind = \"table\"\nkey = \"/customer_id\"\n[[on]]\ntype = \"OrderPlaced\"\nops = [{ add = { path = \"/n\", value = 1 } }]\n";

#[test]
fn bad_projection_files_name_the_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 50, 10, 1);
    let cases: [(&[ProjectionFile], &[&str]); 3] = [
        (
            &[("a.toml", &COUNTS.replace("add =", "bump ="))],
            &["a.toml", "unknown variant `bump`"],
        ),
        (
            &[("a.toml", &COUNTS.replace("\"/n\"", "\"n\""))],
            &["a.toml", "not a JSON pointer"],
        ),
        (
            &[("a.toml", COUNTS), ("b.toml", COUNTS)],
            &["two projections named counts", "a.toml", "b.toml"],
        ),
    ];
    for (files, expected) in cases {
        let sub = tempfile::tempdir_in(d).unwrap();
        let projections = projection_dir(sub.path(), files);
        let mut assert = rebuild_with(d, &projections).assert().code(1);
        for text in expected {
            assert = assert.stderr(contains(*text));
        }
    }
    assert!(
        !d.join("rm").exists(),
        "nothing may be written for bad definitions"
    );
}

/// A log whose third OrderPlaced has no customer: the table key is missing.
fn log_with_keyless_event(d: &Path) {
    let line = |stream: &str, n: u32, data: &str| {
        format!(
            r#"{{"stream":"{stream}","revision":0,"id":"00000000-0000-4000-8000-{n:012}","type":"OrderPlaced","version":3,"data":{data}}}"#
        )
    };
    let lines = [
        line(
            "order-1",
            1,
            r#"{"customer_id":"user-1","total_cents":100,"currency":"EUR"}"#,
        ),
        line(
            "order-2",
            2,
            r#"{"customer_id":"user-2","total_cents":200,"currency":"EUR"}"#,
        ),
        line("order-3", 3, r#"{"total_cents":300,"currency":"EUR"}"#),
        line(
            "order-4",
            4,
            r#"{"customer_id":"user-1","total_cents":400,"currency":"EUR"}"#,
        ),
    ];
    std::fs::write(d.join("log.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_missing_key_under_each_policy() {
    for (policy, code) in [("stop", 1), ("skip", 0), ("dead-letter", 0)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        log_with_keyless_event(d);
        let projections = projection_dir(d, &[("a.toml", COUNTS)]);
        let assert = rebuild_with(d, &projections)
            .args(["--on-error", policy, "--json"])
            .assert()
            .code(code);
        if policy == "stop" {
            assert
                .stderr(contains("projection counts"))
                .stderr(contains("00000000-0000-4000-8000-000000000003"))
                .stderr(contains("stream order-3 at position 2"))
                .stderr(contains("no row key: /customer_id"));
            // What came before was written with its checkpoint, and nothing is live.
            let status = json(
                &recast(d)
                    .args(["status", "--json", "--readmodels", "sled:rm"])
                    .output()
                    .unwrap()
                    .stdout,
            );
            assert_eq!(
                (status[0]["position"].as_u64(), status[0]["live"].is_null()),
                (Some(1), true),
                "{status}"
            );
            continue;
        }
        let report = json(&assert.get_output().stdout);
        let p = &report["projections"][0];
        let (skipped, dead) = if policy == "skip" { (1, 0) } else { (0, 1) };
        assert_eq!(
            (p["skipped"].as_u64(), p["dead_lettered"].as_u64()),
            (Some(skipped), Some(dead)),
            "{report}"
        );
        assert!(p["last_error"].as_str().unwrap().contains("no row key"));
        let row = recast(d)
            .args(["query", "counts", "user-1", "--readmodels", "sled:rm"])
            .output()
            .unwrap();
        assert_eq!(json(&row.stdout)["n"], 2);
        let status = json(
            &recast(d)
                .args(["status", "--json", "--readmodels", "sled:rm"])
                .output()
                .unwrap()
                .stdout,
        );
        assert!(
            status[0]["last_error"]
                .as_str()
                .unwrap()
                .contains("no row key"),
            "{status}"
        );
    }
}

#[test]
fn a_type_clash_stops_the_rebuild_and_leaves_the_live_read_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    log_with_keyless_event(d);
    let clash = COUNTS
        .replace("key = \"/customer_id\"", "key = \"$stream\"")
        .replace(
            "{ add = { path = \"/n\", value = 1 } }",
            "{ set = { path = \"/n\", value = \"one\" } }, { add = { path = \"/n\", value = 1 } }",
        );
    let projections = projection_dir(d, &[("a.toml", &clash)]);
    rebuild_with(d, &projections)
        .assert()
        .code(1)
        .stderr(contains("handler 1 (OrderPlaced), op 2 (add)"))
        .stderr(contains("/n: cannot add number to string"));
}

#[test]
fn follow_applies_appended_events_until_ctrl_c() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    log_with_keyless_event(d);
    let text = std::fs::read_to_string(d.join("log.jsonl")).unwrap();
    std::fs::write(
        d.join("log.jsonl"),
        text.lines()
            .filter(|l| !l.contains("order-3"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
    .unwrap();
    let projections = projection_dir(d, &[("a.toml", COUNTS)]);
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("recast"))
        .current_dir(d)
        .args([
            "rebuild",
            "--from",
            "log.jsonl",
            "--readmodels",
            "sled:rm",
            "--follow",
            "--upcasters",
        ])
        .arg(upcasters())
        .arg("--projections")
        .arg(&projections)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // While it follows, the read-model store is its alone: a second rebuilder is refused.
    rebuild_with(d, &projections)
        .assert()
        .code(1)
        .stderr(contains(
            "is in use by another process (one rebuilder at a time)",
        ));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("log.jsonl"))
        .unwrap();
    writeln!(file, r#"{{"stream":"order-9","revision":0,"id":"00000000-0000-4000-8000-000000000009","type":"OrderPlaced","version":3,"data":{{"customer_id":"user-1","total_cents":1,"currency":"EUR"}}}}"#).unwrap();
    drop(file);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = recast(d)
        .args(["query", "counts", "user-1", "--readmodels", "sled:rm"])
        .output()
        .unwrap();
    assert_eq!(
        json(&row.stdout)["n"],
        3,
        "two events before, one appended while following"
    );
}

#[test]
fn fixture_cases_pass_and_a_wrong_expectation_shows_a_diff() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    recast(root)
        .args(["test"])
        .assert()
        .success()
        .stdout(contains("ok      order-lifecycle"));
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("cases/broken");
    std::fs::create_dir_all(case.join("expected")).unwrap();
    std::fs::copy(
        root.join("streams/cases/order-lifecycle/events.jsonl"),
        case.join("events.jsonl"),
    )
    .unwrap();
    std::fs::write(
        case.join("expected/sku_sales.json"),
        r#"{"apple": {"lines": 1, "revenue_cents": 751, "units": 3}}"#,
    )
    .unwrap();
    recast(root)
        .args(["test", "--cases"])
        .arg(dir.path().join("cases"))
        .assert()
        .code(3)
        .stdout(contains("FAILED  broken"))
        .stdout(contains("-    \"revenue_cents\": 751"))
        .stdout(contains("+    \"revenue_cents\": 750"))
        .stdout(contains("no expected file"));
    recast(root)
        .args(["test", "--bless", "--cases"])
        .arg(dir.path().join("cases"))
        .assert()
        .success();
    recast(root)
        .args(["test", "--cases"])
        .arg(dir.path().join("cases"))
        .assert()
        .success();
}
