//! [`JsonlSink`]: one JSONL file written as a store (see the parent module for the format).

use super::{bad_json, io_error};
use crate::store::{
    AppendOutcome, AppendRequest, EventSink, SinkMark, StoreError, StreamHeads, StreamState,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An append-only JSONL file written as a store.
pub struct JsonlSink {
    path: PathBuf,
    file: File,
    /// Lines not yet written to the file. Envelopes are serialized straight into it (a line
    /// buffer handed to a `BufWriter` copied every line once more) and it goes to the file
    /// when it holds [`WRITE_BYTES`], and at every commit.
    buffer: Vec<u8>,
    /// Bytes of the file, including what `buffer` holds.
    bytes: u64,
    heads: StreamHeads,
}

/// How much the sink buffers before it writes to the file.
const WRITE_BYTES: usize = 1 << 18;

#[derive(Deserialize)]
struct StreamRevision {
    stream: String,
    revision: u64,
}

impl JsonlSink {
    /// Opens (or creates) the file; nothing is changed until [`EventSink::restore`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if path.is_dir() {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("a JSONL target must be a file, not a folder"),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_error(path))?;
        Ok(JsonlSink {
            path: path.to_path_buf(),
            file,
            buffer: Vec::with_capacity(WRITE_BYTES + (1 << 12)),
            bytes: 0,
            heads: StreamHeads::default(),
        })
    }

    fn rescan_heads(&mut self, bytes: u64) -> Result<(), StoreError> {
        let file = File::open(&self.path).map_err(io_error(&self.path))?;
        let mut reader = BufReader::new(file).take(bytes);
        let mut line = String::new();
        let mut line_number = 0;
        self.heads.clear();
        loop {
            line.clear();
            line_number += 1;
            if reader.read_line(&mut line).map_err(io_error(&self.path))? == 0 {
                return Ok(());
            }
            if line.trim().is_empty() {
                continue;
            }
            let head: StreamRevision = serde_json::from_str(&line)
                .map_err(|err| bad_json(&self.path, line_number, err))?;
            self.heads.record(head.stream, head.revision);
        }
    }

    fn append_one(&mut self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let placed = self
            .heads
            .place(&request.stream, request.expected, request.events.len())?;
        for (event, i) in request.events.iter().zip(0..) {
            let envelope = event.envelope(
                &request.stream,
                placed.first_revision + i,
                placed.first_position + i,
            );
            let start = self.buffer.len();
            envelope.write_json(&mut self.buffer);
            self.buffer.push(b'\n');
            self.bytes += (self.buffer.len() - start) as u64;
            if self.buffer.len() >= WRITE_BYTES {
                self.write_buffer()?;
            }
        }
        Ok(placed.outcome)
    }

    fn write_buffer(&mut self) -> Result<(), StoreError> {
        self.file
            .write_all(&self.buffer)
            .map_err(io_error(&self.path))?;
        self.buffer.clear();
        Ok(())
    }
}

impl EventSink for JsonlSink {
    fn describe(&self) -> String {
        format!("jsonl:{}", self.path.display())
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
        self.heads.warm(batch.iter().map(|r| r.stream.as_str()));
        async move { batch.into_iter().map(|r| self.append_one(r)).collect() }.boxed()
    }

    /// A fresh job refuses a non-empty file and a resumed one cuts it back to its mark.
    fn sole_writer(&self) -> bool {
        true
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<SinkMark, StoreError>> {
        async move {
            self.write_buffer()?;
            self.file.sync_data().map_err(io_error(&self.path))?;
            Ok(serde_json::json!({"bytes": self.bytes, "events": self.heads.next_position()}))
        }
        .boxed()
    }

    fn restore<'a>(
        &'a mut self,
        mark: Option<&'a SinkMark>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            // Whatever a failed run left unwritten is not part of any mark.
            self.buffer.clear();
            let length = self.file.metadata().map_err(io_error(&self.path))?.len();
            let Some(mark) = mark else {
                if length > 0 {
                    return Err(StoreError::TargetNotEmpty { target: self.describe() });
                }
                return Ok(());
            };
            let bad_mark = |reason: String| StoreError::BadMark { target: self.describe(), reason };
            let bytes = mark["bytes"].as_u64().ok_or_else(|| bad_mark("no byte length".into()))?;
            if length < bytes {
                return Err(bad_mark(format!(
                    "the file has {length} bytes but the checkpoint covers {bytes}: it was changed outside recast"
                )));
            }
            self.file.set_len(bytes).map_err(io_error(&self.path))?;
            self.file.seek(SeekFrom::Start(bytes)).map_err(io_error(&self.path))?;
            self.rescan_heads(bytes)?;
            self.bytes = bytes;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Payload};
    use crate::store::jsonl::JsonlSource;
    use crate::store::{EventSource, ExpectedRevision, NewEvent};
    use futures::TryStreamExt;

    fn new_event(n: u128) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::from_u128(n),
            event_type: "T".into(),
            version: 1,
            data: Payload::Parsed(serde_json::json!({"n": n as u64})),
            metadata: Payload::empty_object(),
            recorded_at: None,
        }
    }

    #[tokio::test]
    async fn sink_resumes_by_truncating_to_its_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = JsonlSink::open(&path).unwrap();
        sink.restore(None).await.unwrap();
        let request = |n, expected| AppendRequest {
            stream: "s-1".into(),
            expected,
            events: vec![new_event(n)],
        };
        sink.append_batch(vec![request(1, ExpectedRevision::NoStream)])
            .await
            .unwrap();
        let mark = sink.commit().await.unwrap();
        sink.append_batch(vec![request(2, ExpectedRevision::Exact(0))])
            .await
            .unwrap();
        sink.commit().await.unwrap();
        drop(sink);

        let mut sink = JsonlSink::open(&path).unwrap();
        assert!(matches!(
            sink.restore(None).await,
            Err(StoreError::TargetNotEmpty { .. })
        ));
        sink.restore(Some(&mark)).await.unwrap();
        assert_eq!(sink.stream_state("s-1").await.unwrap(), StreamState::At(0));
        let wrong = sink
            .append_batch(vec![request(2, ExpectedRevision::NoStream)])
            .await;
        assert!(matches!(
            wrong,
            Err(StoreError::WrongExpectedRevision { .. })
        ));
        sink.append_batch(vec![request(2, ExpectedRevision::Exact(0))])
            .await
            .unwrap();
        sink.commit().await.unwrap();

        let source = JsonlSource::open(&path).unwrap();
        let events: Vec<Event> = source.read_all(None).try_collect().await.unwrap();
        let got: Vec<_> = events.iter().map(|e| (e.revision, e.position)).collect();
        assert_eq!(got, vec![(0, Some(0)), (1, Some(1))]);
    }
}
