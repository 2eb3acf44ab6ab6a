//! `recast generate`: a deterministic synthetic log of the demo domain, of any size.
//!
//! The same `(events, streams, seed)` always gives the same bytes (ChaCha8 from the seed). A
//! quarter of the streams are users (`user-N`: `UserRegistered`, then `CartViewed`), the rest
//! orders (`order-N`: `OrderPlaced`, then `ItemAdded`/`LineItemAdded`, `PaymentReceived`,
//! `OrderShipped`). Each event is written at a randomly chosen old or current schema version,
//! so the upcasters of `upcasters/` have work to do. Events are written as they are made, and
//! only a revision counter per stream is kept, so memory depends on `streams`, not `events`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::io::Write;
use uuid::Uuid;

/// Errors of generating a log.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A generated log needs at least one stream.
    #[error("generate needs at least one stream")]
    NoStreams,
    /// Writing the output failed.
    #[error("cannot write the generated log")]
    Write(#[source] std::io::Error),
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Number of events.
    pub events: u64,
    /// Number of streams.
    pub streams: u64,
    /// Random seed.
    pub seed: u64,
}

const FIRST_NAMES: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson",
];
const SKUS: &[&str] = &[
    "apple", "bread", "cheese", "dates", "eggs", "flour", "grapes", "honey",
];
const UNITS: &[&str] = &["pcs", "kg", "m"];
const CARRIERS: &[&str] = &["DHL", "UPS", "GLS", "PostNord"];
const START_UNIX: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items[rng.gen_range(0..items.len())]
}

fn decimal(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Writes `options.events` events as JSONL to `out`.
pub fn generate(options: GenerateOptions, out: &mut dyn Write) -> Result<(), GenerateError> {
    if options.streams == 0 {
        return Err(GenerateError::NoStreams);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut revisions = vec![0u64; options.streams as usize];
    let mut line = String::with_capacity(512);
    for index in 0..options.events {
        let stream_number = rng.gen_range(0..options.streams);
        let revision = revisions[stream_number as usize];
        revisions[stream_number as usize] += 1;
        let is_user = stream_number % 4 == 0;
        let stream = if is_user {
            format!("user-{stream_number}")
        } else {
            format!("order-{stream_number}")
        };
        let (event_type, version, data) = if is_user {
            user_event(&mut rng, revision)
        } else {
            order_event(&mut rng, revision, stream_number)
        };
        let actor = rng.gen_range(0..options.streams) / 4 * 4;
        let mut id_bytes = [0u8; 16];
        rng.fill(&mut id_bytes);
        let mut correlation = [0u8; 16];
        rng.fill(&mut correlation);
        let recorded_at = chrono::DateTime::from_timestamp(START_UNIX + index as i64, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let event = json!({
            "stream": stream,
            "revision": revision,
            "id": uuid::Builder::from_random_bytes(id_bytes).into_uuid(),
            "type": event_type,
            "version": version,
            "data": data,
            "metadata": {"user_id": format!("user-{actor}"), "correlation_id": Uuid::from_bytes(correlation)},
            "recorded_at": recorded_at,
        });
        line.clear();
        line.push_str(&event.to_string());
        line.push('\n');
        out.write_all(line.as_bytes())
            .map_err(GenerateError::Write)?;
    }
    out.flush().map_err(GenerateError::Write)
}

fn user_event(rng: &mut ChaCha8Rng, revision: u64) -> (&'static str, u32, Value) {
    if revision > 0 {
        return ("CartViewed", 1, json!({"sku": pick(rng, SKUS)}));
    }
    let (first, last) = (pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES));
    let email = format!(
        "{}.{}@example.com",
        first.to_lowercase(),
        last.to_lowercase()
    );
    match rng.gen_range(0..3) {
        0 => (
            "UserRegistered",
            1,
            json!({"first_name": first, "last_name": last, "email": email}),
        ),
        1 if rng.gen_bool(0.5) => (
            "UserRegistered",
            2,
            json!({"full_name": format!("{first} {last}"), "email": email, "newsletter": if rng.gen_bool(0.5) { "Y" } else { "N" }}),
        ),
        1 => (
            "UserRegistered",
            2,
            json!({"full_name": format!("{first} {last}"), "email": email}),
        ),
        _ => (
            "UserRegistered",
            3,
            json!({"full_name": format!("{first} {last}"), "email": email, "registered_by": "user-0", "newsletter": rng.gen_bool(0.5)}),
        ),
    }
}

fn order_event(
    rng: &mut ChaCha8Rng,
    revision: u64,
    stream_number: u64,
) -> (&'static str, u32, Value) {
    let order_id = format!("o-{stream_number}");
    let customer = format!("user-{}", stream_number / 4 * 4);
    let cents = rng.gen_range(100..100_000u64);
    if revision == 0 {
        let address = format!("{} Main Street", rng.gen_range(1..200));
        return match rng.gen_range(0..3) {
            0 => (
                "OrderPlaced",
                1,
                json!({"order_id": order_id, "customer_id": customer, "total": decimal(cents), "shipping_address": address}),
            ),
            1 => (
                "OrderPlaced",
                2,
                json!({"order_id": order_id, "customer_id": customer, "total_cents": cents, "currency": "EUR", "shipping_address": address}),
            ),
            _ => (
                "OrderPlaced",
                3,
                json!({"order_id": order_id, "customer_id": customer, "total_cents": cents, "currency": "EUR"}),
            ),
        };
    }
    let sku = pick(rng, SKUS);
    let quantity = rng.gen_range(1..10u64);
    let unit = pick(rng, UNITS);
    match rng.gen_range(0..10) {
        0..=2 => (
            "ItemAdded",
            1,
            json!({"sku": sku, "quantity": quantity.to_string(), "price": decimal(cents % 5000), "unit": unit}),
        ),
        3..=4 => (
            "LineItemAdded",
            2,
            json!({"sku": sku, "quantity": quantity, "unit_price_cents": cents % 5000, "unit": unit}),
        ),
        5 => (
            "LineItemAdded",
            3,
            json!({"sku": sku, "quantity": quantity, "unit_price_cents": cents % 5000, "unit": "piece", "discount_cents": 0}),
        ),
        6 => (
            "PaymentReceived",
            1,
            json!({"order_id": order_id, "amount": decimal(cents), "method": if rng.gen_bool(0.5) { "CARD" } else { "Invoice" }}),
        ),
        7 => (
            "PaymentReceived",
            2,
            json!({"order_id": order_id, "amount_cents": cents, "method": "card"}),
        ),
        8 => (
            "OrderShipped",
            1,
            json!({"order_id": order_id, "tracking": format!("{}:{}", pick(rng, CARRIERS), cents), "shipped_at": START_UNIX + cents as i64}),
        ),
        _ => (
            "OrderShipped",
            2,
            json!({"order_id": order_id, "carrier": pick(rng, CARRIERS), "tracking_number": cents.to_string(), "shipped_at": "2024-01-02T00:00:00Z"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn run(events: u64, streams: u64, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        generate(
            GenerateOptions {
                events,
                streams,
                seed,
            },
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(run(300, 20, 7), run(300, 20, 7));
        assert_ne!(run(300, 20, 7), run(300, 20, 8));
    }

    #[test]
    fn output_is_valid_envelopes_with_consecutive_revisions() {
        let out = String::from_utf8(run(500, 10, 1)).unwrap();
        let mut next = std::collections::HashMap::new();
        let mut old_versions = 0;
        for line in out.lines() {
            let event: Event = serde_json::from_str(line).unwrap();
            event.validate().unwrap();
            let expected = next.entry(event.stream.clone()).or_insert(0u64);
            assert_eq!(event.revision, *expected);
            *expected += 1;
            old_versions += u32::from(event.version < 3 && event.event_type != "CartViewed");
        }
        assert_eq!(out.lines().count(), 500);
        assert!(old_versions > 100, "only {old_versions} old events");
        assert!(matches!(
            generate(
                GenerateOptions {
                    events: 1,
                    streams: 0,
                    seed: 0
                },
                &mut Vec::new()
            ),
            Err(GenerateError::NoStreams)
        ));
    }
}
