//! The operations of declarative projection files and the values they read.
//!
//! A [`ValueSource`] is where an op's value comes from: `from = "/pointer"` (the event's data),
//! `from = "$stream"` (an envelope field: `$stream`, `$category`, `$revision`, `$position`,
//! `$id`, `$type`, `$version`, `$recorded_at`), or `value = <literal>`. A [`ProjectionOp`]
//! changes one state (a snapshot, or a table row): `set`, `add` (numbers), `append` (to a list),
//! `remove` (fields), `delete` (the whole state or row), and `jq`, which maps
//! `{"state": ..., "event": {...envelope, "data": ...}}` to the new state.

use super::jq_input::{jaq_input, StateUpdate};
use super::undo::UndoLog;
use crate::event::Event;
use crate::upcast::jq::{JqError, JqFilter};
use crate::upcast::pointer::{type_name, Pointer, PointerError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// Errors of an op on one event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectOpError {
    /// A pointer into the state that cannot be written.
    #[error(transparent)]
    Pointer(#[from] PointerError),
    /// The value the op reads is absent from the event.
    #[error("{source_name}: the event has no such field")]
    Missing { source_name: String },
    /// Adding to something that is not a number, or appending to something not a list.
    #[error("{pointer}: cannot {op} {value_type} to {target_type}")]
    TypeClash {
        pointer: String,
        op: &'static str,
        value_type: &'static str,
        target_type: &'static str,
    },
    /// The jq escape hatch failed.
    #[error(transparent)]
    Jq(#[from] JqError),
    /// An envelope reference that does not exist.
    #[error("{0:?} is not an envelope field; use $stream, $category, $revision, $position, $id, $type, $version or $recorded_at")]
    UnknownEnvelopeField(String),
    /// An event whose payload is not valid JSON.
    #[error("the event's data is not valid JSON")]
    Payload(#[source] serde_json::Error),
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValueSource {
    /// A pointer into data (`/x`) or an envelope field (`$stream`).
    From { from: String },
    /// A literal.
    Literal { value: Value },
}

impl ValueSource {
    /// How the source is written in files.
    pub fn name(&self) -> String {
        match self {
            ValueSource::From { from } => from.clone(),
            ValueSource::Literal { value } => value.to_string(),
        }
    }
}

/// An envelope field a value can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvelopeField {
    Stream,
    Category,
    Revision,
    Position,
    Id,
    Type,
    Version,
    RecordedAt,
}

impl EnvelopeField {
    fn parse(name: &str) -> Result<Self, ProjectOpError> {
        Ok(match name {
            "$stream" => EnvelopeField::Stream,
            "$category" => EnvelopeField::Category,
            "$revision" => EnvelopeField::Revision,
            "$position" => EnvelopeField::Position,
            "$id" => EnvelopeField::Id,
            "$type" => EnvelopeField::Type,
            "$version" => EnvelopeField::Version,
            "$recorded_at" => EnvelopeField::RecordedAt,
            _ => return Err(ProjectOpError::UnknownEnvelopeField(name.to_string())),
        })
    }

    fn read(self, e: &Event) -> Option<Value> {
        match self {
            EnvelopeField::Stream => Some(Value::from(e.stream.as_str())),
            EnvelopeField::Category => Some(Value::from(e.category())),
            EnvelopeField::Revision => Some(Value::from(e.revision)),
            EnvelopeField::Position => e.position.map(Value::from),
            EnvelopeField::Id => Some(Value::from(e.id.to_string())),
            EnvelopeField::Type => Some(Value::from(e.event_type.as_str())),
            EnvelopeField::Version => Some(Value::from(e.version)),
            EnvelopeField::RecordedAt => e.recorded_at.as_deref().map(Value::from),
        }
    }
}

/// A [`ValueSource`] checked and parsed once, when its file loads (not once per event).
#[derive(Debug, Clone)]
pub struct CompiledSource {
    name: String,
    from: SourceKind,
}

#[derive(Debug, Clone)]
enum SourceKind {
    Data(Pointer),
    Envelope(EnvelopeField),
    Literal(Value),
}

impl CompiledSource {
    /// Parses the pointer or names the envelope field; an unknown one is an error.
    pub fn compile(source: &ValueSource) -> Result<Self, ProjectOpError> {
        let from = match source {
            ValueSource::From { from } if from.starts_with('$') => {
                SourceKind::Envelope(EnvelopeField::parse(from)?)
            }
            ValueSource::From { from } => SourceKind::Data(Pointer::parse(from)?),
            ValueSource::Literal { value } => SourceKind::Literal(value.clone()),
        };
        Ok(CompiledSource {
            name: source.name(),
            from,
        })
    }

    /// The value for one event, borrowed where it can be; `None` when the event lacks it.
    pub fn read<'a>(&'a self, event: &Event, data: &'a Value) -> Option<Cow<'a, Value>> {
        match &self.from {
            SourceKind::Literal(value) => Some(Cow::Borrowed(value)),
            SourceKind::Envelope(field) => field.read(event).map(Cow::Owned),
            SourceKind::Data(pointer) => pointer.get(data).map(Cow::Borrowed),
        }
    }

    /// Like [`read`](Self::read), but a missing value is an error naming it.
    pub fn require<'a>(
        &'a self,
        event: &Event,
        data: &'a Value,
    ) -> Result<Cow<'a, Value>, ProjectOpError> {
        self.read(event, data)
            .ok_or_else(|| ProjectOpError::Missing {
                source_name: self.name.clone(),
            })
    }

    /// How the source is written in files.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A path in the state plus a value source. (serde cannot refuse unknown keys next to a
/// flattened field; a table with neither `from` nor `value` is still refused.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathSource {
    pub path: Pointer,
    #[serde(flatten)]
    pub source: ValueSource,
}

/// One op of a projection handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionOp {
    /// Sets a state field.
    Set(PathSource),
    /// Adds a number to a state field (absent counts as 0).
    Add(PathSource),
    /// Appends to a list in the state (absent is an empty list).
    Append(PathSource),
    /// Removes state fields.
    Remove(Vec<Pointer>),
    /// Deletes the whole state or row (`delete = true`).
    Delete(bool),
    /// Replaces the state with a jq filter's output.
    Jq(String),
}

impl ProjectionOp {
    /// The op's name in files.
    pub fn name(&self) -> &'static str {
        match self {
            ProjectionOp::Set(_) => "set",
            ProjectionOp::Add(_) => "add",
            ProjectionOp::Append(_) => "append",
            ProjectionOp::Remove(_) => "remove",
            ProjectionOp::Delete(_) => "delete",
            ProjectionOp::Jq(_) => "jq",
        }
    }
}

/// What an op leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The state stays (changed or not).
    Keep,
    /// The state or row is deleted.
    Delete,
}

/// An op ready to run.
#[derive(Debug)]
pub struct CompiledProjectionOp {
    op: ProjectionOp,
    source: Option<CompiledSource>,
    jq: Option<JqFilter>,
    /// The jq filter's native form, when it changes one field of the state.
    native: Option<StateUpdate>,
}

impl CompiledProjectionOp {
    /// Checks sources and compiles jq.
    pub fn compile(op: ProjectionOp) -> Result<Self, ProjectOpError> {
        let (mut source, mut jq) = (None, None);
        match &op {
            ProjectionOp::Jq(text) => jq = Some(JqFilter::compile(text)?),
            ProjectionOp::Set(p) | ProjectionOp::Add(p) | ProjectionOp::Append(p) => {
                source = Some(CompiledSource::compile(&p.source)?);
            }
            _ => {}
        };
        let native = jq.as_ref().and_then(StateUpdate::of);
        Ok(CompiledProjectionOp {
            op,
            source,
            jq,
            native,
        })
    }

    /// The op as written.
    pub fn op(&self) -> &ProjectionOp {
        &self.op
    }

    /// Applies the op to `state` for `event` (whose parsed data is `data`), first recording in
    /// `undo` what it is about to change.
    pub fn apply(
        &self,
        state: &mut Value,
        event: &Event,
        data: &Value,
        undo: &mut UndoLog,
    ) -> Result<Outcome, ProjectOpError> {
        let source = || {
            self.source
                .as_ref()
                .expect("value ops compile their source")
        };
        match &self.op {
            ProjectionOp::Set(p) => {
                let value = source().require(event, data)?.into_owned();
                undo.set(state, &p.path, value)?
            }
            ProjectionOp::Add(p) => add(state, &p.path, &*source().require(event, data)?, undo)?,
            ProjectionOp::Append(p) => {
                append(state, &p.path, source().require(event, data)?, undo)?
            }
            ProjectionOp::Remove(pointers) => {
                for pointer in pointers {
                    undo.before_write(state, pointer);
                    pointer.take(state);
                }
            }
            ProjectionOp::Delete(true) => return Ok(Outcome::Delete),
            ProjectionOp::Delete(false) => {}
            ProjectionOp::Jq(_) => {
                let filter = self
                    .jq
                    .as_ref()
                    .expect("jq ops are compiled with their filter");
                let native = self.native.as_ref().and_then(|native| {
                    Some((&native.pointer, native.new_value(state, event, data)?))
                });
                if let Some((pointer, value)) = native {
                    undo.set(state, pointer, value)?;
                    return Ok(Outcome::Keep);
                }
                let old = std::mem::replace(state, filter.run_val(jaq_input(state, event, data))?);
                undo.replaced(old);
            }
        }
        Ok(Outcome::Keep)
    }
}

fn add(
    state: &mut Value,
    path: &Pointer,
    value: &Value,
    undo: &mut UndoLog,
) -> Result<(), ProjectOpError> {
    let sum = |current: &Value| match (current, value) {
        (Value::Number(a), Value::Number(b)) => Ok(match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a.checked_add(b).map(Value::from),
            _ => None,
        }
        .unwrap_or_else(|| {
            Value::from(a.as_f64().unwrap_or_default() + b.as_f64().unwrap_or_default())
        })),
        _ => Err(ProjectOpError::TypeClash {
            pointer: path.to_string(),
            op: "add",
            value_type: type_name(value),
            target_type: type_name(current),
        }),
    };
    // A top-level number (the demo's most common op) is found once, changed where it lies,
    // and its old value moved into the log: the lookup that recording first would take was
    // 2.6% of the demo rebuild (perf).
    if let (Value::Object(map), Some(name), 1) = (&mut *state, path.first_token(), path.depth()) {
        if let Some(current) = map.get_mut(name) {
            let sum = sum(current)?;
            let old = std::mem::replace(current, sum);
            undo.replaced_field(name, Some(old));
            return Ok(());
        }
    }
    undo.before_write(state, path);
    match path.get_mut(state) {
        Some(current) => *current = sum(current)?,
        None => path.set(state, sum(&Value::from(0))?)?,
    }
    Ok(())
}

fn append(
    state: &mut Value,
    path: &Pointer,
    value: Cow<'_, Value>,
    undo: &mut UndoLog,
) -> Result<(), ProjectOpError> {
    match path.get_mut(state) {
        Some(Value::Array(items)) => {
            undo.before_push(path, items.len());
            items.push(value.into_owned());
        }
        None | Some(Value::Null) => {
            undo.before_write(state, path);
            path.set(state, Value::Array(vec![value.into_owned()]))?
        }
        Some(other) => {
            return Err(ProjectOpError::TypeClash {
                pointer: path.to_string(),
                op: "append",
                value_type: type_name(&value),
                target_type: type_name(other),
            })
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Event {
        serde_json::from_str(r#"{"stream":"order-7","revision":2,"position":9,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"LineItemAdded","version":3,"data":{"sku":"apple","quantity":2,"name":"x"}}"#).unwrap()
    }

    fn run(op: &str, mut state: Value) -> Result<(Value, Outcome), ProjectOpError> {
        #[derive(Deserialize)]
        struct One {
            op: ProjectionOp,
        }
        let one: One = toml::from_str(&format!("op = {op}")).expect("op parses");
        let e = event();
        let data = e.data.to_value().unwrap();
        let outcome = CompiledProjectionOp::compile(one.op)?.apply(
            &mut state,
            &e,
            &data,
            &mut UndoLog::default(),
        )?;
        Ok((state, outcome))
    }

    #[test]
    fn set_add_append_remove_delete() {
        assert_eq!(
            run(r#"{ set = { path = "/s", from = "$stream" } }"#, json!({}))
                .unwrap()
                .0,
            json!({"s": "order-7"})
        );
        assert_eq!(
            run(
                r#"{ add = { path = "/n", from = "/quantity" } }"#,
                json!({"n": 3})
            )
            .unwrap()
            .0,
            json!({"n": 5})
        );
        assert_eq!(
            run(r#"{ add = { path = "/n", value = 1.5 } }"#, json!({}))
                .unwrap()
                .0,
            json!({"n": 1.5})
        );
        assert_eq!(
            run(
                r#"{ append = { path = "/skus", from = "/sku" } }"#,
                json!({"skus": ["pear"]})
            )
            .unwrap()
            .0,
            json!({"skus": ["pear", "apple"]})
        );
        assert_eq!(
            run(r#"{ remove = ["/a"] }"#, json!({"a": 1, "b": 2}))
                .unwrap()
                .0,
            json!({"b": 2})
        );
        assert_eq!(
            run(r#"{ delete = true }"#, json!({})).unwrap().1,
            Outcome::Delete
        );
        assert_eq!(
            run(
                r#"{ set = { path = "/r", from = "$revision" } }"#,
                json!({})
            )
            .unwrap()
            .0,
            json!({"r": 2})
        );
    }

    #[test]
    fn type_clashes_and_missing_fields_are_errors() {
        let clash = run(
            r#"{ add = { path = "/n", from = "/quantity" } }"#,
            json!({"n": "three"}),
        )
        .unwrap_err();
        assert_eq!(clash.to_string(), "/n: cannot add number to string");
        let missing = run(r#"{ set = { path = "/x", from = "/nope" } }"#, json!({})).unwrap_err();
        assert!(matches!(missing, ProjectOpError::Missing { .. }));
        let envelope = run(r#"{ set = { path = "/x", from = "$nope" } }"#, json!({})).unwrap_err();
        assert!(matches!(envelope, ProjectOpError::UnknownEnvelopeField(_)));
        let bad_pointer =
            toml::from_str::<toml::Table>("op = { set = { path = \"x\", value = 1 } }")
                .ok()
                .and_then(|t| t["op"].clone().try_into::<ProjectionOp>().ok());
        assert!(bad_pointer.is_none(), "a pointer without '/' must not load");
    }

    #[test]
    fn jq_sees_state_and_event() {
        let (state, _) = run(
            r#"{ jq = ".state.total = (.state.total + .event.data.quantity) | .state" }"#,
            json!({"total": 1}),
        )
        .unwrap();
        assert_eq!(state, json!({"total": 3}));
    }
}
