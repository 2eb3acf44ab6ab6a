//! The dead-letter file of a migration: one JSON line per event an upcaster failed on, with
//! the original envelope, the upcaster and the reason. Like the JSONL sink it is truncated back
//! to its checkpointed length on resume, so each failed event is in it exactly once.

use crate::event::Event;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Errors of the dead-letter file.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// File system trouble.
    #[error("dead-letter file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than the checkpoint says.
    #[error("dead-letter file {path} has {length} bytes but the checkpoint covers {expected}: it was changed outside recast")]
    Shorter {
        path: PathBuf,
        length: u64,
        expected: u64,
    },
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    event: &'a Event,
    upcaster: Option<&'a str>,
    error: &'a str,
}

/// An open dead-letter file.
pub struct DeadLetterFile {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
}

impl DeadLetterFile {
    /// Opens the file and cuts it to `bytes` (0 for a new job).
    pub fn open(path: &Path, bytes: u64) -> Result<Self, DeadLetterError> {
        let io = |source| DeadLetterError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        if length < bytes {
            return Err(DeadLetterError::Shorter {
                path: path.to_path_buf(),
                length,
                expected: bytes,
            });
        }
        file.set_len(bytes).map_err(io)?;
        let mut file = BufWriter::new(file);
        file.seek(SeekFrom::Start(bytes)).map_err(io)?;
        Ok(DeadLetterFile {
            path: path.to_path_buf(),
            file,
            bytes,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one failed event.
    pub fn write(
        &mut self,
        event: &Event,
        upcaster: Option<&str>,
        error: &str,
    ) -> Result<(), DeadLetterError> {
        let mut line = serde_json::to_string(&DeadLetter {
            event,
            upcaster,
            error,
        })
        .expect("dead letters serialize");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| DeadLetterError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Flushes to disk and returns the length a checkpoint records.
    pub fn commit(&mut self) -> Result<u64, DeadLetterError> {
        let io = |source| DeadLetterError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_data().map_err(io)?;
        Ok(self.bytes)
    }
}

/// The number of dead letters in a file (0 when it does not exist).
pub fn count_dead_letters(path: &Path) -> Result<u64, DeadLetterError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter(|l| !l.trim().is_empty()).count() as u64),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(DeadLetterError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_by_cutting_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        let event: Event = serde_json::from_str(r#"{"stream":"s","revision":0,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"T","data":{}}"#).unwrap();
        let mut file = DeadLetterFile::open(&path, 0).unwrap();
        file.write(&event, Some("u.toml"), "boom").unwrap();
        let mark = file.commit().unwrap();
        file.write(&event, None, "again").unwrap();
        file.commit().unwrap();
        assert_eq!(count_dead_letters(&path).unwrap(), 2);
        drop(DeadLetterFile::open(&path, mark).unwrap());
        assert_eq!(count_dead_letters(&path).unwrap(), 1);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains(r#""upcaster":"u.toml","error":"boom""#));
    }
}
