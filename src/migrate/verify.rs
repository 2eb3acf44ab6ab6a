//! `verify`: accounts for every source event of a migration against its target.
//!
//! It runs the migration again as a dry run (same code path, [`DrySink`]) to learn what the
//! target must hold, then reads the real target and compares: the canonical digest of all its
//! events, the counts per `(type, version)`, and the dead-letter file's count. The report is
//! `ok` only when all of these match and every source event is accounted for.

use super::dead_letter::count_dead_letters;
use super::dry::DrySink;
use super::{Migration, MigrationReport, Writer};
use crate::store::digest::{digest_source, DigestSummary};
use crate::store::EventSource;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// True when everything is accounted for and the target is exactly what it should be.
    pub ok: bool,
    /// What the migration should have done (a dry run over the whole source).
    pub expected: MigrationReport,
    /// Digest of the events the target should hold.
    pub expected_digest: DigestSummary,
    /// Digest of the events the target holds.
    pub actual_digest: DigestSummary,
    /// Target events per `Type vN`, as found.
    pub actual_kinds: BTreeMap<String, u64>,
    /// Dead letters found in the dead-letter file.
    pub dead_letters_found: u64,
    /// Every mismatch, in words.
    pub problems: Vec<String>,
}

/// Verifies a migration against its target.
pub async fn verify(
    migration: &Migration<'_>,
    target: &dyn EventSource,
    dead_letter_path: Option<&Path>,
) -> Result<VerifyReport, super::MigrateError> {
    let mut dry = DrySink::new(target.describe());
    let writer = Writer {
        sink: &mut dry,
        checkpoints: None,
        dead_letter_path: None,
        dry_run: true,
    };
    let (expected, failure) = migration
        .run_collect(writer, &AtomicBool::new(false), &|_| {})
        .await?;
    let expected_digest = dry.digest();
    let (actual_digest, actual_kinds) = digest_source(target).await?;
    let dead_letters_found = match dead_letter_path {
        Some(path) => count_dead_letters(path)?,
        None => 0,
    };
    let mut problems = Vec::new();
    if let Some(failure) = failure {
        problems.push(format!(
            "the migration cannot pass every source event: {}",
            crate::error::chain(&failure)
        ));
    }
    if !expected.counts.accounted() {
        problems.push("source events are not all accounted for".to_string());
    }
    if expected_digest.events != actual_digest.events {
        problems.push(format!(
            "target holds {} events, expected {}",
            actual_digest.events, expected_digest.events
        ));
    }
    if expected_digest.checksum != actual_digest.checksum {
        problems.push(format!(
            "target checksum {} differs from expected {}",
            actual_digest.checksum, expected_digest.checksum
        ));
    }
    let kinds = expected
        .counts
        .target_kinds
        .keys()
        .chain(actual_kinds.keys());
    for kind in kinds.collect::<std::collections::BTreeSet<_>>() {
        let want = expected.counts.target_kinds.get(kind).copied().unwrap_or(0);
        let have = actual_kinds.get(kind).copied().unwrap_or(0);
        if want != have {
            problems.push(format!("{kind}: target holds {have}, expected {want}"));
        }
    }
    if dead_letter_path.is_some() && dead_letters_found != expected.counts.dead_lettered {
        problems.push(format!(
            "dead-letter file holds {dead_letters_found} events, expected {}",
            expected.counts.dead_lettered
        ));
    }
    Ok(VerifyReport {
        ok: problems.is_empty(),
        expected,
        expected_digest,
        actual_digest,
        actual_kinds,
        dead_letters_found,
        problems,
    })
}
