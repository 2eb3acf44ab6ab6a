//! The sink of a dry run: it assigns revisions and positions like a store, digests what it
//! would write, and writes nothing. Dry runs, `plan` and `verify` use it in place of a real
//! sink, so they go through exactly the code path of a real migration.

use crate::store::digest::{DigestSummary, LogDigest};
use crate::store::{
    AppendOutcome, AppendRequest, EventSink, SinkMark, StoreError, StreamHeads, StreamState,
};
use futures::future::BoxFuture;
use futures::FutureExt;

/// A sink that only counts and digests.
pub struct DrySink {
    target: String,
    heads: StreamHeads,
    digest: LogDigest,
}

impl DrySink {
    /// A dry sink standing in for `target`.
    pub fn new(target: impl Into<String>) -> Self {
        DrySink {
            target: target.into(),
            heads: StreamHeads::default(),
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
        let state = self.heads.state(stream);
        async move { Ok(state) }.boxed()
    }

    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, StoreError>> {
        async move {
            let mut outcomes = Vec::with_capacity(batch.len());
            for request in batch {
                let (events, outcome) = self.heads.assign(request)?;
                for event in &events {
                    self.digest
                        .add(event)
                        .map_err(|source| StoreError::Corrupt {
                            path: self.target.clone().into(),
                            position: event.position.unwrap_or_default(),
                            source,
                        })?;
                }
                outcomes.push(outcome);
            }
            Ok(outcomes)
        }
        .boxed()
    }

    /// It starts empty and only this job writes it.
    fn sole_writer(&self) -> bool {
        true
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
