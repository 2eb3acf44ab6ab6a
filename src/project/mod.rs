//! Projections: what is derived from events, and the rebuilder that regenerates it.
//!
//! A [`Projection`] has a name, a version, a [`ProjectionKind`] and a checksum of its
//! definition. A **snapshot** keeps one state per stream (an aggregate), stored with the stream
//! revision it covers; a **table** keeps rows keyed by a value taken from each event.
//! Projections come from declarative files ([`file::FileProjection`], loaded with
//! [`ProjectionSet::load_dir`]) or from Rust code implementing the trait.
//!
//! ```text
//! EventSource ──read_all──> Registry::upcast ──> Projection::keys/apply ──> dirty window ──┐
//!                                                                                          │
//!              ReadModels (sled): rows of generation N + checkpoint, one atomic batch <─────┘
//! ```
//!
//! The [`rebuild`] module folds events in memory and writes windows of dirty state; the
//! [`crate::readmodel`] module stores generations side by side for blue-green swaps; the
//! [`testing`] module replays fixture cases and compares them with expected read models.

pub mod file;
pub mod fold;
pub mod jq_input;
mod lane;
pub mod ops;
pub mod rebuild;
pub mod testing;
pub mod undo;
pub mod workers;

use crate::event::Event;
use crate::upcast::BoxError;
use ops::Outcome;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use undo::UndoLog;

/// Errors of loading projections.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A projection file that does not load.
    #[error(transparent)]
    File(#[from] file::ProjectionFileError),
    /// The projection folder cannot be listed.
    #[error("projection folder {path}: cannot list it")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Two projections with one name.
    #[error("two projections named {name}: {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    /// A name asked for that no projection has.
    #[error("no projection named {name}; known: {known}")]
    Unknown { name: String, known: String },
}

/// The two kinds of projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionKind {
    /// One state per stream, with the revision it covers.
    Snapshot,
    /// Rows keyed by a value from the event.
    Table,
}

/// Column types for SQL read-model stores; each column is the state field of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Text,
    Bigint,
    Double,
    Boolean,
    Timestamptz,
    Jsonb,
}

/// A projection: folds events into states or rows. Must be deterministic.
pub trait Projection: Send + Sync {
    /// Name: lowercase letters, digits and `_` (it names tables in SQL stores).
    fn name(&self) -> &str;
    /// Version of the definition.
    fn version(&self) -> u32;
    /// Snapshot or table.
    fn kind(&self) -> ProjectionKind;
    /// Where it comes from (file path or a Rust name), for messages.
    fn origin(&self) -> &str;
    /// Checksum of the definition; a change marks built read models stale.
    fn checksum(&self) -> String;
    /// Typed columns for SQL stores.
    fn columns(&self) -> Vec<(String, ColumnType)> {
        Vec::new()
    }
    /// True when the projection wants this event (its data is not parsed yet).
    fn handles(&self, event: &Event) -> bool;
    /// The keys of the states or rows the event changes (a snapshot: its stream).
    fn keys(&self, event: &Event, data: &Value) -> Result<Vec<String>, BoxError>;
    /// The state a new key starts from.
    fn initial(&self) -> Value;
    /// Applies the event to the state of `key`.
    fn apply(
        &self,
        key: &str,
        state: &mut Value,
        event: &Event,
        data: &Value,
    ) -> Result<Outcome, BoxError>;
    /// Applies like [`apply`](Self::apply), recording in `undo` how to take the change back
    /// (the fold rolls a failed event back with it). The default records a copy of the whole
    /// state; a projection that knows which parts it writes can record less.
    fn apply_undoable(
        &self,
        key: &str,
        state: &mut Value,
        event: &Event,
        data: &Value,
        undo: &mut UndoLog,
    ) -> Result<Outcome, BoxError> {
        undo.before_replace(state);
        self.apply(key, state, event, data)
    }
}

/// A checked set of projections with distinct names.
#[derive(Clone)]
pub struct ProjectionSet {
    projections: Vec<Arc<dyn Projection>>,
}

impl ProjectionSet {
    /// Builds a set, refusing two projections with one name.
    pub fn new(projections: Vec<Arc<dyn Projection>>) -> Result<Self, ProjectError> {
        for (i, p) in projections.iter().enumerate() {
            if let Some(first) = projections[..i].iter().find(|q| q.name() == p.name()) {
                return Err(ProjectError::Duplicate {
                    name: p.name().to_string(),
                    first: first.origin().to_string(),
                    second: p.origin().to_string(),
                });
            }
        }
        Ok(ProjectionSet { projections })
    }

    /// Loads every `*.toml` file of a folder, in name order.
    pub fn load_dir(dir: &Path) -> Result<Self, ProjectError> {
        let files =
            crate::upcast::definition_files(dir).map_err(|source| ProjectError::Folder {
                path: dir.to_path_buf(),
                source,
            })?;
        let mut projections: Vec<Arc<dyn Projection>> = Vec::new();
        for path in files {
            projections.push(Arc::new(file::FileProjection::load(&path)?));
        }
        Self::new(projections)
    }

    /// The projections.
    pub fn all(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    /// The projection called `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Projection>, ProjectError> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ProjectError::Unknown {
                name: name.to_string(),
                known: self
                    .projections
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The subset named in `names` (all when empty), in the order given.
    pub fn select(&self, names: &[String]) -> Result<ProjectionSet, ProjectError> {
        if names.is_empty() {
            return Ok(self.clone());
        }
        let picked = names
            .iter()
            .map(|n| self.get(n).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_selectable() {
        let p = |name: &str, file: &str| -> Arc<dyn Projection> {
            let text = format!(
                "name = \"{name}\"\nversion = 1\nkind = \"snapshot\"\n[[on]]\ntype = \"T\"\n"
            );
            Arc::new(file::FileProjection::parse(Path::new(file), &text).unwrap())
        };
        let dup = ProjectionSet::new(vec![p("a", "one.toml"), p("a", "two.toml")])
            .err()
            .unwrap()
            .to_string();
        assert!(
            dup.contains("one.toml") && dup.contains("two.toml"),
            "{dup}"
        );
        let set = ProjectionSet::new(vec![p("a", "1.toml"), p("b", "2.toml")]).unwrap();
        assert_eq!(set.select(&["b".into()]).unwrap().all()[0].name(), "b");
        assert!(set
            .select(&["c".into()])
            .err()
            .unwrap()
            .to_string()
            .contains("known: a, b"));
    }
}
