//! The embedded read-model store on sled (`--readmodels sled:PATH`).
//!
//! One sled tree, under one-byte key prefixes (projection names are `[a-z0-9_]`, so the `0x00`
//! separator cannot occur in them):
//! - `m` + name -> [`ProjectionMeta`];
//! - `c` + name + `0x00` + generation (u32 BE) + partition (u32 BE) -> [`PartCheckpoint`];
//! - `r` + name + `0x00` + generation (u32 BE) + key -> the row (a snapshot row is
//!   `{"revision": r, "state": {...}}`);
//! - `d` + name + `0x00` + generation (u32 BE) + position (u64 BE) + sequence -> [`DeadLetter`].
//!
//! [`SledReadModels::commit`] applies a [`Window`] (rows, checkpoints, dead letters) as one
//! atomic sled batch and flushes it, so a kill -9 leaves either the whole window or none of it.
//! While a batch inserts new keys it holds several kilobytes per key ([`NEW_ROW_BYTES`]), and
//! about a kilobyte per row it writes ([`ROW_WRITE_BYTES`]); the store reports both so that a
//! rebuild's memory bound covers them.
//! sled locks the folder: a second rebuilder (or any second process) is refused.

use super::{
    DeadLetter, PartCheckpoint, PartId, ProjectionMeta, ReadModelError, ReadModelStore, Window,
};
use crate::event::json_from_bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What sled 0.34 holds, until a batch ends, for each key the batch inserts: its tree nodes are
/// copied on write, and the old copies are freed only when the batch's epoch guard drops.
/// Measured (peak RSS, jemalloc) by inserting 28,000 new keys into a tree of 50,000 as one
/// batch and as batches of 1,000: 2.3 KB more per key with 60-byte values, 5.2 KB with 280-byte
/// values (the demo's rows are 56 to 281 bytes), 14.5 KB with 1,000-byte values. A rebuild's
/// first window inserts every row it writes. Every row written, new or not, also costs
/// [`ROW_WRITE_BYTES`].
pub const NEW_ROW_BYTES: usize = 6 << 10;

/// What a commit holds for each row it writes, new or not, until its batch ends: the copies of
/// tree nodes sled makes while it applies the batch. Measured with an allocator that tracks
/// its peak: one batch of 2,890 updates to keys scattered over a tree of 40,000 held 0.9 to
/// 1.2 KB per row above the batch itself with 100- and 300-byte values, 0.3 to 0.5 KB with
/// 1,000- and 3,000-byte values. (The row's encoded bytes replace its state, which the bound
/// counted already.)
pub const ROW_WRITE_BYTES: usize = 1 << 10;

/// The sled read-model store.
pub struct SledReadModels {
    path: PathBuf,
    db: ::sled::Db,
    tree: ::sled::Tree,
}

fn prefix(kind: u8, name: &str, generation: Option<u32>) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len() + 1 + 4 + 16);
    write_prefix(&mut key, kind, name, generation);
    key
}

/// Appends the layout every key starts with: kind, name, `0x00`, and the generation if any.
fn write_prefix(key: &mut Vec<u8>, kind: u8, name: &str, generation: Option<u32>) {
    key.push(kind);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    if let Some(generation) = generation {
        key.extend_from_slice(&generation.to_be_bytes());
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut key = vec![b'm'];
    key.extend_from_slice(name.as_bytes());
    key
}

fn checkpoint_key(part: &PartId) -> Vec<u8> {
    let mut key = prefix(b'c', &part.projection, Some(part.generation));
    key.extend_from_slice(&part.partition.to_be_bytes());
    key
}

fn row_key(name: &str, generation: u32, row: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len() + 1 + 4 + row.len());
    write_row_key(&mut key, name, generation, row);
    key
}

/// Writes a row's key into `key`, replacing what it held. sled copies a key into a buffer of
/// its own, so a commit builds every row's key in one buffer instead of a `Vec` per row.
fn write_row_key(key: &mut Vec<u8>, name: &str, generation: u32, row: &str) {
    key.clear();
    write_prefix(key, b'r', name, Some(generation));
    key.extend_from_slice(row.as_bytes());
}

impl SledReadModels {
    /// Opens (or creates) the store in the folder `path`.
    pub fn open(path: &Path) -> Result<Self, ReadModelError> {
        let db =
            crate::store::sled_store::open_db(path, crate::store::sled_store::SLED_CACHE_BYTES)
                .map_err(|source| {
                    if crate::store::sled_store::is_lock_error(&source) {
                        ReadModelError::Locked {
                            path: path.to_path_buf(),
                        }
                    } else {
                        ReadModelError::Sled {
                            path: path.to_path_buf(),
                            source,
                        }
                    }
                })?;
        let tree = db
            .open_tree("readmodels")
            .map_err(|source| ReadModelError::Sled {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(SledReadModels {
            path: path.to_path_buf(),
            db,
            tree,
        })
    }

    /// Parses `sled:PATH`.
    pub fn open_location(location: &str) -> Result<Self, ReadModelError> {
        match location.strip_prefix("sled:").filter(|p| !p.is_empty()) {
            Some(path) => Self::open(Path::new(path)),
            None => Err(ReadModelError::BadLocation(location.to_string())),
        }
    }

    fn sled_error(&self, source: ::sled::Error) -> ReadModelError {
        ReadModelError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn decode<T: DeserializeOwned>(&self, key: &[u8], bytes: &[u8]) -> Result<T, ReadModelError> {
        json_from_bytes(bytes).map_err(|source| ReadModelError::Corrupt {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, ReadModelError> {
        match self.tree.get(key).map_err(|e| self.sled_error(e))? {
            Some(bytes) => self.decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn put(&self, key: &[u8], value: &impl serde::Serialize) -> Result<(), ReadModelError> {
        let bytes = serde_json::to_vec(value).expect("read-model records serialize");
        self.tree
            .insert(key, bytes)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}

impl ReadModelStore for SledReadModels {
    fn describe(&self) -> String {
        format!("sled:{}", self.path.display())
    }

    fn fork(&self) -> Result<Box<dyn ReadModelStore>, ReadModelError> {
        Ok(Box::new(SledReadModels {
            path: self.path.clone(),
            db: self.db.clone(),
            tree: self.tree.clone(),
        }))
    }

    fn projections(&self) -> Result<Vec<String>, ReadModelError> {
        self.tree
            .scan_prefix(b"m")
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k[1..]).into_owned())
                    .map_err(|e| self.sled_error(e))
            })
            .collect()
    }

    fn meta(&self, name: &str) -> Result<ProjectionMeta, ReadModelError> {
        Ok(self.get(&meta_key(name))?.unwrap_or_default())
    }

    fn save_meta(&self, name: &str, meta: &ProjectionMeta) -> Result<(), ReadModelError> {
        self.put(&meta_key(name), meta)
    }

    fn checkpoint(&self, part: &PartId) -> Result<Option<PartCheckpoint>, ReadModelError> {
        self.get(&checkpoint_key(part))
    }

    fn checkpoints(
        &self,
        name: &str,
        generation: u32,
    ) -> Result<Vec<PartCheckpoint>, ReadModelError> {
        self.tree
            .scan_prefix(prefix(b'c', name, Some(generation)))
            .map(|item| {
                let (key, value) = item.map_err(|e| self.sled_error(e))?;
                self.decode(&key, &value)
            })
            .collect()
    }

    fn row(&self, name: &str, generation: u32, key: &str) -> Result<Option<Value>, ReadModelError> {
        self.get(&row_key(name, generation, key))
    }

    fn scan_rows(
        &self,
        name: &str,
        generation: u32,
        visit: &mut dyn FnMut(String, Value) -> bool,
    ) -> Result<(), ReadModelError> {
        let start = prefix(b'r', name, Some(generation)).len();
        for item in self.tree.scan_prefix(prefix(b'r', name, Some(generation))) {
            let (key, value) = item.map_err(|e| self.sled_error(e))?;
            if !visit(
                String::from_utf8_lossy(&key[start..]).into_owned(),
                self.decode(&key, &value)?,
            ) {
                break;
            }
        }
        Ok(())
    }

    fn dead_letters(&self, name: &str, generation: u32) -> Result<Vec<DeadLetter>, ReadModelError> {
        self.tree
            .scan_prefix(prefix(b'd', name, Some(generation)))
            .map(|item| {
                let (key, value) = item.map_err(|e| self.sled_error(e))?;
                self.decode(&key, &value)
            })
            .collect()
    }

    fn new_row_bytes(&self) -> usize {
        NEW_ROW_BYTES
    }

    fn row_write_bytes(&self) -> usize {
        ROW_WRITE_BYTES
    }

    fn commit(&self, window: Window) -> Result<(), ReadModelError> {
        let mut batch = ::sled::Batch::default();
        // sled copies what it is given into a buffer of its own, so one scratch buffer serves
        // every row. A fresh `Vec` per row started at 128 bytes and was regrown for most rows;
        // the bounded rebuild took about 5% more CPU (interleaved pairs).
        let mut bytes = Vec::with_capacity(1 << 10);
        let mut key = Vec::with_capacity(64);
        for row in window.rows {
            write_row_key(&mut key, &row.projection, row.generation, &row.key);
            match row.value {
                Some(value) => {
                    bytes.clear();
                    serde_json::to_writer(&mut bytes, &value).expect("rows serialize");
                    batch.insert(key.as_slice(), bytes.as_slice())
                }
                None => batch.remove(key.as_slice()),
            }
        }
        for (index, (part, position, letter)) in window.dead_letters.into_iter().enumerate() {
            let mut key = prefix(b'd', &part.projection, Some(part.generation));
            key.extend_from_slice(&position.to_be_bytes());
            key.extend_from_slice(&(index as u32).to_be_bytes());
            batch.insert(
                key,
                serde_json::to_vec(&letter).expect("dead letters serialize"),
            );
        }
        for (part, checkpoint) in window.checkpoints {
            batch.insert(
                checkpoint_key(&part),
                serde_json::to_vec(&checkpoint).expect("checkpoints serialize"),
            );
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    fn drop_generation(&self, name: &str, generation: u32) -> Result<(), ReadModelError> {
        let mut batch = ::sled::Batch::default();
        for kind in [b'r', b'c', b'd'] {
            for key in self
                .tree
                .scan_prefix(prefix(kind, name, Some(generation)))
                .keys()
            {
                batch.remove(key.map_err(|e| self.sled_error(e))?);
            }
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::ProjectionKind;
    use crate::readmodel::{Generation, RowWrite};
    use serde_json::json;

    fn generation(complete: bool) -> Generation {
        Generation {
            definition_version: 1,
            definition_checksum: "d".into(),
            upcaster_checksum: "u".into(),
            kind: ProjectionKind::Table,
            partitions: 1,
            source: "s".into(),
            complete,
        }
    }

    fn write(store: &SledReadModels, generation: u32, key: &str, value: Value) {
        let part = PartId {
            projection: "p".into(),
            generation,
            partition: 0,
        };
        let checkpoint = PartCheckpoint {
            position: Some(7),
            events: 1,
            ..Default::default()
        };
        store
            .commit(Window {
                rows: vec![RowWrite {
                    projection: "p".into(),
                    generation,
                    key: key.into(),
                    value: Some(value),
                }],
                checkpoints: vec![(part, checkpoint)],
                dead_letters: vec![],
                fresh: vec![],
                lease: None,
            })
            .unwrap();
    }

    #[test]
    fn a_row_that_is_not_json_text_is_corrupt_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledReadModels::open(dir.path()).unwrap();
        write(&store, 1, "good", json!({"name": "ünïcode", "n": [1, 2]}));
        assert_eq!(
            store.row("p", 1, "good").unwrap(),
            Some(json!({"name": "ünïcode", "n": [1, 2]}))
        );
        for (key, bytes) in [("latin1", &b"{\"name\":\"\xe9\"}"[..]), ("cut", b"{\"n\":")] {
            store.tree.insert(row_key("p", 1, key), bytes).unwrap();
            let err = store.row("p", 1, key).unwrap_err();
            assert!(
                matches!(&err, ReadModelError::Corrupt { key: k, .. } if k.ends_with(key)),
                "{err}"
            );
        }
    }

    #[test]
    fn swap_rollback_prune_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledReadModels::open(dir.path()).unwrap();
        assert!(matches!(
            store.swap("p"),
            Err(ReadModelError::UnknownProjection { .. })
        ));
        let mut meta = ProjectionMeta::default();
        meta.generations.insert(1, generation(false));
        store.save_meta("p", &meta).unwrap();
        assert!(matches!(
            store.swap("p"),
            Err(ReadModelError::NothingBuilt { .. })
        ));
        write(&store, 1, "a", json!({"n": 1}));
        meta.generations.insert(1, generation(true));
        store.save_meta("p", &meta).unwrap();
        assert_eq!(store.swap("p").unwrap(), 1);
        assert!(matches!(
            store.rollback("p"),
            Err(ReadModelError::NoPrevious { .. })
        ));
        write(&store, 2, "a", json!({"n": 2}));
        meta = store.meta("p").unwrap();
        meta.generations.insert(2, generation(true));
        store.save_meta("p", &meta).unwrap();
        let before = store.digest("p").unwrap();
        assert_eq!(store.swap("p").unwrap(), 2);
        assert_ne!(store.digest("p").unwrap(), before);
        assert_eq!(store.rollback("p").unwrap(), 1);
        assert_eq!(store.digest("p").unwrap(), before);
        store.swap("p").unwrap();
        assert_eq!(store.prune("p").unwrap(), vec![1]);
        assert_eq!(store.rows("p", 1, None).unwrap().len(), 0);
        assert_eq!(store.checkpoints("p", 2).unwrap()[0].position, Some(7));
    }
}
