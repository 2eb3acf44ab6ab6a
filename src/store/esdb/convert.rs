//! Mapping between the server's events and recast's envelope: [`to_envelope`] for what is
//! read, [`to_event_data`] for what is appended. Pure functions, unit-tested here, since no
//! server runs on this project's machines (the module docs of [`super`] list the mapping).

use crate::event::{Event, Payload, VersionSource};
use crate::store::{NewEvent, StoreError};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use eventstore::{EventData, RecordedEvent};
use serde_json::{Map, Value};

/// The metadata key that carries recast's `recorded_at` through the server.
const RECORDED_AT: &str = "recorded_at";

/// The metadata key that marks an event whose `data` is the base64 text of a binary
/// (non-JSON) payload. An envelope holds JSON; this keeps such events whole through recast, and
/// an append to the server sends the decoded bytes as a binary event again.
pub const DATA_ENCODING: &str = "recast_data_encoding";

/// The envelope of a recorded event, or `None` for a system event.
pub fn to_envelope(
    recorded: &RecordedEvent,
    version: &VersionSource,
) -> Result<Option<Event>, StoreError> {
    if recorded.stream_id.starts_with('$') || recorded.event_type.starts_with('$') {
        return Ok(None);
    }
    let bad = |reason: String| StoreError::BadRecord {
        stream: recorded.stream_id.clone(),
        revision: recorded.revision,
        reason,
    };
    let mut metadata = Value::Object(custom_metadata(recorded).map_err(bad)?);
    let (event_type, schema_version) = match version {
        VersionSource::Envelope => (recorded.event_type.clone(), 1),
        other => other
            .resolve(&recorded.event_type, &metadata)
            .ok_or_else(|| {
                bad(format!(
                    "schema version in {other:?} is not a positive integer"
                ))
            })?,
    };
    let fields = metadata.as_object_mut().expect("metadata is an object");
    if let VersionSource::Metadata(key) = version {
        fields.remove(key);
    }
    let recorded_at = match fields.remove(RECORDED_AT) {
        Some(Value::String(text)) => text,
        _ => recorded
            .created
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    };
    let data = if !recorded.is_json {
        fields.insert(DATA_ENCODING.to_string(), Value::from("base64"));
        Payload::Parsed(Value::String(BASE64.encode(&recorded.data)))
    } else if recorded.data.is_empty() {
        Payload::Parsed(Value::Null)
    } else {
        let text = std::str::from_utf8(&recorded.data)
            .map_err(|e| bad(format!("data is not UTF-8: {e}")))?;
        Payload::Raw(
            serde_json::value::RawValue::from_string(text.to_string())
                .map_err(|e| bad(format!("data is not JSON: {e}")))?,
        )
    };
    let event = Event {
        stream: recorded.stream_id.clone(),
        revision: recorded.revision,
        position: Some(recorded.position.commit),
        id: uuid::Uuid::from_bytes(*recorded.id.as_bytes()),
        event_type,
        version: schema_version,
        data,
        metadata: Payload::Parsed(metadata),
        recorded_at: Some(recorded_at),
    };
    event.validate().map_err(|e| bad(e.to_string()))?;
    Ok(Some(event))
}

/// The event's custom metadata as an object: none is `{}`; anything but a JSON object is an
/// error, since the envelope's metadata is an object and dropping it would lose it silently.
fn custom_metadata(recorded: &RecordedEvent) -> Result<Map<String, Value>, String> {
    if recorded.custom_metadata.is_empty() {
        return Ok(Map::new());
    }
    let length = recorded.custom_metadata.len();
    match serde_json::from_slice::<Value>(&recorded.custom_metadata) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!(
            "custom metadata ({length} bytes) is JSON but not an object, which an envelope's metadata must be; leave such events out with types= or prefix="
        )),
        Err(e) => Err(format!(
            "custom metadata ({length} bytes) is not JSON ({e}); leave such events out with types= or prefix="
        )),
    }
}

/// The client's `EventData` for an event to append, with the schema version written the way
/// the location reads it back.
///
/// `data` goes to the server as the bytes it holds: raw (unparsed) text exactly as it was
/// read, a parsed value printed once, or, for an event read as binary (metadata
/// [`DATA_ENCODING`]), the decoded bytes as a binary event. Metadata is parsed only when recast
/// has a key to add to it (`recorded_at`, a `metadata:KEY` version) or it may hold the marker;
/// a metadata value that is not an object then is an error naming the event, not silently
/// replaced.
pub fn to_event_data(
    event: &NewEvent,
    stream: &str,
    version: &VersionSource,
) -> Result<EventData, StoreError> {
    let bad = |reason, source| StoreError::Unsendable {
        stream: stream.to_string(),
        id: event.id,
        reason,
        source,
    };
    let mut added = Map::new();
    if let Some(recorded_at) = &event.recorded_at {
        added.insert(RECORDED_AT.to_string(), Value::String(recorded_at.clone()));
    }
    let event_type = match version {
        VersionSource::TypeSuffix if event.version > 1 => {
            format!("{}.v{}", event.event_type, event.version)
        }
        VersionSource::Metadata(key) => {
            added.insert(key.clone(), Value::from(event.version));
            event.event_type.clone()
        }
        _ => event.event_type.clone(),
    };
    let mut metadata = if added.is_empty() && !may_hold_marker(&event.metadata) {
        None
    } else {
        match event.metadata.to_value() {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => return Err(bad("metadata is not a JSON object", None)),
            Err(e) => return Err(bad("metadata is not JSON", Some(e))),
        }
    };
    let encoding = metadata.as_mut().and_then(|m| m.remove(DATA_ENCODING));
    let payload = match encoding {
        None => EventData::json(&event_type, &event.data)
            .map_err(|e| bad("data does not print as JSON", Some(e)))?,
        Some(encoding) => {
            let bytes = match (encoding.as_str(), event.data.to_value()) {
                (Some("base64"), Ok(Value::String(text))) => BASE64.decode(text).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                bad(
                    "metadata marks the data as base64 (recast_data_encoding) but it is not a base64 string",
                    None,
                )
            })?;
            EventData::binary(&event_type, bytes.into())
        }
    }
    .id(event.id);
    let printed = match metadata {
        None => serde_json::to_vec(&event.metadata),
        Some(mut map) => {
            map.extend(added);
            serde_json::to_vec(&map)
        }
    };
    let printed = printed.map_err(|e| bad("metadata does not print as JSON", Some(e)))?;
    Ok(payload.metadata(printed.into()))
}

/// False when the metadata cannot hold [`DATA_ENCODING`]: a cheap look at raw text, so that
/// metadata passing through is not parsed and printed again.
fn may_hold_marker(metadata: &Payload) -> bool {
    match metadata {
        Payload::Raw(raw) => raw.get().contains(DATA_ENCODING),
        Payload::Parsed(value) => value.get(DATA_ENCODING).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn recorded(stream: &str, event_type: &str, data: &str, custom: &str) -> RecordedEvent {
        RecordedEvent {
            stream_id: stream.into(),
            id: uuid::Uuid::from_u128(7),
            revision: 4,
            event_type: event_type.into(),
            data: data.as_bytes().to_vec().into(),
            metadata: HashMap::new(),
            custom_metadata: custom.as_bytes().to_vec().into(),
            is_json: true,
            position: eventstore::Position {
                commit: 1234,
                prepare: 1234,
            },
            created: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn recorded_events_map_to_envelopes() {
        let meta = VersionSource::Metadata("schema_version".into());
        let e = to_envelope(
            &recorded(
                "order-1",
                "OrderPlaced",
                r#"{"a":1}"#,
                r#"{"schema_version":"2","user":"u"}"#,
            ),
            &meta,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                e.stream.as_str(),
                e.revision,
                e.position,
                e.event_type.as_str(),
                e.version
            ),
            ("order-1", 4, Some(1234), "OrderPlaced", 2)
        );
        assert_eq!(e.data.to_value().unwrap(), serde_json::json!({"a": 1}));
        assert_eq!(
            e.metadata.to_value().unwrap(),
            serde_json::json!({"user": "u"})
        );
        assert_eq!(e.recorded_at.as_deref(), Some("2023-11-14T22:13:20Z"));
        let carried = to_envelope(
            &recorded(
                "order-1",
                "T",
                "{}",
                r#"{"recorded_at":"2020-01-01T00:00:00Z"}"#,
            ),
            &meta,
        )
        .unwrap()
        .unwrap();
        assert_eq!(carried.recorded_at.as_deref(), Some("2020-01-01T00:00:00Z"));
        assert_eq!(carried.metadata.to_value().unwrap(), serde_json::json!({}));
        let suffixed = to_envelope(
            &recorded("order-1", "OrderPlaced.v3", "{}", ""),
            &VersionSource::TypeSuffix,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (suffixed.event_type.as_str(), suffixed.version),
            ("OrderPlaced", 3)
        );
        assert!(to_envelope(&recorded("$stats-1", "X", "{}", ""), &meta)
            .unwrap()
            .is_none());
        assert!(
            to_envelope(&recorded("order-1", "$>", "1@order-2", ""), &meta)
                .unwrap()
                .is_none()
        );
        let bad = to_envelope(
            &recorded("order-1", "T", "{}", r#"{"schema_version":"x"}"#),
            &meta,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("order-1"), "{bad}");
    }

    #[test]
    fn new_events_carry_id_and_version_the_way_they_are_read_back() {
        let event = NewEvent {
            id: uuid::Uuid::from_u128(9),
            event_type: "OrderPlaced".into(),
            version: 3,
            data: Payload::Parsed(serde_json::json!({"a": 1})),
            metadata: Payload::Parsed(serde_json::json!({"user": "u"})),
            recorded_at: Some("2024-01-01T00:00:00Z".into()),
        };
        let meta = VersionSource::Metadata("schema_version".into());
        let data = format!("{:?}", to_event_data(&event, "order-1", &meta).unwrap());
        assert!(
            data.contains("schema_version")
                && data.contains("00000000-0000-0000-0000-000000000009"),
            "{data}"
        );
        assert!(data.contains("2024-01-01T00:00:00Z"), "{data}");
        let suffixed = format!(
            "{:?}",
            to_event_data(&event, "order-1", &VersionSource::TypeSuffix).unwrap()
        );
        assert!(suffixed.contains("OrderPlaced.v3"), "{suffixed}");
    }

    fn raw(text: &str) -> Payload {
        Payload::Raw(serde_json::value::RawValue::from_string(text.into()).unwrap())
    }

    #[test]
    fn raw_payloads_reach_the_server_as_the_bytes_they_were_read_as() {
        let event = NewEvent {
            id: uuid::Uuid::from_u128(7),
            event_type: "OrderPlaced".into(),
            version: 1,
            data: raw(r#"{"z": 1, "a": 2.50, "u": "\u00e9"}"#),
            metadata: raw(r#"{"y": true,  "b": null}"#),
            recorded_at: None,
        };
        let sent = format!(
            "{:?}",
            to_event_data(&event, "order-1", &VersionSource::Envelope).unwrap()
        );
        assert!(
            sent.contains(r#"{\"z\": 1, \"a\": 2.50, \"u\": \"\\u00e9\"}"#),
            "{sent}"
        );
        assert!(sent.contains(r#"{\"y\": true,  \"b\": null}"#), "{sent}");
    }

    #[test]
    fn metadata_that_is_not_an_object_is_refused_when_a_key_must_be_added() {
        let event = NewEvent {
            id: uuid::Uuid::from_u128(5),
            event_type: "OrderPlaced".into(),
            version: 2,
            data: raw("{}"),
            metadata: raw("[1, 2]"),
            recorded_at: Some("2024-01-01T00:00:00Z".into()),
        };
        let error = to_event_data(&event, "order-1", &VersionSource::TypeSuffix).unwrap_err();
        let shown = error.to_string();
        assert!(
            shown.contains("00000000-0000-0000-0000-000000000005")
                && shown.contains("order-1")
                && shown.contains("not a JSON object"),
            "{shown}"
        );
    }

    fn binary(custom: &str) -> RecordedEvent {
        RecordedEvent {
            data: vec![0u8, 0x9f, 0x92, 0x96].into(),
            is_json: false,
            ..recorded("order-1", "Scanned", "", custom)
        }
    }

    #[test]
    fn binary_events_keep_their_bytes_through_an_envelope_and_back() {
        let meta = VersionSource::Metadata("schema_version".into());
        let e = to_envelope(&binary(r#"{"user":"u"}"#), &meta)
            .unwrap()
            .unwrap();
        assert_eq!(e.data.to_value().unwrap(), serde_json::json!("AJ+Slg=="));
        assert_eq!(
            e.metadata.to_value().unwrap(),
            serde_json::json!({"user": "u", "recast_data_encoding": "base64"})
        );
        let new = NewEvent {
            id: e.id,
            event_type: e.event_type,
            version: e.version,
            data: e.data,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        };
        let sent = format!("{:?}", to_event_data(&new, "order-1", &meta).unwrap());
        assert!(sent.contains("application/octet-stream"), "{sent}");
        assert!(sent.contains(r#"b"\0\x9f\x92\x96""#), "{sent}");
        assert!(!sent.contains(DATA_ENCODING), "{sent}");
        assert!(sent.contains("schema_version"), "{sent}");
    }

    #[test]
    fn custom_metadata_that_is_not_an_object_is_an_error_on_read() {
        let meta = VersionSource::Envelope;
        for (custom, says) in [("[1, 2]", "not an object"), ("\u{1}\u{2}", "is not JSON")] {
            let error = to_envelope(&recorded("order-1", "T", "{}", custom), &meta).unwrap_err();
            let shown = error.to_string();
            assert!(
                shown.contains("order-1") && shown.contains("revision 4") && shown.contains(says),
                "{shown}"
            );
        }
        let empty = to_envelope(&recorded("order-1", "T", "{}", ""), &meta)
            .unwrap()
            .unwrap();
        assert_eq!(empty.metadata.to_value().unwrap(), serde_json::json!({}));
    }

    #[test]
    fn a_binary_marker_over_data_that_is_not_base64_is_refused() {
        let event = NewEvent {
            id: uuid::Uuid::from_u128(3),
            event_type: "Scanned".into(),
            version: 1,
            data: raw(r#"{"a": 1}"#),
            metadata: raw(r#"{"recast_data_encoding": "base64"}"#),
            recorded_at: None,
        };
        let error = to_event_data(&event, "order-1", &VersionSource::Envelope).unwrap_err();
        assert!(error.to_string().contains("base64"), "{error}");
    }
}
