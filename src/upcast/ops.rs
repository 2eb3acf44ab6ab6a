//! The operations of declarative upcaster files, and how each one changes a payload.
//!
//! An [`Op`] is one `[[ops]]` table of an upcaster file, e.g.
//! `concat = { fields = ["/first_name", "/last_name"], separator = " ", into = "/full_name" }`.
//! Ops are deserialized straight from TOML, so an unknown op name or a bad pointer is reported
//! by the TOML reader with its line and column. [`CompiledOp`] adds what is prepared once per
//! file (a compiled jq filter) and applies the op to one event's `data`, reading `metadata`.
//!
//! Reading a missing field is an error unless the op says `optional = true`: an old event that
//! lacks a field the upcaster relies on is bad data, and the migration's error policy decides
//! what happens to it. `remove` of a missing field is not an error.

use super::jq::{JqError, JqFilter};
use super::pointer::{type_name, Pointer, PointerError};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::str::FromStr;

/// Errors of an op, at load time or on one event.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A pointer that cannot be written through.
    #[error(transparent)]
    Pointer(#[from] PointerError),
    /// A field the op reads is absent.
    #[error("{pointer}: field is missing")]
    Missing { pointer: String },
    /// A metadata key the op reads is absent and the op has no default.
    #[error("metadata {pointer}: field is missing and the op has no default")]
    MissingMetadata { pointer: String },
    /// A field of the wrong JSON type.
    #[error("{pointer}: expected {expected}, found {found}")]
    WrongType {
        pointer: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A value that does not convert.
    #[error("{pointer}: cannot convert {value} to {to}: {reason}")]
    Convert {
        pointer: String,
        value: String,
        to: &'static str,
        reason: String,
    },
    /// A string that did not split into the expected number of parts.
    #[error("{pointer}: expected {expected} parts separated by {separator:?}, found {found}")]
    Parts {
        pointer: String,
        separator: String,
        expected: usize,
        found: usize,
    },
    /// A timestamp format that chrono does not understand.
    #[error("timestamp format {format:?} is not valid")]
    BadFormat { format: String },
    /// The jq escape hatch failed.
    #[error(transparent)]
    Jq(#[from] JqError),
}

/// `from` and `to` pointers (rename/move and copy).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveArgs {
    pub from: Pointer,
    pub to: Pointer,
    #[serde(default)]
    pub optional: bool,
}

/// A pointer and a literal value (add, set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathValue {
    pub path: Pointer,
    pub value: Value,
}

/// Value mapping: replaces a value found in `values` (matched by its string form).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapArgs {
    pub path: Pointer,
    pub values: BTreeMap<String, Value>,
    /// Used for a value not in `values`; without it such a value stays as it is.
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub optional: bool,
}

/// Joins strings or numbers into one string.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcatArgs {
    pub fields: Vec<Pointer>,
    #[serde(default)]
    pub separator: String,
    pub into: Pointer,
}

/// Splits a string into exactly `into.len()` parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitArgs {
    pub from: Pointer,
    pub separator: String,
    pub into: Vec<Pointer>,
    #[serde(default)]
    pub optional: bool,
}

/// The target type of `convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvertTo {
    String,
    Int,
    Float,
    Bool,
    /// A decimal amount (string or number) to integer cents; more than 2 decimals is an error.
    Cents,
    /// A timestamp from `from_format` to `to_format` (`rfc3339`, `unix`, `unix_ms`, or strftime).
    Timestamp,
}

/// Converts a value in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertArgs {
    pub path: Pointer,
    pub to: ConvertTo,
    #[serde(default)]
    pub from_format: Option<String>,
    #[serde(default)]
    pub to_format: Option<String>,
    #[serde(default)]
    pub optional: bool,
}

/// Copies a value from the event's metadata into its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromMetadataArgs {
    pub from: Pointer,
    pub into: Pointer,
    #[serde(default)]
    pub default: Option<Value>,
}

/// One operation of a declarative upcaster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Moves a value to another pointer.
    Rename(MoveArgs),
    /// Copies a value to another pointer.
    Copy(MoveArgs),
    /// Sets a value only where none is present.
    Add(PathValue),
    /// Sets a value, replacing any present.
    Set(PathValue),
    /// Removes fields; a missing one is fine.
    Remove(Vec<Pointer>),
    /// Maps values through a table.
    Map(MapArgs),
    /// Joins several fields into one string.
    Concat(ConcatArgs),
    /// Splits a string field into several.
    Split(SplitArgs),
    /// Converts a field's type.
    Convert(ConvertArgs),
    /// Takes a value from metadata.
    FromMetadata(FromMetadataArgs),
    /// Replaces the payload with the one output of a jq filter.
    Jq(String),
}

impl Op {
    /// The op's name as written in files.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Rename(_) => "rename",
            Op::Copy(_) => "copy",
            Op::Add(_) => "add",
            Op::Set(_) => "set",
            Op::Remove(_) => "remove",
            Op::Map(_) => "map",
            Op::Concat(_) => "concat",
            Op::Split(_) => "split",
            Op::Convert(_) => "convert",
            Op::FromMetadata(_) => "from_metadata",
            Op::Jq(_) => "jq",
        }
    }
}

/// An op ready to run: checked, with its jq filter compiled.
#[derive(Debug)]
pub struct CompiledOp {
    op: Op,
    jq: Option<JqFilter>,
}

impl CompiledOp {
    /// Checks what can be checked before any event: formats and jq text.
    pub fn compile(op: Op) -> Result<Self, OpError> {
        let jq = match &op {
            Op::Jq(text) => Some(JqFilter::compile(text)?),
            Op::Convert(args) => {
                for format in [&args.from_format, &args.to_format].into_iter().flatten() {
                    check_time_format(format)?;
                }
                None
            }
            _ => None,
        };
        Ok(CompiledOp { op, jq })
    }

    /// The op as written.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// Applies the op to `data`, reading `metadata`.
    pub fn apply(&self, data: &mut Value, metadata: &Value) -> Result<(), OpError> {
        match &self.op {
            Op::Rename(args) => match required(data, &args.from, args.optional)? {
                Some(_) => {
                    let value = args.from.take(data).unwrap_or_default();
                    Ok(args.to.set(data, value)?)
                }
                None => Ok(()),
            },
            Op::Copy(args) => match required(data, &args.from, args.optional)? {
                Some(value) => Ok(args.to.set(data, value.clone())?),
                None => Ok(()),
            },
            Op::Add(args) if args.path.get(data).is_some() => Ok(()),
            Op::Add(args) | Op::Set(args) => Ok(args.path.set(data, args.value.clone())?),
            Op::Remove(pointers) => {
                for pointer in pointers {
                    pointer.take(data);
                }
                Ok(())
            }
            Op::Map(args) => map_value(data, args),
            Op::Concat(args) => concat(data, args),
            Op::Split(args) => split(data, args),
            Op::Convert(args) => match required(data, &args.path, args.optional)? {
                Some(value) => {
                    let converted = convert(value, args)?;
                    Ok(args.path.set(data, converted)?)
                }
                None => Ok(()),
            },
            Op::FromMetadata(args) => {
                let value = match (args.from.get(metadata), &args.default) {
                    (Some(value), _) => value.clone(),
                    (None, Some(default)) => default.clone(),
                    (None, None) => {
                        return Err(OpError::MissingMetadata {
                            pointer: args.from.to_string(),
                        })
                    }
                };
                Ok(args.into.set(data, value)?)
            }
            Op::Jq(_) => {
                let filter = self
                    .jq
                    .as_ref()
                    .expect("jq ops are compiled with their filter");
                if !filter
                    .native()
                    .is_some_and(|update| update.apply_in_place(data))
                {
                    *data = filter.run(data)?;
                }
                Ok(())
            }
        }
    }
}

fn required<'a>(
    data: &'a Value,
    pointer: &Pointer,
    optional: bool,
) -> Result<Option<&'a Value>, OpError> {
    match pointer.get(data) {
        Some(value) => Ok(Some(value)),
        None if optional => Ok(None),
        None => Err(OpError::Missing {
            pointer: pointer.to_string(),
        }),
    }
}

fn string_form(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn map_value(data: &mut Value, args: &MapArgs) -> Result<(), OpError> {
    let Some(value) = required(data, &args.path, args.optional)? else {
        return Ok(());
    };
    let replacement = match args.values.get(&string_form(value)) {
        Some(mapped) => mapped.clone(),
        None => match &args.default {
            Some(default) => default.clone(),
            None => return Ok(()),
        },
    };
    Ok(args.path.set(data, replacement)?)
}

fn concat(data: &mut Value, args: &ConcatArgs) -> Result<(), OpError> {
    let mut parts = Vec::with_capacity(args.fields.len());
    for field in &args.fields {
        match required(data, field, false)? {
            Some(Value::String(s)) => parts.push(s.clone()),
            Some(value @ (Value::Number(_) | Value::Bool(_))) => parts.push(value.to_string()),
            Some(other) => {
                return Err(OpError::WrongType {
                    pointer: field.to_string(),
                    expected: "a string or number",
                    found: type_name(other),
                })
            }
            None => unreachable!("required() without optional returns a value or an error"),
        }
    }
    Ok(args
        .into
        .set(data, Value::String(parts.join(&args.separator)))?)
}

fn split(data: &mut Value, args: &SplitArgs) -> Result<(), OpError> {
    let text = match required(data, &args.from, args.optional)? {
        None => return Ok(()),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(OpError::WrongType {
                pointer: args.from.to_string(),
                expected: "a string",
                found: type_name(other),
            })
        }
    };
    let parts: Vec<&str> = text
        .splitn(args.into.len(), args.separator.as_str())
        .collect();
    if parts.len() != args.into.len() {
        return Err(OpError::Parts {
            pointer: args.from.to_string(),
            separator: args.separator.clone(),
            expected: args.into.len(),
            found: parts.len(),
        });
    }
    for (pointer, part) in args.into.iter().zip(parts) {
        pointer.set(data, Value::String(part.to_string()))?;
    }
    Ok(())
}

fn convert(value: &Value, args: &ConvertArgs) -> Result<Value, OpError> {
    let fail = |to: &'static str, reason: &str| OpError::Convert {
        pointer: args.path.to_string(),
        value: value.to_string(),
        to,
        reason: reason.to_string(),
    };
    match (args.to, value) {
        (ConvertTo::String, Value::String(_)) => Ok(value.clone()),
        (ConvertTo::String, Value::Number(_) | Value::Bool(_)) => {
            Ok(Value::String(value.to_string()))
        }
        (ConvertTo::String, _) => Err(fail("string", "only numbers and booleans convert")),
        (ConvertTo::Int, Value::Bool(b)) => Ok(Value::from(i64::from(*b))),
        (ConvertTo::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        (ConvertTo::Int, Value::Number(n)) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Value::from(f as i64)),
            _ => Err(fail("int", "it has a fractional part")),
        },
        (ConvertTo::Int, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|e| fail("int", &e.to_string())),
        (ConvertTo::Int, _) => Err(fail("int", "only numbers, strings and booleans convert")),
        (ConvertTo::Float, Value::Number(n)) => Ok(Value::from(n.as_f64().unwrap_or_default())),
        (ConvertTo::Float, Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::from(f)),
            Ok(_) => Err(fail("float", "it is not finite")),
            Err(e) => Err(fail("float", &e.to_string())),
        },
        (ConvertTo::Float, _) => Err(fail("float", "only numbers and strings convert")),
        (ConvertTo::Bool, Value::Bool(_)) => Ok(value.clone()),
        (ConvertTo::Bool, _) => match string_form(value).trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(fail("bool", "expected true/false, yes/no or 1/0")),
        },
        (ConvertTo::Cents, Value::String(_) | Value::Number(_)) => {
            let decimal = Decimal::from_str(string_form(value).trim())
                .map_err(|e| fail("cents", &e.to_string()))?;
            let cents = decimal * Decimal::ONE_HUNDRED;
            if !cents.fract().is_zero() {
                return Err(fail("cents", "it has more than 2 decimal places"));
            }
            cents
                .to_i64()
                .map(Value::from)
                .ok_or_else(|| fail("cents", "it is out of range"))
        }
        (ConvertTo::Cents, _) => Err(fail("cents", "only decimal strings and numbers convert")),
        (ConvertTo::Timestamp, _) => {
            let from = args.from_format.as_deref().unwrap_or("rfc3339");
            let to = args.to_format.as_deref().unwrap_or("rfc3339");
            let time = parse_time(value, from)
                .ok_or_else(|| fail("timestamp", &format!("it is not in format {from:?}")))?;
            Ok(format_time(time, to))
        }
    }
}

fn check_time_format(format: &str) -> Result<(), OpError> {
    use chrono::format::{Item, StrftimeItems};
    let known = matches!(format, "rfc3339" | "unix" | "unix_ms");
    if known || !StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
        Ok(())
    } else {
        Err(OpError::BadFormat {
            format: format.to_string(),
        })
    }
}

fn parse_time(value: &Value, format: &str) -> Option<DateTime<Utc>> {
    let number = || match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match format {
        "unix" => Utc
            .timestamp_millis_opt((number()? * 1000.0).round() as i64)
            .single(),
        "unix_ms" => Utc.timestamp_millis_opt(number()?.round() as i64).single(),
        "rfc3339" => DateTime::parse_from_rfc3339(value.as_str()?)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        pattern => NaiveDateTime::parse_from_str(value.as_str()?, pattern)
            .ok()
            .map(|t| t.and_utc()),
    }
}

fn format_time(time: DateTime<Utc>, format: &str) -> Value {
    match format {
        "unix" => Value::from(time.timestamp()),
        "unix_ms" => Value::from(time.timestamp_millis()),
        "rfc3339" => Value::String(time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        pattern => Value::String(time.format(pattern).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(op_toml: &str, mut data: Value, metadata: Value) -> Result<Value, OpError> {
        #[derive(Deserialize)]
        struct One {
            op: Op,
        }
        let one: One = toml::from_str(&format!("op = {op_toml}")).expect("op parses");
        CompiledOp::compile(one.op)?.apply(&mut data, &metadata)?;
        Ok(data)
    }

    #[test]
    fn field_ops_move_copy_add_set_remove() {
        let data = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(
            run(
                r#"{ rename = { from = "/a", to = "/x/y" } }"#,
                data.clone(),
                json!({})
            )
            .unwrap(),
            json!({"x": {"y": 1}, "b": {"c": 2}})
        );
        assert_eq!(
            run(
                r#"{ copy = { from = "/b/c", to = "/d" } }"#,
                data.clone(),
                json!({})
            )
            .unwrap()["d"],
            json!(2)
        );
        assert_eq!(
            run(
                r#"{ add = { path = "/a", value = 9 } }"#,
                data.clone(),
                json!({})
            )
            .unwrap()["a"],
            json!(1)
        );
        assert_eq!(
            run(
                r#"{ set = { path = "/a", value = 9 } }"#,
                data.clone(),
                json!({})
            )
            .unwrap()["a"],
            json!(9)
        );
        assert_eq!(
            run(r#"{ remove = ["/a", "/zz"] }"#, data.clone(), json!({})).unwrap(),
            json!({"b": {"c": 2}})
        );
        let missing = run(
            r#"{ rename = { from = "/zz", to = "/y" } }"#,
            data.clone(),
            json!({}),
        );
        assert!(matches!(missing, Err(OpError::Missing { .. })));
        assert_eq!(
            run(
                r#"{ rename = { from = "/zz", to = "/y", optional = true } }"#,
                data.clone(),
                json!({})
            )
            .unwrap(),
            data
        );
    }

    #[test]
    fn string_ops_concat_split_map() {
        let data = json!({"first": "Ada", "last": "Lovelace", "t": "DHL:123:x", "s": "A"});
        let joined = run(
            r#"{ concat = { fields = ["/first", "/last"], separator = " ", into = "/full" } }"#,
            data.clone(),
            json!({}),
        )
        .unwrap();
        assert_eq!(joined["full"], json!("Ada Lovelace"));
        let parts = run(
            r#"{ split = { from = "/t", separator = ":", into = ["/carrier", "/code"] } }"#,
            data.clone(),
            json!({}),
        )
        .unwrap();
        assert_eq!(
            (parts["carrier"].clone(), parts["code"].clone()),
            (json!("DHL"), json!("123:x"))
        );
        let too_few = run(
            r#"{ split = { from = "/first", separator = ":", into = ["/a", "/b"] } }"#,
            data.clone(),
            json!({}),
        );
        assert!(matches!(
            too_few,
            Err(OpError::Parts {
                expected: 2,
                found: 1,
                ..
            })
        ));
        let mapped = run(
            r#"{ map = { path = "/s", values = { A = "active" } } }"#,
            data.clone(),
            json!({}),
        )
        .unwrap();
        assert_eq!(mapped["s"], json!("active"));
        let defaulted = run(
            r#"{ map = { path = "/first", values = { A = 1 }, default = "other" } }"#,
            data,
            json!({}),
        )
        .unwrap();
        assert_eq!(defaulted["first"], json!("other"));
    }

    #[test]
    fn conversions_are_exact_or_errors() {
        let conv = |to: &str, value: Value| {
            run(
                &format!(r#"{{ convert = {{ path = "/v", to = "{to}" }} }}"#),
                json!({ "v": value }),
                json!({}),
            )
            .map(|d| d["v"].clone())
        };
        assert_eq!(conv("cents", json!("12.3")).unwrap(), json!(1230));
        assert_eq!(conv("cents", json!(7)).unwrap(), json!(700));
        assert!(matches!(
            conv("cents", json!("1.005")),
            Err(OpError::Convert { .. })
        ));
        assert_eq!(conv("int", json!(" 42 ")).unwrap(), json!(42));
        assert!(conv("int", json!(1.5)).is_err());
        assert_eq!(conv("float", json!("2.5")).unwrap(), json!(2.5));
        assert_eq!(conv("bool", json!("Yes")).unwrap(), json!(true));
        assert_eq!(conv("string", json!(3)).unwrap(), json!("3"));
        assert!(conv("string", json!(null)).is_err());
    }

    #[test]
    fn timestamps_convert_between_formats() {
        let op = r#"{ convert = { path = "/t", to = "timestamp", from_format = "unix", to_format = "rfc3339" } }"#;
        assert_eq!(
            run(op, json!({"t": 1700000000}), json!({})).unwrap()["t"],
            json!("2023-11-14T22:13:20Z")
        );
        let op = r#"{ convert = { path = "/t", to = "timestamp", from_format = "%d/%m/%Y %H:%M", to_format = "unix_ms" } }"#;
        assert_eq!(
            run(op, json!({"t": "14/11/2023 22:13"}), json!({})).unwrap()["t"],
            json!(1699999980000i64)
        );
        let bad = r#"{ convert = { path = "/t", to = "timestamp", from_format = "%Q" } }"#;
        assert!(matches!(
            run(bad, json!({}), json!({})),
            Err(OpError::BadFormat { .. })
        ));
    }

    #[test]
    fn metadata_and_jq() {
        let op = r#"{ from_metadata = { from = "/user", into = "/by" } }"#;
        assert_eq!(
            run(op, json!({}), json!({"user": "u1"})).unwrap(),
            json!({"by": "u1"})
        );
        assert!(matches!(
            run(op, json!({}), json!({})),
            Err(OpError::MissingMetadata { .. })
        ));
        let jq = r#"{ jq = ".n = (.n * 2)" }"#;
        assert_eq!(
            run(jq, json!({"n": 4}), json!({})).unwrap(),
            json!({"n": 8})
        );
    }
}
