//! Where read models live: generations of each projection side by side, and their checkpoints.
//!
//! Every rebuild writes a **generation** (1, 2, 3, ...) of a projection. The [`ProjectionMeta`]
//! of a projection says which generation is live and keeps the ones before it, so `swap` makes
//! a finished generation live in one write, `rollback` makes the previous one live again, and
//! `prune` drops the rest. Reads ([`sled::SledReadModels::rows`] of the live generation) never
//! see a generation that is still being built.
//!
//! A [`Window`] is what the rebuilder commits at once: the rows it changed and the checkpoint
//! of each part (projection, generation, partition) that covers exactly those rows. The sled
//! store applies a window as one atomic batch.

pub mod sled;

use crate::project::ProjectionKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Errors of read-model stores.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    /// A location that names no read-model store.
    #[error("read-model location {0:?} is not understood: use sled:PATH")]
    BadLocation(String),
    /// sled failed.
    #[error("read-model store {path}")]
    Sled {
        path: std::path::PathBuf,
        #[source]
        source: ::sled::Error,
    },
    /// Another process holds the store (a rebuilder, or a query during one).
    #[error("read-model store {path} is in use by another process (one rebuilder at a time)")]
    Locked { path: std::path::PathBuf },
    /// A stored record that does not parse.
    #[error("read-model store {path}: record {key} is damaged")]
    Corrupt {
        path: std::path::PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// `swap` with no finished generation newer than the live one.
    #[error("projection {name}: nothing to swap to (no finished generation newer than the live one); run `recast rebuild {name}` first")]
    NothingBuilt { name: String },
    /// `rollback` with no previous generation.
    #[error("projection {name}: no previous generation to roll back to")]
    NoPrevious { name: String },
    /// A projection the store has never seen.
    #[error("projection {name}: nothing is built for it in this read-model store")]
    UnknownProjection { name: String },
}

/// One generation of a projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The definition's version.
    pub definition_version: u32,
    /// The definition's checksum.
    pub definition_checksum: String,
    /// The upcaster set's checksum.
    pub upcaster_checksum: String,
    /// Snapshot or table.
    pub kind: ProjectionKind,
    /// Number of partitions it is built in.
    pub partitions: u32,
    /// The event source it is built from.
    pub source: String,
    /// True once every partition reached the end of the log.
    pub complete: bool,
}

/// What the store knows of one projection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectionMeta {
    /// The live generation.
    pub live: Option<u32>,
    /// Generations that were live before, most recent last (for rollback).
    pub previous: Vec<u32>,
    /// Every generation still stored.
    pub generations: BTreeMap<u32, Generation>,
}

impl ProjectionMeta {
    /// The newest generation, if any.
    pub fn newest(&self) -> Option<(u32, &Generation)> {
        self.generations
            .iter()
            .next_back()
            .map(|(g, gen)| (*g, gen))
    }
}

/// The checkpoint of one part (projection, generation, partition).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartCheckpoint {
    /// Last log position applied.
    pub position: Option<u64>,
    /// Events applied.
    pub events: u64,
    /// Events skipped after a projection error.
    pub skipped: u64,
    /// Events sent to dead letters.
    pub dead_lettered: u64,
    /// The last projection error.
    pub last_error: Option<String>,
    /// Events per second of the last run.
    pub rate: f64,
    /// True once the part reached the end of the log.
    pub caught_up: bool,
}

/// Where a part lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartId {
    /// Projection name.
    pub projection: String,
    /// Generation.
    pub generation: u32,
    /// Partition number.
    pub partition: u32,
}

/// A row to write: a new state, or `None` to delete it.
#[derive(Debug, Clone)]
pub struct RowWrite {
    /// Projection name.
    pub projection: String,
    /// Generation.
    pub generation: u32,
    /// Row key (a stream for snapshots).
    pub key: String,
    /// The stored value, or `None` to delete.
    pub value: Option<Value>,
}

/// A dead letter of a projection: an event it failed on, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The event, as the projection saw it (upcast).
    pub event: Value,
    /// The failure.
    pub error: String,
}

/// Everything one commit writes, atomically.
#[derive(Debug, Default)]
pub struct Window {
    /// Changed rows.
    pub rows: Vec<RowWrite>,
    /// The checkpoint of each part the rows belong to.
    pub checkpoints: Vec<(PartId, PartCheckpoint)>,
    /// Dead letters recorded in this window, with the log position of their event.
    pub dead_letters: Vec<(PartId, u64, DeadLetter)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_generation_is_the_highest_number() {
        let generation = |complete| Generation {
            definition_version: 1,
            definition_checksum: "a".into(),
            upcaster_checksum: "b".into(),
            kind: ProjectionKind::Table,
            partitions: 1,
            source: "s".into(),
            complete,
        };
        let mut meta = ProjectionMeta::default();
        assert!(meta.newest().is_none());
        meta.generations.insert(2, generation(false));
        meta.generations.insert(1, generation(true));
        assert_eq!(meta.newest().map(|(g, _)| g), Some(2));
    }
}
