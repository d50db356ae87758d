//! API keys for machines, login lockout and request rate limits.

use crate::common::*;
use crate::mqtt::open4;
use rumqttc::mqttbytes::v4::ConnectReturnCode as C4;
use serde_json::{json, Value};
use twinhub_server::clock::Clock;

async fn create_key(s: &TestServer, body: Value) -> Value {
    let (st, v) = s.json(s.post("/api/v1/apikeys", body)).await;
    assert_eq!(st, 201, "{v}");
    v
}

#[tokio::test]
async fn api_keys_act_with_their_roles_until_revoked() {
    let s = TestServer::start().await;
    let v = create_key(&s, json!({"name": "grafana", "roles": ["viewer"]})).await;
    let key = v["key"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("thk_{id}_")), "{key}");
    assert_eq!(v["created_by"], "admin");

    let r = s
        .http
        .get(s.url("/api/v1/devices"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a viewer key reads");
    let r = s
        .http
        .post(s.url("/api/v1/devices"))
        .bearer_auth(&key)
        .json(&json!({"id": "d1"}))
        .send()
        .await
        .unwrap();
    let msg = error_of(r, 403, "forbidden").await;
    assert!(msg.contains("devices:"), "{msg}");

    // The list never shows the secret, and records use.
    let (_, list) = s.json(s.get("/api/v1/apikeys")).await;
    let listed = &list["value"][0];
    assert_eq!(listed["id"], id.as_str());
    assert!(listed.get("key").is_none(), "{listed}");
    assert!(
        !list.to_string().contains(&key[20..]),
        "secret leaked: {list}"
    );
    assert!(listed["last_used"].is_string(), "{listed}");

    // Keys survive a restart.
    let s = s.restart().await;
    let with_key = |s: &TestServer| {
        s.http
            .get(s.url("/api/v1/devices"))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(with_key(&s).await.unwrap().status(), 200);

    // A forged secret for a real id fails.
    let forged = format!("thk_{id}_{}", "0".repeat(key.len() - id.len() - 5));
    let r = s
        .http
        .get(s.url("/api/v1/devices"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Revocation takes effect on the very next request.
    let r = s
        .delete(&format!("/api/v1/apikeys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    error_of(with_key(&s).await.unwrap(), 401, "unauthorized").await;
    let r = s
        .delete(&format!("/api/v1/apikeys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "revoking twice is idempotent");
    let r = s
        .delete("/api/v1/apikeys/000000000000")
        .send()
        .await
        .unwrap();
    error_of(r, 404, "not_found").await;

    let (_, audit) = s.json(s.get("/api/v1/audit?limit=100")).await;
    let actions: Vec<&str> = audit["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"apikey.create"), "{actions:?}");
    assert!(actions.contains(&"apikey.revoke"), "{actions:?}");
    s.stop().await;
}

#[tokio::test]
async fn api_keys_expire_and_never_exceed_their_creator() {
    let s = TestServer::start().await;
    let in_an_hour = s.clock.now_us() / 1000 + 3_600_000;
    let v = create_key(
        &s,
        json!({"name": "ci", "permissions": ["devices:read"], "expires_at": in_an_hour}),
    )
    .await;
    let key = v["key"].as_str().unwrap().to_string();
    let get = || {
        s.http
            .get(s.url("/api/v1/devices"))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    let r = s
        .http
        .get(s.url("/api/v1/events"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "only the permissions given");

    // Bad requests name the field and the rule.
    for (body, field) in [
        (json!({"name": "", "roles": ["viewer"]}), "name"),
        (json!({"name": "x"}), "roles"),
        (json!({"name": "x", "roles": ["wizard"]}), "roles"),
        (
            json!({"name": "x", "permissions": ["everything"]}),
            "permissions[0]",
        ),
        (
            json!({"name": "x", "roles": ["viewer"], "expires_at": 1000}),
            "expires_at",
        ),
    ] {
        let r = s
            .post("/api/v1/apikeys", body.clone())
            .send()
            .await
            .unwrap();
        let msg = error_of(r, 400, "bad_request").await;
        assert!(msg.contains(field), "{body}: {msg}");
    }

    // An operator cannot manage keys; a tenant admin cannot mint a system
    // admin key.
    let op = s.user("olga", &["operator"]).await;
    let r = s
        .http
        .post(s.url("/api/v1/apikeys"))
        .bearer_auth(&op)
        .json(&json!({"name": "x", "roles": ["operator"]}))
        .send()
        .await
        .unwrap();
    error_of(r, 403, "forbidden").await;
    let ta = s.user("tara", &["tenant_admin"]).await;
    let r = s
        .http
        .post(s.url("/api/v1/apikeys"))
        .bearer_auth(&ta)
        .json(&json!({"name": "x", "roles": ["system_admin"]}))
        .send()
        .await
        .unwrap();
    error_of(r, 403, "forbidden").await;
    let r = s
        .http
        .post(s.url("/api/v1/apikeys"))
        .bearer_auth(&ta)
        .json(&json!({"name": "x", "permissions": ["tenants:admin"]}))
        .send()
        .await
        .unwrap();
    let msg = error_of(r, 403, "forbidden").await;
    assert!(msg.contains("tenants:admin"), "{msg}");

    s.clock.advance_us(2 * 3_600 * 1_000_000);
    error_of(get().await.unwrap(), 401, "unauthorized").await;
    s.stop().await;
}

#[tokio::test]
async fn api_keys_log_in_to_mqtt() {
    let s = TestServer::start().await;
    let key = create_key(&s, json!({"name": "scada", "roles": ["operator"]})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_c, ack) = open4(s.mqtt(), "scada-1", Some(("apikey", &key)), true).await;
    assert_eq!(ack.code, C4::Success);
    let id = key.split('_').nth(1).unwrap().to_string();
    assert_eq!(
        s.delete(&format!("/api/v1/apikeys/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let (_c, ack) = open4(s.mqtt(), "scada-1b", Some(("apikey", &key)), true).await;
    assert_eq!(ack.code, C4::BadUserNamePassword, "a revoked key");
    let (_c, ack) = open4(s.mqtt(), "scada-2", Some(("apikey", "thk_x_y")), true).await;
    assert_eq!(ack.code, C4::BadUserNamePassword);
    let devices_only = create_key(&s, json!({"name": "d", "permissions": ["devices:read"]})).await
        ["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_c, ack) = open4(s.mqtt(), "scada-3", Some(("apikey", &devices_only)), true).await;
    assert_eq!(ack.code, C4::NotAuthorized, "a key without MQTT rights");
    s.stop().await;
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_name() {
    let s = TestServer::start().await;
    s.user("lena", &["viewer"]).await;
    let login = |user: &'static str, pw: &'static str| {
        s.http
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"username": user, "password": pw}))
            .send()
    };
    for _ in 0..4 {
        assert_eq!(login("lena", "nope").await.unwrap().status(), 401);
    }
    let r = login("lena", "nope").await.unwrap();
    assert_eq!(r.status(), 429, "the fifth failure locks");
    let r = login("lena", "User-pass-123").await.unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry), "{retry}");
    error_of(r, 429, "rate_limited").await;

    // Unknown names lock the same way, so locking reveals nothing.
    for _ in 0..5 {
        login("mallory", "nope").await.unwrap();
    }
    assert_eq!(login("mallory", "nope").await.unwrap().status(), 429);

    // The lock survives a restart and lifts with time.
    let s = s.restart().await;
    let r = s
        .http
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "lena", "password": "User-pass-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    s.clock.advance_us(16 * 60 * 1_000_000);
    s.login("lena", "User-pass-123").await;
    s.stop().await;
}

#[tokio::test]
async fn request_rates_are_limited_per_principal_and_device() {
    let s = TestServer::start_with(|c| {
        c.rate_limits.requests_per_second = 0.5;
        c.rate_limits.burst = 4.0;
        c.rate_limits.device_requests_per_second = 1.0;
    })
    .await;
    let other = s.user("vera", &["viewer"]).await;
    for _ in 0..2 {
        assert_eq!(s.get("/api/v1/devices").send().await.unwrap().status(), 200);
    }
    let key = s.device("meter").await;
    let r = s.get("/api/v1/devices").send().await.unwrap();
    assert!(r.headers().get("retry-after").is_some());
    let msg = error_of(r, 429, "rate_limited").await;
    assert!(msg.contains("retry"), "{msg}");

    // Another principal has its own bucket.
    let r = s
        .http
        .get(s.url("/api/v1/devices"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Devices: a burst of two, then 429.
    let body = json!({"t": 1.0});
    assert_eq!(s.send("meter", &key, body.clone()).await.status(), 200);
    assert_eq!(s.send("meter", &key, body.clone()).await.status(), 200);
    let r = s.send("meter", &key, body).await;
    error_of(r, 429, "rate_limited").await;
    s.stop().await;
}
