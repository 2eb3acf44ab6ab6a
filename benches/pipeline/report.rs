//! The harness's rows, their baselines and targets, and the table and JSON made of them.

use crate::postgres::PostgresRound;
use serde_json::{json, Value};

/// One timed row of the harness.
pub struct RowSpec {
    pub id: &'static str,
    pub name: &'static str,
    /// The row it is a ratio to, if any.
    pub baseline: Option<&'static str>,
    /// The lowest ratio issue 5 asks for, if it sets one.
    pub target: Option<f64>,
}

const fn row(
    id: &'static str,
    name: &'static str,
    baseline: Option<&'static str>,
    target: Option<f64>,
) -> RowSpec {
    RowSpec {
        id,
        name,
        baseline,
        target,
    }
}

/// Every timed row, in the order each round runs them.
#[rustfmt::skip]
pub const ROWS: &[RowSpec] = &[
    row("b_val", "B_val: serde_json::Value per line", None, None),
    row("b_raw", "B_raw: envelope, raw payload", None, None),
    row("sled_raw", "raw sled insert of migrate's records", None, None),
    row("file_raw", "raw write of the same records to a file", None, None),
    row("migrate_every", "migrate JSONL->JSONL, every event upcast", Some("b_raw"), Some(0.33)),
    row("migrate_none", "migrate JSONL->JSONL, pass-through", Some("b_raw"), Some(0.6)),
    row("floor_every", "least work of every event upcast, one loop", Some("b_raw"), None),
    row("floor_none", "least work of a pass-through, one loop", Some("b_raw"), None),
    row("migrate_demo", "migrate JSONL->JSONL, demo upcasters", Some("b_raw"), None),
    row("migrate_sled", "migrate JSONL->sled, demo upcasters", Some("sled_raw"), Some(0.8)),
    row("rebuild_memory", "rebuild -> sled, state in memory", Some("b_raw"), Some(0.2)),
    row("fold_only", "parse + fold, writes dropped", Some("b_raw"), None),
    row("rebuild_bounded", "rebuild -> sled, 4 MiB bound", Some("b_raw"), None),
    row("sled_windows", "raw sled writes of its dirty rows", None, None),
];

/// The most time a bounded rebuild may take, over parse + fold plus raw dirty writes.
pub const BOUNDED_TARGET: f64 = 1.25;

/// Everything one run measured.
pub struct Results {
    pub events: u64,
    pub rounds: u64,
    pub windows: usize,
    pub dirty_rows: usize,
    /// Seconds of each round, per row of [`ROWS`].
    pub seconds: Vec<Vec<f64>>,
    /// CPU seconds (all threads) of each round, per row of [`ROWS`].
    pub cpu_seconds: Vec<Vec<f64>>,
    pub postgres: Vec<PostgresRound>,
    /// Where the PostgreSQL rows ran; `None` when `RECAST_BENCH_ONLY` left them out.
    pub postgres_location: Option<String>,
    /// Per log size: (job, peak RSS bytes).
    pub rss: Vec<(u64, Vec<(&'static str, u64)>)>,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The median of row `id`'s rounds in `series` (one entry per row of [`ROWS`]).
fn row_median(series: &[Vec<f64>], id: &str) -> Option<f64> {
    let index = ROWS.iter().position(|r| r.id == id).expect("known row");
    let times = &series[index];
    (!times.is_empty()).then(|| median(times.clone()))
}

impl Results {
    /// The median seconds of a row; `None` when it was not timed.
    fn time(&self, id: &str) -> Option<f64> {
        row_median(&self.seconds, id)
    }

    /// The median CPU seconds of a row; `None` when it was not timed.
    fn cpu_time(&self, id: &str) -> Option<f64> {
        row_median(&self.cpu_seconds, id)
    }

    /// Ratio of bounded rebuild time to parse + fold time plus raw writes of its dirty rows:
    /// (wall, per core). Judged per core, like every target (see the crate docs).
    fn bounded_ratio(&self) -> Option<(f64, f64)> {
        let wall = self.time("rebuild_bounded")?
            / (self.time("fold_only")? + self.time("sled_windows")?);
        let cpu = self.cpu_time("rebuild_bounded")?
            / (self.cpu_time("fold_only")? + self.cpu_time("sled_windows")?);
        Some((wall, cpu))
    }

    /// The best per-core ratio to B_raw a JSONL -> JSONL migration could reach: one that
    /// did nothing but parse its input (B_raw) and write its output (the raw file write).
    fn jsonl_ceiling(&self) -> Option<f64> {
        let parse = self.cpu_time("b_raw")?;
        Some(parse / (parse + self.cpu_time("file_raw")?))
    }

    fn rows(&self) -> Vec<Value> {
        ROWS.iter()
            .filter_map(|spec| Some((spec, self.time(spec.id)?)))
            .map(|(spec, time)| {
                let rate = self.events as f64 / time;
                let ratio = spec.baseline.and_then(|b| self.time(b)).map(|b| b / time);
                // Targets are per core: judged on CPU time, which counts every thread's work.
                let cpu = self.cpu_time(spec.id);
                let cpu_ratio = spec.baseline.and_then(|b| Some(self.cpu_time(b)? / cpu?));
                json!({
                    "pipeline": spec.name, "events_per_second": rate,
                    "events_per_cpu_second": cpu.map(|c| self.events as f64 / c),
                    "baseline": spec.baseline
                        .map(|b| ROWS.iter().find(|r| r.id == b).expect("known").name),
                    "ratio": ratio, "ratio_per_core": cpu_ratio, "target": spec.target,
                    "met": spec.target.zip(cpu_ratio).map(|(t, r)| r >= t),
                })
            })
            .collect()
    }

    fn postgres_json(&self) -> Value {
        let Some(first) = self.postgres.first() else {
            return Value::Null;
        };
        let rows = first.rows as f64;
        let rebuild = median(self.postgres.iter().map(|r| r.rebuild_seconds).collect());
        let commits = median(self.postgres.iter().map(|r| r.commit_seconds).collect());
        let copy = median(self.postgres.iter().map(|r| r.copy_seconds).collect());
        json!({
            "final_rows": first.rows,
            "rebuild_events_per_second": self.events as f64 / rebuild,
            "rebuild_rows_per_second": rows / rebuild,
            "commit_rows_per_second": rows / commits,
            "psql_copy_rows_per_second": rows / copy,
            "ratio_end_to_end": copy / rebuild,
            "ratio_commits": copy / commits,
            "target": 0.8,
        })
    }

    fn rss_json(&self) -> Value {
        let sizes: Vec<Value> = self
            .rss
            .iter()
            .map(|(events, jobs)| {
                let jobs: Vec<Value> = jobs
                    .iter()
                    .map(|(job, bytes)| json!({"job": job, "peak_rss_bytes": bytes}))
                    .collect();
                json!({"events": events, "jobs": jobs})
            })
            .collect();
        json!(sizes)
    }

    /// The whole run as pretty JSON.
    pub fn json(&self) -> String {
        let (wall, per_core) = self.bounded_ratio().unzip();
        let report = json!({
            "events": self.events, "rounds": self.rounds,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "results": self.rows(),
            "bounded": {"windows": self.windows, "dirty_rows": self.dirty_rows,
                "ratio_to_fold_plus_raw_writes": wall,
                "ratio_to_fold_plus_raw_writes_per_core": per_core,
                "target_at_most": BOUNDED_TARGET,
                "met": per_core.map(|r| r <= BOUNDED_TARGET)},
            "jsonl_ceiling_per_core": self.jsonl_ceiling(),
            "postgres": self.postgres_json(),
            "peak_rss": self.rss_json(),
        });
        serde_json::to_string_pretty(&report).expect("serializes")
    }

    /// The table, on stdout.
    pub fn print(&self) {
        println!(
            "{} events, {} rounds, medians, one process on {} cores",
            self.events,
            self.rounds,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!(
            "{:<42} {:>10} {:>10} {:>6} {:>9} {:>7}  baseline",
            "pipeline", "events/s", "per CPU s", "ratio", "per core", "target"
        );
        for row in self.rows() {
            let two = |key: &str| {
                row[key]
                    .as_f64()
                    .map_or(String::new(), |r| format!("{r:.2}"))
            };
            let target = row["target"]
                .as_f64()
                .map_or(String::new(), |t| format!(">={t}"));
            println!(
                "{:<42} {:>10.0} {:>10.0} {:>6} {:>9} {:>7}  {}",
                row["pipeline"].as_str().unwrap_or_default(),
                row["events_per_second"].as_f64().unwrap_or_default(),
                row["events_per_cpu_second"].as_f64().unwrap_or_default(),
                two("ratio"),
                two("ratio_per_core"),
                target,
                row["baseline"].as_str().unwrap_or("-"),
            );
        }
        if let Some((wall, cpu)) = self.bounded_ratio() {
            println!(
                "bounded rebuild time / (parse + fold + raw writes of its {} dirty rows in {} windows): {cpu:.2} per core, {wall:.2} wall (target <= {BOUNDED_TARGET} per core)",
                self.dirty_rows, self.windows
            );
        }
        if let Some(ceiling) = self.jsonl_ceiling() {
            println!(
                "JSONL -> JSONL ceiling: parsing (B_raw) and writing the same bytes alone come to {ceiling:.2} per core of B_raw"
            );
        }
        self.print_postgres();
        self.print_rss();
    }

    fn print_postgres(&self) {
        let pg = self.postgres_json();
        match &self.postgres_location {
            None => return println!("PostgreSQL rows not selected (RECAST_BENCH_ONLY)"),
            Some(location) if pg.is_null() => {
                return println!("PostgreSQL not reachable at {location}: its rows are left out")
            }
            Some(_) => {}
        }
        println!(
            "PostgreSQL, {} final rows: rebuild {:.0} rows/s ({:.0} events/s), its commits {:.0} rows/s, psql \\copy {:.0} rows/s; ratio end to end {:.2}, commits {:.2} (target >= 0.8)",
            pg["final_rows"], pg["rebuild_rows_per_second"].as_f64().unwrap_or_default(),
            pg["rebuild_events_per_second"].as_f64().unwrap_or_default(),
            pg["commit_rows_per_second"].as_f64().unwrap_or_default(),
            pg["psql_copy_rows_per_second"].as_f64().unwrap_or_default(),
            pg["ratio_end_to_end"].as_f64().unwrap_or_default(),
            pg["ratio_commits"].as_f64().unwrap_or_default(),
        );
    }

    fn print_rss(&self) {
        let Some((small, first)) = self.rss.first() else {
            return;
        };
        for (index, (job, bytes)) in first.iter().enumerate() {
            let mut line = format!(
                "peak RSS {job:<30} {small} events: {:.1} MB",
                *bytes as f64 / 1e6
            );
            for (events, jobs) in &self.rss[1..] {
                let other = jobs[index].1;
                line.push_str(&format!(
                    ", {events} events: {:.1} MB ({:.2}x)",
                    other as f64 / 1e6,
                    other as f64 / *bytes as f64
                ));
            }
            println!("{line}");
        }
    }
}
