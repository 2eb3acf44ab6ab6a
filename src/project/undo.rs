//! Taking back one event's change to a state without having copied the state first.
//!
//! The fold guarantees that an event which fails leaves nothing of itself behind (see
//! [`super::fold`]). Copying each state before applying an event gives that guarantee, but in
//! the demo rebuild the copies were a sixth of the time: states grow (lists of skus, counters
//! per field) while each event touches one or two fields. An [`UndoLog`] records, before each
//! write, only what that write can change: the old value of the top-level field it goes
//! under, the old length of a list it appends to, or (for writes that replace the state, or
//! states that are not objects) the old state itself. [`UndoLog::rollback`] replays the steps
//! backwards and gives back the state as it was, exactly.
//!
//! Declarative projections record their steps op by op ([`super::ops`]); a Rust projection
//! that does not implement [`super::Projection::apply_undoable`] gets a copy of the whole
//! state, as before.

use crate::upcast::pointer::{Pointer, PointerError};
use compact_str::CompactString;
use serde_json::Value;
use smallvec::SmallVec;

/// How to take back the writes made to one state, in the order they were made.
#[derive(Debug, Default)]
pub struct UndoLog {
    // Inline: most changes record one or two steps, and a heap vector was an allocation per
    // change.
    steps: SmallVec<[Step; 2]>,
}

#[derive(Debug)]
enum Step {
    /// The top-level field `name` held `old` (`None`: it was absent).
    // Inline up to 24 bytes: field names are short, and this is written before every write.
    Field {
        name: CompactString,
        old: Option<Value>,
    },
    /// The list at `pointer` had `len` items before something was appended to it.
    Truncate { pointer: Pointer, len: usize },
    /// The whole state was `old`.
    Whole(Value),
}

impl UndoLog {
    /// Records what a write at `pointer` can change, before it happens.
    pub fn before_write(&mut self, state: &Value, pointer: &Pointer) {
        match (state, pointer.first_token()) {
            (Value::Object(map), Some(name)) => self.steps.push(Step::Field {
                name: name.into(),
                old: map.get(name).cloned(),
            }),
            _ => self.before_replace(state),
        }
    }

    /// Writes `value` at `pointer` and records how to take it back. A top-level field of an
    /// object state is the common case: its old value moves into the log instead of being
    /// copied.
    pub fn set(
        &mut self,
        state: &mut Value,
        pointer: &Pointer,
        value: Value,
    ) -> Result<(), PointerError> {
        if let (Value::Object(_), Some(name), 1) = (&*state, pointer.first_token(), pointer.depth())
        {
            let old = pointer.replace(state, value)?;
            self.steps.push(Step::Field {
                name: name.into(),
                old,
            });
            return Ok(());
        }
        self.before_write(state, pointer);
        pointer.set(state, value)
    }

    /// Records what pushing to the list at `pointer`, now `len` items long, changes: only its
    /// length (copying the list would cost the most, and lists are what states grow by).
    pub fn before_push(&mut self, pointer: &Pointer, len: usize) {
        self.steps.push(Step::Truncate {
            pointer: pointer.clone(),
            len,
        })
    }

    /// Records the whole state, before something that may replace all of it.
    pub fn before_replace(&mut self, state: &Value) {
        self.steps.push(Step::Whole(state.clone()));
    }

    /// Records a state that was replaced (moved here, so no copy is made).
    pub fn replaced(&mut self, old: Value) {
        self.steps.push(Step::Whole(old));
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Gives `state` back as it was before the first recorded write.
    pub fn rollback(self, state: &mut Value) {
        for step in self.steps.into_iter().rev() {
            match step {
                Step::Whole(old) => *state = old,
                Step::Field { name, old } => {
                    // A state that was an object when recorded is an object again here: every
                    // later step that replaced it has been taken back already.
                    if let Value::Object(map) = state {
                        match old {
                            Some(old) => map.insert(name.into(), old),
                            None => map.remove(name.as_str()),
                        };
                    }
                }
                Step::Truncate { pointer, len } => {
                    if let Some(Value::Array(items)) = pointer.get_mut(state) {
                        items.truncate(len);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointer(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    #[test]
    fn field_writes_are_taken_back_including_objects_they_created() {
        let before = json!({"a": 1, "list": [1, 2]});
        let mut state = before.clone();
        let mut undo = UndoLog::default();
        undo.before_write(&state, &pointer("/a"));
        pointer("/a").set(&mut state, json!(5)).unwrap();
        undo.before_write(&state, &pointer("/new/deep"));
        pointer("/new/deep").set(&mut state, json!("x")).unwrap();
        if let Some(Value::Array(items)) = pointer("/list").get_mut(&mut state) {
            undo.before_push(&pointer("/list"), items.len());
            items.push(json!(3));
        }
        assert_eq!(
            state,
            json!({"a": 5, "new": {"deep": "x"}, "list": [1, 2, 3]})
        );
        undo.rollback(&mut state);
        assert_eq!(state, before);
    }

    #[test]
    fn set_moves_old_fields_into_the_log_and_takes_every_write_back() {
        let before = json!({"status": "placed", "deep": {"a": 1}});
        let mut state = before.clone();
        let mut undo = UndoLog::default();
        undo.set(&mut state, &pointer("/status"), json!("paid"))
            .unwrap();
        undo.set(&mut state, &pointer("/carrier"), json!("DHL"))
            .unwrap();
        undo.set(&mut state, &pointer("/deep/a"), json!(2)).unwrap();
        undo.set(&mut state, &pointer("/status"), json!("shipped"))
            .unwrap();
        assert_eq!(
            state,
            json!({"status": "shipped", "carrier": "DHL", "deep": {"a": 2}})
        );
        undo.rollback(&mut state);
        assert_eq!(state, before);
        let mut scalar = json!(3);
        let mut undo = UndoLog::default();
        undo.set(&mut scalar, &pointer("/a"), json!(1)).unwrap_err();
        undo.rollback(&mut scalar);
        assert_eq!(scalar, json!(3));
    }

    #[test]
    fn a_replaced_state_comes_back_before_the_field_steps_recorded_on_it() {
        let before = json!({"n": 1});
        let mut state = before.clone();
        let mut undo = UndoLog::default();
        undo.before_write(&state, &pointer("/n"));
        pointer("/n").set(&mut state, json!(2)).unwrap();
        let old = std::mem::replace(&mut state, json!(42));
        undo.replaced(old);
        undo.before_write(&state, &pointer("/n"));
        assert!(!undo.is_empty());
        undo.rollback(&mut state);
        assert_eq!(state, before);
    }

    #[test]
    fn a_push_to_a_state_that_is_a_list_is_taken_back_by_length() {
        let mut state = json!([1, 2]);
        let mut undo = UndoLog::default();
        if let Some(Value::Array(items)) = pointer("").get_mut(&mut state) {
            undo.before_push(&pointer(""), items.len());
            items.push(json!(3));
        }
        assert_eq!(state, json!([1, 2, 3]));
        undo.rollback(&mut state);
        assert_eq!(state, json!([1, 2]));
    }

    #[test]
    fn a_state_that_is_not_an_object_is_recorded_whole() {
        let mut state = Value::Null;
        let mut undo = UndoLog::default();
        undo.before_write(&state, &pointer("/a/b"));
        pointer("/a/b").set(&mut state, json!(1)).unwrap();
        undo.rollback(&mut state);
        assert_eq!(state, Value::Null);
    }
}
