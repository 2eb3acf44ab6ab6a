//! The rebuild into PostgreSQL beside `psql \copy` of the same final rows.

use crate::jobs;
use crate::observed::Mode;
use recast::readmodel::postgres::PostgresReadModels;
use recast::readmodel::ReadModelStore;
use recast::upcast::Registry;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One round: seconds of the whole rebuild, seconds of its commits, seconds of `psql \copy`
/// of the final rows into fresh tables, and the number of those rows.
pub struct PostgresRound {
    pub rebuild_seconds: f64,
    pub commit_seconds: f64,
    pub copy_seconds: f64,
    pub rows: u64,
}

const ADMIN: &str = "host=127.0.0.1 user=postgres dbname=test connect_timeout=3";

/// One round, or `None` when PostgreSQL does not answer.
pub fn round(
    log: &Path,
    work: &Path,
    registry: &Registry,
    location: &str,
) -> Option<PostgresRound> {
    let mut admin = postgres::Client::connect(ADMIN, postgres::NoTls).ok()?;
    admin
        .batch_execute("DROP SCHEMA IF EXISTS recast_bench CASCADE")
        .ok()?;
    let store = PostgresReadModels::open(location).ok()?;
    let reader = store.fork().expect("second connection");
    let started = Instant::now();
    let seen = jobs::rebuild(log, registry, Box::new(store), Mode::Forward, 256 << 20);
    let rebuild_seconds = started.elapsed().as_secs_f64();
    let commit_seconds = *seen.commit_seconds.lock().expect("not poisoned");
    let (files, rows) = copy_files(reader.as_ref(), work);
    for index in 0..files.len() {
        admin
            .batch_execute(&format!(
                "CREATE TABLE recast_bench.copy_{index} (key text COLLATE \"C\" PRIMARY KEY, doc jsonb NOT NULL)"
            ))
            .ok()?;
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
    Some(PostgresRound {
        rebuild_seconds,
        commit_seconds,
        copy_seconds,
        rows,
    })
}

/// The live rows of each demo projection as a COPY text file, as psql would load them.
fn copy_files(store: &dyn ReadModelStore, work: &Path) -> (Vec<PathBuf>, u64) {
    let mut rows = 0u64;
    let mut files = Vec::new();
    for projection in jobs::demo_projections().all() {
        let name = projection.name();
        let generation = store
            .meta(name)
            .expect("meta reads")
            .newest()
            .map(|(g, _)| g)
            .expect("a generation was built");
        let mut text = String::new();
        store
            .scan_rows(name, generation, &mut |key, value| {
                text.push_str(&key.replace('\\', "\\\\").replace('\t', "\\t"));
                text.push('\t');
                text.push_str(&value.to_string().replace('\\', "\\\\"));
                text.push('\n');
                rows += 1;
                true
            })
            .expect("rows read");
        let path = work.join(format!("{name}.copy"));
        std::fs::write(&path, text).expect("copy file writes");
        files.push(path);
    }
    (files, rows)
}
