//! Revision and position bookkeeping for sinks that assign them themselves: the JSONL sink and
//! the dry-run sink. One counter per stream, plus the next log position.
//!
//! The map is an `FxHashMap`: stream names are short, and SipHash on them was a tenth of a
//! pass-through migration's time (perf, 1M events); nothing here hashes untrusted keys for
//! long-lived servers, so its resistance to collision attacks buys nothing. Keys are
//! `CompactString`s, which keep names of up to 24 bytes inside the map entry: a lookup in a
//! map of many streams then misses the cache once, not twice.

use super::{AppendOutcome, AppendRequest, StoreError, StreamState};
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

    /// Checks a request's expected revision and gives its events their revisions and positions.
    pub fn assign(
        &mut self,
        request: AppendRequest,
    ) -> Result<(Vec<Event>, AppendOutcome), StoreError> {
        validate_stream_name(&request.stream)?;
        let state = self.state(&request.stream);
        if !state.satisfies(request.expected) {
            return Err(StoreError::WrongExpectedRevision {
                stream: request.stream,
                expected: request.expected,
                actual: state,
            });
        }
        let first = state.next_revision();
        let written = request.events.len();
        let events: Vec<Event> = request
            .events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                e.into_event(
                    &request.stream,
                    first + i as u64,
                    self.next_position + i as u64,
                )
            })
            .collect();
        self.next_position += written as u64;
        let last_revision = (first + written as u64).saturating_sub(1);
        if written > 0 {
            match self.heads.get_mut(request.stream.as_str()) {
                Some(head) => *head = last_revision,
                None => {
                    self.heads.insert(request.stream.into(), last_revision);
                }
            }
        }
        Ok((
            events,
            AppendOutcome {
                last_revision,
                written,
                duplicates: 0,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;
    use crate::store::{ExpectedRevision, NewEvent};

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
