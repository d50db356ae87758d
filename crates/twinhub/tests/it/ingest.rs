use crate::common::*;
use serde_json::{json, Value};

async fn points(s: &TestServer, twin: &str, name: &str) -> Vec<Value> {
    let (st, v) = s
        .json(s.get(&format!("/api/v1/twins/{twin}/telemetry/{name}?from=0")))
        .await;
    assert_eq!(st, 200, "{v}");
    v["points"].as_array().unwrap().clone()
}

#[tokio::test]
async fn objects_arrays_and_server_timestamps() {
    let s = TestServer::start().await;
    let key = s.device("r1").await;
    let (st, receipt) = s
        .json(
            s.http
                .post(s.url("/api/v1/devices/r1/telemetry"))
                .basic_auth("r1", Some(&key))
                .json(&json!({"temperature": 351.2, "running": true, "mode": "auto"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(receipt, json!({"messages": 1, "points": 3}));
    // Three messages without ts in one request: three distinct points.
    let r = s
        .send(
            "r1",
            &key,
            json!([{"temperature": 1}, {"temperature": 2}, {"temperature": 3}]),
        )
        .await;
    assert_eq!(r.status(), 200);
    let pts = points(&s, "r1", "temperature").await;
    let vals: Vec<f64> = pts.iter().map(|p| p["value"].as_f64().unwrap()).collect();
    assert_eq!(vals, vec![351.2, 1.0, 2.0, 3.0]);
    let ts: Vec<f64> = pts.iter().map(|p| p["ts"].as_f64().unwrap()).collect();
    assert!(
        ts.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {ts:?}"
    );
    assert_eq!(points(&s, "r1", "mode").await[0]["value"], "auto");
    assert_eq!(points(&s, "r1", "running").await[0]["value"], true);
    s.stop().await;
}

#[tokio::test]
async fn retries_with_ts_overwrite_and_late_points_are_kept() {
    let s = TestServer::start().await;
    let key = s.device("r1").await;
    for body in [
        json!({"ts": 1_700_000_002_000i64, "p": 2}),
        json!({"ts": "2023-11-14T22:13:20Z", "p": 1}),
        json!({"ts": 1_700_000_002_000i64, "p": 2}),
        json!({"ts": 1_700_000_001_000i64, "p": 9}),
        json!({"ts": 1_700_000_001_000i64, "p": 1.5}),
    ] {
        assert_eq!(s.send("r1", &key, body).await.status(), 200);
    }
    let pts = points(&s, "r1", "p").await;
    assert_eq!(
        Value::Array(pts),
        json!([{"ts": 1_700_000_000_000i64, "value": 1}, {"ts": 1_700_000_001_000i64, "value": 1.5}, {"ts": 1_700_000_002_000i64, "value": 2}])
    );
    // The twin shows the newest point, not the last written.
    let (_, twin) = s.json(s.get("/api/v1/twins/r1")).await;
    assert_eq!(twin["p"], 2);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let s = TestServer::start_with(|c| c.http.max_ingest_body = 2048).await;
    let key = s.device("r1").await;
    assert_eq!(
        s.send("r1", &key, json!({"ts": 1_700_000_000_000i64, "t": 1}))
            .await
            .status(),
        200
    );
    let cases = [
        (json!({"t": null}), "t:"),
        (json!({"t": [1, 2]}), "t:"),
        (
            json!([{"t": 1}, {"u": {"value": 1, "quality": "meh"}}]),
            "[1].u.quality:",
        ),
        (json!({"ts": "yesterday", "t": 2}), "ts:"),
        (json!({"ts": -5, "t": 2}), "ts:"),
        (json!({}), "body:"),
        (json!([]), "body:"),
        (json!(42), "body:"),
        (json!({"a.b": 1}), "a.b:"),
    ];
    for (body, field) in cases {
        let msg = error_of(s.send("r1", &key, body.clone()).await, 400, "bad_request").await;
        assert!(msg.starts_with(field), "{body} → {msg}");
    }
    // Not JSON at all, and NaN (which JSON cannot carry).
    for raw in ["{\"t\": NaN}", "{\"t\": 1", "\u{0}\u{1}"] {
        let r = s
            .http
            .post(s.url("/api/v1/devices/r1/telemetry"))
            .basic_auth("r1", Some(&key))
            .body(raw)
            .send()
            .await
            .unwrap();
        assert!(error_of(r, 400, "bad_request").await.starts_with("body:"));
    }
    // Over the route's limit: 413 with the limit stated.
    let big: Vec<Value> = (0..200).map(|i| json!({"temperature": i})).collect();
    let msg = error_of(
        s.send("r1", &key, Value::Array(big)).await,
        413,
        "payload_too_large",
    )
    .await;
    assert!(msg.contains("2048"), "{msg}");
    // What was accepted before is untouched.
    assert_eq!(
        Value::Array(points(&s, "r1", "t").await),
        json!([{"ts": 1_700_000_000_000i64, "value": 1}])
    );
    let (_, twin) = s.json(s.get("/api/v1/twins/r1")).await;
    assert!(
        twin.get("u").is_none() && twin.get("temperature").is_none(),
        "{twin}"
    );
    s.stop().await;
}

#[tokio::test]
async fn components_and_quality_reach_the_twin() {
    let s = TestServer::start().await;
    let key = s.device("thermo").await;
    let body = json!({"ts": 1_700_000_000_000i64, "thermostat1": {"temperature": 21.5}, "pressure": {"value": 5.2, "quality": "bad"}});
    assert_eq!(s.send("thermo", &key, body).await.status(), 200);
    let (st, twin) = s.json(s.get("/api/v1/twins/thermo")).await;
    assert_eq!(st, 200);
    assert_eq!(twin["$dtId"], "thermo");
    assert!(twin["$etag"].is_string());
    assert_eq!(twin["thermostat1"]["temperature"], 21.5);
    assert_eq!(
        twin["thermostat1"]["$metadata"]["temperature"]["lastUpdateTime"],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(twin["pressure"], 5.2);
    assert_eq!(twin["$metadata"]["pressure"]["quality"], "bad");
    let pts = points(&s, "thermo", "thermostat1.temperature").await;
    assert_eq!(pts.len(), 1);
    assert_eq!(points(&s, "thermo", "pressure").await[0]["quality"], "bad");
    let (_, series) = s.json(s.get("/api/v1/twins/thermo/telemetry")).await;
    let names: Vec<&str> = series["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["pressure", "thermostat1.temperature"]);
    assert_eq!(
        s.get("/api/v1/twins/nothing-here")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    s.stop().await;
}

#[tokio::test]
async fn concurrent_devices_lose_nothing() {
    let s = TestServer::start().await;
    let mut keys = Vec::new();
    for d in 0..8 {
        keys.push(s.device(&format!("c{d}")).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (d, key) in keys.into_iter().enumerate() {
        let (http, url) = (
            s.http.clone(),
            s.url(&format!("/api/v1/devices/c{d}/telemetry")),
        );
        tasks.spawn(async move {
            for i in 0..25i64 {
                let body: Vec<Value> = (0..20)
                    .map(|j| json!({"ts": 1_700_000_000_000i64 + i * 20 + j, "v": j}))
                    .collect();
                let r = http
                    .post(&url)
                    .basic_auth(format!("c{d}"), Some(&key))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    for d in 0..8 {
        let (_, v) = s
            .json(s.get(&format!(
                "/api/v1/twins/c{d}/telemetry/v?from=0&bucket=1d&agg=count"
            )))
            .await;
        assert_eq!(v["buckets"][0]["count"], 500, "device c{d}");
    }
    s.stop().await;
}

/// When the store cannot keep up, producers are told to come back
/// (503 + Retry-After) instead of being acknowledged and dropped; what was
/// acknowledged is stored, what was refused is not.
#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let s = TestServer::start_with(|c| {
        c.store.queue = 16;
        c.ingest.queue_wait = "300ms".into();
    })
    .await;
    let key = s.device("bp").await;
    let pause = s.store().pause_writer();
    // The writer resumes once the first producer has been pushed back.
    let Flood { ok, busy, .. } = flood_until_pushed_back(&s, "bp", &key, move || drop(pause)).await;
    assert!(busy > 0, "some producers were pushed back");
    assert!(
        ok >= 16,
        "queued writes were acknowledged once the store caught up ({ok})"
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
