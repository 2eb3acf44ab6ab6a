//! EventStoreDB / KurrentDB as an event source and sink (`esdb://...`), through the
//! `eventstore` gRPC client.
//!
//! Mapping to the envelope ([`to_envelope`], [`to_event_data`]):
//! - `position` is the event's commit position in `$all`; reading after a position skips
//!   events whose commit position is not greater;
//! - `version` comes from a metadata key (default `schema_version`) or from a type suffix
//!   (`OrderPlaced.v2`), as the location's `version=` parameter says (`metadata:KEY`,
//!   `type-suffix`); appends write it back the same way;
//! - `metadata` is the event's custom metadata when that is a JSON object, else `{}`, less the
//!   schema-version key and `recorded_at`, which are envelope fields;
//! - `recorded_at` is the metadata's `recorded_at` (recast writes the source's timestamp there,
//!   so a migrated event keeps it), else the server's `created` time;
//! - appends send `data` as the payload's bytes (raw text unchanged), and metadata parsed only
//!   to add `recorded_at` or the version key; metadata that is not an object is then refused
//!   ([`StoreError::Unsendable`]), never replaced;
//! - system events (types or streams starting with `$`, which includes link events `$>` in
//!   `$all`) are not part of the log; reading a single stream resolves links to the events
//!   they point at.
//!
//! `--follow` subscribes to `$all` after catching up by reading ([`EventSource::subscribe`]),
//! with the stream prefix (or else the event types) as a server-side filter.
//!
//! Appends send recast's deterministic event ids with an expected revision, so the server's
//! idempotency makes a resumed migration write nothing twice. Reading `$all` filters system
//! events and the location's `prefix=`/`types=` on the client: the v4 client exposes server
//! filters for subscriptions only, which [`EventSource::subscribe`] uses.
//!
//! Location: `esdb://HOST:PORT?tls=false[&version=metadata:schema_version][&prefix=order-]
//! [&types=OrderPlaced,OrderShipped]`; everything but recast's own parameters is passed to the
//! client's connection-string parser. Credentials in the location never appear in messages.

use super::{
    AppendOutcome, AppendRequest, EventSink, EventSource, EventStream, NewEvent, SinkMark,
    StoreError, StreamState,
};
use crate::event::{Event, Payload, VersionSource};
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ReadAllOptions, ReadStreamOptions,
    RecordedEvent, StreamPosition, SubscribeToAllOptions, SubscriptionFilter,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;

/// The metadata key that carries recast's `recorded_at` through the server.
const RECORDED_AT: &str = "recorded_at";

/// Settings of an `esdb://` location.
#[derive(Debug, Clone)]
pub struct EsdbLocation {
    /// The connection string given to the client (recast's parameters removed).
    pub connection: String,
    /// Where schema versions live.
    pub version: VersionSource,
    /// Only streams starting with this prefix (when reading `$all`).
    pub prefix: Option<String>,
    /// Only these event types (when reading `$all`).
    pub types: Vec<String>,
    /// The location without credentials, for messages.
    pub shown: String,
}

impl EsdbLocation {
    /// Parses `esdb://...` (or `esdb+discover://...`).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        if !(text.starts_with("esdb://") || text.starts_with("esdb+discover://")) {
            return Err(StoreError::BadLocation(crate::readmodel::postgres::redact(
                text,
            )));
        }
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut location = EsdbLocation {
            connection: String::new(),
            version: VersionSource::Metadata("schema_version".into()),
            prefix: None,
            types: Vec::new(),
            shown: String::new(),
        };
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("version", value)) => {
                    location.version = VersionSource::parse(value).ok_or_else(|| {
                        StoreError::BadLocation(format!(
                            "version={value}: use metadata:KEY or type-suffix"
                        ))
                    })?
                }
                Some(("prefix", value)) => location.prefix = Some(value.to_string()),
                Some(("types", value)) => {
                    location.types = value
                        .split(',')
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                _ => passed.push(pair),
            }
        }
        location.connection = if passed.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        location.shown = crate::readmodel::postgres::redact(base);
        Ok(location)
    }

    /// True when an event of `$all` belongs to the log this location reads.
    pub fn admits(&self, stream: &str, event_type: &str) -> bool {
        !stream.starts_with('$')
            && !event_type.starts_with('$')
            && self.prefix.as_deref().is_none_or(|p| stream.starts_with(p))
            && (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
    }
}

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
    let mut metadata: Value = match serde_json::from_slice::<Value>(&recorded.custom_metadata) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => Value::Object(Default::default()),
    };
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
    let data = if recorded.is_json && !recorded.data.is_empty() {
        let text = std::str::from_utf8(&recorded.data)
            .map_err(|e| bad(format!("data is not UTF-8: {e}")))?;
        Payload::Raw(
            serde_json::value::RawValue::from_string(text.to_string())
                .map_err(|e| bad(format!("data is not JSON: {e}")))?,
        )
    } else {
        Payload::Parsed(Value::Null)
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

/// The client's `EventData` for an event to append, with the schema version written the way
/// the location reads it back.
///
/// `data` goes to the server as the bytes it holds: raw (unparsed) text exactly as it was
/// read, a parsed value printed once. Metadata is parsed only when recast has a key to add to
/// it (`recorded_at`, a `metadata:KEY` version); a metadata value that is not an object then
/// is an error naming the event, not silently replaced.
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
    let mut added = serde_json::Map::new();
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
    let payload = EventData::json(&event_type, &event.data)
        .map_err(|e| bad("data does not print as JSON", Some(e)))?
        .id(event.id);
    let printed = if added.is_empty() {
        serde_json::to_vec(&event.metadata)
    } else {
        let mut metadata = match event.metadata.to_value() {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(bad("metadata is not a JSON object", None)),
            Err(e) => return Err(bad("metadata is not JSON", Some(e))),
        };
        metadata.extend(added);
        serde_json::to_vec(&metadata)
    };
    let printed = printed.map_err(|e| bad("metadata does not print as JSON", Some(e)))?;
    Ok(payload.metadata(printed.into()))
}

/// A connection to an EventStoreDB / KurrentDB server.
pub struct EsdbStore {
    location: EsdbLocation,
    client: Client,
}

impl EsdbStore {
    /// Connects (lazily: the first request opens the connection).
    pub fn open(text: &str) -> Result<Self, StoreError> {
        let location = EsdbLocation::parse(text)?;
        let settings: ClientSettings = location
            .connection
            .parse()
            .map_err(|_| StoreError::BadLocation(location.shown.clone()))?;
        let client = Client::new(settings).map_err(|e| esdb_error(&location, e))?;
        Ok(EsdbStore { location, client })
    }
}

fn esdb_error(location: &EsdbLocation, source: eventstore::Error) -> StoreError {
    StoreError::Esdb {
        location: location.shown.clone(),
        source: Box::new(source),
    }
}

fn expected(expected: super::ExpectedRevision) -> eventstore::ExpectedRevision {
    match expected {
        super::ExpectedRevision::Any => eventstore::ExpectedRevision::Any,
        super::ExpectedRevision::NoStream => eventstore::ExpectedRevision::NoStream,
        super::ExpectedRevision::Exact(r) => eventstore::ExpectedRevision::Exact(r),
    }
}

impl EventSource for EsdbStore {
    fn describe(&self) -> String {
        self.location.shown.clone()
    }

    fn read_all(&self, after: Option<u64>) -> EventStream<'_> {
        Box::pin(async_stream::try_stream! {
            let start = match after {
                Some(p) => StreamPosition::Position(eventstore::Position { commit: p, prepare: p }),
                None => StreamPosition::Start,
            };
            let options = ReadAllOptions::default().forwards().position(start);
            let mut stream = self.client.read_all(&options).await.map_err(|e| esdb_error(&self.location, e))?;
            while let Some(resolved) = stream.next().await.map_err(|e| esdb_error(&self.location, e))? {
                let recorded = resolved.get_original_event();
                if after.is_some_and(|a| recorded.position.commit <= a) || !self.location.admits(&recorded.stream_id, &recorded.event_type) {
                    continue;
                }
                if let Some(event) = to_envelope(recorded, &self.location.version)? {
                    yield event;
                }
            }
        })
    }

    fn subscribe(&self, after: Option<u64>) -> Option<EventStream<'_>> {
        let start = match after {
            Some(p) => StreamPosition::Position(eventstore::Position {
                commit: p,
                prepare: p,
            }),
            None => StreamPosition::Start,
        };
        let filter = match (&self.location.prefix, self.location.types.as_slice()) {
            (Some(prefix), _) => SubscriptionFilter::on_stream_name().add_prefix(prefix),
            (None, []) => SubscriptionFilter::on_event_type().exclude_system_events(),
            (None, types) => types
                .iter()
                .fold(SubscriptionFilter::on_event_type(), |f, t| f.add_prefix(t)),
        };
        let options = SubscribeToAllOptions::default()
            .position(start)
            .filter(filter);
        Some(Box::pin(async_stream::try_stream! {
            let mut subscription = self.client.subscribe_to_all(&options).await;
            loop {
                let resolved = subscription.next().await.map_err(|e| esdb_error(&self.location, e))?;
                let recorded = resolved.get_original_event();
                if after.is_some_and(|a| recorded.position.commit <= a) || !self.location.admits(&recorded.stream_id, &recorded.event_type) {
                    continue;
                }
                if let Some(event) = to_envelope(recorded, &self.location.version)? {
                    yield event;
                }
            }
        }))
    }

    fn read_stream<'a>(&'a self, stream: &'a str, from_revision: u64) -> EventStream<'a> {
        Box::pin(async_stream::try_stream! {
            let options = ReadStreamOptions::default().forwards().position(StreamPosition::Position(from_revision)).resolve_link_tos();
            let mut events = match self.client.read_stream(stream.to_string(), &options).await {
                Ok(events) => Some(events),
                Err(eventstore::Error::ResourceNotFound) => None,
                Err(e) => Err(esdb_error(&self.location, e))?,
            };
            while let Some(reading) = events.as_mut() {
                let next = match reading.next().await {
                    Ok(next) => next,
                    Err(eventstore::Error::ResourceNotFound) => None,
                    Err(e) => Err(esdb_error(&self.location, e))?,
                };
                let Some(resolved) = next else { break };
                let recorded = resolved.event.as_ref().unwrap_or_else(|| resolved.get_original_event());
                if let Some(event) = to_envelope(recorded, &self.location.version)? {
                    yield event;
                }
            }
        })
    }

    fn list_streams(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        async move {
            use futures::TryStreamExt;
            let mut streams = std::collections::BTreeSet::new();
            let mut events = self.read_all(None);
            while let Some(event) = events.try_next().await? {
                streams.insert(event.stream);
            }
            Ok(streams.into_iter().collect())
        }
        .boxed()
    }
}

impl EventSink for EsdbStore {
    fn describe(&self) -> String {
        self.location.shown.clone()
    }

    fn stream_state<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<StreamState, StoreError>> {
        async move {
            let options = ReadStreamOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(1);
            let mut events = match self.client.read_stream(stream.to_string(), &options).await {
                Ok(events) => events,
                Err(eventstore::Error::ResourceNotFound) => return Ok(StreamState::NoStream),
                Err(e) => return Err(esdb_error(&self.location, e)),
            };
            match events.next().await {
                Ok(Some(last)) => Ok(StreamState::At(last.get_original_event().revision)),
                Ok(None) | Err(eventstore::Error::ResourceNotFound) => Ok(StreamState::NoStream),
                Err(e) => Err(esdb_error(&self.location, e)),
            }
        }
        .boxed()
    }

    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>> {
        async move {
            let mut outcomes = Vec::with_capacity(batch.len());
            for request in batch {
                let events = request
                    .events
                    .iter()
                    .map(|e| to_event_data(e, &request.stream, &self.location.version))
                    .collect::<Result<Vec<_>, _>>()?;
                let written = events.len();
                let options =
                    AppendToStreamOptions::default().expected_revision(expected(request.expected));
                let result = self
                    .client
                    .append_to_stream(request.stream.clone(), &options, events)
                    .await;
                match result {
                    Ok(write) => outcomes.push(AppendOutcome {
                        last_revision: write.next_expected_version,
                        written,
                        duplicates: 0,
                    }),
                    Err(eventstore::Error::WrongExpectedVersion { current, .. }) => {
                        let actual = match current {
                            eventstore::CurrentRevision::Current(r) => StreamState::At(r),
                            eventstore::CurrentRevision::NoStream => StreamState::NoStream,
                        };
                        return Err(StoreError::WrongExpectedRevision {
                            stream: request.stream,
                            expected: request.expected,
                            actual,
                        });
                    }
                    Err(e) => return Err(esdb_error(&self.location, e)),
                }
            }
            Ok(outcomes)
        }
        .boxed()
    }

    /// Appends are durable when the server acknowledges them; nothing is buffered here.
    fn commit(&mut self) -> BoxFuture<'_, Result<SinkMark, StoreError>> {
        async move { Ok(SinkMark::Null) }.boxed()
    }

    /// Nothing to restore: the server's idempotency by event id covers a resumed job.
    fn restore<'a>(
        &'a mut self,
        _mark: Option<&'a SinkMark>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { Ok(()) }.boxed()
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

    #[test]
    fn locations_keep_recast_parameters_and_hide_credentials() {
        let l = EsdbLocation::parse("esdb://admin:changeit@localhost:2113?tls=false&version=type-suffix&prefix=order-&types=A,B").unwrap();
        assert_eq!(
            l.connection,
            "esdb://admin:changeit@localhost:2113?tls=false"
        );
        assert_eq!(l.version, VersionSource::TypeSuffix);
        assert!(
            l.admits("order-1", "A")
                && !l.admits("user-1", "A")
                && !l.admits("order-1", "C")
                && !l.admits("$ce-order", "A")
        );
        assert!(!l.shown.contains("changeit"), "{}", l.shown);
        assert!(EsdbLocation::parse("esdb://h?version=bogus").is_err());
    }
}
