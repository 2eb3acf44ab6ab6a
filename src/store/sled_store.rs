//! The embedded event store (`sled:PATH`): an append-only log file of JSON lines and an
//! append-only file of full index chunks (`log_file`), and sled for the rest: where each
//! segment of the log is, where each chunk of the stream indexes is (or the chunk itself, while
//! it fills), and the committed lengths. [`layout`] has the keys and why they are shaped so.
//!
//! `append` stages a whole batch, appends its lines to the log file and syncs
//! it, then commits the batch's segments and the log's new length as one sled `Batch`, flushed
//! before it returns: once an append returns a kill -9 loses nothing, and a crash never leaves
//! half a batch (bytes past the committed length are cut off on open). The checks are read
//! before anything is written; that is safe because sled locks the folder to one process and
//! appends take `&mut self`, so nothing else writes in between. A second process that opens
//! the store gets [`StoreError::Locked`].
//!
//! **Idempotency**, as EventStoreDB has it, by stream: an event whose id is among the last
//! `tail::WINDOW` (64) events of its stream is a re-send.
//! With the same type, version, data and metadata it is skipped and counted as a duplicate;
//! with anything else it is [`StoreError::IdConflict`]. Ids are not unique across streams,
//! and an event re-sent after its stream has moved on by more than that window is stored
//! again: a store-wide id index cost a random sled write and read per event, which made
//! appends five times slower.
//! The expected-revision check is made against the stream as it was before the first event of
//! the request, so re-sending a whole request passes it.
//!
//! A migration does not rely on that window: its checkpoint holds the store's length, and a
//! resumed job first cuts the store back to it (`cut`), as the JSONL sink cuts
//! its file.
//!
//! The store keeps the end of each stream it has written in memory (`tail`): its next
//! revision, fingerprints of its last ids, and the index entries not written yet. Appends read
//! nothing from sled for the revision and id checks, and write no index. When the tails hold
//! more than [`TAIL_CACHE_BYTES`], the index entries are written (`index`); when the rest
//! still fills three quarters of it, the cache starts over.

mod append;
mod cut;
mod index;
pub mod layout;
mod log_file;
mod read;
mod tail;

use super::{AppendOutcome, AppendRequest, EventSink, SinkMark, StoreError, StreamState};
use crate::event::Event;
use futures::future::BoxFuture;
use futures::FutureExt;
use layout::{read_u64, Chunk, INDEX_BYTES, LAYOUT, LAYOUT_KEY, LOG_BYTES, NEXT_POSITION};
use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};

/// The most bytes of stream tails (idempotency windows and index entries not written yet) the
/// store keeps in memory between appends.
pub const TAIL_CACHE_BYTES: usize = 32 << 20;

/// The error of a sled operation on the store in `path`.
fn sled_error_in(path: &Path) -> impl Fn(sled::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Sled {
        path: path.to_path_buf(),
        source,
    }
}

/// The sled event store.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// The ends of streams' indexes, with changes the stored index may not have yet (only
    /// what committed batches wrote).
    tails: FxHashMap<String, tail::Tail>,
    tail_bytes: usize,
    /// The most bytes `tails` may hold: [`TAIL_CACHE_BYTES`] (tests make it small).
    tail_budget: usize,
    /// Shared with the threads that read the log ahead ([`EventSource::read_all`]).
    log: std::sync::Arc<log_file::LogFile>,
    /// The full index chunks, and its committed length (the `J` key).
    index: log_file::LogFile,
    index_bytes: u64,
}

impl SledStore {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db =
            open_db(path, EVENT_STORE_CACHE_BYTES).map_err(|source| open_error(path, source))?;
        let sled_error = sled_error_in(path);
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
        let committed = committed.map_or(0, |bytes| read_u64(&bytes));
        let log = std::sync::Arc::new(log_file::LogFile::open(path, log_file::EVENTS, committed)?);
        let index_bytes = tree.get(INDEX_BYTES).map_err(sled_error)?;
        let index_bytes = index_bytes.map_or(0, |bytes| read_u64(&bytes));
        let index = log_file::LogFile::open(path, log_file::INDEX, index_bytes)?;
        let mut store = SledStore {
            log,
            index,
            index_bytes,
            path: path.to_path_buf(),
            db,
            tree,
            tails: FxHashMap::default(),
            tail_bytes: 0,
            tail_budget: TAIL_CACHE_BYTES,
        };
        store.reindex()?;
        Ok(store)
    }

    fn sled_error(&self, source: sled::Error) -> StoreError {
        sled_error_in(&self.path)(source)
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.tree.get(key).map_err(|e| self.sled_error(e))
    }

    fn decode(&self, position: u64, bytes: &[u8]) -> Result<Event, StoreError> {
        read::decode_event(&self.path, position, bytes)
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

/// The most memory sled's page cache of a read-model or checkpoint store may hold.
pub const SLED_CACHE_BYTES: u64 = 32 << 20;

/// The most memory sled's page cache of the event store may hold. Its reads go to the files
/// (events by segment, full chunks by offset); sled holds small keys and the chunks still
/// filling, which a flush of the index reads once each. With 32 MiB the cache filled with
/// those chunks, and a 10M-event migration peaked 36 MB above a 1M one.
pub const EVENT_STORE_CACHE_BYTES: u64 = 8 << 20;

/// Opens a sled folder. sled releases its folder lock from a background thread shortly after
/// the last handle is dropped, so a store closed and reopened by the same process (`recast
/// run` migrates into a store, then rebuilds from it) may find it still locked for a moment:
/// a lock error is retried for up to a second before it is reported.
///
/// sled's page cache is capped at `cache_bytes`; its default (1 GiB) let a process's memory
/// grow with the size of the store it reads and writes.
pub(crate) fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let mut attempts = 0;
    loop {
        let config = sled::Config::new().path(path).cache_capacity(cache_bytes);
        match config.open() {
            Err(error) if is_lock_error(&error) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
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
            if let Some(tail) = self.tails.get(stream) {
                return Ok(tail.state());
            }
            let last = self.last_chunk(stream)?.and_then(|c| c.last_revision());
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
mod tests;
