//! Folding events into projection state in memory: the part of a rebuild that is the same
//! whether the result goes to a store window ([`super::rebuild`]) or stays in memory
//! ([`super::testing`]).
//!
//! A [`Fold`] holds the dirty states of its members (projection generations), keyed by row.
//! Each event is applied in place to every member that handles it, and every change is logged
//! with how to take it back ([`super::undo::UndoLog`]); when a member fails on the event, its
//! changes of that event are taken back, so a failing event never leaves half its effect
//! behind. (Applying to a copy of each state and merging it gave the same guarantee, but the
//! copies were a sixth of a demo rebuild.) What a failure does is the [`ErrorPolicy`]: `stop`
//! takes back every change of the source event and returns the error, `skip` leaves the event
//! out for that member, `dead-letter` also records it. The size of the dirty states is tracked
//! (an estimate, in bytes) so the caller can write a window when it passes its memory bound;
//! after each change it comes from the undo log's steps, not from measuring the whole state.

use super::ops::Outcome;
use super::undo::UndoLog;
use super::{Projection, ProjectionKind};
use crate::migrate::ErrorPolicy;
use crate::readmodel::{DeadLetter, PartCheckpoint};
use crate::Event;
use hashbrown::hash_map::EntryRef;
use rustc_hash::FxBuildHasher;
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

/// A projection failed on an event under the `stop` policy.
#[derive(Debug, thiserror::Error)]
#[error("projection {projection} ({origin}) failed on event {event_id} ({event_type} v{version}) in stream {stream} at position {position}")]
pub struct FoldError {
    pub projection: String,
    pub origin: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub version: u32,
    pub stream: String,
    pub position: u64,
    #[source]
    pub source: crate::upcast::BoxError,
}

/// Why an event could not be folded: a projection failed under `stop`, or the read-model
/// store could not give a stored state. A store failure is never subject to the error
/// policy: skipping an event because a connection dropped would corrupt the read model.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A projection failed on the event under the `stop` policy.
    #[error(transparent)]
    Projection(#[from] Box<FoldError>),
    /// Loading a stored state failed.
    #[error(transparent)]
    Store(#[from] crate::readmodel::ReadModelError),
}

/// One projection being folded, with the checkpoint of what it has applied.
pub struct Member {
    /// The projection.
    pub projection: Arc<dyn Projection>,
    /// Its checkpoint (position, counts) as of the last event applied.
    pub checkpoint: PartCheckpoint,
}

/// A dirty state: the new value (`None`: deleted) and, for snapshots, the revision it covers.
#[derive(Debug, Clone)]
pub struct Dirty {
    pub state: Option<Value>,
    pub revision: u64,
    size: usize,
    /// The store had no row under this key when the fold loaded it: writing it inserts a key.
    new: bool,
}

impl Dirty {
    /// The row a store keeps for this state (`None`: the row is deleted). A snapshot row is
    /// `{"revision": r, "state": ...}` ([`Fold`] reads it back the same way); a table row is
    /// the state itself. Built by hand: `json!` would copy the whole state through `to_value`.
    pub fn into_row(self, kind: ProjectionKind) -> Option<Value> {
        let state = self.state?;
        Some(match kind {
            ProjectionKind::Snapshot => Value::Object(
                [
                    ("revision".to_string(), Value::from(self.revision)),
                    ("state".to_string(), state),
                ]
                .into_iter()
                .collect(),
            ),
            ProjectionKind::Table => state,
        })
    }
}

/// One (member, key) change of the source event being applied, and how to take it back.
struct Change {
    member: usize,
    key: String,
    /// The dirty entry before the change; `None` when the key was not dirty.
    prior: Option<Prior>,
    /// Takes the state back to what it was (when it was a value).
    undo: UndoLog,
    /// The state, when the change deleted it (the undo log starts from it).
    deleted: Option<Value>,
}

struct Prior {
    revision: u64,
    had_state: bool,
    size: usize,
}

/// Loads a stored state: (member index, key) -> state, if stored.
pub type Loader<'a> =
    dyn Fn(usize, &str) -> Result<Option<Value>, crate::readmodel::ReadModelError> + 'a;

/// The state in a stored row of a projection of `kind`: a snapshot row is
/// `{"revision": r, "state": ...}` (see [`Dirty::into_row`]), a table row is the state.
fn stored_state(kind: ProjectionKind, row: Option<Value>) -> Option<Value> {
    match kind {
        ProjectionKind::Snapshot => row.and_then(|mut row| row.get_mut("state").map(Value::take)),
        ProjectionKind::Table => row,
    }
}

/// The in-memory fold of a set of members.
pub struct Fold {
    pub members: Vec<Member>,
    /// Per member: its dirty states by key. hashbrown's `entry_ref` finds or makes a key's
    /// entry in one lookup and copies the key only when it is new.
    dirty: Vec<DirtyStates>,
    pub dead_letters: Vec<(usize, u64, DeadLetter)>,
    /// The sum of the dirty states' sizes.
    dirty_bytes: usize,
    /// How many dirty states the store has no row for.
    new_rows: usize,
    policy: ErrorPolicy,
    /// The changes of the source event being applied, and the members that applied it: kept
    /// between events so that applying one does not allocate them anew.
    changes: Vec<Change>,
    applied: Vec<usize>,
}

type DirtyStates = hashbrown::HashMap<String, Dirty, FxBuildHasher>;

/// What a JSON value takes in memory, in bytes: its own slot (a `Value` is 32 bytes) and what
/// it owns on the heap. An object is a `BTreeMap`, whose first node holds eleven entries
/// whether it has one or eleven: most of that node is counted once per object
/// (`OBJECT_NODE`), and each entry then adds its key and value slots and what they own.
///
/// Why this model: the previous one (a fixed 16 or 32 bytes per value, no node) undercounted
/// the demo's states 1.5 to 2.9 times against what they allocate (counted with an allocator
/// that sums requests), so `--memory-mb` held two to three times its figure in states.
/// Against those counts this one is within +13% (a snapshot row of ten fields and a list)
/// and -9% (a row of three numbers); a list is undercounted by its spare capacity (-20% for
/// `[1, 2, 3]`), and an object of thirty fields by a third, as its further nodes are about half
/// full. `tests/it/state_size.rs` checks these bounds with a counting allocator.
pub fn approximate_size(value: &Value) -> usize {
    VALUE_SLOT
        + match value {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(approximate_size).sum(),
            Value::Object(map) => {
                OBJECT_NODE + map.iter().map(|(k, v)| entry_size(k, v)).sum::<usize>()
            }
            _ => 0,
        }
}

/// What one field of an object adds to [`approximate_size`]: a key slot (a `String`), the
/// key's text, and the value.
pub fn entry_size(name: &str, value: &Value) -> usize {
    KEY_SLOT + name.len() + approximate_size(value)
}

const VALUE_SLOT: usize = std::mem::size_of::<Value>();
const KEY_SLOT: usize = std::mem::size_of::<String>();
/// A `BTreeMap` leaf node of `String` keys and `Value`s is 632 bytes; a typical state object of
/// about four fields uses four of its eleven slots, which the fields count themselves.
const OBJECT_NODE: usize = 400;
/// A dirty entry in the fold's map, besides its key's text and its state: the key slot, the
/// entry's other fields and the hash table's spare capacity.
const DIRTY_ENTRY: usize = 96;

/// The size a state counts for after a change: the size before it plus what the undo log's
/// steps tell of the change ([`UndoLog::size_change`]), or the state measured when they cannot
/// tell it or there was no state before. Debug builds check the first against the second.
fn size_after(key: &str, prior: Option<&Prior>, state: Option<&Value>, undo: &UndoLog) -> usize {
    let measured = || DIRTY_ENTRY + key.len() + state.map_or(0, approximate_size);
    let size = match (prior, state) {
        (Some(prior), Some(state)) if prior.had_state => undo
            .size_change(state)
            .map_or_else(measured, |change| prior.size.saturating_add_signed(change)),
        _ => measured(),
    };
    debug_assert_eq!(size, measured(), "size of {key} after its change");
    size
}

impl Fold {
    /// A fold of `members` under an error policy.
    pub fn new(members: Vec<Member>, policy: ErrorPolicy) -> Self {
        Fold {
            dirty: members.iter().map(|_| DirtyStates::default()).collect(),
            members,
            dead_letters: Vec::new(),
            dirty_bytes: 0,
            new_rows: 0,
            policy,
            changes: Vec::new(),
            applied: Vec::new(),
        }
    }

    /// Estimated bytes of dirty state.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_bytes
    }

    /// How many dirty states have no row in the store yet: a store whose commit costs memory
    /// per inserted key ([`crate::readmodel::ReadModelStore::new_row_bytes`]) counts them.
    pub fn new_rows(&self) -> usize {
        self.new_rows
    }

    /// How many dirty states there are: the rows the next window writes.
    pub fn dirty_rows(&self) -> usize {
        self.dirty.iter().map(|states| states.len()).sum()
    }

    /// The dirty state of one member's key, if it is dirty.
    pub fn dirty(&self, member: usize, key: &str) -> Option<&Dirty> {
        self.dirty.get(member)?.get(key)
    }

    /// Takes the dirty states out as ((member, key), state), leaving the fold empty of them.
    pub fn take_dirty(&mut self) -> Vec<((usize, String), Dirty)> {
        self.dirty_bytes = 0;
        self.new_rows = 0;
        let mut taken = Vec::with_capacity(self.dirty.iter().map(|d| d.len()).sum());
        for (member, states) in self.dirty.iter_mut().enumerate() {
            taken.extend(states.drain().map(|(key, dirty)| ((member, key), dirty)));
        }
        taken
    }

    /// Applies the outputs of one source event (one event, or the events an upcaster split it
    /// into) to every member that wants them; `only` filters members (partitions). The states
    /// change in place, each change logged; nothing of the source event stays unless all of it
    /// applied (or, under `skip` and `dead-letter`, the failing outputs were taken back).
    pub fn apply(
        &mut self,
        outputs: &[Event],
        load: &Loader<'_>,
        only: &dyn Fn(usize, &Event) -> bool,
    ) -> Result<(), ApplyError> {
        let (mut changes, mut applied) = (
            std::mem::take(&mut self.changes),
            std::mem::take(&mut self.applied),
        );
        let result = self.apply_all(outputs, load, only, &mut changes, &mut applied);
        match result {
            Err(_) => self.roll_back(changes.drain(..)),
            Ok(()) => {
                changes.clear();
                for &member in &applied {
                    self.members[member].checkpoint.events += 1;
                }
            }
        }
        applied.clear();
        (self.changes, self.applied) = (changes, applied);
        result
    }

    fn apply_all(
        &mut self,
        outputs: &[Event],
        load: &Loader<'_>,
        only: &dyn Fn(usize, &Event) -> bool,
        changes: &mut Vec<Change>,
        applied: &mut Vec<usize>,
    ) -> Result<(), ApplyError> {
        for event in outputs {
            let position = event.position.unwrap_or_default();
            let mut data: Option<std::borrow::Cow<'_, Value>> = None;
            for member in 0..self.members.len() {
                let m = &self.members[member];
                if m.checkpoint.position.is_some_and(|p| position <= p)
                    || !m.projection.handles(event)
                    || !only(member, event)
                {
                    continue;
                }
                if data.is_none() {
                    let parsed = event
                        .data
                        .as_value()
                        .map_err(|e| self.failure(member, event, Box::new(e)))?;
                    data = Some(parsed);
                }
                let data: &Value = data.as_ref().expect("parsed above");
                let mark = changes.len();
                match self.change(member, event, data, load, changes) {
                    Ok(()) => applied.push(member),
                    Err(source) => {
                        self.roll_back(changes.drain(mark..));
                        match source.downcast::<crate::readmodel::ReadModelError>() {
                            Ok(store) => return Err(ApplyError::Store(*store)),
                            // Under `stop` this returns, and `apply` takes back the rest.
                            Err(source) => self.fail(member, event, source)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies one event to each of one member's keys, in place, logging each change (the
    /// failing one too, so the caller can take it back).
    fn change(
        &mut self,
        member: usize,
        event: &Event,
        data: &Value,
        load: &Loader<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<(), crate::upcast::BoxError> {
        let projection = self.members[member].projection.clone();
        for key in projection.keys(event, data)? {
            let (dirty, prior) = match self.dirty[member].entry_ref(key.as_str()) {
                EntryRef::Occupied(entry) => {
                    let dirty = entry.into_mut();
                    let prior = Prior {
                        revision: dirty.revision,
                        had_state: dirty.state.is_some(),
                        size: dirty.size,
                    };
                    (dirty, Some(prior))
                }
                EntryRef::Vacant(entry) => {
                    let row = load(member, &key)?;
                    let new = row.is_none();
                    self.new_rows += usize::from(new);
                    let dirty = Dirty {
                        state: stored_state(projection.kind(), row),
                        revision: event.revision,
                        size: 0,
                        new,
                    };
                    (entry.insert(dirty), None)
                }
            };
            let mut undo = UndoLog::default();
            let state = dirty.state.get_or_insert_with(|| projection.initial());
            let outcome = projection.apply_undoable(&key, state, event, data, &mut undo);
            dirty.revision = event.revision;
            let deleted = match outcome {
                Ok(Outcome::Delete) => dirty.state.take(),
                _ => None,
            };
            let size = size_after(&key, prior.as_ref(), dirty.state.as_ref(), &undo);
            let size_before = std::mem::replace(&mut dirty.size, size);
            self.dirty_bytes = self.dirty_bytes - size_before + size;
            changes.push(Change {
                member,
                key,
                prior,
                undo,
                deleted,
            });
            outcome?;
        }
        Ok(())
    }

    /// Takes changes back, last first.
    fn roll_back(&mut self, changes: impl DoubleEndedIterator<Item = Change>) {
        for change in changes.rev() {
            let states = &mut self.dirty[change.member];
            let Some(prior) = change.prior else {
                if let Some(dirty) = states.remove(&change.key) {
                    self.dirty_bytes -= dirty.size;
                    self.new_rows -= usize::from(dirty.new);
                }
                continue;
            };
            let Some(dirty) = states.get_mut(&change.key) else {
                continue;
            };
            self.dirty_bytes = self.dirty_bytes - dirty.size + prior.size;
            dirty.size = prior.size;
            dirty.revision = prior.revision;
            dirty.state = match (prior.had_state, dirty.state.take().or(change.deleted)) {
                (true, Some(mut state)) => {
                    change.undo.rollback(&mut state);
                    Some(state)
                }
                _ => None,
            };
        }
    }

    /// The log position every member has applied through (`None` while one has applied
    /// nothing): where reading resumes.
    pub fn applied_through(&self) -> Option<u64> {
        self.members
            .iter()
            .map(|m| m.checkpoint.position)
            .min()
            .flatten()
    }

    /// Marks every member as having seen the event at `position` (after all its outputs).
    pub fn advance(&mut self, position: Option<u64>) {
        for member in &mut self.members {
            if position > member.checkpoint.position {
                member.checkpoint.position = position;
            }
        }
    }

    fn failure(
        &self,
        member: usize,
        event: &Event,
        source: crate::upcast::BoxError,
    ) -> Box<FoldError> {
        let projection = &self.members[member].projection;
        Box::new(FoldError {
            projection: projection.name().to_string(),
            origin: projection.origin().to_string(),
            event_id: event.id,
            event_type: event.event_type.clone(),
            version: event.version,
            stream: event.stream.clone(),
            position: event.position.unwrap_or_default(),
            source,
        })
    }

    fn fail(
        &mut self,
        member: usize,
        event: &Event,
        source: crate::upcast::BoxError,
    ) -> Result<(), Box<FoldError>> {
        let error = self.failure(member, event, source);
        if self.policy == ErrorPolicy::Stop {
            return Err(error);
        }
        let message = crate::error::chain(&error);
        let checkpoint = &mut self.members[member].checkpoint;
        checkpoint.last_error = Some(message.clone());
        if self.policy == ErrorPolicy::DeadLetter {
            checkpoint.dead_lettered += 1;
            let letter = DeadLetter {
                event: serde_json::to_value(event).unwrap_or(Value::Null),
                error: message,
            };
            self.dead_letters.push((member, error.position, letter));
        } else {
            checkpoint.skipped += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::file::FileProjection;
    use serde_json::json;
    use std::path::Path;

    fn member(text: &str) -> Member {
        Member {
            projection: Arc::new(FileProjection::parse(Path::new("p.toml"), text).unwrap()),
            checkpoint: PartCheckpoint::default(),
        }
    }

    fn event(position: u64, event_type: &str, data: &str) -> Event {
        serde_json::from_str(&format!(r#"{{"stream":"s-1","revision":{position},"position":{position},"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"{event_type}","data":{data}}}"#)).unwrap()
    }

    const COUNTER: &str = "name = \"counter\"\nversion = 1\nkind = \"snapshot\"\ninitial = { n = 0 }\n[[on]]\ntype = \"Add\"\nops = [{ add = { path = \"/n\", from = \"/by\" } }]\n[[on]]\ntype = \"Gone\"\nops = [{ delete = true }]\n";
    const OTHER: &str = "name = \"other\"\nversion = 1\nkind = \"snapshot\"\n[[on]]\ntype = \"Add\"\nops = [{ set = { path = \"/seen\", value = true } }]\n";

    fn apply(fold: &mut Fold, e: &Event) -> Result<(), ApplyError> {
        let result = fold.apply(std::slice::from_ref(e), &|_, _| Ok(None), &|_, _| true);
        fold.advance(e.position);
        result
    }

    #[test]
    fn a_failing_event_leaves_nothing_of_itself_under_stop() {
        // "other" comes first and would succeed; "counter" fails; neither change may stay.
        let mut fold = Fold::new(vec![member(OTHER), member(COUNTER)], ErrorPolicy::Stop);
        apply(&mut fold, &event(0, "Add", r#"{"by": 2}"#)).unwrap();
        let states = |fold: &Fold| {
            [(0, "s-1"), (1, "s-1")].map(|(m, k)| fold.dirty(m, k).map(|d| d.state.clone()))
        };
        let before = states(&fold);
        let err = fold
            .apply(
                &[event(1, "Add", r#"{"by": "x"}"#)],
                &|_, _| Ok(None),
                &|_, _| true,
            )
            .unwrap_err();
        assert!(
            crate::error::chain(&err).contains("cannot add string to number"),
            "{}",
            crate::error::chain(&err)
        );
        assert_eq!(before, states(&fold));
        assert_eq!(fold.members[1].checkpoint.events, 1);
    }

    #[test]
    fn the_outputs_of_one_split_event_apply_together_or_not_at_all() {
        let mut fold = Fold::new(vec![member(COUNTER)], ErrorPolicy::Stop);
        let outputs = [
            event(0, "Add", r#"{"by": 2}"#),
            event(0, "Add", r#"{"by": "x"}"#),
        ];
        assert!(fold
            .apply(&outputs, &|_, _| Ok(None), &|_, _| true)
            .is_err());
        assert!(
            fold.dirty(0, "s-1").is_none() && fold.dirty_bytes() == 0,
            "the first output must not stay behind"
        );
        let outputs = [
            event(1, "Add", r#"{"by": 2}"#),
            event(1, "Add", r#"{"by": 3}"#),
        ];
        fold.apply(&outputs, &|_, _| Ok(None), &|_, _| true)
            .unwrap();
        assert_eq!(fold.dirty(0, "s-1").unwrap().state, Some(json!({"n": 5})));
    }

    #[test]
    fn dirty_bytes_follow_changes_and_take_backs() {
        const LIST: &str = "name = \"list\"\nversion = 1\nkind = \"snapshot\"\ninitial = { items = [], n = 0 }\n[[on]]\ntype = \"Add\"\nops = [{ append = { path = \"/items\", from = \"/item\" } }, { add = { path = \"/n\", from = \"/by\" } }]\n[[on]]\ntype = \"Gone\"\nops = [{ delete = true }]\n";
        let mut fold = Fold::new(vec![member(LIST)], ErrorPolicy::Stop);
        let size_of = |fold: &Fold| {
            let state = fold.dirty(0, "s-1").and_then(|d| d.state.clone());
            DIRTY_ENTRY + "s-1".len() + state.as_ref().map_or(0, approximate_size)
        };
        apply(&mut fold, &event(0, "Add", r#"{"item": "a", "by": 1}"#)).unwrap();
        let before = fold.dirty_bytes();
        assert_eq!(before, size_of(&fold));
        // The second output appends a long item, then fails: both outputs are taken back.
        let failing = [
            event(1, "Add", r#"{"item": "b", "by": 1}"#),
            event(
                1,
                "Add",
                r#"{"item": "a long item that changes the size", "by": "x"}"#,
            ),
        ];
        assert!(fold
            .apply(&failing, &|_, _| Ok(None), &|_, _| true)
            .is_err());
        assert_eq!(
            fold.dirty_bytes(),
            before,
            "a taken-back event changes no size"
        );
        apply(&mut fold, &event(2, "Add", r#"{"item": "bb", "by": 1}"#)).unwrap();
        assert!(fold.dirty_bytes() > before);
        assert_eq!(fold.dirty_bytes(), size_of(&fold));
        apply(&mut fold, &event(3, "Gone", "{}")).unwrap();
        assert_eq!(fold.dirty_bytes(), size_of(&fold));
    }

    #[test]
    fn new_rows_count_the_keys_the_store_has_not_got() {
        let mut fold = Fold::new(vec![member(COUNTER)], ErrorPolicy::Stop);
        let stored = |_: usize, key: &str| {
            Ok((key == "old").then(|| json!({"revision": 0, "state": {"n": 1}})))
        };
        let on = |stream: &str, position: u64, by: &str| {
            let mut e = event(position, "Add", &format!(r#"{{"by": {by}}}"#));
            e.stream = stream.into();
            e
        };
        for (stream, position) in [("old", 1), ("new-1", 2), ("new-1", 3), ("new-2", 4)] {
            fold.apply(&[on(stream, position, "1")], &stored, &|_, _| true)
                .unwrap();
        }
        assert_eq!(fold.new_rows(), 2, "two new keys, one stored key");
        assert_eq!(fold.dirty_rows(), 3, "every dirty key is a row to write");
        assert!(fold
            .apply(&[on("new-3", 5, "\"x\"")], &stored, &|_, _| true)
            .is_err());
        assert_eq!(fold.new_rows(), 2, "a taken-back new key is not counted");
        assert_eq!(fold.dirty_rows(), 3, "nor is it a row to write");
        fold.take_dirty();
        assert_eq!((fold.new_rows(), fold.dirty_rows()), (0, 0));
    }

    #[test]
    fn skip_counts_and_delete_removes() {
        let mut fold = Fold::new(vec![member(COUNTER)], ErrorPolicy::Skip);
        apply(&mut fold, &event(0, "Add", r#"{"by": 2}"#)).unwrap();
        apply(&mut fold, &event(1, "Add", r#"{}"#)).unwrap();
        apply(&mut fold, &event(2, "Add", r#"{"by": 3}"#)).unwrap();
        assert_eq!(fold.dirty(0, "s-1").unwrap().state, Some(json!({"n": 5})));
        assert_eq!(
            (
                fold.members[0].checkpoint.skipped,
                fold.members[0].checkpoint.position
            ),
            (1, Some(2))
        );
        apply(&mut fold, &event(3, "Gone", "{}")).unwrap();
        assert_eq!(fold.dirty(0, "s-1").unwrap().state, None);
        assert!(fold.dirty_bytes() > 0);
        fold.take_dirty();
        assert_eq!(fold.dirty_bytes(), 0);
    }
}
