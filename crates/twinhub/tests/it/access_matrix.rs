//! Every route × every built-in role: each role gets exactly what it
//! should (allowed, or 403 naming the permission), and a principal of
//! another tenant gets 404 for every id of this one. The route table must
//! cover the OpenAPI document, so a new route cannot skip this test.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// (method, path, body, permission it needs). Ids refer to the fixtures
/// below; destructive calls use ids that do not exist, so an allowed call
/// answers 404 and leaves the fixtures in place. `{u}` is replaced by a
/// per-caller suffix so creations do not collide.
fn routes() -> Vec<(&'static str, &'static str, Value, &'static str)> {
    let reactor =
        json!({"$metadata": {"$model": "dtmi:test:Reactor;1"}, "jacket": {"$metadata": {}}});
    vec![
        ("GET", "/api/v1/devices", json!(null), "devices:read"),
        (
            "POST",
            "/api/v1/devices",
            json!({"id": "new-{u}"}),
            "devices:admin",
        ),
        ("GET", "/api/v1/devices/d1", json!(null), "devices:read"),
        (
            "PATCH",
            "/api/v1/devices/ghost",
            json!({"enabled": true}),
            "devices:admin",
        ),
        (
            "DELETE",
            "/api/v1/devices/ghost",
            json!(null),
            "devices:admin",
        ),
        (
            "POST",
            "/api/v1/devices/ghost/key",
            json!({}),
            "devices:admin",
        ),
        (
            "POST",
            "/api/v1/devices/d1/commands/ping?timeout=1ms",
            json!({}),
            "commands:send",
        ),
        (
            "PUT",
            "/api/v1/devices/ghost/layout",
            json!({"fields": [{"name": "a", "type": "u8", "offset": 0}]}),
            "devices:admin",
        ),
        (
            "GET",
            "/api/v1/devices/d1/layout",
            json!(null),
            "devices:read",
        ),
        ("GET", "/api/v1/models", json!(null), "models:read"),
        ("POST", "/api/v1/models", json!([]), "models:write"),
        (
            "GET",
            "/api/v1/models/dtmi:test:Reactor;1",
            json!(null),
            "models:read",
        ),
        (
            "PATCH",
            "/api/v1/models/dtmi:test:Ghost;1",
            json!([]),
            "models:write",
        ),
        (
            "DELETE",
            "/api/v1/models/dtmi:test:Ghost;1",
            json!(null),
            "models:write",
        ),
        ("GET", "/api/v1/twins/r1", json!(null), "twins:read"),
        ("PUT", "/api/v1/twins/new-{u}", reactor, "twins:write"),
        ("PATCH", "/api/v1/twins/r1", json!([]), "twins:write"),
        ("DELETE", "/api/v1/twins/ghost", json!(null), "twins:write"),
        (
            "GET",
            "/api/v1/twins/p1/relationships",
            json!(null),
            "twins:read",
        ),
        (
            "GET",
            "/api/v1/twins/r1/incomingrelationships",
            json!(null),
            "twins:read",
        ),
        (
            "GET",
            "/api/v1/twins/p1/relationships/p1-r1",
            json!(null),
            "twins:read",
        ),
        (
            "PUT",
            "/api/v1/twins/p1/relationships/new-{u}",
            json!({"$relationshipName": "contains", "$targetId": "r1"}),
            "twins:write",
        ),
        (
            "PATCH",
            "/api/v1/twins/p1/relationships/p1-r1",
            json!([]),
            "twins:write",
        ),
        (
            "DELETE",
            "/api/v1/twins/p1/relationships/ghost",
            json!(null),
            "twins:write",
        ),
        (
            "POST",
            "/api/v1/query",
            json!({"query": "SELECT T FROM DIGITALTWINS T"}),
            "twins:read",
        ),
        (
            "GET",
            "/api/v1/twins/r1/telemetry",
            json!(null),
            "telemetry:read",
        ),
        (
            "GET",
            "/api/v1/twins/r1/telemetry/temperature?from=0",
            json!(null),
            "telemetry:read",
        ),
        (
            "DELETE",
            "/api/v1/twins/r1/telemetry/ghost",
            json!(null),
            "telemetry:delete",
        ),
        (
            "POST",
            "/api/v1/history/query",
            json!({"series": [{"twin": "r1", "name": "temperature"}], "from": 0}),
            "telemetry:read",
        ),
        ("GET", "/api/v1/events", json!(null), "events:read"),
        ("GET", "/api/v1/audit", json!(null), "audit:read"),
        ("POST", "/api/v1/audit/verify", json!({}), "audit:read"),
        ("GET", "/api/v1/users", json!(null), "users:admin"),
        (
            "POST",
            "/api/v1/users",
            json!({"username": "new-{u}", "password": "New-pass-1234", "roles": ["viewer"]}),
            "users:admin",
        ),
        (
            "PATCH",
            "/api/v1/users/fixture-user",
            json!({"roles": ["viewer"]}),
            "users:admin",
        ),
        ("DELETE", "/api/v1/users/ghost", json!(null), "users:admin"),
        ("GET", "/api/v1/roles", json!(null), "users:admin"),
        (
            "POST",
            "/api/v1/roles",
            json!({"name": "new-{u}", "permissions": ["twins:read"]}),
            "users:admin",
        ),
        ("DELETE", "/api/v1/roles/ghost", json!(null), "users:admin"),
        ("GET", "/api/v1/apikeys", json!(null), "apikeys:admin"),
        (
            "POST",
            "/api/v1/apikeys",
            json!({"name": "k", "permissions": ["twins:read"]}),
            "apikeys:admin",
        ),
        (
            "DELETE",
            "/api/v1/apikeys/000000000000",
            json!(null),
            "apikeys:admin",
        ),
        ("GET", "/api/v1/secrets", json!(null), "secrets:admin"),
        (
            "PUT",
            "/api/v1/secrets/new-{u}",
            json!({"value": "v-0123456789abc"}),
            "secrets:admin",
        ),
        (
            "DELETE",
            "/api/v1/secrets/ghost",
            json!(null),
            "secrets:admin",
        ),
        ("GET", "/api/v1/tenants", json!(null), "tenants:admin"),
        (
            "POST",
            "/api/v1/tenants",
            json!({"id": "new-{u}", "name": "N"}),
            "tenants:admin",
        ),
        ("GET", "/api/v1/tenants/default", json!(null), "users:admin"),
        (
            "PUT",
            "/api/v1/tenants/default/quotas",
            json!({}),
            "tenants:admin",
        ),
        ("GET", "/api/v1/ml/models", json!(null), "ml:read"),
        ("POST", "/api/v1/ml/models", json!(null), "ml:admin"),
        (
            "GET",
            "/api/v1/ml/models/reactor-yield",
            json!(null),
            "ml:read",
        ),
        (
            "POST",
            "/api/v1/ml/models/reactor-yield/predict",
            json!({"temperature": 350, "pressure": 5.5, "flow_rate": 100}),
            "ml:predict",
        ),
        (
            "POST",
            "/api/v1/ml/models/reactor-yield/predict/batch",
            json!({"rows": []}),
            "ml:predict",
        ),
        (
            "POST",
            "/api/v1/ml/models/reactor-yield/scenarios",
            json!({"rows": [{"temperature": 350, "pressure": 5.5, "flow_rate": 100}]}),
            "ml:predict",
        ),
        (
            "POST",
            "/api/v1/ml/models/reactor-yield/versions/ghost/activate",
            json!({}),
            "ml:admin",
        ),
        (
            "PUT",
            "/api/v1/ml/models/reactor-yield/ab",
            json!({"candidate": "ghost", "share": 0.5}),
            "ml:admin",
        ),
        (
            "DELETE",
            "/api/v1/ml/models/reactor-yield/ab",
            json!(null),
            "ml:admin",
        ),
        (
            "DELETE",
            "/api/v1/ml/models/reactor-yield/versions/ghost",
            json!(null),
            "ml:admin",
        ),
        (
            "GET",
            "/api/v1/ml/models/reactor-yield/info",
            json!(null),
            "ml:read",
        ),
        (
            "GET",
            "/api/v1/ml/models/reactor-yield/versions/ghost/bundle",
            json!(null),
            "ml:admin",
        ),
        ("GET", "/api/v1/ml/bindings", json!(null), "ml:read"),
        (
            "POST",
            "/api/v1/ml/bindings",
            json!({"id": "b-{u}", "model": "reactor-yield", "select": {"twin": "r1"}, "outputs": {"prediction": "temperature"}}),
            "ml:admin",
        ),
        (
            "DELETE",
            "/api/v1/ml/bindings/ghost",
            json!(null),
            "ml:admin",
        ),
        ("GET", "/api/v1/rules", json!(null), "rules:read"),
        (
            "POST",
            "/api/v1/rules",
            json!({"id": "rule-{u}", "name": "hot", "select": {"twin": "r1"}, "condition": "temperature > 375", "alarm": {"type": "Hot", "severity": "major"}}),
            "rules:write",
        ),
        ("GET", "/api/v1/rules/ghost", json!(null), "rules:read"),
        (
            "PUT",
            "/api/v1/rules/ghost",
            json!({"name": "hot", "select": {"twin": "r1"}, "condition": "temperature > 375", "alarm": {"type": "Hot", "severity": "major"}}),
            "rules:write",
        ),
        (
            "PATCH",
            "/api/v1/rules/ghost",
            json!({"enabled": false}),
            "rules:write",
        ),
        ("DELETE", "/api/v1/rules/ghost", json!(null), "rules:write"),
        ("GET", "/api/v1/routes", json!(null), "routes:read"),
        (
            "POST",
            "/api/v1/routes",
            json!({"id": "rt-{u}", "paused": true, "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/hook"}}),
            "routes:write",
        ),
        ("GET", "/api/v1/routes/ghost", json!(null), "routes:read"),
        (
            "PUT",
            "/api/v1/routes/rt2-{u}",
            json!({"paused": true, "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/hook"}}),
            "routes:write",
        ),
        (
            "PATCH",
            "/api/v1/routes/ghost",
            json!({"paused": true}),
            "routes:write",
        ),
        (
            "DELETE",
            "/api/v1/routes/ghost",
            json!(null),
            "routes:write",
        ),
        (
            "POST",
            "/api/v1/routes/ghost/test",
            json!({}),
            "routes:write",
        ),
        (
            "GET",
            "/api/v1/routes/ghost/deadletters",
            json!(null),
            "routes:read",
        ),
        (
            "POST",
            "/api/v1/routes/ghost/deadletters/replay",
            json!({}),
            "routes:write",
        ),
        ("GET", "/api/v1/layouts", json!(null), "devices:read"),
        (
            "PUT",
            "/api/v1/layouts/lay-{u}",
            json!({"fields": [{"name": "t", "type": "u8", "offset": 0}], "devices": ["ghost"]}),
            "devices:admin",
        ),
        ("GET", "/api/v1/layouts/ghost", json!(null), "devices:read"),
        (
            "DELETE",
            "/api/v1/layouts/ghost",
            json!(null),
            "devices:admin",
        ),
        ("GET", "/api/v1/connectors", json!(null), "connectors:read"),
        (
            "POST",
            "/api/v1/connectors",
            json!({"kind": "opcua", "endpoint": "opc.tcp://127.0.0.1:9/",
                   "nodes": [{"node": "ns=2;s=X", "twin": "ghost-twin", "property": "t"}]}),
            "connectors:write",
        ),
        (
            "GET",
            "/api/v1/connectors/ghost",
            json!(null),
            "connectors:read",
        ),
        (
            "PUT",
            "/api/v1/connectors/ghost",
            json!({"kind": "opcua", "endpoint": "opc.tcp://127.0.0.1:9/",
                   "nodes": [{"node": "ns=2;s=X", "twin": "ghost-twin", "property": "t"}]}),
            "connectors:write",
        ),
        (
            "DELETE",
            "/api/v1/connectors/ghost",
            json!(null),
            "connectors:write",
        ),
        (
            "GET",
            "/api/v1/connectors/ghost/browse",
            json!(null),
            "connectors:read",
        ),
        (
            "POST",
            "/api/v1/connectors/ghost/uplink",
            json!({}),
            "telemetry:write",
        ),
        (
            "POST",
            "/api/v1/connectors/ghost/downlink",
            json!({"device": "d", "f_port": 1, "hex": "01"}),
            "commands:send",
        ),
        ("GET", "/api/v1/alarms", json!(null), "alarms:read"),
        ("GET", "/api/v1/alarms/counts", json!(null), "alarms:read"),
        ("GET", "/api/v1/alarms/999999", json!(null), "alarms:read"),
        (
            "POST",
            "/api/v1/alarms/999999/ack",
            json!(null),
            "alarms:ack",
        ),
        (
            "POST",
            "/api/v1/alarms/999999/clear",
            json!(null),
            "alarms:ack",
        ),
        (
            "POST",
            "/api/v1/alarms/999999/comments",
            json!({"text": "checked"}),
            "alarms:ack",
        ),
    ]
}

/// Routes outside the matrix, and why.
const EXEMPT: &[(&str, &str)] = &[
    ("get", "/health"),                         // public
    ("get", "/ready"),                          // public
    ("get", "/metrics"),                        // public (optional bearer)
    ("post", "/api/v1/auth/login"),             // public
    ("post", "/api/v1/auth/refresh"),           // public (refresh token)
    ("post", "/api/v1/auth/logout"),            // any principal; ends the token
    ("get", "/api/v1/auth/me"),                 // any principal (dashboard.rs)
    ("get", "/api/v1/server"),                  // any principal (dashboard.rs)
    ("post", "/api/v1/devices/{id}/telemetry"), // device credentials
    ("post", "/api/v2/write"),                  // line protocol (lineproto.rs)
    ("post", "/write"),                         // line protocol (lineproto.rs)
];

/// What each built-in role holds (the table).
fn role_holds(role: &str, perm: &str) -> bool {
    let reads = [
        "twins:read",
        "models:read",
        "devices:read",
        "telemetry:read",
        "events:read",
        "alarms:read",
        "rules:read",
        "routes:read",
        "connectors:read",
        "ml:read",
        "mqtt:subscribe",
    ];
    match role {
        "tenant_admin" => perm != "tenants:admin",
        "operator" => {
            reads.contains(&perm)
                || [
                    "twins:write",
                    "alarms:ack",
                    "commands:send",
                    "ml:predict",
                    "mqtt:publish",
                ]
                .contains(&perm)
        }
        "viewer" => reads.contains(&perm),
        "device" => perm == "telemetry:write",
        _ => unreachable!(),
    }
}

async fn fixtures(s: &TestServer, tenant: &str) {
    let q = format!("?tenant={tenant}");
    let form = reqwest::multipart::Form::new()
        .part(
            "model",
            reqwest::multipart::Part::bytes(crate::ml::fixture("reactor_yield.onnx")),
        )
        .part(
            "manifest",
            reqwest::multipart::Part::text(crate::ml::yield_manifest("1").to_string()),
        );
    let r = s
        .http
        .post(s.url(&format!("/api/v1/ml/models{q}")))
        .bearer_auth(&s.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ok = |r: reqwest::Response| async move {
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    };
    ok(
        s.post(&format!("/api/v1/models{q}"), crate::graph::plant_models())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let put = |path: String, body: Value| {
        s.http
            .put(s.url(&path))
            .bearer_auth(&s.token)
            .json(&body)
            .send()
    };
    let prefix = if tenant == "default" { "" } else { "o" };
    ok(put(
        format!("/api/v1/twins/{prefix}r1{q}"),
        json!({"$metadata": {"$model": "dtmi:test:Reactor;1"}, "jacket": {"$metadata": {}}}),
    )
    .await
    .unwrap())
    .await;
    ok(put(
        format!("/api/v1/twins/{prefix}p1{q}"),
        json!({"$metadata": {"$model": "dtmi:test:Plant;1"}}),
    )
    .await
    .unwrap())
    .await;
    ok(put(
        format!("/api/v1/twins/{prefix}p1/relationships/p1-r1{q}"),
        json!({"$relationshipName": "contains", "$targetId": format!("{prefix}r1")}),
    )
    .await
    .unwrap())
    .await;
    let (_, d) = s
        .json(s.post(
            &format!("/api/v1/devices{q}"),
            json!({"id": format!("{prefix}d1"), "twin_id": format!("{prefix}r1")}),
        ))
        .await;
    let r = s
        .send(
            &format!("{prefix}d1"),
            d["key"].as_str().unwrap(),
            json!({"ts": 1000, "temperature": 350.0}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn every_route_gives_each_role_exactly_its_permissions() {
    let s = TestServer::start().await;
    fixtures(&s, "default").await;
    s.user("fixture-user", &["viewer"]).await;

    // The table covers the API.
    let (_, doc) = s.json(s.http.get(s.url("/api/v1/openapi.json"))).await;
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_lowercase(), path.clone()));
        }
    }
    let mut covered = BTreeSet::new();
    for (m, p, _, _) in routes() {
        covered.insert((m.to_lowercase(), p.split('?').next().unwrap().to_string()));
    }
    for (method, path) in &documented {
        if EXEMPT.contains(&(method.as_str(), path.as_str())) {
            continue;
        }
        // Match a template against the concrete paths of the table.
        let re: Vec<&str> = path.split('/').collect();
        let hit = covered.iter().any(|(m, p)| {
            let c: Vec<&str> = p.split('/').collect();
            m == method
                && c.len() == re.len()
                && c.iter().zip(&re).all(|(a, b)| b.starts_with('{') || a == b)
        });
        assert!(hit, "{method} {path} is not in the access matrix");
    }

    for role in ["tenant_admin", "operator", "viewer", "device"] {
        let user = format!("u-{}", role.replace('_', "-"));
        let token = s.user(&user, &[role]).await;
        for (method, path, body, perm) in routes() {
            let path = path.replace("{u}", &user);
            let mut req = s
                .http
                .request(method.parse().unwrap(), s.url(&path))
                .bearer_auth(&token);
            if !body.is_null() {
                req = req.json(&body);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            if role_holds(role, perm) {
                assert!(
                    status != 401 && status != 403,
                    "{role} {method} {path}: expected allowed, got {status}: {}",
                    r.text().await.unwrap_or_default()
                );
            } else {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 403, "{role} {method} {path}: {v}");
                let msg = v["error"]["message"].as_str().unwrap_or_default();
                assert!(msg.contains(perm), "{role} {method} {path}: {msg}");
            }
        }
    }
    s.stop().await;
}

/// A tenant admin of another tenant: every id of this tenant is "not
/// found", lists and queries show none of it, streams carry none of it.
#[tokio::test]
async fn another_tenant_sees_nothing_of_this_one() {
    let s = TestServer::start().await;
    fixtures(&s, "default").await;
    // Every piece of set-up is checked: a failed one would make the 404s
    // below vacuous.
    let created = |r: reqwest::Response, what: &'static str| async move {
        let st = r.status().as_u16();
        assert!(
            st == 200 || st == 201,
            "{what}: {st} {}",
            r.text().await.unwrap()
        );
    };
    created(
        s.post("/api/v1/tenants", json!({"id": "other", "name": "Other"}))
            .send()
            .await
            .unwrap(),
        "tenant",
    )
    .await;
    fixtures(&s, "other").await;
    created(
        s.post(
            "/api/v1/users",
            json!({"username": "olaf", "password": "Olaf-pass-123", "tenant": "other", "roles": ["tenant_admin"]}),
        )
        .send()
        .await
        .unwrap(),
        "user",
    )
    .await;
    let olaf = s.login("olaf", "Olaf-pass-123").await;
    let (st, key) = s
        .json(s.post(
            "/api/v1/apikeys",
            json!({"name": "mine", "roles": ["viewer"]}),
        ))
        .await;
    assert_eq!(st, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_string();
    created(
        s.http
            .put(s.url("/api/v1/secrets/mine"))
            .bearer_auth(&s.token)
            .json(&json!({"value": "v-0123456789abc"}))
            .send()
            .await
            .unwrap(),
        "secret",
    )
    .await;
    created(
        s.post(
            "/api/v1/roles",
            json!({"name": "mine", "permissions": ["twins:read"]}),
        )
        .send()
        .await
        .unwrap(),
        "role",
    )
    .await;
    // The resources exist for their own tenant.
    for (path, field, want) in [
        ("/api/v1/apikeys", "id", key_id.as_str()),
        ("/api/v1/secrets", "name", "mine"),
        ("/api/v1/roles", "name", "mine"),
    ] {
        let (st, list) = s.json(s.get(path)).await;
        assert_eq!(st, 200, "{path}");
        assert!(
            list["value"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v[field] == want),
            "{path}: {list}"
        );
    }

    let call = |method: &str, path: String, body: Value| {
        let mut r = s
            .http
            .request(method.parse().unwrap(), s.url(&path))
            .bearer_auth(&olaf);
        if !body.is_null() {
            r = r.json(&body);
        }
        r.send()
    };
    // Every route that names a resource of the default tenant.
    for (method, path, body) in [
        ("GET", "/api/v1/devices/d1".to_string(), json!(null)),
        (
            "PATCH",
            "/api/v1/devices/d1".into(),
            json!({"enabled": false}),
        ),
        ("DELETE", "/api/v1/devices/d1".into(), json!(null)),
        ("POST", "/api/v1/devices/d1/key".into(), json!({})),
        ("POST", "/api/v1/devices/d1/commands/ping".into(), json!({})),
        ("GET", "/api/v1/twins/r1".into(), json!(null)),
        ("PATCH", "/api/v1/twins/r1".into(), json!([])),
        ("DELETE", "/api/v1/twins/r1".into(), json!(null)),
        ("GET", "/api/v1/twins/p1/relationships".into(), json!(null)),
        (
            "GET",
            "/api/v1/twins/r1/incomingrelationships".into(),
            json!(null),
        ),
        (
            "GET",
            "/api/v1/twins/p1/relationships/p1-r1".into(),
            json!(null),
        ),
        (
            "PATCH",
            "/api/v1/twins/p1/relationships/p1-r1".into(),
            json!([]),
        ),
        (
            "DELETE",
            "/api/v1/twins/p1/relationships/p1-r1".into(),
            json!(null),
        ),
        ("GET", "/api/v1/twins/r1/telemetry".into(), json!(null)),
        (
            "GET",
            "/api/v1/twins/r1/telemetry/temperature?from=0".into(),
            json!(null),
        ),
        (
            "DELETE",
            "/api/v1/twins/r1/telemetry/temperature".into(),
            json!(null),
        ),
        (
            "POST",
            "/api/v1/history/query".into(),
            json!({"series": [{"twin": "r1", "name": "temperature"}], "from": 0}),
        ),
        (
            "PATCH",
            "/api/v1/users/admin".into(),
            json!({"roles": ["viewer"]}),
        ),
        ("DELETE", "/api/v1/users/u-x".into(), json!(null)),
        ("DELETE", format!("/api/v1/apikeys/{key_id}"), json!(null)),
        ("DELETE", "/api/v1/secrets/mine".into(), json!(null)),
        ("DELETE", "/api/v1/roles/mine".into(), json!(null)),
        ("GET", "/api/v1/tenants/default".into(), json!(null)),
        // ?tenant= is a system admin's switch; for anyone else it is ignored.
        ("GET", "/api/v1/twins/r1?tenant=default".into(), json!(null)),
    ] {
        let r = call(method, path.clone(), body).await.unwrap();
        assert_eq!(
            r.status(),
            404,
            "{method} {path}: {}",
            r.text().await.unwrap()
        );
    }
    // Lists, queries and streams carry nothing of the default tenant.
    for path in [
        "/api/v1/devices",
        "/api/v1/users",
        "/api/v1/apikeys",
        "/api/v1/secrets",
        "/api/v1/roles",
        "/api/v1/audit?limit=1000",
    ] {
        let text = call("GET", path.to_string(), json!(null))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for foreign in [
            "\"d1\"",
            "\"r1\"",
            "fixture",
            "\"admin\"",
            key_id.as_str(),
            "\"mine\"",
        ] {
            assert!(!text.contains(foreign), "{path} leaks {foreign}: {text}");
        }
    }
    let text = call(
        "POST",
        "/api/v1/query".into(),
        json!({"query": "SELECT T FROM DIGITALTWINS T"}),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        text.contains("\"or1\"") && !text.contains("\"r1\""),
        "{text}"
    );
    let count: Value = call(
        "POST",
        "/api/v1/query".into(),
        json!({"query": "SELECT COUNT() FROM DIGITALTWINS"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    // The default tenant has as many twins again (r1, p1): only or1 and
    // op1 are counted.
    assert_eq!(
        count["value"],
        json!([{"COUNT": 2}]),
        "counts only its own twins"
    );

    // Events: a change in the default tenant never reaches olaf's stream.
    let mut stream = call("GET", "/api/v1/events?types=twin".into(), json!(null))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    s.patch(
        "/api/v1/twins/p1",
        json!([{"op": "add", "path": "/name", "value": "mine"}]),
    )
    .send()
    .await
    .unwrap();
    s.http
        .patch(s.url("/api/v1/twins/op1"))
        .bearer_auth(&olaf)
        .json(&json!([{"op": "add", "path": "/name", "value": "theirs"}]))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("theirs") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
            .await
            .expect("olaf's own event arrives")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("\"p1\""), "{seen}");
    s.stop().await;
}
