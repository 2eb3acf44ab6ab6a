//! Appending to the sled event store: a batch is staged in memory (its lines, and the
//! [`Tail`] of each stream it touches), checked request by request, then its lines are
//! appended to the log file and committed in sled. Its index changes stay in the tails.

use super::layout::{chunk_key, chunk_start, cut_segments, encode_segment, read_u64};
use super::layout::{segment_key, CHUNK_EVENTS};
use super::layout::{LOG_BYTES, NEXT_POSITION};
use super::tail::Tail;
use super::SledStore;
use crate::event::{validate_stream_name, Event, Payload};
use crate::store::{
    AppendOutcome, AppendRequest, ExpectedRevision, NewEvent, StoreError, StreamState,
};
use rustc_hash::FxHashMap;
use uuid::Uuid;

/// A batch being staged: events get positions from `first_position` on.
#[derive(Default)]
struct Staged {
    first_position: u64,
    next_position: u64,
    /// The new events as JSON lines, each ending in `\n`; `starts` has each line's offset.
    lines: Vec<u8>,
    starts: Vec<usize>,
    /// The streams this batch touches.
    tails: FxHashMap<String, Tail>,
}

impl Staged {
    /// The line of a staged event, without its `\n`.
    fn line(&self, position: u64) -> &[u8] {
        let index = (position - self.first_position) as usize;
        let end = self.starts.get(index + 1).map_or(self.lines.len(), |&s| s);
        &self.lines[self.starts[index]..end - 1]
    }
}

impl SledStore {
    pub(super) fn append(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let first_position = self.len()?;
        let mut staged = Staged {
            first_position,
            next_position: first_position,
            ..Staged::default()
        };
        let outcomes = self.stage_all(batch, &mut staged).and_then(|outcomes| {
            self.write(staged)?;
            Ok(outcomes)
        });
        if outcomes.is_err() {
            // The tails this batch took from the cache are gone, with index entries not yet
            // written: rebuild them from the log.
            self.reindex()?;
        }
        outcomes
    }

    fn stage_all(
        &mut self,
        batch: Vec<AppendRequest>,
        staged: &mut Staged,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            validate_stream_name(&request.stream)?;
            let mut tail = match staged.tails.remove(&request.stream) {
                Some(tail) => tail,
                None => self.load_tail(&request.stream)?,
            };
            let outcome = self.stage(&request, &mut tail, staged);
            staged.tails.insert(request.stream, tail);
            outcomes.push(outcome?);
        }
        Ok(outcomes)
    }

    /// A stream's tail, taken out of the cache (a failed batch re-indexes what it held), or
    /// read from the stored index.
    pub(super) fn load_tail(&mut self, stream: &str) -> Result<Tail, StoreError> {
        if let Some(tail) = self.tails.remove(stream) {
            self.tail_bytes = self.tail_bytes.saturating_sub(tail.bytes() + stream.len());
            return Ok(tail);
        }
        self.read_tail(stream)
    }

    /// A stream's tail as the stored index has it (for a stream the cache does not hold).
    pub(super) fn read_tail(&self, stream: &str) -> Result<Tail, StoreError> {
        let Some(last) = self.last_chunk(stream)? else {
            return Ok(Tail::default());
        };
        let previous = match last.first.checked_sub(CHUNK_EVENTS as u64) {
            Some(first) if !last.is_full() => self.chunk_at(stream, first)?,
            _ => None,
        };
        Ok(Tail::stored(previous.as_ref(), &last))
    }

    /// Where an event with this id is among the last [`WINDOW`](super::tail::WINDOW) events of the stream: its
    /// revision and position.
    fn find_in_window(
        &self,
        stream: &str,
        tail: &Tail,
        id: &Uuid,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        for revision in tail.candidates(id) {
            let entry = match tail.pending_entry(revision) {
                Some(entry) => Some(entry),
                None => {
                    let key = chunk_key(stream, chunk_start(revision));
                    let stored = self.stored_chunk(&key)?;
                    stored.and_then(|chunk| chunk.entry(revision))
                }
            };
            if let Some((position, _)) = entry.filter(|(_, found)| found == id) {
                return Ok(Some((revision, position)));
            }
        }
        Ok(None)
    }

    fn stage(
        &self,
        request: &AppendRequest,
        tail: &mut Tail,
        staged: &mut Staged,
    ) -> Result<AppendOutcome, StoreError> {
        let stream = request.stream.as_str();
        let mut outcome = AppendOutcome {
            last_revision: 0,
            written: 0,
            duplicates: 0,
        };
        for (index, new_event) in request.events.iter().enumerate() {
            let stored = self.find_in_window(stream, tail, &new_event.id)?;
            if index == 0 {
                check_expected(stream, request.expected, stored, tail)?;
            }
            if let Some((revision, position)) = stored {
                self.check_duplicate(stream, (revision, position), new_event, staged)?;
                outcome.duplicates += 1;
                outcome.last_revision = revision;
                continue;
            }
            let revision = tail.next_revision();
            let position = staged.next_position;
            staged.starts.push(staged.lines.len());
            new_event
                .envelope(stream, revision, position)
                .write_json(&mut staged.lines);
            staged.lines.push(b'\n');
            tail.push(position, &new_event.id);
            staged.next_position += 1;
            outcome.written += 1;
            outcome.last_revision = revision;
        }
        Ok(outcome)
    }

    /// An event re-sent with an id its stream already holds must be the same event.
    fn check_duplicate(
        &self,
        stream: &str,
        (revision, position): (u64, u64),
        new_event: &NewEvent,
        staged: &Staged,
    ) -> Result<(), StoreError> {
        let stored: Event = if position >= staged.first_position {
            self.decode(position, staged.line(position))?
        } else {
            self.event_at(position, &mut None)?
        };
        let same = stored.event_type == new_event.event_type
            && stored.version == new_event.version
            && same_json(&stored.data, &new_event.data)
            && same_json(&stored.metadata, &new_event.metadata);
        if same {
            Ok(())
        } else {
            Err(StoreError::IdConflict {
                id: new_event.id,
                existing_stream: stream.to_string(),
                existing_revision: revision,
            })
        }
    }

    /// Appends the batch's lines to the log file, then commits its segments, the next position
    /// and the log's length in sled, flushed; its tails go back to the cache.
    fn write(&mut self, staged: Staged) -> Result<(), StoreError> {
        let offset = self.get(LOG_BYTES)?.map_or(0, |bytes| read_u64(&bytes));
        if !staged.lines.is_empty() {
            self.log.append(offset, &staged.lines)?;
        }
        let mut writes = sled::Batch::default();
        for (first, range) in cut_segments(staged.first_position, &staged.lines, &staged.starts) {
            let value = encode_segment(offset + range.start as u64, range.len());
            writes.insert(&segment_key(first), &value);
        }
        let length = offset + staged.lines.len() as u64;
        writes.insert(NEXT_POSITION, &staged.next_position.to_be_bytes());
        writes.insert(LOG_BYTES, &length.to_be_bytes());
        self.tree
            .apply_batch(writes)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.keep_tails(staged.tails)
    }

    /// Puts a written batch's tails back in the cache. When the cache holds more than
    /// [`TAIL_CACHE_BYTES`](super::TAIL_CACHE_BYTES), the pending index entries are written; when the windows alone
    /// still fill most of it, the cache starts over.
    fn keep_tails(&mut self, tails: FxHashMap<String, Tail>) -> Result<(), StoreError> {
        for (stream, tail) in tails {
            self.tail_bytes += stream.len() + tail.bytes();
            self.tails.insert(stream, tail);
        }
        if self.tail_bytes > self.tail_budget {
            self.flush_index()?;
            if self.tail_bytes > self.tail_budget / 4 * 3 {
                self.tails.clear();
                self.tail_bytes = 0;
            }
        }
        Ok(())
    }
}

/// The expected-revision check, against the stream as it was before the request's first event
/// (`stored`: where that event already is, when it is a re-send).
fn check_expected(
    stream: &str,
    expected: ExpectedRevision,
    stored: Option<(u64, u64)>,
    tail: &Tail,
) -> Result<(), StoreError> {
    let before = match stored {
        Some((revision, _)) => revision
            .checked_sub(1)
            .map_or(StreamState::NoStream, StreamState::At),
        None => tail.state(),
    };
    if before.satisfies(expected) {
        Ok(())
    } else {
        Err(StoreError::WrongExpectedRevision {
            stream: stream.to_string(),
            expected,
            actual: before,
        })
    }
}

fn same_json(a: &Payload, b: &Payload) -> bool {
    match (a.to_value(), b.to_value()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
