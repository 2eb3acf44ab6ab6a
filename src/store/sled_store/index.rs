//! Index lookups through the tails in memory, writing the index, and re-indexing.
//!
//! Appends leave their index changes in the [`Tail`]s the store keeps; every lookup here reads
//! through them. [`SledStore::flush_index`] writes them, with the `X` key saying how far the
//! stored index reaches, when the tails outgrow [`TAIL_CACHE_BYTES`](super::TAIL_CACHE_BYTES),
//! before the store is cut back, and when it is dropped.
//!
//! Appends stay durable without it: the log is synced and committed with every batch, and
//! opening a store whose stored index stops short of the log re-indexes the rest from the log
//! ([`SledStore::reindex`]), so a kill -9 loses no index entry either.

use super::layout::{chunk_key, read_u64, segment_lines, stream_prefix, Chunk};
use super::layout::{INDEXED_TO, NEXT_POSITION};
use super::tail::Tail;
use super::SledStore;
use crate::store::StoreError;
use rustc_hash::FxHashMap;
use uuid::Uuid;

/// Chunks per sled batch when the index is written. sled copies a leaf for every key it
/// inserts and frees the copies only when the batch ends: one batch of about 50,000 chunks
/// took the process from 70 MB to 300 MB.
const CHUNKS_PER_WRITE: usize = 1_000;

impl SledStore {
    /// The chunk of a stream's index that starts last before revision `before`.
    pub(super) fn chunk_before(
        &self,
        stream: &str,
        before: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        if let Some(chunk) = self.tails.get(stream).and_then(|t| t.chunk_before(before)) {
            return Ok(Some(chunk.clone()));
        }
        let stored = self
            .tree
            .get_lt(chunk_key(stream, before))
            .map_err(|e| self.sled_error(e))?;
        Ok(stored
            .filter(|(key, _)| key.starts_with(&stream_prefix(stream)))
            .map(|(key, value)| Chunk::decode(&key, &value)))
    }

    /// The chunk of a stream's index that starts at revision `first`.
    pub(super) fn chunk_at(&self, stream: &str, first: u64) -> Result<Option<Chunk>, StoreError> {
        if let Some(chunk) = self.tails.get(stream).and_then(|t| t.chunk_at(first)) {
            return Ok(Some(chunk.clone()));
        }
        let key = chunk_key(stream, first);
        Ok(self.get(&key)?.map(|entries| Chunk::decode(&key, &entries)))
    }

    /// Writes the chunks the tails hold and the stored index lacks, then how far the index now
    /// reaches. A crash in between leaves chunks ahead of `X`; [`reindex`](Self::reindex) skips
    /// what they already hold.
    pub(super) fn flush_index(&mut self) -> Result<(), StoreError> {
        let length = self.len()?;
        let mut chunks: Vec<(Vec<u8>, &[u8])> = self
            .tails
            .iter()
            .flat_map(|(stream, tail)| {
                let chunks = tail.unwritten();
                chunks.map(move |c| (chunk_key(stream, c.first), c.entries.as_slice()))
            })
            .collect();
        if chunks.is_empty() && self.indexed_to()? == length {
            return Ok(());
        }
        chunks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for group in chunks.chunks(CHUNKS_PER_WRITE) {
            let mut writes = sled::Batch::default();
            for (key, entries) in group {
                writes.insert(key.as_slice(), *entries);
            }
            self.tree
                .apply_batch(writes)
                .map_err(|e| self.sled_error(e))?;
        }
        drop(chunks);
        self.tree
            .insert(INDEXED_TO, &length.to_be_bytes())
            .map_err(|e| self.sled_error(e))?;
        self.tails.values_mut().for_each(Tail::written);
        Ok(())
    }

    fn indexed_to(&self) -> Result<u64, StoreError> {
        Ok(self.get(INDEXED_TO)?.map_or(0, |bytes| read_u64(&bytes)))
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
    /// Indexes the events whose index entries were not written: after a crash, or after a
    /// failed append dropped the tails it had taken. The tails in memory are rebuilt.
    pub(super) fn reindex(&mut self) -> Result<(), StoreError> {
        self.tails.clear();
        self.tail_bytes = 0;
        let from = self.indexed_to()?;
        let length = self.get(NEXT_POSITION)?.map_or(0, |bytes| read_u64(&bytes));
        if from >= length {
            return Ok(());
        }
        let mut tails: FxHashMap<String, Tail> = FxHashMap::default();
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
                tail.push(position, &event.id);
                tails.insert(event.stream, tail);
            }
        }
        self.tails = tails;
        self.flush_index()?;
        self.tails.clear();
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}
