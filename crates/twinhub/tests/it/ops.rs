use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_ready_metrics_and_openapi() {
    let s = TestServer::start().await;
    let (st, h) = s.json(s.http.get(s.url("/health"))).await;
    assert_eq!((st.as_u16(), h), (200, json!({"status": "ok"})));
    assert_eq!(
        s.http.get(s.url("/ready")).send().await.unwrap().status(),
        200
    );
    let k = s.device("m").await;
    s.send("m", &k, json!([{"a": 1, "b": 2}, {"a": 3}])).await;
    let text = s.metrics().await;
    for needle in [
        "twinhub_messages_in_total{protocol=\"http\"} 2",
        "twinhub_points_in_total{protocol=\"http\"} 3",
        "twinhub_ingest_durable_seconds_count",
        "twinhub_store_queue_depth",
        "twinhub_store_size_bytes",
        "twinhub_store_compaction_lag_seconds",
        "twinhub_devices 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("device=\""), "no per-device labels");
    let (st, doc) = s.json(s.http.get(s.url("/api/v1/openapi.json"))).await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/{id}/telemetry",
        "/api/v1/twins/{id}/telemetry/{name}",
        "/api/v1/auth/login",
        "/api/v1/events",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let r = s.get("/api/v1/nowhere").send().await.unwrap();
    error_of(r, 404, "not_found").await;
    let r = s
        .http
        .put(s.url("/api/v1/devices"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    error_of(r, 405, "method_not_allowed").await;
    s.stop().await;
}

#[tokio::test]
async fn metrics_can_require_a_bearer() {
    let s = TestServer::start_with(|c| c.metrics.bearer_token = Some("scrape-secret".into())).await;
    assert_eq!(
        s.http.get(s.url("/metrics")).send().await.unwrap().status(),
        401
    );
    let r = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _: Option<Value> = None;
    s.stop().await;
}
