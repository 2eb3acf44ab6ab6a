//! The stream index's write-back buffer, and re-indexing after a crash.
//!
//! Appends change the last index chunk of every stream they touch. Writing those chunks with
//! every batch was one random sled write per event (a batch of 5,000 events touches about as
//! many streams), most of the cost of an append. So changed chunks wait in an
//! [`IndexBuffer`] and go to sled together, with the `X` key saying how far the stored index
//! reaches, when the buffer holds [`INDEX_BUFFER_BYTES`], before the store is cut back, and
//! when it is dropped. Every index lookup reads through the buffer.
//!
//! Appends stay durable without it: the log's segments are flushed with every batch, and
//! opening a store whose stored index stops short of the log re-indexes the rest from the
//! segments ([`SledStore::reindex`]), so a kill -9 loses no index entry either.

use super::append::Tail;
use super::layout::{chunk_key, read_u64, segment_lines, stream_prefix, Chunk};
use super::layout::{INDEXED_TO, NEXT_POSITION};
use super::SledStore;
use crate::store::StoreError;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::ops::Bound;
use uuid::Uuid;

/// The most bytes of changed index chunks kept in memory before they are written.
pub const INDEX_BUFFER_BYTES: usize = 16 << 20;

/// Chunks per sled batch when the buffer is written. sled copies a leaf for every key it
/// inserts and frees the copies only when the batch ends: one batch of the whole buffer
/// (about 50,000 chunks) took the process from 70 MB to 300 MB.
const CHUNKS_PER_WRITE: usize = 1_000;

/// Index chunks changed since the index was last written, by chunk key.
#[derive(Debug, Default)]
pub(super) struct IndexBuffer {
    chunks: BTreeMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl IndexBuffer {
    pub fn insert(&mut self, key: Vec<u8>, entries: Vec<u8>) {
        self.bytes += key.len() + entries.len();
        if let Some(old) = self.chunks.insert(key, entries) {
            self.bytes -= old.len();
        }
    }

    pub fn is_full(&self) -> bool {
        self.bytes >= INDEX_BUFFER_BYTES
    }

    /// The buffered chunk keys and entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.chunks
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

/// What re-indexing reads of each stored event.
#[derive(serde::Deserialize)]
struct Indexed {
    stream: String,
    revision: u64,
    id: Uuid,
}

impl SledStore {
    /// The chunk of a stream's index that starts last before revision `before`.
    pub(super) fn chunk_before(
        &self,
        stream: &str,
        before: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        let key = chunk_key(stream, before);
        let prefix = stream_prefix(stream);
        let stored = self.tree.get_lt(&key).map_err(|e| self.sled_error(e))?;
        let stored = stored.filter(|(k, _)| k.starts_with(&prefix));
        let bounds = (
            Bound::Included(prefix.as_slice()),
            Bound::Excluded(key.as_slice()),
        );
        let buffered = self.index.chunks.range::<[u8], _>(bounds).next_back();
        Ok(match (stored, buffered) {
            (Some((k, v)), Some((bk, _))) if k.as_ref() > bk.as_slice() => {
                Some(Chunk::decode(&k, &v))
            }
            (_, Some((k, v))) => Some(Chunk::decode(k, v)),
            (Some((k, v)), None) => Some(Chunk::decode(&k, &v)),
            (None, None) => None,
        })
    }

    /// The chunk of a stream's index that starts at revision `first`.
    pub(super) fn chunk_at(&self, stream: &str, first: u64) -> Result<Option<Chunk>, StoreError> {
        let key = chunk_key(stream, first);
        if let Some(entries) = self.index.chunks.get(&key) {
            return Ok(Some(Chunk::decode(&key, entries)));
        }
        Ok(self.get(&key)?.map(|entries| Chunk::decode(&key, &entries)))
    }

    /// Writes the buffered chunks, then how far the index now reaches. A crash in between
    /// leaves chunks ahead of `X`; [`reindex`](Self::reindex) skips what they already hold.
    pub(super) fn flush_index(&mut self) -> Result<(), StoreError> {
        let length = self.len()?;
        if self.index.chunks.is_empty() && self.indexed_to()? == length {
            return Ok(());
        }
        let mut chunks = std::mem::take(&mut self.index)
            .chunks
            .into_iter()
            .peekable();
        while chunks.peek().is_some() {
            let mut writes = sled::Batch::default();
            for (key, entries) in chunks.by_ref().take(CHUNKS_PER_WRITE) {
                writes.insert(key, entries);
            }
            self.tree
                .apply_batch(writes)
                .map_err(|e| self.sled_error(e))?;
        }
        self.tree
            .insert(INDEXED_TO, &length.to_be_bytes())
            .map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    fn indexed_to(&self) -> Result<u64, StoreError> {
        Ok(self.get(INDEXED_TO)?.map_or(0, |bytes| read_u64(&bytes)))
    }

    /// Indexes the events a crashed process appended after the stored index was last written.
    pub(super) fn reindex(&mut self) -> Result<(), StoreError> {
        let from = self.indexed_to()?;
        let length = self.get(NEXT_POSITION)?.map_or(0, |bytes| read_u64(&bytes));
        if from >= length {
            return Ok(());
        }
        let mut tails: FxHashMap<String, Tail> = FxHashMap::default();
        let mut full_chunks = Vec::new();
        for segment in self.segments_from(from)? {
            let (first, segment) = segment?;
            for (index, line) in segment_lines(&segment).enumerate() {
                let position = first + index as u64;
                if position < from {
                    continue;
                }
                let event: Indexed =
                    serde_json::from_slice(line).map_err(|source| StoreError::Corrupt {
                        path: self.path.clone(),
                        position,
                        source,
                    })?;
                let mut tail = match tails.remove(&event.stream) {
                    Some(tail) => tail,
                    None => self.read_tail(&event.stream)?,
                };
                // Already in a chunk that a flush wrote before it could write `X`.
                if event.revision < tail.next_revision() {
                    tails.insert(event.stream, tail);
                    continue;
                }
                if tail.next_revision() != event.revision {
                    return Err(StoreError::Damaged {
                        path: self.path.clone(),
                        reason: format!(
                            "the event at log position {position} has revision {} of stream {}, \
                             whose index ends before revision {}",
                            event.revision,
                            event.stream,
                            tail.next_revision()
                        ),
                    });
                }
                tail.push(&event.stream, position, &event.id, &mut full_chunks);
                tails.insert(event.stream, tail);
            }
        }
        for (key, entries) in full_chunks {
            self.index.insert(key, entries);
        }
        for (stream, tail) in tails {
            self.index
                .insert(chunk_key(&stream, tail.last.first), tail.last.entries);
        }
        self.flush_index()?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}
