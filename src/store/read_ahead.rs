//! Reading ahead: a source's reading and parsing run on a thread of their own, while the
//! consumer of the [`EventStream`] upcasts, folds and writes on another.
//!
//! [`read_ahead`] takes a function that opens a plain iterator of events (the JSONL
//! [`LogReader`](super::jsonl::LogReader)) and runs it on a new thread. Events cross over in
//! batches of [`BATCH_EVENTS`], at most [`BATCHES_AHEAD`] batches ahead of the consumer, so the
//! memory it takes is bounded by those two numbers and not by the log. Order is kept: the
//! stream yields exactly what the iterator gives, in its order, and ends after the first error.
//!
//! Why: parsing a JSONL line was 30-40% of a pass-through migration and most of the rest is
//! independent of it, so on a machine with a second core the two halves overlap. Dropping the
//! stream stops the thread at its next batch and waits for it, so nothing the thread holds
//! outlives the stream. A reader thread that dies without finishing (a panic) ends the stream
//! with an error, never as if the log had ended there.

use super::{EventStream, StoreError};
use crate::event::Event;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Events per batch handed from the reading thread to the consumer. Each hand-over can wake a
/// sleeping thread, which costs a system call and, on a virtual machine, an interrupt to the
/// other core: with 256, a pass-through migration of 1M events took 1.74-2.01 s; with 1024,
/// 1.26-1.47 s for the same CPU time (interleaved runs, same output). The in-memory rebuild
/// was the same either way. Four batches of 1024 demo events hold about 2 MB.
pub const BATCH_EVENTS: usize = 1024;

/// Batches the reading thread may be ahead of the consumer.
pub const BATCHES_AHEAD: usize = 4;

/// What the reading thread sends.
enum Ahead {
    Events(Vec<Event>),
    Failed(StoreError),
    End,
}

/// Runs `open` and the iterator it returns on a thread of their own; `path` names the source
/// in the error raised when that thread cannot start or dies.
pub fn read_ahead<F, I>(path: PathBuf, open: F) -> EventStream<'static>
where
    F: FnOnce() -> Result<I, StoreError> + Send + 'static,
    I: Iterator<Item = Result<Event, StoreError>>,
{
    let (sender, receiver) = mpsc::channel(BATCHES_AHEAD);
    let started = std::thread::Builder::new()
        .name("recast-read-ahead".into())
        .spawn(move || read_into(open, &sender));
    let (thread, not_started) = match started {
        Ok(thread) => (Some(thread), None),
        Err(source) => (None, Some(thread_error(&path, source))),
    };
    Box::pin(Reading {
        receiver,
        thread,
        batch: Vec::new().into_iter(),
        failed: not_started,
        ended: false,
        path,
    })
}

/// The consumer's end, a stream of the batches' events. When it is dropped, it closes the
/// channel and waits for the reading thread, so that nothing the thread holds (an open file,
/// a store's sled tree) outlives the stream. The wait is at most the parsing of one batch.
///
/// Written by hand rather than with `async_stream`, whose `yield` takes every event through a
/// shared slot and a generator's state machine: handing them out of the batch directly took
/// 1-2% less CPU, in pass-through migrations and in-memory rebuilds alike (interleaved
/// pairs, 1M events).
struct Reading {
    receiver: mpsc::Receiver<Ahead>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The events of the batch being handed out.
    batch: std::vec::IntoIter<Event>,
    /// An error to hand out next, after which the stream ends.
    failed: Option<StoreError>,
    ended: bool,
    path: PathBuf,
}

impl futures::Stream for Reading {
    type Item = Result<Event, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.batch.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            if let Some(err) = self.failed.take() {
                self.ended = true;
                return Poll::Ready(Some(Err(err)));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match std::task::ready!(self.receiver.poll_recv(cx)) {
                Some(Ahead::Events(events)) => self.batch = events.into_iter(),
                Some(Ahead::Failed(err)) => self.failed = Some(err),
                Some(Ahead::End) => self.ended = true,
                None => {
                    let stopped = std::io::Error::other(
                        "the reading thread stopped before the end of the log",
                    );
                    self.failed = Some(thread_error(&self.path, stopped));
                }
            }
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.receiver.close();
        if let Some(thread) = self.thread.take() {
            // A thread that panicked has already ended the stream with an error.
            let _ = thread.join();
        }
    }
}

/// The reading thread: batches the iterator's events until it ends, fails, or nobody reads.
fn read_into<F, I>(open: F, sender: &mpsc::Sender<Ahead>)
where
    F: FnOnce() -> Result<I, StoreError>,
    I: Iterator<Item = Result<Event, StoreError>>,
{
    let events = match open() {
        Ok(events) => events,
        Err(err) => {
            let _ = sender.blocking_send(Ahead::Failed(err));
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    for event in events {
        match event {
            Ok(event) => batch.push(event),
            Err(err) => {
                // The events before the error are delivered first; nothing after it.
                let _ = sender.blocking_send(Ahead::Events(batch));
                let _ = sender.blocking_send(Ahead::Failed(err));
                return;
            }
        }
        if batch.len() == BATCH_EVENTS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_EVENTS));
            if sender.blocking_send(Ahead::Events(full)).is_err() {
                return; // The stream was dropped: nobody reads any more.
            }
        }
    }
    let _ = sender.blocking_send(Ahead::Events(batch));
    let _ = sender.blocking_send(Ahead::End);
}

fn thread_error(path: &std::path::Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn event(n: u64) -> Event {
        serde_json::from_str(&format!(
            r#"{{"stream":"s-{n}","revision":0,"position":{n},"id":"00000000-0000-0000-0000-{n:012}","type":"T","data":{{}}}}"#
        ))
        .unwrap()
    }

    fn positions(events: &[Event]) -> Vec<u64> {
        events.iter().filter_map(|e| e.position).collect()
    }

    #[tokio::test]
    async fn yields_every_event_in_order_across_batches() {
        let count = BATCH_EVENTS as u64 * 3 + 7;
        let stream = read_ahead("log".into(), move || Ok((0..count).map(|n| Ok(event(n)))));
        let events: Vec<Event> = stream.try_collect().await.unwrap();
        assert_eq!(positions(&events), (0..count).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn delivers_the_events_before_an_error_then_the_error() {
        let failing = (0..10u64).map(|n| match n {
            5 => Err(StoreError::BadLocation("line 6".into())),
            n => Ok(event(n)),
        });
        let mut stream = read_ahead("log".into(), move || Ok(failing));
        let mut seen = Vec::new();
        let err = loop {
            match stream.try_next().await {
                Ok(Some(event)) => seen.push(event),
                Ok(None) => panic!("the stream ended without the error"),
                Err(err) => break err,
            }
        };
        assert_eq!(positions(&seen), vec![0, 1, 2, 3, 4]);
        assert!(matches!(err, StoreError::BadLocation(ref l) if l == "line 6"));
    }

    #[tokio::test]
    async fn a_reader_that_dies_is_an_error_not_the_end_of_the_log() {
        let dying = (0..BATCH_EVENTS as u64 + 1).map(|n| {
            assert!(
                n < BATCH_EVENTS as u64,
                "reader thread dies here (expected in this test)"
            );
            Ok(event(n))
        });
        let stream = read_ahead("log".into(), move || Ok(dying));
        let err = stream.try_collect::<Vec<Event>>().await.unwrap_err();
        assert!(err.to_string().contains("stopped before the end"), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_thread_and_waits_for_it() {
        let held = std::sync::Arc::new(());
        let in_thread = held.clone();
        let endless = (0u64..).map(move |n| {
            let _keep = &in_thread;
            Ok(event(n))
        });
        let mut stream = read_ahead("log".into(), move || Ok(endless));
        assert_eq!(stream.try_next().await.unwrap().unwrap().position, Some(0));
        drop(stream);
        // The thread's iterator, and the clone it holds, are gone once the drop returns.
        assert_eq!(std::sync::Arc::strong_count(&held), 1);
    }

    #[tokio::test]
    async fn an_open_error_is_the_first_item() {
        let stream = read_ahead("log".into(), || {
            Err::<std::iter::Empty<Result<Event, StoreError>>, _>(StoreError::BadLocation(
                "x".into(),
            ))
        });
        let err = stream.try_collect::<Vec<Event>>().await.unwrap_err();
        assert!(matches!(err, StoreError::BadLocation(_)));
    }
}
