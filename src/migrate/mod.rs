//! Copy-transform migration: `source --(upcast chain)--> target`, in log order, resumable.
//!
//! A [`Migration`] describes the job (source, upcasters, target stream template, error policy,
//! batch size); [`Migration::run`] executes it against a [`Writer`] (a sink, the checkpoint
//! store, the dead-letter file). A dry run, `plan` and `verify` run the very same code with a
//! [`dry::DrySink`] that writes nothing.
//!
//! Per batch of source events: upcast each event, name its target stream, give each output a
//! deterministic id ([`crate::upcast::derived_event_id`] of the source id and output index),
//! append the batch, make it durable, then save a [`MigrationCheckpoint`] holding the last
//! source position written, the sink's mark and the counts so far. A killed run resumes after
//! that position: the JSONL sink and the sled store cut themselves back to their marks, so the
//! result equals an uninterrupted run.
//!
//! Target streams: the first write of a fresh job to a stream expects the stream not to exist,
//! so a target stream that already holds other events stops the job. A resumed job cannot tell
//! its own earlier writes from others and expects any revision at its first write to a stream.
//! One revision counter per target stream is kept in memory while a job runs, except for sinks
//! that are the sole writer of their target ([`EventSink::sole_writer`]: JSONL files, dry runs),
//! where every expectation holds by construction and the sink's own counters suffice.
//!
//! An upcast event's payload is printed back to JSON text as soon as the chain has made it,
//! not when the sink writes the batch: a batch of parsed values (5,000 events' worth of small
//! heap allocations) went cold in the cache before the sink printed and freed them. Printing
//! at once took 13.6% less CPU from a migration that upcasts every event (six interleaved
//! pairs, 1M events, same output byte for byte), and a pending batch holds less memory.
//!
//! An upcaster error on an event follows [`ErrorPolicy`]: `stop` writes and checkpoints
//! everything before the event and fails; `skip` counts and reports it; `dead-letter` also
//! writes the event and the reason to the dead-letter file. The source is never written.
//!
//! ```
//! use recast::checkpoint::CheckpointStore;
//! use recast::migrate::{ErrorPolicy, Migration, StreamTemplate, Writer};
//! use recast::store::jsonl::{JsonlSink, JsonlSource};
//! use recast::upcast::Registry;
//! use std::sync::atomic::AtomicBool;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let source = JsonlSource::open("streams/demo".as_ref()).unwrap();
//! let registry = Registry::load_dir("upcasters".as_ref()).unwrap();
//! let migration = Migration {
//!     source: &source,
//!     registry: &registry,
//!     template: StreamTemplate::parse("{stream}-v2").unwrap(),
//!     on_error: ErrorPolicy::Stop,
//!     batch_size: 1000,
//! };
//! let checkpoints = CheckpointStore::open(&dir.path().join("state")).unwrap();
//! let mut sink = JsonlSink::open(&dir.path().join("out.jsonl")).unwrap();
//! let writer = Writer { sink: &mut sink, checkpoints: Some(&checkpoints), dead_letter_path: None, dry_run: false };
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! let stop = AtomicBool::new(false);
//! let report = runtime.block_on(migration.run(writer, &stop, &|_| {})).unwrap();
//! assert!(report.completed && report.counts.accounted());
//! assert!(report.counts.split > 0 && report.counts.dropped > 0);
//! ```

pub mod dead_letter;
pub mod dry;
pub mod report;
pub mod template;
mod verify;

pub use report::{KindTally, MigrationCounts, MigrationReport};
pub use template::StreamTemplate;
pub use verify::{verify, VerifyReport};

use crate::checkpoint::{CheckpointError, CheckpointStore, JobId};
use crate::event::Event;
use crate::store::{
    AppendRequest, EventSink, EventSource, ExpectedRevision, NewEvent, SinkMark, StoreError,
};
use crate::upcast::{derived_event_id, Registry, UpcastError};
use compact_str::CompactString;
use dead_letter::{DeadLetterError, DeadLetterFile};
use futures::TryStreamExt;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use template::TemplateError;

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Reading the source or writing the target failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An upcaster failed under the `stop` policy.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// A target stream name could not be made.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The dead-letter file failed.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// The upcaster set changed since the job's checkpoint.
    #[error("job {job} was checkpointed with upcaster set {was}, but the upcasters are now {now}; finish it with the old set, or start again into an empty target with --reset")]
    UpcastersChanged {
        job: String,
        was: String,
        now: String,
    },
    /// Source and target are the same store.
    #[error(
        "source and target are the same store ({location}); recast never writes into its source"
    )]
    SameLocation { location: String },
}

/// What to do with an event an upcaster fails on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Write everything before the event, checkpoint, and fail.
    #[default]
    Stop,
    /// Leave the event out, count and report it.
    Skip,
    /// Leave the event out and write it with the reason to the dead-letter file.
    DeadLetter,
}

/// What a migration job saves after each batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationCheckpoint {
    /// Checksum of the upcaster set the job runs with.
    pub upcaster_checksum: String,
    /// Last source position fully written.
    pub position: Option<u64>,
    /// True once the whole source was migrated.
    pub completed: bool,
    /// The sink's mark at that point.
    pub sink_mark: SinkMark,
    /// Length of the dead-letter file at that point.
    pub dead_letter_bytes: u64,
    /// Totals so far.
    pub counts: MigrationCounts,
    /// Error messages so far (the first 100).
    pub errors: Vec<String>,
}

/// Progress after each batch, for progress bars and log lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Source events read by this run.
    pub events_read: u64,
    /// Last source position written.
    pub position: Option<u64>,
}

/// Where a run writes. `dry_run` writes nothing: give it a [`dry::DrySink`].
pub struct Writer<'a> {
    /// The target.
    pub sink: &'a mut dyn EventSink,
    /// The checkpoint store; `None` runs without checkpoints (plan, verify).
    pub checkpoints: Option<&'a CheckpointStore>,
    /// The dead-letter file, used under [`ErrorPolicy::DeadLetter`].
    pub dead_letter_path: Option<PathBuf>,
    /// Write nothing, save nothing.
    pub dry_run: bool,
}

/// A copy-transform migration job.
pub struct Migration<'a> {
    /// The source.
    pub source: &'a dyn EventSource,
    /// The upcaster chain.
    pub registry: &'a Registry,
    /// Target stream names.
    pub template: StreamTemplate,
    /// What to do when an upcaster fails.
    pub on_error: ErrorPolicy,
    /// Source events per batch (and per checkpoint).
    pub batch_size: usize,
}

/// Outputs of one batch waiting to be appended: (target stream, event).
type Pending = Vec<(String, NewEvent)>;

impl Migration<'_> {
    /// The checkpoint key of this job writing to `target`.
    pub fn job_id(&self, target: &str) -> JobId {
        JobId::new(
            "migrate",
            &[&self.source.describe(), target, &self.template.to_string()],
        )
    }

    /// Runs the job; an upcaster failure under `stop` (or any store failure) is an error.
    pub async fn run(
        &self,
        writer: Writer<'_>,
        stop: &AtomicBool,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<MigrationReport, MigrateError> {
        let (report, failure) = self.run_collect(writer, stop, progress).await?;
        match failure {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    /// Runs the job and returns the report together with the failure that stopped it, if any.
    pub async fn run_collect(
        &self,
        writer: Writer<'_>,
        stop: &AtomicBool,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(MigrationReport, Option<MigrateError>), MigrateError> {
        let target = writer.sink.describe();
        if target == self.source.describe() {
            return Err(MigrateError::SameLocation { location: target });
        }
        let job = self.job_id(&target);
        let loaded: Option<MigrationCheckpoint> = match writer.checkpoints {
            Some(store) => {
                store.lock_job(&job)?;
                store.load(&job)?
            }
            None => None,
        };
        if let Some(checkpoint) = &loaded {
            if checkpoint.upcaster_checksum != self.registry.checksum() {
                return Err(MigrateError::UpcastersChanged {
                    job: job.to_string(),
                    was: checkpoint.upcaster_checksum.clone(),
                    now: self.registry.checksum().to_string(),
                });
            }
        }
        let resumed = loaded.is_some();
        let mut state = loaded.unwrap_or_else(|| MigrationCheckpoint {
            upcaster_checksum: self.registry.checksum().to_string(),
            position: None,
            completed: false,
            sink_mark: SinkMark::Null,
            dead_letter_bytes: 0,
            counts: MigrationCounts::default(),
            errors: Vec::new(),
        });
        let resumed_after = state.position;
        let mut run = Run {
            migration: self,
            job: &job,
            writer,
            dead_letters: None,
            heads: FxHashMap::default(),
            revisions: Vec::new(),
            batch_number: 0,
            resumed,
            kinds: KindTally::default(),
        };
        let failure = if state.completed {
            None
        } else {
            run.execute(&mut state, stop, progress).await?
        };
        let report = MigrationReport {
            job: job.to_string(),
            source: self.source.describe(),
            target,
            dry_run: run.writer.dry_run,
            resumed_after,
            position: state.position,
            completed: state.completed,
            upcaster_checksum: state.upcaster_checksum,
            counts: state.counts,
            errors: state.errors,
        };
        Ok((report, failure))
    }
}

/// The mutable side of one run of a job.
struct Run<'a, 'w> {
    migration: &'a Migration<'a>,
    job: &'a JobId,
    writer: Writer<'w>,
    dead_letters: Option<DeadLetterFile>,
    /// Each target stream written by this run: its slot in `revisions`.
    /// (Names up to 24 bytes live inside the entry; see `store::heads`.)
    heads: FxHashMap<compact_str::CompactString, usize>,
    /// Per slot: the last revision written (`None` before the first write), and the batch
    /// that last checked the stream.
    revisions: Vec<(Option<u64>, u64)>,
    /// Numbers the batches, for `revisions`.
    batch_number: u64,
    resumed: bool,
    /// Kind counts since the last save.
    kinds: KindTally,
}

impl Run<'_, '_> {
    async fn execute(
        &mut self,
        state: &mut MigrationCheckpoint,
        stop: &AtomicBool,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Option<MigrateError>, MigrateError> {
        self.prepare(state).await?;
        let mut events = self.migration.source.read_all(state.position);
        let mut read = 0u64;
        loop {
            let mut pending = Pending::new();
            let mut failure = None;
            let mut exhausted = false;
            let mut batch_position = state.position;
            for _ in 0..self.migration.batch_size.max(1) {
                let Some(event) = events.try_next().await? else {
                    exhausted = true;
                    break;
                };
                let position = event.position;
                if let Err(err) = self.process(event, state, &mut pending) {
                    failure = Some(err);
                    break;
                }
                read += 1;
                batch_position = position;
            }
            self.write_batch(pending).await?;
            state.position = batch_position;
            state.completed = exhausted && failure.is_none();
            self.save(state).await?;
            progress(Progress {
                events_read: read,
                position: state.position,
            });
            if failure.is_some() || exhausted || stop.load(Ordering::SeqCst) {
                return Ok(failure);
            }
        }
    }

    /// Takes the sink and dead-letter file back to the checkpoint, or starts the job.
    async fn prepare(&mut self, state: &mut MigrationCheckpoint) -> Result<(), MigrateError> {
        if self.writer.dry_run {
            return Ok(());
        }
        let mark = self.resumed.then_some(&state.sink_mark);
        self.writer.sink.restore(mark).await?;
        if self.migration.on_error == ErrorPolicy::DeadLetter {
            if let Some(path) = &self.writer.dead_letter_path {
                self.dead_letters = Some(DeadLetterFile::open(path, state.dead_letter_bytes)?);
            }
        }
        if !self.resumed {
            // Saved before anything is written, so a crash during the first batch resumes.
            state.sink_mark = self.writer.sink.commit().await?;
            self.save(state).await?;
        }
        Ok(())
    }

    async fn save(&mut self, state: &mut MigrationCheckpoint) -> Result<(), MigrateError> {
        // Dry runs save nothing, but their reports still need the counts.
        self.kinds.merge_into(&mut state.counts);
        if self.writer.dry_run {
            return Ok(());
        }
        state.sink_mark = self.writer.sink.commit().await?;
        if let Some(dead_letters) = &mut self.dead_letters {
            state.dead_letter_bytes = dead_letters.commit()?;
        }
        if let Some(store) = self.writer.checkpoints {
            store.save(self.job, state)?;
        }
        Ok(())
    }

    /// Upcasts one source event into `pending`, or applies the error policy.
    fn process(
        &mut self,
        event: Event,
        state: &mut MigrationCheckpoint,
        pending: &mut Pending,
    ) -> Result<(), MigrateError> {
        let migration = self.migration;
        let registry = migration.registry;
        let source_kind = (
            CompactString::from(event.event_type.as_str()),
            event.version,
        );
        let source_id = event.id;
        // Only an event that an upcaster touches can fail, and only a dead letter needs it whole.
        let kept = (migration.on_error == ErrorPolicy::DeadLetter
            && registry.find(&event.event_type, event.version).is_some())
        .then(|| event.clone());
        let counts = &mut state.counts;
        match registry.upcast(event) {
            Ok(upcasted) => {
                let touched = !upcasted.applied.is_empty();
                let outputs = upcasted.events.len();
                let first = pending.len();
                for (index, mut output) in upcasted.events.into_iter().enumerate() {
                    let stream = match migration.template.render_into_target(&mut output) {
                        Ok(stream) => stream,
                        Err(err) => {
                            // The events before this one are still written; none of its outputs.
                            pending.truncate(first);
                            return Err(err.into());
                        }
                    };
                    pending.push((
                        stream,
                        NewEvent {
                            id: derived_event_id(source_id, index),
                            event_type: output.event_type,
                            version: output.version,
                            // Printed now, while the chain's value is still in the cache, and
                            // dropped at once; see the module docs.
                            data: output.data.into_raw(),
                            metadata: output.metadata.into_raw(),
                            recorded_at: output.recorded_at,
                        },
                    ));
                }
                counts.source_events += 1;
                for index in upcasted.applied {
                    report::bump(&mut counts.upcasters, registry.upcasters()[index].origin());
                }
                match (touched, outputs) {
                    (false, _) => counts.unchanged += 1,
                    (true, 0) => counts.dropped += 1,
                    (true, 1) => counts.upcast += 1,
                    (true, _) => counts.split += 1,
                }
                counts.target_events += outputs as u64;
                if !touched {
                    // The one output is the source event: one count serves both tallies.
                    self.kinds.unchanged(source_kind);
                    return Ok(());
                }
                self.kinds.source(source_kind);
                for (_, output) in &pending[first..] {
                    self.kinds.target(&output.event_type, output.version);
                }
                Ok(())
            }
            Err(err) if migration.on_error == ErrorPolicy::Stop => Err(err.into()),
            Err(err) => {
                let message = crate::error::chain(&err);
                counts.source_events += 1;
                self.kinds.source(source_kind);
                if let (Some(file), Some(event)) = (&mut self.dead_letters, &kept) {
                    let upcaster = match &err {
                        UpcastError::Failed { upcaster, .. }
                        | UpcastError::Undeclared { upcaster, .. } => Some(upcaster.as_str()),
                        _ => None,
                    };
                    file.write(event, upcaster, &message)?;
                }
                match migration.on_error {
                    ErrorPolicy::DeadLetter => counts.dead_lettered += 1,
                    _ => counts.skipped += 1,
                }
                if state.errors.len() < report::MAX_REPORTED_ERRORS {
                    state.errors.push(message);
                }
                Ok(())
            }
        }
    }

    /// Appends one batch, each run of events of one stream as one request.
    async fn write_batch(&mut self, pending: Pending) -> Result<(), MigrateError> {
        if pending.is_empty() {
            return Ok(());
        }
        self.batch_number += 1;
        let mut requests: Vec<AppendRequest> = Vec::new();
        let mut slots: Vec<usize> = Vec::new();
        let sole_writer = self.writer.sink.sole_writer();
        for (stream, event) in pending {
            if let Some(last) = requests.last_mut().filter(|r| r.stream == stream) {
                last.events.push(event);
                continue;
            }
            if sole_writer {
                requests.push(AppendRequest {
                    stream,
                    expected: ExpectedRevision::Any,
                    events: vec![event],
                });
                continue;
            }
            let slot = match self.heads.get(stream.as_str()) {
                Some(&slot) => slot,
                None => {
                    self.heads
                        .insert(stream.as_str().into(), self.revisions.len());
                    self.revisions.push((None, 0));
                    self.revisions.len() - 1
                }
            };
            let (revision, checked_in) = &mut self.revisions[slot];
            let expected = match revision {
                // An earlier request of this same batch has already checked the stream.
                _ if *checked_in == self.batch_number => ExpectedRevision::Any,
                Some(revision) => ExpectedRevision::Exact(*revision),
                None if self.resumed => ExpectedRevision::Any,
                None => ExpectedRevision::NoStream,
            };
            *checked_in = self.batch_number;
            slots.push(slot);
            requests.push(AppendRequest {
                stream,
                expected,
                events: vec![event],
            });
        }
        let outcomes = self.writer.sink.append_batch(requests).await?;
        for (slot, outcome) in slots.into_iter().zip(outcomes) {
            self.revisions[slot].0 = Some(outcome.last_revision);
        }
        Ok(())
    }
}
