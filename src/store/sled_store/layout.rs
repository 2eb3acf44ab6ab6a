//! The sled event store's keys and values: segments of the log and chunks of stream indexes.
//!
//! The events themselves are in the log file (`log_file`), one JSON line each, in log
//! order. Everything else lives in one sled tree, under one-byte key prefixes:
//! - `E` + first log position (u64 big-endian) -> a **segment**: where the lines of consecutive
//!   positions are in the log file (byte offset and length, u64 BE each), up to
//!   [`SEGMENT_BYTES`] (a longer event gets a segment of its own). A read of one event reads
//!   its segment.
//! - `S` + stream name + `0xFF` + first revision (u64 BE) -> a **chunk** of the stream's index:
//!   for consecutive revisions, each event's log position (u64 BE) and id (16 bytes), up to
//!   [`CHUNK_EVENTS`] of them, starting at a multiple of it (`chunk_start`). A chunk that is
//!   still filling is stored as the value itself (a multiple of 24 bytes); a full one is written
//!   once to the index file, and the value says where (offset and length, 16 bytes, which no
//!   multiple of 24 is). `0xFF` never occurs in UTF-8, so one stream's chunks are one
//!   contiguous key range, and its head is the end of its last chunk.
//! - `M` -> the next log position; `L` -> the committed length of the log file; `J` -> the
//!   committed length of the index file; `X` -> the
//!   first log position the stored index does not cover yet (see `index`); `F` -> the
//!   layout version ([`LAYOUT`]).
//!
//! Why this shape: sled's cost is per key written and per page touched, and its memory grows
//! with what it stores. A key per event (and a second and third for the stream and id indexes)
//! spread every batch over thousands of pages; here a batch of 5,000 events is a file append,
//! about 30 sequential segment keys, and (through the tails in memory) at most one chunk per
//! stream. Full chunks are kept out of sled because its memory grew with the index it stored:
//! migrating 10M events into the store peaked at 148 MB with them inside, 117 MB without (and
//! a sled cache of 8 MiB), against 97 MB for 1M. A store written before that change, with every
//! chunk inline, reads the same. Measured with sled alone on 236,338 events over 15,000 streams, batches of 5,000
//! with a flush each, sled alone: a key per event 98,476 events/s; the first layout (envelope,
//! stream and id keys per event) 19,781; 64 KiB segments alone 707,414.

use std::ops::Range;
use uuid::Uuid;

pub(super) const SEGMENT: u8 = b'E';
pub(super) const STREAM: u8 = b'S';
pub(super) const NEXT_POSITION: &[u8] = b"M";
pub(super) const LAYOUT_KEY: &[u8] = b"F";
pub(super) const INDEXED_TO: &[u8] = b"X";
pub(super) const LOG_BYTES: &[u8] = b"L";
pub(super) const INDEX_BYTES: &[u8] = b"J";
/// The layout version this code reads and writes; a store without it (or with another) is
/// refused rather than misread.
pub const LAYOUT: &[u8] = b"3";
const STREAM_SEPARATOR: u8 = 0xFF;

/// The size at which a batch's lines start a new segment: a read of one event reads its
/// whole segment, so they stay small.
pub const SEGMENT_BYTES: usize = 64 * 1024;
/// Events per index chunk. A stream's last chunk is rewritten whenever the index is written,
/// so smaller chunks write less; more chunks are more sled keys. Migrating 3M events over
/// 15,000 streams (200 per stream) took 33 s and 221 MB with 256 per chunk, 20 s and 143 MB
/// with 64, 21 s and 131 MB with 16.
pub const CHUNK_EVENTS: usize = 64;
/// Bytes of one index entry: the event's log position (u64 BE) and id.
pub(super) const ENTRY_BYTES: usize = 24;

/// The first revision of the chunk that holds `revision`. Chunks start at multiples of
/// [`CHUNK_EVENTS`]: a stream's chunks fill in revision order, and a cut only shortens the
/// chunk it falls in.
pub(super) fn chunk_start(revision: u64) -> u64 {
    revision - revision % CHUNK_EVENTS as u64
}

pub(super) fn segment_key(first_position: u64) -> [u8; 9] {
    let mut key = [SEGMENT; 9];
    key[1..].copy_from_slice(&first_position.to_be_bytes());
    key
}

/// `S` + stream + separator: the prefix of every chunk key of the stream.
pub(super) fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAM);
    key.extend_from_slice(stream.as_bytes());
    key.push(STREAM_SEPARATOR);
    key
}

pub(super) fn chunk_key(stream: &str, first_revision: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&first_revision.to_be_bytes());
    key
}

/// The last 8 bytes (or fewer) of `bytes` as a big-endian number.
pub(super) fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    let start = bytes.len().saturating_sub(8);
    buffer[8 - (bytes.len() - start)..].copy_from_slice(&bytes[start..]);
    u64::from_be_bytes(buffer)
}

/// The lines of a segment, without their `\n`.
pub(super) fn segment_lines(segment: &[u8]) -> impl Iterator<Item = &[u8]> {
    segment
        .strip_suffix(b"\n")
        .unwrap_or(segment)
        .split(|&b| b == b'\n')
}

/// The first `count` lines of a segment, with their `\n`.
pub(super) fn segment_prefix(segment: &[u8], count: usize) -> &[u8] {
    let mut end = 0;
    for _ in 0..count {
        match segment[end..].iter().position(|&b| b == b'\n') {
            Some(at) => end += at + 1,
            None => return segment,
        }
    }
    &segment[..end]
}

/// Cuts a batch's lines (`starts` holds each line's offset) into segments of at most
/// [`SEGMENT_BYTES`] (or one longer line): each segment's first log position and byte range.
pub(super) fn cut_segments(
    first_position: u64,
    lines: &[u8],
    starts: &[usize],
) -> Vec<(u64, Range<usize>)> {
    let mut segments = Vec::new();
    let mut segment_start = 0;
    for index in 1..starts.len() {
        let end = starts.get(index + 1).copied().unwrap_or(lines.len());
        if end - starts[segment_start] > SEGMENT_BYTES {
            let range = starts[segment_start]..starts[index];
            segments.push((first_position + segment_start as u64, range));
            segment_start = index;
        }
    }
    if let Some(&start) = starts.get(segment_start) {
        segments.push((first_position + segment_start as u64, start..lines.len()));
    }
    segments
}

/// A segment's value: where its lines are in the log file.
pub(super) fn encode_segment(offset: u64, len: usize) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&offset.to_be_bytes());
    value[8..].copy_from_slice(&(len as u64).to_be_bytes());
    value
}

/// The byte offset and length of a segment's lines in the log file.
pub(super) fn decode_segment(value: &[u8]) -> (u64, usize) {
    let offset = read_u64(value.get(..8).unwrap_or_default());
    (
        offset,
        read_u64(value.get(8..).unwrap_or_default()) as usize,
    )
}

/// One chunk of a stream's index: revisions `first..` with each event's position and id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Chunk {
    pub first: u64,
    pub entries: Vec<u8>,
}

impl Chunk {
    /// A chunk stored inline: its key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Chunk {
        Chunk {
            first: read_u64(key),
            entries: value.to_vec(),
        }
    }

    /// True for a chunk value that says where the chunk is in the index file.
    pub fn is_pointer(value: &[u8]) -> bool {
        value.len() == 16
    }

    pub fn len(&self) -> usize {
        self.entries.len() / ENTRY_BYTES
    }

    pub fn is_full(&self) -> bool {
        self.len() >= CHUNK_EVENTS
    }

    /// The revision of the chunk's last event.
    pub fn last_revision(&self) -> Option<u64> {
        (self.first + self.len() as u64)
            .checked_sub(1)
            .filter(|_| self.len() > 0)
    }

    fn entry_at(&self, index: usize) -> (u64, Uuid) {
        let entry = &self.entries[index * ENTRY_BYTES..(index + 1) * ENTRY_BYTES];
        let id = Uuid::from_slice(&entry[8..]).unwrap_or_default();
        (read_u64(&entry[..8]), id)
    }

    /// The revisions and positions of the chunk, in order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.len()).map(|index| (self.first + index as u64, self.entry_at(index).0))
    }

    /// The revisions and ids of the chunk, in order.
    pub fn ids(&self) -> impl Iterator<Item = (u64, Uuid)> + '_ {
        (0..self.len()).map(|index| (self.first + index as u64, self.entry_at(index).1))
    }

    /// The entry of `revision`, when this chunk holds it: its position and id.
    pub fn entry(&self, revision: u64) -> Option<(u64, Uuid)> {
        let index = revision.checked_sub(self.first)? as usize;
        (index < self.len()).then(|| self.entry_at(index))
    }

    pub fn push(&mut self, position: u64, id: &Uuid) {
        self.entries.extend_from_slice(&position.to_be_bytes());
        self.entries.extend_from_slice(id.as_bytes());
    }

    /// Keeps the revisions before `revision`.
    pub fn truncate(&mut self, revision: u64) {
        let keep = revision.saturating_sub(self.first) as usize;
        self.entries.truncate(keep.min(self.len()) * ENTRY_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_find_entries_by_revision_and_id_and_truncate() {
        let mut chunk = Chunk {
            first: 10,
            entries: Vec::new(),
        };
        assert_eq!(chunk.last_revision(), None);
        for n in 0..3u64 {
            chunk.push(100 + n, &Uuid::from_u128(n as u128 + 1));
        }
        assert_eq!(chunk.last_revision(), Some(12));
        assert_eq!(
            chunk.entries().collect::<Vec<_>>(),
            vec![(10, 100), (11, 101), (12, 102)]
        );
        assert_eq!(chunk.entry(12), Some((102, Uuid::from_u128(3))));
        assert_eq!(chunk.entry(13), None);
        assert_eq!(chunk.entry(9), None);
        let key = chunk_key("a-1", chunk.first);
        assert_eq!(Chunk::decode(&key, &chunk.entries), chunk);
        chunk.truncate(11);
        assert_eq!(chunk.entries().collect::<Vec<_>>(), vec![(10, 100)]);
    }

    #[test]
    fn batches_are_cut_into_bounded_segments_at_line_ends() {
        let line = |n: usize| format!("{}\n", "x".repeat(n));
        let sizes = [40_000, 20_000, 10_000, 70_000, 5];
        let mut lines = String::new();
        let mut starts = Vec::new();
        for size in sizes {
            starts.push(lines.len());
            lines.push_str(&line(size));
        }
        let segments = cut_segments(7, lines.as_bytes(), &starts);
        let firsts: Vec<u64> = segments.iter().map(|(first, _)| *first).collect();
        assert_eq!(firsts, vec![7, 9, 10, 11]);
        let bytes = |range: &Range<usize>| &lines.as_bytes()[range.clone()];
        let counts: Vec<usize> = segments
            .iter()
            .map(|(_, r)| segment_lines(bytes(r)).count())
            .collect();
        assert_eq!(counts, vec![2, 1, 1, 1]);
        assert!(segments
            .iter()
            .all(|(_, r)| r.len() <= SEGMENT_BYTES || segment_lines(bytes(r)).count() == 1));
        assert_eq!(
            segments.iter().map(|(_, r)| r.len()).sum::<usize>(),
            lines.len()
        );
        assert_eq!(segment_prefix(bytes(&segments[0].1), 1).len(), 40_001);
        assert_eq!(segment_prefix(bytes(&segments[0].1), 0).len(), 0);
        assert_eq!(decode_segment(&encode_segment(5, 70_001)), (5, 70_001));
        assert!(cut_segments(0, b"", &[]).is_empty());
    }
}
