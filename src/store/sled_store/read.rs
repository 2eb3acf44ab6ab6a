//! Reading the sled event store: the log by position from its segments, a stream through its
//! index chunks, and the list of streams.

use super::layout::{decode_segment, read_u64, segment_key, segment_lines, STREAM};
use super::SledStore;
use crate::event::Event;
use crate::store::{EventSource, EventStream, StoreError};
use futures::future::BoxFuture;
use futures::FutureExt;

impl SledStore {
    /// The segment holding `position`: its first position, and where its lines are.
    pub(super) fn segment_entry(
        &self,
        position: u64,
    ) -> Result<Option<(u64, u64, usize)>, StoreError> {
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
    pub(super) fn segment_of(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.segment_entry(position)? {
            Some((first, offset, len)) => Ok(Some((first, self.log.read(offset, len)?))),
            None => Ok(None),
        }
    }

    /// The segments from the one holding `position` to the end of the log, as in
    /// [`segment_of`](Self::segment_of).
    pub(super) fn segments_from(
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
    pub(super) fn event_at(
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
            let unwritten = self.tails.iter().filter(|(_, t)| t.has_pending());
            streams.extend(unwritten.map(|(stream, _)| stream.clone()));
            // Index order puts "a-1" before "a" (the separator sorts last); list by name.
            streams.sort_unstable();
            streams.dedup();
            Ok(streams)
        }
        .boxed()
    }
}
