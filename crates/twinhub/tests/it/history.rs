use crate::common::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const SEC: i64 = 1000;
const HOUR_MS: i64 = 3_600_000;

/// Start of the hour three hours ago, in epoch ms.
fn recent_hour() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (now - 3 * HOUR_MS) / HOUR_MS * HOUR_MS
}

async fn send_all(s: &TestServer, id: &str, key: &str, pts: &[(i64, f64)]) {
    for chunk in pts.chunks(1000) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|(t, v)| json!({"ts": t, "v": v}))
            .collect();
        assert_eq!(s.send(id, key, Value::Array(body)).await.status(), 200);
    }
}

#[tokio::test]
async fn raw_pages_follow_next_to_the_end() {
    let s = TestServer::start().await;
    let key = s.device("p").await;
    let t0 = recent_hour();
    let pts: Vec<(i64, f64)> = (0..2500).map(|i| (t0 + i * SEC, i as f64)).collect();
    send_all(&s, "p", &key, &pts).await;
    let mut got = Vec::new();
    let mut url = format!("/api/v1/twins/p/telemetry/v?from={t0}");
    loop {
        let (st, page) = s.json(s.get(&url)).await;
        assert_eq!(st, 200);
        let items = page["points"].as_array().unwrap();
        assert!(items.len() <= 1000);
        got.extend(
            items
                .iter()
                .map(|p| (p["ts"].as_i64().unwrap(), p["value"].as_f64().unwrap())),
        );
        match page["next"].as_str() {
            Some(n) => url = format!("/api/v1/twins/p/telemetry/v?from={t0}&next={n}"),
            None => break,
        }
    }
    assert_eq!(got, pts);
    // Half-open ranges: `to` itself is excluded.
    let (_, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/p/telemetry/v?from={}&to={}",
            t0 + 10 * SEC,
            t0 + 12 * SEC
        )))
        .await;
    assert_eq!(v["points"].as_array().unwrap().len(), 2);
    let (_, v) = s
        .json(s.get(&format!("/api/v1/twins/p/telemetry/v?from={t0}&limit=7")))
        .await;
    assert_eq!(v["points"].as_array().unwrap().len(), 7);
    s.stop().await;
}

#[tokio::test]
async fn chart_requests_get_at_most_n_buckets_with_exact_min_max_avg() {
    let s = TestServer::start().await;
    let key = s.device("c").await;
    let t0 = recent_hour() - HOUR_MS;
    let pts: Vec<(i64, f64)> = (0..7200)
        .map(|i| (t0 + i * SEC, (i % 100) as f64))
        .collect();
    send_all(&s, "c", &key, &pts).await;
    // Two hours into at most 100 buckets: 72 s each at least, so the
    // round width above it, 2 minutes (60 buckets).
    let (st, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/c/telemetry/v?from={t0}&to={}&points=100",
            t0 + 2 * HOUR_MS
        )))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["bucket"], "2m");
    let b = v["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 60);
    let total: u64 = b.iter().map(|x| x["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 7200);
    for x in b {
        let start = x["ts"].as_i64().unwrap();
        let inside: Vec<f64> = pts
            .iter()
            .filter(|(t, _)| *t >= start && *t < start + 120 * SEC)
            .map(|(_, v)| *v)
            .collect();
        let avg = inside.iter().sum::<f64>() / inside.len() as f64;
        assert_eq!(
            x["min"].as_f64().unwrap(),
            inside.iter().cloned().fold(f64::MAX, f64::min)
        );
        assert_eq!(
            x["max"].as_f64().unwrap(),
            inside.iter().cloned().fold(f64::MIN, f64::max)
        );
        assert!((x["avg"].as_f64().unwrap() - avg).abs() < 1e-9);
    }
    // A narrow range goes down to the finest width, 1 s, and an uneven
    // range is widened to whole buckets.
    let (_, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/c/telemetry/v?from={}&to={}&points=1000&agg=max",
            t0 + 500,
            t0 + 10 * SEC
        )))
        .await;
    assert_eq!(v["bucket"], "1s");
    let b = v["buckets"].as_array().unwrap();
    assert_eq!(b.len(), 10);
    assert_eq!(b[0], json!({"ts": t0, "max": 0}));
    // The multi-series query takes the same option.
    let (st, v) = s
        .json(s.post(
            "/api/v1/history/query",
            json!({"series": [{"twin": "c", "name": "v"}], "from": t0, "to": t0 + 2 * HOUR_MS, "points": 30}),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["series"][0]["bucket"], "5m");
    assert_eq!(v["series"][0]["buckets"].as_array().unwrap().len(), 24);
    for (q, field) in [
        ("points=0", "points:"),
        ("points=10001", "points:"),
        ("points=10", "from:"),
        ("points=10&from=0&bucket=1m", "bucket:"),
        ("points=10&from=0&limit=5", "limit:"),
    ] {
        let r = s
            .get(&format!("/api/v1/twins/c/telemetry/v?{q}"))
            .send()
            .await
            .unwrap();
        let msg = error_of(r, 400, "bad_request").await;
        assert!(msg.starts_with(field), "{q} → {msg}");
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_history_requests_name_the_parameter() {
    let s = TestServer::start().await;
    let key = s.device("p").await;
    s.send("p", &key, json!({"v": 1})).await;
    for (q, field) in [
        ("bucket=7y", "bucket:"),
        ("bucket=500ms", "bucket:"),
        ("bucket=1m&agg=median", "agg:"),
        ("bucket=1m&tz=Mars/Base", "tz:"),
        ("agg=avg", "bucket:"),
        ("from=later", "from:"),
        ("from=2000&to=1000", "from:"),
        ("limit=0", "limit:"),
        ("next=garbage", "next:"),
    ] {
        let r = s
            .get(&format!("/api/v1/twins/p/telemetry/v?{q}"))
            .send()
            .await
            .unwrap();
        let msg = error_of(r, 400, "bad_request").await;
        assert!(msg.starts_with(field), "{q} → {msg}");
    }
    let r = s
        .get("/api/v1/twins/p/telemetry/v?limit=abc")
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("limit"));
    s.stop().await;
}

#[tokio::test]
async fn time_zone_buckets_start_at_local_midnight() {
    let s = TestServer::start().await;
    let key = s.device("tz").await;
    // 2026-01-10T20:00:00Z is 01:30 on the 11th in Kolkata (+05:30).
    s.send("tz", &key, json!({"ts": "2026-01-10T20:00:00Z", "v": 1}))
        .await;
    s.send("tz", &key, json!({"ts": "2026-01-10T17:00:00Z", "v": 2}))
        .await;
    let (st, v) = s.json(s.get("/api/v1/twins/tz/telemetry/v?from=2026-01-09T00:00:00Z&to=2026-01-12T00:00:00Z&bucket=1d&tz=Asia/Kolkata&agg=count,first")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["buckets"],
        json!([
            {"ts": 1_767_983_400_000i64, "count": 1, "first": 2},
            {"ts": 1_768_069_800_000i64, "count": 1, "first": 1}
        ])
    );
    s.stop().await;
}

#[tokio::test]
async fn multi_series_and_range_deletion() {
    let s = TestServer::start().await;
    let (ka, kb) = (s.device("a").await, s.device("b").await);
    let t0 = recent_hour();
    send_all(
        &s,
        "a",
        &ka,
        &(0..120).map(|i| (t0 + i * SEC, 1.0)).collect::<Vec<_>>(),
    )
    .await;
    send_all(
        &s,
        "b",
        &kb,
        &(0..60).map(|i| (t0 + i * SEC, 2.0)).collect::<Vec<_>>(),
    )
    .await;
    let (st, v) = s
        .json(s.post(
            "/api/v1/history/query",
            json!({
                "series": [{"twin": "a", "name": "v"}, {"twin": "b", "name": "v"}],
                "from": t0, "to": t0 + HOUR_MS, "bucket": "1m", "agg": "count,sum"
            }),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["series"][0]["twin"], "a");
    assert_eq!(
        v["series"][0]["buckets"],
        json!([{"ts": t0, "count": 60, "sum": 60}, {"ts": t0 + 60 * SEC, "count": 60, "sum": 60}])
    );
    assert_eq!(
        v["series"][1]["buckets"],
        json!([{"ts": t0, "count": 60, "sum": 120}])
    );
    let r = s
        .post(
            "/api/v1/history/query",
            json!({"series": [{"twin": "ghost", "name": "v"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Delete the first 30 s of a's history.
    let r = s
        .delete(&format!(
            "/api/v1/twins/a/telemetry/v?from={t0}&to={}",
            t0 + 30 * SEC
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/a/telemetry/v?from={t0}&bucket=1h&agg=count"
        )))
        .await;
    assert_eq!(v["buckets"][0]["count"], 90);
    let viewer = s.user("v1", &["viewer"]).await;
    let r = s
        .http
        .delete(s.url("/api/v1/twins/a/telemetry/v"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden")
        .await
        .contains("telemetry:delete"));
    // Survives restart (the tombstone keeps the batch log from replaying it).
    let s = s.restart().await;
    let (_, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/a/telemetry/v?from={t0}&bucket=1h&agg=count"
        )))
        .await;
    assert_eq!(v["buckets"][0]["count"], 90);
    s.stop().await;
}

#[tokio::test]
async fn restart_keeps_devices_twins_and_history() {
    let s = TestServer::start_with(|c| c.store.flush_points = 1000).await;
    let key = s.device("keep").await;
    let t0 = recent_hour();
    let pts: Vec<(i64, f64)> = (0..3000).map(|i| (t0 + i * SEC, (i % 7) as f64)).collect();
    send_all(&s, "keep", &key, &pts).await;
    let (_, before) = s
        .json(s.get(&format!(
            "/api/v1/twins/keep/telemetry/v?from={t0}&limit=10000"
        )))
        .await;
    let s = s.restart().await;
    assert_eq!(
        s.send("keep", &key, json!({"ts": t0 + 5_000_000, "v": 1}))
            .await
            .status(),
        200,
        "the device key still works"
    );
    let (_, after) = s
        .json(s.get(&format!(
            "/api/v1/twins/keep/telemetry/v?from={t0}&to={}&limit=10000",
            t0 + 3000 * SEC
        )))
        .await;
    assert_eq!(before["points"], after["points"]);
    assert_eq!(after["points"].as_array().unwrap().len(), 3000);
    s.stop().await;
}

fn naive(pts: &BTreeMap<i64, f64>, from: i64, to: i64, width: i64) -> Vec<Value> {
    let mut m: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (t, v) in pts.range(from..to) {
        m.entry(t.div_euclid(width) * width).or_default().push(*v);
    }
    m.into_iter()
        .map(|(k, v)| {
            json!({"ts": k, "count": v.len(), "sum": v.iter().sum::<f64>(), "min": v.iter().cloned().fold(f64::INFINITY, f64::min),
                   "max": v.iter().cloned().fold(f64::NEG_INFINITY, f64::max), "first": v[0], "last": v[v.len() - 1]})
        })
        .collect()
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    /// Random points, random ranges and buckets, through the HTTP API and
    /// across head flushes, against a computation done here.
    #[test]
    fn aggregates_over_http_match_a_naive_computation(
        seed_pts in proptest::collection::vec((0i64..7200, -500i32..500), 50..600),
        queries in proptest::collection::vec((0i64..7200, 1i64..9000, prop_oneof![Just(1i64), Just(60), Just(300), Just(900), Just(3600), 1i64..4000]), 4),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let s = TestServer::start_with(|c| c.store.flush_points = 1000).await;
            let key = s.device("prop").await;
            let t0 = recent_hour() - HOUR_MS;
            let mut model = BTreeMap::new();
            let pts: Vec<(i64, f64)> = seed_pts.iter().map(|(t, v)| (t0 + t * SEC, *v as f64 / 8.0)).collect();
            for (t, v) in &pts { model.insert(*t, *v); }
            send_all(&s, "prop", &key, &pts).await;
            for (from_s, len_s, width_s) in queries {
                let (from, to) = (t0 + from_s * SEC, t0 + (from_s + len_s) * SEC);
                let url = format!("/api/v1/twins/prop/telemetry/v?from={from}&to={to}&bucket={width_s}s&agg=count,sum,min,max,first,last");
                let (st, v) = s.json(s.get(&url)).await;
                assert_eq!(st, 200, "{v}");
                let got = v["buckets"].as_array().unwrap();
                let want = naive(&model, from, to, width_s * SEC);
                assert_eq!(got.len(), want.len(), "{url}");
                for (g, w) in got.iter().zip(&want) {
                    for f in ["ts", "count", "sum", "min", "max", "first", "last"] {
                        assert!(close(&g[f], &w[f]), "{url} {f}: {} vs {}", g[f], w[f]);
                    }
                }
            }
            s.stop().await;
        });
    }
}
