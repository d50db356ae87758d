//! `twinhub export` / `twinhub import` (the real binary): an edge box on
//! the embedded store moves to PostgreSQL and back with everything a user
//! relies on — history (flushed chunks and points still in the batch log),
//! devices and their keys, rules and open alarms, secrets (the key file
//! travels) and the audit chain. A damaged file or a store that already
//! holds data is refused and leaves the target as it was.

use crate::common::*;
use crate::postgres::pg_url;
use crate::process;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

const T0: i64 = 1_764_500_000_000;

fn embedded(c: &mut twinhub_server::config::Config) {
    c.store.url.clear();
    c.store.schema.clear();
}

fn fresh_schema() -> String {
    let noise: String = twinhub_server::auth::random_secret(12)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("export_{}", noise.to_lowercase())
}

/// Runs the CLI on `dir` (and on PostgreSQL `schema`, if given); its
/// output, or a failure with it.
fn cli(dir: &Path, schema: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut c = process::cmd(dir);
    c.args(args);
    if let Some(s) = schema {
        c.env("TWINHUB_STORE_URL", pg_url())
            .env("TWINHUB_STORE_SCHEMA", s);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

async fn temp(s: &TestServer, key: &str, i: i64, t: f64) {
    let r = s
        .send("pump1", key, json!({"ts": T0 + i * 1000, "temperature": t}))
        .await;
    assert_eq!(r.status(), 200);
}

async fn count_and_sum(s: &TestServer) -> Value {
    let (st, v) = s
        .json(s.get("/api/v1/twins/pump1/telemetry/temperature?from=0&bucket=1d&agg=count,sum"))
        .await;
    assert_eq!(st, 200, "{v}");
    v["buckets"][0].clone()
}

/// What must be the same wherever the installation runs.
async fn same_installation(s: &TestServer, key: &str, history: &Value) {
    assert_eq!(&count_and_sum(s).await, history, "the history moved whole");
    let (_, a) = s.json(s.get("/api/v1/alarms")).await;
    let a = a["value"].as_array().unwrap();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["originator"], "pump1");
    assert_eq!(a[0]["count"], 2);
    let (st, rule) = s.json(s.get("/api/v1/rules/hot")).await;
    assert_eq!(st, 200, "{rule}");
    let (_, v) = s.json(s.post("/api/v1/audit/verify", json!({}))).await;
    assert_eq!(
        v["ok"], true,
        "the audit chain verifies with the moved key: {v}"
    );
    let secrets = twinhub_server::secrets::SecretBox::open(
        s.store().clone(),
        Arc::new(twinhub_server::clock::SystemClock),
        None,
    )
    .unwrap();
    assert_eq!(
        secrets.reveal("default", "erp-token").unwrap().as_deref(),
        Some("s3cret-value"),
        "the secret opens with the moved key"
    );
    // The device's key still works, and ids continue where they were.
    temp(s, key, 10_000, 301.0).await;
}

#[tokio::test]
async fn an_installation_moves_from_the_embedded_store_to_postgres_and_back() {
    let edge = TestServer::start_with(embedded).await;
    let key = edge.device("pump1").await;
    let (st, v) = edge
        .json(edge.post(
            "/api/v1/rules",
            json!({"id": "hot", "name": "Too hot", "select": {"twin": "pump1"},
                   "condition": "temperature > 375", "clear": "temperature < 370",
                   "alarm": {"type": "HighTemperature", "severity": "major"}}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    for i in 0..120 {
        temp(&edge, &key, i, 300.0 + i as f64 / 10.0).await;
    }
    // A restart flushes these into chunks; what follows stays in the
    // batch log, and the export is taken from the running server.
    let edge = edge.restart().await;
    for i in 120..240 {
        // The last two are over the threshold: one open alarm, count 2.
        let t = if i >= 238 { 380.0 } else { 300.0 };
        temp(&edge, &key, i, t).await;
    }
    let (st, v) = edge
        .json(
            edge.http
                .put(edge.url("/api/v1/secrets/erp-token"))
                .bearer_auth(&edge.token)
                .json(&json!({"value": "s3cret-value"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    until("the alarm counted both excursions", || async {
        let (_, a) = edge.json(edge.get("/api/v1/alarms")).await;
        a["value"][0]["count"] == 2
    })
    .await;
    let history = count_and_sum(&edge).await;
    assert_eq!(history["count"], 240);

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("edge.twx");
    let file_s = file.to_str().unwrap();
    let out = cli(edge.dir.path(), None, &["export", file_s]).unwrap();
    assert!(out.contains("key files: secrets.key, audit.key"), "{out}");
    assert!(out.contains("(sqlite, format"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600,
        "the file holds keys: owner only"
    );
    edge.stop().await;

    // Into PostgreSQL.
    let schema = fresh_schema();
    let site_dir = Arc::new(tempfile::tempdir().unwrap());
    let out = cli(site_dir.path(), Some(&schema), &["import", file_s]).unwrap();
    assert!(out.contains("sqlite export of format"), "{out}");
    assert!(!out.contains("root@"), "no credentials printed: {out}");
    let err = cli(site_dir.path(), Some(&schema), &["import", file_s]).unwrap_err();
    assert!(err.contains("already holds data"), "{err}");
    let site = TestServer::start_in(site_dir, |c| {
        c.store.url = pg_url();
        c.store.schema = schema.clone();
    })
    .await;
    same_installation(&site, &key, &history).await;
    let history = count_and_sum(&site).await;
    let file2 = work.path().join("site.twx");
    let file2_s = file2.to_str().unwrap();
    let out = cli(site.dir.path(), Some(&schema), &["export", file2_s]).unwrap();
    assert!(out.contains("(postgres, format"), "{out}");
    site.stop().await;

    // A damaged copy is refused and leaves the new store empty: the good
    // one then imports into it.
    let back_dir = Arc::new(tempfile::tempdir().unwrap());
    let damaged = work.path().join("damaged.twx");
    let mut bytes = std::fs::read(&file2).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&damaged, &bytes).unwrap();
    let err = cli(
        back_dir.path(),
        None,
        &["import", damaged.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(err.contains("export file"), "{err}");
    cli(back_dir.path(), None, &["import", file2_s]).unwrap();

    // Back on the embedded store.
    let back = TestServer::start_in(back_dir, embedded).await;
    same_installation(&back, &key, &history).await;
    back.stop().await;
}

/// `backup` and `restore` of a PostgreSQL store go through the export:
/// a restore puts the store back as it was at the backup.
#[tokio::test]
async fn backup_and_restore_a_postgres_store() {
    let schema = fresh_schema();
    let s = TestServer::start_with(|c| {
        c.store.url = pg_url();
        c.store.schema = schema.clone();
    })
    .await;
    let key = s.device("pump1").await;
    for i in 0..10 {
        temp(&s, &key, i, 300.0).await;
    }
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.twx");
    cli(
        s.dir.path(),
        Some(&schema),
        &["backup", file.to_str().unwrap()],
    )
    .unwrap();
    for i in 10..15 {
        temp(&s, &key, i, 300.0).await;
    }
    let err = cli(
        s.dir.path(),
        Some(&schema),
        &["restore", file.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(
        err.contains("stop it before"),
        "a running store is not replaced: {err}"
    );
    assert_eq!(count_and_sum(&s).await["count"], 15);
    let dir = s.dir.clone();
    let s = s
        .offline(|| {
            cli(
                dir.path(),
                Some(&schema),
                &["restore", file.to_str().unwrap()],
            )
            .unwrap();
        })
        .await;
    assert_eq!(count_and_sum(&s).await["count"], 10, "as at the backup");
    s.stop().await;
}
