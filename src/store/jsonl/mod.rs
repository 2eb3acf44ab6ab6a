//! JSONL streams: one event envelope per line.
//!
//! [`JsonlSource`] reads a file, or a folder of `.jsonl`/`.ndjson` files in name order.
//! The log order is the reading order unless every event carries a `position`, in which case
//! files are merged by position. The first event of the log decides which: when it carries a
//! position every event must (strictly increasing within a file); when it does not, no event
//! may, and each event's log position is its 0-based ordinal in reading order. A log that mixes
//! the two is refused rather than ordered by guesswork.
//!
//! [`JsonlSink`] appends to one file, assigning revisions and positions like a store. Its
//! [`SinkMark`](super::SinkMark) is the file length and event count at a commit; resuming truncates the file
//! back to the mark, so events written after the last checkpoint are written again exactly
//! once. It keeps one revision counter per stream in memory.

mod reader;
mod sink;

use super::{EventSource, EventStream, StoreError};
use crate::event::Event;
use futures::future::BoxFuture;
use futures::FutureExt;
pub use reader::{parse_event_line, JsonlFileReader};
pub use sink::JsonlSink;
use std::fs;
use std::path::{Path, PathBuf};

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A JSON error on a line of a file, with the column instead of serde's "line 1".
pub fn bad_json(path: &Path, line: u64, err: serde_json::Error) -> StoreError {
    let text = err.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    StoreError::BadLine {
        path: path.to_path_buf(),
        line,
        message: format!("{message} (column {})", err.column()),
        source: Some(err),
    }
}

/// The files a JSONL location holds, in name order.
pub fn jsonl_files(path: &Path) -> Result<Vec<PathBuf>, StoreError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(io_error(path))? {
        let file = entry.map_err(io_error(path))?.path();
        let is_jsonl = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson")
        );
        if is_jsonl && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// The events of a JSONL location in log order (see the module docs for the order rules).
pub struct LogReader {
    readers: Vec<JsonlFileReader>,
    /// Next event of each file, used when merging by position.
    heads: Vec<Option<(u64, Event)>>,
    mode: Option<PositionMode>,
    current: usize,
    ordinal: u64,
    last_position: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PositionMode {
    Ordinal,
    Carried,
}

impl LogReader {
    /// Opens every file of a location.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let readers = jsonl_files(path)?
            .iter()
            .map(|file| JsonlFileReader::open(file))
            .collect::<Result<Vec<_>, _>>()?;
        let heads = readers.iter().map(|_| None).collect();
        Ok(LogReader {
            readers,
            heads,
            mode: None,
            current: 0,
            ordinal: 0,
            last_position: None,
        })
    }

    fn mixed_error(&self, file: usize, line: u64, has_position: bool) -> StoreError {
        let message = if has_position {
            "this event carries a position but the first event of the log does not: either every event carries one or none does"
        } else {
            "this event has no position but the first event of the log has one: either every event carries one or none does"
        };
        StoreError::BadLine {
            path: self.readers[file].path.clone(),
            line,
            message: message.to_string(),
            source: None,
        }
    }

    fn next_from_file(&mut self, file: usize) -> Option<Result<(u64, Event), StoreError>> {
        let (line, event) = match self.readers[file].next_event()? {
            Ok(found) => found,
            Err(err) => return Some(Err(err)),
        };
        let mode = *self.mode.get_or_insert(if event.position.is_some() {
            PositionMode::Carried
        } else {
            PositionMode::Ordinal
        });
        match (mode, event.position.is_some()) {
            (PositionMode::Ordinal, true) => Some(Err(self.mixed_error(file, line, true))),
            (PositionMode::Carried, false) => Some(Err(self.mixed_error(file, line, false))),
            _ => Some(Ok((line, event))),
        }
    }

    fn next_ordinal(&mut self) -> Option<Result<Event, StoreError>> {
        while self.current < self.readers.len() {
            match self.next_from_file(self.current) {
                None => self.current += 1,
                Some(Ok((_, mut event))) => {
                    event.position = Some(self.ordinal);
                    self.ordinal += 1;
                    return Some(Ok(event));
                }
                Some(Err(err)) => return Some(Err(err)),
            }
        }
        None
    }

    fn refill(&mut self, file: usize) -> Result<(), StoreError> {
        if self.heads[file].is_some() {
            return Ok(());
        }
        if let Some(next) = self.next_from_file(file) {
            let (line, event) = next?;
            self.heads[file] = Some((line, event));
        }
        Ok(())
    }

    fn next_merged(&mut self) -> Option<Result<Event, StoreError>> {
        for file in 0..self.readers.len() {
            if let Err(err) = self.refill(file) {
                return Some(Err(err));
            }
        }
        let position_of = |head: &Option<(u64, Event)>| head.as_ref().and_then(|(_, e)| e.position);
        let file = (0..self.heads.len())
            .filter(|&i| self.heads[i].is_some())
            .min_by_key(|&i| position_of(&self.heads[i]))?;
        let (line, event) = self.heads[file].take()?;
        let position = event.position.unwrap_or_default();
        if self.last_position.is_some_and(|last| position <= last) {
            return Some(Err(StoreError::BadLine {
                path: self.readers[file].path.clone(),
                line,
                message: format!(
                    "position {position} does not come after position {} read before it",
                    self.last_position.unwrap_or_default()
                ),
                source: None,
            }));
        }
        self.last_position = Some(position);
        Some(Ok(event))
    }
}

impl Iterator for LogReader {
    type Item = Result<Event, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.mode.is_none() {
            // The first event decides the mode; read it through the ordinal path's file walk.
            while self.current < self.readers.len() && self.heads[self.current].is_none() {
                match self.next_from_file(self.current) {
                    None => self.current += 1,
                    Some(Ok(head)) => self.heads[self.current] = Some(head),
                    Some(Err(err)) => return Some(Err(err)),
                }
            }
        }
        match self.mode? {
            PositionMode::Carried => self.next_merged(),
            PositionMode::Ordinal => {
                if let Some((_, mut event)) = self.heads.get_mut(self.current)?.take() {
                    event.position = Some(self.ordinal);
                    self.ordinal += 1;
                    return Some(Ok(event));
                }
                self.next_ordinal()
            }
        }
    }
}

/// A JSONL file or folder read as an event source.
pub struct JsonlSource {
    path: PathBuf,
}

impl JsonlSource {
    /// A source over a file or folder; fails when it does not exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        jsonl_files(path)?;
        Ok(JsonlSource {
            path: path.to_path_buf(),
        })
    }

    /// The events in log order, as a plain iterator.
    pub fn events(&self) -> Result<LogReader, StoreError> {
        LogReader::open(&self.path)
    }
}

impl EventSource for JsonlSource {
    fn describe(&self) -> String {
        format!("jsonl:{}", self.path.display())
    }

    /// Read ahead on a thread of its own ([`super::read_ahead`]).
    fn read_all(&self, after: Option<u64>) -> EventStream<'_> {
        let path = self.path.clone();
        super::read_ahead::read_ahead(self.path.clone(), move || {
            let is_after = move |event: &Result<Event, StoreError>| match event {
                Ok(event) => after.is_none_or(|after| event.position.is_some_and(|p| p > after)),
                Err(_) => true,
            };
            Ok(LogReader::open(&path)?.filter(is_after))
        })
    }

    fn read_stream<'a>(&'a self, stream: &'a str, from_revision: u64) -> EventStream<'a> {
        let events = self.events();
        Box::pin(async_stream::try_stream! {
            for event in events? {
                let event = event?;
                if event.stream == stream && event.revision >= from_revision {
                    yield event;
                }
            }
        })
    }

    fn list_streams(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        async move {
            let mut streams = std::collections::BTreeSet::new();
            for event in self.events()? {
                streams.insert(event?.stream);
            }
            Ok(streams.into_iter().collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    fn line(stream: &str, revision: u64, position: Option<u64>, n: u32) -> String {
        let position = position.map_or(String::new(), |p| format!(r#""position":{p},"#));
        format!(
            r#"{{"stream":"{stream}","revision":{revision},{position}"id":"00000000-0000-0000-0000-{n:012}","type":"T","data":{{"n":{n}}}}}"#
        )
    }

    fn write(path: &Path, lines: &[String]) {
        let mut file = File::create(path).unwrap();
        for l in lines {
            writeln!(file, "{l}").unwrap();
        }
    }

    #[test]
    fn folder_without_positions_reads_in_file_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.jsonl"), &[line("s", 1, None, 2)]);
        write(
            &dir.path().join("a.jsonl"),
            &[line("s", 0, None, 1), String::new()],
        );
        let events: Vec<_> = LogReader::open(dir.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let order: Vec<_> = events.iter().map(|e| (e.revision, e.position)).collect();
        assert_eq!(order, vec![(0, Some(0)), (1, Some(1))]);
    }

    #[test]
    fn folder_with_positions_merges_by_position() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("a.jsonl"),
            &[line("a", 0, Some(1), 1), line("a", 1, Some(4), 4)],
        );
        write(
            &dir.path().join("b.jsonl"),
            &[line("b", 0, Some(2), 2), line("b", 1, Some(3), 3)],
        );
        let positions: Vec<_> = LogReader::open(dir.path())
            .unwrap()
            .map(|e| e.unwrap().position.unwrap())
            .collect();
        assert_eq!(positions, vec![1, 2, 3, 4]);
    }

    #[test]
    fn mixed_positions_and_bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        write(&path, &[line("s", 0, None, 1), line("s", 1, Some(7), 2)]);
        let err = LogReader::open(&path).unwrap().nth(1).unwrap().unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2: this event carries", path.display())),
            "{err}"
        );
        write(&path, &[line("s", 0, None, 1), "{not json".into()]);
        let err = LogReader::open(&path).unwrap().nth(1).unwrap().unwrap_err();
        assert!(
            err.to_string().contains("x.jsonl:2: key must be a string"),
            "{err}"
        );
    }
}
