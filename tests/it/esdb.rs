//! EventStoreDB / KurrentDB through the real `eventstore` client. These run only when
//! `RECAST_TEST_ESDB` holds a connection string (see the README); otherwise they print a
//! notice and pass. Every run writes streams of its own (`t<pid>_...`), so a shared server
//! works.

use super::{checksum, recast, upcasters};
use predicates::str::contains;
use std::path::Path;

fn server() -> Option<String> {
    match std::env::var("RECAST_TEST_ESDB") {
        Ok(location) if !location.is_empty() => Some(location),
        _ => {
            eprintln!("skipped: set RECAST_TEST_ESDB to an esdb:// connection string to run the EventStoreDB tests");
            None
        }
    }
}

fn with_params(location: &str, params: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}{params}")
}

#[test]
fn migrate_into_eventstoredb_verify_and_read_back() {
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("streams/demo");
    let prefix = format!("t{}_", std::process::id());
    let target = with_params(&server, &format!("prefix={prefix}"));
    let template = format!("{prefix}{{stream}}");
    let migrate = || {
        let mut c = recast(d);
        c.args(["migrate", "--from"])
            .arg(&demo)
            .args([
                "--to",
                &target,
                "--template",
                &template,
                "--state",
                "state",
                "--upcasters",
            ])
            .arg(upcasters());
        c
    };
    migrate().assert().success();
    // A finished job run again writes nothing; the server's idempotency would absorb it anyway.
    migrate().assert().success();
    recast(d)
        .args(["verify", "--from"])
        .arg(&demo)
        .args(["--to", &target, "--template", &template, "--upcasters"])
        .arg(upcasters())
        .assert()
        .success()
        .stdout(contains("OK: every source event is accounted for"));
    recast(d)
        .args(["export", "--from", &target, "--out", "back.jsonl"])
        .assert()
        .success();
    let back = std::fs::read_to_string(d.join("back.jsonl")).unwrap();
    assert!(
        back.lines().count() > 100
            && back
                .lines()
                .all(|l| l.contains(&format!("\"stream\":\"{prefix}")))
    );
    assert!(!checksum(d, &target).ends_with("(0 events)"));
}

/// Migrates a one-event log (`line`) into streams of the server under `prefix`, with no
/// upcasters, and exports them back: the JSONL text of what the server returned.
fn round_trip(server: &str, prefix: &str, line: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("log.jsonl"), format!("{line}\n")).unwrap();
    std::fs::create_dir(d.join("none")).unwrap();
    let target = with_params(server, &format!("prefix={prefix}"));
    recast(d)
        .args(["migrate", "--from", "log.jsonl", "--to", &target])
        .args(["--template", &format!("{prefix}{{stream}}")])
        .args(["--state", "state", "--upcasters", "none"])
        .assert()
        .success();
    recast(d)
        .args(["export", "--from", &target, "--out", "back.jsonl"])
        .assert()
        .success();
    std::fs::read_to_string(d.join("back.jsonl")).unwrap()
}

#[test]
fn untouched_payloads_reach_eventstoredb_as_the_bytes_they_were_read_as() {
    let Some(server) = server() else { return };
    // Key order, spacing and number spelling that a parse-and-print would all change.
    let data = r#"{"z": 1,  "a": 2.50, "u": "\u00e9"}"#;
    let line = format!(
        r#"{{"stream":"order-1","revision":0,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"OrderNoted","data":{data},"metadata":{{"user_id":"u-1"}},"recorded_at":"2024-01-01T00:00:00Z"}}"#
    );
    let back = round_trip(&server, &format!("r{}_", std::process::id()), &line);
    assert!(
        back.contains(&format!("\"data\":{data},")),
        "the payload came back changed: {back}"
    );
}

#[test]
fn binary_events_go_to_eventstoredb_as_binary_and_come_back_marked() {
    let Some(server) = server() else { return };
    // What recast reads from a binary event: base64 text, and the marker in the metadata.
    let line = r#"{"stream":"scan-1","revision":0,"id":"0b1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"Scanned","data":"AJ+Slg==","metadata":{"recast_data_encoding":"base64"},"recorded_at":"2024-01-01T00:00:00Z"}"#;
    let back = round_trip(&server, &format!("b{}_", std::process::id()), line);
    assert!(
        back.contains(r#""data":"AJ+Slg==""#)
            && back.contains(r#""recast_data_encoding":"base64""#),
        "the binary event came back changed: {back}"
    );
}
