//! The crate-wide [`Error`]: one variant per module error, and [`chain`] for messages.
//!
//! Each module keeps its own `thiserror` enum whose messages name the stream, position, file,
//! upcaster or projection involved; their sources stay attached with `#[source]`. The CLI prints
//! an error as its [`chain`]: the message and each cause, joined by `: `.

use crate::checkpoint::CheckpointError;
use crate::migrate::MigrateError;
use crate::store::StoreError;
use crate::upcast::UpcastError;

/// Any error of the recast library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An event store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An upcaster or the upcaster set failed.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An import failed.
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    /// Generating a synthetic log failed.
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    /// Projections do not load.
    #[error(transparent)]
    Project(#[from] crate::project::ProjectError),
    /// The read-model store failed or refused.
    #[error(transparent)]
    ReadModel(#[from] crate::readmodel::ReadModelError),
    /// A rebuild failed.
    #[error(transparent)]
    Rebuild(#[from] crate::project::rebuild::RebuildError),
    /// A replay or fixture case failed.
    #[error(transparent)]
    Testing(#[from] crate::project::testing::TestingError),
    /// A stream template does not parse.
    #[error(transparent)]
    Template(#[from] crate::migrate::template::TemplateError),
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of an error followed by each of its causes, joined by `: `. A cause whose text
/// its parent already shows (errors that embed their source) is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        let first_line = part.lines().next().unwrap_or_default();
        if !text.contains(first_line) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_causes_once() {
        let io = std::io::Error::other("disk full");
        let err = crate::checkpoint::CheckpointError::Sled {
            path: "state".into(),
            source: sled::Error::Io(io),
        };
        let text = chain(&err);
        assert!(text.starts_with("checkpoint store state: "), "{text}");
        assert_eq!(text.matches("disk full").count(), 1, "{text}");
    }
}
