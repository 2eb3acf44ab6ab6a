//! `recast import`: NDJSON from elsewhere into a store, with field mappings.
//!
//! Each input line is a JSON object. An [`ImportMapping`] says where the envelope's fields
//! are, as JSON pointers: the stream (required, through a template such as `page-{value}`),
//! the type, id, version and timestamp, and optionally which part is the payload and which the
//! metadata (default: the whole line is the payload, metadata is empty). Ids that are UUIDs are
//! kept; any other id text becomes a UUID derived from it, and a line without an id gets one
//! derived from its file name and line number, so importing the same file into a sled store
//! twice writes nothing the second time. Input order is kept; revisions are assigned per
//! stream by the target.

use crate::event::Payload;
use crate::event::{validate_stream_name, version_from_json, VersionSource};
use crate::store::{AppendRequest, EventSink, ExpectedRevision, NewEvent, StoreError};
use crate::upcast::pointer::Pointer;
use crate::upcast::RECAST_NAMESPACE;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Errors of an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input cannot be read.
    #[error("{path}: cannot read it")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line that cannot be imported.
    #[error("{path}:{line}: {message}")]
    BadLine {
        path: PathBuf,
        line: u64,
        message: String,
    },
    /// The target failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the envelope's fields are in each input object.
#[derive(Debug, Clone)]
pub struct ImportMapping {
    /// The stream value (string or number).
    pub stream: Pointer,
    /// Stream name made from the value: `{value}` is replaced.
    pub stream_template: String,
    /// The event type (string).
    pub event_type: Pointer,
    /// The event id (a UUID, or any text to derive one from).
    pub id: Option<Pointer>,
    /// The schema version; absent: from `version_source`, else 1.
    pub version: Option<Pointer>,
    /// How to read the version when `version` is not given (type suffix, metadata key).
    pub version_source: VersionSource,
    /// The timestamp: RFC 3339 text or unix seconds.
    pub timestamp: Option<Pointer>,
    /// The payload; absent: the whole object.
    pub data: Option<Pointer>,
    /// The metadata; absent: empty.
    pub metadata: Option<Pointer>,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// Lines read (events offered).
    pub events: u64,
    /// Events written.
    pub written: u64,
    /// Events already in the target (same id and content).
    pub duplicates: u64,
    /// Distinct streams.
    pub streams: u64,
}

const BATCH: usize = 1000;

/// Imports one NDJSON file into a sink.
pub async fn import_file(
    path: &Path,
    mapping: &ImportMapping,
    sink: &mut dyn EventSink,
) -> Result<ImportReport, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    sink.restore(None).await?;
    let mut report = ImportReport::default();
    let mut streams = HashSet::new();
    let mut batch: Vec<AppendRequest> = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line_number = index as u64 + 1;
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ImportError::BadLine {
            path: path.to_path_buf(),
            line: line_number,
            message,
        };
        let object: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let (stream, event) = map_line(&object, mapping, path, line_number).map_err(bad)?;
        streams.insert(stream.clone());
        report.events += 1;
        match batch.last_mut().filter(|r| r.stream == stream) {
            Some(request) => request.events.push(event),
            None => batch.push(AppendRequest {
                stream,
                expected: ExpectedRevision::Any,
                events: vec![event],
            }),
        }
        if batch.len() >= BATCH {
            flush(sink, &mut batch, &mut report).await?;
        }
    }
    flush(sink, &mut batch, &mut report).await?;
    sink.commit().await?;
    report.streams = streams.len() as u64;
    Ok(report)
}

async fn flush(
    sink: &mut dyn EventSink,
    batch: &mut Vec<AppendRequest>,
    report: &mut ImportReport,
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    for outcome in sink.append_batch(std::mem::take(batch)).await? {
        report.written += outcome.written as u64;
        report.duplicates += outcome.duplicates as u64;
    }
    Ok(())
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Maps one input object to its stream and event; the error is a message for file:line.
fn map_line(
    object: &Value,
    mapping: &ImportMapping,
    path: &Path,
    line: u64,
) -> Result<(String, NewEvent), String> {
    let stream_value = mapping
        .stream
        .get(object)
        .and_then(text_of)
        .ok_or_else(|| format!("no string or number at stream pointer {}", mapping.stream))?;
    let stream = mapping.stream_template.replace("{value}", &stream_value);
    validate_stream_name(&stream).map_err(|e| e.to_string())?;
    let raw_type = match mapping.event_type.get(object) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(format!(
                "no event type (a non-empty string) at {}",
                mapping.event_type
            ))
        }
    };
    let metadata = match &mapping.metadata {
        Some(pointer) => pointer
            .get(object)
            .cloned()
            .unwrap_or(Value::Object(Default::default())),
        None => Value::Object(Default::default()),
    };
    let (event_type, version) = match &mapping.version {
        Some(pointer) => match pointer.get(object) {
            None | Some(Value::Null) => (raw_type, 1),
            Some(value) => (
                raw_type,
                version_from_json(value).ok_or_else(|| {
                    format!("version {value} at {pointer} is not a positive integer")
                })?,
            ),
        },
        None => mapping
            .version_source
            .resolve(&raw_type, &metadata)
            .ok_or_else(|| "the schema version is not a positive integer".to_string())?,
    };
    let id = match mapping
        .id
        .as_ref()
        .and_then(|p| p.get(object))
        .and_then(text_of)
    {
        Some(text) => Uuid::parse_str(&text)
            .unwrap_or_else(|_| Uuid::new_v5(&RECAST_NAMESPACE, text.as_bytes())),
        None => Uuid::new_v5(
            &RECAST_NAMESPACE,
            format!("{}:{line}", path.display()).as_bytes(),
        ),
    };
    let recorded_at = match mapping.timestamp.as_ref().map(|p| (p, p.get(object))) {
        None | Some((_, None)) => None,
        Some((pointer, Some(value))) => Some(timestamp(value).ok_or_else(|| {
            format!("timestamp {value} at {pointer} is neither RFC 3339 nor unix seconds")
        })?),
    };
    let data = match &mapping.data {
        Some(pointer) => pointer
            .get(object)
            .cloned()
            .ok_or_else(|| format!("no payload at {pointer}"))?,
        None => object.clone(),
    };
    Ok((
        stream,
        NewEvent {
            id,
            event_type,
            version,
            data: Payload::Parsed(data),
            metadata: Payload::Parsed(metadata),
            recorded_at,
        },
    ))
}

fn timestamp(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|_| s.clone()),
        Value::Number(n) => chrono::DateTime::from_timestamp(n.as_i64()?, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> ImportMapping {
        ImportMapping {
            stream: Pointer::parse("/title").unwrap(),
            stream_template: "page-{value}".into(),
            event_type: Pointer::parse("/type").unwrap(),
            id: Some(Pointer::parse("/meta/id").unwrap()),
            version: None,
            version_source: VersionSource::TypeSuffix,
            timestamp: Some(Pointer::parse("/ts").unwrap()),
            data: None,
            metadata: None,
        }
    }

    #[test]
    fn maps_fields_and_derives_missing_ids() {
        let object = json!({"title": "Foo", "type": "edit.v2", "meta": {"id": "not-a-uuid"}, "ts": 1690617099});
        let (stream, event) = map_line(&object, &mapping(), Path::new("x.ndjson"), 3).unwrap();
        assert_eq!(stream, "page-Foo");
        assert_eq!((event.event_type.as_str(), event.version), ("edit", 2));
        assert_eq!(event.id, Uuid::new_v5(&RECAST_NAMESPACE, b"not-a-uuid"));
        assert_eq!(event.recorded_at.as_deref(), Some("2023-07-29T07:51:39Z"));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let no_stream =
            map_line(&json!({"type": "edit"}), &mapping(), Path::new("x"), 1).unwrap_err();
        assert!(no_stream.contains("/title"), "{no_stream}");
        let climbing = map_line(
            &json!({"title": "../../etc", "type": "edit"}),
            &ImportMapping {
                stream_template: "{value}".into(),
                ..mapping()
            },
            Path::new("x"),
            1,
        )
        .unwrap_err();
        assert!(climbing.contains(".."), "{climbing}");
        let bad_time = map_line(
            &json!({"title": "a", "type": "edit", "ts": "yesterday"}),
            &mapping(),
            Path::new("x"),
            1,
        )
        .unwrap_err();
        assert!(bad_time.contains("timestamp"), "{bad_time}");
    }
}
