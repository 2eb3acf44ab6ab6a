//! Property tests of the laws: the chain is deterministic and keeps output order, and a
//! migration stopped after any batch and resumed (with any batch size) equals one run.

use super::upcasters;
use proptest::prelude::*;
use recast::checkpoint::CheckpointStore;
use recast::event::Event;
use recast::generate::{generate, GenerateOptions};
use recast::migrate::{ErrorPolicy, Migration, StreamTemplate, Writer};
use recast::store::jsonl::{JsonlSink, JsonlSource};
use recast::store::EventSource;
use recast::upcast::file::FileUpcaster;
use recast::upcast::{Registry, Upcaster};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn generated_events(events: u64, seed: u64) -> Vec<Event> {
    let mut out = Vec::new();
    generate(
        GenerateOptions {
            events,
            streams: 25,
            seed,
        },
        &mut out,
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn upcast_all(registry: &Registry, events: &[Event]) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| registry.upcast(e.clone()).unwrap().events)
        .map(|e| e.to_json_line())
        .collect()
}

fn demo_registry(reverse: bool) -> Registry {
    let mut files: Vec<_> = std::fs::read_dir(upcasters())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    if reverse {
        files.reverse();
    }
    let ups: Vec<Arc<dyn Upcaster>> = files
        .iter()
        .map(|p| Arc::new(FileUpcaster::load(p).unwrap()) as Arc<dyn Upcaster>)
        .collect();
    Registry::new(ups).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_chain_is_deterministic_whatever_the_load_order(seed in any::<u64>()) {
        let events = generated_events(200, seed);
        let forward = demo_registry(false);
        let first = upcast_all(&forward, &events);
        prop_assert_eq!(&first, &upcast_all(&forward, &events));
        prop_assert_eq!(&first, &upcast_all(&demo_registry(true), &events));
        let reversed = demo_registry(true);
        prop_assert_eq!(forward.checksum(), reversed.checksum());
    }

    #[test]
    fn split_outputs_keep_their_order_through_further_steps(emits in 1usize..6, upgraded in proptest::collection::vec(any::<bool>(), 6)) {
        let mut text = String::from("type = \"Batch\"\nfrom = 1\n");
        for i in 0..emits {
            text.push_str(&format!("[[emit]]\ntype = \"Part{i}\"\nversion = 1\nops = [{{ set = {{ path = \"/index\", value = {i} }} }}]\n"));
        }
        let mut ups: Vec<Arc<dyn Upcaster>> = vec![Arc::new(FileUpcaster::parse(Path::new("split.toml"), &text).unwrap())];
        for (i, up) in upgraded.iter().enumerate().take(emits) {
            if *up {
                let step = format!("type = \"Part{i}\"\nfrom = 1\n[[ops]]\nset = {{ path = \"/upgraded\", value = true }}\n");
                ups.push(Arc::new(FileUpcaster::parse(Path::new("step.toml"), &step).unwrap()));
            }
        }
        let registry = Registry::new(ups).unwrap();
        let event: Event = serde_json::from_str(r#"{"stream":"b-1","revision":0,"id":"00000000-0000-4000-8000-000000000001","type":"Batch","data":{}}"#).unwrap();
        let out = registry.upcast(event).unwrap().events;
        prop_assert_eq!(out.len(), emits);
        for (i, e) in out.iter().enumerate() {
            prop_assert_eq!(&e.event_type, &format!("Part{i}"));
            let data = e.data.to_value().unwrap();
            prop_assert_eq!(data["index"].as_u64(), Some(i as u64));
            prop_assert_eq!(e.version, if upgraded[i] { 2 } else { 1 });
        }
    }
}

/// Migrates `log` into `target`; stops after `stop_after` batches when given.
fn migrate_once(
    log: &Path,
    target: &Path,
    state: &Path,
    batch_size: usize,
    stop_after: Option<u64>,
) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let source = JsonlSource::open(log).unwrap();
        let registry = Registry::load_dir(&upcasters()).unwrap();
        let migration = Migration {
            source: &source,
            registry: &registry,
            template: StreamTemplate::default(),
            on_error: ErrorPolicy::Stop,
            batch_size,
        };
        let checkpoints = CheckpointStore::open(state).unwrap();
        let mut sink = JsonlSink::open(target).unwrap();
        let writer = Writer {
            sink: &mut sink,
            checkpoints: Some(&checkpoints),
            dead_letter_path: None,
            dry_run: false,
        };
        let stop = AtomicBool::new(false);
        let batches = std::sync::atomic::AtomicU64::new(0);
        let progress = |_| {
            if stop_after.is_some_and(|n| batches.fetch_add(1, Ordering::SeqCst) + 1 >= n) {
                stop.store(true, Ordering::SeqCst);
            }
        };
        migration
            .run(writer, &stop, &progress)
            .await
            .unwrap()
            .completed
    })
}

fn digest(path: &Path) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let source = JsonlSource::open(path).unwrap();
    runtime
        .block_on(recast::store::digest_source(&source as &dyn EventSource))
        .unwrap()
        .0
        .checksum
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn resume_after_any_batch_equals_an_uninterrupted_run(
        seed in any::<u64>(),
        first_batch in 1usize..80,
        second_batch in 1usize..80,
        stops in proptest::collection::vec(1u64..6, 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut log = Vec::new();
        generate(GenerateOptions { events: 300, streams: 30, seed }, &mut log).unwrap();
        std::fs::write(d.join("log.jsonl"), log).unwrap();
        prop_assert!(migrate_once(&d.join("log.jsonl"), &d.join("whole.jsonl"), &d.join("s1"), 1000, None));
        let mut batch = first_batch;
        for stop_after in stops {
            migrate_once(&d.join("log.jsonl"), &d.join("parts.jsonl"), &d.join("s2"), batch, Some(stop_after));
            batch = second_batch;
        }
        migrate_once(&d.join("log.jsonl"), &d.join("parts.jsonl"), &d.join("s2"), batch, None);
        prop_assert_eq!(digest(&d.join("whole.jsonl")), digest(&d.join("parts.jsonl")));
    }
}

fn rebuild_digests(log: &Path, store: &Path, window_bytes: usize, partitions: u32) -> Vec<String> {
    use recast::project::rebuild::{RebuildOptions, Rebuilder};
    use recast::project::ProjectionSet;
    use recast::readmodel::sled::SledReadModels;
    use recast::readmodel::ReadModelStore;
    let source = JsonlSource::open(log).unwrap();
    let registry = Registry::load_dir(&upcasters()).unwrap();
    let projections =
        ProjectionSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("projections"))
            .unwrap();
    let readmodels = SledReadModels::open(store).unwrap();
    let options = RebuildOptions {
        window_bytes,
        partitions,
        ..RebuildOptions::default()
    };
    let rebuilder = Rebuilder {
        source: &source,
        registry: &registry,
        projections: &projections,
        store: &readmodels,
        options,
    };
    let report = rebuilder.run(&AtomicBool::new(false), &|_| {}).unwrap();
    assert!(!report.stopped);
    projections
        .all()
        .iter()
        .map(|p| readmodels.digest(p.name()).unwrap().0)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn any_split_into_windows_gives_the_same_read_models(seed in any::<u64>(), window_bytes in 1usize..40_000, partitions in 1u32..4) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut log = Vec::new();
        generate(GenerateOptions { events: 400, streams: 30, seed }, &mut log).unwrap();
        std::fs::write(d.join("log.jsonl"), log).unwrap();
        let whole = rebuild_digests(&d.join("log.jsonl"), &d.join("whole"), 1 << 30, 1);
        let windows = rebuild_digests(&d.join("log.jsonl"), &d.join("windows"), window_bytes, partitions);
        prop_assert_eq!(whole, windows);
    }
}

/// The ops a generated handler picks from: some always apply, some fail on some events
/// (a missing field, a string added to a number, a write through a number).
const OPS: [&str; 9] = [
    r#"{ set = { path = "/a", from = "/x" } }"#,
    r#"{ set = { path = "/deep/y", value = 1 } }"#,
    r#"{ add = { path = "/n", from = "/num" } }"#,
    r#"{ append = { path = "/list", from = "/num" } }"#,
    r#"{ remove = ["/a"] }"#,
    r#"{ jq = ".state.j = ((.state.j // 0) + 1) | .state" }"#,
    r#"{ set = { path = "/n/inner", value = 2 } }"#,
    r#"{ append = { path = "/a", value = "z" } }"#,
    r#"{ delete = true }"#,
];

fn undo_projection(ops: &[usize]) -> recast::project::file::FileProjection {
    let ops: Vec<&str> = ops.iter().map(|&i| OPS[i]).collect();
    let text = format!(
        "name = \"p\"\nversion = 1\nkind = \"snapshot\"\ninitial = {{ n = 0 }}\n[[on]]\ntype = \"E\"\nops = [{}]\n",
        ops.join(", ")
    );
    recast::project::file::FileProjection::parse(Path::new("p.toml"), &text).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The fold changes states in place and takes a failing event back with an undo log; the
    /// law: after each event the state equals applying the event to a copy (it applied) or
    /// the state before it (it failed).
    #[test]
    fn a_failing_event_is_taken_back_exactly(
        ops in proptest::collection::vec(0usize..OPS.len(), 1..6),
        events in proptest::collection::vec((any::<bool>(), 0u8..3), 1..12),
    ) {
        use recast::project::fold::{Fold, Member};
        use recast::project::Projection;
        let projection = Arc::new(undo_projection(&ops));
        let member = Member { projection: projection.clone(), checkpoint: Default::default() };
        let mut fold = Fold::new(vec![member], ErrorPolicy::Stop);
        for (position, (with_x, num)) in events.into_iter().enumerate() {
            let num = match num { 0 => "1".to_string(), 1 => "\"one\"".to_string(), _ => "2.5".to_string() };
            let x = if with_x { r#""x": "v", "#} else { "" };
            let text = format!(r#"{{"stream":"s-1","revision":{position},"position":{position},"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"E","data":{{{x}"num": {num}}}}}"#);
            let event: Event = serde_json::from_str(&text).unwrap();
            let before = fold.dirty(0, "s-1").map(|d| d.state.clone());
            let result = fold.apply(std::slice::from_ref(&event), &|_, _| Ok(None), &|_, _| true);
            let after = fold.dirty(0, "s-1").map(|d| d.state.clone());
            if result.is_err() {
                prop_assert_eq!(after, before);
                continue;
            }
            let mut copy = before.flatten().unwrap_or_else(|| projection.initial());
            let data = event.data.to_value().unwrap();
            let outcome = projection.apply("s-1", &mut copy, &event, &data).unwrap();
            let expected = (outcome == recast::project::ops::Outcome::Keep).then_some(copy);
            prop_assert_eq!(after, Some(expected));
            fold.advance(event.position);
        }
    }
}
