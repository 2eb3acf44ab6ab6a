//! The embedded event store on sled (`sled:PATH`).
//!
//! Everything lives in one sled tree, under one-byte key prefixes:
//! - `E` + log position (u64 big-endian) -> the envelope as one JSON line;
//! - `S` + stream name + `0xFF` + revision (u64 BE) -> log position; `0xFF` never occurs in
//!   UTF-8, so one stream's keys are one contiguous range;
//! - `I` + event id (16 bytes) -> log position, for idempotent appends;
//! - `M` -> the next log position.
//!
//! A stream's head (its last revision) is the last `S` key of the stream. The store keeps the
//! heads it has seen in memory (up to [`HEAD_CACHE_STREAMS`] streams, then it starts over), so
//! most appends look nothing up in sled for the revision check. A head key per stream, written
//! with every append, cost a quarter of the store's sled writes.
//!
//! One tree lets [`EventSink::append_batch`] write a whole batch as one atomic sled `Batch`
//! (much cheaper than a multi-tree transaction) and flush it, so once it returns a kill -9
//! loses nothing, and a crash never leaves half a batch. The checks are read from the tree
//! before the batch is applied; that is safe because sled locks the folder to one process and
//! appends take `&mut self`, so nothing else writes in between.
//!
//! Re-appending an event whose id is already stored, with the same stream, type, version, data
//! and metadata, is a no-op; the same id with anything else is [`StoreError::IdConflict`]. The
//! expected-revision check is made against the stream as it was before the first event of the
//! request, so re-sending a whole request after a crash passes it. A second process that opens
//! the store gets [`StoreError::Locked`].

use super::{
    AppendOutcome, AppendRequest, EventSink, EventSource, EventStream, NewEvent, SinkMark,
    StoreError, StreamState,
};
use crate::event::{validate_stream_name, Event};
use futures::future::BoxFuture;
use futures::FutureExt;
use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use uuid::Uuid;

const EVENT: u8 = b'E';
const STREAM: u8 = b'S';
const ID: u8 = b'I';
const NEXT_POSITION: &[u8] = b"M";
const STREAM_SEPARATOR: u8 = 0xFF;

/// The most stream heads the store keeps in memory.
pub const HEAD_CACHE_STREAMS: usize = 100_000;

/// The sled event store.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// Heads of streams as stored (only what committed batches wrote).
    heads: FxHashMap<String, u64>,
}

fn event_key(position: u64) -> [u8; 9] {
    let mut key = [EVENT; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

fn stream_key(stream: &str, revision: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAM);
    key.extend_from_slice(stream.as_bytes());
    key.push(STREAM_SEPARATOR);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

fn id_key(id: &Uuid) -> [u8; 17] {
    let mut key = [ID; 17];
    key[1..].copy_from_slice(id.as_bytes());
    key
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    let start = bytes.len().saturating_sub(8);
    buffer[8 - (bytes.len() - start)..].copy_from_slice(&bytes[start..]);
    u64::from_be_bytes(buffer)
}

/// What one batch has written so far, before it is applied: the checks of later requests in
/// the same batch must see it.
/// `heads` starts as the store's cache of stored heads and goes back to it once the batch is
/// applied.
#[derive(Default)]
struct Pending {
    heads: FxHashMap<String, u64>,
    ids: FxHashMap<Uuid, Event>,
}

impl SledStore {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_db(path).map_err(|source| open_error(path, source))?;
        let tree = db.open_tree("log").map_err(|source| StoreError::Sled {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(SledStore {
            path: path.to_path_buf(),
            db,
            tree,
            heads: FxHashMap::default(),
        })
    }

    fn sled_error(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.tree.get(key).map_err(|e| self.sled_error(e))
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
        Ok(self.get(NEXT_POSITION)?.map_or(0, |bytes| read_u64(&bytes)))
    }

    /// True when the store holds no event.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    fn head(&self, stream: &str, pending: &Pending) -> Result<StreamState, StoreError> {
        if let Some(&revision) = pending.heads.get(stream) {
            return Ok(StreamState::At(revision));
        }
        self.stored_head(stream)
    }

    /// The last revision of a stream, from its last `S` key.
    fn stored_head(&self, stream: &str) -> Result<StreamState, StoreError> {
        let last = self
            .tree
            .get_lt(stream_key(stream, u64::MAX))
            .map_err(|e| self.sled_error(e))?;
        let prefix = &stream_key(stream, 0)[..stream.len() + 2];
        Ok(match last {
            Some((key, _)) if key.starts_with(prefix) => StreamState::At(read_u64(&key)),
            _ => StreamState::NoStream,
        })
    }

    /// The stored event with this id, from the pending batch or the tree.
    fn stored(&self, id: &Uuid, pending: &Pending) -> Result<Option<Event>, StoreError> {
        if let Some(event) = pending.ids.get(id) {
            return Ok(Some(event.clone()));
        }
        let Some(position) = self.get(&id_key(id))? else {
            return Ok(None);
        };
        let position = read_u64(&position);
        let bytes = self.get(&event_key(position))?.unwrap_or_default();
        self.decode(position, &bytes).map(Some)
    }

    /// The revision of an already stored copy of `new_event`, or an id conflict.
    fn duplicate_of(
        &self,
        stream: &str,
        new_event: &NewEvent,
        pending: &Pending,
    ) -> Result<Option<u64>, StoreError> {
        let Some(stored) = self.stored(&new_event.id, pending)? else {
            return Ok(None);
        };
        let same = stored.stream == stream
            && stored.event_type == new_event.event_type
            && stored.version == new_event.version
            && same_json(&stored.data, &new_event.data)
            && same_json(&stored.metadata, &new_event.metadata);
        if same {
            Ok(Some(stored.revision))
        } else {
            Err(StoreError::IdConflict {
                id: new_event.id,
                existing_stream: stored.stream,
                existing_revision: stored.revision,
            })
        }
    }

    fn append_request(
        &self,
        request: AppendRequest,
        batch: &mut sled::Batch,
        pending: &mut Pending,
        next_position: &mut u64,
    ) -> Result<AppendOutcome, StoreError> {
        validate_stream_name(&request.stream)?;
        let mut outcome = AppendOutcome {
            last_revision: 0,
            written: 0,
            duplicates: 0,
        };
        // The head read for the revision check is reused for the first revision: one sled
        // lookup fewer per request.
        let mut head = None;
        for (index, new_event) in request.events.into_iter().enumerate() {
            let duplicate = self.duplicate_of(&request.stream, &new_event, pending)?;
            if index == 0 {
                let before = match duplicate {
                    Some(revision) => revision
                        .checked_sub(1)
                        .map_or(StreamState::NoStream, StreamState::At),
                    None => *head.insert(self.head(&request.stream, pending)?),
                };
                if !before.satisfies(request.expected) {
                    return Err(StoreError::WrongExpectedRevision {
                        stream: request.stream,
                        expected: request.expected,
                        actual: before,
                    });
                }
            }
            if let Some(revision) = duplicate {
                outcome.duplicates += 1;
                outcome.last_revision = revision;
                continue;
            }
            let revision = match head.take() {
                Some(state) => state,
                None => self.head(&request.stream, pending)?,
            }
            .next_revision();
            let event = new_event.into_event(&request.stream, revision, *next_position);
            let position_bytes = next_position.to_be_bytes();
            batch.insert(&event_key(*next_position), event.to_json_line().as_bytes());
            batch.insert(stream_key(&request.stream, revision), &position_bytes);
            batch.insert(&id_key(&event.id), &position_bytes);
            pending.heads.insert(request.stream.clone(), revision);
            pending.ids.insert(event.id, event);
            *next_position += 1;
            outcome.written += 1;
            outcome.last_revision = revision;
        }
        Ok(outcome)
    }
}

fn same_json(a: &crate::event::Payload, b: &crate::event::Payload) -> bool {
    match (a.to_value(), b.to_value()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn open_error(path: &Path, source: sled::Error) -> StoreError {
    if is_lock_error(&source) {
        StoreError::Locked {
            path: path.to_path_buf(),
        }
    } else {
        StoreError::Sled {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// True when sled could not lock its folder because another handle holds it.
pub(crate) fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// The most memory sled's page cache of one store may hold.
pub const SLED_CACHE_BYTES: u64 = 32 << 20;

/// Opens a sled folder. sled releases its folder lock from a background thread shortly after
/// the last handle is dropped, so a store closed and reopened by the same process (`recast
/// run` migrates into a store, then rebuilds from it) may find it still locked for a moment:
/// a lock error is retried for up to a second before it is reported.
///
/// sled's page cache is capped at [`SLED_CACHE_BYTES`]; its default (1 GiB) let a process's
/// memory grow with the size of the store it reads and writes.
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, sled::Error> {
    let mut attempts = 0;
    loop {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES);
        match config.open() {
            Err(error) if is_lock_error(&error) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl EventSource for SledStore {
    fn describe(&self) -> String {
        format!("sled:{}", self.path.display())
    }

    fn read_all(&self, after: Option<u64>) -> EventStream<'_> {
        let range = match after {
            Some(u64::MAX) => None,
            Some(p) => Some(self.tree.range(event_key(p + 1)..=event_key(u64::MAX))),
            None => Some(self.tree.range(event_key(0)..=event_key(u64::MAX))),
        };
        Box::pin(async_stream::try_stream! {
            for item in range.into_iter().flatten() {
                let (key, value) = item.map_err(|e| self.sled_error(e))?;
                yield self.decode(read_u64(&key), &value)?;
            }
        })
    }

    fn read_stream<'a>(&'a self, stream: &'a str, from_revision: u64) -> EventStream<'a> {
        let range = self
            .tree
            .range(stream_key(stream, from_revision)..=stream_key(stream, u64::MAX));
        Box::pin(async_stream::try_stream! {
            for item in range {
                let (_, position) = item.map_err(|e| self.sled_error(e))?;
                let position = read_u64(&position);
                let bytes = self.get(&event_key(position))?;
                yield self.decode(position, &bytes.unwrap_or_default())?;
            }
        })
    }

    fn head_position(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        async move { self.last_position() }.boxed()
    }

    fn list_streams(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        async move {
            // One seek per stream: from each stream's first `S` key, jump past its last one.
            let mut streams = Vec::new();
            let mut cursor = vec![STREAM];
            while let Some((key, _)) = self.tree.get_gt(&cursor).map_err(|e| self.sled_error(e))? {
                if key.first() != Some(&STREAM) || key.len() < 10 {
                    break;
                }
                let name = &key[1..key.len() - 9];
                streams.push(String::from_utf8_lossy(name).into_owned());
                cursor = key[..key.len() - 8].to_vec();
                cursor.extend_from_slice(&[0xFF; 8]);
            }
            // Index order puts "a-1" before "a" (the separator sorts last); list by name.
            streams.sort_unstable();
            Ok(streams)
        }
        .boxed()
    }
}

impl SledStore {
    fn last_position(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.len()?.checked_sub(1))
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
            match self.heads.get(stream) {
                Some(&revision) => Ok(StreamState::At(revision)),
                None => self.stored_head(stream),
            }
        }
        .boxed()
    }

    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>> {
        async move {
            let mut writes = sled::Batch::default();
            // Taken, not borrowed: if the batch fails, the heads it staged are dropped with it.
            let mut pending = Pending {
                heads: std::mem::take(&mut self.heads),
                ids: FxHashMap::default(),
            };
            let mut next_position = self.len()?;
            let mut outcomes = Vec::with_capacity(batch.len());
            for request in batch {
                outcomes.push(self.append_request(
                    request,
                    &mut writes,
                    &mut pending,
                    &mut next_position,
                )?);
            }
            writes.insert(NEXT_POSITION, &next_position.to_be_bytes());
            self.tree
                .apply_batch(writes)
                .map_err(|e| self.sled_error(e))?;
            self.db.flush().map_err(|e| self.sled_error(e))?;
            if pending.heads.len() <= HEAD_CACHE_STREAMS {
                self.heads = pending.heads;
            }
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

    #[tokio::test]
    async fn heads_come_back_from_the_stream_index_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["a", "a-1", "ab", "b"];
        {
            let mut store = SledStore::open(dir.path()).unwrap();
            let requests = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let events = (0..=i as u128).map(|n| new_event(i as u128 * 10 + n, 1));
                    request(name, ExpectedRevision::NoStream, events.collect())
                })
                .collect();
            store.append_batch(requests).await.unwrap();
        }
        let mut store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.list_streams().await.unwrap(), names);
        for (i, name) in names.iter().enumerate() {
            let state = store.stream_state(name).await.unwrap();
            assert_eq!(state, StreamState::At(i as u64), "{name}");
        }
        assert_eq!(
            store.stream_state("a-").await.unwrap(),
            StreamState::NoStream
        );
        let err = store
            .append_batch(vec![request(
                "ab",
                ExpectedRevision::Exact(0),
                vec![new_event(99, 1)],
            )])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::WrongExpectedRevision { .. }),
            "{err}"
        );
        let outcome = store
            .append_batch(vec![request(
                "ab",
                ExpectedRevision::Exact(2),
                vec![new_event(99, 1)],
            )])
            .await
            .unwrap();
        assert_eq!(outcome[0].last_revision, 3);
    }

    #[test]
    fn a_second_open_of_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let second = SledStore::open(dir.path());
        assert!(matches!(second, Err(StoreError::Locked { .. })));
    }
}
