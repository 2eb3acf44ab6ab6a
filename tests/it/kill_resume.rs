//! A real `recast migrate` process is killed with SIGKILL several times; each resume continues
//! from the checkpoint, and the final target equals an uninterrupted run's, event for event.

use super::{checksum, generate, migrate, upcasters};
use std::process::{Command, Stdio};
use std::time::Duration;

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
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("recast"))
            .current_dir(d)
            .args([
                "migrate",
                "--from",
                "log.jsonl",
                "--to",
                target,
                "--state",
                "killed-state",
                "--batch-size",
                "700",
                "--upcasters",
            ])
            .arg(upcasters())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(250 + 150 * attempt));
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
    let finish = Command::new(assert_cmd::cargo::cargo_bin("recast"))
        .current_dir(d)
        .args([
            "migrate",
            "--from",
            "log.jsonl",
            "--to",
            target,
            "--state",
            "killed-state",
            "--batch-size",
            "700",
            "--upcasters",
        ])
        .arg(upcasters())
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
