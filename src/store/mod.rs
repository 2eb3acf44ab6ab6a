//! Where events live: the [`EventSource`] and [`EventSink`] traits and their stores.
//!
//! A [`Location`] names a store (`jsonl:PATH`, `sled:PATH`, or a bare path to a `.jsonl` file
//! or a folder of them). [`open_source`] and [`open_sink`] turn a location into a trait object:
//!
//! ```text
//! Location ──open_source──> dyn EventSource ──read_all──> EventStream (async, in log order)
//! Location ──open_sink────> dyn EventSink   ──append_batch/commit──> SinkMark (for checkpoints)
//! ```
//!
//! Sinks write in batches: [`EventSink::append_batch`] takes many [`AppendRequest`]s at once,
//! and [`EventSink::commit`] makes everything appended so far durable and returns a
//! [`SinkMark`] that a checkpoint stores. [`EventSink::restore`] takes that mark back on resume.

pub mod digest;
pub mod esdb;
mod heads;
pub mod jsonl;
pub mod read_ahead;
pub mod sled_store;

use crate::event::{EnvelopeRef, Event, EventError, Payload};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;
pub use heads::StreamHeads;
use serde_json::Value;
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub use digest::{digest_source, LogDigest};

/// Errors of event stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A location string that names no known store.
    #[error("location {0:?} is not understood: use jsonl:PATH, sled:PATH, or a path to a .jsonl file or folder")]
    BadLocation(String),
    /// File system trouble, with the path involved.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of a JSONL file that is not a valid event.
    #[error("{path}:{line}: {message}")]
    BadLine {
        path: PathBuf,
        line: u64,
        message: String,
        #[source]
        source: Option<serde_json::Error>,
    },
    /// A line of a JSONL file whose event breaks an envelope rule.
    #[error("{path}:{line}: {source}")]
    BadEvent {
        path: PathBuf,
        line: u64,
        #[source]
        source: EventError,
    },
    /// A stream name refused by the store.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The sled database could not be used.
    #[error("sled store {path}: {source}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// Another process holds the store.
    #[error("store {path} is in use by another process (sled allows one process at a time)")]
    Locked { path: PathBuf },
    /// A stored record that does not parse: the store is damaged.
    #[error("store {path}: record at position {position} is damaged")]
    Corrupt {
        path: PathBuf,
        position: u64,
        #[source]
        source: serde_json::Error,
    },
    /// A store whose records do not fit together (an index naming a missing record), or one
    /// written in a layout this version does not read.
    #[error("store {path}: {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// An append whose expected revision does not hold.
    #[error("stream {stream}: expected {expected}, but the stream is at {actual}")]
    WrongExpectedRevision {
        stream: String,
        expected: ExpectedRevision,
        actual: StreamState,
    },
    /// An event id that is already used by a different event.
    #[error("event id {id} is already used by a different event (stream {existing_stream}, revision {existing_revision})")]
    IdConflict {
        id: Uuid,
        existing_stream: String,
        existing_revision: u64,
    },
    /// A target that already holds events recast did not write.
    #[error("target {target} already holds events; migrate into an empty target or resume the job that wrote it")]
    TargetNotEmpty { target: String },
    /// EventStoreDB failed or refused.
    #[error("event store {location}")]
    Esdb {
        location: String,
        #[source]
        source: Box<eventstore::Error>,
    },
    /// A record of an external store that does not map to an envelope.
    #[error("stream {stream}, revision {revision}: {reason}")]
    BadRecord {
        stream: String,
        revision: u64,
        reason: String,
    },
    /// An event a sink cannot send as it is: metadata that is not a JSON object where the
    /// sink must add keys to it, or data marked as base64 that is not base64 text.
    #[error("stream {stream}: event {id}: {reason}")]
    Unsendable {
        stream: String,
        id: Uuid,
        reason: &'static str,
        #[source]
        source: Option<serde_json::Error>,
    },
    /// A mark from a checkpoint that does not fit this sink.
    #[error("checkpoint does not fit {target}: {reason}")]
    BadMark { target: String, reason: String },
}

/// What an append expects of the stream it writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must be at this revision.
    Exact(u64),
}

impl std::fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedRevision::Any => write!(f, "any revision"),
            ExpectedRevision::NoStream => write!(f, "no stream"),
            ExpectedRevision::Exact(r) => write!(f, "revision {r}"),
        }
    }
}

/// Where a stream is: absent, or at the revision of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// The stream has no events.
    NoStream,
    /// The revision of the stream's last event.
    At(u64),
}

impl std::fmt::Display for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamState::NoStream => write!(f, "no stream"),
            StreamState::At(r) => write!(f, "revision {r}"),
        }
    }
}

impl StreamState {
    /// True when an append expecting `expected` may go ahead.
    pub fn satisfies(self, expected: ExpectedRevision) -> bool {
        match (expected, self) {
            (ExpectedRevision::Any, _) => true,
            (ExpectedRevision::NoStream, StreamState::NoStream) => true,
            (ExpectedRevision::Exact(r), StreamState::At(at)) => r == at,
            _ => false,
        }
    }

    /// The revision the next event of the stream gets.
    pub fn next_revision(self) -> u64 {
        match self {
            StreamState::NoStream => 0,
            StreamState::At(r) => r + 1,
        }
    }
}

/// An event to append; the sink assigns its stream revision and log position.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event id; appends are idempotent by it where the store supports that.
    pub id: Uuid,
    /// Event type name.
    pub event_type: String,
    /// Schema version.
    pub version: u32,
    /// Payload.
    pub data: Payload,
    /// Metadata object.
    pub metadata: Payload,
    /// Timestamp carried from the source.
    pub recorded_at: Option<String>,
}

impl NewEvent {
    /// The envelope this event gets at `stream`, `revision`, `position`, borrowed.
    pub fn envelope<'a>(
        &'a self,
        stream: &'a str,
        revision: u64,
        position: u64,
    ) -> EnvelopeRef<'a> {
        EnvelopeRef {
            stream,
            revision,
            position: Some(position),
            id: &self.id,
            event_type: &self.event_type,
            version: self.version,
            data: &self.data,
            metadata: &self.metadata,
            recorded_at: self.recorded_at.as_deref(),
        }
    }

    /// The envelope this event gets at `stream`, `revision`, `position`.
    pub fn into_event(self, stream: &str, revision: u64, position: u64) -> Event {
        Event {
            stream: stream.to_string(),
            revision,
            position: Some(position),
            id: self.id,
            event_type: self.event_type,
            version: self.version,
            data: self.data,
            metadata: self.metadata,
            recorded_at: self.recorded_at,
        }
    }
}

/// Events to append to one stream, with the revision check to make first.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// Target stream.
    pub stream: String,
    /// What the stream must look like before this append.
    pub expected: ExpectedRevision,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// What a sink returns for each request of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The stream's last revision after the append.
    pub last_revision: u64,
    /// Events written.
    pub written: usize,
    /// Events skipped because the same event was already there (idempotent re-append).
    pub duplicates: usize,
}

/// What a sink needs back on resume to continue exactly where a checkpoint left it.
pub type SinkMark = Value;

/// An async stream of events in log order.
pub type EventStream<'a> = BoxStream<'a, Result<Event, StoreError>>;

/// A store events are read from.
pub trait EventSource: Send + Sync {
    /// The location, for messages and job ids.
    fn describe(&self) -> String;
    /// The whole log in order, starting after log position `after` (from the start if `None`).
    fn read_all(&self, after: Option<u64>) -> EventStream<'_>;
    /// One stream in revision order, starting at `from_revision`.
    fn read_stream<'a>(&'a self, stream: &'a str, from_revision: u64) -> EventStream<'a>;
    /// The names of all streams.
    fn list_streams(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// A live subscription to the log after `after`, for stores that push new events; `None`
    /// for stores that are polled with [`read_all`](Self::read_all) instead.
    fn subscribe(&self, _after: Option<u64>) -> Option<EventStream<'_>> {
        None
    }
    /// The position of the last event of the log (reads the whole log unless the store knows).
    fn head_position(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        async move {
            use futures::TryStreamExt;
            let mut events = self.read_all(None);
            let mut last = None;
            while let Some(event) = events.try_next().await? {
                last = event.position;
            }
            Ok(last)
        }
        .boxed()
    }
}

/// A store events are written to.
pub trait EventSink: Send {
    /// The location, for messages and job ids.
    fn describe(&self) -> String;
    /// The state of a stream.
    fn stream_state<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<StreamState, StoreError>>;
    /// Appends a batch of requests, in order; all or nothing where the store allows it.
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>>;
    /// Makes all appended events durable and returns the mark a checkpoint stores.
    fn commit(&mut self) -> BoxFuture<'_, Result<SinkMark, StoreError>>;
    /// True when nothing but this sink writes its target while a job runs and it starts a job
    /// only on an empty target (or back at its own mark): expected revisions then always hold,
    /// so a migration sends `Any` and keeps no stream heads of its own (a second lookup per
    /// event into a map of every target stream).
    fn sole_writer(&self) -> bool {
        false
    }
    /// Prepares the sink for a job: `Some(mark)` when resuming from a checkpoint, `None` when
    /// starting, in which case a sink that already holds events refuses.
    fn restore<'a>(
        &'a mut self,
        mark: Option<&'a SinkMark>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A JSONL file or a folder of them.
    Jsonl(PathBuf),
    /// The embedded sled event store (a folder).
    Sled(PathBuf),
    /// An EventStoreDB / KurrentDB server (the whole `esdb://` location).
    Esdb(String),
}

impl Location {
    /// Parses `jsonl:PATH`, `sled:PATH`, or a bare path (a `.jsonl`/`.ndjson` file or a folder).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        if let Some(path) = text.strip_prefix("jsonl:") {
            return non_empty(path, text).map(Location::Jsonl);
        }
        if let Some(path) = text.strip_prefix("sled:") {
            return non_empty(path, text).map(Location::Sled);
        }
        if text.starts_with("esdb://") || text.starts_with("esdb+discover://") {
            return Ok(Location::Esdb(text.to_string()));
        }
        if text.contains("://") || text.is_empty() {
            return Err(StoreError::BadLocation(text.to_string()));
        }
        let path = Path::new(text);
        let is_jsonl_file = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson")
        );
        if is_jsonl_file || path.is_dir() {
            Ok(Location::Jsonl(path.to_path_buf()))
        } else {
            Err(StoreError::BadLocation(text.to_string()))
        }
    }

    /// The path of the location.
    pub fn path(&self) -> &Path {
        match self {
            Location::Jsonl(path) | Location::Sled(path) => path,
            Location::Esdb(_) => Path::new(""),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Jsonl(path) => write!(f, "jsonl:{}", path.display()),
            Location::Sled(path) => write!(f, "sled:{}", path.display()),
            Location::Esdb(text) => f.write_str(&crate::readmodel::postgres::redact(text)),
        }
    }
}

fn non_empty(path: &str, text: &str) -> Result<PathBuf, StoreError> {
    if path.is_empty() {
        Err(StoreError::BadLocation(text.to_string()))
    } else {
        Ok(PathBuf::from(path))
    }
}

/// Opens a location for reading.
pub fn open_source(location: &Location) -> Result<Box<dyn EventSource>, StoreError> {
    Ok(match location {
        Location::Jsonl(path) => Box::new(jsonl::JsonlSource::open(path)?),
        Location::Sled(path) => Box::new(sled_store::SledStore::open(path)?),
        Location::Esdb(text) => Box::new(esdb::EsdbStore::open(text)?),
    })
}

/// Opens a location for writing.
pub fn open_sink(location: &Location) -> Result<Box<dyn EventSink>, StoreError> {
    Ok(match location {
        Location::Jsonl(path) => Box::new(jsonl::JsonlSink::open(path)?),
        Location::Sled(path) => Box::new(sled_store::SledStore::open(path)?),
        Location::Esdb(text) => Box::new(esdb::EsdbStore::open(text)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_prefixes_and_bare_paths() {
        assert_eq!(
            Location::parse("sled:/tmp/x").unwrap(),
            Location::Sled("/tmp/x".into())
        );
        assert_eq!(
            Location::parse("jsonl:a/b").unwrap(),
            Location::Jsonl("a/b".into())
        );
        assert_eq!(
            Location::parse("out/log.jsonl").unwrap(),
            Location::Jsonl("out/log.jsonl".into())
        );
        assert!(Location::parse("sled:").is_err());
        assert!(matches!(
            Location::parse("esdb://localhost:2113?tls=false"),
            Ok(Location::Esdb(_))
        ));
        assert!(Location::parse("http://localhost:2113").is_err());
        assert!(Location::parse("no-such-thing.txt").is_err());
    }

    #[test]
    fn stream_states_check_expected_revisions() {
        assert!(StreamState::NoStream.satisfies(ExpectedRevision::NoStream));
        assert!(!StreamState::At(0).satisfies(ExpectedRevision::NoStream));
        assert!(StreamState::At(3).satisfies(ExpectedRevision::Exact(3)));
        assert!(!StreamState::At(3).satisfies(ExpectedRevision::Exact(2)));
        assert!(StreamState::At(3).satisfies(ExpectedRevision::Any));
        assert_eq!(StreamState::At(3).next_revision(), 4);
    }
}
