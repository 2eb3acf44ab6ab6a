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

/// One line of text, or a JSON value.
pub fn line(as_json: bool, value: &serde_json::Value, text: &str) {
    if as_json {
        json(value);
    } else {
        println!("{text}");
    }
}

/// The report of `rebuild`.
pub fn rebuild(report: &recast::project::rebuild::RebuildReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    let rate = report.events_read as f64 / report.seconds.max(1e-9);
    let how = if report.stopped { "stopped" } else { "rebuilt" };
    println!(
        "{how}: {} events read in {:.2}s ({rate:.0} events/s)",
        report.events_read, report.seconds
    );
    println!(
        "  {:<20} {:>5} {:>5} {:>9} {:>10} {:>10} {:>8} {:>8}",
        "projection", "gen", "live", "complete", "position", "events", "skipped", "dead"
    );
    for p in &report.projections {
        let live = p.live.map_or("-".to_string(), |g| g.to_string());
        let position = p.position.map_or("-".to_string(), |g| g.to_string());
        println!(
            "  {:<20} {:>5} {:>5} {:>9} {:>10} {:>10} {:>8} {:>8}",
            p.name, p.generation, live, p.complete, position, p.events, p.skipped, p.dead_lettered
        );
        if let Some(error) = &p.last_error {
            println!("    last error: {error}");
        }
    }
}

/// The table of `status`.
pub fn status(rows: &[super::status::StatusRow], as_json: bool) {
    if as_json {
        return json(&rows);
    }
    let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!(
        "{:<20} {:>9} {:>12} {:>10} {:>8} {:>10} {:>8} {:>6}  stale",
        "projection", "live(v)", "next", "position", "lag", "events/s", "skipped", "dead"
    );
    for r in rows {
        let live = match (r.live, r.live_version) {
            (Some(g), Some(v)) => format!("{g}(v{v})"),
            _ => "-".to_string(),
        };
        let stale = if r.stale.is_empty() {
            "no".to_string()
        } else {
            r.stale.join(", ")
        };
        let next = r.next.clone().unwrap_or_else(|| "-".to_string());
        println!(
            "{:<20} {:>9} {:>12} {:>10} {:>8} {:>10.0} {:>8} {:>6}  {stale}",
            r.name,
            live,
            next,
            show(r.position),
            show(r.lag),
            r.rate,
            r.skipped,
            r.dead_lettered
        );
        if let Some(error) = &r.last_error {
            println!("  last error: {error}");
        }
    }
}

/// Rows of `query`: JSON lines, or a table on a terminal.
pub fn rows(rows: &[(String, serde_json::Value)], as_json: bool) {
    use std::io::IsTerminal;
    if as_json || !std::io::stdout().is_terminal() {
        for (key, row) in rows {
            println!("{}", serde_json::json!({"key": key, "row": row}));
        }
        return;
    }
    let mut columns: Vec<String> = Vec::new();
    for (_, row) in rows {
        let fields = row.get("state").unwrap_or(row);
        if let Some(map) = fields.as_object() {
            for k in map.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let cell = |v: Option<&serde_json::Value>| {
        let text = v.map_or(String::new(), |v| {
            v.as_str().map_or_else(|| v.to_string(), str::to_string)
        });
        if text.chars().count() > 24 {
            format!("{}…", text.chars().take(23).collect::<String>())
        } else {
            text
        }
    };
    println!(
        "{:<24} {}",
        "key",
        columns
            .iter()
            .map(|c| format!("{c:<24}"))
            .collect::<String>()
    );
    for (key, row) in rows {
        let fields = row.get("state").unwrap_or(row);
        println!(
            "{:<24} {}",
            cell(Some(&serde_json::Value::String(key.clone()))),
            columns
                .iter()
                .map(|c| format!("{:<24}", cell(fields.get(c))))
                .collect::<String>()
        );
    }
}

/// The results of `recast test`.
pub fn cases(results: &[recast::project::testing::CaseResult], as_json: bool) {
    if as_json {
        return json(&results);
    }
    for result in results {
        if !result.blessed.is_empty() {
            println!(
                "blessed {}: {} expected files written",
                result.name,
                result.blessed.len()
            );
        } else if result.failures.is_empty() {
            println!("ok      {}", result.name);
        } else {
            println!("FAILED  {}", result.name);
            for (projection, diff) in &result.failures {
                println!(
                    "  {projection}:\n{}",
                    diff.lines()
                        .map(|l| format!("    {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    println!("{} passed, {failed} failed", results.len() - failed);
}

/// A few rows of a read model, after `run`.
pub fn sample(projection: &str, rows: &[(String, serde_json::Value)], as_json: bool) {
    if as_json {
        return json(
            &serde_json::json!({"projection": projection, "sample": rows.iter().map(|(k, v)| serde_json::json!({"key": k, "row": v})).collect::<Vec<_>>()}),
        );
    }
    println!("sample of {projection}:");
    for (key, row) in rows {
        println!("  {key}: {row}");
    }
}

/// The report of `rebuild --worker`.
pub fn worker(report: &recast::project::workers::WorkerReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    let how = if report.stopped {
        "worker stopped"
    } else {
        "worker done"
    };
    println!(
        "{how}: {} events read, finished partitions {:?}, lost {:?}",
        report.events_read, report.finished, report.lost
    );
}
