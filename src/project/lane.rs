//! One lane of a rebuild: a pass over the log with its own [`Fold`], writing a window of dirty
//! state with the checkpoints that cover it whenever the window passes its share of the bound
//! (the states' estimated size, plus what the store takes to write the rows,
//! [`ReadModelStore::row_write_bytes`], and to insert those it does not have yet,
//! [`ReadModelStore::new_row_bytes`]).
//!
//! [`Rebuilder::run`](super::rebuild::Rebuilder::run) gives each lane a thread of its own and
//! calls [`Rebuilder::run_lane`] there; workers (see [`super::workers`]) run one lane per claimed
//! partition the same way. A lane loads the states its events need from the store (until its
//! first window it knows the store has none), folds, and on a stop, an error, the end of the
//! log or a full window writes what is dirty as one atomic [`Window`].

use super::fold::{Fold, Member};
use super::rebuild::{stream_partition, Lane, RebuildError, Rebuilder};
use crate::readmodel::{ReadModelError, ReadModelStore, RowWrite, Window};
use futures::TryStreamExt;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

impl Rebuilder<'_> {
    /// One pass over the log; `Ok(true)` when it ran to the end, `Ok(false)` when stopped.
    pub(super) async fn run_lane(
        &self,
        lane: Lane,
        window_bytes: usize,
        stop: &AtomicBool,
        read: &AtomicU64,
        progress: &(dyn Fn(u64) + Sync),
        on_caught_up: &dyn Fn() -> Result<(), RebuildError>,
    ) -> Result<bool, RebuildError> {
        let store = self.store.fork()?;
        let store = store.as_ref();
        let mut members = Vec::new();
        for m in &lane.members {
            let mut checkpoint = store.checkpoint(&m.part)?.unwrap_or_default();
            checkpoint.caught_up = false;
            members.push(Member {
                projection: self.projections.all()[m.projection].clone(),
                checkpoint,
            });
        }
        // A part with no checkpoint has no rows either (rows and checkpoints commit together),
        // so until the lane's first window its loads need not ask the store: on a fresh
        // generation in PostgreSQL that was one query per new key.
        let unwritten: Vec<AtomicBool> = members
            .iter()
            .map(|m| AtomicBool::new(m.checkpoint.position.is_none()))
            .collect();
        let mut fold = Fold::new(members, self.options.on_error);
        // What the window will hold by the time it is written: its states, and what the store
        // takes while it inserts their new keys.
        let (new_row_bytes, row_write_bytes) = (store.new_row_bytes(), store.row_write_bytes());
        let full = |fold: &Fold| {
            fold.dirty_bytes()
                + fold.new_rows().saturating_mul(new_row_bytes)
                + fold.dirty_rows().saturating_mul(row_write_bytes)
                > window_bytes
        };
        let load = |member: usize, key: &str| -> Result<Option<Value>, ReadModelError> {
            if unwritten[member].load(Ordering::Relaxed) {
                return Ok(None);
            }
            let part = &lane.members[member].part;
            store.row(&part.projection, part.generation, key)
        };
        let only = |_: usize, event: &crate::Event| {
            lane.of == 1 || stream_partition(&event.stream, lane.of) == lane.partition
        };
        let started = Instant::now();
        let write_window = |fold: &mut Fold, applied: u64| {
            self.write(store, &lane, fold, (started, applied), &unwritten)
        };
        let mut applied = 0u64;
        let mut reported = 0u64;
        let mut caught_up = false;
        loop {
            let after = fold.applied_through();
            let mut events = self.source.read_all(after);
            let mut seen = 0u64;
            while let Some(event) = events.try_next().await? {
                if let Err(err) = self.fold_event(event, &mut fold, &load, &only) {
                    write_window(&mut fold, applied)?;
                    return Err(err);
                }
                applied += 1;
                seen += 1;
                if applied - reported == 1024 {
                    reported = applied;
                    progress(read.fetch_add(1024, Ordering::Relaxed) + 1024);
                    if stop.load(Ordering::SeqCst) {
                        write_window(&mut fold, applied)?;
                        return Ok(false);
                    }
                }
                if full(&fold) {
                    write_window(&mut fold, applied)?;
                }
            }
            drop(events);
            read.fetch_add(applied - reported, Ordering::Relaxed);
            reported = applied;
            if !caught_up {
                caught_up = true;
                for member in &mut fold.members {
                    member.checkpoint.caught_up = true;
                }
                write_window(&mut fold, applied)?;
                on_caught_up()?;
            } else if seen > 0 {
                write_window(&mut fold, applied)?;
            }
            if !self.options.follow {
                return Ok(true);
            }
            let after = fold.applied_through();
            if let Some(mut live) = self.source.subscribe(after) {
                // A store that pushes events: take them as they come, and write a window
                // whenever it fills or the subscription has been quiet for a poll interval.
                loop {
                    if stop.load(Ordering::SeqCst) {
                        write_window(&mut fold, applied)?;
                        return Ok(false);
                    }
                    match tokio::time::timeout(self.options.poll_interval, live.try_next()).await {
                        Ok(Ok(Some(event))) => {
                            if let Err(err) = self.fold_event(event, &mut fold, &load, &only) {
                                write_window(&mut fold, applied)?;
                                return Err(err);
                            }
                            applied += 1;
                            read.fetch_add(1, Ordering::Relaxed);
                            if full(&fold) {
                                write_window(&mut fold, applied)?;
                            }
                        }
                        Ok(Ok(None)) => return Ok(true),
                        Ok(Err(err)) => {
                            write_window(&mut fold, applied)?;
                            return Err(err.into());
                        }
                        Err(_quiet) if fold.dirty_bytes() > 0 => write_window(&mut fold, applied)?,
                        Err(_quiet) => {}
                    }
                }
            }
            let wait_until = Instant::now() + self.options.poll_interval;
            while Instant::now() < wait_until {
                if stop.load(Ordering::SeqCst) {
                    write_window(&mut fold, applied)?;
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Upcasts one source event and folds its outputs; the checkpoint then covers it.
    fn fold_event(
        &self,
        event: crate::Event,
        fold: &mut Fold,
        load: &super::fold::Loader<'_>,
        only: &dyn Fn(usize, &crate::Event) -> bool,
    ) -> Result<(), RebuildError> {
        let position = event.position;
        fold.apply(&self.registry.upcast(event)?.events, load, only)?;
        fold.advance(position);
        Ok(())
    }

    /// Writes the lane's dirty states with the checkpoints that cover them, atomically; the
    /// lane's parts then have rows in the store (`unwritten` turns false).
    fn write(
        &self,
        store: &dyn ReadModelStore,
        lane: &Lane,
        fold: &mut Fold,
        (started, applied): (Instant, u64),
        unwritten: &[AtomicBool],
    ) -> Result<(), RebuildError> {
        let rate = applied as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let mut dirty = fold.take_dirty();
        // In key order, a store's inserts walk its index in order instead of jumping around it.
        dirty.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut rows = Vec::with_capacity(dirty.len());
        for ((member, key), dirty) in dirty {
            let part = &lane.members[member].part;
            let value = dirty.into_row(fold.members[member].projection.kind());
            rows.push(RowWrite {
                projection: part.projection.clone(),
                generation: part.generation,
                key,
                value,
            });
        }
        let checkpoints = lane
            .members
            .iter()
            .zip(&mut fold.members)
            .map(|(m, member)| {
                // A catch-up that found nothing new keeps the rate of the run that did work.
                if applied > 0 {
                    member.checkpoint.rate = rate;
                }
                (m.part.clone(), member.checkpoint.clone())
            })
            .collect();
        let dead_letters = fold
            .dead_letters
            .drain(..)
            .map(|(member, position, letter)| (lane.members[member].part.clone(), position, letter))
            .collect();
        let fresh = lane
            .members
            .iter()
            .zip(unwritten)
            .filter(|(_, unwritten)| unwritten.load(Ordering::Relaxed))
            .map(|(m, _)| m.part.clone())
            .collect();
        store.commit(Window {
            rows,
            checkpoints,
            dead_letters,
            fresh,
            lease: lane.lease.clone(),
        })?;
        for flag in unwritten {
            flag.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}
