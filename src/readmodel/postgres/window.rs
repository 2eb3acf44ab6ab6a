//! Writing one window to PostgreSQL, as one transaction: the rows of a generation's first
//! window are `COPY`ed straight into its table (they cannot collide with stored ones); other
//! rows go through a temporary staging table and one deduplicated upsert per generation, with
//! one `DELETE` for deleted rows; the checkpoints and dead letters are upserted beside them,
//! and a worker's lease is renewed in the same transaction.

use super::{column_sql, quote, Failure, PostgresReadModels};
use crate::project::{ColumnType, ProjectionKind};
use crate::readmodel::copy_rows::{copy_escape, direct_line};
use crate::readmodel::{PartId, ReadModelError, RowWrite, Window};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;

impl PostgresReadModels {
    /// Commits `window` (see the module docs).
    pub(super) fn commit_window(&self, window: Window) -> Result<(), ReadModelError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
