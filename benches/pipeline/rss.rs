//! Peak resident memory of the real `recast` binary, for a log of N and of 10 N events.
//!
//! Each job runs as a child process whose `VmHWM` (the high-water mark of its resident set,
//! kept by Linux per address space) is read from `/proc` every few milliseconds until it
//! exits. `wait4`'s `ru_maxrss` cannot be used: Linux carries the parent's high-water mark
//! into a spawned child across `exec`, so every child would report the harness's own size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn high_water_mark(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `recast ARGS` in `folder` and returns its peak RSS in bytes.
pub fn peak_rss(folder: &Path, args: &[&str]) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(args)
        .current_dir(folder)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("recast starts");
    let mut peak = 0;
    loop {
        // Read before checking for exit: the mark only grows, so the last read is the peak
        // up to at most one interval before the end.
        peak = peak.max(high_water_mark(child.id()).unwrap_or(0));
        if let Some(status) = child.try_wait().expect("child waits") {
            assert!(status.success(), "recast {args:?} failed");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Peak RSS of generate, migrate (JSONL -> JSONL and JSONL -> sled, demo upcasters) and a bounded rebuild
/// (JSONL -> sled, 4 MiB) of a generated log of `events` events over `streams` streams:
/// (job, bytes). Both sizes use the same streams, so what grows is the log alone: recast keeps
/// one revision counter per target stream while it migrates, by design.
pub fn jobs(folder: &Path, events: u64, streams: u64) -> Vec<(&'static str, u64)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let upcasters = format!("{root}/upcasters");
    let projections = format!("{root}/projections");
    let log = folder.join(format!("rss-{events}.jsonl"));
    let log_text = log.display().to_string();
    let count = events.to_string();
    let streams = streams.to_string();
    let mut out = vec![(
        "generate",
        peak_rss(
            folder,
            &[
                "generate",
                "--events",
                &count,
                "--streams",
                &streams,
                "--out",
                &log_text,
            ],
        ),
    )];
    let source = format!("jsonl:{log_text}");
    let migrate = |target: &str, state: &str| {
        let state = folder.join(state).display().to_string();
        let args = [
            "migrate",
            "--from",
            &source,
            "--to",
            target,
            "--upcasters",
            &upcasters,
        ];
        peak_rss(folder, &[&args[..], &["--state", &state]].concat())
    };
    let jsonl = format!("jsonl:{}", folder.join("rss-out.jsonl").display());
    out.push(("migrate JSONL -> JSONL", migrate(&jsonl, "rss-state")));
    let sled = format!("sled:{}", folder.join("rss-store").display());
    out.push(("migrate JSONL -> sled", migrate(&sled, "rss-state-sled")));
    let readmodels = format!("sled:{}", folder.join("rss-readmodels").display());
    out.push((
        "rebuild -> sled, 4 MiB bound",
        peak_rss(
            folder,
            &[
                "rebuild",
                "--from",
                &source,
                "--upcasters",
                &upcasters,
                "--projections",
                &projections,
                "--readmodels",
                &readmodels,
                "--memory-mb",
                "4",
            ],
        ),
    ));
    for leftover in [
        "rss-out.jsonl",
        "rss-state",
        "rss-store",
        "rss-state-sled",
        "rss-readmodels",
    ] {
        let path = folder.join(leftover);
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_file(&log);
    out
}
