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

use crate::upcast::pointer::Pointer;
use compact_str::CompactString;
use serde_json::Value;

/// How to take back the writes made to one state, in the order they were made.
#[derive(Debug, Default)]
pub struct UndoLog {
    steps: Vec<Step>,
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

    /// Records what appending to the list at `pointer` changes: only its length, when the
    /// list is there (the common case, and the one where copying it would cost the most).
    pub fn before_append(&mut self, state: &Value, pointer: &Pointer) {
        match pointer.get(state) {
            Some(Value::Array(items)) if pointer.first_token().is_some() => {
                self.steps.push(Step::Truncate {
                    pointer: pointer.clone(),
                    len: items.len(),
                })
            }
            _ => self.before_write(state, pointer),
        }
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
        undo.before_append(&state, &pointer("/list"));
        if let Some(Value::Array(items)) = pointer("/list").get_mut(&mut state) {
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
    fn a_state_that_is_not_an_object_is_recorded_whole() {
        let mut state = Value::Null;
        let mut undo = UndoLog::default();
        undo.before_write(&state, &pointer("/a/b"));
        pointer("/a/b").set(&mut state, json!(1)).unwrap();
        undo.rollback(&mut state);
        assert_eq!(state, Value::Null);
    }
}
