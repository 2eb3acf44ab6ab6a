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

use super::fold::{approximate_size, entry_size};
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
            self.replaced_field(name, old);
            return Ok(());
        }
        self.before_write(state, pointer);
        pointer.set(state, value)
    }

    /// Records that the top-level field `name` held `old` (`None`: it was absent) before a
    /// write that has already happened.
    pub fn replaced_field(&mut self, name: &str, old: Option<Value>) {
        self.steps.push(Step::Field {
            name: name.into(),
            old,
        });
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

    /// How much [`approximate_size`] of `state` changed since before the first recorded
    /// write, worked out from the recorded steps: the top-level fields they touched and the
    /// items appended to lists. `None` when the steps cannot tell it (the state was replaced,
    /// or one field was both written and appended to); the caller then measures the state.
    ///
    /// Why: measuring the whole state after every event made each event cost as much as its
    /// state is large, so a stream's events cost time growing with the stream (a list of skus
    /// per order). This looks only at what the event touched.
    pub fn size_change(&self, state: &Value) -> Option<isize> {
        let Value::Object(map) = state else {
            return None;
        };
        let field_size =
            |name: &str, value: Option<&Value>| value.map_or(0, |v| entry_size(name, v)) as isize;
        let mut seen: SmallVec<[(&str, &Step); 4]> = SmallVec::new();
        let mut change = 0isize;
        for step in &self.steps {
            let name = match step {
                Step::Whole(_) => return None,
                Step::Field { name, .. } => name.as_str(),
                Step::Truncate { pointer, .. } => pointer.first_token()?,
            };
            match seen.iter().find(|(seen_name, _)| *seen_name == name) {
                // The first step on a field holds what it was before the event.
                Some((_, first)) if same_kind(first, step) => continue,
                Some(_) => return None,
                None => seen.push((name, step)),
            }
            change += match step {
                Step::Field { old, .. } => {
                    field_size(name, map.get(name)) - field_size(name, old.as_ref())
                }
                Step::Truncate { pointer, len } => match pointer.get(state) {
                    Some(Value::Array(items)) if items.len() >= *len => {
                        items[*len..].iter().map(approximate_size).sum::<usize>() as isize
                    }
                    _ => return None,
                },
                Step::Whole(_) => return None,
            };
        }
        Some(change)
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

/// Two steps on one field that the size of the first accounts for: writes (the first holds
/// the old value), or appends to the very same list (the first holds the shortest length).
fn same_kind(first: &Step, then: &Step) -> bool {
    match (first, then) {
        (Step::Field { .. }, Step::Field { .. }) => true,
        (Step::Truncate { pointer: a, .. }, Step::Truncate { pointer: b, .. }) => a == b,
        _ => false,
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
        push(&mut undo, &mut state, "/list", json!(3));
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
        push(&mut undo, &mut state, "", json!(3));
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

    /// Appends `item` to the list at `at`, recording it as the append op does.
    fn push(undo: &mut UndoLog, state: &mut Value, at: &str, item: Value) {
        let Some(Value::Array(items)) = pointer(at).get_mut(state) else {
            panic!("{at} is a list in the test state");
        };
        undo.before_push(&pointer(at), items.len());
        items.push(item);
    }

    #[test]
    fn size_change_equals_measuring_before_and_after() {
        let before = json!({"n": 1, "skus": ["a"], "deep": {"list": [1]}, "s": "x"});
        let mut state = before.clone();
        let mut undo = UndoLog::default();
        undo.set(&mut state, &pointer("/s"), json!("longer text"))
            .unwrap();
        undo.set(&mut state, &pointer("/s"), json!("again"))
            .unwrap();
        undo.set(&mut state, &pointer("/new/field"), json!({"k": [1, 2]}))
            .unwrap();
        undo.before_write(&state, &pointer("/n"));
        pointer("/n").take(&mut state);
        push(&mut undo, &mut state, "/skus", json!("b"));
        push(&mut undo, &mut state, "/skus", json!({"sku": "c"}));
        push(&mut undo, &mut state, "/deep/list", json!([2, 3]));
        let measured = approximate_size(&state) as isize - approximate_size(&before) as isize;
        assert_eq!(undo.size_change(&state), Some(measured));
        assert_ne!(measured, 0);
    }

    #[test]
    fn size_change_is_unknown_where_the_steps_cannot_tell_it() {
        let mut state = json!({"skus": ["a"], "deep": {"a": [], "b": []}});
        let mut undo = UndoLog::default();
        push(&mut undo, &mut state, "/skus", json!("b"));
        undo.set(&mut state, &pointer("/skus"), json!([])).unwrap();
        assert_eq!(undo.size_change(&state), None, "append, then set");

        let mut undo = UndoLog::default();
        push(&mut undo, &mut state, "/deep/a", json!(1));
        push(&mut undo, &mut state, "/deep/b", json!(1));
        assert_eq!(undo.size_change(&state), None, "two lists in one field");

        let mut undo = UndoLog::default();
        undo.replaced(std::mem::replace(&mut state, json!({})));
        assert_eq!(undo.size_change(&state), None, "replaced");

        let mut list = json!([1]);
        let mut undo = UndoLog::default();
        push(&mut undo, &mut list, "", json!(2));
        assert_eq!(undo.size_change(&list), None, "a state that is a list");
    }
}
