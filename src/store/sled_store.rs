//! The embedded event store on sled (`sled:PATH`).
//!
//! Layout, one sled tree each:
//! - `events`: log position (u64 big-endian) -> the envelope as one JSON line;
//! - `streams`: stream name, `0xFF`, revision (u64 BE) -> log position; `0xFF` never occurs
//!   in UTF-8, so one stream's keys are one contiguous range;
//! - `heads`: stream name -> revision of its last event;
//! - `ids`: event id (16 bytes) -> log position, for idempotent appends;
//! - `meta`: `next_position`.
//!
//! [`EventSink::append_batch`] writes a whole batch in one transaction across these trees and
//! then flushes, so once it returns a kill -9 loses nothing. Re-appending an event whose id is
//! already stored, with the same stream, type, version, data and metadata, is a no-op; the same
//! id with anything else is [`StoreError::IdConflict`]. The expected-revision check is made
//! against the stream as it was before the first event of the request, so re-sending a whole
//! request after a crash passes it. sled locks its folder, so a second process that opens the
//! store gets [`StoreError::Locked`].

use super::{
    AppendOutcome, AppendRequest, EventSink, EventSource, EventStream, NewEvent, SinkMark,
    StoreError, StreamState,
};
use crate::event::{validate_stream_name, Event};
use futures::future::BoxFuture;
use futures::FutureExt;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use std::path::{Path, PathBuf};

const NEXT_POSITION: &[u8] = b"next_position";
const STREAM_SEPARATOR: u8 = 0xFF;

/// The sled event store.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    events: sled::Tree,
    streams: sled::Tree,
    heads: sled::Tree,
    ids: sled::Tree,
    meta: sled::Tree,
}

fn stream_key(stream: &str, revision: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(STREAM_SEPARATOR);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buffer)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The five trees of the store, as seen inside one transaction.
type Trees<'a> = (
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
);

impl SledStore {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::open(path).map_err(|source| open_error(path, source))?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Sled {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(SledStore {
            path: path.to_path_buf(),
            events: tree("events")?,
            streams: tree("streams")?,
            heads: tree("heads")?,
            ids: tree("ids")?,
            meta: tree("meta")?,
            db,
        })
    }

    fn sled_error(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn decode(&self, position: u64, bytes: &[u8]) -> Result<Event, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            position,
            source,
        })
    }

    /// The number of events in the store (its next log position).
    pub fn len(&self) -> Result<u64, StoreError> {
        let next = self
            .meta
            .get(NEXT_POSITION)
            .map_err(|e| self.sled_error(e))?;
        Ok(next.map_or(0, |bytes| read_u64(&bytes)))
    }

    /// True when the store holds no event.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    fn append_in_tx(
        &self,
        trees: Trees<'_>,
        batch: &[AppendRequest],
    ) -> TxResult<Vec<AppendOutcome>> {
        let (events, streams, heads, ids, meta) = trees;
        let mut next_position = meta.get(NEXT_POSITION)?.map_or(0, |b| read_u64(&b));
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            let abort = ConflictableTransactionError::Abort;
            validate_stream_name(&request.stream).map_err(|e| abort(e.into()))?;
            let mut state = heads
                .get(request.stream.as_bytes())?
                .map_or(StreamState::NoStream, |b| StreamState::At(read_u64(&b)));
            let mut outcome = AppendOutcome {
                last_revision: 0,
                written: 0,
                duplicates: 0,
            };
            for (index, new_event) in request.events.iter().enumerate() {
                if let Some(existing) =
                    self.existing_duplicate(events, ids, &request.stream, new_event)?
                {
                    if index == 0 {
                        state = existing
                            .checked_sub(1)
                            .map_or(StreamState::NoStream, StreamState::At);
                        check_expected(request, state)?;
                    }
                    outcome.duplicates += 1;
                    outcome.last_revision = existing;
                    continue;
                }
                if index == 0 {
                    check_expected(request, state)?;
                }
                let revision = heads
                    .get(request.stream.as_bytes())?
                    .map_or(0, |b| read_u64(&b) + 1);
                let event = new_event
                    .clone()
                    .into_event(&request.stream, revision, next_position);
                let position_bytes = next_position.to_be_bytes();
                events.insert(&position_bytes, event.to_json_line().as_bytes())?;
                streams.insert(stream_key(&request.stream, revision), &position_bytes)?;
                heads.insert(request.stream.as_bytes(), &revision.to_be_bytes())?;
                ids.insert(new_event.id.as_bytes(), &position_bytes)?;
                next_position += 1;
                outcome.written += 1;
                outcome.last_revision = revision;
            }
            outcomes.push(outcome);
        }
        meta.insert(NEXT_POSITION, &next_position.to_be_bytes())?;
        Ok(outcomes)
    }

    /// The revision of an already stored copy of `new_event`, or an id conflict.
    fn existing_duplicate(
        &self,
        events: &TransactionalTree,
        ids: &TransactionalTree,
        stream: &str,
        new_event: &NewEvent,
    ) -> TxResult<Option<u64>> {
        let Some(position) = ids.get(new_event.id.as_bytes())? else {
            return Ok(None);
        };
        let position = read_u64(&position);
        let bytes = events.get(position.to_be_bytes())?.unwrap_or_default();
        let stored = self
            .decode(position, &bytes)
            .map_err(ConflictableTransactionError::Abort)?;
        let same = stored.stream == stream
            && stored.event_type == new_event.event_type
            && stored.version == new_event.version
            && same_json(&stored.data, &new_event.data)
            && same_json(&stored.metadata, &new_event.metadata);
        if same {
            Ok(Some(stored.revision))
        } else {
            Err(ConflictableTransactionError::Abort(
                StoreError::IdConflict {
                    id: new_event.id,
                    existing_stream: stored.stream,
                    existing_revision: stored.revision,
                },
            ))
        }
    }
}

fn check_expected(request: &AppendRequest, state: StreamState) -> TxResult<()> {
    if state.satisfies(request.expected) {
        Ok(())
    } else {
        Err(ConflictableTransactionError::Abort(
            StoreError::WrongExpectedRevision {
                stream: request.stream.clone(),
                expected: request.expected,
                actual: state,
            },
        ))
    }
}

fn same_json(a: &crate::event::Payload, b: &crate::event::Payload) -> bool {
    match (a.to_value(), b.to_value()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn open_error(path: &Path, source: sled::Error) -> StoreError {
    match &source {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        }
        _ => StoreError::Sled {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl EventSource for SledStore {
    fn describe(&self) -> String {
        format!("sled:{}", self.path.display())
    }

    fn read_all(&self, after: Option<u64>) -> EventStream<'_> {
        let start = after.map_or(0, |p| p.saturating_add(1));
        let range = if after == Some(u64::MAX) {
            None
        } else {
            Some(self.events.range(start.to_be_bytes()..))
        };
        Box::pin(async_stream::try_stream! {
            for item in range.into_iter().flatten() {
                let (key, value) = item.map_err(|e| self.sled_error(e))?;
                yield self.decode(read_u64(&key), &value)?;
            }
        })
    }

    fn read_stream<'a>(&'a self, stream: &'a str, from_revision: u64) -> EventStream<'a> {
        let start = stream_key(stream, from_revision);
        let end = stream_key(stream, u64::MAX);
        Box::pin(async_stream::try_stream! {
            for item in self.streams.range(start..=end) {
                let (_, position) = item.map_err(|e| self.sled_error(e))?;
                let position = read_u64(&position);
                let bytes = self.events.get(position.to_be_bytes()).map_err(|e| self.sled_error(e))?;
                yield self.decode(position, &bytes.unwrap_or_default())?;
            }
        })
    }

    fn list_streams(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        async move {
            self.heads
                .iter()
                .keys()
                .map(|key| {
                    let key = key.map_err(|e| self.sled_error(e))?;
                    Ok(String::from_utf8_lossy(&key).into_owned())
                })
                .collect()
        }
        .boxed()
    }
}

impl EventSink for SledStore {
    fn describe(&self) -> String {
        format!("sled:{}", self.path.display())
    }

    fn stream_state<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<StreamState, StoreError>> {
        async move {
            let head = self
                .heads
                .get(stream.as_bytes())
                .map_err(|e| self.sled_error(e))?;
            Ok(head.map_or(StreamState::NoStream, |b| StreamState::At(read_u64(&b))))
        }
        .boxed()
    }

    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>> {
        async move {
            let trees = (
                &self.events,
                &self.streams,
                &self.heads,
                &self.ids,
                &self.meta,
            );
            let outcomes = trees
                .transaction(|(e, s, h, i, m)| self.append_in_tx((e, s, h, i, m), &batch))
                .map_err(|err| match err {
                    TransactionError::Abort(err) => err,
                    TransactionError::Storage(source) => self.sled_error(source),
                })?;
            self.db.flush().map_err(|e| self.sled_error(e))?;
            Ok(outcomes)
        }
        .boxed()
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<SinkMark, StoreError>> {
        async move {
            self.db.flush().map_err(|e| self.sled_error(e))?;
            Ok(serde_json::json!({"events": self.len()?}))
        }
        .boxed()
    }

    /// The sled store needs nothing back from a mark: appends are idempotent by event id, and
    /// a fresh job's first write to each stream checks that the stream does not exist yet.
    fn restore<'a>(
        &'a mut self,
        _mark: Option<&'a SinkMark>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { Ok(()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::store::ExpectedRevision;
    use futures::TryStreamExt;
    use serde_json::json;
    use uuid::Uuid;

    fn new_event(n: u128, value: u64) -> NewEvent {
        NewEvent {
            id: Uuid::from_u128(n),
            event_type: "T".into(),
            version: 1,
            data: Payload::Parsed(json!({ "v": value })),
            metadata: Payload::empty_object(),
            recorded_at: None,
        }
    }

    fn request(stream: &str, expected: ExpectedRevision, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest {
            stream: stream.into(),
            expected,
            events,
        }
    }

    #[tokio::test]
    async fn appends_check_revisions_and_are_idempotent_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        let first = vec![new_event(1, 1), new_event(2, 2)];
        let out = store
            .append_batch(vec![request(
                "a-1",
                ExpectedRevision::NoStream,
                first.clone(),
            )])
            .await
            .unwrap();
        assert_eq!(
            out[0],
            AppendOutcome {
                last_revision: 1,
                written: 2,
                duplicates: 0
            }
        );
        // The same request again is a no-op that passes its own expected-revision check.
        let again = store
            .append_batch(vec![request("a-1", ExpectedRevision::NoStream, first)])
            .await
            .unwrap();
        assert_eq!(
            again[0],
            AppendOutcome {
                last_revision: 1,
                written: 0,
                duplicates: 2
            }
        );
        let wrong = store
            .append_batch(vec![request(
                "a-1",
                ExpectedRevision::Exact(0),
                vec![new_event(3, 3)],
            )])
            .await;
        assert!(
            matches!(wrong, Err(StoreError::WrongExpectedRevision { .. })),
            "{wrong:?}"
        );
        let conflict = store
            .append_batch(vec![request(
                "b-1",
                ExpectedRevision::Any,
                vec![new_event(1, 9)],
            )])
            .await;
        assert!(
            matches!(conflict, Err(StoreError::IdConflict { .. })),
            "{conflict:?}"
        );
        assert_eq!(store.len().unwrap(), 2);
    }

    #[tokio::test]
    async fn reads_the_log_streams_and_stream_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        store
            .append_batch(vec![
                request("a-1", ExpectedRevision::Any, vec![new_event(1, 1)]),
                request("b-1", ExpectedRevision::Any, vec![new_event(2, 2)]),
                request("a-1", ExpectedRevision::Exact(0), vec![new_event(3, 3)]),
            ])
            .await
            .unwrap();
        let all: Vec<Event> = store.read_all(Some(0)).try_collect().await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.position.unwrap()).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let stream: Vec<Event> = store.read_stream("a-1", 1).try_collect().await.unwrap();
        assert_eq!(stream.len(), 1);
        assert_eq!(stream[0].id, Uuid::from_u128(3));
        assert_eq!(store.list_streams().await.unwrap(), vec!["a-1", "b-1"]);
    }

    #[test]
    fn a_second_open_of_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let second = SledStore::open(dir.path());
        assert!(matches!(second, Err(StoreError::Locked { .. })));
    }
}
