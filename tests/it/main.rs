//! Integration tests: one binary. The command line is tested through the real `recast` binary.

mod bad_input;
mod cli;
mod esdb;
mod kill_resume;
mod laws;
mod postgres;
mod rebuild;
mod state_size;

use assert_cmd::Command;
use std::path::{Path, PathBuf};

/// The demo upcasters of this repository.
pub fn upcasters() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("upcasters")
}

/// `recast` run in `dir` with the repository's upcasters and a private state folder.
pub fn recast(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("recast").expect("the recast binary is built");
    command.current_dir(dir);
    command
}

/// Generates a demo log of `events` events into `dir/name`.
pub fn generate(dir: &Path, name: &str, events: u64, streams: u64, seed: u64) -> PathBuf {
    let path = dir.join(name);
    recast(dir)
        .args([
            "generate",
            "--events",
            &events.to_string(),
            "--streams",
            &streams.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(&path)
        .assert()
        .success();
    path
}

/// The checksum line `recast checksum` prints for a location.
pub fn checksum(dir: &Path, location: &str) -> String {
    let output = recast(dir)
        .args(["checksum", location])
        .output()
        .expect("recast runs");
    assert!(
        output.status.success(),
        "checksum failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// A `migrate` command from `from` to `to` with the demo upcasters and its own state folder.
pub fn migrate(dir: &Path, from: &str, to: &str) -> Command {
    let mut command = recast(dir);
    command
        .args([
            "migrate",
            "--from",
            from,
            "--to",
            to,
            "--state",
            "state",
            "--upcasters",
        ])
        .arg(upcasters());
    command
}
