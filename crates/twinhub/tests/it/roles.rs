//! Custom roles: permission sets of a tenant, optionally limited to a twin
//! subtree ("operate Plant 2 only").

use crate::common::*;
use crate::graph::{load_plant, reactor};
use serde_json::{json, Value};

async fn put_twin(s: &TestServer, id: &str, body: Value) {
    let r = s
        .http
        .put(s.url(&format!("/api/v1/twins/{id}")))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn contains(s: &TestServer, plant: &str, reactor: &str) {
    put_twin(
        s,
        &format!("{plant}/relationships/{plant}-{reactor}"),
        json!({"$relationshipName": "contains", "$targetId": reactor}),
    )
    .await;
}

/// Two plants with two reactors each, reactors reporting telemetry.
async fn two_plants(s: &TestServer) {
    load_plant(s).await;
    for plant in ["plant1", "plant2"] {
        put_twin(
            s,
            plant,
            json!({"$metadata": {"$model": "dtmi:test:Plant;1"}, "name": plant}),
        )
        .await;
    }
    for (plant, r) in [
        ("plant1", "r11"),
        ("plant1", "r12"),
        ("plant2", "r21"),
        ("plant2", "r22"),
    ] {
        reactor(s, r).await;
        contains(s, plant, r).await;
        let key = s.device(&format!("{r}-dev")).await;
        let r2 = s
            .patch(&format!("/api/v1/devices/{r}-dev"), json!({"twin_id": r}))
            .send()
            .await
            .unwrap();
        assert_eq!(r2.status(), 200, "{}", r2.text().await.unwrap());
        let sent = s
            .send(
                &format!("{r}-dev"),
                &key,
                json!({"ts": 1_700_000_000_000i64, "temperature": 350.0}),
            )
            .await;
        assert_eq!(sent.status(), 200);
    }
}

#[tokio::test]
async fn a_scoped_role_sees_and_changes_only_its_subtree() {
    let s = TestServer::start().await;
    two_plants(&s).await;
    let (st, v) = s
        .json(s.post(
            "/api/v1/roles",
            json!({"name": "plant2-operator",
                   "permissions": ["twins:read", "twins:write", "telemetry:read", "events:read"],
                   "scope": {"twin": "plant2"}}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    let op = s.user("paula", &["plant2-operator"]).await;
    let get = |path: String| s.http.get(s.url(&path)).bearer_auth(&op).send();

    assert_eq!(
        get("/api/v1/twins/plant2".into()).await.unwrap().status(),
        200
    );
    assert_eq!(get("/api/v1/twins/r21".into()).await.unwrap().status(), 200);
    error_of(
        get("/api/v1/twins/r11".into()).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    error_of(
        get("/api/v1/twins/plant1".into()).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let h = get("/api/v1/twins/r22/telemetry/temperature?from=0".into())
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let h = get("/api/v1/twins/r12/telemetry/temperature?from=0".into())
        .await
        .unwrap();
    error_of(h, 404, "not_found").await;

    // Writes inside the scope work; outside they do not exist.
    let patch = |id: &str| {
        s.http
            .patch(s.url(&format!("/api/v1/twins/{id}")))
            .bearer_auth(&op)
            .json(&json!([{"op": "add", "path": "/setpoint", "value": 360.0}]))
            .send()
    };
    assert!(patch("r21").await.unwrap().status().is_success());
    error_of(patch("r11").await.unwrap(), 404, "not_found").await;
    // Pulling an outside twin into the subtree is refused.
    let r = s
        .http
        .put(s.url("/api/v1/twins/plant2/relationships/steal"))
        .bearer_auth(&op)
        .json(&json!({"$relationshipName": "contains", "$targetId": "r11"}))
        .send()
        .await
        .unwrap();
    error_of(r, 404, "not_found").await;
    // Creating a twin (which belongs to no scope yet) is tenant-wide.
    let r = s
        .http
        .put(s.url("/api/v1/twins/r23"))
        .bearer_auth(&op)
        .json(&json!({"$metadata": {"$model": "dtmi:test:Reactor;1"}}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden").await.contains("twins:write"));
    // Not in the role at all: devices.
    let r = get("/api/v1/devices".into()).await.unwrap();
    assert!(error_of(r, 403, "forbidden").await.contains("devices:read"));

    // Queries and multi-series history show only the subtree.
    let r = s
        .http
        .post(s.url("/api/v1/query"))
        .bearer_auth(&op)
        .json(&json!({"query": "SELECT T FROM DIGITALTWINS T WHERE IS_OF_MODEL(T, 'dtmi:test:Reactor;1')"}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let mut ids: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row["T"]["$dtId"]
                .as_str()
                .or(row["$dtId"].as_str())
                .unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["r21", "r22"], "{v}");
    // The query sees only the subtree: counts, joins and relationships.
    let query = |text: &'static str| {
        let s = &s;
        let op = &op;
        async move {
            let r = s
                .http
                .post(s.url("/api/v1/query"))
                .bearer_auth(op)
                .json(&json!({ "query": text }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["value"].clone()
        }
    };
    assert_eq!(
        query("SELECT COUNT() FROM DIGITALTWINS").await,
        json!([{"COUNT": 3}])
    );
    let joined = query("SELECT P, R FROM DIGITALTWINS P JOIN R RELATED P.contains").await;
    let mut pairs: Vec<(String, String)> = joined
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["P"]["$dtId"].as_str().unwrap().into(),
                row["R"]["$dtId"].as_str().unwrap().into(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("plant2".to_string(), "r21".to_string()),
            ("plant2".into(), "r22".into())
        ]
    );
    assert_eq!(
        query("SELECT R FROM RELATIONSHIPS R")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        query("SELECT T FROM DIGITALTWINS T WHERE T.$dtId = 'r11'").await,
        json!([])
    );
    let r = s
        .http
        .post(s.url("/api/v1/history/query"))
        .bearer_auth(&op)
        .json(&json!({"series": [{"twin": "r11", "name": "temperature"}], "from": 0}))
        .send()
        .await
        .unwrap();
    error_of(r, 404, "not_found").await;
    let (_, incoming) = s
        .json(
            s.http
                .get(s.url("/api/v1/twins/r21/incomingrelationships"))
                .bearer_auth(&op),
        )
        .await;
    assert_eq!(incoming["value"].as_array().unwrap().len(), 1);

    // Redefining the role takes effect on the next request.
    let (st, _) = s
        .json(s.post(
            "/api/v1/roles",
            json!({"name": "plant2-operator", "permissions": ["twins:read"], "scope": {"twin": "plant2"}}),
        ))
        .await;
    assert_eq!(st, 201);
    let r = patch("r21").await.unwrap();
    assert!(error_of(r, 403, "forbidden").await.contains("twins:write"));
    s.stop().await;
}

#[tokio::test]
async fn roles_are_validated_and_never_exceed_their_author() {
    let s = TestServer::start().await;
    for (body, field) in [
        (
            json!({"name": "operator", "permissions": ["twins:read"]}),
            "name",
        ),
        (json!({"name": "r", "permissions": []}), "permissions"),
        (
            json!({"name": "r", "permissions": ["twins:fly"]}),
            "permissions[0]",
        ),
        (
            json!({"name": "r", "permissions": ["tenants:admin"]}),
            "permissions[0]",
        ),
        (
            json!({"name": "r", "permissions": ["twins:read"], "scope": {"root": "x"}}),
            "scope.root",
        ),
        (
            json!({"name": "r", "permissions": ["twins:read"], "scope": {"twin": ""}}),
            "scope.twin",
        ),
        (
            json!({"name": "r", "permissions": ["twins:read"], "scope": {"twin": "a", "relationships": []}}),
            "scope.relationships",
        ),
    ] {
        let r = s.post("/api/v1/roles", body.clone()).send().await.unwrap();
        let msg = error_of(r, 400, "bad_request").await;
        assert!(msg.contains(field), "{body}: {msg}");
    }
    // A custom role works without a scope too, and for API keys.
    let (st, _) = s
        .json(s.post(
            "/api/v1/roles",
            json!({"name": "auditor", "permissions": ["audit:read", "devices:read"]}),
        ))
        .await;
    assert_eq!(st, 201);
    let (st, key) = s
        .json(s.post(
            "/api/v1/apikeys",
            json!({"name": "k", "roles": ["auditor"]}),
        ))
        .await;
    assert_eq!(st, 201, "{key}");
    let r = s
        .http
        .get(s.url("/api/v1/audit"))
        .bearer_auth(key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, list) = s.json(s.get("/api/v1/roles")).await;
    let names: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"operator") && names.contains(&"auditor"),
        "{names:?}"
    );

    // An operator-level admin cannot define more than they hold.
    s.post(
        "/api/v1/roles",
        json!({"name": "useradmin", "permissions": ["users:admin", "twins:read"]}),
    )
    .send()
    .await
    .unwrap();
    let ua = s.user("uma", &["useradmin"]).await;
    let r = s
        .http
        .post(s.url("/api/v1/roles"))
        .bearer_auth(&ua)
        .json(&json!({"name": "big", "permissions": ["twins:write"]}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden").await.contains("twins:write"));

    // A role held by a user cannot be deleted; an unused one can.
    let r = s.delete("/api/v1/roles/useradmin").send().await.unwrap();
    error_of(r, 409, "conflict").await;
    assert_eq!(
        s.delete("/api/v1/roles/auditor")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let r = s
        .http
        .get(s.url("/api/v1/audit"))
        .bearer_auth(key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a key with a deleted role holds nothing");
    s.stop().await;
}
