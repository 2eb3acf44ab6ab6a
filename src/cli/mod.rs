//! The command line: argument parsing ([`Cli`]), dispatch ([`run`]) and exit codes.
//!
//! This is the only code that prints. Each subcommand lives in a module that turns flags and
//! `recast.toml` ([`config`]) into library calls and formats the result ([`output`]): human text
//! by default, JSON with `--json`. Exit codes: 0 success, 1 error, 2 bad usage (clap),
//! 3 verification found a mismatch, 130 stopped by Ctrl-C after saving a checkpoint.

mod commands;
mod config;
mod inspect;
mod output;
mod progress;
mod rebuild;
mod status;

use clap::{Args, Parser, Subcommand};
use recast::migrate::ErrorPolicy;
use std::path::PathBuf;
use std::process::ExitCode;

/// Upcast event-sourced streams and rebuild what is derived from them.
#[derive(Debug, Parser)]
#[command(name = "recast", version, about)]
pub struct Cli {
    /// Configuration file (default: ./recast.toml when it exists).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy-transform: upcast every event of the source into the target, resumably.
    Migrate(commands::MigrateArgs),
    /// Account for every source event of a migration against its target.
    Verify(commands::VerifyArgs),
    /// Show which upcasters touch how many events of a source, after checking the chain.
    Plan(commands::PlanArgs),
    /// The demo pipeline: migrate the demo log with the demo upcasters, then verify.
    Run(commands::RunArgs),
    /// Replay the log through projections into read models (snapshots and tables).
    Rebuild(rebuild::RebuildArgs),
    /// Make the newest finished generation of a projection live.
    Swap(rebuild::NameArgs),
    /// Make the previous generation of a projection live again.
    Rollback(rebuild::NameArgs),
    /// Drop the generations of a projection that are neither live nor being built.
    Prune(rebuild::NameArgs),
    /// Show every projection: live and building generations, checkpoint, lag, staleness, errors.
    Status(rebuild::StatusArgs),
    /// Print the rows (or one row) of a projection's live generation.
    Query(rebuild::QueryArgs),
    /// Replay fixture cases through upcasters and projections and compare with expectations.
    Test(rebuild::TestArgs),
    /// A canonical digest of a store's events, or of a read model.
    Checksum(inspect::ChecksumArgs),
    /// Show one stream, raw or upcast.
    Cat(inspect::CatArgs),
    /// Write a store's events as JSONL, raw or upcast.
    Export(inspect::ExportArgs),
    /// Import NDJSON with field mappings into a store.
    Import(inspect::ImportArgs),
    /// Write a deterministic synthetic log of the demo domain.
    Generate(inspect::GenerateArgs),
}

/// Flags shared by commands that upcast.
#[derive(Debug, Clone, Args)]
pub struct UpcastFlags {
    /// Folder of upcaster files (default from config: upcasters).
    #[arg(long)]
    pub upcasters: Option<PathBuf>,
}

/// Flags shared by migrate and verify.
#[derive(Debug, Clone, Args)]
pub struct JobFlags {
    /// Source location: jsonl:PATH, sled:PATH, or a path to a .jsonl file or folder.
    #[arg(long)]
    pub from: Option<String>,
    /// Target location.
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub upcast: UpcastFlags,
    /// Target stream names, e.g. "{stream}-v2", "{category}_v2-{id}", "{/tenant}-{stream}".
    #[arg(long)]
    pub template: Option<String>,
    /// What to do with an event an upcaster fails on.
    #[arg(long, value_enum)]
    pub on_error: Option<ErrorPolicy>,
    /// Dead-letter file, used with --on-error dead-letter.
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,
}

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// An error, printed as its chain.
    Error(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A bad combination of flags that clap cannot see.
    Usage(String),
    /// `verify` (or `run`) found a mismatch; the report was printed.
    Mismatch,
    /// Stopped by Ctrl-C; a checkpoint was saved.
    Interrupted,
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Error(Box::new(error))
    }
}

/// Expands `${NAME}` in a location from the environment, so secrets need not be written into
/// `recast.toml` or a command line: `postgres://app:${PGPASS}@db/x`. A missing variable is an
/// error naming the variable, never its value.
pub fn expand_env(text: &str) -> Result<String, Failure> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| {
            Failure::Usage(format!(
                "unclosed ${{ in a location: {}",
                recast::readmodel::postgres::redact(text)
            ))
        })?;
        let name = &rest[start + 2..start + end];
        let value = std::env::var(name).map_err(|_| {
            Failure::Usage(format!(
                "environment variable {name} (used in a location) is not set"
            ))
        })?;
        out.push_str(&value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a location after expanding environment variables.
pub fn parse_location(text: &str) -> Result<recast::store::Location, Failure> {
    Ok(recast::store::Location::parse(&expand_env(text)?)?)
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let config = config::Config::load(cli.config.as_deref())?;
    let json = cli.json;
    match cli.command {
        Command::Migrate(args) => commands::migrate(args, &config, json).await,
        Command::Verify(args) => commands::verify(args, &config, json).await,
        Command::Plan(args) => commands::plan(args, &config, json).await,
        Command::Run(args) => commands::demo(args, &config, json).await,
        Command::Rebuild(args) => rebuild::rebuild_command(args, &config, json).await,
        Command::Swap(args) => rebuild::swap(args, &config, json),
        Command::Rollback(args) => rebuild::rollback(args, &config, json),
        Command::Prune(args) => rebuild::prune(args, &config, json),
        Command::Status(args) => rebuild::status(args, &config, json).await,
        Command::Query(args) => rebuild::query(args, &config, json),
        Command::Test(args) => rebuild::test(args, &config, json),
        Command::Checksum(args) => inspect::checksum(args, &config, json).await,
        Command::Cat(args) => inspect::cat(args, &config).await,
        Command::Export(args) => inspect::export(args, &config).await,
        Command::Import(args) => inspect::import(args, json).await,
        Command::Generate(args) => inspect::generate(args),
    }
}

/// Prints a failure and maps it to the process exit code.
pub fn exit_code(outcome: Result<(), Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Error(error)) => {
            eprintln!("error: {}", recast::error::chain(error.as_ref()));
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Mismatch) => ExitCode::from(3),
        Err(Failure::Interrupted) => {
            eprintln!("stopped: the checkpoint is saved; run the same command again to resume");
            ExitCode::from(130)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_take_secrets_from_the_environment() {
        std::env::set_var("RECAST_TEST_SECRET_X", "s3cret");
        assert_eq!(
            expand_env("postgres://a:${RECAST_TEST_SECRET_X}@h/db").unwrap(),
            "postgres://a:s3cret@h/db"
        );
        assert_eq!(expand_env("sled:plain").unwrap(), "sled:plain");
        let missing = match expand_env("postgres://a:${RECAST_TEST_NOT_SET_Y}@h/db") {
            Err(Failure::Usage(message)) => message,
            _ => panic!("a missing variable must be a usage error"),
        };
        assert!(missing.contains("RECAST_TEST_NOT_SET_Y"), "{missing}");
    }
}
