//! Canonical digests of event logs: what `recast checksum` prints and `verify` compares.
//!
//! A [`LogDigest`] is SHA-256 over one canonical line per event, in log order: stream,
//! revision, id, type, version, data, metadata and recorded_at, with JSON object keys sorted
//! (see [`crate::event::canonical_json`]). The log position is left out: it is assigned by each
//! store, so the same events in a JSONL file and in a sled store digest the same.

use super::{EventSource, StoreError};
use crate::event::{canonical_json, Event};
use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A running digest of events in log order.
#[derive(Clone, Default)]
pub struct LogDigest {
    hasher: Sha256,
    events: u64,
    line: String,
}

/// A finished digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DigestSummary {
    /// `sha256:` and the hex digest.
    pub checksum: String,
    /// How many events went into it.
    pub events: u64,
}

impl std::fmt::Display for DigestSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} events)", self.checksum, self.events)
    }
}

impl LogDigest {
    /// Adds one event; fails only when its payload is not valid JSON.
    pub fn add(&mut self, event: &Event) -> Result<(), serde_json::Error> {
        let data = event.data.to_value()?;
        let metadata = event.metadata.to_value()?;
        self.line.clear();
        let head = serde_json::json!([
            event.stream,
            event.revision,
            event.id,
            event.event_type,
            event.version,
            event.recorded_at
        ]);
        canonical_json(&head, &mut self.line);
        self.line.push('\t');
        canonical_json(&data, &mut self.line);
        self.line.push('\t');
        canonical_json(&metadata, &mut self.line);
        self.line.push('\n');
        self.hasher.update(self.line.as_bytes());
        self.events += 1;
        Ok(())
    }

    /// The digest of everything added so far.
    pub fn finish(&self) -> DigestSummary {
        DigestSummary {
            checksum: format!("sha256:{}", hex::encode(self.hasher.clone().finalize())),
            events: self.events,
        }
    }
}

/// Reads a whole source and digests it, counting events per `Type vN` on the way.
pub async fn digest_source(
    source: &dyn EventSource,
) -> Result<(DigestSummary, BTreeMap<String, u64>), StoreError> {
    let name = source.describe();
    let mut digest = LogDigest::default();
    let mut kinds = BTreeMap::new();
    let mut events = source.read_all(None);
    while let Some(event) = events.try_next().await? {
        *kinds
            .entry(format!("{} v{}", event.event_type, event.version))
            .or_default() += 1;
        digest.add(&event).map_err(|source| StoreError::Corrupt {
            path: name.clone().into(),
            position: event.position.unwrap_or_default(),
            source,
        })?;
    }
    Ok((digest.finish(), kinds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str, position: u64) -> Event {
        let line = format!(
            r#"{{"stream":"s","revision":0,"position":{position},"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"T","data":{data}}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn digest_ignores_key_order_whitespace_and_position_but_not_values() {
        let mut a = LogDigest::default();
        a.add(&event(r#"{"a":1,"b":2}"#, 0)).unwrap();
        let mut b = LogDigest::default();
        b.add(&event(r#"{ "b": 2, "a": 1 }"#, 9)).unwrap();
        assert_eq!(a.finish(), b.finish());
        let mut c = LogDigest::default();
        c.add(&event(r#"{"a":1,"b":3}"#, 0)).unwrap();
        assert_ne!(a.finish(), c.finish());
        assert_eq!(a.finish().events, 1);
    }
}
