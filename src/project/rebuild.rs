//! The rebuilder: replays the log, upcast on read, through projections into a read-model store.
//!
//! [`Rebuilder::run`] first picks a generation for each projection: the newest one built from
//! the same source with the same definition, upcasters and partitioning is continued (a
//! finished one simply catches up with new events); otherwise, or with `new_generation`, a new
//! generation starts beside the live one. The first generation ever built goes live when it
//! finishes; later ones wait for `swap`.
//!
//! Work is split into **lanes**, each one pass over the log with its own [`Fold`](super::fold::Fold) and its own
//! checkpoints: one lane for everything, or with `partitions = N` one lane per partition of the
//! snapshot projections (streams by hash) plus one lane for the tables, which keep log order.
//! Lanes run on their own threads. A lane writes its dirty states when they pass its share of
//! `window_bytes`, together with the checkpoints that cover exactly them, as one atomic window;
//! so a kill at any point resumes to the same read model as an uninterrupted run. The stop flag
//! (Ctrl-C) makes every lane write its window and return. A lane's pass is in
//! `project::lane`; this module picks generations, makes the lanes, runs them and reports.

use super::fold::FoldError;
use super::lane::Signals;
use super::{ProjectionKind, ProjectionSet};
use crate::migrate::ErrorPolicy;
use crate::readmodel::{Generation, Lease, PartId, ReadModelError, ReadModelStore};
use crate::store::{EventSource, StoreError};
use crate::upcast::{Registry, UpcastError};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Errors of a rebuild.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read-model store failed.
    #[error(transparent)]
    ReadModel(#[from] ReadModelError),
    /// Upcasting an event on read failed.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// A projection failed on an event under the `stop` policy.
    #[error(transparent)]
    Projection(#[from] Box<FoldError>),
    /// Workers share snapshot rebuilds only.
    #[error("projection {name} is a table: workers share snapshot rebuilds only (tables keep log order in one process)")]
    WorkersNeedSnapshots { name: String },
    /// A lane's thread panicked.
    #[error("a rebuild lane stopped unexpectedly")]
    LanePanicked,
}

/// How a rebuild runs.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Memory bound for dirty state, in bytes, shared by all lanes.
    pub window_bytes: usize,
    /// Partitions for snapshot projections.
    pub partitions: u32,
    /// What to do when a projection fails on an event.
    pub on_error: ErrorPolicy,
    /// Keep applying new events after catching up, until stopped.
    pub follow: bool,
    /// How often `follow` looks for new events.
    pub poll_interval: Duration,
    /// Start new generations even where one could be continued.
    pub new_generation: bool,
}

impl From<super::fold::ApplyError> for RebuildError {
    fn from(error: super::fold::ApplyError) -> Self {
        match error {
            super::fold::ApplyError::Projection(e) => RebuildError::Projection(e),
            super::fold::ApplyError::Store(e) => RebuildError::ReadModel(e),
        }
    }
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            window_bytes: 256 << 20,
            partitions: 1,
            on_error: ErrorPolicy::Stop,
            follow: false,
            poll_interval: Duration::from_millis(500),
            new_generation: false,
        }
    }
}

/// What a rebuild did for one projection.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionReport {
    pub name: String,
    pub generation: u32,
    pub live: Option<u32>,
    pub complete: bool,
    pub position: Option<u64>,
    pub events: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
}

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// Source events read, summed over lanes.
    pub events_read: u64,
    /// Wall time.
    pub seconds: f64,
    /// True when stopped before the end.
    pub stopped: bool,
    /// Per projection.
    pub projections: Vec<ProjectionReport>,
}

/// A member of a lane: which projection generation, which partition.
#[derive(Clone)]
pub(super) struct LaneMember {
    pub(super) projection: usize,
    pub(super) part: PartId,
}

pub(super) struct Lane {
    pub(super) partition: u32,
    pub(super) of: u32,
    pub(super) members: Vec<LaneMember>,
    /// For a worker: the claim the lane's windows are written under.
    pub(super) lease: Option<Lease>,
}

/// A rebuild of a set of projections from a source into a read-model store.
pub struct Rebuilder<'a> {
    pub source: &'a dyn EventSource,
    pub registry: &'a Registry,
    pub projections: &'a ProjectionSet,
    pub store: &'a dyn ReadModelStore,
    pub options: RebuildOptions,
}

/// FNV-1a: a fixed, documented hash, so a stream's partition never changes between runs or
/// Rust versions (std's hasher makes no such promise).
pub fn stream_partition(stream: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

impl Rebuilder<'_> {
    /// Picks (and records) the generation each projection builds.
    pub(super) fn generations(&self) -> Result<Vec<(u32, u32)>, ReadModelError> {
        let mut picked = Vec::new();
        for projection in self.projections.all() {
            let mut meta = self.store.meta(projection.name())?;
            let partitions = if projection.kind() == ProjectionKind::Snapshot {
                self.options.partitions.max(1)
            } else {
                1
            };
            let wanted = Generation {
                definition_version: projection.version(),
                definition_checksum: projection.checksum(),
                upcaster_checksum: self.registry.checksum().to_string(),
                kind: projection.kind(),
                partitions,
                source: self.source.describe(),
                complete: false,
            };
            let reusable = meta.newest().filter(|(_, g)| {
                !self.options.new_generation
                    && **g
                        == Generation {
                            complete: g.complete,
                            ..wanted.clone()
                        }
            });
            let generation = match reusable {
                Some((generation, _)) => generation,
                None => {
                    let generation = meta.newest().map_or(1, |(g, _)| g + 1);
                    self.store.prepare_generation(
                        projection.name(),
                        generation,
                        projection.kind(),
                        &projection.columns(),
                    )?;
                    meta.generations.insert(generation, wanted);
                    self.store.save_meta(projection.name(), &meta)?;
                    generation
                }
            };
            picked.push((generation, partitions));
        }
        Ok(picked)
    }

    fn lanes(&self, generations: &[(u32, u32)]) -> Vec<Lane> {
        let member = |index: usize, partition: u32| LaneMember {
            projection: index,
            part: PartId {
                projection: self.projections.all()[index].name().to_string(),
                generation: generations[index].0,
                partition,
            },
        };
        let partitions = self.options.partitions.max(1);
        let snapshots: Vec<usize> = (0..generations.len())
            .filter(|&i| generations[i].1 > 1)
            .collect();
        if snapshots.is_empty() {
            return vec![Lane {
                partition: 0,
                of: 1,
                members: (0..generations.len()).map(|i| member(i, 0)).collect(),
                lease: None,
            }];
        }
        let mut lanes: Vec<Lane> = (0..partitions)
            .map(|p| Lane {
                partition: p,
                of: partitions,
                members: snapshots.iter().map(|&i| member(i, p)).collect(),
                lease: None,
            })
            .collect();
        let rest: Vec<LaneMember> = (0..generations.len())
            .filter(|i| !snapshots.contains(i))
            .map(|i| member(i, 0))
            .collect();
        if !rest.is_empty() {
            lanes.push(Lane {
                partition: 0,
                of: 1,
                members: rest,
                lease: None,
            });
        }
        lanes
    }

    /// How many lanes (passes over the log) the rebuild runs.
    pub fn lane_count(&self) -> usize {
        let partitions = self.options.partitions.max(1) as usize;
        let has = |kind| self.projections.all().iter().any(|p| p.kind() == kind);
        match (
            partitions,
            has(ProjectionKind::Snapshot),
            has(ProjectionKind::Table),
        ) {
            (1, _, _) | (_, false, _) => 1,
            (n, true, true) => n + 1,
            (n, true, false) => n,
        }
    }

    /// Runs the rebuild until the end of the log (or, following, until `stop`).
    pub fn run(
        &self,
        stop: &AtomicBool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<RebuildReport, RebuildError> {
        let started = Instant::now();
        for projection in self.projections.all() {
            self.store.lock_projection(projection.name())?;
        }
        let generations = self.generations()?;
        let lanes = self.lanes(&generations);
        let lane_count = lanes.len();
        let read = AtomicU64::new(0);
        let caught_up = AtomicUsize::new(0);
        let finish_lock = Mutex::new(());
        let window = self.options.window_bytes / lane_count.max(1);
        // Sources on a network client (EventStoreDB) need the async runtime's context in the
        // lanes' threads; file and sled sources do not care.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let results: Vec<Result<bool, RebuildError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    let (read, caught_up, finish_lock, generations) =
                        (&read, &caught_up, &finish_lock, &generations);
                    let runtime = runtime.clone();
                    scope.spawn(move || {
                        let _context = runtime.as_ref().map(|r| r.enter());
                        let on_caught_up = || {
                            if caught_up.fetch_add(1, Ordering::SeqCst) + 1 == lane_count {
                                let _guard = finish_lock.lock();
                                self.finish(generations)?;
                            }
                            Ok(())
                        };
                        let signals = Signals {
                            stop,
                            read,
                            progress,
                        };
                        let result = futures::executor::block_on(self.run_lane(
                            lane,
                            window,
                            signals,
                            &on_caught_up,
                        ));
                        if result.is_err() {
                            stop.store(true, Ordering::SeqCst);
                        }
                        result
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(RebuildError::LanePanicked)))
                .collect()
        });
        let mut stopped = false;
        for result in results {
            stopped |= !result?;
        }
        Ok(RebuildReport {
            events_read: read.load(Ordering::SeqCst),
            seconds: started.elapsed().as_secs_f64(),
            stopped,
            projections: self.report(&generations)?,
        })
    }

    /// Marks the generations complete; the first one of a projection goes live.
    pub(super) fn finish(&self, generations: &[(u32, u32)]) -> Result<(), RebuildError> {
        for (projection, (generation, _)) in self.projections.all().iter().zip(generations) {
            let mut meta = self.store.meta(projection.name())?;
            if let Some(g) = meta.generations.get_mut(generation) {
                g.complete = true;
            }
            if meta.live.is_none() {
                meta.live = Some(*generation);
            }
            self.store.save_meta(projection.name(), &meta)?;
        }
        Ok(())
    }

    fn report(&self, generations: &[(u32, u32)]) -> Result<Vec<ProjectionReport>, RebuildError> {
        let mut reports = Vec::new();
        for (projection, (generation, _)) in self.projections.all().iter().zip(generations) {
            let meta = self.store.meta(projection.name())?;
            let parts = self.store.checkpoints(projection.name(), *generation)?;
            reports.push(ProjectionReport {
                name: projection.name().to_string(),
                generation: *generation,
                live: meta.live,
                complete: meta.generations.get(generation).is_some_and(|g| g.complete),
                position: parts.iter().map(|p| p.position).min().flatten(),
                events: parts.iter().map(|p| p.events).sum(),
                skipped: parts.iter().map(|p| p.skipped).sum(),
                dead_lettered: parts.iter().map(|p| p.dead_lettered).sum(),
                last_error: parts.iter().find_map(|p| p.last_error.clone()),
            });
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(
            stream_partition("order-1", 4),
            stream_partition("order-1", 4)
        );
        let mut seen = [0u32; 4];
        for i in 0..400 {
            seen[stream_partition(&format!("order-{i}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(stream_partition("anything", 1), 0);
    }
}
