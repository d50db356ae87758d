//! Tenant quotas: a system admin sets them; exceeding one is a clear
//! error naming the quota, and what was accepted before stays.

use crate::common::*;
use crate::mqtt::{open5, pub5};
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};

pub async fn small_tenant(s: &TestServer, quotas: Value) {
    s.post("/api/v1/tenants", json!({"id": "small", "name": "Small"}))
        .send()
        .await
        .unwrap();
    let r = s
        .http
        .put(s.url("/api/v1/tenants/small/quotas"))
        .bearer_auth(&s.token)
        .json(&quotas)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn device_in_small(s: &TestServer, id: &str) -> reqwest::Response {
    s.post("/api/v1/devices?tenant=small", json!({"id": id}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn device_and_twin_counts_are_capped() {
    let s = TestServer::start().await;
    small_tenant(&s, json!({"devices": 1, "twins": 1})).await;
    assert_eq!(device_in_small(&s, "s1").await.status(), 201);
    let msg = error_of(device_in_small(&s, "s2").await, 403, "quota_exceeded").await;
    assert!(msg.contains("devices") && msg.contains('1'), "{msg}");
    // The default tenant has no quota.
    s.device("d1").await;
    s.device("d2").await;

    let put = |id: &str| {
        s.http
            .put(s.url(&format!("/api/v1/twins/{id}?tenant=small")))
            .bearer_auth(&s.token)
            .json(&json!({"$metadata": {"$model": "dtmi:x:Y;1"}}))
            .send()
    };
    crate::graph::load_plant(&s).await;
    s.http
        .post(s.url("/api/v1/models?tenant=small"))
        .bearer_auth(&s.token)
        .json(&json!([{"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:Y;1", "@type": "Interface"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(put("t1").await.unwrap().status(), 201);
    let msg = error_of(put("t2").await.unwrap(), 403, "quota_exceeded").await;
    assert!(msg.contains("twins"), "{msg}");
    assert_eq!(
        put("t1").await.unwrap().status(),
        200,
        "replacing is not adding"
    );

    let (_, t) = s.json(s.get("/api/v1/tenants/small")).await;
    assert_eq!(t["usage"]["devices"], 1);
    assert_eq!(t["usage"]["twins"], 1);
    assert_eq!(t["quotas"]["devices"], 1);
    s.stop().await;
}

#[tokio::test]
async fn points_per_day_refuse_new_points_and_keep_old_ones() {
    let s = TestServer::start().await;
    small_tenant(&s, json!({"points_per_day": 3})).await;
    let (_, d) = s
        .json(s.post("/api/v1/devices?tenant=small", json!({"id": "m1"})))
        .await;
    let key = d["key"].as_str().unwrap().to_string();
    let r = s
        .send(
            "m1",
            &key,
            json!([{"ts": 1000, "v": 1}, {"ts": 2000, "v": 2}]),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = s
        .send(
            "m1",
            &key,
            json!([{"ts": 3000, "v": 3}, {"ts": 4000, "v": 4}]),
        )
        .await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let msg = error_of(r, 429, "quota_exceeded").await;
    assert!(msg.contains("points_per_day"), "{msg}");
    let (_, h) = s
        .json(s.get("/api/v1/twins/m1/telemetry/v?from=0&tenant=small"))
        .await;
    assert_eq!(h["points"].as_array().unwrap().len(), 2, "{h}");
    // One more point fits exactly.
    assert_eq!(
        s.send("m1", &key, json!({"ts": 5000, "v": 5}))
            .await
            .status(),
        200
    );
    // MQTT 5 devices get "quota exceeded" on the PUBACK.
    let (mut c, _) = open5(s.mqtt(), "m1", Some(("m1", &key)), true, None).await;
    c.send5(pub5("devices/m1/telemetry", 1, 1, br#"{"v": 6}"#, None))
        .await;
    match c.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::QuotaExceeded),
        p => panic!("{p:?}"),
    }
    // A restart does not refill today's allowance.
    let s = s.restart().await;
    let r = s.send("m1", &key, json!({"v": 6})).await;
    assert!(error_of(r, 429, "quota_exceeded")
        .await
        .contains("points_per_day"));
    // The next UTC day has room again.
    s.clock.advance_us(86_400 * 1_000_000);
    assert_eq!(s.send("m1", &key, json!({"v": 7})).await.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn request_rates_and_who_may_set_quotas() {
    let s = TestServer::start().await;
    small_tenant(&s, json!({"requests_per_second": 0.5})).await;
    s.post(
        "/api/v1/users",
        json!({"username": "sam", "password": "Sam-pass-1234", "tenant": "small", "roles": ["tenant_admin"]}),
    )
    .send()
    .await
    .unwrap();
    let sam = s.login("sam", "Sam-pass-1234").await;
    let get = |path: &'static str| s.http.get(s.url(path)).bearer_auth(&sam).send();
    assert_eq!(get("/api/v1/devices").await.unwrap().status(), 200);
    let r = get("/api/v1/devices").await.unwrap();
    assert!(r.headers().get("retry-after").is_some());
    let msg = error_of(r, 429, "quota_exceeded").await;
    assert!(msg.contains("requests_per_second"), "{msg}");
    // The default tenant is not slowed down by small's quota.
    assert_eq!(s.get("/api/v1/devices").send().await.unwrap().status(), 200);

    // A tenant admin may read its tenant's quotas but not change them.
    s.clock.advance_us(10_000_000);
    let r = s
        .http
        .put(s.url("/api/v1/tenants/small/quotas"))
        .bearer_auth(&sam)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden")
        .await
        .contains("tenants:admin"));
    let r = s
        .http
        .put(s.url("/api/v1/tenants/small/quotas"))
        .bearer_auth(&s.token)
        .json(&json!({"device": 3}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("device"));
    let r = s
        .http
        .put(s.url("/api/v1/tenants/small/quotas"))
        .bearer_auth(&s.token)
        .json(&json!({"requests_per_second": -1}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .contains("requests_per_second"));
    s.stop().await;
}

/// A tenant's MQTT connections are capped: one more is refused with
/// "quota exceeded" (v5) or "server unavailable" (3.1.1) until one closes;
/// other tenants are unaffected.
#[tokio::test]
async fn mqtt_connections_are_capped_per_tenant() {
    let s = TestServer::start().await;
    small_tenant(&s, json!({"mqtt_connections": 1})).await;
    let mut keys = Vec::new();
    for id in ["c1", "c2"] {
        let d: Value = device_in_small(&s, id).await.json().await.unwrap();
        keys.push(d["key"].as_str().unwrap().to_string());
    }
    let (first, ack) = open5(s.mqtt(), "c1", Some(("c1", &keys[0])), true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let (_, ack) = open5(s.mqtt(), "c2", Some(("c2", &keys[1])), true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::QuotaExceeded);
    let (_, ack) = crate::mqtt::open4(s.mqtt(), "c2", Some(("c2", &keys[1])), true).await;
    assert_eq!(
        ack.code,
        rumqttc::mqttbytes::v4::ConnectReturnCode::ServiceUnavailable
    );
    let (_, t) = s.json(s.get("/api/v1/tenants/small")).await;
    assert_eq!(t["usage"]["mqtt_connections"], 1, "{t}");
    // The default tenant has no such quota.
    let key = s.device("other").await;
    let (_, ack) = open5(s.mqtt(), "other", Some(("other", &key)), true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    // When the first connection closes, its place is free again.
    drop(first);
    let mut ok = false;
    for _ in 0..100 {
        let (_, ack) = open5(s.mqtt(), "c2", Some(("c2", &keys[1])), true, None).await;
        if ack.code == v5::ConnectReturnCode::Success {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "the freed place is taken");
    s.stop().await;
}
