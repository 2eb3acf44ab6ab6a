//! The sink of a dry run: it assigns revisions and positions like a store, digests what it
//! would write, and writes nothing. Dry runs, `plan` and `verify` use it in place of a real
//! sink, so they go through exactly the code path of a real migration.

use crate::store::digest::{DigestSummary, LogDigest};
use crate::store::{AppendOutcome, AppendRequest, EventSink, SinkMark, StoreError, StreamState};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::HashMap;

/// A sink that only counts and digests.
pub struct DrySink {
    target: String,
    heads: HashMap<String, u64>,
    next_position: u64,
    digest: LogDigest,
}

impl DrySink {
    /// A dry sink standing in for `target`.
    pub fn new(target: impl Into<String>) -> Self {
        DrySink {
            target: target.into(),
            heads: HashMap::new(),
            next_position: 0,
            digest: LogDigest::default(),
        }
    }

    /// The digest of everything that would have been written.
    pub fn digest(&self) -> DigestSummary {
        self.digest.finish()
    }
}

impl EventSink for DrySink {
    fn describe(&self) -> String {
        self.target.clone()
    }

    fn stream_state<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> BoxFuture<'a, Result<StreamState, StoreError>> {
        let state = self
            .heads
            .get(stream)
            .map_or(StreamState::NoStream, |&r| StreamState::At(r));
        async move { Ok(state) }.boxed()
    }

    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>> {
        async move {
            let mut outcomes = Vec::with_capacity(batch.len());
            for request in batch {
                let state = self
                    .heads
                    .get(&request.stream)
                    .map_or(StreamState::NoStream, |&r| StreamState::At(r));
                let mut revision = state.next_revision();
                let written = request.events.len();
                for new_event in request.events {
                    let event = new_event.into_event(&request.stream, revision, self.next_position);
                    self.digest
                        .add(&event)
                        .map_err(|source| StoreError::Corrupt {
                            path: self.target.clone().into(),
                            position: self.next_position,
                            source,
                        })?;
                    self.next_position += 1;
                    revision += 1;
                }
                let last_revision = revision.saturating_sub(1);
                if written > 0 {
                    self.heads.insert(request.stream, last_revision);
                }
                outcomes.push(AppendOutcome {
                    last_revision,
                    written,
                    duplicates: 0,
                });
            }
            Ok(outcomes)
        }
        .boxed()
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<SinkMark, StoreError>> {
        async move { Ok(SinkMark::Null) }.boxed()
    }

    fn restore<'a>(
        &'a mut self,
        _mark: Option<&'a SinkMark>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { Ok(()) }.boxed()
    }
}
