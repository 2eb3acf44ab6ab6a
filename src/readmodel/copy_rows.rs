//! Rows as PostgreSQL `COPY` text, for [`super::postgres`].
//!
//! A window's rows normally go through a staging table: `COPY` into it, then one upsert that
//! derives the typed columns in SQL (`(doc->>'col')::type`). Rows of a part that had no rows
//! before the window (a fresh generation's first window) cannot collide with stored ones, so
//! they may be copied straight into the generation's table, typed columns included: that skips
//! the second pass over every row and the conflict checks of the upsert (the staged path ran at
//! about half the speed of `psql \copy` of the same rows; see the README's Performance section).
//!
//! The direct path writes, for each typed column, exactly the text that `->>` would give, and
//! `COPY` turns it into the column's type with the same input function as the SQL cast. Where
//! that text cannot be known for sure from `serde_json` (an object or array under `->>`, a
//! float printed with an exponent), [`direct_line`] declines and the row goes the staged way.

use crate::project::{ColumnType, ProjectionKind};
use serde_json::Value;

/// COPY text format: backslash, tab, newline and carriage return are escaped. Runs of plain
/// bytes are copied whole (escaping char by char was a tenth of a window's commit).
pub(crate) fn copy_escape(text: &str, out: &mut String) {
    let mut plain = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        // The special bytes are ASCII, so these slice bounds fall on char boundaries.
        out.push_str(&text[plain..at]);
        out.push_str(escaped);
        plain = at + 1;
    }
    out.push_str(&text[plain..]);
}

/// The text `->>` gives for a JSON value, if it can be known here; `None` for SQL NULL is
/// `Some(None)`.
fn text_of(value: Option<&Value>) -> Option<Option<String>> {
    Some(match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(Value::Number(n)) => {
            let text = n.to_string();
            if text.contains(['e', 'E']) {
                return None;
            }
            Some(text)
        }
        Some(Value::Array(_) | Value::Object(_)) => return None,
    })
}

/// Appends `key \t doc \t typed columns...` for a direct `COPY` into the generation's table,
/// or returns false (and appends nothing) when a typed column's text is not certain.
pub(crate) fn direct_line(
    key: &str,
    doc: &Value,
    kind: ProjectionKind,
    columns: &[(String, ColumnType)],
    out: &mut String,
) -> bool {
    let source = match kind {
        ProjectionKind::Snapshot => doc.get("state"),
        ProjectionKind::Table => Some(doc),
    };
    let field = |column: &str| {
        source
            .and_then(Value::as_object)
            .and_then(|m| m.get(column))
    };
    let mut typed = Vec::with_capacity(columns.len());
    for (column, column_type) in columns {
        let text = match column_type {
            // `->` keeps a JSON null as jsonb 'null'; only a missing field is SQL NULL.
            ColumnType::Jsonb => field(column).map(Value::to_string),
            _ => match text_of(field(column)) {
                Some(text) => text,
                None => return false,
            },
        };
        typed.push(text);
    }
    copy_escape(key, out);
    out.push('\t');
    copy_escape(&doc.to_string(), out);
    for text in typed {
        out.push('\t');
        match text {
            Some(text) => copy_escape(&text, out),
            None => out.push_str("\\N"),
        }
    }
    out.push('\n');
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn columns() -> Vec<(String, ColumnType)> {
        vec![
            ("n".into(), ColumnType::Bigint),
            ("s".into(), ColumnType::Text),
            ("j".into(), ColumnType::Jsonb),
        ]
    }

    #[test]
    fn typed_columns_get_the_text_of_the_arrow_operator() {
        let mut out = String::new();
        let doc = json!({"revision": 3, "state": {"n": 7, "s": "a\tb", "j": null}});
        assert!(direct_line(
            "k\\1",
            &doc,
            ProjectionKind::Snapshot,
            &columns(),
            &mut out
        ));
        assert_eq!(
            out,
            "k\\\\1\t{\"revision\":3,\"state\":{\"j\":null,\"n\":7,\"s\":\"a\\\\tb\"}}\t7\ta\\tb\tnull\n"
        );
        let mut out = String::new();
        assert!(direct_line(
            "k",
            &json!({}),
            ProjectionKind::Table,
            &columns(),
            &mut out
        ));
        assert_eq!(out, "k\t{}\t\\N\t\\N\t\\N\n");
    }

    #[test]
    fn escapes_only_what_copy_text_needs() {
        let mut out = String::new();
        copy_escape("é\\a\tb\nc\rd", &mut out);
        assert_eq!(out, "é\\\\a\\tb\\nc\\rd");
    }

    #[test]
    fn uncertain_text_declines_the_direct_path() {
        for doc in [
            json!({"s": {"a": 1}}),
            json!({"n": 1e300}),
            json!({"s": [1]}),
        ] {
            let mut out = String::new();
            assert!(!direct_line(
                "k",
                &doc,
                ProjectionKind::Table,
                &columns(),
                &mut out
            ));
            assert!(out.is_empty());
        }
    }
}
