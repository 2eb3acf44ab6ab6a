//! `checksum`, `cat`, `export`, `import` and `generate`: looking at stores and filling them.

use super::config::Config;
use super::{output, Failure, UpcastFlags};
use clap::Args;
use futures::TryStreamExt;
use recast::event::{Event, VersionSource};
use recast::import::{import_file, ImportMapping};
use recast::store::{digest_source, open_sink, open_source, EventStream, Location};
use recast::upcast::pointer::Pointer;
use recast::upcast::Registry;
use std::io::Write;
use std::path::PathBuf;

/// `recast checksum`
#[derive(Debug, Args)]
pub struct ChecksumArgs {
    /// The event store to digest.
    #[arg(required_unless_present = "readmodel")]
    pub location: Option<String>,
    /// Digest the live generation of this projection instead.
    #[arg(long, conflicts_with = "location")]
    pub readmodel: Option<String>,
    #[command(flatten)]
    pub store: super::rebuild::ReadModelFlags,
}

/// `recast cat`
#[derive(Debug, Args)]
pub struct CatArgs {
    /// Stream name.
    pub stream: String,
    /// Store location (default from config: the source).
    #[arg(long)]
    pub from: Option<String>,
    /// Show events as the upcasters make them.
    #[arg(long)]
    pub upcast: bool,
    #[command(flatten)]
    pub upcasters: UpcastFlags,
}

/// `recast export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Store location (default from config: the source).
    #[arg(long)]
    pub from: Option<String>,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Export events as the upcasters make them.
    #[arg(long)]
    pub upcast: bool,
    #[command(flatten)]
    pub upcasters: UpcastFlags,
}

/// `recast import`
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON file, one JSON object per line.
    pub file: PathBuf,
    /// Target location.
    #[arg(long)]
    pub to: String,
    /// Pointer to the stream value, e.g. /title.
    #[arg(long)]
    pub stream: String,
    /// Stream name made from the value.
    #[arg(long, default_value = "{value}")]
    pub stream_template: String,
    /// Pointer to the event type.
    #[arg(long = "type", default_value = "/type")]
    pub event_type: String,
    /// Pointer to the event id.
    #[arg(long)]
    pub id: Option<String>,
    /// Pointer to the schema version.
    #[arg(long)]
    pub version: Option<String>,
    /// Without --version: envelope (v1), metadata:KEY, or type-suffix.
    #[arg(long, default_value = "envelope")]
    pub version_from: String,
    /// Pointer to the timestamp (RFC 3339 or unix seconds).
    #[arg(long)]
    pub timestamp: Option<String>,
    /// Pointer to the payload (default: the whole object).
    #[arg(long)]
    pub data: Option<String>,
    /// Pointer to the metadata (default: none).
    #[arg(long)]
    pub metadata: Option<String>,
}

/// `recast generate`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of events.
    #[arg(long)]
    pub events: u64,
    /// Number of streams.
    #[arg(long, default_value_t = 1000)]
    pub streams: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file (`-` for stdout).
    #[arg(long)]
    pub out: PathBuf,
}

pub async fn checksum(args: ChecksumArgs, config: &Config, json: bool) -> Result<(), Failure> {
    if let Some(name) = &args.readmodel {
        let (checksum, rows) = super::rebuild::open_store(&args.store, config)?.digest(name)?;
        if json {
            output::json(
                &serde_json::json!({"readmodel": name, "checksum": checksum, "rows": rows}),
            );
        } else {
            println!("{checksum} ({rows} rows)");
        }
        return Ok(());
    }
    let location = args.location.as_deref().unwrap_or_default();
    let source = open_source(&super::parse_location(location)?)?;
    let (digest, kinds) = digest_source(source.as_ref()).await?;
    if json {
        output::json(
            &serde_json::json!({"location": source.describe(), "checksum": digest.checksum, "events": digest.events, "kinds": kinds}),
        );
    } else {
        println!("{digest}");
    }
    Ok(())
}

fn source_location(flag: Option<&String>, config: &Config) -> Result<Location, Failure> {
    let text = flag.or(config.source.location.as_ref()).ok_or_else(|| {
        Failure::Usage("no source: give --from or set [source] location in recast.toml".into())
    })?;
    super::parse_location(text)
}

fn optional_registry(
    upcast: bool,
    flags: &UpcastFlags,
    config: &Config,
) -> Result<Option<Registry>, Failure> {
    if !upcast {
        return Ok(None);
    }
    let dir = flags
        .upcasters
        .clone()
        .unwrap_or_else(|| config.upcasters.dir.clone());
    Ok(Some(Registry::load_dir(&dir)?))
}

/// Writes events as JSONL; a reader that goes away (`recast cat ... | head`) is not an error.
async fn write_events(
    events: EventStream<'_>,
    registry: Option<&Registry>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    match write_all_events(events, registry, out).await {
        Err(Failure::Error(error)) if is_broken_pipe(error.as_ref()) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn write_all_events(
    mut events: EventStream<'_>,
    registry: Option<&Registry>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    while let Some(event) = events.try_next().await? {
        let outputs: Vec<Event> = match registry {
            Some(registry) => registry.upcast(event)?.events,
            None => vec![event],
        };
        for event in outputs {
            writeln!(out, "{}", event.to_json_line())?;
        }
    }
    out.flush()?;
    Ok(())
}

pub async fn cat(args: CatArgs, config: &Config) -> Result<(), Failure> {
    let source = open_source(&source_location(args.from.as_ref(), config)?)?;
    let registry = optional_registry(args.upcast, &args.upcasters, config)?;
    let stdout = std::io::stdout();
    write_events(
        source.read_stream(&args.stream, 0),
        registry.as_ref(),
        &mut stdout.lock(),
    )
    .await
}

pub async fn export(args: ExportArgs, config: &Config) -> Result<(), Failure> {
    let source = open_source(&source_location(args.from.as_ref(), config)?)?;
    let registry = optional_registry(args.upcast, &args.upcasters, config)?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    write_events(source.read_all(None), registry.as_ref(), out.as_mut()).await
}

fn pointer(text: &str) -> Result<Pointer, Failure> {
    Ok(Pointer::parse(text)?)
}

fn optional_pointer(text: Option<&String>) -> Result<Option<Pointer>, Failure> {
    text.map(|t| pointer(t)).transpose()
}

pub async fn import(args: ImportArgs, json: bool) -> Result<(), Failure> {
    let version_source = VersionSource::parse(&args.version_from).ok_or_else(|| {
        Failure::Usage(format!(
            "--version-from {:?}: use envelope, metadata:KEY or type-suffix",
            args.version_from
        ))
    })?;
    let mapping = ImportMapping {
        stream: pointer(&args.stream)?,
        stream_template: args.stream_template.clone(),
        event_type: pointer(&args.event_type)?,
        id: optional_pointer(args.id.as_ref())?,
        version: optional_pointer(args.version.as_ref())?,
        version_source,
        timestamp: optional_pointer(args.timestamp.as_ref())?,
        data: optional_pointer(args.data.as_ref())?,
        metadata: optional_pointer(args.metadata.as_ref())?,
    };
    let mut sink = open_sink(&super::parse_location(&args.to)?)?;
    let report = import_file(&args.file, &mapping, sink.as_mut()).await?;
    if json {
        output::json(&report);
    } else {
        println!(
            "imported {}: {} events in {} streams ({} written, {} already there) into {}",
            args.file.display(),
            report.events,
            report.streams,
            report.written,
            report.duplicates,
            sink.describe()
        );
    }
    Ok(())
}

pub fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let options = recast::generate::GenerateOptions {
        events: args.events,
        streams: args.streams,
        seed: args.seed,
    };
    if args.out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        recast::generate::generate(options, &mut out)?;
    } else {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&args.out)?);
        recast::generate::generate(options, &mut out)?;
    }
    Ok(())
}
