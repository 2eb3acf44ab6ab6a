//! A real `recast migrate` process is killed with SIGKILL several times; each resume continues
//! from the checkpoint, and the final target equals an uninterrupted run's, event for event.

use super::{checksum, generate, migrate, upcasters};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A `recast migrate` process of `log.jsonl` into `target`, as a plain std command to kill.
fn migrate_process(d: &Path, target: &str, state: &str, batch_size: &str) -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("recast"));
    command
        .current_dir(d)
        .args([
            "migrate",
            "--from",
            "log.jsonl",
            "--to",
            target,
            "--state",
            state,
            "--batch-size",
            batch_size,
            "--upcasters",
        ])
        .arg(upcasters());
    command
}

fn kill_and_resume(target: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 120_000, 5_000, 21);
    migrate(d, "log.jsonl", "reference.jsonl")
        .assert()
        .success();
    let reference = checksum(d, "reference.jsonl");

    let mut kills_that_landed = 0;
    for attempt in 0..6u64 {
        let mut child = migrate_process(d, target, "killed-state", "700")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Early and spread out: a JSONL migration of the whole log takes about a second now,
        // so later kills would find it finished.
        std::thread::sleep(Duration::from_millis(60 + 90 * attempt));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on unix
            kills_that_landed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills_that_landed >= 2,
        "only {kills_that_landed} kills hit a running migration"
    );
    let finish = migrate_process(d, target, "killed-state", "700")
        .output()
        .unwrap();
    assert!(
        finish.status.success(),
        "{}",
        String::from_utf8_lossy(&finish.stderr)
    );
    assert_eq!(
        checksum(d, target),
        reference,
        "killed {kills_that_landed} times"
    );
}

#[test]
fn sigkill_and_resume_into_sled_equals_an_uninterrupted_run() {
    kill_and_resume("sled:killed");
}

#[test]
fn sigkill_and_resume_into_jsonl_equals_an_uninterrupted_run() {
    kill_and_resume("killed.jsonl");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_a_second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Long enough that the first process still runs when the second one gives up waiting for
    // the lock (a second, see `open_db`): 150,000 events were done in about a second.
    generate(d, "log.jsonl", 600_000, 5_000, 5);
    migrate(d, "log.jsonl", "reference.jsonl")
        .assert()
        .success();
    let start = || {
        migrate_process(d, "sled:out", "state", "500")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = start();
    std::thread::sleep(Duration::from_millis(400));
    // While the first process runs, the store and the state folder are its alone.
    let second = Command::new(assert_cmd::cargo::cargo_bin("recast"))
        .current_dir(d)
        .args(["checksum", "sled:out"])
        .output()
        .unwrap();
    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let first = child.wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("is in use by another process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        first.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("checkpoint is saved"));
    let done = start().wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(checksum(d, "sled:out"), checksum(d, "reference.jsonl"));
}

#[test]
fn sigkilled_rebuilds_of_a_million_events_resume_to_the_uninterrupted_read_models() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 1_000_000, 20_000, 13);
    let projections = Path::new(env!("CARGO_MANIFEST_DIR")).join("projections");
    let rebuild = |readmodels: &str| {
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("recast"));
        command
            .current_dir(d)
            .args([
                "rebuild",
                "--from",
                "log.jsonl",
                "--readmodels",
                readmodels,
                "--memory-mb",
                "4",
                "--upcasters",
            ])
            .arg(upcasters())
            .arg("--projections")
            .arg(&projections)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    assert!(rebuild("sled:reference").status().unwrap().success());
    let mut kills_that_landed = 0;
    for attempt in 0..4u64 {
        let mut child = rebuild("sled:killed").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(1500 + 1000 * attempt));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills_that_landed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills_that_landed >= 2,
        "only {kills_that_landed} kills hit a running rebuild"
    );
    assert!(rebuild("sled:killed").status().unwrap().success());
    for name in ["order_summary", "customer_orders", "sku_sales"] {
        let reference = super::rebuild::readmodel_checksum(d, "sled:reference", name);
        assert_eq!(
            super::rebuild::readmodel_checksum(d, "sled:killed", name),
            reference,
            "{name} after {kills_that_landed} kills"
        );
    }
}
