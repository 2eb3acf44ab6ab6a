//! Criterion benches of the stores: the JSONL reader and writer, and sled batch writes (the
//! event store's append beside a raw sled batch of the same records).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use recast::event::Event;
use recast::generate::{generate, GenerateOptions};
use recast::store::jsonl::{JsonlSink, JsonlSource};
use recast::store::sled_store::SledStore;
use recast::store::{AppendRequest, EventSink, ExpectedRevision, NewEvent};
use std::path::Path;

const EVENTS: u64 = 5_000;

fn log_text() -> Vec<u8> {
    let mut out = Vec::new();
    let options = GenerateOptions {
        events: EVENTS,
        streams: EVENTS / 20,
        seed: 1,
    };
    generate(options, &mut out).expect("log generates");
    out
}

/// One request per event, in log order, as `migrate` sends them.
fn requests(text: &[u8]) -> Vec<AppendRequest> {
    let text = std::str::from_utf8(text).expect("utf-8");
    text.lines()
        .map(|line| {
            let event: Event = serde_json::from_str(line).expect("parses");
            AppendRequest {
                stream: event.stream.clone(),
                expected: ExpectedRevision::Any,
                events: vec![NewEvent {
                    id: event.id,
                    event_type: event.event_type,
                    version: event.version,
                    data: event.data,
                    metadata: event.metadata,
                    recorded_at: event.recorded_at,
                }],
            }
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn jsonl(c: &mut Criterion) {
    let text = log_text();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, &text).expect("log writes");
    let mut group = c.benchmark_group("jsonl");
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("reader, 5000 events", |b| {
        let source = JsonlSource::open(&log).expect("opens");
        b.iter(|| source.events().expect("reads").count())
    });
    let batch = requests(&text);
    let runtime = runtime();
    group.bench_function("writer, 5000 events and a commit", |b| {
        b.iter_batched(
            || {
                let path = dir.path().join("out.jsonl");
                let _ = std::fs::remove_file(&path);
                (JsonlSink::open(&path).expect("sink"), batch.clone())
            },
            |(mut sink, batch)| {
                runtime.block_on(async {
                    sink.restore(None).await.expect("restores");
                    sink.append_batch(batch).await.expect("appends");
                    sink.commit().await.expect("commits")
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn fresh(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    path
}

fn sled_batches(c: &mut Criterion) {
    let text = log_text();
    let batch = requests(&text);
    let records: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = runtime();
    let mut group = c.benchmark_group("sled");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("event store append_batch, 5000 events", |b| {
        b.iter_batched(
            || {
                let store = SledStore::open(&fresh(dir.path(), "store")).expect("store");
                (store, batch.clone())
            },
            |(mut store, batch)| {
                runtime
                    .block_on(store.append_batch(batch))
                    .expect("appends")
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("raw sled batch of the same records", |b| {
        b.iter_batched(
            || sled::open(fresh(dir.path(), "raw")).expect("sled opens"),
            |db| {
                let mut writes = sled::Batch::default();
                for (position, record) in records.iter().enumerate() {
                    writes.insert(&(position as u64).to_be_bytes(), *record);
                }
                db.apply_batch(writes).expect("applies");
                db.flush().expect("flushes")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, jsonl, sled_batches);
criterion_main!(benches);
