//! Replaying events in memory: fixture cases (`recast test`) and a helper for Rust tests.
//!
//! [`replay`] runs events through the upcaster chain and the projections with the same fold as
//! the rebuilder and returns the read models: projection name -> row key -> row (a snapshot
//! row is `{"revision": r, "state": ...}`, as in stores). A **fixture case** is a folder:
//!
//! ```text
//! streams/cases/<case>/events.jsonl              the events
//! streams/cases/<case>/expected/<projection>.json  the expected rows, a JSON object by key
//! ```
//!
//! [`run_case`] compares each projection's rows with its expected file and gives a unified diff
//! of the pretty JSON where they differ; with `bless` it writes the files instead.
//!
//! ```
//! use recast::project::{testing, ProjectionSet};
//! use recast::upcast::Registry;
//! use serde_json::json;
//!
//! let registry = Registry::load_dir("upcasters".as_ref()).unwrap();
//! let projections = ProjectionSet::load_dir("projections".as_ref()).unwrap();
//! let events = testing::events_from_jsonl(r#"
//! {"stream":"order-1","revision":0,"id":"00000000-0000-4000-8000-000000000001","type":"OrderPlaced","version":1,"data":{"order_id":"o-1","customer_id":"user-4","total":"10.50","shipping_address":"1 Main St"},"recorded_at":"2024-03-01T10:00:00Z"}
//! "#).unwrap();
//! let rows = json!({"user-4": {"orders": 1, "total_cents": 1050, "last_order": "order-1"}});
//! testing::expect_rows(&events, &registry, &projections, "customer_orders", &rows).unwrap();
//! ```

use super::fold::{Fold, Member};
use super::ProjectionSet;
use crate::event::Event;
use crate::migrate::ErrorPolicy;
use crate::upcast::{Registry, UpcastError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors of replaying and of fixture cases.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// An upcaster failed.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// A projection failed.
    #[error(transparent)]
    Projection(#[from] super::fold::ApplyError),
    /// A fixture file could not be read or written.
    #[error("fixture {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A fixture file that does not parse.
    #[error("fixture {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The projection named does not exist.
    #[error("no projection named {0}")]
    UnknownProjection(String),
    /// Rows differ from the expected ones.
    #[error("projection {projection} differs from what was expected:\n{diff}")]
    Mismatch { projection: String, diff: String },
}

/// Read models by projection name, then row key.
pub type ReadModels = BTreeMap<String, BTreeMap<String, Value>>;

/// Parses JSONL text into events (positions are the line order when absent).
pub fn events_from_jsonl(text: &str) -> Result<Vec<Event>, TestingError> {
    let path = Path::new("(text)");
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            crate::store::jsonl::parse_event_line(path, i as u64 + 1, l).map_err(|e| {
                TestingError::Parse {
                    path: path.into(),
                    message: e.to_string(),
                }
            })
        })
        .collect()
}

/// Replays events through the upcasters and projections, all in memory.
pub fn replay(
    events: &[Event],
    registry: &Registry,
    projections: &ProjectionSet,
) -> Result<ReadModels, TestingError> {
    let members = projections
        .all()
        .iter()
        .map(|p| Member {
            projection: p.clone(),
            checkpoint: Default::default(),
        })
        .collect();
    let mut fold = Fold::new(members, ErrorPolicy::Stop);
    let nothing_stored = |_: usize, _: &str| Ok(None);
    for (index, event) in events.iter().enumerate() {
        let mut event = event.clone();
        let position = *event.position.get_or_insert(index as u64);
        fold.apply(&registry.upcast(event)?.events, &nothing_stored, &|_, _| {
            true
        })?;
        fold.advance(Some(position));
    }
    let mut models: ReadModels = projections
        .all()
        .iter()
        .map(|p| (p.name().to_string(), BTreeMap::new()))
        .collect();
    for ((member, key), dirty) in fold.take_dirty() {
        let projection = &projections.all()[member];
        let Some(row) = dirty.into_row(projection.kind()) else {
            continue;
        };
        models
            .entry(projection.name().to_string())
            .or_default()
            .insert(key, row);
    }
    Ok(models)
}

/// A unified diff of two JSON values, pretty-printed; `None` when they are equal.
pub fn diff(expected: &Value, actual: &Value) -> Option<String> {
    if expected == actual {
        return None;
    }
    let expected = serde_json::to_string_pretty(expected).expect("values print");
    let actual = serde_json::to_string_pretty(actual).expect("values print");
    let text = similar::TextDiff::from_lines(&expected, &actual)
        .unified_diff()
        .header("expected", "actual")
        .to_string();
    Some(text)
}

fn rows_value(rows: &BTreeMap<String, Value>) -> Value {
    Value::Object(
        rows.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Map<_, _>>(),
    )
}

/// Checks one projection's rows after replaying `events`; the error carries a diff.
pub fn expect_rows(
    events: &[Event],
    registry: &Registry,
    projections: &ProjectionSet,
    projection: &str,
    expected: &Value,
) -> Result<(), TestingError> {
    let models = replay(events, registry, projections)?;
    let rows = models
        .get(projection)
        .ok_or_else(|| TestingError::UnknownProjection(projection.to_string()))?;
    match diff(expected, &rows_value(rows)) {
        None => Ok(()),
        Some(diff) => Err(TestingError::Mismatch {
            projection: projection.to_string(),
            diff,
        }),
    }
}

/// The outcome of one fixture case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// Case folder name.
    pub name: String,
    /// Projections whose rows differ (or have no expected file), with a diff.
    pub failures: Vec<(String, String)>,
    /// Expected files written (with `bless`).
    pub blessed: Vec<PathBuf>,
}

/// The case folders under `root` (those with an `events.jsonl`), in name order.
pub fn discover_cases(root: &Path) -> Result<Vec<PathBuf>, TestingError> {
    let io = |source| TestingError::Io {
        path: root.to_path_buf(),
        source,
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("events.jsonl").is_file())
        .collect();
    cases.sort();
    Ok(cases)
}

/// Replays one case and compares (or, with `bless`, writes) the expected rows.
pub fn run_case(
    case: &Path,
    registry: &Registry,
    projections: &ProjectionSet,
    bless: bool,
) -> Result<CaseResult, TestingError> {
    let events_path = case.join("events.jsonl");
    let text = std::fs::read_to_string(&events_path).map_err(|source| TestingError::Io {
        path: events_path.clone(),
        source,
    })?;
    let events = events_from_jsonl(&text).map_err(|e| TestingError::Parse {
        path: events_path.clone(),
        message: e.to_string(),
    })?;
    let models = replay(&events, registry, projections)?;
    let mut result = CaseResult {
        name: case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        failures: Vec::new(),
        blessed: Vec::new(),
    };
    for (projection, rows) in &models {
        let path = case.join("expected").join(format!("{projection}.json"));
        let actual = rows_value(rows);
        if bless {
            let io = |source| TestingError::Io {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(case.join("expected")).map_err(io)?;
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&actual).expect("rows print") + "\n",
            )
            .map_err(io)?;
            result.blessed.push(path);
            continue;
        }
        let expected: Value = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TestingError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                result.failures.push((
                    projection.clone(),
                    format!(
                        "no expected file {}; run `recast test --bless` to write it",
                        path.display()
                    ),
                ));
                continue;
            }
            Err(source) => return Err(TestingError::Io { path, source }),
        };
        if let Some(diff) = diff(&expected, &actual) {
            result.failures.push((projection.clone(), diff));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::ProjectionKind;
    use serde_json::json;

    /// A projection written in Rust: counts events per type, one row per type.
    struct TypeCounts;

    impl crate::project::Projection for TypeCounts {
        fn name(&self) -> &str {
            "type_counts"
        }
        fn version(&self) -> u32 {
            1
        }
        fn kind(&self) -> ProjectionKind {
            ProjectionKind::Table
        }
        fn origin(&self) -> &str {
            "tests::TypeCounts"
        }
        fn checksum(&self) -> String {
            "type_counts v1".into()
        }
        fn handles(&self, _: &Event) -> bool {
            true
        }
        fn keys(&self, event: &Event, _: &Value) -> Result<Vec<String>, crate::upcast::BoxError> {
            Ok(vec![event.event_type.clone()])
        }
        fn initial(&self) -> Value {
            json!({"n": 0})
        }
        fn apply(
            &self,
            _: &str,
            state: &mut Value,
            _: &Event,
            _: &Value,
        ) -> Result<crate::project::ops::Outcome, crate::upcast::BoxError> {
            state["n"] = json!(state["n"].as_u64().unwrap_or(0) + 1);
            Ok(crate::project::ops::Outcome::Keep)
        }
    }

    #[test]
    fn rust_projections_replay_beside_upcasters() {
        let registry =
            Registry::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/upcasters")))
                .unwrap();
        let projections = ProjectionSet::new(vec![std::sync::Arc::new(TypeCounts)]).unwrap();
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/streams/cases/order-lifecycle/events.jsonl"
        ))
        .unwrap();
        let events = events_from_jsonl(&text).unwrap();
        // ItemAdded is renamed by its upcaster and CartViewed is dropped before projections see them.
        let expected = json!({
            "LineItemAdded": {"n": 2}, "OrderPlaced": {"n": 2}, "OrderShipped": {"n": 1},
            "PaymentReceived": {"n": 1}, "ShippingAddressSet": {"n": 1}
        });
        expect_rows(&events, &registry, &projections, "type_counts", &expected).unwrap();
        let wrong =
            expect_rows(&events, &registry, &projections, "type_counts", &json!({})).unwrap_err();
        assert!(matches!(wrong, TestingError::Mismatch { .. }));
    }

    #[test]
    fn diff_shows_changed_lines_only_when_different() {
        assert!(diff(&json!({"a": 1}), &json!({"a": 1})).is_none());
        let text = diff(&json!({"a": 1, "b": 2}), &json!({"a": 1, "b": 3})).unwrap();
        assert!(
            text.contains("-  \"b\": 2") && text.contains("+  \"b\": 3"),
            "{text}"
        );
    }
}
