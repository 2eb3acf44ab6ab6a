//! End-to-end throughput of recast's pipelines, beside baselines measured in the same run.
//!
//! `cargo bench --bench pipeline` generates `RECAST_BENCH_EVENTS` events (default 1,000,000)
//! of the demo domain, then times, round-robin over `RECAST_BENCH_ROUNDS` rounds (default 3),
//! each pipeline and each baseline, and reports medians in events/s and as a ratio to the
//! pipeline's baseline (see [`report::ROWS`]):
//! - B_val: parse every line into `serde_json::Value`; B_raw: into the envelope with a raw
//!   payload; a raw sled insert of the records `migrate` writes, in batches of the same size,
//!   one key per record; a raw write of the same records to a new file, synced per batch (the
//!   kernel's share of a JSONL sink, so the floor of a JSONL -> JSONL migration is B_raw plus
//!   that);
//! - `migrate` JSONL -> JSONL where every event is upcast once, where none is, and with the
//!   demo upcasters; `migrate` JSONL -> sled with the demo upcasters;
//! - the least work of the first two, in one tight loop of borrowed envelopes ([`floor`]): how
//!   near B_raw any design of the pipeline could come;
//! - `rebuild` of the demo projections into sled with the state in memory; parse + fold alone
//!   (the same rebuild with its writes dropped); `rebuild` with a 4 MiB bound, beside raw
//!   sled writes of the very rows that bounded rebuild writes, window by window.
//!
//! When PostgreSQL answers at `RECAST_BENCH_PG` (default the local test server), it also times
//! the rebuild into PostgreSQL, its commits alone, and `psql \copy` of the same final rows.
//! Unless `RECAST_BENCH_RSS=0`, it measures the peak RSS of the real binary's `generate`,
//! `migrate` and bounded `rebuild` for N and 10 N events over the same N / 20 streams.
//!
//! Each row also reports its CPU seconds (every thread of the process, from `getrusage`): the
//! JSONL source reads ahead on a second thread, so wall time alone would credit a pipeline with
//! a core the baseline does not use. Issue 5's targets are per core, so a row's target is
//! judged on its per-core ratio (baseline CPU time / its CPU time), and the bounded rebuild's
//! on its CPU time over the CPU times of its two baselines; its wall-time ratio is printed
//! beside it.
//!
//! `RECAST_BENCH_ONLY=ID,ID` (row ids of [`report::ROWS`], `postgres`, `rss`) times only those.
//!
//! The table goes to stdout, the figures as JSON to `target/pipeline.json`.

mod floor;
mod jobs;
mod observed;
mod postgres;
mod report;
mod rss;

use observed::Mode;
use recast::event::Event;
use recast::generate::{generate, GenerateOptions};
use recast::readmodel::sled::SledReadModels;
use recast::store::jsonl::JsonlSink;
use recast::store::sled_store::SledStore;
use recast::upcast::Registry;
use std::path::Path;
use std::time::Instant;

// The allocator of the `recast` binary, so pipelines and baselines run as they would there.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn generate_log(path: &Path, events: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("log creates"));
    let options = GenerateOptions {
        events,
        streams: (events / 20).max(1),
        seed: 1,
    };
    generate(options, &mut out).expect("log generates");
}

fn sled_models(path: &Path) -> Box<SledReadModels> {
    Box::new(SledReadModels::open(path).expect("read models open"))
}

/// User and system CPU seconds of every thread of this process so far: what a job costs in
/// cores, where its wall time hides work done on a second core.
fn cpu_seconds_so_far() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF always exists.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

const BOUND: usize = 4 << 20;
const IN_MEMORY: usize = 1 << 30;

fn main() {
    let events = env_number("RECAST_BENCH_EVENTS", 1_000_000);
    let rounds = env_number("RECAST_BENCH_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let log = work.join("log.jsonl");
    generate_log(&log, events);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = Registry::load_dir(&root.join("upcasters")).expect("upcasters load");
    let every = jobs::one_step_each(&log, &work.join("one-step"));
    let none = Registry::empty();
    let (state, target) = (work.join("state"), work.join("target"));
    // Untimed setup: the records migrate writes, and the windows a bounded rebuild writes.
    let migrated = work.join("migrated.jsonl");
    jobs::migrate(
        &log,
        &state,
        &demo,
        &mut JsonlSink::open(&migrated).expect("sink"),
    );
    let records = jobs::read_records(&migrated);
    let seen = jobs::rebuild(&log, &demo, sled_models(&target), Mode::Record, BOUND);
    let windows = std::mem::take(&mut *seen.windows.lock().expect("not poisoned"));

    // RECAST_BENCH_ONLY=b_raw,migrate_none times only those rows (for profiling sessions).
    let only = std::env::var("RECAST_BENCH_ONLY").ok();
    let selected = |id: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == id))
    };
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); report::ROWS.len()];
    let mut cpu_seconds: Vec<Vec<f64>> = vec![Vec::new(); report::ROWS.len()];
    for _ in 0..rounds {
        for (index, times) in seconds.iter_mut().enumerate() {
            if !selected(report::ROWS[index].id) {
                continue;
            }
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_file(&target);
            let jsonl = || JsonlSink::open(&target).expect("sink");
            let started = Instant::now();
            let cpu_started = cpu_seconds_so_far();
            match report::ROWS[index].id {
                "b_val" => assert_eq!(jobs::parse_lines::<serde_json::Value>(&log), events),
                "b_raw" => assert_eq!(jobs::parse_lines::<Event>(&log), events),
                "sled_raw" => jobs::raw_sled_insert(&target, &records),
                "file_raw" => jobs::raw_write(&target, &records),
                "migrate_every" => jobs::migrate(&log, &state, &every, &mut jsonl()),
                "migrate_none" => jobs::migrate(&log, &state, &none, &mut jsonl()),
                "floor_every" => assert_eq!(floor::least_migration(&log, &target, true), events),
                "floor_none" => assert_eq!(floor::least_migration(&log, &target, false), events),
                "migrate_demo" => jobs::migrate(&log, &state, &demo, &mut jsonl()),
                "migrate_sled" => {
                    let mut sink = SledStore::open(&target).expect("sink");
                    jobs::migrate(&log, &state, &demo, &mut sink)
                }
                "rebuild_memory" => {
                    jobs::rebuild(&log, &demo, sled_models(&target), Mode::Forward, IN_MEMORY);
                }
                "fold_only" => {
                    jobs::rebuild(&log, &demo, sled_models(&target), Mode::Discard, IN_MEMORY);
                }
                "rebuild_bounded" => {
                    jobs::rebuild(&log, &demo, sled_models(&target), Mode::Forward, BOUND);
                }
                "sled_windows" => jobs::raw_sled_windows(&target, &windows),
                other => unreachable!("row {other} has no job"),
            }
            times.push(started.elapsed().as_secs_f64());
            cpu_seconds[index].push(cpu_seconds_so_far() - cpu_started);
        }
    }
    let location = std::env::var("RECAST_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?schema=recast_bench".into());
    let postgres: Vec<postgres::PostgresRound> = (0..rounds)
        .filter(|_| selected("postgres"))
        .filter_map(|_| postgres::round(&log, work, &demo, &location))
        .collect();
    let streams = (events / 20).max(1);
    let rss = match env_number("RECAST_BENCH_RSS", 1) {
        _ if !selected("rss") => Vec::new(),
        0 => Vec::new(),
        _ => vec![
            (events, rss::jobs(work, events, streams)),
            (events * 10, rss::jobs(work, events * 10, streams)),
        ],
    };
    let results = report::Results {
        events,
        rounds,
        windows: windows.len(),
        dirty_rows: windows.iter().map(Vec::len).sum(),
        seconds,
        cpu_seconds,
        postgres,
        postgres_location: selected("postgres").then_some(location),
        rss,
    };
    results.print();
    let path = root.join("target/pipeline.json");
    std::fs::write(&path, results.json()).expect("report writes");
    println!("written to {}", path.display());
}
