//! The event envelope: what one event is, everywhere in recast.
//!
//! [`Event`] is the envelope of DESIGN.md (stream, revision, position, id, type, schema version,
//! data, metadata, recorded_at). Its `data` and `metadata` are [`Payload`]s, which keep the
//! original JSON text ([`RawValue`]) until something asks for a parsed [`Value`]: events that no
//! upcaster touches pass through recast as the bytes they came in as.
//!
//! This module also owns the rules every store shares: which stream names are allowed
//! ([`validate_stream_name`]), where a schema version comes from when a store has no version
//! field ([`VersionSource`]), and the canonical form used by checksums ([`canonical_json`]).

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;
use uuid::Uuid;

mod envelope;
pub use envelope::EnvelopeRef;

/// Errors about a single event or stream name.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A stream name that recast refuses everywhere.
    #[error("stream name {name:?} is not allowed: {reason}")]
    BadStreamName { name: String, reason: &'static str },
    /// An event type that is empty.
    #[error("event {id}: the event type is empty")]
    EmptyType { id: Uuid },
    /// Schema versions start at 1.
    #[error("event {id}: schema version 0 is not allowed (versions start at 1)")]
    ZeroVersion { id: Uuid },
    /// A payload whose JSON text does not parse.
    #[error("event {id}: payload is not valid JSON")]
    Payload {
        id: Uuid,
        #[source]
        source: serde_json::Error,
    },
}

/// An event type together with its schema version: what an upcaster is registered for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventKind {
    /// Event type name, e.g. `OrderPlaced`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version, >= 1.
    pub version: u32,
}

impl EventKind {
    /// A kind from a type name and a version.
    pub fn new(event_type: impl Into<String>, version: u32) -> Self {
        EventKind {
            event_type: event_type.into(),
            version,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.event_type, self.version)
    }
}

/// A JSON payload kept as its original text until it is parsed on demand.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The JSON text as read, not parsed.
    Raw(Box<RawValue>),
    /// A parsed value (after an upcaster or import built it).
    Parsed(Value),
}

impl Payload {
    /// An empty JSON object, the default metadata.
    pub fn empty_object() -> Self {
        Payload::Parsed(Value::Object(Default::default()))
    }

    /// The payload as a parsed value, parsing the raw text on first use.
    pub fn parsed(&mut self) -> Result<&mut Value, serde_json::Error> {
        if let Payload::Raw(raw) = self {
            *self = Payload::Parsed(serde_json::from_str(raw.get())?);
        }
        match self {
            Payload::Parsed(value) => Ok(value),
            Payload::Raw(_) => unreachable!("raw payload was just replaced"),
        }
    }

    /// A parsed copy of the payload, leaving `self` as it is.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Payload::Raw(raw) => serde_json::from_str(raw.get()),
            Payload::Parsed(value) => Ok(value.clone()),
        }
    }

    /// The payload as a value: borrowed when already parsed, parsed from the text otherwise.
    pub fn as_value(&self) -> Result<std::borrow::Cow<'_, Value>, serde_json::Error> {
        match self {
            Payload::Raw(raw) => serde_json::from_str(raw.get()).map(std::borrow::Cow::Owned),
            Payload::Parsed(value) => Ok(std::borrow::Cow::Borrowed(value)),
        }
    }

    /// True while the payload has not been parsed.
    pub fn is_raw(&self) -> bool {
        matches!(self, Payload::Raw(_))
    }

    /// The payload as text: a parsed value is printed as compact JSON (the bytes every writer
    /// of recast would give it) and dropped; raw text stays as it is.
    pub fn into_raw(self) -> Self {
        match self {
            Payload::Raw(raw) => Payload::Raw(raw),
            Payload::Parsed(value) => Payload::Raw(
                serde_json::value::to_raw_value(&value).expect("a JSON value always prints"),
            ),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Raw(raw) => raw.serialize(serializer),
            Payload::Parsed(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Payload::Raw)
    }
}

fn first_version() -> u32 {
    1
}

/// One event: the envelope of DESIGN.md. It is written through [`EnvelopeRef`], the one
/// definition of the serialized shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Stream name, e.g. `order-42`.
    pub stream: String,
    /// 0-based position of the event inside its stream.
    pub revision: u64,
    /// Position in the whole log, assigned by the store.
    #[serde(default)]
    pub position: Option<u64>,
    /// Event id.
    pub id: Uuid,
    /// Event type name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version of `data` (absent means 1).
    #[serde(default = "first_version")]
    pub version: u32,
    /// The payload.
    pub data: Payload,
    /// Metadata: a JSON object (correlation ids, user, ...).
    #[serde(default = "Payload::empty_object")]
    pub metadata: Payload,
    /// RFC 3339 timestamp of when the event was recorded.
    #[serde(default)]
    pub recorded_at: Option<String>,
}

impl Event {
    /// The `(type, version)` of this event.
    pub fn kind(&self) -> EventKind {
        EventKind::new(self.event_type.clone(), self.version)
    }

    /// The part of the stream name before the first `-`.
    pub fn category(&self) -> &str {
        stream_category(&self.stream)
    }

    /// Checks the rules a parsed envelope must follow beyond its JSON shape.
    pub fn validate(&self) -> Result<(), EventError> {
        validate_stream_name(&self.stream)?;
        if self.event_type.is_empty() {
            return Err(EventError::EmptyType { id: self.id });
        }
        if self.version == 0 {
            return Err(EventError::ZeroVersion { id: self.id });
        }
        Ok(())
    }

    /// One line of JSON in the envelope shape (no trailing newline).
    pub fn to_json_line(&self) -> String {
        let mut line = Vec::with_capacity(256);
        EnvelopeRef::from(self).write_json(&mut line);
        String::from_utf8(line).expect("an envelope is written as UTF-8")
    }
}

/// The part of a stream name before the first `-` (the whole name when there is none).
pub fn stream_category(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// The part of a stream name after the first `-` (empty when there is none).
pub fn stream_id(stream: &str) -> &str {
    stream.split_once('-').map_or("", |(_, id)| id)
}

/// Longest stream name accepted, in bytes.
pub const MAX_STREAM_NAME: usize = 1024;

/// Checks a stream name. Stream names may end up in file names and file paths (exports,
/// dead-letter files, other tools), so recast refuses, everywhere, names that could climb out
/// of a folder: a `..` segment or a leading path separator; and names no store handles well:
/// empty, over [`MAX_STREAM_NAME`] bytes, or with control characters.
pub fn validate_stream_name(name: &str) -> Result<(), EventError> {
    // Most names are printable ASCII without separators: one byte scan settles them (but a
    // name without separators is still one path segment, which must not be `..`).
    let plain = || {
        name.bytes()
            .all(|b| (0x20..0x7F).contains(&b) && b != b'/' && b != b'\\')
    };
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_STREAM_NAME {
        Some("it is longer than 1024 bytes")
    } else if plain() && name != ".." {
        None
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.starts_with('/') || name.starts_with('\\') {
        Some("it starts with a path separator")
    } else if name.split(['/', '\\']).any(|segment| segment == "..") {
        Some("it contains a `..` path segment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EventError::BadStreamName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Where the schema version of an event comes from, for stores without a version field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VersionSource {
    /// The envelope's `version` field (JSONL, sled); absent means 1.
    #[default]
    Envelope,
    /// A metadata key holding an integer or a decimal string, e.g. `schema_version`.
    Metadata(String),
    /// A suffix of the type name: `OrderPlaced.v2` or `OrderPlaced_v2` (stripped from the type).
    TypeSuffix,
}

impl VersionSource {
    /// Parses `envelope`, `metadata:KEY` or `type-suffix`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "envelope" => Some(VersionSource::Envelope),
            "type-suffix" => Some(VersionSource::TypeSuffix),
            other => other
                .strip_prefix("metadata:")
                .filter(|key| !key.is_empty())
                .map(|key| VersionSource::Metadata(key.to_string())),
        }
    }

    /// The type name and schema version of an event with this scheme. `None` when the version
    /// is present but not a positive integer; a missing version means 1.
    pub fn resolve(&self, event_type: &str, metadata: &Value) -> Option<(String, u32)> {
        match self {
            VersionSource::Envelope => Some((event_type.to_string(), 1)),
            VersionSource::Metadata(key) => match metadata.get(key) {
                None | Some(Value::Null) => Some((event_type.to_string(), 1)),
                Some(value) => version_from_json(value).map(|v| (event_type.to_string(), v)),
            },
            VersionSource::TypeSuffix => Some(split_type_suffix(event_type)),
        }
    }
}

/// A positive schema version from a JSON number or a decimal string.
pub fn version_from_json(value: &Value) -> Option<u32> {
    let version = match value {
        Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        Value::String(s) => s.trim().parse::<u32>().ok(),
        _ => None,
    }?;
    (version >= 1).then_some(version)
}

/// Splits `OrderPlaced.v2` / `OrderPlaced_v2` into `("OrderPlaced", 2)`; no suffix means v1.
pub fn split_type_suffix(event_type: &str) -> (String, u32) {
    for separator in [".v", "_v"] {
        if let Some((base, digits)) = event_type.rsplit_once(separator) {
            if !base.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            {
                if let Ok(version) = digits.parse::<u32>() {
                    if version >= 1 {
                        return (base.to_string(), version);
                    }
                }
            }
        }
    }
    (event_type.to_string(), 1)
}

/// Parses JSON text held as bytes (a stored record): one UTF-8 check of the whole text, then
/// serde_json's `str` reader. Its byte reader (`from_slice`) checks every string again as it
/// reads it: with it, a bounded rebuild (reloading states) took about 4% more CPU, and a
/// rebuild from the sled event store 3-4% more (interleaved pairs, 1M events).
pub fn json_from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let text = std::str::from_utf8(bytes).map_err(serde::de::Error::custom)?;
    serde_json::from_str(text)
}

/// Writes `value` as JSON with object keys sorted, whatever map order serde_json was built with,
/// so that equal values always give equal text (the basis of every checksum).
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_round_trips_and_keeps_raw_payload_bytes() {
        let line = r#"{"stream":"order-1","revision":0,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"OrderPlaced","version":2,"data":{"b": 1,  "a":2},"metadata":{},"recorded_at":"2024-01-01T00:00:00Z"}"#;
        let event: Event = serde_json::from_str(line).unwrap();
        assert!(event.data.is_raw());
        assert_eq!(event.kind(), EventKind::new("OrderPlaced", 2));
        assert!(event.to_json_line().contains(r#""data":{"b": 1,  "a":2}"#));
    }

    #[test]
    fn a_parsed_payload_prints_as_its_writers_would_write_it() {
        let value = json!({"b": [1, 2.5, null], "a": "\u{1}\"", "c": {}});
        let printed = Payload::Parsed(value.clone()).into_raw();
        let Payload::Raw(raw) = &printed else {
            panic!("a parsed payload stays parsed: {printed:?}");
        };
        assert_eq!(raw.get(), serde_json::to_string(&value).unwrap());
        let text = r#"{ "kept" : "as it came" }"#;
        let kept = Payload::Raw(RawValue::from_string(text.into()).unwrap()).into_raw();
        assert!(matches!(&kept, Payload::Raw(raw) if raw.get() == text));
    }

    #[test]
    fn envelopes_are_written_in_field_order_without_absent_fields() {
        let full = r#"{"stream":"order-1","revision":3,"position":9,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"T","version":2,"data":{"b": 1},"metadata":{"m":"x\"y"},"recorded_at":"2024-01-01T00:00:00Z"}"#;
        let event: Event = serde_json::from_str(full).unwrap();
        assert_eq!(event.to_json_line(), full);
        let sparse = r#"{"revision":0,"stream":"s","type":"T","id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","data":[]}"#;
        let event: Event = serde_json::from_str(sparse).unwrap();
        let written = r#"{"stream":"s","revision":0,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"T","version":1,"data":[],"metadata":{}}"#;
        assert_eq!(event.to_json_line(), written);
        let borrowed = serde_json::to_string(&EnvelopeRef::from(&event)).unwrap();
        assert_eq!(borrowed, written);
    }

    #[test]
    fn missing_version_means_one_and_missing_type_is_an_error() {
        let line = r#"{"stream":"s","revision":0,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"T","data":{}}"#;
        assert_eq!(serde_json::from_str::<Event>(line).unwrap().version, 1);
        let no_type = line.replace(r#""type":"T","#, "");
        let err = serde_json::from_str::<Event>(&no_type).unwrap_err();
        assert!(err.to_string().contains("missing field `type`"), "{err}");
        let bad_version = line.replace(r#""type":"T""#, r#""type":"T","version":"two""#);
        assert!(serde_json::from_str::<Event>(&bad_version).is_err());
    }

    #[test]
    fn stream_names_that_climb_out_of_a_folder_are_refused() {
        for bad in [
            "", "../etc", "a/../b", "/abs", "a\\..\\b", "..", "a\nb", "a\u{7f}", "a\u{85}b",
        ] {
            assert!(validate_stream_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["order-1", "Talk:Foo/Archive 1", "$ce-order", "a..b"] {
            assert!(validate_stream_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn version_sources_resolve_type_and_version() {
        assert_eq!(
            split_type_suffix("OrderPlaced.v2"),
            ("OrderPlaced".into(), 2)
        );
        assert_eq!(
            split_type_suffix("OrderPlaced_v12"),
            ("OrderPlaced".into(), 12)
        );
        assert_eq!(split_type_suffix("Order_vx"), ("Order_vx".into(), 1));
        let meta = json!({"schema_version": "3"});
        let source = VersionSource::parse("metadata:schema_version").unwrap();
        assert_eq!(source.resolve("T", &meta), Some(("T".into(), 3)));
        assert_eq!(source.resolve("T", &json!({"schema_version": 0})), None);
        assert_eq!(source.resolve("T", &json!({})), Some(("T".into(), 1)));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let mut out = String::new();
        canonical_json(
            &json!({"b": {"d": 1, "c": [2, {"f": 1, "e": 0}]}, "a": "x"}),
            &mut out,
        );
        assert_eq!(out, r#"{"a":"x","b":{"c":[2,{"e":0,"f":1}],"d":1}}"#);
    }
}
