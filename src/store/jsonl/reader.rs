//! [`JsonlFileReader`]: the lines of one JSONL file, parsed into events where they lie in the
//! read buffer. [`super::LogReader`] merges the readers of a location's files into the log.

use super::{bad_json, io_error};
use crate::event::Event;
use crate::store::StoreError;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Reads one JSONL file line by line, yielding each event with its line number.
///
/// A line is parsed where it lies in the reader's buffer: copying it into a `String` first
/// (`read_line`) cost a copy of every line. Only a line that runs past the end of the buffer
/// is assembled in `spill`.
pub struct JsonlFileReader {
    pub(super) path: PathBuf,
    reader: BufReader<File>,
    line_number: u64,
    /// The bytes of the line last returned, to be consumed from the reader's buffer.
    returned: usize,
    spill: Vec<u8>,
}

impl JsonlFileReader {
    /// Opens a file for reading.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(io_error(path))?;
        Ok(JsonlFileReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            line_number: 0,
            returned: 0,
            spill: Vec::new(),
        })
    }

    /// The next non-blank line, with its line number, without its line end.
    pub fn next_line(&mut self) -> Option<Result<(u64, &[u8]), StoreError>> {
        let found = loop {
            self.reader.consume(std::mem::take(&mut self.returned));
            self.line_number += 1;
            let available = match self.reader.fill_buf() {
                Ok([]) => return None,
                Ok(available) => available,
                Err(source) => return Some(Err(self.read_error(&source))),
            };
            match memchr::memchr(b'\n', available) {
                Some(end) => {
                    self.returned = end + 1;
                    if !available[..end].trim_ascii().is_empty() {
                        break Found::Buffered(end);
                    }
                }
                None => {
                    self.spill.clear();
                    if let Err(source) = self.reader.read_until(b'\n', &mut self.spill) {
                        return Some(Err(self.read_error(&source)));
                    }
                    if !self.spill.trim_ascii().is_empty() {
                        break Found::Spilled;
                    }
                }
            }
        };
        let text = match found {
            Found::Buffered(end) => &self.reader.buffer()[..end],
            Found::Spilled => self.spill.strip_suffix(b"\n").unwrap_or(&self.spill),
        };
        Some(Ok((self.line_number, text)))
    }

    fn read_error(&self, source: &std::io::Error) -> StoreError {
        StoreError::BadLine {
            path: self.path.clone(),
            line: self.line_number,
            message: format!("cannot read line: {source}"),
            source: None,
        }
    }

    pub(super) fn next_event(&mut self) -> Option<Result<(u64, Event), StoreError>> {
        let (line, text) = match self.next_line()? {
            Ok(found) => found,
            Err(err) => return Some(Err(err)),
        };
        let parsed = parse_event(text);
        Some(match parsed {
            Ok(event) => Ok((line, event)),
            Err(reason) => Err(reason.at(&self.path, line)),
        })
    }
}

/// Parses and checks one envelope line, naming file and line in any error.
pub fn parse_event_line(path: &Path, line: u64, text: &str) -> Result<Event, StoreError> {
    parse_event(text.as_bytes()).map_err(|reason| reason.at(path, line))
}

/// Where [`JsonlFileReader::next_line`] found a line: in the reader's buffer (its length), or
/// assembled in `spill`.
enum Found {
    Buffered(usize),
    Spilled,
}

/// Why a line is not an event, before the file and line are known.
enum LineError {
    Utf8(std::str::Utf8Error),
    Json(serde_json::Error),
    Event(crate::event::EventError),
}

impl LineError {
    fn at(self, path: &Path, line: u64) -> StoreError {
        match self {
            LineError::Utf8(err) => StoreError::BadLine {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "the line is not UTF-8 text (column {})",
                    err.valid_up_to() + 1
                ),
                source: None,
            },
            LineError::Json(err) => bad_json(path, line, err),
            LineError::Event(source) => StoreError::BadEvent {
                path: path.to_path_buf(),
                line,
                source,
            },
        }
    }
}

fn parse_event(text: &[u8]) -> Result<Event, LineError> {
    // One check of the whole line, then serde_json's `str` reader, which does not check each
    // string again: its byte reader, checking string by string, took more time than this.
    let text = std::str::from_utf8(text).map_err(LineError::Utf8)?;
    let event: Event = serde_json::from_str(text).map_err(LineError::Json)?;
    event.validate().map_err(LineError::Event)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event_line(n: usize, padding: usize) -> String {
        format!(
            r#"{{"stream":"s-{n}","revision":0,"id":"00000000-0000-0000-0000-{n:012}","type":"T","data":{{"pad":"{}"}}}}"#,
            "x".repeat(padding)
        )
    }

    fn reader_of(bytes: &[u8]) -> (tempfile::TempDir, JsonlFileReader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let reader = JsonlFileReader::open(&path).unwrap();
        (dir, reader)
    }

    fn events(reader: &mut JsonlFileReader) -> Vec<(u64, Event)> {
        std::iter::from_fn(|| reader.next_event())
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn lines_across_the_buffer_end_blank_lines_and_crlf_read_whole() {
        // Lines of 1 to 200 KiB: many cross the 64 KiB buffer's end, some are longer than it.
        let mut text = String::new();
        let mut expected = Vec::new();
        for n in 0..40 {
            let padding = (n * 5_003) % 200_000 + 1;
            text.push_str(&event_line(n, padding));
            text.push_str(if n % 3 == 0 { "\r\n" } else { "\n" });
            if n % 7 == 0 {
                text.push_str("  \t\n\n");
            }
            expected.push(padding);
        }
        let (_dir, mut reader) = reader_of(text.trim_end().as_bytes());
        let read = events(&mut reader);
        let pads: Vec<usize> = read
            .iter()
            .map(|(_, e)| e.data.to_value().unwrap()["pad"].as_str().unwrap().len())
            .collect();
        assert_eq!(pads, expected);
        let numbers: Vec<u64> = read.iter().map(|(line, _)| *line).collect();
        let blank_before = |n: u64| n.div_ceil(7) * 2;
        let want: Vec<u64> = (0..40).map(|n| n + 1 + blank_before(n)).collect();
        assert_eq!(numbers, want);
    }

    #[test]
    fn a_line_that_is_not_utf8_names_its_line_and_column() {
        let mut bytes = event_line(1, 3).into_bytes();
        bytes.push(b'\n');
        bytes.extend_from_slice(b"{\"stream\":\"s\xff\"}\n");
        let (_dir, mut reader) = reader_of(&bytes);
        assert!(reader.next_event().unwrap().is_ok());
        let err = reader.next_event().unwrap().unwrap_err().to_string();
        assert!(
            err.ends_with("log.jsonl:2: the line is not UTF-8 text (column 13)"),
            "{err}"
        );
        assert!(reader.next_event().is_none());
    }
}
