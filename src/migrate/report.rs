//! What a migration did, event by event, added up: [`MigrationCounts`] and [`MigrationReport`].
//!
//! Every source event ends in exactly one of: unchanged (no upcaster), upcast (one output),
//! split (several outputs), dropped (none), dead-lettered, skipped. [`MigrationCounts::accounted`]
//! checks that these add up to the events read. Counts are kept in the checkpoint, so a resumed
//! job reports the whole job, not only its last run.

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Running totals of a migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCounts {
    /// Source events read.
    pub source_events: u64,
    /// Events written (or, in a dry run, that would be written).
    pub target_events: u64,
    /// Source events no upcaster touched.
    pub unchanged: u64,
    /// Source events upcast into exactly one event.
    pub upcast: u64,
    /// Source events split into several events.
    pub split: u64,
    /// Source events upcast into no event.
    pub dropped: u64,
    /// Source events sent to the dead-letter file.
    pub dead_lettered: u64,
    /// Source events skipped after an error.
    pub skipped: u64,
    /// Source events per `Type vN`.
    pub source_kinds: BTreeMap<String, u64>,
    /// Target events per `Type vN`.
    pub target_kinds: BTreeMap<String, u64>,
    /// Applications of each upcaster (by file or name).
    pub upcasters: BTreeMap<String, u64>,
}

/// Adds one to `map[key]`, allocating the key only the first time it is seen.
pub fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

/// Per-(type, version) counts not yet merged into a [`MigrationCounts`]: counting into the
/// report's `"Type vN"` maps formatted a key per event, which cost 6% of a pass-through
/// migration (perf); these are merged once per batch.
#[derive(Debug, Default)]
pub struct KindTally {
    source: FxHashMap<(CompactString, u32), u64>,
    target: FxHashMap<(CompactString, u32), u64>,
    /// Events no upcaster touched, counted once for both sides.
    unchanged: FxHashMap<(CompactString, u32), u64>,
}

impl KindTally {
    /// Counts one source event of this kind, taken before the event is upcast.
    pub fn source(&mut self, kind: (CompactString, u32)) {
        *self.source.entry(kind).or_default() += 1;
    }

    /// Counts an event that no upcaster touched: a source event and its one target event,
    /// of the same kind, in one lookup (a pass-through migration counts every event here).
    pub fn unchanged(&mut self, kind: (CompactString, u32)) {
        *self.unchanged.entry(kind).or_default() += 1;
    }

    /// Counts one target event of this kind.
    pub fn target(&mut self, event_type: &str, version: u32) {
        *self.target.entry((event_type.into(), version)).or_default() += 1;
    }

    /// Adds the tally to `counts` and starts again from zero.
    pub fn merge_into(&mut self, counts: &mut MigrationCounts) {
        for (tally, map) in [
            (&mut self.source, &mut counts.source_kinds),
            (&mut self.target, &mut counts.target_kinds),
        ] {
            for ((event_type, version), n) in tally.drain() {
                *map.entry(format!("{event_type} v{version}")).or_default() += n;
            }
        }
        for ((event_type, version), n) in self.unchanged.drain() {
            let kind = format!("{event_type} v{version}");
            *counts.source_kinds.entry(kind.clone()).or_default() += n;
            *counts.target_kinds.entry(kind).or_default() += n;
        }
    }
}

impl MigrationCounts {
    /// True when every source event is counted in exactly one outcome.
    pub fn accounted(&self) -> bool {
        self.unchanged + self.upcast + self.split + self.dropped + self.dead_lettered + self.skipped
            == self.source_events
    }
}

/// At most this many error messages are kept in a report.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// The result of a migration run (or dry run, or plan).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The job's checkpoint key.
    pub job: String,
    /// Source location.
    pub source: String,
    /// Target location.
    pub target: String,
    /// True when nothing was written.
    pub dry_run: bool,
    /// The checkpoint position this run started after, if it resumed.
    pub resumed_after: Option<u64>,
    /// The last source position fully written.
    pub position: Option<u64>,
    /// True when the whole source was processed (false when stopped or failed).
    pub completed: bool,
    /// Checksum of the upcaster set used.
    pub upcaster_checksum: String,
    /// Totals over the whole job.
    pub counts: MigrationCounts,
    /// Messages of events that were skipped or dead-lettered (the first 100).
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounted_needs_every_event_in_one_outcome() {
        let mut counts = MigrationCounts {
            source_events: 5,
            unchanged: 1,
            upcast: 1,
            split: 1,
            dropped: 1,
            ..Default::default()
        };
        assert!(!counts.accounted());
        counts.dead_lettered = 1;
        assert!(counts.accounted());
        counts.skipped = 1;
        assert!(!counts.accounted());
    }
}
