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
//!
//! This file holds the store and its [`ReadModelStore`] methods; `connection` parses locations
//! and runs work on the connection with its retries; `window` writes a window.

mod connection;
mod window;

use super::{
    DeadLetter, PartCheckpoint, PartId, ProjectionMeta, ReadModelError, ReadModelStore, Window,
};
use crate::project::file::valid_name;
use crate::project::{ColumnType, ProjectionKind};
pub(crate) use connection::connect_location;
pub use connection::redact;
use connection::{connect, parse_location, pg_error, Failure, Settings};
use postgres::Client;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

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
        self.commit_window(window)
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
