//! Criterion benches of the upcaster chain (pass-through, one declarative step, three steps,
//! a split) and of the JSONL envelope parse.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use recast::event::Event;
use recast::upcast::file::FileUpcaster;
use recast::upcast::{Registry, Upcaster};
use std::path::Path;
use std::sync::Arc;

fn event(event_type: &str, version: u32, data: &str) -> Event {
    let line = format!(
        r#"{{"stream":"order-1","revision":0,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"{event_type}","version":{version},"data":{data},"metadata":{{"user_id":"user-4"}}}}"#
    );
    serde_json::from_str(&line).expect("bench event parses")
}

fn demo_registry() -> Registry {
    Registry::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("upcasters"))
        .expect("demo upcasters load")
}

fn chain(c: &mut Criterion) {
    let registry = demo_registry();
    let mut group = c.benchmark_group("chain");
    group.throughput(Throughput::Elements(1));
    let cases = [
        (
            "pass-through",
            event(
                "OrderShipped",
                2,
                r#"{"order_id":"o-1","carrier":"DHL","tracking_number":"1","shipped_at":"2024-01-02T00:00:00Z"}"#,
            ),
        ),
        (
            "one declarative step",
            event(
                "LineItemAdded",
                2,
                r#"{"sku":"apple","quantity":2,"unit_price_cents":125,"unit":"pcs"}"#,
            ),
        ),
        (
            "three steps",
            event(
                "OrderPlaced",
                1,
                r#"{"order_id":"o-1","customer_id":"user-4","total":"10.50","shipping_address":"1 Main Street"}"#,
            ),
        ),
    ];
    for (name, input) in cases {
        group.bench_function(name, |b| {
            b.iter_batched(
                || input.clone(),
                |e| registry.upcast(e).expect("upcasts"),
                BatchSize::SmallInput,
            )
        });
    }
    let split_text = "type = \"Batch\"\nfrom = 1\n[[emit]]\ntype = \"A\"\nversion = 1\n[[emit]]\ntype = \"B\"\nversion = 1\n";
    let split: Arc<dyn Upcaster> =
        Arc::new(FileUpcaster::parse(Path::new("split.toml"), split_text).expect("parses"));
    let split_registry = Registry::new(vec![split]).expect("valid");
    let input = event("Batch", 1, r#"{"a":1,"b":[1,2,3]}"#);
    group.bench_function("split", |b| {
        b.iter_batched(
            || input.clone(),
            |e| split_registry.upcast(e).expect("upcasts"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let line = event("OrderPlaced", 1, r#"{"order_id":"o-1","customer_id":"user-4","total":"10.50","shipping_address":"1 Main Street"}"#).to_json_line();
    let mut group = c.benchmark_group("jsonl");
    group.throughput(Throughput::Bytes(line.len() as u64));
    group.bench_function("envelope with raw payload", |b| {
        b.iter(|| serde_json::from_str::<Event>(&line).expect("parses"))
    });
    group.bench_function("serde_json::Value", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(&line).expect("parses"))
    });
    let parsed: Event = serde_json::from_str(&line).expect("parses");
    group.bench_function("write envelope", |b| b.iter(|| parsed.to_json_line()));
    group.finish();
}

criterion_group!(benches, chain, envelope);
criterion_main!(benches);
