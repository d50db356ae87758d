//! The twin graph through the API: DTDL models, validated twins with
//! ETags, relationships, device telemetry into modelled twins, queries.

use crate::common::*;
use serde_json::{json, Value};

pub fn plant_models() -> Value {
    json!([
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Asset;1", "@type": "Interface",
         "contents": [{"@type": "Property", "name": "name", "schema": "string"}]},
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Plant;1", "@type": "Interface", "extends": "dtmi:test:Asset;1",
         "contents": [{"@type": "Relationship", "name": "contains", "target": "dtmi:test:Reactor;1",
                       "properties": [{"@type": "Property", "name": "since", "schema": "date"}]},
                      {"@type": "Property", "name": "city", "schema": "string"}]},
        {"@context": ["dtmi:dtdl:context;3", "dtmi:dtdl:extension:quantitativeTypes;1"], "@id": "dtmi:test:Reactor;1", "@type": "Interface",
         "extends": "dtmi:test:Asset;1",
         "contents": [
            {"@type": ["Telemetry", "Temperature"], "name": "temperature", "schema": "double", "unit": "kelvin"},
            {"@type": "Telemetry", "name": "pressure", "schema": "double"},
            {"@type": "Property", "name": "setpoint", "schema": "double", "writable": true},
            {"@type": "Component", "name": "jacket", "schema": "dtmi:test:Jacket;1"},
            {"@type": "Relationship", "name": "feeds", "target": "dtmi:test:Reactor;1", "maxMultiplicity": 1}
         ]},
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Jacket;1", "@type": "Interface",
         "contents": [{"@type": "Property", "name": "coolant", "schema": "string"},
                      {"@type": "Telemetry", "name": "inletTemp", "schema": "double"}]}
    ])
}

pub async fn load_plant(s: &TestServer) {
    let r = s
        .post("/api/v1/models", plant_models())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn put(s: &TestServer, path: &str, body: Value) -> (u16, Value, Option<String>) {
    let r = s
        .http
        .put(s.url(path))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    (
        r.status().as_u16(),
        r.json().await.unwrap_or(Value::Null),
        etag,
    )
}

pub async fn reactor(s: &TestServer, id: &str) {
    let (st, v, _) = put(s, &format!("/api/v1/twins/{id}"), json!({"$metadata": {"$model": "dtmi:test:Reactor;1"}, "name": id, "jacket": {"$metadata": {}}})).await;
    assert_eq!(st, 201, "{v}");
}

#[tokio::test]
async fn models_upload_list_and_refuse_bad_ones() {
    let s = TestServer::start().await;
    let (st, up) = s.json(s.post("/api/v1/models", plant_models())).await;
    assert_eq!(st, 201);
    assert_eq!(up.as_array().unwrap().len(), 4);
    let (_, list) = s.json(s.get("/api/v1/models")).await;
    assert_eq!(list["value"].as_array().unwrap().len(), 4);
    let (st, one) = s.json(s.get("/api/v1/models/dtmi:test:Reactor;1")).await;
    assert_eq!(st, 200);
    assert_eq!(one["model"]["@id"], "dtmi:test:Reactor;1");
    // The same ids again: 409.
    let r = s
        .post("/api/v1/models", plant_models())
        .send()
        .await
        .unwrap();
    error_of(r, 409, "conflict").await;
    // Invalid: refused whole, every error names interface, element, rule.
    let bad = json!([
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Bad;1", "@type": "Interface", "extends": "dtmi:test:Nowhere;1",
         "contents": [{"@type": "Property", "name": "x", "schema": "double"}, {"@type": "Property", "name": "x", "schema": "string"}]},
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Fine;1", "@type": "Interface"}
    ]);
    let r = s.post("/api/v1/models", bad).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    let details = v["error"]["details"].as_array().unwrap();
    assert!(
        details.iter().any(|d| d["interface"] == "dtmi:test:Bad;1"
            && d["rule"].as_str().unwrap().contains("dtmi:test:Nowhere;1")),
        "{v}"
    );
    assert_eq!(
        s.get("/api/v1/models/dtmi:test:Fine;1")
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "nothing of a refused upload is kept"
    );
    s.stop().await;
}

#[tokio::test]
async fn twins_are_validated_versioned_and_patched() {
    let s = TestServer::start().await;
    load_plant(&s).await;
    let (st, twin, etag1) = put(&s, "/api/v1/twins/r1", json!({"$metadata": {"$model": "dtmi:test:Reactor;1"}, "name": "R-101", "setpoint": 360, "jacket": {"$metadata": {}, "coolant": "water"}})).await;
    assert_eq!(st, 201, "{twin}");
    let etag1 = etag1.unwrap();
    assert_eq!(twin["$etag"], etag1.as_str());
    assert_eq!(twin["$metadata"]["$model"], "dtmi:test:Reactor;1");
    assert!(twin["$metadata"]["setpoint"]["lastUpdateTime"].is_string());
    assert_eq!(twin["jacket"]["coolant"], "water");
    assert!(twin["jacket"]["$metadata"]["coolant"]["lastUpdateTime"].is_string());
    // Create-only refuses an existing twin.
    let r = s
        .http
        .put(s.url("/api/v1/twins/r1"))
        .bearer_auth(&s.token)
        .header("If-None-Match", "*")
        .json(&json!({"$metadata": {"$model": "dtmi:test:Reactor;1"}}))
        .send()
        .await
        .unwrap();
    error_of(r, 412, "precondition_failed").await;
    // PATCH with the current ETag; the old one then fails.
    let r = s
        .http
        .patch(s.url("/api/v1/twins/r1"))
        .bearer_auth(&s.token)
        .header("If-Match", &etag1)
        .json(&json!([{"op": "replace", "path": "/setpoint", "value": 365.5}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["setpoint"], 365.5);
    assert_ne!(patched["$etag"], etag1.as_str());
    let r = s
        .http
        .patch(s.url("/api/v1/twins/r1"))
        .bearer_auth(&s.token)
        .header("If-Match", &etag1)
        .json(&json!([{"op": "replace", "path": "/setpoint", "value": 1}]))
        .send()
        .await
        .unwrap();
    error_of(r, 412, "precondition_failed").await;
    for (patch, field) in [
        (
            json!([{"op": "add", "path": "/temperature", "value": 300}]),
            "temperature",
        ),
        (
            json!([{"op": "add", "path": "/colour", "value": "red"}]),
            "colour",
        ),
        (
            json!([{"op": "replace", "path": "/setpoint", "value": "hot"}]),
            "setpoint",
        ),
        (
            json!([{"op": "add", "path": "/jacket/coolant", "value": 5}]),
            "jacket.coolant",
        ),
    ] {
        let r = s
            .patch("/api/v1/twins/r1", patch.clone())
            .send()
            .await
            .unwrap();
        let msg = error_of(r, 422, "unprocessable_entity").await;
        assert!(msg.starts_with(&format!("{field}:")), "{patch} → {msg}");
    }
    let r = s
        .patch(
            "/api/v1/twins/r1",
            json!([{"op": "teleport", "path": "/x"}]),
        )
        .send()
        .await
        .unwrap();
    error_of(r, 400, "bad_request").await;
    let (_, now) = s.json(s.get("/api/v1/twins/r1")).await;
    assert_eq!(now["setpoint"], 365.5, "refused patches changed nothing");
    // Unknown model and missing model.
    let (st, _, _) = put(
        &s,
        "/api/v1/twins/x",
        json!({"$metadata": {"$model": "dtmi:test:Ghost;1"}}),
    )
    .await;
    assert_eq!(st, 422);
    let (st, _, _) = put(&s, "/api/v1/twins/x", json!({"name": "no model"})).await;
    assert_eq!(st, 400);
    s.stop().await;
}

#[tokio::test]
async fn relationships_follow_the_model() {
    let s = TestServer::start().await;
    load_plant(&s).await;
    let (st, _, _) = put(
        &s,
        "/api/v1/twins/p1",
        json!({"$metadata": {"$model": "dtmi:test:Plant;1"}, "name": "Plant 1", "city": "Osaka"}),
    )
    .await;
    assert_eq!(st, 201);
    reactor(&s, "r1").await;
    reactor(&s, "r2").await;
    let (st, rel, _) = put(
        &s,
        "/api/v1/twins/p1/relationships/c1",
        json!({"$relationshipName": "contains", "$targetId": "r1", "since": "2024-01-01"}),
    )
    .await;
    assert_eq!(st, 201, "{rel}");
    assert_eq!(rel["$sourceId"], "p1");
    assert_eq!(rel["since"], "2024-01-01");
    for (body, field) in [
        (
            json!({"$relationshipName": "owns", "$targetId": "r1"}),
            "$relationshipName",
        ),
        (
            json!({"$relationshipName": "contains", "$targetId": "p1"}),
            "$targetId",
        ),
        (
            json!({"$relationshipName": "contains", "$targetId": "r9"}),
            "$targetId",
        ),
        (
            json!({"$relationshipName": "contains", "$targetId": "r2", "since": "yesterday"}),
            "since",
        ),
    ] {
        let (st, v, _) = put(&s, "/api/v1/twins/p1/relationships/c9", body.clone()).await;
        assert_eq!(st, 422, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(field),
            "{body}: {v}"
        );
    }
    // maxMultiplicity 1.
    assert_eq!(
        put(
            &s,
            "/api/v1/twins/r1/relationships/f1",
            json!({"$relationshipName": "feeds", "$targetId": "r2"})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        put(
            &s,
            "/api/v1/twins/r1/relationships/f2",
            json!({"$relationshipName": "feeds", "$targetId": "r1"})
        )
        .await
        .0,
        422
    );
    let (_, out) = s.json(s.get("/api/v1/twins/p1/relationships")).await;
    assert_eq!(out["value"].as_array().unwrap().len(), 1);
    let (_, inc) = s
        .json(s.get("/api/v1/twins/r2/incomingrelationships"))
        .await;
    assert_eq!(inc["value"][0]["$sourceId"], "r1");
    let r = s
        .patch(
            "/api/v1/twins/p1/relationships/c1",
            json!([{"op": "replace", "path": "/since", "value": "2025-02-03"}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A twin with relationships cannot go; without them it can.
    let r = s.delete("/api/v1/twins/r1").send().await.unwrap();
    error_of(r, 409, "conflict").await;
    assert_eq!(
        s.delete("/api/v1/twins/p1/relationships/c1")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        s.delete("/api/v1/twins/r1/relationships/f1")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        s.delete("/api/v1/twins/r1").send().await.unwrap().status(),
        204
    );
    assert_eq!(
        s.get("/api/v1/twins/r1").send().await.unwrap().status(),
        404
    );
    // Models in use cannot be deleted; decommissioned ones take no new twins.
    let r = s
        .delete("/api/v1/models/dtmi:test:Reactor;1")
        .send()
        .await
        .unwrap();
    error_of(r, 409, "conflict").await;
    let r = s
        .patch(
            "/api/v1/models/dtmi:test:Plant;1",
            json!([{"op": "replace", "path": "/decommissioned", "value": true}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        put(
            &s,
            "/api/v1/twins/p2",
            json!({"$metadata": {"$model": "dtmi:test:Plant;1"}})
        )
        .await
        .0,
        422
    );
    s.stop().await;
}

#[tokio::test]
async fn device_telemetry_feeds_its_modelled_twin() {
    let s = TestServer::start().await;
    load_plant(&s).await;
    reactor(&s, "reactor-7").await;
    let r = s
        .post(
            "/api/v1/devices",
            json!({"id": "dev-7", "twin_id": "reactor-7"}),
        )
        .send()
        .await
        .unwrap();
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = s
        .send(
            "dev-7",
            &key,
            json!({"temperature": 351.2, "pressure": 6.1, "jacket": {"inletTemp": 290.5}}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    let (_, twin) = s.json(s.get("/api/v1/twins/reactor-7")).await;
    assert_eq!(twin["temperature"], 351.2);
    assert_eq!(twin["jacket"]["inletTemp"], 290.5);
    assert_eq!(twin["$metadata"]["$model"], "dtmi:test:Reactor;1");
    let (_, etag_before) = s.json(s.get("/api/v1/twins/reactor-7")).await;
    // Unknown name or wrong type: the whole message is refused, naming it.
    let msg = error_of(
        s.send("dev-7", &key, json!({"temperature": 350, "humidity": 40}))
            .await,
        422,
        "unprocessable_entity",
    )
    .await;
    assert!(msg.starts_with("humidity:"), "{msg}");
    let msg = error_of(
        s.send("dev-7", &key, json!({"pressure": "high"})).await,
        422,
        "unprocessable_entity",
    )
    .await;
    assert!(msg.starts_with("pressure:"), "{msg}");
    let (_, pts) = s
        .json(s.get("/api/v1/twins/reactor-7/telemetry/temperature?from=0"))
        .await;
    assert_eq!(
        pts["points"].as_array().unwrap().len(),
        1,
        "the refused message stored nothing"
    );
    let (_, after) = s.json(s.get("/api/v1/twins/reactor-7")).await;
    assert_eq!(
        after["$etag"], etag_before["$etag"],
        "telemetry does not change the etag"
    );
    // Over MQTT 5 the same refusal is PUBACK 0x99.
    use rumqttc::v5::mqttbytes::v5;
    let (mut d, _) = crate::mqtt::open5(s.mqtt(), "dev-7", Some(("dev-7", &key)), true, None).await;
    d.send5(crate::mqtt::pub5(
        "devices/dev-7/telemetry",
        1,
        1,
        br#"{"humidity": 1}"#,
        None,
    ))
    .await;
    match d.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::PayloadFormatInvalid),
        p => panic!("{p:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn queries_filter_join_count_and_page() {
    let s = TestServer::start().await;
    load_plant(&s).await;
    put(
        &s,
        "/api/v1/twins/p1",
        json!({"$metadata": {"$model": "dtmi:test:Plant;1"}, "name": "Plant 1", "city": "Osaka"}),
    )
    .await;
    for i in 1..=5 {
        reactor(&s, &format!("r{i}")).await;
        if i <= 3 {
            put(
                &s,
                &format!("/api/v1/twins/p1/relationships/c{i}"),
                json!({"$relationshipName": "contains", "$targetId": format!("r{i}")}),
            )
            .await;
        }
    }
    let k = s.device("r2").await;
    s.send("r2", &k, json!({"temperature": 372.5})).await;
    let q = |text: &str| s.post("/api/v1/query", json!({"query": text}));
    let (st, v) = s
        .json(q(
            "SELECT T FROM DIGITALTWINS T WHERE IS_OF_MODEL(T, 'dtmi:test:Asset;1')",
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["value"].as_array().unwrap().len(),
        6,
        "inheritance counts"
    );
    let (_, v) = s.json(q("SELECT C FROM DIGITALTWINS P JOIN C RELATED P.contains WHERE P.city = 'Osaka' AND C.temperature > 370")).await;
    assert_eq!(
        v["value"],
        json!([s.json(s.get("/api/v1/twins/r2")).await.1]),
        "live telemetry in WHERE"
    );
    let (_, v) = s
        .json(q(
            "SELECT COUNT() FROM DIGITALTWINS T WHERE IS_OF_MODEL(T, 'dtmi:test:Reactor;1', exact)",
        ))
        .await;
    assert_eq!(v["value"], json!([{"COUNT": 5}]));
    let (_, v) = s
        .json(q(
            "SELECT T.name AS n FROM DIGITALTWINS T WHERE T.$dtId IN ['r1', 'r4']",
        ))
        .await;
    assert_eq!(v["value"], json!([{"n": "r1"}, {"n": "r4"}]));
    // Paging with continuation tokens.
    let mut seen = Vec::new();
    let mut body = json!({"query": "SELECT * FROM DIGITALTWINS", "pageSize": 2});
    loop {
        let (_, page) = s.json(s.post("/api/v1/query", body.clone())).await;
        seen.extend(
            page["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["$dtId"].as_str().unwrap().to_string()),
        );
        match page["continuationToken"].as_str() {
            Some(t) => body = json!({"continuationToken": t, "pageSize": 2}),
            None => break,
        }
    }
    assert_eq!(seen, ["p1", "r1", "r2", "r3", "r4", "r5"]);
    let r = q("SELECT * FROM DIGITALTWINS T WHERE T.x = ")
        .send()
        .await
        .unwrap();
    let msg = error_of(r, 400, "bad_request").await;
    assert!(msg.contains("position 41"), "{msg}");
    s.stop().await;
}

#[tokio::test]
async fn the_graph_survives_restart_and_emits_events() {
    let s = TestServer::start().await;
    let events = s
        .get("/api/v1/events?types=twin,relationship")
        .send()
        .await
        .unwrap();
    load_plant(&s).await;
    put(
        &s,
        "/api/v1/twins/p1",
        json!({"$metadata": {"$model": "dtmi:test:Plant;1"}, "name": "Plant 1"}),
    )
    .await;
    reactor(&s, "r1").await;
    put(
        &s,
        "/api/v1/twins/p1/relationships/c1",
        json!({"$relationshipName": "contains", "$targetId": "r1"}),
    )
    .await;
    s.patch(
        "/api/v1/twins/p1",
        json!([{"op": "replace", "path": "/name", "value": "Plant One"}]),
    )
    .send()
    .await
    .unwrap();
    let evs = crate::events::read_events(events, 4).await;
    assert_eq!(evs[0].2["data"]["op"], "create");
    assert_eq!(evs[2].1, "relationship");
    assert_eq!(evs[3].2["data"]["patch"][0]["path"], "/name");
    let (_, before) = s.json(s.get("/api/v1/twins/p1")).await;
    let s = s.restart().await;
    let (_, after) = s.json(s.get("/api/v1/twins/p1")).await;
    assert_eq!(before, after);
    let (_, rels) = s.json(s.get("/api/v1/twins/p1/relationships")).await;
    assert_eq!(rels["value"][0]["$targetId"], "r1");
    assert_eq!(
        s.get("/api/v1/models/dtmi:test:Jacket;1")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Another tenant sees none of it.
    s.post("/api/v1/tenants", json!({"id": "t2", "name": "T2"}))
        .send()
        .await
        .unwrap();
    let (_, v) = s
        .json(s.post(
            "/api/v1/query?tenant=t2",
            json!({"query": "SELECT COUNT() FROM DIGITALTWINS"}),
        ))
        .await;
    assert_eq!(v["value"], json!([{"COUNT": 0}]));
    assert_eq!(
        s.get("/api/v1/twins/p1?tenant=t2")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    s.stop().await;
}

/// The shipped ontologies load through the API as published (the building
/// one with a UTF-8 byte-order mark, as editors save it) and carry a real
/// hierarchy that queries walk.
#[tokio::test]
async fn shipped_ontologies_load_and_build_a_hierarchy() {
    let s = TestServer::start().await;
    for (name, text) in [
        ("plant", twinhub_server::ontologies::PROCESS_PLANT),
        ("building", twinhub_server::ontologies::BUILDING),
    ] {
        let mut body = Vec::new();
        if name == "building" {
            body.extend_from_slice(&[0xEF, 0xBB, 0xBF]);
        }
        body.extend_from_slice(text.as_bytes());
        let r = s
            .http
            .post(s.url("/api/v1/models"))
            .bearer_auth(&s.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{name}: {}", r.text().await.unwrap());
    }
    let b = "dtmi:twinhub:building:";
    for (id, model, extra) in [
        (
            "hq",
            "Building;1",
            json!({"name": "HQ", "address": {"city": "Tokyo"}, "yearBuilt": 2019}),
        ),
        ("hq-f1", "Floor;1", json!({"level": 1})),
        ("hq-f1-r101", "Room;1", json!({"capacity": 8})),
        ("hq-f1-r102", "Room;1", json!({"capacity": 20})),
        (
            "ahu-1",
            "AirHandlingUnit;1",
            json!({"name": "AHU 1", "filter": {"$metadata": {}, "replaced": "2026-04-01"}}),
        ),
    ] {
        let mut body = json!({"$metadata": {"$model": format!("{b}{model}")}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        assert_eq!(
            put(&s, &format!("/api/v1/twins/{id}"), body).await.0,
            201,
            "{id}"
        );
    }
    for (src, rel, name, tgt) in [
        ("hq", "p1", "hasPart", "hq-f1"),
        ("hq-f1", "p1", "hasPart", "hq-f1-r101"),
        ("hq-f1", "p2", "hasPart", "hq-f1-r102"),
        ("ahu-1", "s1", "serves", "hq-f1-r101"),
        ("ahu-1", "s2", "serves", "hq-f1-r102"),
    ] {
        assert_eq!(
            put(
                &s,
                &format!("/api/v1/twins/{src}/relationships/{rel}"),
                json!({"$relationshipName": name, "$targetId": tgt})
            )
            .await
            .0,
            201
        );
    }
    let (_, v) = s.json(s.post("/api/v1/query", json!({"query": "SELECT R FROM DIGITALTWINS B JOIN F RELATED B.hasPart JOIN R RELATED F.hasPart WHERE B.$dtId = 'hq' AND R.capacity >= 10"}))).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["value"][0]["$dtId"], "hq-f1-r102");
    let (_, v) = s.json(s.post("/api/v1/query", json!({"query": "SELECT COUNT() FROM DIGITALTWINS T WHERE IS_OF_MODEL(T, 'dtmi:twinhub:building:Space;1')"}))).await;
    assert_eq!(v["value"], json!([{"COUNT": 4}]));
    s.stop().await;
}

/// A device set to `record` keeps telemetry its twin's model lacks
/// (history and live value) but still may not send a wrong type.
#[tokio::test]
async fn unknown_telemetry_can_be_recorded_per_device() {
    let s = TestServer::start().await;
    load_plant(&s).await;
    reactor(&s, "rx").await;
    let r = s
        .post(
            "/api/v1/devices",
            json!({"id": "dx", "twin_id": "rx", "unknown_telemetry": "record"}),
        )
        .send()
        .await
        .unwrap();
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["unknown_telemetry"], "record");
    let key = d["key"].as_str().unwrap().to_string();
    assert_eq!(
        s.send("dx", &key, json!({"temperature": 350.5, "vibration": 0.02}))
            .await
            .status(),
        200
    );
    let (_, twin) = s.json(s.get("/api/v1/twins/rx")).await;
    assert_eq!(twin["vibration"], 0.02);
    let msg = error_of(
        s.send("dx", &key, json!({"temperature": "hot"})).await,
        422,
        "unprocessable_entity",
    )
    .await;
    assert!(msg.starts_with("temperature:"), "{msg}");
    let r = s
        .patch(
            "/api/v1/devices/dx",
            json!({"unknown_telemetry": "sometimes"}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .starts_with("unknown_telemetry:"));
    s.patch("/api/v1/devices/dx", json!({"unknown_telemetry": "reject"}))
        .send()
        .await
        .unwrap();
    error_of(
        s.send("dx", &key, json!({"vibration": 0.03})).await,
        422,
        "unprocessable_entity",
    )
    .await;
    s.stop().await;
}

/// Real ontologies come as hundreds of interfaces in one upload, with deep
/// extends chains and components inherited through extends.
#[tokio::test]
async fn hundreds_of_interfaces_in_one_upload() {
    let s = TestServer::start().await;
    let mut ifaces = vec![
        json!({"@context": "dtmi:dtdl:context;3", "@id": "dtmi:big:Part;1", "@type": "Interface",
        "contents": [{"@type": "Telemetry", "name": "wear", "schema": "double"}]}),
    ];
    for i in 0..300 {
        let mut o = json!({"@context": "dtmi:dtdl:context;3", "@id": format!("dtmi:big:T{i};1"), "@type": "Interface",
            "displayName": {"en": format!("Type {i}"), "de": format!("Typ {i}")},
            "contents": [{"@type": "Property", "name": format!("p{i}"), "schema": "double"}]});
        if i % 10 == 0 {
            o["contents"].as_array_mut().unwrap().push(json!({"@type": "Component", "name": format!("part{i}"), "schema": "dtmi:big:Part;1"}));
        } else {
            // Chains of ten: T(10k+1) extends T(10k), … up to depth 9.
            o["extends"] = json!(format!("dtmi:big:T{};1", i - 1));
        }
        ifaces.push(o);
    }
    let r = s
        .post("/api/v1/models", serde_json::Value::Array(ifaces))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let (st, v, _) = put(&s, "/api/v1/twins/deep", json!({"$metadata": {"$model": "dtmi:big:T299;1"}, "p290": 1.0, "p299": 2.0, "part290": {"$metadata": {}}})).await;
    assert_eq!(st, 201, "{v}");
    let k = s.device("deep").await;
    s.patch("/api/v1/devices/deep", json!({"twin_id": "deep"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.send("deep", &k, json!({"part290": {"wear": 0.4}}))
            .await
            .status(),
        200,
        "a component inherited through extends"
    );
    let events = s
        .get("/api/v1/events?types=telemetry&model=dtmi:big:T299;1")
        .send()
        .await
        .unwrap();
    s.send("deep", &k, json!({"part290": {"wear": 0.5}})).await;
    let ev = crate::events::read_events(events, 1).await;
    assert_eq!(ev[0].2["model"], "dtmi:big:T299;1");
    s.stop().await;
}

/// A published-ontology pattern: an HVAC pump is both a pump and a piece
/// of HVAC equipment, and both are assets. The upload is accepted, and a
/// twin of the pump has the asset's property once.
#[tokio::test]
async fn diamond_inheritance_from_published_ontologies_loads() {
    let s = TestServer::start().await;
    let i = |id: &str, ext: Value, contents: Value| json!({"@context": "dtmi:dtdl:context;3", "@id": id, "@type": "Interface", "extends": ext, "contents": contents});
    let models = json!([
        i(
            "dtmi:o:Asset;1",
            json!([]),
            json!([{"@type": "Property", "name": "serialNumber", "schema": "string"},
                                             {"@type": "Relationship", "name": "isLocatedIn"}])
        ),
        i(
            "dtmi:o:Pump;1",
            json!(["dtmi:o:Asset;1"]),
            json!([{"@type": "Telemetry", "name": "flow", "schema": "double"}])
        ),
        i(
            "dtmi:o:HVACEquipment;1",
            json!(["dtmi:o:Asset;1"]),
            json!([])
        ),
        i(
            "dtmi:o:HVACPump;1",
            json!(["dtmi:o:Pump;1", "dtmi:o:HVACEquipment;1"]),
            json!([])
        )
    ]);
    let (st, v) = s.json(s.post("/api/v1/models", models)).await;
    assert_eq!(st, 201, "{v}");
    let (st, _, _) = put(
        &s,
        "/api/v1/twins/pump-1",
        json!({"$metadata": {"$model": "dtmi:o:HVACPump;1"}, "serialNumber": "P-1"}),
    )
    .await;
    assert_eq!(st, 201);
    let (_, q) = s
        .json(s.post(
            "/api/v1/query",
            json!({"query": "SELECT T FROM DIGITALTWINS T WHERE IS_OF_MODEL('dtmi:o:Asset;1')"}),
        ))
        .await;
    assert_eq!(q["value"].as_array().unwrap().len(), 1, "{q}");
    // Two different definitions of one name are still refused, naming both.
    let clash = json!([
        i(
            "dtmi:c:B;1",
            json!([]),
            json!([{"@type": "Property", "name": "p", "schema": "double"}])
        ),
        i(
            "dtmi:c:C;1",
            json!([]),
            json!([{"@type": "Property", "name": "p", "schema": "string"}])
        ),
        i("dtmi:c:A;1", json!(["dtmi:c:B;1", "dtmi:c:C;1"]), json!([]))
    ]);
    let r = s.post("/api/v1/models", clash).send().await.unwrap();
    let msg = error_of(r, 422, "unprocessable_entity").await;
    assert!(
        msg.contains("dtmi:c:B;1") && msg.contains("dtmi:c:C;1"),
        "{msg}"
    );
    s.stop().await;
}
