//! Declarative projection files (`projections/*.toml`), one projection each.
//!
//! ```toml
//! name = "customer_orders"     # lowercase letters, digits, _ (it names tables)
//! version = 1
//! kind = "table"               # or "snapshot": one state per stream
//! categories = ["order"]       # only streams of these categories (default: all)
//! key = "/customer_id"         # table rows are keyed by this value ($stream etc. work too)
//! initial = { orders = 0 }     # the state a new row or snapshot starts from (default {})
//! [columns]                    # optional typed columns for SQL stores
//! orders = "bigint"
//! [[on]]
//! type = "OrderPlaced"
//! ops = [{ add = { path = "/orders", value = 1 } }]
//! ```
//!
//! Handlers (`[[on]]`) run in file order for events of their `type`; an event type without a
//! handler is not seen by the projection. A handler may override the table `key`. The
//! checksum is over the parsed file as sorted JSON, so comments and layout do not change it.

use super::ops::{
    CompiledProjectionOp, CompiledSource, Outcome, ProjectOpError, ProjectionOp, ValueSource,
};
use super::undo::UndoLog;
use super::{ColumnType, Projection, ProjectionKind};
use crate::event::{canonical_json, Event};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors of loading a projection file.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionFileError {
    /// The file cannot be read.
    #[error("projection file {path}: cannot read it")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse, or has an unknown op, key or a bad pointer.
    #[error("projection file {path}: {message}")]
    Parse {
        path: PathBuf,
        message: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An op that is invalid before any event.
    #[error("projection file {path}: handler {handler} ({event_type}), op {index} ({name})")]
    Op {
        path: PathBuf,
        handler: usize,
        event_type: String,
        index: usize,
        name: &'static str,
        #[source]
        source: Box<ProjectOpError>,
    },
    /// Settings that do not fit together.
    #[error("projection file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One `[[on]]` handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    /// The event type handled.
    #[serde(rename = "type")]
    pub event_type: String,
    /// A key for this handler's events (tables); default: the file's key.
    #[serde(default)]
    pub key: Option<String>,
    /// The ops, in order.
    #[serde(default)]
    pub ops: Vec<ProjectionOp>,
}

/// The parsed content of a projection file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionSpec {
    pub name: String,
    pub version: u32,
    pub kind: ProjectionKind,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub initial: Option<Value>,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnType>,
    #[serde(default)]
    pub on: Vec<HandlerSpec>,
}

struct Handler {
    /// Its place among the file's `[[on]]` handlers, from 1 (errors name it).
    number: usize,
    key: Option<CompiledSource>,
    ops: Vec<CompiledProjectionOp>,
}

/// A declarative projection loaded from a file.
pub struct FileProjection {
    origin: String,
    spec: ProjectionSpec,
    // Fx: every event asks every projection for its handlers, and SipHash was the lookup's
    // cost.
    handlers: FxHashMap<String, Vec<Handler>>,
    initial: Value,
    checksum: String,
}

/// Why a declarative projection failed on an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerFailure {
    /// An op failed.
    #[error("handler {handler} ({event_type}), op {index} ({name})")]
    Op {
        handler: usize,
        event_type: String,
        index: usize,
        name: &'static str,
        #[source]
        source: ProjectOpError,
    },
    /// The row key is missing or not a string or number.
    #[error("no row key: {source_name} is missing or not a string or number")]
    Key { source_name: String },
}

/// Checks a projection or column name: it names tables and columns in SQL stores.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

impl FileProjection {
    /// Reads and checks one file.
    pub fn load(path: &Path) -> Result<Self, ProjectionFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProjectionFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses file text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProjectionFileError> {
        let spec: ProjectionSpec =
            toml::from_str(text).map_err(|source| ProjectionFileError::Parse {
                path: path.to_path_buf(),
                message: source.to_string().trim_end().replace('\n', "\n  "),
                source: Box::new(source),
            })?;
        let invalid = |reason: String| ProjectionFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if !valid_name(&spec.name) {
            return Err(invalid(format!("name {:?} must be lowercase letters, digits and _, starting with a letter, at most 63 long", spec.name)));
        }
        if spec.version == 0 {
            return Err(invalid("versions start at 1".into()));
        }
        if let Some(column) = spec.columns.keys().find(|c| !valid_name(c)) {
            return Err(invalid(format!(
                "column name {column:?} must be lowercase letters, digits and _"
            )));
        }
        let key_source = |text: &str| -> Result<CompiledSource, ProjectionFileError> {
            let source = ValueSource::From {
                from: text.to_string(),
            };
            CompiledSource::compile(&source).map_err(|e| invalid(format!("key {text:?}: {e}")))
        };
        let file_key = spec.key.as_deref().map(key_source).transpose()?;
        let mut handlers: FxHashMap<String, Vec<Handler>> = FxHashMap::default();
        for (h, handler) in spec.on.iter().enumerate() {
            let key = match (&handler.key, &file_key, spec.kind) {
                (Some(text), _, ProjectionKind::Table) => Some(key_source(text)?),
                (None, Some(key), ProjectionKind::Table) => Some(key.clone()),
                (None, None, ProjectionKind::Table) => {
                    return Err(invalid(format!(
                        "table projection needs a `key` (handler {} for {} has none)",
                        h + 1,
                        handler.event_type
                    )))
                }
                (Some(_), _, ProjectionKind::Snapshot) => {
                    return Err(invalid(
                        "a snapshot is keyed by its stream; `key` is for tables".into(),
                    ))
                }
                (None, _, ProjectionKind::Snapshot) => None,
            };
            let ops = handler
                .ops
                .iter()
                .enumerate()
                .map(|(i, op)| {
                    CompiledProjectionOp::compile(op.clone()).map_err(|source| {
                        ProjectionFileError::Op {
                            path: path.to_path_buf(),
                            handler: h + 1,
                            event_type: handler.event_type.clone(),
                            index: i + 1,
                            name: op.name(),
                            source: Box::new(source),
                        }
                    })
                })
                .collect::<Result<_, _>>()?;
            handlers
                .entry(handler.event_type.clone())
                .or_default()
                .push(Handler {
                    number: h + 1,
                    key,
                    ops,
                });
        }
        if spec.kind == ProjectionKind::Snapshot && spec.key.is_some() {
            return Err(invalid(
                "a snapshot is keyed by its stream; `key` is for tables".into(),
            ));
        }
        let initial = spec
            .initial
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let mut canonical = String::new();
        canonical_json(
            &serde_json::to_value(&spec).expect("a spec serializes"),
            &mut canonical,
        );
        let checksum = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        Ok(FileProjection {
            origin: path.display().to_string(),
            spec,
            handlers,
            initial,
            checksum,
        })
    }

    fn handlers(&self, event: &Event) -> &[Handler] {
        self.handlers
            .get(&event.event_type)
            .map_or(&[], Vec::as_slice)
    }
}

/// A row key as text: a string as it is (borrowed, the usual case), a number printed.
fn key_str(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        _ => None,
    }
}

fn key_text(value: Option<std::borrow::Cow<'_, Value>>) -> Option<String> {
    key_str(value.as_deref()?).map(std::borrow::Cow::into_owned)
}

/// True when a key source's value is `key`, without allocating for a string key.
fn key_is(value: Option<std::borrow::Cow<'_, Value>>, key: &str) -> bool {
    value.as_deref().and_then(key_str).as_deref() == Some(key)
}

impl Projection for FileProjection {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn version(&self) -> u32 {
        self.spec.version
    }

    fn kind(&self) -> ProjectionKind {
        self.spec.kind
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    fn checksum(&self) -> String {
        self.checksum.clone()
    }

    fn columns(&self) -> Vec<(String, ColumnType)> {
        self.spec
            .columns
            .iter()
            .map(|(name, kind)| (name.clone(), *kind))
            .collect()
    }

    fn handles(&self, event: &Event) -> bool {
        (self.spec.categories.is_empty()
            || self.spec.categories.iter().any(|c| c == event.category()))
            && self.handlers.contains_key(&event.event_type)
    }

    fn keys(&self, event: &Event, data: &Value) -> Result<Vec<String>, crate::upcast::BoxError> {
        if self.spec.kind == ProjectionKind::Snapshot {
            return Ok(vec![event.stream.clone()]);
        }
        let mut keys: Vec<String> = Vec::new();
        for handler in self.handlers(event) {
            let source = handler.key.as_ref().expect("table handlers have keys");
            let key = key_text(source.read(event, data)).ok_or_else(|| HandlerFailure::Key {
                source_name: source.name().to_string(),
            })?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn initial(&self) -> Value {
        self.initial.clone()
    }

    fn apply(
        &self,
        key: &str,
        state: &mut Value,
        event: &Event,
        data: &Value,
    ) -> Result<Outcome, crate::upcast::BoxError> {
        self.apply_undoable(key, state, event, data, &mut UndoLog::default())
    }

    fn apply_undoable(
        &self,
        key: &str,
        state: &mut Value,
        event: &Event,
        data: &Value,
        undo: &mut UndoLog,
    ) -> Result<Outcome, crate::upcast::BoxError> {
        let mut outcome = Outcome::Keep;
        for handler in self.handlers(event) {
            if let Some(source) = &handler.key {
                if !key_is(source.read(event, data), key) {
                    continue;
                }
            }
            for (i, op) in handler.ops.iter().enumerate() {
                let result =
                    op.apply(state, event, data, undo)
                        .map_err(|source| HandlerFailure::Op {
                            handler: handler.number,
                            event_type: event.event_type.clone(),
                            index: i + 1,
                            name: op.op().name(),
                            source,
                        })?;
                if result == Outcome::Delete {
                    outcome = Outcome::Delete;
                }
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<FileProjection, ProjectionFileError> {
        FileProjection::parse(Path::new("projections/p.toml"), text)
    }

    fn event(stream: &str, event_type: &str, data: &str) -> Event {
        serde_json::from_str(&format!(r#"{{"stream":"{stream}","revision":0,"position":3,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"{event_type}","data":{data}}}"#)).unwrap()
    }

    const TABLE: &str = r#"
        name = "customer_orders"
        version = 1
        kind = "table"
        categories = ["order"]
        key = "/customer_id"
        initial = { orders = 0 }
        [[on]]
        type = "OrderPlaced"
        ops = [{ add = { path = "/orders", value = 1 } }, { set = { path = "/last_order", from = "$stream" } }]
    "#;

    #[test]
    fn tables_key_rows_by_a_value_and_filter_by_category_and_type() {
        let p = parse(TABLE).unwrap();
        let placed = event("order-1", "OrderPlaced", r#"{"customer_id":"user-4"}"#);
        assert!(p.handles(&placed));
        assert!(!p.handles(&event("cart-1", "OrderPlaced", "{}")));
        assert!(!p.handles(&event("order-1", "OrderShipped", "{}")));
        let data = placed.data.to_value().unwrap();
        assert_eq!(p.keys(&placed, &data).unwrap(), vec!["user-4"]);
        let mut state = p.initial();
        p.apply("user-4", &mut state, &placed, &data).unwrap();
        assert_eq!(state, json!({"orders": 1, "last_order": "order-1"}));
        let no_key = event("order-2", "OrderPlaced", "{}");
        let err = p.keys(&no_key, &json!({})).unwrap_err();
        assert!(err.to_string().contains("/customer_id"), "{err}");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |text: &str| crate::error::chain(&parse(text).err().expect("should not load"));
        assert!(
            err(&TABLE.replace("add =", "frobnicate =")).contains("unknown variant `frobnicate`")
        );
        assert!(
            err(&TABLE.replace("\"/orders\", value", "\"orders\", value"))
                .contains("not a JSON pointer")
        );
        assert!(
            err(&TABLE.replace("customer_orders", "Customer Orders")).contains("must be lowercase")
        );
        assert!(err(&TABLE.replace("key = \"/customer_id\"", "")).contains("needs a `key`"));
        assert!(
            err(&TABLE.replace("from = \"$stream\"", "from = \"$nope\""))
                .contains("not an envelope field")
        );
    }

    #[test]
    fn checksum_follows_the_definition_not_the_layout() {
        let a = parse(TABLE).unwrap();
        let b = parse(&format!("# comment\n{TABLE}")).unwrap();
        assert_eq!(a.checksum(), b.checksum());
        assert_ne!(
            a.checksum(),
            parse(&TABLE.replace("value = 1 }", "value = 2 }"))
                .unwrap()
                .checksum()
        );
    }
}
