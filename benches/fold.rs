//! Criterion benches of the projection fold: the demo projections over generated events,
//! with the demo upcasters applied on read, and over events already in their latest schema.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use recast::event::Event;
use recast::generate::{generate, GenerateOptions};
use recast::project::testing::replay;
use recast::project::ProjectionSet;
use recast::upcast::Registry;
use std::path::Path;

const EVENTS: u64 = 10_000;

fn fold(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = Registry::load_dir(&root.join("upcasters")).expect("upcasters load");
    let projections = ProjectionSet::load_dir(&root.join("projections")).expect("projections");
    let mut text = Vec::new();
    let options = GenerateOptions {
        events: EVENTS,
        streams: EVENTS / 20,
        seed: 1,
    };
    generate(options, &mut text).expect("log generates");
    let events: Vec<Event> = std::str::from_utf8(&text)
        .expect("utf-8")
        .lines()
        .enumerate()
        .map(|(position, line)| {
            let mut event: Event = serde_json::from_str(line).expect("parses");
            event.position = Some(position as u64);
            event
        })
        .collect();
    let upcast: Vec<Event> = events
        .iter()
        .flat_map(|e| registry.upcast(e.clone()).expect("upcasts").events)
        .collect();
    let none = Registry::empty();
    let mut group = c.benchmark_group("fold");
    group.sample_size(20);
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("demo projections, upcast on read", |b| {
        b.iter(|| replay(&events, &registry, &projections).expect("folds"))
    });
    group.bench_function("demo projections, latest schema", |b| {
        b.iter(|| replay(&upcast, &none, &projections).expect("folds"))
    });
    group.finish();
}

criterion_group!(benches, fold);
criterion_main!(benches);
