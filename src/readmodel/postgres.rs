//! The PostgreSQL read-model store (`--readmodels postgres://user@host:port/db?schema=NAME`).
//!
//! Layout, all in one schema (default `recast`):
//! - `recast_meta(name, meta jsonb)`: the [`ProjectionMeta`] of each projection;
//! - `recast_tables(name, generation, kind, columns jsonb)`: how each generation's table looks;
//! - `recast_checkpoints(name, generation, partition, checkpoint jsonb)`;
//! - `recast_dead_letters(name, generation, position, seq, letter jsonb)`;
//! - one table per generation, `"<name>_g<N>"(key text primary key, doc jsonb, <typed columns>)`,
//!   the typed columns taken from the state fields of the same name;
//! - a view `"<name>"` over the live generation's table; `swap` and `rollback` replace it and
//!   the meta record in one transaction.
//!
//! A window is one transaction: its rows are `COPY`ed into a temporary staging table, moved
//! into the generation's table by one deduplicated `INSERT ... ON CONFLICT DO UPDATE` (and one
//! `DELETE` for deleted rows), and the checkpoints are upserted beside them. A lost connection
//! is retried with backoff on a new connection; the window is idempotent (upserts of final
//! values and the checkpoint that covers them), so a retry after a commit whose answer was lost
//! writes the same result. An advisory lock per projection stops a second rebuilder, on any
//! machine, for as long as the first one's connection lives. Names reach SQL only after
//! [`crate::project::file::valid_name`] and are quoted. The password never appears in
//! messages: [`ReadModelStore::describe`] leaves it out, and `PGPASSWORD` can supply it.

use super::copy_rows::{copy_escape, direct_line};
use super::{
    DeadLetter, PartCheckpoint, PartId, ProjectionMeta, ReadModelError, ReadModelStore, RowWrite,
    Window,
};
use crate::project::file::valid_name;
use crate::project::{ColumnType, ProjectionKind};
use postgres::{Client, NoTls};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Connection settings parsed from a location.
#[derive(Clone)]
struct Settings {
    config: postgres::Config,
    schema: String,
    shown: String,
}

/// How a generation's table looks: its projection kind and typed columns.
type TableShape = (ProjectionKind, Vec<(String, ColumnType)>);

/// The PostgreSQL read-model store.
pub struct PostgresReadModels {
    settings: Settings,
    client: Mutex<Client>,
    tables: Mutex<HashMap<(String, u32), TableShape>>,
    /// Advisory lock keys this handle holds; a new connection takes them again.
    locks: Mutex<Vec<String>>,
}

const RETRIES: u32 = 6;

/// What can go wrong inside one unit of work on the connection.
enum Failure {
    Sql(postgres::Error),
    /// A worker's window whose lease another worker has taken.
    LeaseLost(super::Lease),
    /// Writing COPY data failed: the connection is gone.
    Copy(std::io::Error),
}

impl From<postgres::Error> for Failure {
    fn from(error: postgres::Error) -> Self {
        Failure::Sql(error)
    }
}

fn pg_error(settings: &Settings, source: postgres::Error) -> ReadModelError {
    ReadModelError::Postgres {
        location: settings.shown.clone(),
        source,
    }
}

fn parse_location(location: &str) -> Result<Settings, ReadModelError> {
    let bad = || ReadModelError::BadLocation(redact(location));
    let (url, query) = location.split_once('?').unwrap_or((location, ""));
    let mut schema = "recast".to_string();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = value.to_string(),
            _ => rest.push(pair),
        }
    }
    if !valid_name(&schema) {
        return Err(ReadModelError::BadName {
            what: "schema",
            name: schema,
        });
    }
    let url = if rest.is_empty() {
        url.to_string()
    } else {
        format!("{url}?{}", rest.join("&"))
    };
    let mut config: postgres::Config = url.parse().map_err(|_| bad())?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    config.application_name("recast");
    config.connect_timeout(Duration::from_secs(5));
    let host = url.split_once('@').map_or(
        url.trim_start_matches("postgres://")
            .trim_start_matches("postgresql://"),
        |(_, h)| h,
    );
    Ok(Settings {
        config,
        schema: schema.clone(),
        shown: format!("postgres://{host} (schema {schema})"),
    })
}

/// A location with any password replaced, for messages.
pub fn redact(location: &str) -> String {
    match (location.find("://"), location.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &location[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &location[..scheme + 3], &location[at..])
        }
        _ => location.to_string(),
    }
}

/// Connects to a `postgres://` location: the client, the schema (created if needed) and the
/// location as it may be shown. Used by other stores that live in PostgreSQL (checkpoints).
pub(crate) fn connect_location(location: &str) -> Result<(Client, String, String), ReadModelError> {
    let settings = parse_location(location)?;
    let mut client = connect(&settings)?;
    let schema = quote(&settings.schema);
    if let Err(first) = client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")) {
        // Two processes creating the same schema at once can collide; the second finds it.
        client = connect(&settings)?;
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .map_err(|_| pg_error(&settings, first))?;
    }
    Ok((client, schema, settings.shown))
}

/// True when an error means the connection is gone (closed, terminated by an administrator,
/// server shutting down, SQLSTATE class 08), so the work is worth retrying on a new one.
fn connection_lost(error: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
        None => false,
    }
}

fn connect(settings: &Settings) -> Result<Client, ReadModelError> {
    settings
        .config
        .connect(NoTls)
        .map_err(|e| pg_error(settings, e))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_sql(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::Text => "text",
        ColumnType::Bigint => "bigint",
        ColumnType::Double => "double precision",
        ColumnType::Boolean => "boolean",
        ColumnType::Timestamptz => "timestamptz",
        ColumnType::Jsonb => "jsonb",
    }
}

impl PostgresReadModels {
    /// Connects and creates the schema and bookkeeping tables if needed.
    pub fn open(location: &str) -> Result<Self, ReadModelError> {
        let settings = parse_location(location)?;
        let mut client = connect(&settings)?;
        let s = quote(&settings.schema);
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.recast_meta (name text PRIMARY KEY, meta jsonb NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}.recast_tables (name text, generation int, kind text NOT NULL, columns jsonb NOT NULL, PRIMARY KEY (name, generation));
             CREATE TABLE IF NOT EXISTS {s}.recast_checkpoints (name text, generation int, partition int, checkpoint jsonb NOT NULL, PRIMARY KEY (name, generation, partition));
             CREATE TABLE IF NOT EXISTS {s}.recast_dead_letters (name text, generation int, position bigint, seq int, letter jsonb NOT NULL);
             CREATE TABLE IF NOT EXISTS {s}.recast_claims (name text, generation int, partition int, owner text, lease_until timestamptz, done boolean NOT NULL DEFAULT false, PRIMARY KEY (name, generation, partition));"
        );
        // Two processes creating the same schema at once can collide; the second attempt finds it.
        if client.batch_execute(&ddl).is_err() {
            client = connect(&settings)?;
            client
                .batch_execute(&ddl)
                .map_err(|e| pg_error(&settings, e))?;
        }
        Ok(PostgresReadModels {
            settings,
            client: Mutex::new(client),
            tables: Mutex::new(HashMap::new()),
            locks: Mutex::new(Vec::new()),
        })
    }

    fn schema(&self) -> String {
        quote(&self.settings.schema)
    }

    fn table(&self, name: &str, generation: u32) -> String {
        format!(
            "{}.{}",
            self.schema(),
            quote(&format!("{name}_g{generation}"))
        )
    }

    /// Runs `work` on the connection, reconnecting and retrying with backoff when the
    /// connection is lost; other errors are returned at once.
    fn with_client<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, ReadModelError> {
        self.with_client_copy(|c| work(c).map_err(Failure::Sql))
    }

    /// [`with_client`](Self::with_client) for work that also streams COPY data.
    fn with_client_copy<T>(
        &self,
        mut work: impl FnMut(&mut Client) -> Result<T, Failure>,
    ) -> Result<T, ReadModelError> {
        let mut client = self
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut attempt = 0;
        loop {
            let result = work(&mut client);
            let lost = match &result {
                Err(Failure::Sql(error)) => connection_lost(error) || client.is_closed(),
                Err(Failure::Copy(_)) => true,
                Err(Failure::LeaseLost(_)) | Ok(_) => false,
            };
            match result {
                Ok(value) => return Ok(value),
                Err(_) if lost && attempt < RETRIES => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100 << attempt.min(5)));
                    if let Ok(mut fresh) = connect(&self.settings) {
                        // The old connection's advisory locks went with it: take them again,
                        // or stop, since another rebuilder may have them now.
                        for key in self.locks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                            let row = fresh
                                .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[key])
                                .map_err(|e| pg_error(&self.settings, e))?;
                            if !row.get::<_, bool>(0) {
                                return Err(ReadModelError::Busy {
                                    name: key.clone(),
                                    location: self.settings.shown.clone(),
                                });
                            }
                        }
                        *client = fresh;
                    }
                }
                Err(Failure::Sql(error)) => return Err(pg_error(&self.settings, error)),
                Err(Failure::Copy(source)) => {
                    return Err(ReadModelError::Copy {
                        location: self.settings.shown.clone(),
                        source,
                    })
                }
                Err(Failure::LeaseLost(lease)) => {
                    return Err(ReadModelError::LeaseLost {
                        name: lease.part.projection,
                        generation: lease.part.generation,
                        partition: lease.part.partition,
                    })
                }
            }
        }
    }

    fn table_shape(
        &self,
        name: &str,
        generation: u32,
    ) -> Result<(ProjectionKind, Vec<(String, ColumnType)>), ReadModelError> {
        if let Some(shape) = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name.to_string(), generation))
        {
            return Ok(shape.clone());
        }
        let schema = self.schema();
        let row = self.with_client(|c| c.query_opt(&format!("SELECT kind, columns FROM {schema}.recast_tables WHERE name = $1 AND generation = $2"), &[&name, &(generation as i32)]))?;
        let row = row.ok_or_else(|| ReadModelError::UnknownProjection {
            name: name.to_string(),
        })?;
        let kind: String = row.get(0);
        let kind = if kind == "snapshot" {
            ProjectionKind::Snapshot
        } else {
            ProjectionKind::Table
        };
        let columns: Vec<(String, ColumnType)> =
            serde_json::from_value(row.get(1)).unwrap_or_default();
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.to_string(), generation), (kind, columns.clone()));
        Ok((kind, columns))
    }

    fn check_name(name: &str) -> Result<(), ReadModelError> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(ReadModelError::BadName {
                what: "projection",
                name: name.to_string(),
            })
        }
    }
}

/// The SQL that moves a generation's staged rows into its table.
fn upsert_sql(table: &str, kind: ProjectionKind, columns: &[(String, ColumnType)]) -> String {
    let source = match kind {
        ProjectionKind::Snapshot => "doc->'state'",
        ProjectionKind::Table => "doc",
    };
    let mut names = String::from("key, doc");
    let mut values = String::from("key, doc");
    let mut updates = String::from("doc = excluded.doc");
    for (column, column_type) in columns {
        let c = quote(column);
        let value = match column_type {
            ColumnType::Jsonb => format!("{source}->'{column}'"),
            other => format!("({source}->>'{column}')::{}", column_sql(*other)),
        };
        names.push_str(&format!(", {c}"));
        values.push_str(&format!(", {value}"));
        updates.push_str(&format!(", {c} = excluded.{c}"));
    }
    format!("INSERT INTO {table} ({names}) SELECT {values} FROM recast_stage WHERE name = $1 AND generation = $2 ON CONFLICT (key) DO UPDATE SET {updates}")
}

impl ReadModelStore for PostgresReadModels {
    fn describe(&self) -> String {
        self.settings.shown.clone()
    }

    fn fork(&self) -> Result<Box<dyn ReadModelStore>, ReadModelError> {
        let client = connect(&self.settings)?;
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Box::new(PostgresReadModels {
            settings: self.settings.clone(),
            client: Mutex::new(client),
            tables: Mutex::new(tables),
            locks: Mutex::new(Vec::new()),
        }))
    }

    fn projections(&self) -> Result<Vec<String>, ReadModelError> {
        let schema = self.schema();
        let rows = self.with_client(|c| {
            c.query(
                &format!("SELECT name FROM {schema}.recast_meta ORDER BY name"),
                &[],
            )
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn meta(&self, name: &str) -> Result<ProjectionMeta, ReadModelError> {
        let schema = self.schema();
        let row = self.with_client(|c| {
            c.query_opt(
                &format!("SELECT meta FROM {schema}.recast_meta WHERE name = $1"),
                &[&name],
            )
        })?;
        match row {
            Some(row) => {
                serde_json::from_value(row.get(0)).map_err(|source| ReadModelError::Corrupt {
                    path: self.settings.shown.clone().into(),
                    key: format!("meta of {name}"),
                    source,
                })
            }
            None => Ok(ProjectionMeta::default()),
        }
    }

    /// Saves the meta record and points the projection's view at its live generation, in one
    /// transaction: this is what makes `swap` and `rollback` a single step for readers.
    fn save_meta(&self, name: &str, meta: &ProjectionMeta) -> Result<(), ReadModelError> {
        Self::check_name(name)?;
        let schema = self.schema();
        let value = serde_json::to_value(meta).expect("meta serializes");
        let view = format!("{schema}.{}", quote(name));
        let live_table = meta.live.map(|g| self.table(name, g));
        self.with_client(|c| {
            let mut tx = c.transaction()?;
            tx.execute(&format!("INSERT INTO {schema}.recast_meta (name, meta) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET meta = excluded.meta"), &[&name, &value])?;
            tx.batch_execute(&format!("DROP VIEW IF EXISTS {view}"))?;
            if let Some(table) = &live_table {
                tx.batch_execute(&format!("CREATE VIEW {view} AS SELECT * FROM {table}"))?;
            }
            tx.commit()
        })
    }

    fn prepare_generation(
        &self,
        name: &str,
        generation: u32,
        kind: ProjectionKind,
        columns: &[(String, ColumnType)],
    ) -> Result<(), ReadModelError> {
        Self::check_name(name)?;
        if let Some((column, _)) = columns
            .iter()
            .find(|(c, _)| !valid_name(c) || c == "key" || c == "doc")
        {
            return Err(ReadModelError::BadName {
                what: "column",
                name: column.clone(),
            });
        }
        let schema = self.schema();
        let table = self.table(name, generation);
        let typed: String = columns
            .iter()
            .map(|(c, t)| format!(", {} {}", quote(c), column_sql(*t)))
            .collect();
        let kind_text = if kind == ProjectionKind::Snapshot {
            "snapshot"
        } else {
            "table"
        };
        let columns_json = serde_json::to_value(columns).expect("columns serialize");
        self.with_client(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (key text COLLATE \"C\" PRIMARY KEY, doc jsonb NOT NULL{typed})"))?;
            tx.execute(&format!("INSERT INTO {schema}.recast_tables (name, generation, kind, columns) VALUES ($1, $2, $3, $4) ON CONFLICT (name, generation) DO UPDATE SET kind = excluded.kind, columns = excluded.columns"), &[&name, &(generation as i32), &kind_text, &columns_json])?;
            tx.commit()
        })?;
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.to_string(), generation), (kind, columns.to_vec()));
        Ok(())
    }

    fn lock_projection(&self, name: &str) -> Result<(), ReadModelError> {
        let key = format!("recast:{}:{name}", self.settings.schema);
        let locked: bool = self.with_client(|c| {
            c.query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
                .map(|r| r.get(0))
        })?;
        if locked {
            Ok(())
        } else {
            Err(ReadModelError::Busy {
                name: name.to_string(),
                location: self.settings.shown.clone(),
            })
        }
    }

    fn checkpoint(&self, part: &PartId) -> Result<Option<PartCheckpoint>, ReadModelError> {
        let schema = self.schema();
        let row = self.with_client(|c| {
            c.query_opt(&format!("SELECT checkpoint FROM {schema}.recast_checkpoints WHERE name = $1 AND generation = $2 AND partition = $3"), &[&part.projection, &(part.generation as i32), &(part.partition as i32)])
        })?;
        Ok(row.and_then(|r| serde_json::from_value(r.get(0)).ok()))
    }

    fn checkpoints(
        &self,
        name: &str,
        generation: u32,
    ) -> Result<Vec<PartCheckpoint>, ReadModelError> {
        let schema = self.schema();
        let rows = self.with_client(|c| c.query(&format!("SELECT checkpoint FROM {schema}.recast_checkpoints WHERE name = $1 AND generation = $2 ORDER BY partition"), &[&name, &(generation as i32)]))?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_value(r.get(0)).ok())
            .collect())
    }

    fn row(&self, name: &str, generation: u32, key: &str) -> Result<Option<Value>, ReadModelError> {
        Self::check_name(name)?;
        let table = self.table(name, generation);
        let row = self.with_client(|c| {
            c.query_opt(&format!("SELECT doc FROM {table} WHERE key = $1"), &[&key])
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn scan_rows(
        &self,
        name: &str,
        generation: u32,
        visit: &mut dyn FnMut(String, Value) -> bool,
    ) -> Result<(), ReadModelError> {
        Self::check_name(name)?;
        let table = self.table(name, generation);
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows = client
            .query_raw(
                &format!("SELECT key, doc FROM {table} ORDER BY key COLLATE \"C\""),
                std::iter::empty::<i32>(),
            )
            .map_err(|e| pg_error(&self.settings, e))?;
        use postgres::fallible_iterator::FallibleIterator;
        while let Some(row) = rows.next().map_err(|e| pg_error(&self.settings, e))? {
            if !visit(row.get(0), row.get(1)) {
                break;
            }
        }
        Ok(())
    }

    fn dead_letters(&self, name: &str, generation: u32) -> Result<Vec<DeadLetter>, ReadModelError> {
        let schema = self.schema();
        let rows = self.with_client(|c| c.query(&format!("SELECT letter FROM {schema}.recast_dead_letters WHERE name = $1 AND generation = $2 ORDER BY position, seq"), &[&name, &(generation as i32)]))?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_value(r.get(0)).ok())
            .collect())
    }

    fn commit(&self, window: Window) -> Result<(), ReadModelError> {
        let schema = self.schema();
        let mut deletes: HashMap<(String, u32), Vec<String>> = HashMap::new();
        let mut groups: Vec<(String, u32)> = Vec::new();
        for row in &window.rows {
            Self::check_name(&row.projection)?;
            let group = (row.projection.clone(), row.generation);
            if !groups.contains(&group) {
                groups.push(group.clone());
            }
            if row.value.is_none() {
                deletes.entry(group).or_default().push(row.key.clone());
            }
        }
        // Per group, the staged upsert; per fresh group also (group, shape, COPY straight into
        // the generation's table).
        let mut statements = Vec::new();
        let mut direct = Vec::new();
        for (name, generation) in &groups {
            let (kind, columns) = self.table_shape(name, *generation)?;
            let table = self.table(name, *generation);
            statements.push((
                name.clone(),
                *generation,
                upsert_sql(&table, kind, &columns),
            ));
            let fresh = window
                .fresh
                .iter()
                .any(|p| p.projection == *name && p.generation == *generation);
            if fresh {
                let names: String = columns
                    .iter()
                    .map(|(c, _)| format!(", {}", quote(c)))
                    .collect();
                let sql = format!("COPY {table} (key, doc{names}) FROM STDIN");
                direct.push(((name.clone(), *generation), (kind, columns), sql));
            }
        }
        let checkpoints: Vec<(PartId, Value)> = window
            .checkpoints
            .iter()
            .map(|(p, c)| {
                (
                    p.clone(),
                    serde_json::to_value(c).expect("checkpoints serialize"),
                )
            })
            .collect();
        let letters: Vec<(PartId, u64, Value)> = window
            .dead_letters
            .iter()
            .map(|(p, pos, l)| {
                (
                    p.clone(),
                    *pos,
                    serde_json::to_value(l).expect("dead letters serialize"),
                )
            })
            .collect();
        let lease = window.lease.clone();
        self.with_client_copy(|c| {
            let mut tx = c.transaction()?;
            if let Some(lease) = &lease {
                let renewed = tx.execute(
                    &format!("UPDATE {schema}.recast_claims SET lease_until = now() + make_interval(secs => $5) WHERE name = $1 AND generation = $2 AND partition = $3 AND owner = $4"),
                    &[&lease.part.projection, &(lease.part.generation as i32), &(lease.part.partition as i32), &lease.owner, &f64::from(lease.seconds)],
                )?;
                if renewed == 0 {
                    return Err(Failure::LeaseLost(lease.clone()));
                }
            }
            // Rows are formatted while they stream, so the server parses one row while the
            // next is printed (formatting first, then sending, left the two cores taking turns).
            let mut staged: Vec<&RowWrite> = Vec::new();
            let mut line = String::new();
            for ((name, generation), (kind, columns), sql) in &direct {
                let mut writer = tx.copy_in(sql.as_str())?;
                for row in window.rows.iter().filter(|r| r.projection == *name && r.generation == *generation) {
                    let Some(value) = &row.value else { continue };
                    line.clear();
                    if direct_line(&row.key, value, *kind, columns, &mut line) {
                        writer.write_all(line.as_bytes()).map_err(Failure::Copy)?;
                    } else {
                        staged.push(row);
                    }
                }
                writer.finish()?;
            }
            let mut copy = String::new();
            let is_direct = |row: &RowWrite| direct.iter().any(|((n, g), _, _)| *n == row.projection && *g == row.generation);
            for row in window.rows.iter().filter(|r| r.value.is_some() && !is_direct(r)).chain(staged) {
                if let Some(value) = &row.value {
                    copy_escape(&row.projection, &mut copy);
                    copy.push_str(&format!("\t{}\t", row.generation));
                    copy_escape(&row.key, &mut copy);
                    copy.push('\t');
                    copy_escape(&value.to_string(), &mut copy);
                    copy.push('\n');
                }
            }
            tx.batch_execute("CREATE TEMP TABLE IF NOT EXISTS recast_stage (name text, generation int, key text, doc jsonb) ON COMMIT DELETE ROWS")?;
            if !copy.is_empty() {
                let mut writer = tx.copy_in("COPY recast_stage (name, generation, key, doc) FROM STDIN")?;
                writer.write_all(copy.as_bytes()).map_err(Failure::Copy)?;
                writer.finish()?;
            }
            for (name, generation, sql) in &statements {
                tx.execute(sql.as_str(), &[name, &(*generation as i32)])?;
            }
            for ((name, generation), keys) in &deletes {
                tx.execute(&format!("DELETE FROM {} WHERE key = ANY($1)", self.table(name, *generation)), &[keys])?;
            }
            for (part, checkpoint) in &checkpoints {
                tx.execute(
                    &format!("INSERT INTO {schema}.recast_checkpoints (name, generation, partition, checkpoint) VALUES ($1, $2, $3, $4) ON CONFLICT (name, generation, partition) DO UPDATE SET checkpoint = excluded.checkpoint"),
                    &[&part.projection, &(part.generation as i32), &(part.partition as i32), checkpoint],
                )?;
            }
            for (seq, (part, position, letter)) in letters.iter().enumerate() {
                let seq = seq as i32;
                tx.execute(
                    &format!("INSERT INTO {schema}.recast_dead_letters (name, generation, position, seq, letter) VALUES ($1, $2, $3, $4, $5)"),
                    &[&part.projection, &(part.generation as i32), &(*position as i64), &seq, letter],
                )?;
            }
            Ok(tx.commit()?)
        })
    }

    fn wait_for_projection(&self, name: &str) -> Result<(), ReadModelError> {
        let key = format!("recast:{}:{name}", self.settings.schema);
        self.with_client(|c| c.execute("SELECT pg_advisory_lock(hashtext($1))", &[&key]))?;
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key);
        Ok(())
    }

    fn unlock_projection(&self, name: &str) -> Result<(), ReadModelError> {
        let key = format!("recast:{}:{name}", self.settings.schema);
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| *k != key);
        self.with_client(|c| c.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key]))?;
        Ok(())
    }

    fn claims_init(
        &self,
        name: &str,
        generation: u32,
        partitions: u32,
    ) -> Result<(), ReadModelError> {
        let schema = self.schema();
        self.with_client(|c| {
            c.execute(
                &format!("INSERT INTO {schema}.recast_claims (name, generation, partition) SELECT $1, $2, p FROM generate_series(0, $3 - 1) p ON CONFLICT DO NOTHING"),
                &[&name, &(generation as i32), &(partitions as i32)],
            )
        })?;
        Ok(())
    }

    fn claim(
        &self,
        name: &str,
        generation: u32,
        owner: &str,
        seconds: u32,
    ) -> Result<Option<u32>, ReadModelError> {
        let schema = self.schema();
        let row = self.with_client(|c| {
            c.query_opt(
                &format!(
                    "UPDATE {schema}.recast_claims SET owner = $3, lease_until = now() + make_interval(secs => $4)
                     WHERE (name, generation, partition) = (
                       SELECT name, generation, partition FROM {schema}.recast_claims
                       WHERE name = $1 AND generation = $2 AND NOT done AND (owner IS NULL OR lease_until < now())
                       ORDER BY partition LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING partition"
                ),
                &[&name, &(generation as i32), &owner, &f64::from(seconds)],
            )
        })?;
        Ok(row.map(|r| r.get::<_, i32>(0) as u32))
    }

    fn claim_done(&self, lease: &super::Lease) -> Result<(), ReadModelError> {
        let schema = self.schema();
        let part = &lease.part;
        let updated = self.with_client(|c| {
            c.execute(
                &format!("UPDATE {schema}.recast_claims SET done = true WHERE name = $1 AND generation = $2 AND partition = $3 AND owner = $4"),
                &[&part.projection, &(part.generation as i32), &(part.partition as i32), &lease.owner],
            )
        })?;
        if updated == 0 {
            return Err(ReadModelError::LeaseLost {
                name: part.projection.clone(),
                generation: part.generation,
                partition: part.partition,
            });
        }
        Ok(())
    }

    fn claims_left(&self, name: &str, generation: u32) -> Result<u64, ReadModelError> {
        let schema = self.schema();
        let row = self.with_client(|c| c.query_one(&format!("SELECT count(*) FROM {schema}.recast_claims WHERE name = $1 AND generation = $2 AND NOT done"), &[&name, &(generation as i32)]))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn drop_generation(&self, name: &str, generation: u32) -> Result<(), ReadModelError> {
        Self::check_name(name)?;
        let schema = self.schema();
        let table = self.table(name, generation);
        self.with_client(|c| {
            let mut tx = c.transaction()?;
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))?;
            for bookkeeping in [
                "recast_checkpoints",
                "recast_dead_letters",
                "recast_tables",
                "recast_claims",
            ] {
                tx.execute(
                    &format!(
                        "DELETE FROM {schema}.{bookkeeping} WHERE name = $1 AND generation = $2"
                    ),
                    &[&name, &(generation as i32)],
                )?;
            }
            tx.commit()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_hide_passwords_and_take_a_schema() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        let settings = parse_location("postgres://app:s3cret@db:5432/x?schema=tenant_1").unwrap();
        assert_eq!(settings.schema, "tenant_1");
        assert!(!settings.shown.contains("s3cret"), "{}", settings.shown);
        let bad = parse_location("postgres://db/x?schema=a\";drop")
            .err()
            .unwrap()
            .to_string();
        assert!(bad.contains("schema"), "{bad}");
        assert!(parse_location("postgres://app:pw@[nope")
            .err()
            .unwrap()
            .to_string()
            .contains("***"));
    }

    #[test]
    fn copy_text_is_escaped_and_upserts_cast_typed_columns() {
        let mut out = String::new();
        copy_escape("a\tb\\c\nd", &mut out);
        assert_eq!(out, "a\\tb\\\\c\\nd");
        let sql = upsert_sql(
            "s.\"t_g1\"",
            ProjectionKind::Snapshot,
            &[("total".into(), ColumnType::Bigint)],
        );
        assert!(
            sql.contains("(doc->'state'->>'total')::bigint")
                && sql.contains("ON CONFLICT (key) DO UPDATE"),
            "{sql}"
        );
        assert_eq!(
            quote("x\"; drop table y; --"),
            "\"x\"\"; drop table y; --\""
        );
    }
}
