//! `rebuild`, `swap`, `rollback`, `prune`, `status`, `query` and `test`: the commands built on
//! [`recast::project`] and [`recast::readmodel`].

use super::config::Config;
use super::{output, progress, Failure};
use clap::Args;
use recast::migrate::ErrorPolicy;
use recast::project::rebuild::{RebuildOptions, RebuildReport, Rebuilder};
use recast::project::{testing, ProjectionSet};
use recast::readmodel::ReadModelStore;
use recast::store::{open_source, Location};
use recast::upcast::Registry;
use std::path::PathBuf;
use std::time::Duration;

/// Where read models live and what defines them.
#[derive(Debug, Clone, Args)]
pub struct ReadModelFlags {
    /// Read-model store: sled:PATH (default from config).
    #[arg(long)]
    pub readmodels: Option<String>,
}

/// `recast rebuild`
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Projections to rebuild (default: all).
    pub names: Vec<String>,
    /// Event source (default from config: [rebuild] source, else the migration target).
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub store: ReadModelFlags,
    /// Folder of projection files.
    #[arg(long)]
    pub projections: Option<PathBuf>,
    /// Folder of upcaster files (events are upcast on read).
    #[arg(long)]
    pub upcasters: Option<PathBuf>,
    /// Rebuild snapshot projections in N partitions, by stream hash.
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Bound, in MiB, on the state held in memory between writes, with what the store takes to
    /// write its rows.
    #[arg(long)]
    pub memory_mb: Option<usize>,
    /// What to do when a projection fails on an event.
    #[arg(long, value_enum)]
    pub on_error: Option<ErrorPolicy>,
    /// After catching up, keep applying new events until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// Start a new generation beside the live one even if the newest could be continued.
    #[arg(long = "new")]
    pub new_generation: bool,
    /// Share the rebuild with other workers through the (PostgreSQL) read-model store:
    /// claim free partitions until none is left. Snapshot projections only.
    #[arg(long)]
    pub worker: bool,
    /// With --worker: seconds a claim lives without being renewed by a window.
    #[arg(long, default_value_t = 30)]
    pub lease_seconds: u32,
}

/// `recast swap|rollback|prune NAME`
#[derive(Debug, Args)]
pub struct NameArgs {
    /// Projection name.
    pub name: String,
    #[command(flatten)]
    pub store: ReadModelFlags,
}

/// `recast status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: ReadModelFlags,
    /// Event source, to show the lag behind its head (default from config).
    #[arg(long)]
    pub from: Option<String>,
}

/// `recast query`
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Projection name.
    pub name: String,
    /// One row key (a stream for snapshots); default: every row.
    pub key: Option<String>,
    #[command(flatten)]
    pub store: ReadModelFlags,
}

/// `recast test`
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Folder of fixture cases (default from config: streams/cases).
    #[arg(long)]
    pub cases: Option<PathBuf>,
    /// Write the expected files from what the projections produce now.
    #[arg(long)]
    pub bless: bool,
}

pub fn open_store(
    flags: &ReadModelFlags,
    config: &Config,
) -> Result<Box<dyn ReadModelStore>, Failure> {
    let location = flags
        .readmodels
        .as_deref()
        .unwrap_or(&config.rebuild.readmodels);
    Ok(recast::readmodel::open(&super::expand_env(location)?)?)
}

fn rebuild_source(flag: Option<&String>, config: &Config) -> Result<Location, Failure> {
    let text = flag
        .or(config.rebuild.source.as_ref())
        .or(config.target.location.as_ref());
    let text = text.ok_or_else(|| {
        Failure::Usage("no event source: give --from or set [rebuild] source in recast.toml".into())
    })?;
    super::parse_location(text)
}

/// Runs a rebuild; `None` when it ran as a worker, which prints its own report.
pub async fn rebuild(
    args: RebuildArgs,
    config: &Config,
    json: bool,
) -> Result<Option<RebuildReport>, Failure> {
    let location = rebuild_source(args.from.as_ref(), config)?;
    let source = open_source(&location)?;
    let registry = Registry::load_dir(args.upcasters.as_ref().unwrap_or(&config.upcasters.dir))?;
    let projections =
        ProjectionSet::load_dir(args.projections.as_ref().unwrap_or(&config.projections.dir))?
            .select(&args.names)?;
    let store = open_store(&args.store, config)?;
    let options = RebuildOptions {
        window_bytes: args.memory_mb.unwrap_or(config.rebuild.memory_mb).max(1) << 20,
        partitions: args.partitions.unwrap_or(config.rebuild.partitions).max(1),
        on_error: args.on_error.unwrap_or(config.rebuild.on_error),
        follow: args.follow,
        poll_interval: Duration::from_millis(300),
        new_generation: args.new_generation,
    };
    let rebuilder = Rebuilder {
        source: source.as_ref(),
        registry: &registry,
        projections: &projections,
        store: store.as_ref(),
        options,
    };
    let stop = super::commands::stop_on_ctrl_c();
    if args.worker {
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let worker = recast::project::workers::WorkerOptions {
            owner,
            lease_seconds: args.lease_seconds.max(1),
        };
        let report = rebuilder.run_worker(&worker, &stop, &|_| {})?;
        output::worker(&report, json);
        if report.stopped {
            return Err(Failure::Interrupted);
        }
        return Ok(None);
    }
    // Every lane reads the whole log, so the total is the log times the lanes.
    let total = super::commands::known_total(source.as_ref(), &location)
        .await
        .map(|n| n * rebuilder.lane_count() as u64);
    let bar = progress::Progress::start("rebuild", json, total);
    let report = rebuilder.run(&stop, &|events| bar.update(events));
    bar.finish();
    let report = report?;
    if report.stopped && !args.follow {
        output::rebuild(&report, json);
        return Err(Failure::Interrupted);
    }
    Ok(Some(report))
}

pub async fn rebuild_command(
    args: RebuildArgs,
    config: &Config,
    json: bool,
) -> Result<(), Failure> {
    if let Some(report) = rebuild(args, config, json).await? {
        output::rebuild(&report, json);
    }
    Ok(())
}

pub fn swap(args: NameArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let generation = open_store(&args.store, config)?.swap(&args.name)?;
    output::line(
        json,
        &serde_json::json!({"projection": args.name, "live": generation}),
        &format!("{}: generation {generation} is live", args.name),
    );
    Ok(())
}

pub fn rollback(args: NameArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let generation = open_store(&args.store, config)?.rollback(&args.name)?;
    output::line(
        json,
        &serde_json::json!({"projection": args.name, "live": generation}),
        &format!(
            "{}: rolled back, generation {generation} is live",
            args.name
        ),
    );
    Ok(())
}

pub fn prune(args: NameArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let dropped = open_store(&args.store, config)?.prune(&args.name)?;
    output::line(
        json,
        &serde_json::json!({"projection": args.name, "dropped": dropped}),
        &format!("{}: dropped generations {dropped:?}", args.name),
    );
    Ok(())
}

pub async fn status(args: StatusArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let store = open_store(&args.store, config)?;
    let definitions = ProjectionSet::load_dir(&config.projections.dir).ok();
    let registry = Registry::load_dir(&config.upcasters.dir).ok();
    let head = match rebuild_source(args.from.as_ref(), config)
        .ok()
        .map(|l| open_source(&l))
    {
        Some(Ok(source)) => source.head_position().await.ok().flatten(),
        _ => None,
    };
    let rows = super::status::collect(
        store.as_ref(),
        definitions.as_ref(),
        registry.as_ref(),
        head,
    )?;
    output::status(&rows, json);
    Ok(())
}

pub fn query(args: QueryArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let store = open_store(&args.store, config)?;
    let meta = store.meta(&args.name)?;
    let live = meta
        .live
        .ok_or_else(|| recast::readmodel::ReadModelError::NothingBuilt {
            name: args.name.clone(),
        })?;
    if let Some(key) = &args.key {
        let row = store.row(&args.name, live, key)?;
        let row =
            row.ok_or_else(|| Failure::Usage(format!("projection {}: no row {key:?}", args.name)))?;
        output::json(&row);
        return Ok(());
    }
    let rows = store.rows(&args.name, live, None)?;
    output::rows(&rows, json);
    Ok(())
}

pub fn test(args: TestArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let registry = Registry::load_dir(&config.upcasters.dir)?;
    let projections = ProjectionSet::load_dir(&config.projections.dir)?;
    let root = args.cases.unwrap_or_else(|| config.rebuild.cases.clone());
    let mut results = Vec::new();
    for case in testing::discover_cases(&root)? {
        results.push(testing::run_case(
            &case,
            &registry,
            &projections,
            args.bless,
        )?);
    }
    output::cases(&results, json);
    if results.is_empty() {
        return Err(Failure::Usage(format!(
            "no fixture cases under {}",
            root.display()
        )));
    }
    if results.iter().any(|r| !r.failures.is_empty()) {
        return Err(Failure::Mismatch);
    }
    Ok(())
}
