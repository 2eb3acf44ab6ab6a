//! Index lookups through the tails in memory, writing the index, and re-indexing.
//!
//! Appends leave their index entries in the [`Tail`]s the store keeps; every lookup here reads
//! through them. Stored chunks are read from sled, or from the index file when sled holds only
//! where a full chunk is. [`SledStore::flush_index`] writes the entries, with the `X` key
//! saying how far the stored index reaches, when the tails outgrow
//! [`TAIL_CACHE_BYTES`](super::TAIL_CACHE_BYTES), before the store is cut back, and when it is
//! dropped.
//!
//! Appends stay durable without it: the log is synced and committed with every batch, and
//! opening a store whose stored index stops short of the log re-indexes the rest from the log
//! ([`SledStore::reindex`]), so a kill -9 loses no index entry either.

use super::layout::{chunk_key, chunk_start, read_u64, segment_lines, stream_prefix, Chunk};
use super::layout::{decode_segment, encode_segment, CHUNK_EVENTS, ENTRY_BYTES, INDEX_BYTES};
use super::layout::{INDEXED_TO, NEXT_POSITION};
use super::tail::Tail;
use super::SledStore;
use crate::store::StoreError;
use rustc_hash::FxHashMap;
use uuid::Uuid;

/// Streams per sled batch when the index is written (each batch syncs the index file first).
/// sled copies a leaf for every key it inserts and frees the copies only when the batch ends:
/// one batch of about 50,000 chunks took the process from 70 MB to 300 MB, and 1,000 streams
/// per batch peaked about 5 MB above 250 in a 10M-event migration.
const STREAMS_PER_WRITE: usize = 250;

impl SledStore {
    /// The chunk of a stream's index that starts last before revision `before`.
    pub(super) fn chunk_before(
        &self,
        stream: &str,
        before: u64,
    ) -> Result<Option<Chunk>, StoreError> {
        if let Some(tail) = self.tails.get(stream) {
            return match before.min(tail.next_revision()).checked_sub(1) {
                Some(revision) => self.chunk_at(stream, chunk_start(revision)),
                None => Ok(None),
            };
        }
        let stored = self
            .tree
            .get_lt(chunk_key(stream, before))
            .map_err(|e| self.sled_error(e))?;
        stored
            .filter(|(key, _)| key.starts_with(&stream_prefix(stream)))
            .map(|(key, value)| self.load_chunk(&key, &value))
            .transpose()
    }

    /// A stored chunk from its key and value: the value itself, or read from the index file.
    fn load_chunk(&self, key: &[u8], value: &[u8]) -> Result<Chunk, StoreError> {
        if !Chunk::is_pointer(value) {
            return Ok(Chunk::decode(key, value));
        }
        let (offset, len) = decode_segment(value);
        Ok(Chunk {
            first: read_u64(key),
            entries: self.index.read(offset, len)?,
        })
    }

    /// The chunk stored under `key`, as the stored index has it.
    pub(super) fn stored_chunk(&self, key: &[u8]) -> Result<Option<Chunk>, StoreError> {
        match self.get(key)? {
            Some(value) => self.load_chunk(key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// The chunk of a stream's index that starts at revision `first`.
    pub(super) fn chunk_at(&self, stream: &str, first: u64) -> Result<Option<Chunk>, StoreError> {
        let stored = self.stored_chunk(&chunk_key(stream, first))?;
        Ok(match self.tails.get(stream) {
            Some(tail) => tail.overlay(first, stored),
            None => stored,
        })
    }

    /// Writes the pending index entries of every tail into the stored chunks, then how far the
    /// index now reaches. A crash in between leaves chunks ahead of `X`;
    /// [`reindex`](Self::reindex) skips what they already hold.
    pub(super) fn flush_index(&mut self) -> Result<(), StoreError> {
        let length = self.len()?;
        let mut streams: Vec<String> = (self.tails.iter())
            .filter(|(_, tail)| tail.has_pending())
            .map(|(stream, _)| stream.clone())
            .collect();
        if streams.is_empty() && self.indexed_to()? == length {
            return Ok(());
        }
        // In key order, so that sled's reads and inserts walk its tree in order.
        streams.sort_by_cached_key(|stream| stream_prefix(stream));
        for group in streams.chunks(STREAMS_PER_WRITE) {
            self.write_index_of(group)?;
        }
        self.tree
            .insert(INDEXED_TO, &length.to_be_bytes())
            .map_err(|e| self.sled_error(e))?;
        self.tail_bytes = self.tails.iter().map(|(s, t)| s.len() + t.bytes()).sum();
        Ok(())
    }

    /// Writes the pending index entries of `streams`: their full chunks to the index file,
    /// synced, then in one sled batch where those are and the chunks still filling.
    fn write_index_of(&mut self, streams: &[String]) -> Result<(), StoreError> {
        let mut writes = sled::Batch::default();
        let mut full = Vec::new();
        let mut pointers = Vec::new();
        for stream in streams {
            for chunk in self.pending_chunks(stream)? {
                let key = chunk_key(stream, chunk.first);
                if chunk.is_full() {
                    pointers.push((key, full.len()));
                    full.extend_from_slice(&chunk.entries);
                } else {
                    writes.insert(key, chunk.entries);
                }
            }
        }
        if !full.is_empty() {
            self.index.append(self.index_bytes, &full)?;
            for (key, at) in pointers {
                let offset = self.index_bytes + at as u64;
                writes.insert(key, &encode_segment(offset, CHUNK_EVENTS * ENTRY_BYTES));
            }
            self.index_bytes += full.len() as u64;
            writes.insert(INDEX_BYTES, &self.index_bytes.to_be_bytes());
        }
        self.tree
            .apply_batch(writes)
            .map_err(|e| self.sled_error(e))
    }

    /// A stream's pending index entries, taken out of its tail, as the chunks to store: the
    /// stored chunk they continue, filled up, and the chunks after it.
    fn pending_chunks(&mut self, stream: &str) -> Result<Vec<Chunk>, StoreError> {
        let Some(tail) = self.tails.get_mut(stream) else {
            return Ok(Vec::new());
        };
        let (from, pending) = tail.take_pending();
        let first = chunk_start(from);
        let mut chunk = self
            .stored_chunk(&chunk_key(stream, first))?
            .unwrap_or(Chunk {
                first,
                entries: Vec::new(),
            });
        if chunk.first + chunk.len() as u64 != from {
            return Err(StoreError::Damaged {
                path: self.path.clone(),
                reason: format!(
                    "the index of stream {stream} ends at revision {}, and the next indexed \
                     event has revision {from}",
                    chunk.first + chunk.len() as u64
                ),
            });
        }
        let mut chunks = Vec::new();
        for entry in pending.chunks_exact(ENTRY_BYTES) {
            if chunk.is_full() {
                let next = chunk.first + CHUNK_EVENTS as u64;
                chunks.push(std::mem::replace(
                    &mut chunk,
                    Chunk {
                        first: next,
                        entries: Vec::new(),
                    },
                ));
            }
            chunk.entries.extend_from_slice(entry);
        }
        chunks.push(chunk);
        Ok(chunks)
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
