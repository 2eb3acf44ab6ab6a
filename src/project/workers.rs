//! Workers: several processes, on any machines, share one snapshot rebuild through the
//! read-model store (PostgreSQL).
//!
//! Each worker picks the generation like a single rebuilder would (under the projection's
//! advisory lock, released right after), creates the claim rows of its partitions, then loops:
//! claim a free partition (`FOR UPDATE SKIP LOCKED`, one whose owner's lease expired counts as
//! free), run one lane over it, mark it done. Every window a worker writes renews its lease in
//! the same transaction and is refused if another worker has taken the partition over, so a
//! worker that stalled past its lease can never overwrite its successor. Each partition keeps
//! its own checkpoint, so a partition taken over resumes where the dead worker's last window
//! ended. When no partition is left, the generation is complete (and goes live if it is the
//! first); the result equals a single-process rebuild.

use super::lane::Signals;
use super::rebuild::{Lane, LaneMember, RebuildError, Rebuilder};
use super::ProjectionKind;
use crate::readmodel::{Lease, PartId, ReadModelError};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Who a worker is and how long its claims live.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// A name unique among the workers (host and process, say).
    pub owner: String,
    /// Lease length: a claim not renewed for this long is free for others.
    pub lease_seconds: u32,
}

/// What one worker did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerReport {
    /// Partitions this worker finished, as (projection, partition).
    pub finished: Vec<(String, u32)>,
    /// Partitions it lost to another worker.
    pub lost: Vec<(String, u32)>,
    /// Events it read.
    pub events_read: u64,
    /// True when stopped before every partition was done.
    pub stopped: bool,
}

impl Rebuilder<'_> {
    /// Runs as one worker until every partition of every selected snapshot projection is done.
    pub fn run_worker(
        &self,
        worker: &WorkerOptions,
        stop: &AtomicBool,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<WorkerReport, RebuildError> {
        if let Some(table) = self
            .projections
            .all()
            .iter()
            .find(|p| p.kind() != ProjectionKind::Snapshot)
        {
            return Err(RebuildError::WorkersNeedSnapshots {
                name: table.name().to_string(),
            });
        }
        for projection in self.projections.all() {
            self.store.wait_for_projection(projection.name())?;
        }
        let generations = self.generations();
        for projection in self.projections.all() {
            self.store.unlock_projection(projection.name())?;
        }
        let generations = generations?;
        for (projection, (generation, partitions)) in
            self.projections.all().iter().zip(&generations)
        {
            self.store
                .claims_init(projection.name(), *generation, *partitions)?;
        }
        let read = AtomicU64::new(0);
        let mut report = WorkerReport::default();
        loop {
            if stop.load(Ordering::SeqCst) {
                report.stopped = true;
                break;
            }
            let Some((index, partition)) = self.claim_any(&generations, worker)? else {
                if self.all_done(&generations)? {
                    self.finish(&generations)?;
                    break;
                }
                // Others hold the rest; wait for them to finish or for a lease to expire.
                std::thread::sleep(Duration::from_millis(300));
                continue;
            };
            let name = self.projections.all()[index].name().to_string();
            let part = PartId {
                projection: name.clone(),
                generation: generations[index].0,
                partition,
            };
            let lease = Lease {
                part: part.clone(),
                owner: worker.owner.clone(),
                seconds: worker.lease_seconds,
            };
            let lane = Lane {
                partition,
                of: generations[index].1,
                members: vec![LaneMember {
                    projection: index,
                    part,
                }],
                lease: Some(lease.clone()),
            };
            // A lane of its own thread, as in a single-process rebuild: the caller may itself be
            // inside an executor, which a lane's blocking reads must not nest in.
            let outcome = std::thread::scope(|scope| {
                let run = scope.spawn(|| {
                    let signals = Signals {
                        stop,
                        read: &read,
                        progress,
                    };
                    futures::executor::block_on(self.run_lane(
                        lane,
                        self.options.window_bytes,
                        signals,
                        &|| Ok(()),
                    ))
                });
                run.join().unwrap_or(Err(RebuildError::LanePanicked))
            });
            match outcome {
                Ok(true) => match self.store.claim_done(&lease) {
                    Ok(()) => report.finished.push((name, partition)),
                    Err(ReadModelError::LeaseLost { .. }) => report.lost.push((name, partition)),
                    Err(error) => return Err(error.into()),
                },
                Ok(false) => {
                    report.stopped = true;
                    break;
                }
                Err(RebuildError::ReadModel(ReadModelError::LeaseLost { .. })) => {
                    report.lost.push((name, partition))
                }
                Err(error) => return Err(error),
            }
        }
        report.events_read = read.load(Ordering::SeqCst);
        Ok(report)
    }

    fn claim_any(
        &self,
        generations: &[(u32, u32)],
        worker: &WorkerOptions,
    ) -> Result<Option<(usize, u32)>, ReadModelError> {
        for (index, projection) in self.projections.all().iter().enumerate() {
            if let Some(partition) = self.store.claim(
                projection.name(),
                generations[index].0,
                &worker.owner,
                worker.lease_seconds,
            )? {
                return Ok(Some((index, partition)));
            }
        }
        Ok(None)
    }

    fn all_done(&self, generations: &[(u32, u32)]) -> Result<bool, ReadModelError> {
        for (projection, (generation, _)) in self.projections.all().iter().zip(generations) {
            if self.store.claims_left(projection.name(), *generation)? > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
