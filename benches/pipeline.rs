//! End-to-end throughput of `migrate`, beside baselines measured in the same run.
//!
//! `cargo bench --bench pipeline` generates `RECAST_BENCH_EVENTS` events (default 1,000,000)
//! of the demo domain, then measures, round-robin over `RECAST_BENCH_ROUNDS` rounds (default
//! 3), and reports medians in events/s and as ratios to the baselines:
//! - B_val: parse every line into `serde_json::Value`;
//! - B_raw: parse every line into the envelope with a raw payload;
//! - migrate JSONL -> JSONL with the demo upcasters;
//! - migrate JSONL -> sled with the demo upcasters;
//! - rebuild the demo projections from the JSONL log into sled, with the state in memory
//!   (a 1 GiB window) and with a small memory bound (4 MiB).
//!
//! When PostgreSQL answers at `RECAST_BENCH_PG` (default the local test server), it also times
//! the same rebuild into PostgreSQL beside `psql \copy` of the same final rows (rows/s).
//!
//! The table goes to stdout, the figures as JSON to `target/pipeline.json`.

use recast::checkpoint::CheckpointStore;
use recast::event::Event;
use recast::generate::{generate, GenerateOptions};
use recast::migrate::{ErrorPolicy, Migration, StreamTemplate, Writer};
use recast::store::jsonl::{JsonlSink, JsonlSource};
use recast::store::sled_store::SledStore;
use recast::store::EventSink;
use recast::upcast::Registry;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn parse_lines<T: serde::de::DeserializeOwned>(path: &Path) -> u64 {
    let mut count = 0;
    for line in
        BufReader::with_capacity(1 << 16, std::fs::File::open(path).expect("log opens")).lines()
    {
        let line = line.expect("line reads");
        std::hint::black_box(serde_json::from_str::<T>(&line).expect("line parses"));
        count += 1;
    }
    count
}

fn migrate(log: &Path, work: &Path, registry: &Registry, sink: &mut dyn EventSink) {
    let state = work.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let source = JsonlSource::open(log).expect("log opens");
    let migration = Migration {
        source: &source,
        registry,
        template: StreamTemplate::default(),
        on_error: ErrorPolicy::Stop,
        batch_size: 5000,
    };
    let checkpoints = CheckpointStore::open(&state).expect("state opens");
    let writer = Writer {
        sink,
        checkpoints: Some(&checkpoints),
        dead_letter_path: None,
        dry_run: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(migration.run(writer, &AtomicBool::new(false), &|_| {}))
        .expect("migration runs");
}

fn rebuild(log: &Path, work: &Path, registry: &Registry, window_bytes: usize) {
    use recast::project::rebuild::{RebuildOptions, Rebuilder};
    use recast::project::ProjectionSet;
    use recast::readmodel::sled::SledReadModels;
    let target = work.join("readmodels");
    let _ = std::fs::remove_dir_all(&target);
    let source = JsonlSource::open(log).expect("log opens");
    let projections =
        ProjectionSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("projections"))
            .expect("projections load");
    let store = SledReadModels::open(&target).expect("read models open");
    let options = RebuildOptions {
        window_bytes,
        ..RebuildOptions::default()
    };
    let rebuilder = Rebuilder {
        source: &source,
        registry,
        projections: &projections,
        store: &store,
        options,
    };
    let report = rebuilder
        .run(&AtomicBool::new(false), &|_| {})
        .expect("rebuild runs");
    assert!(!report.stopped);
}

/// Rebuild into PostgreSQL, then `psql \copy` of the same final rows into a fresh table:
/// seconds of each, and the number of rows.
fn postgres_rounds(
    log: &Path,
    work: &Path,
    registry: &Registry,
    location: &str,
) -> Option<(f64, f64, u64)> {
    use recast::project::rebuild::{RebuildOptions, Rebuilder};
    use recast::project::ProjectionSet;
    use recast::readmodel::postgres::PostgresReadModels;
    use recast::readmodel::ReadModelStore;
    let mut admin = postgres::Client::connect(
        "host=127.0.0.1 user=postgres dbname=test connect_timeout=3",
        postgres::NoTls,
    )
    .ok()?;
    admin
        .batch_execute("DROP SCHEMA IF EXISTS recast_bench CASCADE")
        .ok()?;
    let store = PostgresReadModels::open(location).ok()?;
    let source = JsonlSource::open(log).expect("log opens");
    let projections =
        ProjectionSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("projections"))
            .expect("projections load");
    let rebuilder = Rebuilder {
        source: &source,
        registry,
        projections: &projections,
        store: &store,
        options: RebuildOptions::default(),
    };
    let started = Instant::now();
    rebuilder
        .run(&AtomicBool::new(false), &|_| {})
        .expect("rebuild into PostgreSQL runs");
    let rebuild_seconds = started.elapsed().as_secs_f64();
    // The same final rows, as psql would load them: one COPY file per projection.
    let mut rows = 0u64;
    let mut files = Vec::new();
    for projection in projections.all() {
        let path = work.join(format!("{}.copy", projection.name()));
        let mut text = String::new();
        store
            .scan_rows(projection.name(), 1, &mut |key, value| {
                text.push_str(&format!(
                    "{}\t{}\n",
                    key.replace('\\', "\\\\").replace('\t', "\\t"),
                    value.to_string().replace('\\', "\\\\")
                ));
                rows += 1;
                true
            })
            .expect("rows read");
        std::fs::write(&path, text).expect("copy file writes");
        files.push(path);
    }
    for index in 0..files.len() {
        admin.batch_execute(&format!("CREATE TABLE recast_bench.copy_{index} (key text COLLATE \"C\" PRIMARY KEY, doc jsonb NOT NULL)")).ok()?;
    }
    let started = Instant::now();
    for (index, file) in files.iter().enumerate() {
        let status = std::process::Command::new("psql")
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-c",
            ])
            .arg(format!(
                "\\copy recast_bench.copy_{index} FROM '{}'",
                file.display()
            ))
            .status()
            .ok()?;
        assert!(status.success(), "psql \\copy failed");
    }
    let copy_seconds = started.elapsed().as_secs_f64();
    admin
        .batch_execute("DROP SCHEMA IF EXISTS recast_bench CASCADE")
        .ok()?;
    Some((rebuild_seconds, copy_seconds, rows))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let events = env_number("RECAST_BENCH_EVENTS", 1_000_000);
    let rounds = env_number("RECAST_BENCH_ROUNDS", 3).max(1);
    let work = tempfile::tempdir().expect("temp dir");
    let log = work.path().join("log.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&log).expect("log creates"));
    generate(
        GenerateOptions {
            events,
            streams: (events / 20).max(1),
            seed: 1,
        },
        &mut out,
    )
    .expect("log generates");
    drop(out);
    let registry = Registry::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("upcasters"))
        .expect("upcasters load");

    let names = [
        "B_val (serde_json::Value)",
        "B_raw (envelope, raw payload)",
        "migrate JSONL -> JSONL",
        "migrate JSONL -> sled",
        "rebuild -> sled, state in memory",
        "rebuild -> sled, 4 MiB bound",
    ];
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        for (index, times) in seconds.iter_mut().enumerate() {
            let target = work.path().join("target");
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_file(&target);
            let started = Instant::now();
            match index {
                0 => assert_eq!(parse_lines::<serde_json::Value>(&log), events),
                1 => assert_eq!(parse_lines::<Event>(&log), events),
                2 => migrate(
                    &log,
                    work.path(),
                    &registry,
                    &mut JsonlSink::open(&target).expect("sink"),
                ),
                3 => migrate(
                    &log,
                    work.path(),
                    &registry,
                    &mut SledStore::open(&target).expect("sink"),
                ),
                4 => rebuild(&log, work.path(), &registry, 1 << 30),
                _ => rebuild(&log, work.path(), &registry, 4 << 20),
            }
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let rates: Vec<f64> = seconds
        .into_iter()
        .map(|t| events as f64 / median(t))
        .collect();
    let (b_val, b_raw) = (rates[0], rates[1]);
    println!(
        "{events} events, {rounds} rounds, medians, one process on {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<34} {:>14} {:>10} {:>10}",
        "pipeline", "events/s", "x B_raw", "x B_val"
    );
    let mut json = Vec::new();
    for (name, rate) in names.iter().zip(&rates) {
        println!(
            "{name:<34} {rate:>14.0} {:>10.2} {:>10.2}",
            rate / b_raw,
            rate / b_val
        );
        json.push(serde_json::json!({"pipeline": name, "events_per_second": rate, "ratio_to_b_raw": rate / b_raw, "ratio_to_b_val": rate / b_val}));
    }
    let location = std::env::var("RECAST_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?schema=recast_bench".into());
    let mut postgres_json = serde_json::Value::Null;
    let measured: Vec<(f64, f64, u64)> = (0..rounds)
        .filter_map(|_| postgres_rounds(&log, work.path(), &registry, &location))
        .collect();
    if let Some(&(_, _, rows)) = measured.first() {
        let rebuild = median(measured.iter().map(|m| m.0).collect());
        let copy = median(measured.iter().map(|m| m.1).collect());
        let (rebuild_rate, copy_rate) = (rows as f64 / rebuild, rows as f64 / copy);
        println!(
            "{:<34} {:>14.0} rows/s ({} final rows; {:.0} events/s)",
            "rebuild -> PostgreSQL",
            rebuild_rate,
            rows,
            events as f64 / rebuild
        );
        println!(
            "{:<34} {:>14.0} rows/s   ratio {:.2}",
            "psql \\copy of the same rows",
            copy_rate,
            rebuild_rate / copy_rate
        );
        postgres_json = serde_json::json!({"rows": rows, "rebuild_rows_per_second": rebuild_rate, "rebuild_events_per_second": events as f64 / rebuild, "psql_copy_rows_per_second": copy_rate, "ratio": rebuild_rate / copy_rate});
    } else {
        println!("PostgreSQL not reachable at {location}: its rows are left out");
    }
    let report = serde_json::json!({"events": events, "rounds": rounds, "results": json, "postgres": postgres_json});
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pipeline.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("serializes"),
    )
    .expect("report writes");
    println!("written to {}", path.display());
}
