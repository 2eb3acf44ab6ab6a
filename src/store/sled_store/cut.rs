//! Cutting the sled event store back to a checkpoint's length, for a resumed job: the events
//! after it leave the log, and their streams' indexes lose them, in one sled batch. Full chunks
//! that lose entries are stored again in sled as chunks still filling; their old copies stay in
//! the index file, unreferenced (a cut happens when a job resumes, and leaves at most the
//! chunks written since its last checkpoint behind).

use super::layout::{chunk_key, encode_segment, segment_key, segment_prefix};
use super::layout::{INDEXED_TO, LOG_BYTES, NEXT_POSITION};
use super::SledStore;
use crate::store::{EventSource, SinkMark, StoreError};
use futures::TryStreamExt;
use rustc_hash::FxHashMap;

impl SledStore {
    /// Cuts the store back to the length `mark` recorded. A store shorter than that was
    /// changed outside the job, and is refused.
    pub(super) async fn cut_back_to(&mut self, mark: &SinkMark) -> Result<(), StoreError> {
        let bad_mark = |reason: String| StoreError::BadMark {
            target: EventSource::describe(self),
            reason,
        };
        let keep = mark["events"]
            .as_u64()
            .ok_or_else(|| bad_mark("no event count".into()))?;
        let length = self.len()?;
        if length < keep {
            return Err(bad_mark(format!(
                "the store has {length} events but the checkpoint covers {keep}: it was changed outside recast"
            )));
        }
        if length == keep {
            return Ok(());
        }
        self.flush_index()?;
        // The first revision each stream loses: its first event after the cut.
        let mut cuts: FxHashMap<String, u64> = FxHashMap::default();
        {
            let mut events = self.read_all(keep.checked_sub(1));
            while let Some(event) = events.try_next().await? {
                cuts.entry(event.stream).or_insert(event.revision);
            }
        }
        let mut writes = sled::Batch::default();
        for (stream, &revision) in &cuts {
            self.cut_stream(stream, revision, &mut writes)?;
        }
        let log_bytes = self.cut_segments(keep, &mut writes)?;
        writes.insert(NEXT_POSITION, &keep.to_be_bytes());
        writes.insert(INDEXED_TO, &keep.to_be_bytes());
        writes.insert(LOG_BYTES, &log_bytes.to_be_bytes());
        self.tree
            .apply_batch(writes)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        // After the commit: a crash before this cut is finished by the next open.
        self.log.truncate(log_bytes)?;
        self.tails.clear();
        self.tail_bytes = 0;
        Ok(())
    }

    /// Removes `revision` and what follows it from a stream's index.
    fn cut_stream(
        &self,
        stream: &str,
        revision: u64,
        writes: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        if let Some(mut chunk) = self.chunk_before(stream, revision.saturating_add(1))? {
            chunk.truncate(revision);
            match chunk.len() {
                0 => writes.remove(chunk_key(stream, chunk.first)),
                _ => writes.insert(chunk_key(stream, chunk.first), chunk.entries),
            }
        }
        let later = chunk_key(stream, revision.saturating_add(1))..=chunk_key(stream, u64::MAX);
        for item in self.tree.range(later) {
            let (key, _) = item.map_err(|e| self.sled_error(e))?;
            writes.remove(key);
        }
        Ok(())
    }

    /// Removes positions `keep..` from the log's segments; returns the log's new length.
    fn cut_segments(&self, keep: u64, writes: &mut sled::Batch) -> Result<u64, StoreError> {
        let log_bytes = match self.segment_entry(keep)? {
            Some((first, offset, len)) if first < keep => {
                let lines = self.log.read(offset, len)?;
                let kept = segment_prefix(&lines, (keep - first) as usize).len();
                writes.insert(&segment_key(first), &encode_segment(offset, kept));
                offset + kept as u64
            }
            Some((_, offset, _)) => offset,
            None => 0,
        };
        for item in self.tree.range(segment_key(keep)..=segment_key(u64::MAX)) {
            let (key, _) = item.map_err(|e| self.sled_error(e))?;
            writes.remove(key);
        }
        Ok(log_bytes)
    }
}
