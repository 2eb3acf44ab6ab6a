//! The checkpoint store: where long jobs record how far they got (sled).
//!
//! A [`CheckpointStore`] is a sled database in a state folder (default `.recast/state`). Each
//! job has a key (its [`JobId`]) and a JSON record owned by the job's module (for example
//! [`crate::migrate::MigrationCheckpoint`]); it can also live in PostgreSQL
//! ([`CheckpointStore::open_location`] with `postgres://...`), where an advisory lock per job
//! keeps two runs of one job apart. [`CheckpointStore::save`] flushes before it
//! returns, so a saved checkpoint survives a kill -9. sled locks the folder, which is also the
//! job lock: a second process working from the same state folder gets
//! [`CheckpointError::Locked`] instead of racing the first.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    /// PostgreSQL failed.
    #[error("checkpoint store {location}")]
    Postgres {
        location: String,
        #[source]
        source: postgres::Error,
    },
    /// The server could not be reached or set up.
    #[error("checkpoint store {location}")]
    Server {
        location: String,
        #[source]
        source: Box<crate::readmodel::ReadModelError>,
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
    backend: Backend,
}

enum Backend {
    Sled {
        path: PathBuf,
        tree: sled::Tree,
        db: sled::Db,
    },
    Postgres {
        shown: String,
        table: String,
        client: Box<Mutex<postgres::Client>>,
    },
}

impl CheckpointStore {
    /// Opens (or creates) the store in the sled folder `path`.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let sled_error = |source| CheckpointError::Sled {
            path: path.to_path_buf(),
            source,
        };
        let db =
            crate::store::sled_store::open_db(path, crate::store::sled_store::SLED_CACHE_BYTES)
                .map_err(|source| {
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
            backend: Backend::Sled {
                path: path.to_path_buf(),
                tree,
                db,
            },
        })
    }

    /// Opens a store by location: `sled:PATH`, a bare folder path, or `postgres://...`
    /// (a `recast_jobs` table in the location's schema).
    pub fn open_location(location: &str) -> Result<Self, CheckpointError> {
        if !(location.starts_with("postgres://") || location.starts_with("postgresql://")) {
            return Self::open(Path::new(
                location.strip_prefix("sled:").unwrap_or(location),
            ));
        }
        let (mut client, schema, shown) = crate::readmodel::postgres::connect_location(location)
            .map_err(|source| CheckpointError::Server {
                location: crate::readmodel::postgres::redact(location),
                source: Box::new(source),
            })?;
        let table = format!("{schema}.recast_jobs");
        client
            .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (job text PRIMARY KEY, checkpoint jsonb NOT NULL)"))
            .map_err(|source| CheckpointError::Postgres { location: shown.clone(), source })?;
        Ok(CheckpointStore {
            backend: Backend::Postgres {
                shown,
                table,
                client: Box::new(Mutex::new(client)),
            },
        })
    }

    /// Runs one statement on the PostgreSQL backend, naming the store in any error.
    fn on_postgres<T>(
        shown: &str,
        client: &Mutex<postgres::Client>,
        work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, CheckpointError> {
        let mut client = client.lock().unwrap_or_else(|p| p.into_inner());
        work(&mut client).map_err(|source| CheckpointError::Postgres {
            location: shown.to_string(),
            source,
        })
    }

    fn describe(&self) -> PathBuf {
        match &self.backend {
            Backend::Sled { path, .. } => path.clone(),
            Backend::Postgres { shown, .. } => PathBuf::from(shown),
        }
    }

    /// Takes the exclusive right to run a job for as long as this store is open. In sled the
    /// folder lock already gives it; in PostgreSQL an advisory lock does.
    pub fn lock_job(&self, job: &JobId) -> Result<(), CheckpointError> {
        let Backend::Postgres { shown, client, .. } = &self.backend else {
            return Ok(());
        };
        let key = format!("recast-job:{job}");
        let locked: bool = Self::on_postgres(shown, client, |c| {
            c.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
        })?
        .get(0);
        if locked {
            Ok(())
        } else {
            Err(CheckpointError::Locked {
                path: PathBuf::from(format!("{shown}, job {job}")),
            })
        }
    }

    fn get(&self, job: &JobId) -> Result<Option<Vec<u8>>, CheckpointError> {
        match &self.backend {
            Backend::Sled { path, tree, .. } => {
                let value = tree
                    .get(job.as_str())
                    .map_err(|source| CheckpointError::Sled {
                        path: path.clone(),
                        source,
                    })?;
                Ok(value.map(|v| v.to_vec()))
            }
            Backend::Postgres {
                shown,
                table,
                client,
            } => {
                let sql = format!("SELECT checkpoint::text FROM {table} WHERE job = $1");
                let row =
                    Self::on_postgres(shown, client, |c| c.query_opt(&sql, &[&job.as_str()]))?;
                Ok(row.map(|r| r.get::<_, String>(0).into_bytes()))
            }
        }
    }

    /// The checkpoint of a job, if it has one.
    pub fn load<T: DeserializeOwned>(&self, job: &JobId) -> Result<Option<T>, CheckpointError> {
        let Some(bytes) = self.get(job)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Corrupt {
                job: job.to_string(),
                path: self.describe(),
                source,
            })
    }

    /// Saves a job's checkpoint durably.
    pub fn save<T: Serialize>(&self, job: &JobId, checkpoint: &T) -> Result<(), CheckpointError> {
        match &self.backend {
            Backend::Sled { path, tree, db } => {
                let bytes = serde_json::to_vec(checkpoint).expect("checkpoints serialize");
                let sled_error = |source| CheckpointError::Sled {
                    path: path.clone(),
                    source,
                };
                tree.insert(job.as_str(), bytes).map_err(sled_error)?;
                db.flush().map_err(sled_error)?;
            }
            Backend::Postgres {
                shown,
                table,
                client,
            } => {
                let value = serde_json::to_value(checkpoint).expect("checkpoints serialize");
                let sql = format!("INSERT INTO {table} (job, checkpoint) VALUES ($1, $2) ON CONFLICT (job) DO UPDATE SET checkpoint = excluded.checkpoint");
                Self::on_postgres(shown, client, |c| c.execute(&sql, &[&job.as_str(), &value]))?;
            }
        }
        Ok(())
    }

    /// Forgets a job's checkpoint.
    pub fn remove(&self, job: &JobId) -> Result<(), CheckpointError> {
        match &self.backend {
            Backend::Sled { path, tree, db } => {
                let sled_error = |source| CheckpointError::Sled {
                    path: path.clone(),
                    source,
                };
                tree.remove(job.as_str()).map_err(sled_error)?;
                db.flush().map_err(sled_error)?;
            }
            Backend::Postgres {
                shown,
                table,
                client,
            } => {
                let sql = format!("DELETE FROM {table} WHERE job = $1");
                Self::on_postgres(shown, client, |c| c.execute(&sql, &[&job.as_str()]))?;
            }
        }
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
