//! The store heals itself and keeps room to do so: a failed chunk install
//! is retried until it succeeds, a panicking compactor is restarted, and
//! under the free-space reserve new telemetry is refused (never
//! acknowledged) while reads go on. `/ready` and `/metrics` say which.

use crate::common::*;
use crate::mqtt::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};
use std::time::Duration;
use twinhub_server::store::health::Faults;

fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

async fn ready(s: &TestServer) -> (u16, Value) {
    let r = s.http.get(s.url("/ready")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `n` points stamped by the server (strictly increasing, so none
/// collapse); `tag` only tells the batches apart in the test's text.
fn points(tag: i64, n: i64) -> Value {
    Value::Array((0..n).map(|i| json!({"v": tag + i})).collect())
}

async fn count(s: &TestServer, twin: &str) -> usize {
    let (_, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/{twin}/telemetry/v?from=0&bucket=1d&agg=count"
        )))
        .await;
    v["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap() as usize)
        .sum()
}

#[tokio::test]
async fn a_failed_chunk_install_is_retried_and_ingest_resumes() {
    let s = TestServer::start_with(|c| c.store.flush_points = 1000).await;
    let key = s.device("f1").await;
    Faults::set(&s.store().faults().install, true);
    assert_eq!(s.send("f1", &key, points(1, 1100)).await.status(), 200);
    until("a failed flush", || async {
        metric(&s.metrics().await, "twinhub_store_flush_failures_total") >= 1.0
    })
    .await;
    let (st, r) = ready(&s).await;
    assert_eq!(st, 503, "{r}");
    assert_eq!(r["ingest"], false);
    assert_eq!(r["reads"], true);
    // Past twice the flush size the writer stops taking appends: this
    // request waits instead of being acknowledged.
    assert_eq!(s.send("f1", &key, points(2_000, 2100)).await.status(), 200);
    let base = s.base.clone();
    let k2 = key.clone();
    let blocked = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/devices/f1/telemetry"))
            .basic_auth("f1", Some(k2))
            .json(&points(10_000, 10))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "the stalled writer took an append");
    // Reads are still served meanwhile.
    assert_eq!(count(&s, "f1").await, 3200);

    Faults::set(&s.store().faults().install, false);
    assert_eq!(blocked.await.unwrap(), 200);
    until("ready again", || async { ready(&s).await.0 == 200 }).await;
    assert_eq!(count(&s, "f1").await, 3210);
    let m = s.metrics().await;
    assert!(metric(&m, "twinhub_store_flushes_total") >= 1.0, "{m}");
    assert_eq!(metric(&m, "twinhub_store_flush_failures"), 0.0);
    // Nothing was lost or doubled by the retries, across a restart too.
    let s = s.restart().await;
    assert_eq!(count(&s, "f1").await, 3210);
    s.stop().await;
}

#[tokio::test]
async fn a_panicking_compactor_is_restarted() {
    let s = TestServer::start_with(|c| c.store.flush_points = 1000).await;
    let key = s.device("p1").await;
    Faults::set(&s.store().faults().compactor_panic, true);
    until("a compactor restart", || async {
        metric(&s.metrics().await, "twinhub_store_compactor_restarts_total") == 1.0
    })
    .await;
    // It still flushes.
    assert_eq!(s.send("p1", &key, points(1, 1500)).await.status(), 200);
    until("a flush after the restart", || async {
        metric(&s.metrics().await, "twinhub_store_flushes_total") >= 1.0
    })
    .await;
    assert_eq!(ready(&s).await.0, 200);
    assert_eq!(count(&s, "p1").await, 1500);
    s.stop().await;
}

#[tokio::test]
async fn under_the_free_space_reserve_telemetry_is_refused_and_reads_go_on() {
    let s = TestServer::start().await;
    let key = s.device("full").await;
    let topic = "devices/full/telemetry";
    assert_eq!(s.send("full", &key, points(1, 5)).await.status(), 200);
    let (mut c5, _) = open5(s.mqtt(), "full", Some(("full", &key)), true, None).await;
    Faults::set(&s.store().faults().disk_full, true);

    let r = s.send("full", &key, points(100, 5)).await;
    assert_eq!(r.headers()["retry-after"], "30");
    let msg = error_of(r, 503, "storage_full").await;
    assert!(msg.contains("store.min_free"), "{msg}");
    c5.send5(pub5(topic, 1, 1, br#"{"v": 1}"#, None)).await;
    match c5.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::UnspecifiedError),
        p => panic!("{p:?}"),
    }
    drop(c5);
    let (mut c4, _) = open4(s.mqtt(), "full", Some(("full", &key)), false).await;
    c4.send4(pub4(topic, 1, 1, br#"{"v": 1}"#, false)).await;
    assert!(
        matches!(c4.recv4_within(WAIT).await, Got4::Closed),
        "3.1.1: no PUBACK while the disk is full"
    );
    let (st, r) = ready(&s).await;
    assert_eq!(st, 503);
    assert_eq!(r["ingest"], false, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("min_free"), "{r}");
    // Reads and registry work go on.
    assert_eq!(count(&s, "full").await, 5);
    assert_eq!(
        s.get("/api/v1/devices/full").send().await.unwrap().status(),
        200
    );
    let m = s.metrics().await;
    assert_eq!(metric(&m, "twinhub_store_ingest_ready"), 0.0);
    assert!(
        metric(&m, "twinhub_store_refused_low_space_total") >= 3.0,
        "{m}"
    );

    // Space comes back: the 3.1.1 device's resend is taken.
    Faults::set(&s.store().faults().disk_full, false);
    until("ready again", || async { ready(&s).await.0 == 200 }).await;
    let (mut c4, _) = open4(s.mqtt(), "full", Some(("full", &key)), false).await;
    c4.send4(pub4(topic, 1, 1, br#"{"v": 1}"#, false)).await;
    assert!(matches!(c4.recv4().await, v4::Packet::PubAck(a) if a.pkid == 1));
    assert_eq!(count(&s, "full").await, 6);
    s.stop().await;
}

/// A start with less free space than the reserve comes up, serves reads
/// and refuses telemetry; with the reserve lowered it takes it again.
#[tokio::test]
async fn a_start_under_the_reserve_serves_reads() {
    let s = TestServer::start().await;
    let key = s.device("low").await;
    assert_eq!(s.send("low", &key, points(1, 3)).await.status(), 200);
    let s = s
        .restart_with(|c| c.store.min_free = "1000000TB".into())
        .await;
    assert_eq!(ready(&s).await.0, 503);
    assert_eq!(count(&s, "low").await, 3);
    error_of(
        s.send("low", &key, points(10, 1)).await,
        503,
        "storage_full",
    )
    .await;
    let s = s.restart_with(|c| c.store.min_free = "64MB".into()).await;
    assert_eq!(ready(&s).await.0, 200);
    assert_eq!(s.send("low", &key, points(10, 1)).await.status(), 200);
    assert_eq!(count(&s, "low").await, 4);
    s.stop().await;
}
