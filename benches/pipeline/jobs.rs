//! The timed jobs: baselines (parsing, raw sled inserts) and recast's own pipelines.

use crate::observed::{Mode, Observed, Seen};
use recast::checkpoint::CheckpointStore;
use recast::migrate::{ErrorPolicy, Migration, StreamTemplate, Writer};
use recast::project::rebuild::{RebuildOptions, Rebuilder};
use recast::project::ProjectionSet;
use recast::readmodel::ReadModelStore;
use recast::store::jsonl::JsonlSource;
use recast::store::EventSink;
use recast::upcast::Registry;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Source events per migration batch, and records per raw sled batch.
pub const BATCH: usize = 5000;

/// Parses every line of `path` as `T`; the number of lines.
pub fn parse_lines<T: serde::de::DeserializeOwned>(path: &Path) -> u64 {
    let mut count = 0;
    let file = std::fs::File::open(path).expect("log opens");
    for line in BufReader::with_capacity(1 << 16, file).lines() {
        let line = line.expect("line reads");
        std::hint::black_box(serde_json::from_str::<T>(&line).expect("line parses"));
        count += 1;
    }
    count
}

/// The lines of a JSONL file, as bytes.
pub fn read_records(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).expect("records open");
    BufReader::with_capacity(1 << 16, file)
        .split(b'\n')
        .map(|line| line.expect("record reads"))
        .collect()
}

/// The baseline of the sled event store: each record under its position, [`BATCH`] records per
/// atomic batch, a flush after each batch (as the store makes every batch durable).
pub fn raw_sled_insert(folder: &Path, records: &[Vec<u8>]) {
    let db = sled::open(folder).expect("sled opens");
    let tree = db.open_tree("log").expect("tree opens");
    for (chunk_index, chunk) in records.chunks(BATCH).enumerate() {
        let mut batch = sled::Batch::default();
        for (index, record) in chunk.iter().enumerate() {
            let position = (chunk_index * BATCH + index) as u64;
            batch.insert(&position.to_be_bytes(), record.as_slice());
        }
        tree.apply_batch(batch).expect("batch applies");
        db.flush().expect("flushes");
    }
}

/// What the kernel alone takes of a JSONL sink's work: `records` written as lines to a new
/// file through a 64 KiB buffer, with an `fdatasync` every [`BATCH`] records, as the sink
/// writes and commits them. No JSONL -> JSONL migration can cost less than B_raw plus this.
pub fn raw_write(path: &Path, records: &[Vec<u8>]) {
    let file = std::fs::File::create(path).expect("file creates");
    let mut out = BufWriter::with_capacity(1 << 16, file);
    for chunk in records.chunks(BATCH) {
        for record in chunk {
            out.write_all(record).expect("record writes");
            out.write_all(b"\n").expect("record writes");
        }
        out.flush().expect("file writes");
        out.get_ref().sync_data().expect("file syncs");
    }
}

/// The baseline of a bounded rebuild's writes: the same rows, one batch and flush per window.
pub fn raw_sled_windows(folder: &Path, windows: &[crate::observed::WindowRows]) {
    let db = sled::open(folder).expect("sled opens");
    let tree = db.open_tree("readmodels").expect("tree opens");
    for window in windows {
        let mut batch = sled::Batch::default();
        for (key, value) in window {
            batch.insert(key.as_slice(), value.as_slice());
        }
        tree.apply_batch(batch).expect("batch applies");
        db.flush().expect("flushes");
    }
}

/// `recast migrate` of the log into `sink`, with checkpoints in `state`.
pub fn migrate(log: &Path, state: &Path, registry: &Registry, sink: &mut dyn EventSink) {
    let _ = std::fs::remove_dir_all(state);
    let source = JsonlSource::open(log).expect("log opens");
    let migration = Migration {
        source: &source,
        registry,
        template: StreamTemplate::default(),
        on_error: ErrorPolicy::Stop,
        batch_size: BATCH,
    };
    let checkpoints = CheckpointStore::open(state).expect("state opens");
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

/// The demo projections.
pub fn demo_projections() -> ProjectionSet {
    ProjectionSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("projections"))
        .expect("projections load")
}

/// `recast rebuild` of the demo projections from the log into `store`, seen through `mode`.
pub fn rebuild(
    log: &Path,
    registry: &Registry,
    store: Box<dyn ReadModelStore>,
    mode: Mode,
    window_bytes: usize,
) -> Arc<Seen> {
    let source = JsonlSource::open(log).expect("log opens");
    let projections = demo_projections();
    let (store, seen) = Observed::new(store, mode);
    let rebuilder = Rebuilder {
        source: &source,
        registry,
        projections: &projections,
        store: &store,
        options: RebuildOptions {
            window_bytes,
            ..RebuildOptions::default()
        },
    };
    let report = rebuilder
        .run(&AtomicBool::new(false), &|_| {})
        .expect("rebuild runs");
    assert!(!report.stopped);
    seen
}

/// One declarative step for every (type, version) of the log, so every event is upcast once.
pub fn one_step_each(log: &Path, folder: &Path) -> Registry {
    let mut kinds = std::collections::BTreeSet::new();
    let file = std::fs::File::open(log).expect("log opens");
    for line in BufReader::new(file).lines() {
        let event: recast::event::Event =
            serde_json::from_str(&line.expect("line reads")).expect("line parses");
        kinds.insert((event.event_type, event.version));
    }
    std::fs::create_dir_all(folder).expect("folder creates");
    for (index, (event_type, version)) in kinds.iter().enumerate() {
        let text = format!(
            "type = \"{event_type}\"\nfrom = {version}\nto = {}\n\n[[ops]]\nadd = {{ path = \"/migrated\", value = true }}\n",
            version + 100
        );
        std::fs::write(folder.join(format!("{index:03}.toml")), text).expect("upcaster writes");
    }
    Registry::load_dir(folder).expect("one-step upcasters load")
}
