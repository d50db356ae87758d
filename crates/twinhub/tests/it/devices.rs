use crate::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn create_list_get_disable_delete() {
    let s = TestServer::start().await;
    let (st, d) = s
        .json(s.post(
            "/api/v1/devices",
            json!({"id": "plant1-reactor1", "twin_id": "reactor-1"}),
        ))
        .await;
    assert_eq!(st, 201);
    assert_eq!(d["id"], "plant1-reactor1");
    assert_eq!(d["twin_id"], "reactor-1");
    assert_eq!(d["enabled"], true);
    assert!(d["created_at"].as_str().unwrap().ends_with('Z'));
    let key = d["key"].as_str().unwrap();
    assert!(key.len() >= 22, "at least 128 bits");

    // The key is shown once: never in reads or lists.
    let (st, got) = s.json(s.get("/api/v1/devices/plant1-reactor1")).await;
    assert_eq!(st, 200);
    assert!(got.get("key").is_none());
    assert!(!got.to_string().contains(key));

    let r = s
        .post("/api/v1/devices", json!({"id": "plant1-reactor1"}))
        .send()
        .await
        .unwrap();
    error_of(r, 409, "conflict").await;
    let r = s
        .post("/api/v1/devices", json!({"id": "bad/id"}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.starts_with("id:"));
    let r = s
        .post("/api/v1/devices", json!({"id": 5}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.starts_with("id:"));
    let r = s
        .post("/api/v1/devices", json!({"id": "x", "colour": "red"}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("colour"));
    let r = s
        .http
        .post(s.url("/api/v1/devices"))
        .bearer_auth(&s.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    error_of(r, 400, "bad_request").await;

    // Disable: its telemetry is refused; enable again: accepted.
    let (st, p) = s
        .json(s.patch("/api/v1/devices/plant1-reactor1", json!({"enabled": false})))
        .await;
    assert_eq!((st.as_u16(), p["enabled"].clone()), (200, json!(false)));
    let r = s.send("plant1-reactor1", key, json!({"t": 1})).await;
    error_of(r, 403, "forbidden").await;
    s.patch("/api/v1/devices/plant1-reactor1", json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.send("plant1-reactor1", key, json!({"t": 1}))
            .await
            .status(),
        200
    );

    assert_eq!(
        s.delete("/api/v1/devices/plant1-reactor1")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        s.get("/api/v1/devices/plant1-reactor1")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = s.send("plant1-reactor1", key, json!({"t": 1})).await;
    error_of(r, 401, "unauthorized").await;
    s.stop().await;
}

#[tokio::test]
async fn lists_page_with_next() {
    let s = TestServer::start().await;
    for i in 0..25 {
        s.device(&format!("dev-{i:02}")).await;
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(n) => format!("/api/v1/devices?limit=10&next={n}"),
            None => "/api/v1/devices?limit=10".to_string(),
        };
        let (_, page) = s.json(s.get(&path)).await;
        for d in page["value"].as_array().unwrap() {
            seen.push(d["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("dev-{i:02}")).collect();
    assert_eq!(seen, want);
    let r = s.get("/api/v1/devices?limit=5000").send().await.unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("limit"));
    s.stop().await;
}

#[tokio::test]
async fn device_credentials_are_checked() {
    let s = TestServer::start().await;
    let key = s.device("d1").await;
    let other_key = s.device("d2").await;
    // Unknown device and wrong key answer alike.
    let a = error_of(
        s.send("nope", &key, json!({"t": 1})).await,
        401,
        "unauthorized",
    )
    .await;
    let b = error_of(
        s.send("d1", "wrong-key", json!({"t": 1})).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(a, b);
    // A device posts only as itself.
    let r = s
        .http
        .post(s.url("/api/v1/devices/d1/telemetry"))
        .basic_auth("d2", Some(&other_key))
        .json(&json!({"t": 1}))
        .send()
        .await
        .unwrap();
    error_of(r, 403, "forbidden").await;
    let r = s
        .http
        .post(s.url("/api/v1/devices/d1/telemetry"))
        .json(&json!({"t": 1}))
        .send()
        .await
        .unwrap();
    error_of(r, 401, "unauthorized").await;
    let (_, m) = s.json(s.http.get(s.url("/metrics"))).await;
    assert_eq!(m, Value::Null, "metrics are text, not JSON");
    let text = s.metrics().await;
    assert!(
        text.contains("twinhub_auth_failures_total{kind=\"device\"} 2"),
        "{text}"
    );
    s.stop().await;
}

/// Key rotation: with an overlap both keys work until it ends (also after
/// a restart, and over MQTT); without one the old key stops at once.
#[tokio::test]
async fn device_keys_rotate_with_an_overlap_window() {
    let s = TestServer::start().await;
    let old = s.device("rot").await;
    let (st, v) = s
        .json(s.post("/api/v1/devices/rot/key", json!({"overlap": "1h"})))
        .await;
    assert_eq!(st, 200, "{v}");
    let new = v["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(v["previous_key_valid_until"].is_string(), "{v}");
    let s = s.restart().await;
    for k in [&old, &new] {
        assert_eq!(s.send("rot", k, json!({"t": 1})).await.status(), 200);
    }
    let (_c, ack) = crate::mqtt::open4(s.mqtt(), "rot", Some(("rot", &old)), true).await;
    assert_eq!(ack.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success);
    s.clock.advance_us(2 * 3_600 * 1_000_000);
    let _ = s.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(s.send("rot", &old, json!({"t": 2})).await.status(), 401);
    assert_eq!(s.send("rot", &new, json!({"t": 2})).await.status(), 200);

    // No overlap: the old key is dead at once.
    let token = s.login("admin", ADMIN_PASSWORD).await;
    let r = s
        .http
        .post(s.url("/api/v1/devices/rot/key"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let newer = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.send("rot", &new, json!({"t": 3})).await.status(), 401);
    assert_eq!(s.send("rot", &newer, json!({"t": 3})).await.status(), 200);
    let r = s
        .http
        .post(s.url("/api/v1/devices/rot/key"))
        .bearer_auth(&token)
        .json(&json!({"overlap": "90d"}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("overlap"));
    s.stop().await;
}

/// Last-seen times are kept across a restart for every device, however
/// many: they are written in slices of a few hundred rows (so the writer
/// is never held for all of them at once), and each slice must land.
#[tokio::test]
async fn last_seen_times_survive_a_restart_for_every_device() {
    let s = TestServer::start().await;
    let n = 300;
    for i in 0..n {
        let id = format!("seen-{i:03}");
        let key = s.device(&id).await;
        if i % 3 != 2 {
            let r = s.send(&id, &key, json!({"t": i})).await;
            assert_eq!(r.status(), 200);
        }
    }
    let seen = |v: &Value| -> Vec<(String, Value)> {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_string(),
                    d["last_seen"].clone(),
                )
            })
            .collect()
    };
    let (st, before) = s.json(s.get("/api/v1/devices?limit=1000")).await;
    assert_eq!(st, 200);
    let before = seen(&before);
    assert_eq!(before.len(), n);
    assert_eq!(before.iter().filter(|(_, t)| t.is_string()).count(), 200);

    let s = s.restart().await;
    let (_, after) = s.json(s.get("/api/v1/devices?limit=1000")).await;
    assert_eq!(
        seen(&after),
        before,
        "every last-seen time as before the restart"
    );
}
