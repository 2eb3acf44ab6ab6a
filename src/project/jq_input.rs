//! What a projection's `jq` op sees: `{"state": ..., "event": {...envelope, "data": ...}}`, in
//! the two forms it is read in. [`jaq_input`] builds it as jaq's value; a [`StateUpdate`] reads
//! its fields one path at a time, for filters that [`NativeUpdate`] evaluates without jaq.
//!
//! A filter of the shape `.state.FIELD OP EXPR | .state` changes one field of the state, so
//! its native form is applied in place through the undo log (see `ops`), and jaq runs only when
//! the native form cannot answer. Both forms read the envelope fields the same way: keep the two
//! functions below in step.

use crate::event::Event;
use crate::upcast::jq::native::{self, NativeUpdate};
use crate::upcast::jq::{object, text, to_val, JqFilter};
use crate::upcast::pointer::Pointer;
use jaq_json::{Num, Val};
use serde_json::Value;

/// The jq op's input as jaq's value.
pub fn jaq_input(state: &Value, event: &Event, data: &Value) -> Val {
    let number = |n: Option<u64>| n.map_or(Val::Null, |n| Val::Num(Num::from_integral(n)));
    let mut id = uuid::Uuid::encode_buffer();
    let event = object([
        ("stream", text(&event.stream)),
        ("revision", number(Some(event.revision))),
        ("position", number(event.position)),
        ("id", text(event.id.as_hyphenated().encode_lower(&mut id))),
        ("type", text(&event.event_type)),
        ("version", number(Some(event.version.into()))),
        ("data", to_val(data)),
        (
            "recorded_at",
            event.recorded_at.as_deref().map_or(Val::Null, text),
        ),
    ]);
    object([("state", to_val(state)), ("event", event)])
}

/// The value at `path` of the jq op's input, read without building it; `None` where only jaq
/// can say (the whole event, or a path through a scalar).
fn read(state: &Value, event: &Event, data: &Value, path: &[String]) -> Option<Value> {
    let (root, rest) = path.split_first()?;
    match root.as_str() {
        "state" => native::walk(state, rest),
        "event" => {
            let (name, rest) = rest.split_first()?;
            let field = match name.as_str() {
                "data" => return native::walk(data, rest),
                "stream" => Value::from(event.stream.as_str()),
                "revision" => Value::from(event.revision),
                "position" => event.position.map_or(Value::Null, Value::from),
                "id" => Value::from(event.id.as_hyphenated().to_string()),
                "type" => Value::from(event.event_type.as_str()),
                "version" => Value::from(event.version),
                "recorded_at" => event
                    .recorded_at
                    .as_deref()
                    .map_or(Value::Null, Value::from),
                _ => Value::Null,
            };
            native::walk(&field, rest)
        }
        _ => Some(Value::Null),
    }
}

/// A jq op that sets or updates one field of the state: `.state.FIELD OP EXPR | .state`.
#[derive(Debug)]
pub struct StateUpdate {
    update: NativeUpdate,
    /// The field, as a pointer into the state.
    pub pointer: Pointer,
}

impl StateUpdate {
    /// The filter's native form, when its output is the state with one field changed.
    pub fn of(filter: &JqFilter) -> Option<StateUpdate> {
        let update = filter.native()?;
        let (root, field) = update.target.split_first()?;
        let then_state = update.then.as_deref().is_some_and(|then| then == ["state"]);
        if root != "state" || field.is_empty() || !then_state {
            return None;
        }
        let pointer = Pointer::parse(&format!("/{}", field.join("/"))).ok()?;
        Some(StateUpdate {
            update: update.clone(),
            pointer,
        })
    }

    /// The field's new value; `None` when only jaq can say.
    pub fn new_value(&self, state: &Value, event: &Event, data: &Value) -> Option<Value> {
        let current = native::field(state, &self.update.target[1..])?;
        self.update
            .new_value(current, &|path| read(state, event, data, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        serde_json::from_str(r#"{"stream":"order-7","revision":2,"position":9,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"LineItemAdded","version":3,"data":{"quantity":2,"price":150},"recorded_at":"2024-01-01T00:00:00Z"}"#).unwrap()
    }

    /// The state jaq makes of `state`, and the one the native update makes (if it answers).
    fn both(filter: &str, state: Value) -> (Result<Value, String>, Option<Value>) {
        let filter = JqFilter::compile(filter).unwrap();
        let (e, data) = (event(), event().data.to_value().unwrap());
        let jaq = filter
            .run_val(jaq_input(&state, &e, &data))
            .map_err(|err| err.to_string());
        let native = StateUpdate::of(&filter).and_then(|update| {
            let value = update.new_value(&state, &e, &data)?;
            let mut changed = state.clone();
            update.pointer.set(&mut changed, value).unwrap();
            Some(changed)
        });
        (jaq, native)
    }

    #[test]
    fn native_updates_read_the_input_as_jaq_does() {
        for (filter, state) in [
            (
                ".state.n += .event.data.quantity * .event.data.price | .state",
                json!({"n": 1}),
            ),
            (
                ".state.n += .event.revision + .event.version * .event.position | .state",
                json!({}),
            ),
            (
                ".state.o.n -= .state.n | .state",
                json!({"n": 4, "o": {"n": 1}}),
            ),
            (".state.s = .event.stream | .state", json!({})),
            (".state.i = .event.id | .state", json!({})),
            (".state.t = .event.type | .state", json!({})),
            (".state.r = .event.recorded_at | .state", json!({})),
            (".state.m = .event.nope | .state", json!({})),
            (".state.m = .nope | .state", json!({"m": 1})),
            (".state.c |= ascii_upcase | .state", json!({"c": "eur"})),
            (
                ".state.o.c |= ascii_downcase | .state",
                json!({"o": {"c": "SEPA"}}),
            ),
        ] {
            let (jaq, native) = both(filter, state);
            assert_eq!(native.as_ref(), Some(jaq.as_ref().unwrap()), "{filter}");
        }
    }

    #[test]
    fn jaq_decides_what_the_native_update_cannot() {
        for (filter, state) in [
            (
                ".state.n += .event.data.missing * 2 | .state",
                json!({"n": 1}),
            ),
            (".state.n += .event.stream | .state", json!({"n": 1})),
            (".state.o.n = 1 | .state", json!({})),
            (".state.n = .event | .state", json!({})),
            (".state.c |= ascii_downcase | .state", json!({"c": 1})),
            (".state.c |= ascii_downcase | .state", json!({})),
        ] {
            let (_, native) = both(filter, state);
            assert_eq!(native, None, "{filter}");
        }
        let filter = JqFilter::compile(".state.n = 1 | .event").unwrap();
        assert!(StateUpdate::of(&filter).is_none());
    }
}
