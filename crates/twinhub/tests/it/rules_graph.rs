//! Rules over the twin graph: conditions that read a twin's stored
//! properties, its related twins and the twin itself, and alarms that
//! propagate up the graph.

use super::rules::{alarms, alarms_until, evaluated, hot, rule, temp, T0};
use crate::common::*;
use serde_json::json;

/// A condition reads more than the telemetry point: the twin's stored
/// properties by name and as `props`, its related twins' properties
/// (`related.<relationship>`) and the twin itself (`twin.model`). A change
/// of a related twin counts from the next point on.
#[tokio::test]
async fn a_condition_reads_the_twin_its_properties_and_related_twins() {
    let s = TestServer::start().await;
    let model = json!([{"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Cell;1", "@type": "Interface",
        "contents": [{"@type": "Telemetry", "name": "temperature", "schema": "double"},
                     {"@type": "Property", "name": "limit", "schema": "double", "writable": true},
                     {"@type": "Property", "name": "mode", "schema": "string", "writable": true},
                     {"@type": "Property", "name": "state", "schema": "string", "writable": true},
                     {"@type": "Relationship", "name": "isPartOf"}]}]);
    let (st, v) = s.json(s.post("/api/v1/models", model)).await;
    assert_eq!(st, 201, "{v}");
    for (t, props) in [
        ("line1", json!({"state": "stopped"})),
        ("c1", json!({"limit": 375.0, "mode": "auto"})),
    ] {
        let mut body = props;
        body["$metadata"] = json!({"$model": "dtmi:test:Cell;1"});
        let r = s
            .http
            .put(s.url(&format!("/api/v1/twins/{t}")))
            .bearer_auth(&s.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let r = s
        .http
        .put(s.url("/api/v1/twins/c1/relationships/c1-line1"))
        .bearer_auth(&s.token)
        .json(&json!({"$relationshipName": "isPartOf", "$targetId": "line1"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    rule(
        &s,
        json!({
            "id": "hot-running", "name": "hot while its line runs", "select": {"twin": "c1"},
            "condition": "temperature > props.limit && mode == 'auto' \
                && related.isPartOf.state == 'running' && twin.model == 'dtmi:test:Cell;1'",
            "alarm": {"type": "HotRunning", "severity": "major"},
        }),
    )
    .await;
    let key = s.device("c1").await;
    // Its line is stopped: over the limit, but no alarm.
    temp(&s, "c1", &key, 0, 380.0).await;
    evaluated(&s, "hot-running", 1).await;
    let (_, r) = s.json(s.get("/api/v1/rules/hot-running")).await;
    assert_eq!(r["status"]["state"], "ok", "{r}");
    assert!(alarms(&s, "").await.is_empty());
    let r = s
        .patch(
            "/api/v1/twins/line1",
            json!([{"op": "replace", "path": "/state", "value": "running"}]),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    temp(&s, "c1", &key, 1, 370.0).await;
    temp(&s, "c1", &key, 2, 381.0).await;
    let a = alarms_until(&s, "status=active", "an alarm once the line runs", |a| {
        a.len() == 1
    })
    .await;
    assert_eq!(a[0]["start_ts"], T0 + 2000);
    // The plain names it read, the stored `mode` among them.
    assert_eq!(
        a[0]["last_value"],
        json!({"temperature": 381.0, "mode": "auto"})
    );
    s.stop().await;
}

/// A reactor's alarm counts on its line and plant (the rule propagates it
/// along `isPartOf`), and every alarm change is on the event stream.
#[tokio::test]
async fn alarms_propagate_up_the_graph_and_stream_as_events() {
    let s = TestServer::start().await;
    let model = json!([{"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Unit;1", "@type": "Interface",
        "contents": [{"@type": "Telemetry", "name": "temperature", "schema": "double"},
                     {"@type": "Relationship", "name": "isPartOf"}]}]);
    let (st, v) = s.json(s.post("/api/v1/models", model)).await;
    assert_eq!(st, 201, "{v}");
    for t in ["plant", "line", "r9", "other"] {
        let r = s
            .http
            .put(s.url(&format!("/api/v1/twins/{t}")))
            .bearer_auth(&s.token)
            .json(&json!({"$metadata": {"$model": "dtmi:test:Unit;1"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    for (src, dst) in [("line", "plant"), ("r9", "line")] {
        let r = s
            .http
            .put(s.url(&format!("/api/v1/twins/{src}/relationships/{src}-{dst}")))
            .bearer_auth(&s.token)
            .json(&json!({"$relationshipName": "isPartOf", "$targetId": dst}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let stream = s.get("/api/v1/events?types=alarm").send().await.unwrap();
    let mut body = hot("hot", "r9");
    body["select"] = json!({"model": "dtmi:test:Unit;1"});
    body["alarm"]["propagate"] = json!("isPartOf");
    rule(&s, body).await;
    let key = s.device("r9").await;
    let other = s.device("other").await;
    temp(&s, "r9", &key, 0, 390.0).await;
    temp(&s, "other", &other, 0, 390.0).await;
    alarms_until(&s, "", "two alarms", |a| a.len() == 2).await;
    let under = alarms(&s, "originator=plant&subtree=true").await;
    assert_eq!(under.len(), 1, "{under:?}");
    assert_eq!(under[0]["originator"], "r9");
    assert!(alarms(&s, "originator=plant").await.is_empty());
    let (st, c) = s
        .json(s.get("/api/v1/alarms/counts?originator=plant&subtree=true"))
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["total"], 1, "{c}");
    assert_eq!(c["by_severity"]["major"], 1, "{c}");
    assert_eq!(c["by_severity"]["critical"], 0, "{c}");
    assert_eq!(c["by_originator"], json!({"r9": 1}));
    let (_, all) = s.json(s.get("/api/v1/alarms/counts")).await;
    assert_eq!(all["total"], 2, "{all}");
    let evs = crate::events::read_events(stream, 2).await;
    assert!(evs.iter().all(|e| e.1 == "alarm"), "{evs:?}");
    assert_eq!(evs[0].2["data"]["op"], "raise");
    s.stop().await;
}
