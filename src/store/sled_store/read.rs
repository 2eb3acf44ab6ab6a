//! Reading the sled event store: the log by position from its segments, a stream through its
//! index chunks, and the list of streams.

use super::layout::{decode_segment, read_u64, segment_key, segment_lines, STREAM};
use super::log_file::LogFile;
use super::{sled_error_in, SledStore};
use crate::event::{json_from_bytes, Event};
use crate::store::read_ahead::read_ahead;
use crate::store::{EventSource, EventStream, StoreError};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A stored event's line, parsed.
pub(super) fn decode_event(path: &Path, position: u64, bytes: &[u8]) -> Result<Event, StoreError> {
    json_from_bytes(bytes).map_err(|source| StoreError::Corrupt {
        path: path.to_path_buf(),
        position,
        source,
    })
}

/// The segment holding `position`: its first position, and where its lines are.
fn segment_entry_in(
    tree: &sled::Tree,
    path: &Path,
    position: u64,
) -> Result<Option<(u64, u64, usize)>, StoreError> {
    let last = tree
        .range(segment_key(0)..=segment_key(position))
        .next_back();
    let found = last.transpose().map_err(sled_error_in(path))?;
    Ok(found.map(|(key, value)| {
        let (offset, len) = decode_segment(&value);
        (read_u64(&key), offset, len)
    }))
}

/// The segments from the one holding `position` to the end of the log, each as its first
/// position and its lines. The iterator owns what it reads with, so it can run on a thread of
/// its own.
fn segments_in(
    tree: &sled::Tree,
    log: Arc<LogFile>,
    path: PathBuf,
    position: u64,
) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + 'static, StoreError> {
    let first = segment_entry_in(tree, &path, position)?.map_or(0, |(first, ..)| first);
    let keys = tree.range(segment_key(first)..=segment_key(u64::MAX));
    Ok(keys.map(move |item| {
        let (key, value) = item.map_err(sled_error_in(&path))?;
        let (offset, len) = decode_segment(&value);
        Ok((read_u64(&key), log.read(offset, len)?))
    }))
}

/// The events of the log from position `start` on.
fn events_in(
    tree: &sled::Tree,
    log: Arc<LogFile>,
    path: PathBuf,
    start: u64,
) -> Result<impl Iterator<Item = Result<Event, StoreError>>, StoreError> {
    let segments = segments_in(tree, log, path.clone(), start)?;
    Ok(segments.flat_map(move |segment| {
        // A segment is at most 64 KiB of lines: parsed whole, then handed out one by one.
        let events: Vec<Result<Event, StoreError>> = match segment {
            Err(err) => vec![Err(err)],
            Ok((first, bytes)) => segment_lines(&bytes)
                .zip(first..)
                .filter(|(_, position)| *position >= start)
                .map(|(line, position)| decode_event(&path, position, line))
                .collect(),
        };
        events
    }))
}

impl SledStore {
    /// The segment holding `position`: its first position, and where its lines are.
    pub(super) fn segment_entry(
        &self,
        position: u64,
    ) -> Result<Option<(u64, u64, usize)>, StoreError> {
        segment_entry_in(&self.tree, &self.path, position)
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
        segments_in(&self.tree, self.log.clone(), self.path.clone(), position)
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

    /// Read ahead on a thread of its own ([`read_ahead`]), which holds a handle on the tree and
    /// the log file until the stream is dropped.
    fn read_all(&self, after: Option<u64>) -> EventStream<'_> {
        let start = match after {
            Some(u64::MAX) => return Box::pin(futures::stream::empty()),
            Some(p) => p + 1,
            None => 0,
        };
        let (tree, log, path) = (self.tree.clone(), self.log.clone(), self.path.clone());
        read_ahead(self.path.clone(), move || {
            events_in(&tree, log, path, start)
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
