//! The end of one stream's index, as the store keeps it in memory between appends.
//!
//! A [`Tail`] holds the stream's last chunk, the chunk before it, and the full chunks that
//! filled since the index was last written. The last chunk changes with every append to the
//! stream; writing it each time was one random sled write per event, most of an append's
//! cost. So a tail with changes stays in memory, is read through by every index lookup, and
//! is written by [`SledStore::flush_index`](super::SledStore) with all the others.

use super::layout::Chunk;
use crate::store::StreamState;
use uuid::Uuid;

/// The end of one stream's index. `last` and `previous` together hold at least the stream's
/// last [`CHUNK_EVENTS`](super::layout::CHUNK_EVENTS) events: the window in which a re-sent
/// event is recognized by its id.
#[derive(Debug, Default)]
pub(super) struct Tail {
    pub previous: Option<Chunk>,
    pub last: Chunk,
    /// Full chunks the stored index does not have yet, oldest first.
    full: Vec<Chunk>,
    /// `last` has entries the stored index does not have.
    unwritten: bool,
}

impl Tail {
    /// A tail as the stored index has it.
    pub fn stored(previous: Option<Chunk>, last: Chunk) -> Tail {
        Tail {
            previous,
            last,
            full: Vec::new(),
            unwritten: false,
        }
    }

    /// Bytes of index entries held.
    pub fn bytes(&self) -> usize {
        let full: usize = self.full.iter().map(|c| c.entries.len()).sum();
        self.last.entries.len() + self.previous.as_ref().map_or(0, |c| c.entries.len()) + full
    }

    pub fn state(&self) -> StreamState {
        self.last
            .last_revision()
            .map_or(StreamState::NoStream, StreamState::At)
    }

    pub fn next_revision(&self) -> u64 {
        self.state().next_revision()
    }

    /// Adds an event at the stream's next revision; a full last chunk is closed first.
    pub fn push(&mut self, position: u64, id: &Uuid) {
        let revision = self.next_revision();
        if self.last.is_full() {
            let full = std::mem::take(&mut self.last);
            if self.unwritten {
                self.full.push(full.clone());
            }
            self.previous = Some(full);
            self.last.first = revision;
        }
        self.last.push(position, id);
        self.unwritten = true;
    }

    /// The revision and position of the event with this id, within the window.
    pub fn find(&self, id: &Uuid) -> Option<(u64, u64)> {
        self.last
            .find(id)
            .or_else(|| self.previous.as_ref().and_then(|chunk| chunk.find(id)))
    }

    /// The chunks held, newest first.
    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        let last = Some(&self.last).filter(|c| c.len() > 0);
        last.into_iter()
            .chain(self.full.iter().rev())
            .chain(self.previous.iter())
    }

    /// The newest chunk held that starts before revision `before`. Chunks older than every
    /// chunk held are as the stored index has them.
    pub fn chunk_before(&self, before: u64) -> Option<&Chunk> {
        self.chunks().find(|chunk| chunk.first < before)
    }

    /// The chunk held that starts at revision `first`.
    pub fn chunk_at(&self, first: u64) -> Option<&Chunk> {
        self.chunks().find(|chunk| chunk.first == first)
    }

    /// The chunks the stored index lacks or has older versions of.
    pub fn unwritten(&self) -> impl Iterator<Item = &Chunk> {
        let last = Some(&self.last).filter(|_| self.unwritten);
        self.full.iter().chain(last)
    }

    /// Records that the stored index now has every chunk held.
    pub fn written(&mut self) {
        self.full.clear();
        self.unwritten = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_rolls_full_chunks_and_finds_chunks_by_revision() {
        const C: u64 = super::super::layout::CHUNK_EVENTS as u64;
        let mut tail = Tail::default();
        assert_eq!(tail.state(), StreamState::NoStream);
        assert!(tail.chunk_before(u64::MAX).is_none());
        for n in 0..2 * C + 10 {
            tail.push(1000 + n, &Uuid::from_u128(n as u128));
        }
        assert_eq!(tail.state(), StreamState::At(2 * C + 9));
        let firsts: Vec<u64> = tail.unwritten().map(|c| c.first).collect();
        assert_eq!(firsts, vec![0, C, 2 * C]);
        assert_eq!(tail.chunk_before(2 * C + 1).map(|c| c.first), Some(2 * C));
        assert_eq!(tail.chunk_before(2 * C).map(|c| c.first), Some(C));
        assert_eq!(tail.chunk_at(0).map(|c| c.len() as u64), Some(C));
        // The window: the last chunk and the one before it.
        let id = |n: u64| Uuid::from_u128(n as u128);
        assert_eq!(tail.find(&id(C + 5)), Some((C + 5, 1000 + C + 5)));
        assert_eq!(tail.find(&id(C - 1)), None);
        tail.written();
        assert_eq!(tail.unwritten().count(), 0);
        assert_eq!(tail.chunk_at(0), None);
        tail.push(1000 + 2 * C + 10, &id(2 * C + 10));
        let firsts: Vec<u64> = tail.unwritten().map(|c| c.first).collect();
        assert_eq!(firsts, vec![2 * C]);
    }
}
