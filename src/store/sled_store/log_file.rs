//! The append-only files of the sled event store, in `PATH/log/`:
//! - [`EVENTS`]: every event as one JSON line in log order, appended to and never rewritten (a
//!   resumed job may cut its end off);
//! - [`INDEX`]: the full chunks of the stream indexes (see [`super::layout`]).
//!
//! A file is written before sled records how long it is (the `L` and `J` keys), so bytes past
//! that length were written by a batch that crashed before it was committed:
//! [`LogFile::open`] cuts them off.
//! Reads are positioned (`pread`), so they need no `&mut` and no shared cursor.

use crate::store::StoreError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The name of the events file.
pub(super) const EVENTS: &str = "events.jsonl";
/// The name of the index file.
pub(super) const INDEX: &str = "index.bin";

/// One append-only file.
#[derive(Debug)]
pub(super) struct LogFile {
    path: PathBuf,
    file: File,
}

impl LogFile {
    /// Opens (or creates) the file `name` of the store in `folder`, cut back to `committed`
    /// bytes.
    pub fn open(folder: &Path, name: &str, committed: u64) -> Result<LogFile, StoreError> {
        let dir = folder.join("log");
        let path = dir.join(name);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        if length < committed {
            return Err(StoreError::Damaged {
                path: path.clone(),
                reason: format!("the file has {length} bytes but the store committed {committed}"),
            });
        }
        let log = LogFile { path, file };
        if length > committed {
            log.truncate(committed)?;
        }
        Ok(log)
    }

    fn io_error(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes `bytes` at `offset` and makes them durable.
    pub fn append(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all_at(bytes, offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| self.io_error(e))
    }

    /// The `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let mut buffer = vec![0; len];
        self.file
            .read_exact_at(&mut buffer, offset)
            .map_err(|e| self.io_error(e))?;
        Ok(buffer)
    }

    /// Cuts the file to `len` bytes, durably.
    pub fn truncate(&self, len: u64) -> Result<(), StoreError> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| self.io_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_past_the_committed_length_are_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path(), EVENTS, 0).unwrap();
        log.append(0, b"{\"a\":1}\n").unwrap();
        log.append(8, b"{\"b\":2}\n").unwrap();
        assert_eq!(log.read(8, 8).unwrap(), b"{\"b\":2}\n");
        drop(log);
        let log = LogFile::open(dir.path(), EVENTS, 8).unwrap();
        assert!(log.read(8, 1).is_err());
        assert_eq!(log.read(0, 8).unwrap(), b"{\"a\":1}\n");
        let short = LogFile::open(dir.path(), EVENTS, 100).unwrap_err();
        assert!(short.to_string().contains("committed 100"), "{short}");
    }
}
