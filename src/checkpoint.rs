//! The checkpoint store: where long jobs record how far they got (sled).
//!
//! A [`CheckpointStore`] is a sled database in a state folder (default `.recast/state`). Each
//! job has a key (its [`JobId`]) and a JSON record owned by the job's module (for example
//! [`crate::migrate::MigrationCheckpoint`]). [`CheckpointStore::save`] flushes before it
//! returns, so a saved checkpoint survives a kill -9. sled locks the folder, which is also the
//! job lock: a second process working from the same state folder gets
//! [`CheckpointError::Locked`] instead of racing the first.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The state folder is held by another process.
    #[error("state folder {path} is in use by another recast process")]
    Locked { path: PathBuf },
    /// sled failed.
    #[error("checkpoint store {path}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// A stored checkpoint that does not parse.
    #[error("checkpoint of job {job} in {path} is damaged")]
    Corrupt {
        job: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The key of a job: a readable kind plus a hash of what defines the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobId(String);

impl JobId {
    /// `kind:` and 16 hex digits of SHA-256 over `parts`.
    pub fn new(kind: &str, parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        JobId(format!("{kind}:{}", &hex::encode(hasher.finalize())[..16]))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checkpoints of all jobs that use one state folder.
pub struct CheckpointStore {
    path: PathBuf,
    tree: sled::Tree,
    db: sled::Db,
}

impl CheckpointStore {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let sled_error = |source| CheckpointError::Sled {
            path: path.to_path_buf(),
            source,
        };
        let db = crate::store::sled_store::open_db(path).map_err(|source| {
            if crate::store::sled_store::is_lock_error(&source) {
                CheckpointError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                sled_error(source)
            }
        })?;
        let tree = db.open_tree("checkpoints").map_err(sled_error)?;
        Ok(CheckpointStore {
            path: path.to_path_buf(),
            tree,
            db,
        })
    }

    fn sled_error(&self, source: sled::Error) -> CheckpointError {
        CheckpointError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// The checkpoint of a job, if it has one.
    pub fn load<T: DeserializeOwned>(&self, job: &JobId) -> Result<Option<T>, CheckpointError> {
        let Some(bytes) = self
            .tree
            .get(job.as_str())
            .map_err(|e| self.sled_error(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Corrupt {
                job: job.to_string(),
                path: self.path.clone(),
                source,
            })
    }

    /// Saves a job's checkpoint durably.
    pub fn save<T: Serialize>(&self, job: &JobId, checkpoint: &T) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec(checkpoint).expect("checkpoints serialize");
        self.tree
            .insert(job.as_str(), bytes)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }

    /// Forgets a job's checkpoint.
    pub fn remove(&self, job: &JobId) -> Result<(), CheckpointError> {
        self.tree
            .remove(job.as_str())
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_removes_and_locks_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new("migrate", &["a", "b"]);
        assert_ne!(job, JobId::new("migrate", &["ab", ""]));
        {
            let store = CheckpointStore::open(dir.path()).unwrap();
            assert!(matches!(
                CheckpointStore::open(dir.path()),
                Err(CheckpointError::Locked { .. })
            ));
            assert_eq!(store.load::<u64>(&job).unwrap(), None);
            store.save(&job, &42u64).unwrap();
        }
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(store.load::<u64>(&job).unwrap(), Some(42));
        store.remove(&job).unwrap();
        assert_eq!(store.load::<u64>(&job).unwrap(), None);
    }
}
