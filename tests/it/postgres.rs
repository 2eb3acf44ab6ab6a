//! PostgreSQL read models against the real server at 127.0.0.1:5432 (user postgres, database
//! test). Without a server these tests print a notice and pass, unless `CI` is set, where an
//! unreachable server fails them. Each test works in a schema of its own and drops it.

use super::rebuild::{assert_same_read_models, readmodel_checksum, rebuild, rebuild_process};
use super::{generate, recast};
use predicates::str::contains;
use std::process::Stdio;
use std::time::Duration;

const SERVER: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";

/// A schema for one test, dropped when the test ends.
pub struct Schema {
    pub location: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(SERVER, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

/// A fresh schema on the test server, or `None` (with a notice) when there is no server.
pub fn schema(test: &str) -> Option<Schema> {
    match postgres::Client::connect(SERVER, postgres::NoTls) {
        Ok(mut client) => {
            let name = format!("t_{test}_{}", std::process::id());
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .unwrap();
            Some(Schema {
                location: format!("postgres://postgres@127.0.0.1:5432/test?schema={name}"),
                name,
            })
        }
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL at 127.0.0.1:5432 is unreachable and CI is set: {error}")
        }
        Err(error) => {
            eprintln!("skipped {test}: PostgreSQL at 127.0.0.1:5432 is unreachable ({error})");
            None
        }
    }
}

fn sql(query: &str) -> Vec<postgres::Row> {
    postgres::Client::connect(SERVER, postgres::NoTls)
        .unwrap()
        .query(query, &[])
        .unwrap()
}

/// Every typed column of the demo projections holds what SQL derives from the row's document,
/// whether its window was copied straight into the table or went through the staged upsert.
fn assert_typed_columns_match_documents(schema: &str) {
    /// (view, where its typed columns come from, [(column, SQL type)])
    type TypedView<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let views: [TypedView; 3] = [
        (
            "order_summary",
            "doc->'state'",
            &[
                ("status", "text"),
                ("customer", "text"),
                ("total_cents", "bigint"),
                ("items", "bigint"),
            ],
        ),
        (
            "customer_orders",
            "doc",
            &[
                ("orders", "bigint"),
                ("total_cents", "bigint"),
                ("last_order", "text"),
            ],
        ),
        (
            "sku_sales",
            "doc",
            &[
                ("units", "bigint"),
                ("lines", "bigint"),
                ("revenue_cents", "bigint"),
            ],
        ),
    ];
    for (view, source, columns) in views {
        let differs: Vec<String> = columns
            .iter()
            .map(|(c, t)| format!("{c} IS DISTINCT FROM ({source}->>'{c}')::{t}"))
            .collect();
        let rows = sql(&format!(
            "SELECT count(*), count(*) FILTER (WHERE {}) FROM {schema}.{view}",
            differs.join(" OR ")
        ));
        let (total, different): (i64, i64) = (rows[0].get(0), rows[0].get(1));
        assert!(total > 0, "{view} is empty");
        assert_eq!(
            different, 0,
            "{view}: typed columns differ from the documents"
        );
    }
}

#[test]
fn postgres_read_models_equal_sled_and_swap_through_a_view() {
    let Some(schema) = schema("equal") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 20_000, 800, 4);
    rebuild(d, "log.jsonl", "sled:rm").assert().success();
    rebuild(d, "log.jsonl", &schema.location)
        .args(["--memory-mb", "1"])
        .assert()
        .success();
    assert_same_read_models(d, "sled:rm", &schema.location);
    // Typed columns are there for SQL readers, through the view of the live generation.
    let rows = sql(&format!(
        "SELECT count(*), sum(orders)::bigint FROM {}.customer_orders WHERE orders > 0",
        schema.name
    ));
    let (count, orders): (i64, Option<i64>) = (rows[0].get(0), rows[0].get(1));
    assert!(count > 0 && orders.is_some_and(|n| n >= count));
    assert_typed_columns_match_documents(&schema.name);
    let status = recast(d)
        .args(["status", "--json", "--readmodels", &schema.location])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 3);
    assert!(
        status.as_array().unwrap().iter().all(|r| r["live"] == 1),
        "{status}"
    );

    let live = readmodel_checksum(d, &schema.location, "customer_orders");
    recast(d)
        .args(["swap", "customer_orders", "--readmodels", &schema.location])
        .assert()
        .code(1)
        .stderr(contains("nothing to swap to"));
    rebuild(d, "log.jsonl", &schema.location)
        .args(["customer_orders", "--new"])
        .assert()
        .success();
    recast(d)
        .args(["swap", "customer_orders", "--readmodels", &schema.location])
        .assert()
        .success()
        .stdout(contains("generation 2 is live"));
    // Generation 2 was built in one window, copied straight into its table.
    assert_typed_columns_match_documents(&schema.name);
    let view = sql(&format!(
        "SELECT definition FROM pg_views WHERE schemaname = '{}' AND viewname = 'customer_orders'",
        schema.name
    ));
    assert!(view[0].get::<_, String>(0).contains("customer_orders_g2"));
    assert_eq!(
        readmodel_checksum(d, &schema.location, "customer_orders"),
        live
    );
    recast(d)
        .args([
            "rollback",
            "customer_orders",
            "--readmodels",
            &schema.location,
        ])
        .assert()
        .success();
    recast(d)
        .args(["prune", "customer_orders", "--readmodels", &schema.location])
        .assert()
        .success()
        .stdout(contains("[2]"));
    let tables = sql(&format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{}' AND tablename = 'customer_orders_g2'", schema.name));
    assert_eq!(tables[0].get::<_, i64>(0), 0);
}

#[test]
fn a_second_rebuilder_is_refused_by_the_advisory_lock() {
    let Some(schema) = schema("lock") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 20_000, 500, 6);
    // With --follow the first rebuild keeps its locks after catching up, so the second one
    // meets them however fast the first one is.
    let mut first = rebuild_process(d, "log.jsonl", &schema.location)
        .arg("--follow")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The rebuilder's lock of each demo projection (key as in `readmodel::postgres`).
    let locks = format!(
        "SELECT count(*) FROM pg_locks l JOIN (VALUES ('order_summary'), ('customer_orders'), ('sku_sales')) p(name) \
         ON l.locktype = 'advisory' AND l.granted AND l.objid::int = hashtext('recast:{}:' || p.name)",
        schema.name
    );
    while sql(&locks)[0].get::<_, i64>(0) < 3 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first rebuild ended"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the first rebuild took no locks"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = rebuild(d, "log.jsonl", &schema.location).output().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().ok();
    first.wait().unwrap();
    assert!(
        still_running,
        "the first rebuild ended before the second started"
    );
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("is being rebuilt by another process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
}

#[test]
fn killed_mid_copy_resumes_to_the_uninterrupted_result() {
    let Some(schema) = schema("kill") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 200_000, 5_000, 7);
    rebuild(d, "log.jsonl", "sled:reference").assert().success();
    let mut kills_that_landed = 0;
    for attempt in 0..4u64 {
        let mut child = rebuild_process(d, "log.jsonl", &schema.location)
            .args(["--memory-mb", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700 + 500 * attempt));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills_that_landed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills_that_landed >= 2,
        "only {kills_that_landed} kills hit a running rebuild"
    );
    rebuild(d, "log.jsonl", &schema.location)
        .args(["--memory-mb", "1"])
        .assert()
        .success();
    assert_same_read_models(d, "sled:reference", &schema.location);
}

#[test]
fn a_terminated_backend_is_reconnected_and_nothing_is_half_applied() {
    let Some(schema) = schema("terminate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 200_000, 5_000, 9);
    rebuild(d, "log.jsonl", "sled:reference").assert().success();
    let child = rebuild_process(d, "log.jsonl", &schema.location)
        .args(["--memory-mb", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut terminated = 0i64;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(800));
        let rows = sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'recast' AND pid <> pg_backend_pid()");
        terminated += rows[0].get::<_, i64>(0);
    }
    let out = child.wait_with_output().unwrap();
    assert!(terminated > 0, "no recast backend was running to terminate");
    // The rebuild rides out the terminations: it reconnects, takes its advisory locks again and
    // redoes the window that was cut off.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_read_models(d, "sled:reference", &schema.location);
}

#[test]
fn three_workers_share_a_rebuild_and_survive_a_killed_one() {
    let Some(schema) = schema("workers") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 150_000, 6_000, 12);
    rebuild(d, "log.jsonl", "sled:reference")
        .arg("order_summary")
        .assert()
        .success();
    let worker = || {
        rebuild_process(d, "log.jsonl", &schema.location)
            .args([
                "order_summary",
                "--worker",
                "--partitions",
                "6",
                "--lease-seconds",
                "2",
                "--memory-mb",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut doomed = worker();
    let survivors = [worker(), worker()];
    std::thread::sleep(Duration::from_millis(1200));
    let killed = doomed.try_wait().unwrap().is_none();
    doomed.kill().ok();
    doomed.wait().unwrap();
    assert!(
        killed,
        "the first worker finished before it could be killed"
    );
    let mut finished = 0;
    for survivor in survivors {
        let out = survivor.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("worker done"), "{text}");
        finished += text.matches("(\"order_summary\", ").count();
    }
    assert!(finished >= 1, "the survivors finished no partition");
    assert_eq!(
        readmodel_checksum(d, &schema.location, "order_summary"),
        readmodel_checksum(d, "sled:reference", "order_summary"),
        "workers, one of them killed, must build what one process builds"
    );
    let claims = sql(&format!(
        "SELECT count(*) FROM {}.recast_claims WHERE done",
        schema.name
    ));
    assert_eq!(claims[0].get::<_, i64>(0), 6);
}

#[test]
fn a_million_events_into_postgres_equal_the_sled_read_models() {
    let Some(schema) = schema("million") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 1_000_000, 20_000, 17);
    rebuild(d, "log.jsonl", "sled:rm").assert().success();
    rebuild(d, "log.jsonl", &schema.location)
        .args(["--memory-mb", "64"])
        .assert()
        .success();
    assert_same_read_models(d, "sled:rm", &schema.location);
}

#[test]
fn migration_checkpoints_can_live_in_postgres_with_the_password_from_the_environment() {
    let Some(schema) = schema("jobs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 3_000, 100, 2);
    // The password comes from the environment; trust authentication ignores it.
    let state = schema.location.replace(
        "postgres://postgres@",
        "postgres://postgres:${RECAST_TEST_PG_SECRET}@",
    );
    let migrate = || {
        let mut c = recast(d);
        c.env("RECAST_TEST_PG_SECRET", "not-shown")
            .args([
                "migrate",
                "--from",
                "log.jsonl",
                "--to",
                "out.jsonl",
                "--json",
                "--state",
                &state,
                "--upcasters",
            ])
            .arg(super::upcasters());
        c
    };
    let first = migrate().output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = migrate().output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(report["completed"], true);
    assert!(
        report["resumed_after"].is_u64(),
        "the second run resumes the checkpoint kept in PostgreSQL: {report}"
    );
    let jobs = sql(&format!("SELECT count(*) FROM {}.recast_jobs", schema.name));
    assert_eq!(jobs[0].get::<_, i64>(0), 1);
    let unset = recast(d)
        .args([
            "migrate",
            "--from",
            "log.jsonl",
            "--to",
            "x.jsonl",
            "--state",
            &state,
            "--upcasters",
        ])
        .arg(super::upcasters())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unset.stderr)
        .contains("environment variable RECAST_TEST_PG_SECRET"));
}

#[test]
fn a_projection_name_made_of_sql_is_refused_and_never_reaches_the_server() {
    let Some(schema) = schema("names") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    generate(d, "log.jsonl", 100, 10, 1);
    let mut admin = postgres::Client::connect(SERVER, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {0}; CREATE TABLE {0}.y (n int)",
            schema.name
        ))
        .unwrap();
    let projections = d.join("projections");
    std::fs::create_dir_all(&projections).unwrap();
    let evil = "name = 'x\"; drop table y; --'\nversion = 1\nkind = \"snapshot\"\n[[on]]\ntype = \"OrderPlaced\"\n";
    std::fs::write(projections.join("evil.toml"), evil).unwrap();
    recast(d)
        .args([
            "rebuild",
            "--from",
            "log.jsonl",
            "--readmodels",
            &schema.location,
            "--projections",
            "projections",
            "--upcasters",
        ])
        .arg(super::upcasters())
        .assert()
        .code(1)
        .stderr(contains("must be lowercase letters, digits and _"));
    let still_there = sql(&format!(
        "SELECT count(*) FROM pg_tables WHERE schemaname = '{}' AND tablename = 'y'",
        schema.name
    ));
    assert_eq!(still_there[0].get::<_, i64>(0), 1);
}
