//! EventStoreDB / KurrentDB as an event source and sink (`esdb://...`), through the
//! `eventstore` gRPC client.
//!
//! Mapping to the envelope ([`to_envelope`], [`to_event_data`]):
//! - `position` is the event's commit position in `$all`; reading after a position skips
//!   events whose commit position is not greater;
//! - `version` comes from a metadata key (default `schema_version`) or from a type suffix
//!   (`OrderPlaced.v2`), as the location's `version=` parameter says (`metadata:KEY`,
//!   `type-suffix`); appends write it back the same way;
//! - `metadata` is the event's custom metadata (none is `{}`), less the schema-version key and
//!   `recorded_at`, which are envelope fields; custom metadata that is not a JSON object is an
//!   error naming the stream and revision (the envelope's metadata is an object, and dropping
//!   it would lose it silently);
//! - `data` is the payload's JSON text, unparsed (an empty JSON payload is `null`); a binary
//!   payload (content type not JSON) becomes its base64 text, marked by the metadata key
//!   [`convert::DATA_ENCODING`] (`"recast_data_encoding": "base64"`), and an append sends such an
//!   event as binary again, so it passes through recast whole;
//! - `recorded_at` is the metadata's `recorded_at` (recast writes the source's timestamp there,
//!   so a migrated event keeps it), else the server's `created` time;
//! - appends send `data` as the payload's bytes (raw text unchanged), and parse metadata only
//!   to add `recorded_at` or the version key or to find the binary marker; metadata that is not
//!   an object is then refused ([`StoreError::Unsendable`]), never replaced;
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

pub mod convert;

pub use convert::{to_envelope, to_event_data};

use super::{
    AppendOutcome, AppendRequest, EventSink, EventSource, EventStream, SinkMark, StoreError,
    StreamState,
};
use crate::event::VersionSource;
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, ReadAllOptions, ReadStreamOptions,
    StreamPosition, SubscribeToAllOptions, SubscriptionFilter,
};
use futures::future::BoxFuture;
use futures::FutureExt;

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
