//! `migrate`, `verify`, `plan` and `run`: the commands built on [`recast::migrate`].

use super::config::Config;
use super::{output, progress, Failure, JobFlags, UpcastFlags};
use clap::Args;
use recast::checkpoint::CheckpointStore;
use recast::migrate::dry::DrySink;
use recast::migrate::{ErrorPolicy, Migration, StreamTemplate, Writer};
use recast::store::{open_sink, open_source, EventSink, EventSource, Location};
use recast::upcast::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `recast migrate`
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub job: JobFlags,
    /// Checkpoint store: a folder or sled:PATH (embedded), or postgres://... (default from
    /// config: .recast/state).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Source events per batch and checkpoint (default from config: 5000).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Go through every event and report, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Forget this job's checkpoint and start over (the target must be empty again).
    #[arg(long)]
    pub reset: bool,
}

/// `recast verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub job: JobFlags,
}

/// `recast plan`
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Source location.
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub upcast: UpcastFlags,
    /// Target stream names.
    #[arg(long)]
    pub template: Option<String>,
}

/// `recast run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Delete the demo's target, checkpoints and dead letters first and migrate from scratch.
    #[arg(long)]
    pub fresh: bool,
}

/// The number of events of a source, when the store knows it without reading the log
/// (sled); a JSONL log would have to be read once more just to count it.
pub async fn known_total(source: &dyn EventSource, location: &Location) -> Option<u64> {
    match location {
        Location::Sled(_) => source
            .head_position()
            .await
            .ok()
            .flatten()
            .map(|last| last + 1),
        Location::Jsonl(_) | Location::Esdb(_) => None,
    }
}

/// A migration job as the flags and config describe it.
struct Job {
    source: Box<dyn EventSource>,
    source_location: Location,
    target: Location,
    registry: Registry,
    template: StreamTemplate,
    on_error: ErrorPolicy,
    dead_letter: PathBuf,
}

fn location(
    flag: Option<&String>,
    configured: Option<&String>,
    name: &str,
) -> Result<Location, Failure> {
    let text = flag.or(configured).ok_or_else(|| {
        Failure::Usage(format!("no {name}: give --{name} or set it in recast.toml"))
    })?;
    super::parse_location(text)
}

fn registry(flags: &UpcastFlags, config: &Config) -> Result<Registry, Failure> {
    let dir = flags
        .upcasters
        .clone()
        .unwrap_or_else(|| config.upcasters.dir.clone());
    Ok(Registry::load_dir(&dir)?)
}

fn job(flags: &JobFlags, config: &Config) -> Result<Job, Failure> {
    let source = location(flags.from.as_ref(), config.source.location.as_ref(), "from")?;
    let target = location(flags.to.as_ref(), config.target.location.as_ref(), "to")?;
    let template = flags
        .template
        .clone()
        .unwrap_or_else(|| config.target.stream_template.clone());
    Ok(Job {
        source: open_source(&source)?,
        source_location: source.clone(),
        target,
        registry: registry(&flags.upcast, config)?,
        template: StreamTemplate::parse(&template)?,
        on_error: flags.on_error.unwrap_or(config.migrate.on_error),
        dead_letter: flags
            .dead_letter
            .clone()
            .unwrap_or_else(|| config.migrate.dead_letter.clone()),
    })
}

impl Job {
    fn migration(&self, batch_size: usize) -> Migration<'_> {
        Migration {
            source: self.source.as_ref(),
            registry: &self.registry,
            template: self.template.clone(),
            on_error: self.on_error,
            batch_size,
        }
    }
}

/// Sets the returned flag on Ctrl-C, so long runs stop after their current batch.
pub fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    stop
}

pub async fn migrate(args: MigrateArgs, config: &Config, json: bool) -> Result<(), Failure> {
    run_migration(args, config, json, true).await
}

async fn run_migration(
    args: MigrateArgs,
    config: &Config,
    json: bool,
    print: bool,
) -> Result<(), Failure> {
    let job = job(&args.job, config)?;
    let batch_size = args.batch_size.unwrap_or(config.migrate.batch_size);
    let migration = job.migration(batch_size);
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| config.migrate.state.clone());
    let checkpoints =
        CheckpointStore::open_location(&super::expand_env(&state.to_string_lossy())?)?;
    let mut real_sink;
    let mut dry_sink;
    let sink: &mut dyn EventSink = if args.dry_run {
        dry_sink = DrySink::new(job.target.to_string());
        &mut dry_sink
    } else {
        real_sink = open_sink(&job.target)?;
        real_sink.as_mut()
    };
    if args.reset && !args.dry_run {
        checkpoints.remove(&migration.job_id(&sink.describe()))?;
    }
    let writer = Writer {
        sink,
        checkpoints: Some(&checkpoints),
        dead_letter_path: Some(job.dead_letter.clone()),
        dry_run: args.dry_run,
    };
    let stop = stop_on_ctrl_c();
    let total = known_total(job.source.as_ref(), &job.source_location).await;
    let bar = progress::Progress::start("migrate", json, total);
    let report = migration
        .run(writer, &stop, &|p| bar.update(p.events_read))
        .await;
    bar.finish();
    let report = report?;
    if print {
        output::migration(&report, json);
    }
    if !report.completed {
        return Err(Failure::Interrupted);
    }
    Ok(())
}

pub async fn verify(args: VerifyArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let job = job(&args.job, config)?;
    let target = open_source(&job.target)?;
    let dead_letter =
        (job.on_error == ErrorPolicy::DeadLetter).then_some(job.dead_letter.as_path());
    let report = recast::migrate::verify(
        &job.migration(config.migrate.batch_size),
        target.as_ref(),
        dead_letter,
    )
    .await?;
    output::verification(&report, json);
    if report.ok {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

pub async fn plan(args: PlanArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let source = location(args.from.as_ref(), config.source.location.as_ref(), "from")?;
    let registry = registry(&args.upcast, config)?;
    let template = args
        .template
        .clone()
        .unwrap_or_else(|| config.target.stream_template.clone());
    let source = open_source(&source)?;
    let migration = Migration {
        source: source.as_ref(),
        registry: &registry,
        template: StreamTemplate::parse(&template)?,
        on_error: ErrorPolicy::Skip,
        batch_size: config.migrate.batch_size,
    };
    let mut dry = DrySink::new("(plan)");
    let writer = Writer {
        sink: &mut dry,
        checkpoints: None,
        dead_letter_path: None,
        dry_run: true,
    };
    let report = migration
        .run(writer, &AtomicBool::new(false), &|_| {})
        .await?;
    output::plan(&registry, &report, json);
    Ok(())
}

/// `recast run`: the demo pipeline on the embedded store, driven by `recast.toml`: migrate,
/// verify, rebuild the projections from the migrated store, and show a sample of the result.
pub async fn demo(args: RunArgs, config: &Config, json: bool) -> Result<(), Failure> {
    let flags = JobFlags {
        from: None,
        to: None,
        upcast: UpcastFlags { upcasters: None },
        template: None,
        on_error: None,
        dead_letter: None,
    };
    if args.fresh {
        let target = location(None, config.target.location.as_ref(), "to")?;
        let readmodels = config
            .rebuild
            .readmodels
            .strip_prefix("sled:")
            .map(PathBuf::from);
        for path in [
            Some(target.path().to_path_buf()),
            Some(config.migrate.state.clone()),
            Some(config.migrate.dead_letter.clone()),
            readmodels,
        ]
        .into_iter()
        .flatten()
        {
            remove_path(&path)?;
        }
    }
    // The verification report that follows carries the migration's counts; one report is enough.
    run_migration(
        MigrateArgs {
            job: flags.clone(),
            state: None,
            batch_size: None,
            dry_run: false,
            reset: false,
        },
        config,
        json,
        false,
    )
    .await?;
    verify(VerifyArgs { job: flags }, config, json).await?;
    let rebuild_args = super::rebuild::RebuildArgs {
        names: Vec::new(),
        from: None,
        store: super::rebuild::ReadModelFlags { readmodels: None },
        projections: None,
        upcasters: None,
        partitions: None,
        memory_mb: None,
        on_error: None,
        follow: false,
        new_generation: false,
        worker: false,
        lease_seconds: 30,
    };
    let report = super::rebuild::rebuild(rebuild_args, config, json)
        .await?
        .ok_or_else(|| Failure::Usage("the demo rebuild runs in one process".into()))?;
    output::rebuild(&report, json);
    let store =
        super::rebuild::open_store(&super::rebuild::ReadModelFlags { readmodels: None }, config)?;
    for projection in &report.projections {
        let Some(live) = projection.live else {
            continue;
        };
        let sample = store.rows(&projection.name, live, Some(3))?;
        output::sample(&projection.name, &sample, json);
    }
    Ok(())
}

fn remove_path(path: &std::path::Path) -> Result<(), Failure> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
        _ => Ok(()),
    }
}
