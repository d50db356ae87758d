use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Reads SSE frames until `n` events arrived (each: id, event, data).
pub async fn read_events(mut resp: reqwest::Response, n: usize) -> Vec<(u64, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("events arrive in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let frame: String = buf.drain(..i + 2).collect();
            let (mut id, mut ev, mut data) = (0, String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().to_string();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                out.push((id, ev, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn telemetry_streams_live_filtered_and_resumable() {
    let s = TestServer::start().await;
    let ka = s.device("a").await;
    let kb = s.device("b").await;
    let resp = s
        .get("/api/v1/events?types=telemetry&twin=a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    s.send("b", &kb, json!({"t": 0})).await;
    s.send("a", &ka, json!({"ts": 1_700_000_000_000i64, "t": 1}))
        .await;
    s.send("a", &ka, json!({"t": 2})).await;
    let evs = read_events(resp, 2).await;
    assert_eq!(evs[0].1, "telemetry");
    assert_eq!(evs[0].2["twin"], "a");
    assert_eq!(evs[0].2["data"]["messages"][0]["values"]["t"], 1);
    assert_eq!(evs[0].2["data"]["messages"][0]["ts"], 1_700_000_000_000i64);
    assert_eq!(evs[1].2["data"]["messages"][0]["values"]["t"], 2);
    // Resume after the first: the second comes again, then new ones.
    let resp = s
        .get("/api/v1/events?types=telemetry&twin=a")
        .header("Last-Event-ID", evs[0].0.to_string())
        .send()
        .await
        .unwrap();
    s.send("a", &ka, json!({"t": 3})).await;
    let again = read_events(resp, 2).await;
    assert_eq!(again[0].0, evs[1].0);
    assert_eq!(again[1].2["data"]["messages"][0]["values"]["t"], 3);
    let r = s.get("/api/v1/events?types=gossip").send().await.unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("gossip"));
    s.stop().await;
}

/// A reading sent with a quality flag keeps it in the event stream: the
/// values stay plain, the flags are beside them (routes and dashboards
/// must not take a bad reading for a good one).
#[tokio::test]
async fn telemetry_events_carry_the_quality_of_flagged_readings() {
    let s = TestServer::start().await;
    let k = s.device("q1").await;
    let resp = s
        .get("/api/v1/events?types=telemetry&twin=q1")
        .send()
        .await
        .unwrap();
    s.send(
        "q1",
        &k,
        json!({"t": {"value": 351.2, "quality": "bad"}, "p": 2, "v": {"value": 1, "quality": "uncertain"}}),
    )
    .await;
    s.send("q1", &k, json!({"t": 350})).await;
    let evs = read_events(resp, 2).await;
    let first = &evs[0].2["data"]["messages"][0];
    assert_eq!(first["values"], json!({"t": 351.2, "p": 2, "v": 1}));
    assert_eq!(first["quality"], json!({"t": "bad", "v": "uncertain"}));
    let second = &evs[1].2["data"]["messages"][0];
    assert_eq!(second["values"], json!({"t": 350}));
    assert!(second.get("quality").is_none(), "{second}");
    s.stop().await;
}

/// Another tenant's stream carries none of this tenant's events.
#[tokio::test]
async fn streams_are_per_tenant() {
    let s = TestServer::start().await;
    let k = s.device("mine").await;
    s.post("/api/v1/tenants", json!({"id": "other", "name": "Other"}))
        .send()
        .await
        .unwrap();
    s.post("/api/v1/users", json!({"username": "o", "password": "Other-pass-1", "tenant": "other", "roles": ["tenant_admin"]})).send().await.unwrap();
    let other = s.login("o", "Other-pass-1").await;
    let theirs = s
        .http
        .get(s.url("/api/v1/events"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    let ours = s.get("/api/v1/events").send().await.unwrap();
    s.send("mine", &k, json!({"t": 1})).await;
    let got = read_events(ours, 1).await;
    assert!(got[0].1 == "telemetry" || got[0].1 == "device");
    let silent = tokio::time::timeout(Duration::from_millis(700), read_events(theirs, 1)).await;
    assert!(silent.is_err(), "the other tenant saw an event");
    s.stop().await;
}

/// A device that goes quiet is marked inactive (with an event) once the
/// clock passes the timeout, and active again when it reports.
#[tokio::test]
async fn silent_devices_become_inactive() {
    let s = TestServer::start_with(|c| c.devices.inactivity_timeout = "10m".into()).await;
    let k = s.device("quiet").await;
    let resp = s.get("/api/v1/events?types=device").send().await.unwrap();
    s.send("quiet", &k, json!({"t": 1})).await;
    let (_, d) = s.json(s.get("/api/v1/devices/quiet")).await;
    assert_eq!(d["active"], true);
    assert!(d["last_seen"].is_string());
    s.clock.advance_us(11 * 60 * 1_000_000);
    let evs = read_events(resp, 2).await;
    assert_eq!(evs[0].2["data"], json!({"device": "quiet", "active": true}));
    assert_eq!(evs[1].2["data"]["active"], false);
    let (_, d) = s.json(s.get("/api/v1/devices/quiet")).await;
    assert_eq!(d["active"], false);
    s.stop().await;
}
