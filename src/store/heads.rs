//! Revision and position bookkeeping for sinks that assign them themselves: the JSONL sink and
//! the dry-run sink. One counter per stream, plus the next log position.
//!
//! The map is an `FxHashMap`: stream names are short, and SipHash on them was a tenth of a
//! pass-through migration's time (perf, 1M events); nothing here hashes untrusted keys for
//! long-lived servers, so its resistance to collision attacks buys nothing. Keys are
//! `CompactString`s, which keep names of up to 24 bytes inside the map entry: a lookup in a
//! map of many streams then misses the cache once, not twice.

use super::{AppendOutcome, AppendRequest, ExpectedRevision, StoreError, StreamState};
use crate::event::{validate_stream_name, Event};
use compact_str::CompactString;
use rustc_hash::FxHashMap;

/// The last revision of each stream and the next log position.
#[derive(Debug, Default)]
pub struct StreamHeads {
    heads: FxHashMap<CompactString, u64>,
    next_position: u64,
}

impl StreamHeads {
    /// Where a stream is.
    pub fn state(&self, stream: &str) -> StreamState {
        self.heads
            .get(stream)
            .map_or(StreamState::NoStream, |&r| StreamState::At(r))
    }

    /// The position the next event gets (the number of events so far).
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// Records an event read back from storage (used when a sink rebuilds its heads).
    pub fn record(&mut self, stream: String, revision: u64) {
        self.heads.insert(stream.into(), revision);
        self.next_position += 1;
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.heads.clear();
        self.next_position = 0;
    }

    /// Looks up each of `streams` and throws the answer away, so that a batch's
    /// [`place`](Self::place)s find their entries in the cache.
    ///
    /// Why: with many streams the table is larger than the caches, and `place` waited on one
    /// cache miss per event (10% of a pass-through migration, perf, 50,000 streams). Between
    /// two `place`s lies a whole envelope's serialization, so their misses came one at a time;
    /// a loop of nothing but lookups has no dependence from one to the next, and the CPU
    /// overlaps their misses. Measured: the lookups and the `place`s together 8% of the run,
    /// and the run 4% less CPU (five interleaved pairs, 1M events).
    pub fn warm<'a>(&self, streams: impl Iterator<Item = &'a str>) {
        for stream in streams {
            std::hint::black_box(self.heads.get(stream));
        }
    }

    /// Checks an append of `count` events to `stream` against its expected revision and
    /// reserves their revisions and positions. One lookup in the map; a stream name is checked
    /// when the stream is new (a known one passed that check when it was first written).
    pub fn place(
        &mut self,
        stream: &str,
        expected: ExpectedRevision,
        count: usize,
    ) -> Result<Placement, StoreError> {
        let head = self.heads.get_mut(stream);
        if head.is_none() {
            validate_stream_name(stream)?;
        }
        let state = head
            .as_deref()
            .map_or(StreamState::NoStream, |&r| StreamState::At(r));
        if !state.satisfies(expected) {
            return Err(StoreError::WrongExpectedRevision {
                stream: stream.to_string(),
                expected,
                actual: state,
            });
        }
        let first_revision = state.next_revision();
        let first_position = self.next_position;
        let last_revision = (first_revision + count as u64).saturating_sub(1);
        if count > 0 {
            match head {
                Some(head) => *head = last_revision,
                None => {
                    self.heads.insert(stream.into(), last_revision);
                }
            }
        }
        self.next_position += count as u64;
        Ok(Placement {
            first_revision,
            first_position,
            outcome: AppendOutcome {
                last_revision,
                written: count,
                duplicates: 0,
            },
        })
    }

    /// [`place`](Self::place)s a request and builds its events' envelopes.
    pub fn assign(
        &mut self,
        request: AppendRequest,
    ) -> Result<(Vec<Event>, AppendOutcome), StoreError> {
        let placed = self.place(&request.stream, request.expected, request.events.len())?;
        let events = request
            .events
            .into_iter()
            .zip(0..)
            .map(|(e, i)| {
                e.into_event(
                    &request.stream,
                    placed.first_revision + i,
                    placed.first_position + i,
                )
            })
            .collect();
        Ok((events, placed.outcome))
    }
}

/// Where an accepted append goes: its first revision and first log position.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub first_revision: u64,
    pub first_position: u64,
    pub outcome: AppendOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::store::NewEvent;

    fn request(stream: &str, expected: ExpectedRevision, count: u128) -> AppendRequest {
        let event = |n| NewEvent {
            id: uuid::Uuid::from_u128(n),
            event_type: "T".into(),
            version: 1,
            data: Payload::empty_object(),
            metadata: Payload::empty_object(),
            recorded_at: None,
        };
        AppendRequest {
            stream: stream.into(),
            expected,
            events: (0..count).map(event).collect(),
        }
    }

    #[test]
    fn assigns_revisions_per_stream_and_positions_across_streams() {
        let mut heads = StreamHeads::default();
        let (a, outcome) = heads
            .assign(request("a-1", ExpectedRevision::NoStream, 2))
            .unwrap();
        assert_eq!(outcome.last_revision, 1);
        assert_eq!((a[1].revision, a[1].position), (1, Some(1)));
        let (b, _) = heads
            .assign(request("b-1", ExpectedRevision::Any, 1))
            .unwrap();
        assert_eq!((b[0].revision, b[0].position), (0, Some(2)));
        assert!(heads
            .assign(request("a-1", ExpectedRevision::Exact(0), 1))
            .is_err());
        assert!(heads
            .assign(request("../x", ExpectedRevision::Any, 1))
            .is_err());
        assert_eq!(heads.state("a-1"), StreamState::At(1));
        assert_eq!(heads.next_position(), 3);
    }
}
