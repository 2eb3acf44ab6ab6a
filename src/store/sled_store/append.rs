//! Appending to the sled event store: a batch is staged in memory (its lines, and the index
//! chunk at the end of each stream it touches), checked request by request, then written as
//! one sled batch.

use super::layout::{chunk_key, cut_segments, encode_segment, read_u64, segment_key, Chunk};
use super::layout::{LOG_BYTES, NEXT_POSITION};
use super::{SledStore, TAIL_CACHE_BYTES};
use crate::event::{validate_stream_name, Event, Payload};
use crate::store::{
    AppendOutcome, AppendRequest, ExpectedRevision, NewEvent, StoreError, StreamState,
};
use rustc_hash::FxHashMap;

/// The end of one stream's index: its last chunk, and the chunk before it when the last is
/// not full. Together they hold at least the stream's last [`super::layout::CHUNK_EVENTS`] events:
/// the window in which a re-sent event is recognized by its id.
#[derive(Debug, Default)]
pub(super) struct Tail {
    pub previous: Option<Chunk>,
    pub last: Chunk,
    /// The last chunk has events this batch added.
    dirty: bool,
}

impl Tail {
    fn bytes(&self) -> usize {
        self.last.entries.len() + self.previous.as_ref().map_or(0, |c| c.entries.len())
    }

    pub fn state(&self) -> StreamState {
        self.last
            .last_revision()
            .map_or(StreamState::NoStream, StreamState::At)
    }

    pub fn next_revision(&self) -> u64 {
        self.state().next_revision()
    }

    /// Adds an event at the stream's next revision. A full last chunk is closed first, and
    /// goes to `full_chunks` (under its key) when this batch changed it.
    pub fn push(
        &mut self,
        stream: &str,
        position: u64,
        id: &uuid::Uuid,
        full_chunks: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let revision = self.next_revision();
        if self.last.is_full() {
            let full = std::mem::take(&mut self.last);
            if self.dirty {
                full_chunks.push((chunk_key(stream, full.first), full.entries.clone()));
            }
            self.previous = Some(full);
            self.last.first = revision;
        }
        self.last.push(position, id);
        self.dirty = true;
    }

    /// The revision and position of the event with this id, within the window.
    fn find(&self, id: &uuid::Uuid) -> Option<(u64, u64)> {
        self.last
            .find(id)
            .or_else(|| self.previous.as_ref().and_then(|chunk| chunk.find(id)))
    }
}

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
    /// Chunks this batch filled: written as they are.
    full_chunks: Vec<(Vec<u8>, Vec<u8>)>,
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
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            validate_stream_name(&request.stream)?;
            let mut tail = match staged.tails.remove(&request.stream) {
                Some(tail) => tail,
                None => self.load_tail(&request.stream)?,
            };
            let outcome = self.stage(&request, &mut tail, &mut staged);
            staged.tails.insert(request.stream, tail);
            outcomes.push(outcome?);
        }
        self.write(staged)?;
        Ok(outcomes)
    }

    /// A stream's tail, from the cache (taken out of it: a failed batch drops what it staged)
    /// or from the tree.
    pub(super) fn load_tail(&mut self, stream: &str) -> Result<Tail, StoreError> {
        if let Some(tail) = self.tails.remove(stream) {
            self.tail_bytes = self.tail_bytes.saturating_sub(tail.bytes() + stream.len());
            return Ok(tail);
        }
        self.read_tail(stream)
    }

    /// A stream's tail, from the index buffer or the tree.
    pub(super) fn read_tail(&self, stream: &str) -> Result<Tail, StoreError> {
        let Some(last) = self.last_chunk(stream)? else {
            return Ok(Tail::default());
        };
        let previous = match last.first {
            0 => None,
            _ if last.is_full() => None,
            first => self.chunk_before(stream, first)?,
        };
        Ok(Tail {
            previous,
            last,
            dirty: false,
        })
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
            let stored = tail.find(&new_event.id);
            if index == 0 {
                check_expected(stream, request.expected, stored, tail)?;
            }
            if let Some((revision, position)) = stored {
                self.check_duplicate(stream, (revision, position), new_event, staged)?;
                outcome.duplicates += 1;
                outcome.last_revision = revision;
                continue;
            }
            let revision = tail.state().next_revision();
            let position = staged.next_position;
            staged.starts.push(staged.lines.len());
            let envelope = new_event.envelope(stream, revision, position);
            serde_json::to_writer(&mut staged.lines, &envelope)
                .expect("an envelope always serializes");
            staged.lines.push(b'\n');
            tail.push(stream, position, &new_event.id, &mut staged.full_chunks);
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
    /// and the log's length in sled, flushed; its index changes go to the index buffer.
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
        for (key, entries) in staged.full_chunks {
            self.index.insert(key, entries);
        }
        for (stream, tail) in staged.tails.iter().filter(|(_, tail)| tail.dirty) {
            let key = chunk_key(stream, tail.last.first);
            self.index.insert(key, tail.last.entries.clone());
        }
        self.keep_tails(staged.tails);
        if self.index.is_full() {
            self.flush_index()?;
        }
        Ok(())
    }

    /// Puts a written batch's tails back in the cache; when they would overflow it, the cache
    /// starts over with them.
    fn keep_tails(&mut self, tails: FxHashMap<String, Tail>) {
        let bytes: usize = tails.iter().map(|(s, t)| s.len() + t.bytes()).sum();
        if self.tail_bytes + bytes > TAIL_CACHE_BYTES {
            self.tails.clear();
            self.tail_bytes = 0;
        }
        if bytes <= TAIL_CACHE_BYTES {
            self.tail_bytes += bytes;
            for (stream, mut tail) in tails {
                tail.dirty = false;
                self.tails.insert(stream, tail);
            }
        }
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
