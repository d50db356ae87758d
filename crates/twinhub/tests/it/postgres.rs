//! A server whose store is in PostgreSQL (`store.url`), whatever backend
//! the rest of the suite runs on: back-pressure when PostgreSQL stalls,
//! one writer per store, and `twinhub migrate`.

use crate::common::*;
use serde_json::json;
use twinhub_server::store::pg::PgConn;
use twinhub_server::store::sql::Sql;

pub fn pg_url() -> String {
    std::env::var("TWINHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Ends the PostgreSQL session holding `schema`'s writer lock (a restart,
/// a failover or a network cut looks the same to the node); how many.
pub fn end_writer_session(schema: &str) -> i64 {
    twinhub_server::store::backend::Source::Pg {
        url: pg_url(),
        schema: Some(schema.to_string()),
    }
    .end_writer_session(0)
    .unwrap()
}

/// A server on PostgreSQL in a schema of its own.
async fn start_on_postgres(f: impl FnOnce(&mut twinhub_server::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.store.url = pg_url();
        c.store.schema = c
            .data_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase()
            .replace(|ch: char| !ch.is_ascii_alphanumeric(), "_");
        f(c)
    })
    .await
}

/// PostgreSQL holding the writer (another session's lock on the batch
/// log) is what a slow or stalled database looks like: producers are told
/// to come back (503 + Retry-After) instead of queueing without bound,
/// nothing is acknowledged before it is committed, and once PostgreSQL
/// moves again exactly the acknowledged points are stored.
#[tokio::test]
async fn a_stalled_postgres_pushes_producers_back_and_loses_nothing() {
    let s = start_on_postgres(|c| {
        c.store.queue = 16;
        c.ingest.queue_wait = "300ms".into();
    })
    .await;
    let key = s.device("bp").await;
    let blocker = PgConn::connect(&pg_url(), Some(&s.config.store.schema)).unwrap();
    blocker
        .batch("BEGIN; LOCK TABLE batch_log IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    // PostgreSQL moves again at the first push-back.
    let Flood {
        ok,
        ok_before_release,
        busy,
    } = flood_until_pushed_back(&s, "bp", &key, move || {
        blocker.batch("ROLLBACK").unwrap();
    })
    .await;
    assert_eq!(
        ok_before_release, 0,
        "acknowledged while PostgreSQL held the writer"
    );
    assert!(busy > 0, "some producers were pushed back");
    assert!(
        ok >= 16,
        "queued writes were acknowledged once PostgreSQL moved ({ok})"
    );
    let (_, v) = s
        .json(s.get("/api/v1/twins/bp/telemetry/v?from=0&bucket=1d&agg=count"))
        .await;
    assert_eq!(
        v["buckets"][0]["count"],
        ok * 10,
        "exactly the acknowledged points are stored"
    );
    s.stop().await;
}

/// `twinhub migrate` brings a PostgreSQL store to the binary's format (and
/// again, idempotently); a server then starts on it, and a second server
/// on the same store is refused while the first runs.
#[tokio::test]
async fn migrate_then_one_server_per_postgres_store() {
    let s = start_on_postgres(|_| {}).await;
    let schema = s.config.store.schema.clone();
    let migrate = || {
        // The children see only what they are given, not this run's own
        // TWINHUB_TEST_* variables.
        crate::process::cmd(&s.dir.path().join("elsewhere"))
            .arg("migrate")
            .env("TWINHUB_STORE_URL", pg_url())
            .env("TWINHUB_STORE_SCHEMA", &schema)
            .output()
            .unwrap()
    };
    let out = migrate();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("is at format"), "{text}");
    assert!(!text.contains("root@"), "no credentials printed: {text}");
    // A second server process on the store the first one writes.
    let mut other = crate::process::cmd(&s.dir.path().join("second"))
        .args(["serve", "--http-listen", "127.0.0.1:0"])
        .env("TWINHUB_STORE_URL", pg_url())
        .env("TWINHUB_STORE_SCHEMA", &schema)
        .env("TWINHUB_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = other.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = other.kill();
            panic!("a second writer started and kept running");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut other.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "a second writer started");
    assert!(
        err.contains("another twinhub node is writing this PostgreSQL store"),
        "{err}"
    );
    s.stop().await;
}

/// PostgreSQL ends the writer's connection (a restart or failover looks
/// the same to the node): the writes in flight are refused, not
/// acknowledged, the writer reconnects by itself, and every acknowledged
/// point is stored.
#[tokio::test]
async fn the_writer_reconnects_when_postgres_ends_its_connection() {
    let s = start_on_postgres(|_| {}).await;
    let key = s.device("r").await;
    let schema = s.config.store.schema.clone();
    let mut acked = 0i64;
    let mut refused = 0;
    for i in 0..60i64 {
        if i == 20 {
            // The backend holding the store's writer lock is the writer's.
            let ended = end_writer_session(&schema);
            assert_eq!(ended, 1, "the writer's backend was found and ended");
        }
        let r = s
            .http
            .post(s.url("/api/v1/devices/r/telemetry"))
            .basic_auth("r", Some(&key))
            .json(&json!({"ts": 1_700_000_000_000i64 + i, "v": i}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => acked += 1,
            503 => refused += 1,
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        acked >= 50,
        "the writer came back ({acked} acknowledged, {refused} refused)"
    );
    let (_, v) = s
        .json(s.get("/api/v1/twins/r/telemetry/v?from=0&bucket=1d&agg=count"))
        .await;
    assert_eq!(
        v["buckets"][0]["count"], acked,
        "exactly the acknowledged points"
    );
    s.stop().await;
}
