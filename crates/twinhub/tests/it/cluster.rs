//! Two real nodes on one PostgreSQL store (`cluster.nats`): one primary,
//! one standby answering health checks. The primary is killed with
//! SIGKILL under HTTP and MQTT (QoS 1) ingest; the standby takes the
//! store over, the devices carry on there, and every point acknowledged
//! by either node is in history with its value. The old primary, started
//! again, stands by.

use crate::crash_loop::{http_writer, mqtt_writer, Acked};
use crate::postgres::pg_url;
use crate::process::{all_points, cmd, kill9, login, post_json, Server, PW};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node of the cluster: its own data directory, the shared store and
/// keys.
fn node(dir: &Path, schema: &str, name: &str) -> std::process::Child {
    let _ = std::fs::remove_file(dir.join("ports.json"));
    std::fs::create_dir_all(dir).unwrap();
    let log = |f: &str| std::fs::File::create(dir.parent().unwrap().join(f)).unwrap();
    cmd(dir)
        .args(["serve", "--http-listen", "127.0.0.1:0"])
        .env("TWINHUB_ADMIN_PASSWORD", PW)
        .env("TWINHUB_STORE_URL", pg_url())
        .env("TWINHUB_STORE_SCHEMA", schema)
        .env("TWINHUB_CLUSTER_NATS", "nats://127.0.0.1:4222")
        .env("TWINHUB_CLUSTER_NODE_ID", name)
        .env("TWINHUB_SECRETS_KEY", "cluster-test-secrets-key-0123456789")
        .env("TWINHUB_AUDIT_KEY", "cluster-test-audit-key-0123456789")
        .stdout(log(&format!("{name}.out")))
        .stderr(log(&format!("{name}.err")))
        .spawn()
        .unwrap()
}

/// The node's ports.json once it has one (standby: `http` and `role`).
fn ports(dir: &Path, want: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(dir.join("ports.json")) {
            if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                if want(&v) {
                    return v;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no ports.json in {dir:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node started as a standby (its health-check port only).
fn standby(child: std::process::Child, dir: &Path) -> Server {
    let v = ports(dir, |v| v["role"] == "standby");
    Server {
        child,
        base: format!("http://{}", v["http"].as_str().unwrap()),
        mqtt: "127.0.0.1:1".parse().unwrap(),
    }
}

/// Waits until the node is the primary (ports.json lists every
/// listener), and points `s` at them.
fn promoted(s: &mut Server, dir: &Path) {
    let v = ports(dir, |v| v.get("mqtt").is_some());
    s.base = format!("http://{}", v["http"].as_str().unwrap());
    s.mqtt = v["mqtt"].as_str().unwrap().parse().unwrap();
}

async fn status(http: &reqwest::Client, url: &str) -> (u16, Value, Option<String>) {
    let r = http.get(url).send().await.unwrap();
    let st = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|h| h.to_str().unwrap().to_string());
    (st, r.json().await.unwrap_or(Value::Null), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_primary_dies_and_nothing_acknowledged_is_lost() {
    let schema = format!(
        "cluster_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let _drop = DropSchema(schema.clone());
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (dir_a, dir_b) = (root_a.path().join("data"), root_b.path().join("data"));
    let mut a = Server {
        child: node(&dir_a, &schema, "node-a"),
        base: String::new(),
        mqtt: "127.0.0.1:1".parse().unwrap(),
    };
    promoted(&mut a, &dir_a);
    let mut b = standby(node(&dir_b, &schema, "node-b"), &dir_b);
    let b_http = b.base.trim_start_matches("http://").to_string();
    let http = reqwest::Client::new();
    let (st, v, _) = status(&http, &format!("http://{b_http}/health")).await;
    assert_eq!((st, v["role"].as_str()), (200, Some("standby")), "{v}");
    assert_eq!(v["node"], "node-b");
    let (st, v, _) = status(&http, &format!("http://{b_http}/ready")).await;
    assert_eq!(st, 503, "a standby is not ready: {v}");
    let (st, v, retry) = status(&http, &format!("http://{b_http}/api/v1/twins")).await;
    assert_eq!((st, retry.as_deref()), (503, Some("1")), "{v}");
    assert_eq!(v["error"]["code"], "service_unavailable");

    let token = login(&a.base, PW).await;
    let mut devices = Vec::new();
    for (id, mqtt) in [("h1", false), ("m1", true)] {
        let created = post_json(
            &http,
            &format!("{}/api/v1/devices", a.base),
            &token,
            &json!({"id": id}),
        )
        .await;
        let key = created["key"].as_str().unwrap().to_string();
        devices.push((id.to_string(), key, mqtt));
    }
    let acked: Acked = Arc::default();
    let t0 = 1_764_500_000_000i64;
    let run = |s: &Server, from: i64| {
        let mut tasks = Vec::new();
        for (id, key, mqtt) in &devices {
            let (id, key, acked) = (id.clone(), key.clone(), acked.clone());
            let stop = Arc::new(AtomicBool::new(false));
            tasks.push(if *mqtt {
                tokio::spawn(mqtt_writer(s.mqtt, id, key, from, acked, stop))
            } else {
                tokio::spawn(http_writer(s.base.clone(), id, key, from, acked, stop))
            });
        }
        tasks
    };
    // Ingest on the primary, then SIGKILL it mid-stream.
    let tasks = run(&a, t0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = Instant::now();
    kill9(&mut a);
    for t in tasks {
        t.await.unwrap();
    }
    let before: usize = acked.lock().unwrap().values().map(|m| m.len()).sum();
    assert!(
        before > 50,
        "the stream ran on the primary ({before} points)"
    );

    // The standby takes over (the test plays the load balancer: /ready).
    promoted(&mut b, &dir_b);
    loop {
        if status(&http, &format!("{}/ready", b.base)).await.0 == 200 {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("takeover: ready {:?} after the SIGKILL", killed.elapsed());
    let tasks = run(&b, t0 + 3_600_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The old primary comes back as a standby.
    let mut a = standby(node(&dir_a, &schema, "node-a"), &dir_a);
    let (_, v, _) = status(&http, &format!("{}/health", a.base)).await;
    assert_eq!(v["role"], "standby", "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut b);
    for t in tasks {
        t.await.unwrap();
    }
    let after: usize = acked.lock().unwrap().values().map(|m| m.len()).sum();
    assert!(
        after > before + 20,
        "the devices carried on ({before} → {after})"
    );

    // node-a takes over again; every acknowledged point is there.
    promoted(&mut a, &dir_a);
    let token = login(&a.base, PW).await;
    for (id, want) in acked.lock().unwrap().clone() {
        let (from, to) = (
            *want.keys().next().unwrap(),
            want.keys().last().unwrap() + 1,
        );
        let stored: BTreeMap<i64, i64> = all_points(
            &http,
            &a.base,
            &token,
            &format!("{id}/telemetry/v"),
            from,
            to,
        )
        .await
        .iter()
        .map(|p| (p["ts"].as_i64().unwrap(), p["value"].as_i64().unwrap()))
        .collect();
        let lost = want
            .iter()
            .filter(|(t, v)| stored.get(t) != Some(v))
            .count();
        assert_eq!(
            lost,
            0,
            "{id}: {lost} of {} acknowledged points lost",
            want.len()
        );
    }
    drop(a);
}

/// The test's schema goes with it.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let _ = twinhub_server::store::pg::drop_schema(&pg_url(), &self.0);
    }
}

/// A primary cut off from PostgreSQL long enough for the standby to take
/// the store over stops at its next write instead of carrying on beside
/// the new primary: one writer, always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_lost_the_store_to_another_node_stops() {
    let schema = format!(
        "cluster_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let _drop = DropSchema(schema.clone());
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (dir_a, dir_b) = (root_a.path().join("data"), root_b.path().join("data"));
    let mut a = Server {
        child: node(&dir_a, &schema, "node-a"),
        base: String::new(),
        mqtt: "127.0.0.1:1".parse().unwrap(),
    };
    promoted(&mut a, &dir_a);
    let token = login(&a.base, PW).await;
    let http = reqwest::Client::new();
    let mut b = standby(node(&dir_b, &schema, "node-b"), &dir_b);
    let admin = twinhub_server::store::pg::PgConn::connect(&pg_url(), None).unwrap();
    // PostgreSQL ends node-a's writer session (a network cut looks the
    // same); node-b, trying every 500 ms, takes the lock. Should node-a
    // win the race back first, it is still the only writer: cut again.
    let cut = Instant::now();
    loop {
        let _: i64 = admin
            .sql_ref()
            .one(
                "SELECT COUNT(pg_terminate_backend(l.pid)) FROM pg_locks l
                 WHERE l.locktype = 'advisory' AND l.granted
                   AND l.objid::INT4 = hashtext('twinhub-writer:' || ?1)",
                twinhub_server::store::sql::args![&schema],
            )
            .unwrap();
        let v = std::fs::read(dir_b.join("ports.json")).unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let v2 = std::fs::read(dir_b.join("ports.json")).unwrap_or_default();
        if v2 != v || String::from_utf8_lossy(&v2).contains("mqtt") {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "node-b never took over"
        );
    }
    promoted(&mut b, &dir_b);
    // node-a's next write finds the lock taken: refused, and node-a stops.
    let r = http
        .post(format!("{}/api/v1/devices", a.base))
        .bearer_auth(&token)
        .json(&json!({"id": "late"}))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| !r.status().is_success()),
        "a write acknowledged by a node that is no longer the primary"
    );
    let t = Instant::now();
    let status = loop {
        if let Some(st) = a.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "node-a kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "node-a stopped with an error");
    let err = std::fs::read_to_string(root_a.path().join("node-a.err")).unwrap();
    assert!(err.contains("another node is the primary now"), "{err}");
    // node-b serves, with node-a's writes before the cut.
    let token_b = login(&b.base, PW).await;
    let r = http
        .get(format!("{}/api/v1/devices", b.base))
        .bearer_auth(&token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
