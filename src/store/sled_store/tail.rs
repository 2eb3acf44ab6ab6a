//! The end of one stream's index, as the store keeps it in memory between appends.
//!
//! A [`Tail`] holds what an append needs to know of its stream without reading sled: the next
//! revision, a 2-byte fingerprint of each of the last [`WINDOW`] event ids (the idempotency
//! window), and the index entries appended since the index was last written (`pending`).
//! Every index lookup reads through the pending entries; [`SledStore::flush_index`]
//! (super::SledStore) writes them into the stored chunks.
//!
//! Why fingerprints and not chunks: a tail used to hold the stream's last two chunks, up to 3
//! KiB a stream. 50,000 busy streams then overflowed the cache, which was cleared and read back
//! from sled again and again: migrating 5M events over 50,000 streams took 101 s, against 43 s
//! with a cache big enough to hold them all. A tail is now about 230 bytes, so 32 MiB holds
//! the windows of some 140,000 streams. A fingerprint that matches only says where to look:
//! the id itself is compared against the index entry ([`Tail::candidates`]). A new id matches
//! one of 64 two-byte fingerprints about once in a thousand events, which costs one chunk read;
//! four-byte fingerprints made a 10M-event migration peak 6 MB higher, for nothing measurable.

use super::layout::{Chunk, CHUNK_EVENTS, ENTRY_BYTES};
use crate::store::StreamState;
use uuid::Uuid;

/// How many of a stream's last events are checked for a re-sent id.
pub const WINDOW: usize = CHUNK_EVENTS;

/// Bytes a tail costs beyond its window and pending entries (its map slot, the struct, the
/// vectors' headers), as counted against the cache.
const OVERHEAD_BYTES: usize = 96;

/// The end of one stream's index.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// The revision the stream's next event gets.
    next: u64,
    /// Fingerprints of the ids of revisions `next - window.len()..next`; revision `r` is in
    /// slot `r % WINDOW`.
    window: Vec<u16>,
    /// Index entries of revisions `pending.first..next`, which the
    /// stored index does not have yet.
    pending: Chunk,
}

pub(super) fn fingerprint(id: &Uuid) -> u16 {
    let (high, low) = id.as_u64_pair();
    let mixed = (high ^ low.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 48) as u16
}

impl Tail {
    /// The tail of a stream whose stored index ends with `last`, after `previous` (the chunk
    /// before it, needed when `last` alone holds fewer than [`WINDOW`] events).
    pub fn stored(previous: Option<&Chunk>, last: &Chunk) -> Tail {
        let mut tail = Tail::default();
        let chunks = previous.into_iter().chain(Some(last));
        for (revision, id) in chunks.flat_map(Chunk::ids) {
            tail.next = revision;
            tail.remember(&id);
        }
        tail.pending.first = tail.next;
        tail
    }

    /// Bytes counted against the cache: what the vectors hold allocated, not what they use,
    /// so that the cache's bound is the memory it takes. (Counting their lengths let the
    /// pending entries' spare capacity, up to as much again, grow outside the bound.)
    pub fn bytes(&self) -> usize {
        OVERHEAD_BYTES + self.window.capacity() * 2 + self.pending.entries.capacity()
    }

    pub fn state(&self) -> StreamState {
        self.next
            .checked_sub(1)
            .map_or(StreamState::NoStream, StreamState::At)
    }

    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// The first revision the stored index does not have.
    pub fn pending_from(&self) -> u64 {
        self.pending.first
    }

    /// Adds an event at the stream's next revision.
    pub fn push(&mut self, position: u64, id: &Uuid) {
        self.pending.push(position, id);
        self.remember(id);
    }

    fn remember(&mut self, id: &Uuid) {
        let slot = (self.next % WINDOW as u64) as usize;
        match self.window.get_mut(slot) {
            Some(kept) => *kept = fingerprint(id),
            None => self.window.push(fingerprint(id)),
        }
        self.next += 1;
    }

    /// The revisions in the window whose id has the fingerprint of `id`, newest first: where a
    /// re-sent `id` may be. The caller compares the ids.
    pub fn candidates(&self, id: &Uuid) -> impl Iterator<Item = u64> + '_ {
        let wanted = fingerprint(id);
        let oldest = self.next - self.window.len() as u64;
        (oldest..self.next)
            .rev()
            .filter(move |r| self.window[(r % WINDOW as u64) as usize] == wanted)
    }

    /// The pending entry of `revision`: its position and id.
    pub fn pending_entry(&self, revision: u64) -> Option<(u64, Uuid)> {
        self.pending.entry(revision)
    }

    /// The chunk starting at revision `first`: `stored` (as the stored index has it) with the
    /// pending entries that belong to it.
    pub fn overlay(&self, first: u64, stored: Option<Chunk>) -> Option<Chunk> {
        let from = self.pending_from();
        let end = first + CHUNK_EVENTS as u64;
        let mut chunk = stored.unwrap_or(Chunk {
            first,
            entries: Vec::new(),
        });
        // Pending entries continue the stored ones; a stored chunk that stops short of them
        // (which a store this code wrote never has) is given as stored.
        let start = chunk.first + chunk.len() as u64;
        let upto = end.min(self.next);
        if start >= from && start < upto {
            let range = (start - from) as usize * ENTRY_BYTES..(upto - from) as usize * ENTRY_BYTES;
            chunk
                .entries
                .extend_from_slice(&self.pending.entries[range]);
        }
        (chunk.len() > 0).then_some(chunk)
    }

    /// The pending entries, taken out: the first revision they start at, and the entries.
    pub fn take_pending(&mut self) -> (u64, Vec<u8>) {
        let written = Chunk {
            first: self.next,
            entries: Vec::new(),
        };
        let taken = std::mem::replace(&mut self.pending, written);
        (taken.first, taken.entries)
    }

    pub fn has_pending(&self) -> bool {
        self.pending.len() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = CHUNK_EVENTS as u64;

    #[test]
    fn a_tail_keeps_the_window_and_overlays_pending_entries_on_stored_chunks() {
        let id = |n: u64| Uuid::from_u128(n as u128 * 7919);
        let mut stored = Chunk::default();
        for n in 0..10 {
            stored.push(1000 + n, &id(n));
        }
        let mut tail = Tail::stored(None, &stored);
        assert_eq!(tail.state(), StreamState::At(9));
        assert_eq!(tail.pending_from(), 10);
        for n in 10..2 * C + 5 {
            tail.push(1000 + n, &id(n));
        }
        assert_eq!(tail.state(), StreamState::At(2 * C + 4));
        assert_eq!(tail.pending_from(), 10);
        // The window is the last WINDOW events: the newest is found, one older than that not.
        assert_eq!(tail.candidates(&id(2 * C + 4)).next(), Some(2 * C + 4));
        assert_eq!(tail.candidates(&id(C + 5)).next(), Some(C + 5));
        assert_eq!(tail.candidates(&id(C + 4)).next(), None);
        assert_eq!(tail.pending_entry(C + 5), Some((1000 + C + 5, id(C + 5))));
        assert_eq!(tail.pending_entry(9), None);
        // Chunk 0: the stored 10 entries and pending 10..C; chunk 2: pending 2C..2C+5.
        let first = tail.overlay(0, Some(stored.clone())).unwrap();
        assert_eq!(first.len() as u64, C);
        assert_eq!(first.entries().nth(10), Some((10, 1010)));
        let last = tail.overlay(2 * C, None).unwrap();
        assert_eq!(
            last.entries().collect::<Vec<_>>()[4],
            (2 * C + 4, 1000 + 2 * C + 4)
        );
        assert_eq!(last.len(), 5);
        assert_eq!(tail.overlay(3 * C, None), None);
        let (from, pending) = tail.take_pending();
        assert_eq!(
            (from, pending.len()),
            (10, (2 * C as usize - 5) * ENTRY_BYTES)
        );
        assert!(!tail.has_pending());
        assert_eq!(tail.overlay(0, Some(stored.clone())), Some(stored));
    }

    #[test]
    fn a_stored_tail_takes_its_window_from_the_last_two_chunks() {
        let id = |n: u64| Uuid::from_u128(n as u128 + 1);
        let mut previous = Chunk::default();
        for n in 0..C {
            previous.push(n, &id(n));
        }
        let mut last = Chunk {
            first: C,
            entries: Vec::new(),
        };
        last.push(C, &id(C));
        let tail = Tail::stored(Some(&previous), &last);
        assert_eq!(tail.next_revision(), C + 1);
        assert_eq!(tail.candidates(&id(1)).next(), Some(1));
        assert_eq!(tail.candidates(&id(0)).next(), None);
        assert_eq!(tail.bytes(), OVERHEAD_BYTES + WINDOW * 2);
    }
}
