//! The embedded event store (`sled:PATH`): an append-only log file of JSON lines
//! ([`log_file`]), and sled for the rest: where each segment of the log is, the stream indexes
//! of positions and ids in chunks, and the committed length. [`layout`] has the keys and why
//! they are shaped so.
//!
//! [`append`](self::append) stages a whole batch, appends its lines to the log file and syncs
//! it, then commits the batch's segments and the log's new length as one sled `Batch`, flushed
//! before it returns: once an append returns a kill -9 loses nothing, and a crash never leaves
//! half a batch (bytes past the committed length are cut off on open). The checks are read
//! before anything is written; that is safe because sled locks the folder to one process and
//! appends take `&mut self`, so nothing else writes in between. A second process that opens
//! the store gets [`StoreError::Locked`].
//!
//! **Idempotency**, as EventStoreDB has it, by stream: an event whose id is among the last
//! [`CHUNK_EVENTS`](layout::CHUNK_EVENTS) (to twice that) events of its stream is a re-send.
//! With the same type, version, data and metadata it is skipped and counted as a duplicate;
//! with anything else it is [`StoreError::IdConflict`]. Ids are not unique across streams, and an event re-sent after
//! its stream has moved on by more than that window is stored again: a store-wide id index
//! cost a random sled write and read per event, which made appends five times slower.
//! The expected-revision check is made against the stream as it was before the first event of
//! the request, so re-sending a whole request passes it.
//!
//! A migration does not rely on that window: its checkpoint holds the store's length, and a
//! resumed job first cuts the store back to it ([`cut`](self::cut)), as the JSONL sink cuts
//! its file.
//!
//! The store keeps the index chunks at the end of the streams it has written in memory, with
//! their changes ([`tail`]): appends read nothing from sled for the revision and id checks, and
//! write no index. Up to [`TAIL_CACHE_BYTES`]; then the index is written and the cache starts
//! over ([`index`]).

mod append;
mod cut;
mod index;
pub mod layout;
mod log_file;
mod tail;

use super::{
    AppendOutcome, AppendRequest, EventSink, EventSource, EventStream, SinkMark, StoreError,
    StreamState,
};
use crate::event::Event;
use futures::future::BoxFuture;
use futures::FutureExt;
use layout::{
    decode_segment, read_u64, segment_key, segment_lines, Chunk, LAYOUT, LAYOUT_KEY, LOG_BYTES,
    NEXT_POSITION, STREAM,
};
use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};

/// The most bytes of stream-index chunks the store keeps in memory between appends.
pub const TAIL_CACHE_BYTES: usize = 32 << 20;

/// The sled event store.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// The ends of streams' indexes, with changes the stored index may not have yet (only
    /// what committed batches wrote).
    tails: FxHashMap<String, tail::Tail>,
    tail_bytes: usize,
    log: log_file::LogFile,
}

impl SledStore {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_db(path).map_err(|source| open_error(path, source))?;
        let sled_error = |source| StoreError::Sled {
            path: path.to_path_buf(),
            source,
        };
        let tree = db.open_tree("log").map_err(sled_error)?;
        match tree.get(LAYOUT_KEY).map_err(sled_error)? {
            Some(layout) if layout == LAYOUT => {}
            None if tree.is_empty() => {
                tree.insert(LAYOUT_KEY, LAYOUT).map_err(sled_error)?;
            }
            found => {
                let found = found.map_or("1".into(), |f| String::from_utf8_lossy(&f).into_owned());
                return Err(StoreError::Damaged {
                    path: path.to_path_buf(),
                    reason: format!(
                        "written in layout {found}, and this version of recast reads layout {}; \
                         export it with the version that wrote it and import it again",
                        String::from_utf8_lossy(LAYOUT)
                    ),
                });
            }
        }
        let committed = tree.get(LOG_BYTES).map_err(sled_error)?;
        let log = log_file::LogFile::open(path, committed.map_or(0, |bytes| read_u64(&bytes)))?;
        let mut store = SledStore {
            log,
            path: path.to_path_buf(),
            db,
            tree,
            tails: FxHashMap::default(),
            tail_bytes: 0,
        };
        store.reindex()?;
        Ok(store)
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

    fn missing(&self, position: u64) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            reason: format!("the index names log position {position}, which is not stored"),
        }
    }

    /// The number of events in the store (its next log position).
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.get(NEXT_POSITION)?.map_or(0, |bytes| read_u64(&bytes)))
    }

    /// True when the store holds no event.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// The segment holding `position`: its first position, and where its lines are.
    fn segment_entry(&self, position: u64) -> Result<Option<(u64, u64, usize)>, StoreError> {
        let last = self
            .tree
            .range(segment_key(0)..=segment_key(position))
            .next_back();
        let found = last.transpose().map_err(|e| self.sled_error(e))?;
        Ok(found.map(|(key, value)| {
            let (offset, len) = decode_segment(&value);
            (read_u64(&key), offset, len)
        }))
    }

    /// The segment holding `position`: its first position and its lines.
    fn segment_of(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.segment_entry(position)? {
            Some((first, offset, len)) => Ok(Some((first, self.log.read(offset, len)?))),
            None => Ok(None),
        }
    }

    /// The segments from the one holding `position` to the end of the log, as in
    /// [`segment_of`](Self::segment_of).
    fn segments_from(
        &self,
        position: u64,
    ) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_, StoreError> {
        let first = self.segment_entry(position)?.map_or(0, |(first, ..)| first);
        let keys = self.tree.range(segment_key(first)..=segment_key(u64::MAX));
        Ok(keys.map(move |item| {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            let (offset, len) = decode_segment(&value);
            Ok((read_u64(&key), self.log.read(offset, len)?))
        }))
    }

    /// The stored event at `position`; `segment` keeps the last segment read, for the next call.
    fn event_at(
        &self,
        position: u64,
        segment: &mut Option<(u64, Vec<u8>)>,
    ) -> Result<Event, StoreError> {
        for attempt in 0..2 {
            if attempt == 1 || segment.as_ref().is_none_or(|(first, _)| *first > position) {
                *segment = self.segment_of(position)?;
            }
            if let Some((first, bytes)) = segment.as_ref() {
                let index = (position - first) as usize;
                if let Some(line) = segment_lines(bytes).nth(index) {
                    return self.decode(position, line);
                }
            }
        }
        Err(self.missing(position))
    }

    /// The last chunk of a stream's index (`None`: no stream).
    fn last_chunk(&self, stream: &str) -> Result<Option<Chunk>, StoreError> {
        self.chunk_before(stream, u64::MAX)
    }

    fn last_position(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.len()?.checked_sub(1))
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
        let start = match after {
            Some(u64::MAX) => None,
            Some(p) => Some(p + 1),
            None => Some(0),
        };
        Box::pin(async_stream::try_stream! {
            if let Some(start) = start {
                for segment in self.segments_from(start)? {
                    let (first, segment) = segment?;
                    for (index, line) in segment_lines(&segment).enumerate() {
                        let position = first + index as u64;
                        if position >= start {
                            yield self.decode(position, line)?;
                        }
                    }
                }
            }
        })
    }

    fn read_stream<'a>(&'a self, stream: &'a str, from_revision: u64) -> EventStream<'a> {
        Box::pin(async_stream::try_stream! {
            let first = self
                .chunk_before(stream, from_revision.saturating_add(1))?
                .map_or(from_revision, |chunk| chunk.first);
            let mut next = self.chunk_at(stream, first)?;
            let mut segment = None;
            while let Some(chunk) = next {
                for (revision, position) in chunk.entries() {
                    if revision >= from_revision {
                        yield self.event_at(position, &mut segment)?;
                    }
                }
                // Chunks are contiguous, and only a stream's last chunk is not full.
                let after = chunk.first + chunk.len() as u64;
                next = if chunk.is_full() { self.chunk_at(stream, after)? } else { None };
            }
        })
    }

    fn head_position(&self) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        async move { self.last_position() }.boxed()
    }

    fn list_streams(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        async move {
            // One seek per stream: from each stream's first chunk key, jump past its last one.
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
            // Streams whose first chunk is only in memory yet.
            let unwritten = self.tails.iter().filter(|(_, t)| t.last.len() > 0);
            streams.extend(unwritten.map(|(stream, _)| stream.clone()));
            // Index order puts "a-1" before "a" (the separator sorts last); list by name.
            streams.sort_unstable();
            streams.dedup();
            Ok(streams)
        }
        .boxed()
    }
}

/// Writes the index, so that the next open has nothing to re-index. A failure here
/// loses nothing: the next open re-indexes from the log.
impl Drop for SledStore {
    fn drop(&mut self) {
        if self.flush_index().is_ok() {
            let _ = self.db.flush();
        }
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
            let last = match self.tails.get(stream) {
                Some(tail) => tail.last.last_revision(),
                None => self.last_chunk(stream)?.and_then(|c| c.last_revision()),
            };
            Ok(last.map_or(StreamState::NoStream, StreamState::At))
        }
        .boxed()
    }

    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>> {
        async move { self.append(batch) }.boxed()
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<SinkMark, StoreError>> {
        async move {
            self.db.flush().map_err(|e| self.sled_error(e))?;
            Ok(serde_json::json!({"events": self.len()?}))
        }
        .boxed()
    }

    /// On resume, cuts the store back to the checkpoint's length: what a killed job appended
    /// after its last checkpoint is written again, by the same job, with the same ids. A fresh
    /// job needs nothing: its first write to each stream checks that the stream does not exist.
    fn restore<'a>(
        &'a mut self,
        mark: Option<&'a SinkMark>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            match mark {
                Some(mark) => self.cut_back_to(mark).await,
                None => Ok(()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::store::{ExpectedRevision, NewEvent};
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
        // The same id with other data in the same stream is a conflict; ids are per stream.
        let conflict = store
            .append_batch(vec![request(
                "a-1",
                ExpectedRevision::Any,
                vec![new_event(1, 9)],
            )])
            .await;
        assert!(
            matches!(
                conflict,
                Err(StoreError::IdConflict {
                    existing_revision: 0,
                    ..
                })
            ),
            "{conflict:?}"
        );
        assert_eq!(store.len().unwrap(), 2);
        let other_stream = store
            .append_batch(vec![request(
                "b-1",
                ExpectedRevision::Any,
                vec![new_event(1, 9)],
            )])
            .await
            .unwrap();
        assert_eq!(other_stream[0].written, 1);
    }

    /// Appends `count` events to `stream` one request each, in batches of `per_batch`.
    async fn append_many(
        store: &mut SledStore,
        stream: &str,
        ids: std::ops::Range<u128>,
        per_batch: usize,
    ) {
        let ids: Vec<u128> = ids.collect();
        for batch in ids.chunks(per_batch) {
            let requests = batch
                .iter()
                .map(|&n| request(stream, ExpectedRevision::Any, vec![new_event(n, n as u64)]))
                .collect();
            store.append_batch(requests).await.unwrap();
        }
    }

    #[tokio::test]
    async fn long_streams_span_index_chunks_and_re_sends_within_the_window_are_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        // 600 events: ten index chunks.
        append_many(&mut store, "long", 0..600, 70).await;
        let big = NewEvent {
            data: Payload::Parsed(json!({ "blob": "x".repeat(100_000) })),
            ..new_event(1000, 0)
        };
        store
            .append_batch(vec![request(
                "other",
                ExpectedRevision::NoStream,
                vec![big],
            )])
            .await
            .unwrap();
        drop(store);
        let mut store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.stream_state("long").await.unwrap(),
            StreamState::At(599)
        );
        let tail: Vec<Event> = store.read_stream("long", 250).try_collect().await.unwrap();
        assert_eq!(tail.len(), 350);
        assert!(
            tail.iter()
                .enumerate()
                .all(|(i, e)| e.revision == 250 + i as u64
                    && e.id == Uuid::from_u128(250 + i as u128))
        );
        let all: Vec<Event> = store.read_all(Some(298)).try_collect().await.unwrap();
        assert_eq!(all.len(), 302);
        assert_eq!(all[0].position, Some(299));
        assert_eq!(
            all[301].data.to_value().unwrap()["blob"]
                .as_str()
                .map(str::len),
            Some(100_000)
        );
        // Event 550 is among the last 64 to 128 events of its stream (the last two chunks):
        // sent again, it is skipped. Event 100 is older: it is stored again.
        let again = store
            .append_batch(vec![request(
                "long",
                ExpectedRevision::Any,
                vec![new_event(550, 550)],
            )])
            .await
            .unwrap();
        assert_eq!(
            (
                again[0].written,
                again[0].duplicates,
                again[0].last_revision
            ),
            (0, 1, 550)
        );
        assert_eq!(store.len().unwrap(), 601);
        let old = store
            .append_batch(vec![request(
                "long",
                ExpectedRevision::Any,
                vec![new_event(100, 100)],
            )])
            .await
            .unwrap();
        assert_eq!((old[0].written, old[0].last_revision), (1, 600));
    }

    #[tokio::test]
    async fn a_resumed_job_cuts_the_store_back_to_its_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        append_many(&mut store, "a-1", 0..300, 100).await;
        append_many(&mut store, "b-1", 300..310, 10).await;
        let mark = store.commit().await.unwrap();
        let before: Vec<Event> = store.read_all(None).try_collect().await.unwrap();
        append_many(&mut store, "a-1", 310..320, 3).await;
        append_many(&mut store, "c-1", 320..330, 4).await;
        append_many(&mut store, "b-1", 330..331, 1).await;
        assert_eq!(store.len().unwrap(), 331);
        store.restore(Some(&mark)).await.unwrap();
        let after: Vec<Event> = store.read_all(None).try_collect().await.unwrap();
        assert_eq!(
            after.iter().map(Event::to_json_line).collect::<Vec<_>>(),
            before.iter().map(Event::to_json_line).collect::<Vec<_>>()
        );
        assert_eq!(store.list_streams().await.unwrap(), vec!["a-1", "b-1"]);
        assert_eq!(
            store.stream_state("a-1").await.unwrap(),
            StreamState::At(299)
        );
        // Written again after the cut, the events get the same revisions and positions.
        append_many(&mut store, "a-1", 310..320, 3).await;
        let a: Vec<Event> = store.read_stream("a-1", 300).try_collect().await.unwrap();
        assert_eq!(
            a.iter()
                .map(|e| (e.revision, e.position))
                .collect::<Vec<_>>(),
            (0..10)
                .map(|i| (300 + i, Some(310 + i)))
                .collect::<Vec<_>>()
        );
        let too_long = serde_json::json!({ "events": 10_000 });
        assert!(matches!(
            store.restore(Some(&too_long)).await,
            Err(StoreError::BadMark { .. })
        ));
    }

    #[tokio::test]
    async fn a_failed_batch_loses_no_index_entry_of_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        append_many(&mut store, "a-1", 0..300, 100).await;
        // Takes a-1's tail, with 300 entries not yet in the stored index, then fails.
        let failed = store
            .append_batch(vec![
                request("a-1", ExpectedRevision::Exact(299), vec![new_event(300, 0)]),
                request("b-1", ExpectedRevision::Exact(7), vec![new_event(301, 0)]),
            ])
            .await;
        assert!(matches!(
            failed,
            Err(StoreError::WrongExpectedRevision { .. })
        ));
        assert_eq!(store.len().unwrap(), 300);
        assert_eq!(
            store.stream_state("a-1").await.unwrap(),
            StreamState::At(299)
        );
        let a: Vec<Event> = store.read_stream("a-1", 0).try_collect().await.unwrap();
        assert_eq!(a.len(), 300);
        let next = store
            .append_batch(vec![request(
                "a-1",
                ExpectedRevision::Exact(299),
                vec![new_event(300, 0)],
            )])
            .await
            .unwrap();
        assert_eq!(next[0].last_revision, 300);
    }

    #[tokio::test]
    async fn an_index_left_behind_by_a_crash_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SledStore::open(dir.path()).unwrap();
            append_many(&mut store, "a-1", 0..300, 100).await;
            append_many(&mut store, "b-1", 300..305, 5).await;
        }
        // What a killed process leaves: its last batch in the log and committed, no index.
        let crashed = [
            ("a-1", 300, 305),
            ("a-1", 301, 306),
            ("b-1", 5, 307),
            ("a-1", 302, 308),
        ];
        let mut segment = Vec::new();
        for (stream, revision, position) in crashed {
            let event = new_event(position as u128, 0);
            serde_json::to_writer(&mut segment, &event.envelope(stream, revision, position))
                .unwrap();
            segment.push(b'\n');
        }
        {
            let tree = sled::open(dir.path()).unwrap().open_tree("log").unwrap();
            let offset = read_u64(&tree.get(LOG_BYTES).unwrap().unwrap());
            let log = log_file::LogFile::open(dir.path(), offset).unwrap();
            log.append(offset, &segment).unwrap();
            let value = layout::encode_segment(offset, segment.len());
            tree.insert(layout::segment_key(305), &value).unwrap();
            tree.insert(NEXT_POSITION, &309u64.to_be_bytes()).unwrap();
            let length = offset + segment.len() as u64;
            tree.insert(LOG_BYTES, &length.to_be_bytes()).unwrap();
            tree.flush().unwrap();
        }
        let mut store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.stream_state("a-1").await.unwrap(),
            StreamState::At(302)
        );
        assert_eq!(store.stream_state("b-1").await.unwrap(), StreamState::At(5));
        let a: Vec<Event> = store.read_stream("a-1", 299).try_collect().await.unwrap();
        assert_eq!(
            a.iter()
                .map(|e| (e.revision, e.position))
                .collect::<Vec<_>>(),
            vec![
                (299, Some(299)),
                (300, Some(305)),
                (301, Some(306)),
                (302, Some(308))
            ]
        );
        let next = store
            .append_batch(vec![request(
                "a-1",
                ExpectedRevision::Exact(302),
                vec![new_event(999, 0)],
            )])
            .await
            .unwrap();
        assert_eq!(next[0].last_revision, 303);
    }

    #[test]
    fn a_store_in_another_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("log")
                .unwrap()
                .insert(b"E\0\0\0\0\0\0\0\0", b"{}")
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("layout 1"), "{err}");
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
