//! Bad input: each case exits non-zero with a message naming what is wrong and where, and
//! leaves the target exactly as checkpointed.

use super::{checksum, migrate, recast, upcasters};
use predicates::str::contains;
use std::path::Path;

fn line(stream: &str, revision: u64, n: u32, event_type: &str, version: u32, data: &str) -> String {
    format!(
        r#"{{"stream":"{stream}","revision":{revision},"id":"00000000-0000-4000-8000-{n:012}","type":"{event_type}","version":{version},"data":{data},"metadata":{{"user_id":"u1"}}}}"#
    )
}

fn good_lines() -> Vec<String> {
    vec![
        line(
            "order-1",
            0,
            1,
            "OrderPlaced",
            1,
            r#"{"order_id":"o1","customer_id":"c1","total":"10.50","shipping_address":"Main St 1"}"#,
        ),
        line(
            "order-1",
            1,
            2,
            "ItemAdded",
            1,
            r#"{"sku":"apple","quantity":"2","price":"1.25","unit":"pcs"}"#,
        ),
        line(
            "user-1",
            0,
            3,
            "UserRegistered",
            1,
            r#"{"first_name":"Ada","last_name":"Lovelace","email":"ada@example.com"}"#,
        ),
    ]
}

fn write_log(dir: &Path, name: &str, lines: &[String]) {
    std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
}

fn assert_source_error(bad_line: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut lines = good_lines();
    lines.push(bad_line.to_string());
    write_log(d, "bad.jsonl", &lines);
    migrate(d, "bad.jsonl", "sled:out")
        .assert()
        .code(1)
        .stderr(contains("bad.jsonl:4:"))
        .stderr(contains(expected));
    // Nothing of the batch that held the bad line was written.
    assert!(checksum(d, "sled:out").ends_with("(0 events)"));
    // Fixing the line and running again finishes the job.
    lines.pop();
    write_log(d, "bad.jsonl", &lines);
    migrate(d, "bad.jsonl", "sled:out").assert().success();
    assert!(
        checksum(d, "sled:out").ends_with("(4 events)"),
        "{}",
        checksum(d, "sled:out")
    );
}

#[test]
fn malformed_json_names_file_and_line() {
    assert_source_error(r#"{"stream":"order-2","revision":0,"#, "EOF while parsing");
}

#[test]
fn missing_type_names_file_and_line() {
    assert_source_error(
        r#"{"stream":"order-2","revision":0,"id":"00000000-0000-4000-8000-000000000009","data":{}}"#,
        "missing field `type`",
    );
}

#[test]
fn non_integer_version_names_file_and_line() {
    assert_source_error(
        &line("order-2", 0, 9, "OrderPlaced", 1, "{}")
            .replace(r#""version":1"#, r#""version":"2a""#),
        "invalid type: string \"2a\"",
    );
}

#[test]
fn stream_name_with_dot_dot_is_refused() {
    assert_source_error(
        &line("../../etc/passwd", 0, 9, "OrderPlaced", 3, "{}"),
        "`..` path segment",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_log(d, "log.jsonl", &good_lines());
    migrate(d, "log.jsonl", "out.jsonl")
        .args(["--template", "../{stream}"])
        .assert()
        .code(1)
        .stderr(contains("stream template \"../{stream}\" gives a bad name"));
}

fn upcaster_dir(dir: &Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("ups");
    std::fs::create_dir_all(&path).unwrap();
    for (name, text) in files {
        std::fs::write(path.join(name), text).unwrap();
    }
    path
}

fn assert_registry_error(files: &[(&str, &str)], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_log(d, "log.jsonl", &good_lines());
    let ups = upcaster_dir(d, files);
    let mut assert = recast(d)
        .args([
            "migrate",
            "--from",
            "log.jsonl",
            "--to",
            "sled:out",
            "--state",
            "state",
            "--upcasters",
        ])
        .arg(&ups)
        .assert()
        .code(1);
    for text in expected {
        assert = assert.stderr(contains(*text));
    }
    assert!(!d.join("out").exists(), "the target must not be created");
}

#[test]
fn unknown_op_names_the_file_and_op() {
    assert_registry_error(
        &[(
            "a.toml",
            "type = \"T\"\nfrom = 1\n[[ops]]\nfrobnicate = { path = \"/a\" }\n",
        )],
        &["a.toml", "unknown variant `frobnicate`", "line 4"],
    );
}

#[test]
fn bad_pointer_names_the_file() {
    assert_registry_error(
        &[(
            "a.toml",
            "type = \"T\"\nfrom = 1\n[[ops]]\nremove = [\"total\"]\n",
        )],
        &["a.toml", "\"total\" is not a JSON pointer"],
    );
}

#[test]
fn duplicate_upcasters_name_both_files() {
    let text = "type = \"T\"\nfrom = 1\n";
    assert_registry_error(
        &[("a.toml", text), ("b.toml", text)],
        &["two upcasters for T v1", "a.toml", "b.toml"],
    );
}

#[test]
fn cycles_name_the_files() {
    assert_registry_error(
        &[
            ("a.toml", "type = \"A\"\nfrom = 1\nrename = \"B\"\nto = 1\n"),
            ("b.toml", "type = \"B\"\nfrom = 1\nrename = \"A\"\nto = 1\n"),
        ],
        &["cycle", "a.toml", "b.toml"],
    );
}

/// A log whose second OrderPlaced has a total with three decimals: the cents conversion fails.
fn log_with_failing_event(d: &Path) {
    let mut lines = good_lines();
    lines.push(line(
        "order-2",
        0,
        4,
        "OrderPlaced",
        1,
        r#"{"order_id":"o2","customer_id":"c1","total":"1.005","shipping_address":"x"}"#,
    ));
    lines.push(line(
        "order-3",
        0,
        5,
        "OrderShipped",
        2,
        r#"{"order_id":"o3"}"#,
    ));
    write_log(d, "log.jsonl", &lines);
}

#[test]
fn failing_upcaster_under_stop_writes_what_came_before_and_names_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    log_with_failing_event(d);
    migrate(d, "log.jsonl", "out.jsonl")
        .assert()
        .code(1)
        .stderr(contains("020-order-placed-v1.toml"))
        .stderr(contains("00000000-0000-4000-8000-000000000004"))
        .stderr(contains("stream order-2 at position 3"))
        .stderr(contains("op 2 (convert)"))
        .stderr(contains("more than 2 decimal places"));
    // The three good events before it were written and checkpointed: 4 target events.
    assert!(checksum(d, "out.jsonl").ends_with("(4 events)"));
    // A second run stops at the same event and writes nothing twice.
    migrate(d, "log.jsonl", "out.jsonl").assert().code(1);
    assert!(checksum(d, "out.jsonl").ends_with("(4 events)"));
}

#[test]
fn failing_upcaster_under_skip_is_counted_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    log_with_failing_event(d);
    let out = migrate(d, "log.jsonl", "out.jsonl")
        .args(["--on-error", "skip", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["counts"]["skipped"], 1);
    assert!(report["errors"][0]
        .as_str()
        .unwrap()
        .contains("more than 2 decimal places"));
    recast(d)
        .args([
            "verify",
            "--from",
            "log.jsonl",
            "--to",
            "out.jsonl",
            "--on-error",
            "skip",
            "--upcasters",
        ])
        .arg(upcasters())
        .assert()
        .success();
}

#[test]
fn failing_upcaster_under_dead_letter_writes_the_event_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    log_with_failing_event(d);
    let out = migrate(d, "log.jsonl", "out.jsonl")
        .args([
            "--on-error",
            "dead-letter",
            "--dead-letter",
            "dl.jsonl",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["counts"]["dead_lettered"].as_u64(),
            report["counts"]["skipped"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let dead = std::fs::read_to_string(d.join("dl.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 1);
    assert!(
        dead.contains("\"total\":\"1.005\"")
            && dead.contains("020-order-placed-v1.toml")
            && dead.contains("decimal places"),
        "{dead}"
    );
    recast(d)
        .args([
            "verify",
            "--from",
            "log.jsonl",
            "--to",
            "out.jsonl",
            "--on-error",
            "dead-letter",
            "--dead-letter",
            "dl.jsonl",
            "--upcasters",
        ])
        .arg(upcasters())
        .assert()
        .success();
}

#[test]
fn a_target_stream_that_holds_other_events_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_log(d, "log.jsonl", &good_lines());
    write_log(
        d,
        "other.jsonl",
        &[line("user-1", 0, 99, "Unrelated", 1, "{}")],
    );
    migrate(d, "other.jsonl", "sled:out").assert().success();
    let before = checksum(d, "sled:out");
    migrate(d, "log.jsonl", "sled:out")
        .assert()
        .code(1)
        .stderr(contains(
            "stream user-1: expected no stream, but the stream is at revision 0",
        ));
    // The batch was refused whole: the target is as it was.
    assert_eq!(checksum(d, "sled:out"), before);
    // A JSONL target that already holds events is refused too.
    write_log(d, "taken.jsonl", &[line("x-1", 0, 98, "X", 1, "{}")]);
    migrate(d, "log.jsonl", "taken.jsonl")
        .assert()
        .code(1)
        .stderr(contains("already holds events"));
}

#[test]
fn a_changed_upcaster_set_is_detected_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    log_with_failing_event(d);
    migrate(d, "log.jsonl", "out.jsonl").assert().code(1);
    let ups = upcaster_dir(
        d,
        &[("a.toml", "type = \"OrderPlaced\"\nfrom = 1\nto = 3\n")],
    );
    recast(d)
        .args([
            "migrate",
            "--from",
            "log.jsonl",
            "--to",
            "out.jsonl",
            "--state",
            "state",
            "--upcasters",
        ])
        .arg(&ups)
        .assert()
        .code(1)
        .stderr(contains("was checkpointed with upcaster set"));
}
