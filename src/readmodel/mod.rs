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

mod copy_rows;
pub mod postgres;
pub mod sled;

use crate::project::{ColumnType, ProjectionKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Errors of read-model stores.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    /// A location that names no read-model store.
    #[error("read-model location {0:?} is not understood: use sled:PATH or postgres://USER@HOST:PORT/DB?schema=NAME")]
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
    /// PostgreSQL failed (after retries, for a lost connection).
    #[error("read-model store {location}")]
    Postgres {
        location: String,
        #[source]
        source: ::postgres::Error,
    },
    /// Streaming rows to PostgreSQL failed (after retries).
    #[error("read-model store {location}: sending COPY data failed")]
    Copy {
        location: String,
        #[source]
        source: std::io::Error,
    },
    /// A name that cannot be used as an SQL identifier.
    #[error("{what} name {name:?} is not allowed: use lowercase letters, digits and _, starting with a letter")]
    BadName { what: &'static str, name: String },
    /// Another rebuilder holds the projection.
    #[error(
        "projection {name} is being rebuilt by another process (advisory lock held in {location})"
    )]
    Busy { name: String, location: String },
    /// Workers share a rebuild through a server; this store has none.
    #[error("read-model store {location} cannot coordinate workers: use a postgres:// store")]
    NoWorkers { location: String },
    /// Another worker took over this worker's partition.
    #[error("projection {name}: partition {partition} of generation {generation} was taken over by another worker (its lease expired)")]
    LeaseLost {
        name: String,
        generation: u32,
        partition: u32,
    },
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
    /// Parts that had no rows in the store before this window: their rows cannot collide
    /// with stored ones (a store may insert them without looking).
    pub fresh: Vec<PartId>,
    /// For a worker: the claim this window is written under. The store renews it in the same
    /// transaction and refuses the window if another worker has taken the partition over.
    pub lease: Option<Lease>,
}

/// A worker's claim on one partition of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The partition claimed.
    pub part: PartId,
    /// Who holds it.
    pub owner: String,
    /// How long a claim lives without being renewed.
    pub seconds: u32,
}

/// A place where read models live. Methods take `&self`; [`ReadModelStore::fork`] gives a lane
/// of a rebuild its own handle (its own connection, where the store has connections).
///
/// `swap`, `rollback`, `prune`, `rows` and `digest` have default implementations in terms of
/// the other methods, so every store digests rows the same way and checksums compare across
/// stores.
pub trait ReadModelStore: Send + Sync {
    /// The location, without credentials.
    fn describe(&self) -> String;
    /// An independent handle on the same store.
    fn fork(&self) -> Result<Box<dyn ReadModelStore>, ReadModelError>;
    /// Names of every projection the store knows.
    fn projections(&self) -> Result<Vec<String>, ReadModelError>;
    /// What the store knows of a projection (empty when nothing).
    fn meta(&self, name: &str) -> Result<ProjectionMeta, ReadModelError>;
    /// Saves a projection's meta record durably.
    fn save_meta(&self, name: &str, meta: &ProjectionMeta) -> Result<(), ReadModelError>;
    /// Prepares storage for a new generation (a table, in SQL stores).
    fn prepare_generation(
        &self,
        _name: &str,
        _generation: u32,
        _kind: ProjectionKind,
        _columns: &[(String, ColumnType)],
    ) -> Result<(), ReadModelError> {
        Ok(())
    }
    /// Takes the exclusive right to rebuild a projection for as long as this handle lives.
    fn lock_projection(&self, _name: &str) -> Result<(), ReadModelError> {
        Ok(())
    }
    /// The checkpoint of a part.
    fn checkpoint(&self, part: &PartId) -> Result<Option<PartCheckpoint>, ReadModelError>;
    /// The checkpoints of every partition of a generation.
    fn checkpoints(
        &self,
        name: &str,
        generation: u32,
    ) -> Result<Vec<PartCheckpoint>, ReadModelError>;
    /// One stored row of a generation.
    fn row(&self, name: &str, generation: u32, key: &str) -> Result<Option<Value>, ReadModelError>;
    /// Visits the rows of a generation in key order (bytewise) until `visit` returns false.
    fn scan_rows(
        &self,
        name: &str,
        generation: u32,
        visit: &mut dyn FnMut(String, Value) -> bool,
    ) -> Result<(), ReadModelError>;
    /// The dead letters of a generation.
    fn dead_letters(&self, name: &str, generation: u32) -> Result<Vec<DeadLetter>, ReadModelError>;
    /// Applies a window atomically and durably. (By value: a store may drop each row's value
    /// once it has encoded it; holding them all until the end raised a bounded rebuild's peak
    /// memory by 9 MB.)
    fn commit(&self, window: Window) -> Result<(), ReadModelError>;
    /// Memory a commit takes, while it runs, for each row it inserts under a key the store did
    /// not have; a rebuild counts it against its memory bound. Zero unless a store says.
    fn new_row_bytes(&self) -> usize {
        0
    }
    /// Memory a commit takes, while it runs, for each row it writes (new or not), besides
    /// [`new_row_bytes`](Self::new_row_bytes); a rebuild counts it against its memory bound.
    /// Zero unless a store says.
    fn row_write_bytes(&self) -> usize {
        0
    }
    /// Drops a generation's rows, checkpoints and dead letters (not its meta entry).
    fn drop_generation(&self, name: &str, generation: u32) -> Result<(), ReadModelError>;

    /// Like [`lock_projection`](Self::lock_projection), but waits for the holder instead of
    /// refusing: workers take turns choosing the generation this way.
    fn wait_for_projection(&self, name: &str) -> Result<(), ReadModelError> {
        self.lock_projection(name)
    }
    /// Gives up the right taken by [`lock_projection`](Self::lock_projection).
    fn unlock_projection(&self, _name: &str) -> Result<(), ReadModelError> {
        Ok(())
    }
    /// Creates the claim rows of a generation's partitions, for workers (once; idempotent).
    fn claims_init(
        &self,
        _name: &str,
        _generation: u32,
        _partitions: u32,
    ) -> Result<(), ReadModelError> {
        Err(ReadModelError::NoWorkers {
            location: self.describe(),
        })
    }
    /// Claims a free partition (unclaimed, or whose lease expired), if any.
    fn claim(
        &self,
        _name: &str,
        _generation: u32,
        _owner: &str,
        _seconds: u32,
    ) -> Result<Option<u32>, ReadModelError> {
        Err(ReadModelError::NoWorkers {
            location: self.describe(),
        })
    }
    /// Marks a claimed partition done.
    fn claim_done(&self, _lease: &Lease) -> Result<(), ReadModelError> {
        Err(ReadModelError::NoWorkers {
            location: self.describe(),
        })
    }
    /// How many partitions of a generation are not done.
    fn claims_left(&self, _name: &str, _generation: u32) -> Result<u64, ReadModelError> {
        Err(ReadModelError::NoWorkers {
            location: self.describe(),
        })
    }

    /// Up to `limit` rows of a generation, in key order.
    fn rows(
        &self,
        name: &str,
        generation: u32,
        limit: Option<usize>,
    ) -> Result<Vec<(String, Value)>, ReadModelError> {
        let mut rows = Vec::new();
        self.scan_rows(name, generation, &mut |key, value| {
            rows.push((key, value));
            limit.is_none_or(|l| rows.len() < l)
        })?;
        Ok(rows)
    }

    /// Makes the newest finished generation live; the live one becomes the rollback target.
    fn swap(&self, name: &str) -> Result<u32, ReadModelError> {
        let mut meta = known(self, name)?;
        let live = meta.live.unwrap_or(0);
        let next = meta
            .generations
            .iter()
            .rev()
            .find(|(g, gen)| **g > live && gen.complete)
            .map(|(g, _)| *g);
        let next = next.ok_or_else(|| ReadModelError::NothingBuilt {
            name: name.to_string(),
        })?;
        if let Some(live) = meta.live {
            meta.previous.push(live);
        }
        meta.live = Some(next);
        self.save_meta(name, &meta)?;
        Ok(next)
    }

    /// Makes the previous live generation live again.
    fn rollback(&self, name: &str) -> Result<u32, ReadModelError> {
        let mut meta = known(self, name)?;
        let previous = meta
            .previous
            .pop()
            .ok_or_else(|| ReadModelError::NoPrevious {
                name: name.to_string(),
            })?;
        meta.live = Some(previous);
        self.save_meta(name, &meta)?;
        Ok(previous)
    }

    /// Drops every generation but the live one and any newer one still being built.
    fn prune(&self, name: &str) -> Result<Vec<u32>, ReadModelError> {
        let mut meta = known(self, name)?;
        let live = meta.live.unwrap_or(0);
        let dropped: Vec<u32> = meta
            .generations
            .iter()
            .filter(|(g, gen)| **g != live && (**g < live || gen.complete))
            .map(|(g, _)| *g)
            .collect();
        for generation in &dropped {
            self.drop_generation(name, *generation)?;
            meta.generations.remove(generation);
        }
        meta.previous.clear();
        self.save_meta(name, &meta)?;
        Ok(dropped)
    }

    /// A canonical digest of the live generation: SHA-256 over key and row, in key order.
    fn digest(&self, name: &str) -> Result<(String, u64), ReadModelError> {
        let meta = known(self, name)?;
        let live = meta.live.ok_or_else(|| ReadModelError::NothingBuilt {
            name: name.to_string(),
        })?;
        let mut hasher = Sha256::new();
        let mut count = 0;
        let mut line = String::new();
        self.scan_rows(name, live, &mut |key, value| {
            line.clear();
            crate::event::canonical_json(&Value::String(key), &mut line);
            line.push('\t');
            crate::event::canonical_json(&value, &mut line);
            line.push('\n');
            hasher.update(line.as_bytes());
            count += 1;
            true
        })?;
        Ok((format!("sha256:{}", hex::encode(hasher.finalize())), count))
    }
}

fn known(
    store: &(impl ReadModelStore + ?Sized),
    name: &str,
) -> Result<ProjectionMeta, ReadModelError> {
    let meta = store.meta(name)?;
    if meta.generations.is_empty() && meta.live.is_none() {
        return Err(ReadModelError::UnknownProjection {
            name: name.to_string(),
        });
    }
    Ok(meta)
}

/// Opens a read-model store by location: `sled:PATH` or `postgres://...`.
pub fn open(location: &str) -> Result<Box<dyn ReadModelStore>, ReadModelError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PostgresReadModels::open(location)?));
    }
    Ok(Box::new(sled::SledReadModels::open_location(location)?))
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
