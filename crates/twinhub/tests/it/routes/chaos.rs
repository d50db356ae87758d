//! The webhook receiver goes away for a while, the server is killed with
//! SIGKILL in between and restarted, the receiver comes back: every
//! acknowledged point reaches it, exactly once after deduplication by the
//! envelope's id.

use super::receiver::Receiver;
use crate::process::{device_key, kill9, layout, login, post_json, start, PW};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn send(http: &reqwest::Client, base: &str, key: &str, n: u64) -> bool {
    match http
        .post(format!("{base}/api/v1/devices/c1/telemetry"))
        .basic_auth("c1", Some(key))
        .json(&json!({"n": n}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status() == 200,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outage_and_sigkill_lose_no_acknowledged_event() {
    let (_root, dir) = layout();
    let mut server = start(&dir, true);
    let http = reqwest::Client::new();
    let token = login(&server.base, PW).await;
    let mut rx = Receiver::start().await;
    let route = post_json(
        &http,
        &format!("{}/api/v1/routes", server.base),
        &token,
        &json!({"id": "chaos", "select": {"types": ["telemetry"]},
                "sink": {"kind": "webhook", "url": rx.url()},
                "batch": {"max": 20, "linger": "10ms"},
                "retry": {"initial": "20ms", "max_backoff": "200ms", "open_for": "200ms", "max_attempts": 0}}),
    )
    .await;
    assert_eq!(route["status"], "ok", "{route}");
    let key = device_key(&http, &server.base, &token, "c1").await;

    let mut acked = Vec::new();
    for n in 0..600u64 {
        if n == 150 {
            rx.stop().await;
        }
        if n == 300 {
            kill9(&mut server);
            server = start(&dir, true);
        }
        if n == 450 {
            rx.resume().await;
        }
        if send(&http, &server.base, &key, n).await {
            acked.push(n);
        }
    }
    assert!(
        acked.len() > 550,
        "most writes were acknowledged: {}",
        acked.len()
    );

    let t = Instant::now();
    let by_id = loop {
        let mut by_id: HashMap<String, Vec<u64>> = HashMap::new();
        for e in rx.inbox.events() {
            let ns: Vec<u64> = e["data"]["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["values"]["n"].as_f64().map(|v| v as u64))
                .collect();
            let seen = by_id
                .entry(e["id"].as_str().unwrap().to_string())
                .or_default();
            if seen.is_empty() {
                *seen = ns;
            } else {
                assert_eq!(*seen, ns, "one id, one content");
            }
        }
        let got: std::collections::HashSet<u64> = by_id.values().flatten().copied().collect();
        if acked.iter().all(|n| got.contains(n)) {
            break by_id;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "missing after 60 s: {:?}",
            acked
                .iter()
                .filter(|n| !got.contains(n))
                .take(20)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Deduplicated by id, every point arrived exactly once.
    let mut all: Vec<u64> = by_id.values().flatten().copied().collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "no point under two ids");
    let status: Value = crate::process::get_json(
        &http,
        &format!("{}/api/v1/routes/chaos", server.base),
        &token,
    )
    .await;
    assert_eq!(status["dead_letters"], 0, "{status}");
}
