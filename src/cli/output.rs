//! Formatting of reports: aligned text for people, JSON with `--json`.

use recast::migrate::{MigrationReport, VerifyReport};
use recast::upcast::Registry;
use serde::Serialize;
use std::collections::BTreeMap;

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialize")
    );
}

fn kinds_table(title: &str, kinds: &BTreeMap<String, u64>) {
    if kinds.is_empty() {
        return;
    }
    println!("  {title}:");
    for (kind, count) in kinds {
        println!("    {kind:<44} {count:>10}");
    }
}

/// The summary of `migrate`.
pub fn migration(report: &MigrationReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    let what = if report.dry_run {
        "dry run (nothing written)"
    } else {
        "migrated"
    };
    println!("{what}: {} -> {}", report.source, report.target);
    println!(
        "  job {} with upcasters {}",
        report.job, report.upcaster_checksum
    );
    if let Some(position) = report.resumed_after {
        println!("  resumed after source position {position}");
    }
    counts(report);
    if !report.completed {
        println!(
            "  not finished: stopped at source position {:?}",
            report.position
        );
    }
}

fn counts(report: &MigrationReport) {
    let c = &report.counts;
    let rows = [
        ("source events", c.source_events),
        ("target events", c.target_events),
        ("unchanged", c.unchanged),
        ("upcast 1:1", c.upcast),
        ("split", c.split),
        ("dropped", c.dropped),
        ("dead-lettered", c.dead_lettered),
        ("skipped", c.skipped),
    ];
    for (name, value) in rows {
        println!("  {name:<16} {value:>10}");
    }
    kinds_table("source by kind", &c.source_kinds);
    kinds_table("target by kind", &c.target_kinds);
    kinds_table("upcaster applications", &c.upcasters);
    for error in &report.errors {
        println!("  error: {error}");
    }
}

/// The report of `verify`.
pub fn verification(report: &VerifyReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    let verdict = if report.ok {
        "OK: every source event is accounted for and the target matches"
    } else {
        "MISMATCH"
    };
    println!(
        "verify {} -> {}: {verdict}",
        report.expected.source, report.expected.target
    );
    counts(&report.expected);
    println!("  expected target  {}", report.expected_digest);
    println!("  actual target    {}", report.actual_digest);
    println!("  dead letters     {}", report.dead_letters_found);
    for problem in &report.problems {
        println!("  problem: {problem}");
    }
}

#[derive(Serialize)]
struct PlanJson<'a> {
    upcaster_checksum: &'a str,
    upcasters: Vec<PlanUpcaster>,
    report: &'a MigrationReport,
}

#[derive(Serialize)]
struct PlanUpcaster {
    origin: String,
    input: String,
    outputs: Vec<String>,
    events: u64,
}

/// The report of `plan`.
pub fn plan(registry: &Registry, report: &MigrationReport, as_json: bool) {
    let upcasters: Vec<PlanUpcaster> = registry
        .upcasters()
        .iter()
        .map(|u| PlanUpcaster {
            origin: u.origin().to_string(),
            input: u.input().to_string(),
            outputs: u.outputs().iter().map(ToString::to_string).collect(),
            events: report
                .counts
                .upcasters
                .get(u.origin())
                .copied()
                .unwrap_or(0),
        })
        .collect();
    if as_json {
        return json(&PlanJson {
            upcaster_checksum: registry.checksum(),
            upcasters,
            report,
        });
    }
    println!(
        "chain check: OK, {} upcasters, set {}",
        upcasters.len(),
        registry.checksum()
    );
    for u in &upcasters {
        let outputs = if u.outputs.is_empty() {
            "(dropped)".to_string()
        } else {
            u.outputs.join(", ")
        };
        println!(
            "  {:<40} {:<24} -> {:<40} {:>8} events",
            u.origin, u.input, outputs, u.events
        );
    }
    println!("plan for {}:", report.source);
    counts(report);
}
