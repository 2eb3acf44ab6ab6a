//! One lane of a rebuild: a pass over the log with its own [`Fold`], writing a window of dirty
//! state with the checkpoints that cover it whenever the window passes its share of the bound
//! (the states' estimated size, plus what the store takes to write the rows,
//! [`ReadModelStore::row_write_bytes`], and to insert those it does not have yet,
//! [`ReadModelStore::new_row_bytes`]).
//!
//! [`Rebuilder::run`](super::rebuild::Rebuilder::run) gives each lane a thread of its own and
//! calls [`Rebuilder::run_lane`] there; workers (see [`super::workers`]) run one lane per claimed
//! partition the same way. A lane's [`Pass`] loads the states its events need from the store
//! (until its first window it knows the store has none), folds, and on a stop, an error, the
//! end of the log or a full window writes what is dirty as one atomic [`Window`].

use super::fold::{Fold, Member};
use super::rebuild::{stream_partition, Lane, RebuildError, Rebuilder};
use crate::readmodel::{ReadModelStore, RowWrite, Window};
use crate::store::EventStream;
use futures::TryStreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a lane is told to stop, and how it tells how far it has read.
pub(super) struct Signals<'p> {
    pub(super) stop: &'p AtomicBool,
    pub(super) read: &'p AtomicU64,
    pub(super) progress: &'p (dyn Fn(u64) + Sync),
}

impl Rebuilder<'_> {
    /// One pass over the log; `Ok(true)` when it ran to the end, `Ok(false)` when stopped.
    pub(super) async fn run_lane(
        &self,
        lane: Lane,
        window_bytes: usize,
        signals: Signals<'_>,
        on_caught_up: &dyn Fn() -> Result<(), RebuildError>,
    ) -> Result<bool, RebuildError> {
        let store = self.store.fork()?;
        let mut pass = Pass::start(self, store.as_ref(), &lane, window_bytes, signals)?;
        let mut caught_up = false;
        loop {
            let Some(seen) = pass.read_to_end().await? else {
                return Ok(false);
            };
            if !caught_up {
                caught_up = true;
                for member in &mut pass.fold.members {
                    member.checkpoint.caught_up = true;
                }
                pass.write_window()?;
                on_caught_up()?;
            } else if seen > 0 {
                pass.write_window()?;
            }
            if !self.options.follow {
                return Ok(true);
            }
            if let Some(live) = self.source.subscribe(pass.fold.applied_through()) {
                return pass.follow(live).await;
            }
            if !pass.wait_to_poll()? {
                return Ok(false);
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
}

/// A lane's pass in progress: its fold, what its windows are written to, and its counts.
struct Pass<'p, 'r> {
    rebuilder: &'p Rebuilder<'r>,
    store: &'p dyn ReadModelStore,
    lane: &'p Lane,
    fold: Fold,
    /// Per member: no window written yet. A part with no checkpoint has no rows either (rows
    /// and checkpoints commit together), so until then its loads need not ask the store: on a
    /// fresh generation in PostgreSQL that was one query per new key.
    unwritten: Vec<bool>,
    /// The window's share of the bound, and what the store takes per row it writes and per
    /// row it inserts.
    window_bytes: usize,
    row_write_bytes: usize,
    new_row_bytes: usize,
    signals: Signals<'p>,
    started: Instant,
    /// Events taken, and how many of them were reported to `signals.read`.
    applied: u64,
    reported: u64,
}

impl<'p, 'r> Pass<'p, 'r> {
    fn start(
        rebuilder: &'p Rebuilder<'r>,
        store: &'p dyn ReadModelStore,
        lane: &'p Lane,
        window_bytes: usize,
        signals: Signals<'p>,
    ) -> Result<Self, RebuildError> {
        let mut members = Vec::new();
        for m in &lane.members {
            let mut checkpoint = store.checkpoint(&m.part)?.unwrap_or_default();
            checkpoint.caught_up = false;
            members.push(Member {
                projection: rebuilder.projections.all()[m.projection].clone(),
                checkpoint,
            });
        }
        Ok(Pass {
            rebuilder,
            store,
            lane,
            unwritten: members
                .iter()
                .map(|m| m.checkpoint.position.is_none())
                .collect(),
            fold: Fold::new(members, rebuilder.options.on_error),
            window_bytes,
            row_write_bytes: store.row_write_bytes(),
            new_row_bytes: store.new_row_bytes(),
            signals,
            started: Instant::now(),
            applied: 0,
            reported: 0,
        })
    }

    /// Reads the log from the fold's checkpoint to its end. `Some(events read)` at the end;
    /// `None` when told to stop, after writing the window.
    async fn read_to_end(&mut self) -> Result<Option<u64>, RebuildError> {
        let source = self.rebuilder.source;
        let mut events = source.read_all(self.fold.applied_through());
        let mut seen = 0u64;
        while let Some(event) = events.try_next().await? {
            self.take(event)?;
            seen += 1;
            if self.applied - self.reported == 1024 {
                self.reported = self.applied;
                (self.signals.progress)(
                    self.signals.read.fetch_add(1024, Ordering::Relaxed) + 1024,
                );
                if self.signals.stop.load(Ordering::SeqCst) {
                    self.write_window()?;
                    return Ok(None);
                }
            }
            if self.full() {
                self.write_window()?;
            }
        }
        let unreported = self.applied - self.reported;
        self.signals.read.fetch_add(unreported, Ordering::Relaxed);
        self.reported = self.applied;
        Ok(Some(seen))
    }

    /// Takes events as a store that pushes them delivers them, writing a window whenever it
    /// fills or the subscription has been quiet for a poll interval. `Ok(false)` when stopped.
    async fn follow(&mut self, mut live: EventStream<'_>) -> Result<bool, RebuildError> {
        loop {
            if self.signals.stop.load(Ordering::SeqCst) {
                self.write_window()?;
                return Ok(false);
            }
            let poll_interval = self.rebuilder.options.poll_interval;
            match tokio::time::timeout(poll_interval, live.try_next()).await {
                Ok(Ok(Some(event))) => {
                    self.take(event)?;
                    self.signals.read.fetch_add(1, Ordering::Relaxed);
                    self.reported = self.applied;
                    if self.full() {
                        self.write_window()?;
                    }
                }
                // The subscription ended: what it delivered is written before the lane ends.
                Ok(Ok(None)) => {
                    self.write_window()?;
                    return Ok(true);
                }
                Ok(Err(err)) => {
                    self.write_window()?;
                    return Err(err.into());
                }
                Err(_quiet) if self.fold.dirty_bytes() > 0 => self.write_window()?,
                Err(_quiet) => {}
            }
        }
    }

    /// Sleeps a poll interval before the next read of a store that does not push events.
    /// `Ok(false)` when told to stop meanwhile, after writing the window.
    fn wait_to_poll(&mut self) -> Result<bool, RebuildError> {
        let wait_until = Instant::now() + self.rebuilder.options.poll_interval;
        while Instant::now() < wait_until {
            if self.signals.stop.load(Ordering::SeqCst) {
                self.write_window()?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(true)
    }

    /// Folds one event. On an error the window is written first: it holds the events before.
    fn take(&mut self, event: crate::Event) -> Result<(), RebuildError> {
        let (store, lane, unwritten) = (self.store, self.lane, &self.unwritten);
        let load = |member: usize, key: &str| {
            if unwritten[member] {
                return Ok(None);
            }
            let part = &lane.members[member].part;
            store.row(&part.projection, part.generation, key)
        };
        let only = |_: usize, event: &crate::Event| {
            lane.of == 1 || stream_partition(&event.stream, lane.of) == lane.partition
        };
        if let Err(err) = self
            .rebuilder
            .fold_event(event, &mut self.fold, &load, &only)
        {
            self.write_window()?;
            return Err(err);
        }
        self.applied += 1;
        Ok(())
    }

    /// Whether the window has passed its share of the bound: its states, and what the store
    /// takes while it writes their rows and inserts their new keys.
    fn full(&self) -> bool {
        let fold = &self.fold;
        fold.dirty_bytes()
            + fold.dirty_rows().saturating_mul(self.row_write_bytes)
            + fold.new_rows().saturating_mul(self.new_row_bytes)
            > self.window_bytes
    }

    /// Writes the dirty states with the checkpoints that cover them, atomically; the lane's
    /// parts then have rows in the store.
    fn write_window(&mut self) -> Result<(), RebuildError> {
        let rate = self.applied as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let (lane, fold) = (self.lane, &mut self.fold);
        let mut dirty = fold.take_dirty();
        // In key order, PostgreSQL's inserts walk its index in order instead of jumping around
        // it. (sled 0.34's `Batch` is a hash map: it applies the rows in an order of its own.)
        dirty.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut rows = Vec::with_capacity(dirty.len());
        for ((member, key), dirty) in dirty {
            let part = &lane.members[member].part;
            rows.push(RowWrite {
                projection: part.projection.clone(),
                generation: part.generation,
                key,
                value: dirty.into_row(fold.members[member].projection.kind()),
            });
        }
        let mut checkpoints = Vec::with_capacity(lane.members.len());
        for (m, member) in lane.members.iter().zip(&mut fold.members) {
            // A catch-up that found nothing new keeps the rate of the run that did work.
            if self.applied > 0 {
                member.checkpoint.rate = rate;
            }
            checkpoints.push((m.part.clone(), member.checkpoint.clone()));
        }
        let dead_letters = fold
            .dead_letters
            .drain(..)
            .map(|(member, position, letter)| (lane.members[member].part.clone(), position, letter))
            .collect();
        let fresh = lane
            .members
            .iter()
            .zip(&self.unwritten)
            .filter(|(_, unwritten)| **unwritten)
            .map(|(m, _)| m.part.clone())
            .collect();
        self.store.commit(Window {
            rows,
            checkpoints,
            dead_letters,
            fresh,
            lease: lane.lease.clone(),
        })?;
        self.unwritten.fill(false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::file::FileProjection;
    use crate::project::rebuild::RebuildOptions;
    use crate::project::ProjectionSet;
    use crate::readmodel::sled::SledReadModels;
    use crate::store::EventSource;
    use crate::upcast::Registry;
    use crate::Event;
    use std::path::Path;
    use std::sync::Arc;

    const COUNTER: &str = "name = \"counter\"\nversion = 1\nkind = \"snapshot\"\ninitial = { n = 0 }\n[[on]]\ntype = \"Add\"\nops = [{ add = { path = \"/n\", from = \"/by\" } }]\n";

    fn event(position: u64) -> Event {
        serde_json::from_str(&format!(r#"{{"stream":"s-1","revision":{position},"position":{position},"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"Add","data":{{"by":1}}}}"#)).unwrap()
    }

    /// A store that has `stored` events and then pushes `pushed` more before its
    /// subscription ends, as a server closing the subscription would.
    struct Pushing {
        stored: u64,
        pushed: u64,
    }

    impl EventSource for Pushing {
        fn describe(&self) -> String {
            "pushing".into()
        }
        fn read_all(&self, after: Option<u64>) -> crate::store::EventStream<'_> {
            let from = after.map_or(0, |p| p + 1);
            Box::pin(futures::stream::iter(
                (from..self.stored).map(|p| Ok(event(p))),
            ))
        }
        fn read_stream<'a>(&'a self, _: &'a str, _: u64) -> crate::store::EventStream<'a> {
            Box::pin(futures::stream::empty())
        }
        fn list_streams(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<Vec<String>, crate::store::StoreError>> {
            Box::pin(async { Ok(vec!["s-1".to_string()]) })
        }
        fn subscribe(&self, after: Option<u64>) -> Option<crate::store::EventStream<'_>> {
            let from = after.map_or(0, |p| p + 1);
            let end = self.stored + self.pushed;
            Some(Box::pin(futures::stream::iter(
                (from..end).map(|p| Ok(event(p))),
            )))
        }
    }

    #[test]
    fn what_a_subscription_delivered_is_written_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledReadModels::open(&dir.path().join("rm")).unwrap();
        let projection = FileProjection::parse(Path::new("counter.toml"), COUNTER).unwrap();
        let projections = ProjectionSet::new(vec![Arc::new(projection)]).unwrap();
        let source = Pushing {
            stored: 3,
            pushed: 2,
        };
        let rebuilder = Rebuilder {
            source: &source,
            registry: &Registry::empty(),
            projections: &projections,
            store: &store,
            options: RebuildOptions {
                follow: true,
                poll_interval: Duration::from_secs(5),
                ..RebuildOptions::default()
            },
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _context = runtime.enter();
        let report = rebuilder.run(&AtomicBool::new(false), &|_| {}).unwrap();
        assert!(!report.stopped);
        let generation = store.meta("counter").unwrap().live.unwrap();
        let row = store.row("counter", generation, "s-1").unwrap().unwrap();
        assert_eq!(
            row["state"]["n"], 5,
            "three stored and two pushed events: {row}"
        );
    }
}
