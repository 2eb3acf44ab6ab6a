//! Declarative upcaster files (`upcasters/*.toml`), one upcaster each.
//!
//! ```toml
//! # UserRegistered v1 -> v2: one full_name instead of first/last name
//! type = "UserRegistered"
//! from = 1
//! to = 2                       # default: from + 1
//! [[ops]]
//! concat = { fields = ["/first_name", "/last_name"], separator = " ", into = "/full_name" }
//! [[ops]]
//! remove = ["/first_name", "/last_name"]
//! ```
//!
//! Besides `ops`, a file may `rename = "NewType"` (the output's type), `drop = true` (no
//! output), or list `[[emit]]` tables to split the event: the top-level ops run first, then each
//! emit gets its own copy of the payload, its own `type`/`version` and its own `ops`.
//! [`FileUpcaster`] implements [`Upcaster`]; its canonical form for the set checksum is the
//! parsed file as JSON with sorted keys, so comments and formatting do not change the checksum.

use super::ops::{CompiledOp, Op, OpError};
use super::{UpcastEvent, Upcaster};
use crate::event::{canonical_json, EventKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors of loading an upcaster file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("upcaster file {path}: cannot read it")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or has an unknown op, field, or bad pointer.
    #[error("upcaster file {path}: {message}")]
    Parse {
        path: PathBuf,
        message: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// An op that is invalid before any event (bad format, jq that does not compile).
    #[error("upcaster file {path}: op {index} ({name})")]
    Op {
        path: PathBuf,
        index: usize,
        name: &'static str,
        #[source]
        source: Box<OpError>,
    },
    /// Settings that contradict each other.
    #[error("upcaster file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One output of a split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitSpec {
    /// Output type; default: the upcaster's output type.
    #[serde(rename = "type", default)]
    pub event_type: Option<String>,
    /// Output version; default: the upcaster's output version.
    #[serde(default)]
    pub version: Option<u32>,
    /// Ops applied to this output only.
    #[serde(default)]
    pub ops: Vec<Op>,
}

/// The parsed content of an upcaster file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpcasterSpec {
    /// Input event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Input version.
    pub from: u32,
    /// Output version; default `from + 1`.
    #[serde(default)]
    pub to: Option<u32>,
    /// Output type; default: the input type.
    #[serde(default)]
    pub rename: Option<String>,
    /// Drop the event: no output.
    #[serde(default)]
    pub drop: bool,
    /// Ops applied to the payload.
    #[serde(default)]
    pub ops: Vec<Op>,
    /// Split into several events.
    #[serde(default)]
    pub emit: Vec<EmitSpec>,
}

/// A declarative upcaster loaded from a file.
#[derive(Debug)]
pub struct FileUpcaster {
    origin: String,
    input: EventKind,
    ops: Vec<CompiledOp>,
    /// (output kind, its own ops); empty when the upcaster drops.
    emits: Vec<(EventKind, Vec<CompiledOp>)>,
    canonical: String,
}

fn compile_ops(path: &Path, ops: &[Op], offset: usize) -> Result<Vec<CompiledOp>, FileError> {
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            CompiledOp::compile(op.clone()).map_err(|source| FileError::Op {
                path: path.to_path_buf(),
                index: offset + i + 1,
                name: op.name(),
                source: Box::new(source),
            })
        })
        .collect()
}

impl FileUpcaster {
    /// Reads and checks one file.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses file text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, FileError> {
        let spec: UpcasterSpec = toml::from_str(text).map_err(|source| FileError::Parse {
            path: path.to_path_buf(),
            message: source.to_string().trim_end().replace('\n', "\n  "),
            source: Box::new(source),
        })?;
        let invalid = |reason: &str| FileError::Invalid {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if spec.event_type.is_empty() {
            return Err(invalid("`type` is empty"));
        }
        if spec.from == 0 || spec.to == Some(0) {
            return Err(invalid("versions start at 1"));
        }
        if spec.drop
            && (!spec.ops.is_empty()
                || !spec.emit.is_empty()
                || spec.rename.is_some()
                || spec.to.is_some())
        {
            return Err(invalid("`drop = true` takes no ops, emit, rename or to"));
        }
        let output = EventKind::new(
            spec.rename
                .clone()
                .unwrap_or_else(|| spec.event_type.clone()),
            spec.to.unwrap_or(spec.from.saturating_add(1)),
        );
        let ops = compile_ops(path, &spec.ops, 0)?;
        let emits = if spec.drop {
            Vec::new()
        } else if spec.emit.is_empty() {
            vec![(output, Vec::new())]
        } else {
            let mut emits = Vec::new();
            let mut offset = spec.ops.len();
            for emit in &spec.emit {
                let kind = EventKind::new(
                    emit.event_type
                        .clone()
                        .unwrap_or_else(|| output.event_type.clone()),
                    emit.version.unwrap_or(output.version),
                );
                emits.push((kind, compile_ops(path, &emit.ops, offset)?));
                offset += emit.ops.len();
            }
            emits
        };
        let mut canonical = String::new();
        canonical_json(
            &serde_json::to_value(&spec).expect("a spec serializes"),
            &mut canonical,
        );
        Ok(FileUpcaster {
            origin: path.display().to_string(),
            input: EventKind::new(spec.event_type, spec.from),
            ops,
            emits,
            canonical,
        })
    }
}

/// Why a declarative upcaster failed on an event: which op, and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("op {index} ({name})")]
pub struct OpFailure {
    /// 1-based op number in the file, counting top-level ops then each emit's.
    pub index: usize,
    /// The op's name.
    pub name: &'static str,
    /// What went wrong.
    #[source]
    pub source: OpError,
}

fn apply_all(ops: &[CompiledOp], offset: usize, event: &mut UpcastEvent) -> Result<(), OpFailure> {
    for (i, op) in ops.iter().enumerate() {
        op.apply(&mut event.data, &event.metadata)
            .map_err(|source| OpFailure {
                index: offset + i + 1,
                name: op.op().name(),
                source,
            })?;
    }
    Ok(())
}

impl Upcaster for FileUpcaster {
    fn origin(&self) -> &str {
        &self.origin
    }

    fn input(&self) -> EventKind {
        self.input.clone()
    }

    fn outputs(&self) -> Vec<EventKind> {
        self.emits.iter().map(|(kind, _)| kind.clone()).collect()
    }

    fn reads_metadata(&self) -> bool {
        let reads =
            |ops: &[CompiledOp]| ops.iter().any(|op| matches!(op.op(), Op::FromMetadata(_)));
        reads(&self.ops) || self.emits.iter().any(|(_, ops)| reads(ops))
    }

    fn canonical(&self) -> String {
        self.canonical.clone()
    }

    fn upcast(&self, mut event: UpcastEvent) -> Result<Vec<UpcastEvent>, super::BoxError> {
        if self.emits.is_empty() {
            return Ok(Vec::new());
        }
        apply_all(&self.ops, 0, &mut event)?;
        let mut outputs = Vec::with_capacity(self.emits.len());
        let mut offset = self.ops.len();
        for (index, (kind, ops)) in self.emits.iter().enumerate() {
            let mut output = if index + 1 == self.emits.len() {
                std::mem::take(&mut event)
            } else {
                event.clone()
            };
            output.event_type.clone_from(&kind.event_type);
            output.version = kind.version;
            apply_all(ops, offset, &mut output)?;
            offset += ops.len();
            outputs.push(output);
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<FileUpcaster, FileError> {
        FileUpcaster::parse(Path::new("upcasters/x.toml"), text)
    }

    fn event(data: serde_json::Value) -> UpcastEvent {
        UpcastEvent {
            event_type: "OrderPlaced".into(),
            version: 2,
            data,
            metadata: json!({}),
        }
    }

    #[test]
    fn splits_into_emits_with_their_own_ops() {
        let up = parse(
            r#"
            type = "OrderPlaced"
            from = 2
            [[ops]]
            set = { path = "/currency", value = "EUR" }
            [[emit]]
            ops = [{ remove = ["/address"] }]
            [[emit]]
            type = "ShippingAddressSet"
            version = 1
            ops = [{ jq = "{order_id, address}" }]
            "#,
        )
        .unwrap();
        assert_eq!(
            up.outputs(),
            vec![
                EventKind::new("OrderPlaced", 3),
                EventKind::new("ShippingAddressSet", 1)
            ]
        );
        let out = up
            .upcast(event(json!({"order_id": "o1", "address": "Main St"})))
            .unwrap();
        assert_eq!(out[0].data, json!({"order_id": "o1", "currency": "EUR"}));
        assert_eq!(
            (out[1].event_type.as_str(), out[1].version),
            ("ShippingAddressSet", 1)
        );
        assert_eq!(out[1].data, json!({"order_id": "o1", "address": "Main St"}));
    }

    #[test]
    fn drop_renames_and_failures_name_the_op() {
        let drop = parse("type = \"CartViewed\"\nfrom = 1\ndrop = true").unwrap();
        assert!(drop.upcast(event(json!({}))).unwrap().is_empty());
        let rename = parse("type = \"ItemAdded\"\nfrom = 1\nrename = \"LineItemAdded\"\n[[ops]]\nconvert = { path = \"/price\", to = \"cents\" }").unwrap();
        assert_eq!(rename.outputs(), vec![EventKind::new("LineItemAdded", 2)]);
        let err = rename.upcast(event(json!({"price": "x"}))).unwrap_err();
        assert_eq!(err.to_string(), "op 1 (convert)");
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let unknown = parse("type = \"T\"\nfrom = 1\n[[ops]]\nfrobnicate = 1").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown variant `frobnicate`"),
            "{unknown}"
        );
        assert!(
            unknown
                .to_string()
                .starts_with("upcaster file upcasters/x.toml:"),
            "{unknown}"
        );
        let pointer = parse("type = \"T\"\nfrom = 1\n[[ops]]\nremove = [\"total\"]").unwrap_err();
        assert!(
            pointer.to_string().contains("must start with '/'"),
            "{pointer}"
        );
        let jq = parse("type = \"T\"\nfrom = 1\n[[ops]]\njq = \".a |||\"").unwrap_err();
        assert!(
            matches!(
                jq,
                FileError::Op {
                    index: 1,
                    name: "jq",
                    ..
                }
            ),
            "{jq}"
        );
        let contradiction = parse("type = \"T\"\nfrom = 1\ndrop = true\nto = 3").unwrap_err();
        assert!(matches!(contradiction, FileError::Invalid { .. }));
    }

    #[test]
    fn canonical_form_ignores_comments_and_layout() {
        let a = parse("type = \"T\"\nfrom = 1\n[[ops]]\nremove = [\"/a\"]").unwrap();
        let b = parse("# note\nfrom = 1\ntype = \"T\"\nops = [ { remove = [ \"/a\" ] } ]").unwrap();
        assert_eq!(a.canonical(), b.canonical());
    }
}
