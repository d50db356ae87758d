//! Routes: events leave twinhub for other systems and none is lost. The
//! webhook sink is tested against a receiver in this process that can
//! refuse, go away and come back; the chaos test kills the server with
//! SIGKILL while the receiver is away.

mod chaos;
mod compliance;
mod receiver;

use crate::common::*;
use hmac::{Hmac, Mac};
use receiver::Receiver;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::atomic::Ordering;

async fn create(s: &TestServer, body: Value) -> Value {
    let (st, v) = s.json(s.post("/api/v1/routes", body)).await;
    assert_eq!(st, 201, "{v}");
    v
}

async fn status(s: &TestServer, id: &str) -> Value {
    s.json(s.get(&format!("/api/v1/routes/{id}"))).await.1
}

/// Fast retries for tests: the policy, not the clock, is under test.
fn quick_retry() -> Value {
    json!({"initial": "20ms", "max_backoff": "100ms", "open_for": "100ms", "max_attempts": 0})
}

fn values(events: &[Value], name: &str) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e["type"] == "telemetry")
        .flat_map(|e| e["data"]["messages"].as_array().unwrap().clone())
        .filter_map(|m| m["values"][name].as_f64())
        .collect()
}

#[tokio::test]
async fn a_webhook_route_delivers_what_it_selects_signed_and_in_order() {
    let s = TestServer::start().await;
    let rx = Receiver::start().await;
    let r = s
        .http
        .put(s.url("/api/v1/secrets/hook-key"))
        .bearer_auth(&s.token)
        .json(&json!({"value": "s3cret-hmac-key"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let v = create(
        &s,
        json!({"id": "erp", "select": {"types": ["telemetry"], "twin": "press-1", "condition": "temperature > 50"},
               "sink": {"kind": "webhook", "url": rx.url(), "secret": "hook-key", "headers": {"X-Plant": "north"}},
               "batch": {"max": 500, "linger": "20ms"}}),
    )
    .await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], 1);
    let key = s.device("press-1").await;
    let other = s.device("press-2").await;
    for i in 0..20 {
        let t = if i % 2 == 0 { 60.0 + i as f64 } else { 10.0 };
        assert_eq!(
            s.send("press-1", &key, json!({"temperature": t}))
                .await
                .status(),
            200
        );
        assert_eq!(
            s.send("press-2", &other, json!({"temperature": 99.0}))
                .await
                .status(),
            200
        );
    }
    until("the ten hot readings are delivered", || async {
        values(&rx.inbox.events(), "temperature").len() == 10
    })
    .await;
    let events = rx.inbox.events();
    // Only press-1's readings above 50, in the order they were sent.
    assert_eq!(
        values(&events, "temperature"),
        (0..20)
            .step_by(2)
            .map(|i| 60.0 + i as f64)
            .collect::<Vec<_>>()
    );
    for e in &events {
        assert_eq!(e["twin"], "press-1");
        assert_eq!(e["tenant"], "default");
        assert!(e["id"].as_str().unwrap().parse::<u64>().is_ok(), "{e}");
        assert!(e["ts"].as_f64().unwrap() > 1.7e12, "{e}");
    }
    // Every request is signed over "<timestamp>.<body>" with the secret.
    for (h, body) in rx.inbox.requests.lock().unwrap().iter() {
        let ts = h["x-twinhub-timestamp"].to_str().unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret-hmac-key").unwrap();
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            h["x-twinhub-signature"].to_str().unwrap(),
            format!("sha256={want}")
        );
        assert_eq!(h["x-twinhub-tenant"], "default");
        assert_eq!(h["x-twinhub-route"], "erp");
        assert_eq!(h["x-plant"], "north");
        assert_eq!(h["content-type"], "application/json");
    }
    let st = status(&s, "erp").await;
    assert_eq!(st["delivered"], 10, "{st}");
    assert_eq!(st["dead_letters"], 0);
    let m = s.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"twinhub_route_delivered_total{tenant="default",route="erp"}"#
        ),
        Some(10.0),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test]
async fn batches_respect_max_and_every_event_arrives_once() {
    let s = TestServer::start().await;
    let rx = Receiver::start().await;
    create(
        &s,
        json!({"id": "b", "select": {"types": ["telemetry"]},
               "sink": {"kind": "webhook", "url": rx.url()}, "batch": {"max": 50, "linger": "200ms"}}),
    )
    .await;
    let key = s.device("m1").await;
    let body: Vec<Value> = (0..400).map(|i| json!({"n": i})).collect();
    // 400 points in 8 requests: 8 telemetry events (one per request).
    for chunk in body.chunks(50) {
        assert_eq!(
            s.send("m1", &key, Value::Array(chunk.to_vec()))
                .await
                .status(),
            200
        );
    }
    for i in 0..120 {
        assert_eq!(
            s.send("m1", &key, json!({"n": 400 + i})).await.status(),
            200
        );
    }
    until("every point is delivered", || async {
        values(&rx.inbox.events(), "n").len() == 520
    })
    .await;
    assert_eq!(
        values(&rx.inbox.events(), "n"),
        (0..520).map(|i| i as f64).collect::<Vec<_>>()
    );
    for (_, b) in rx.inbox.requests.lock().unwrap().iter() {
        let n = serde_json::from_slice::<Vec<Value>>(b).unwrap().len();
        assert!((1..=50).contains(&n), "batch of {n}");
    }
    assert!(rx.inbox.batches() < 128, "events were batched");
    assert_eq!(rx.inbox.ids().len(), 128);
    s.stop().await;
}

#[tokio::test]
async fn an_outage_is_retried_then_a_refusal_is_parked_and_replayed() {
    let s = TestServer::start().await;
    let mut rx = Receiver::start().await;
    create(
        &s,
        json!({"id": "r", "select": {"types": ["telemetry"]}, "sink": {"kind": "webhook", "url": rx.url()},
               "retry": {"initial": "20ms", "max_backoff": "100ms", "open_for": "100ms", "max_attempts": 0, "circuit_after": 3}}),
    )
    .await;
    let key = s.device("d").await;
    // The receiver is away: the route retries and opens its circuit.
    rx.stop().await;
    for i in 0..5 {
        assert_eq!(s.send("d", &key, json!({"n": i})).await.status(), 200);
    }
    until("the circuit opens", || async {
        status(&s, "r").await["status"] == "open"
    })
    .await;
    let st = status(&s, "r").await;
    assert!(st["retried"].as_u64().unwrap() >= 3, "{st}");
    assert!(
        st["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{st}"
    );
    let (_, alarms) = s.json(s.get("/api/v1/alarms?originator=route:r")).await;
    assert_eq!(alarms["value"][0]["type"], "RouteCircuitOpen", "{alarms}");
    rx.resume().await;
    until("the backlog is delivered", || async {
        values(&rx.inbox.events(), "n").len() == 5
    })
    .await;
    assert_eq!(
        values(&rx.inbox.events(), "n"),
        vec![0.0, 1.0, 2.0, 3.0, 4.0]
    );
    until("the circuit closes and its alarm clears", || async {
        let (_, a) = s
            .json(s.get("/api/v1/alarms?originator=route:r&status=active"))
            .await;
        status(&s, "r").await["status"] == "ok" && a["value"].as_array().unwrap().is_empty()
    })
    .await;

    // A 4xx is a refusal of the batch itself: parked at once, not retried.
    rx.inbox.status.store(422, Ordering::SeqCst);
    assert_eq!(s.send("d", &key, json!({"n": 100})).await.status(), 200);
    until("the refused batch is parked", || async {
        status(&s, "r").await["dead_letters"] == 1
    })
    .await;
    let (_, dl) = s.json(s.get("/api/v1/routes/r/deadletters")).await;
    let letter = &dl["value"][0];
    assert_eq!(letter["attempts"], 1);
    assert!(
        letter["error"].as_str().unwrap().contains("422"),
        "{letter}"
    );
    assert_eq!(letter["event"]["data"]["messages"][0]["values"]["n"], 100.0);
    // Later events flow on.
    rx.inbox.status.store(200, Ordering::SeqCst);
    assert_eq!(s.send("d", &key, json!({"n": 101})).await.status(), 200);
    until("later events are delivered", || async {
        values(&rx.inbox.events(), "n").contains(&101.0)
    })
    .await;
    let r = s
        .post("/api/v1/routes/r/deadletters/replay", json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    until("the dead letter is replayed", || async {
        values(&rx.inbox.events(), "n").contains(&100.0)
    })
    .await;
    until("and leaves the list", || async {
        status(&s, "r").await["dead_letters"] == 0
    })
    .await;
    assert_eq!(status(&s, "r").await["replayed"], 1);
    s.stop().await;
}

#[tokio::test]
async fn after_max_attempts_a_batch_goes_to_the_dead_letters_and_the_fallback_takes_over() {
    let s = TestServer::start().await;
    let mut dead = Receiver::start().await;
    dead.stop().await;
    let backup = Receiver::start().await;
    // Without a fallback: two tries, then the dead letters.
    let mut retry = quick_retry();
    retry["max_attempts"] = json!(2);
    create(
        &s,
        json!({"id": "p", "select": {"types": ["telemetry"]}, "sink": {"kind": "webhook", "url": dead.url()}, "retry": retry}),
    )
    .await;
    // With one: after two failures the backup receives the batch.
    let mut retry = quick_retry();
    retry["fallback_after"] = json!(2);
    create(
        &s,
        json!({"id": "f", "select": {"types": ["telemetry"]}, "sink": {"kind": "webhook", "url": dead.url()},
               "fallback": {"kind": "webhook", "url": backup.url()}, "retry": retry}),
    )
    .await;
    let key = s.device("d").await;
    assert_eq!(s.send("d", &key, json!({"n": 1})).await.status(), 200);
    until("parked", || async {
        status(&s, "p").await["dead_letters"] == 1
    })
    .await;
    assert_eq!(status(&s, "p").await["dead_lettered"], 1);
    until("the backup has it", || async {
        values(&backup.inbox.events(), "n") == vec![1.0]
    })
    .await;
    assert_eq!(status(&s, "f").await["to_fallback"], 1);
    let (_, alarms) = s.json(s.get("/api/v1/alarms?originator=route:p")).await;
    assert_eq!(alarms["value"][0]["type"], "RouteDeadLetters", "{alarms}");
    s.stop().await;
}

#[tokio::test]
async fn a_paused_route_queues_and_a_restart_mid_backlog_loses_nothing() {
    let s = TestServer::start().await;
    let rx = Receiver::start().await;
    create(
        &s,
        json!({"id": "q", "select": {"types": ["telemetry"]}, "sink": {"kind": "webhook", "url": rx.url()}, "paused": true}),
    )
    .await;
    let key = s.device("d").await;
    for i in 0..30 {
        assert_eq!(s.send("d", &key, json!({"n": i})).await.status(), 200);
    }
    until("the backlog is measured", || async {
        let st = status(&s, "q").await;
        st["status"] == "paused" && st["lag"]["events"].as_u64().unwrap() >= 30
    })
    .await;
    assert_eq!(rx.inbox.batches(), 0);
    // A restart with the backlog queued: nothing is lost.
    let s = s.restart().await;
    assert_eq!(status(&s, "q").await["status"], "paused");
    let (st, v) = s
        .json(s.patch("/api/v1/routes/q", json!({"paused": false})))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 2);
    until("all delivered", || async {
        values(&rx.inbox.events(), "n").len() == 30
    })
    .await;
    assert_eq!(
        values(&rx.inbox.events(), "n"),
        (0..30).map(|i| i as f64).collect::<Vec<_>>()
    );
    until("no lag", || async {
        status(&s, "q").await["lag"]["events"] == 0
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_full_blocking_route_refuses_ingest_until_it_drains() {
    let s = TestServer::start().await;
    let mut rx = Receiver::start().await;
    rx.stop().await;
    create(
        &s,
        json!({"id": "full", "select": {"types": ["telemetry"]}, "sink": {"kind": "webhook", "url": rx.url()},
               "max_backlog": 100, "retry": quick_retry()}),
    )
    .await;
    let key = s.device("d").await;
    let mut refused = 0;
    let mut accepted = 0u64;
    for i in 0..400 {
        let r = s.send("d", &key, json!({"n": i})).await;
        match r.status().as_u16() {
            200 => accepted += 1,
            503 => {
                refused += 1;
                break;
            }
            other => panic!("unexpected {other}"),
        }
        if i % 50 == 49 {
            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        }
    }
    assert_eq!(refused, 1, "ingest is refused once the backlog is full");
    assert!(accepted >= 100, "{accepted}");
    rx.resume().await;
    until("every accepted point is delivered", || async {
        values(&rx.inbox.events(), "n").len() as u64 == accepted
    })
    .await;
    until("ingest is accepted again", || async {
        s.send("d", &key, json!({"n": -1})).await.status() == 200
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_dropping_route_counts_what_it_drops() {
    let s = TestServer::start().await;
    let mut rx = Receiver::start().await;
    rx.stop().await;
    create(
        &s,
        json!({"id": "drop", "select": {"types": ["telemetry"]}, "sink": {"kind": "webhook", "url": rx.url()},
               "max_backlog": 100, "on_full": "drop_oldest", "retry": quick_retry()}),
    )
    .await;
    let key = s.device("d").await;
    for i in 0..300 {
        assert_eq!(
            s.send("d", &key, json!({"n": i})).await.status(),
            200,
            "never refused"
        );
    }
    until("the oldest are dropped and counted", || async {
        status(&s, "drop").await["dropped"].as_u64().unwrap() > 0
    })
    .await;
    let (_, alarms) = s.json(s.get("/api/v1/alarms?originator=route:drop")).await;
    assert!(
        alarms["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["type"] == "RouteEventsDropped"),
        "{alarms}"
    );
    rx.resume().await;
    let dropped = status(&s, "drop").await["dropped"].as_u64().unwrap();
    until("the rest is delivered", || async {
        let got = values(&rx.inbox.events(), "n");
        got.last() == Some(&299.0)
    })
    .await;
    let got = values(&rx.inbox.events(), "n");
    assert!(
        got.len() as u64 + dropped >= 300,
        "{} + {dropped}",
        got.len()
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    s.stop().await;
}

#[tokio::test]
async fn route_definitions_are_checked_and_tested() {
    let s = TestServer::start().await;
    let rx = Receiver::start().await;
    for (body, field) in [
        (json!({"sink": {"kind": "carrier-pigeon"}}), "sink.kind:"),
        (json!({"sink": {"kind": "webhook"}}), "sink.url:"),
        (
            json!({"sink": {"kind": "webhook", "url": "ftp://x"}}),
            "sink.url:",
        ),
        (
            json!({"sink": {"kind": "webhook", "url": "http://x", "retries": 3}}),
            "sink.retries:",
        ),
        (
            json!({"sink": {"kind": "webhook", "url": "http://x"}, "select": {"types": ["everything"]}}),
            "select.types:",
        ),
        (
            json!({"sink": {"kind": "webhook", "url": "http://x"}, "batch": {"max": 0}}),
            "batch.max:",
        ),
        (
            json!({"sink": {"kind": "webhook", "url": "http://x"}, "on_full": "shrug"}),
            "on_full:",
        ),
        (
            json!({"sink": {"kind": "webhook", "url": "http://x"}, "select": {"query": "SELEC"}}),
            "select.query:",
        ),
        (
            json!({"sink": {"kind": "webhook", "url": "http://x", "headers": {"X-Twinhub-Signature": "x"}}}),
            "sink.headers.X-Twinhub-Signature:",
        ),
    ] {
        let r = s.post("/api/v1/routes", body.clone()).send().await.unwrap();
        let msg = error_of(r, 400, "bad_request").await;
        assert!(msg.starts_with(field), "{body} → {msg}");
    }
    let r = s
        .post(
            "/api/v1/routes",
            json!({"sink": {"kind": "webhook", "url": "http://x", "secret": "missing"}}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .starts_with("sink.secret:"));
    let r = s
        .post("/api/v1/routes", json!({"sink": {"kind": "webhook", "url": "http://x"}, "select": {"condition": "temperature >"}}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .starts_with("select.condition:"));

    create(
        &s,
        json!({"id": "t", "sink": {"kind": "webhook", "url": rx.url()}}),
    )
    .await;
    let r = s
        .post(
            "/api/v1/routes",
            json!({"id": "t", "sink": {"kind": "webhook", "url": rx.url()}}),
        )
        .send()
        .await
        .unwrap();
    error_of(r, 409, "conflict").await;
    let (st, v) = s.json(s.post("/api/v1/routes/t/test", json!({}))).await;
    assert_eq!(st, 200);
    assert_eq!(v["delivered"], true, "{v}");
    until("the test event arrived", || async {
        rx.inbox.events().iter().any(|e| e["type"] == "test")
    })
    .await;
    let (_, list) = s.json(s.get("/api/v1/routes")).await;
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    let r = s.delete("/api/v1/routes/t").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.get("/api/v1/routes/t").send().await.unwrap();
    error_of(r, 404, "not_found").await;
    s.stop().await;
}

fn example(name: &str, url: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/routes")
        .join(name);
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["sink"]["url"] = json!(url);
    v
}

#[tokio::test]
async fn the_example_templates_give_erp_shaped_documents() {
    let s = TestServer::start().await;
    let rx = Receiver::start().await;
    s.http
        .put(s.url("/api/v1/secrets/sap-hmac"))
        .bearer_auth(&s.token)
        .json(&json!({"value": "k"}))
        .send()
        .await
        .unwrap();
    let r = s
        .post(
            "/api/v1/models",
            serde_json::from_str(twinhub_server::ontologies::PROCESS_PLANT).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .http
        .put(s.url("/api/v1/twins/r1"))
        .bearer_auth(&s.token)
        .json(&json!({"$metadata": {"$model": "dtmi:twinhub:plant:Reactor;1"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut sap = example("sap-idoc.json", &rx.url());
    sap["batch"] = json!({"max": 200, "linger": "10ms"});
    create(&s, sap).await;
    let mut erp = example("oracle-erp.json", &rx.url());
    erp["select"]["types"] = json!(["alarm"]);
    create(&s, erp).await;
    let r = s
        .post(
            "/api/v1/rules",
            json!({"id": "hot", "name": "hot", "select": {"twin": "r1"}, "condition": "temperature > 380",
                   "alarm": {"type": "Overheat", "severity": "major"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .post("/api/v1/devices", json!({"id": "r1-dev", "twin_id": "r1"}))
        .send()
        .await
        .unwrap();
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.send(
            "r1-dev",
            &key,
            json!([{"ts": 1_800_000_000_000i64, "temperature": 390.5, "pressure": 6.25}])
        )
        .await
        .status(),
        200
    );
    until("both documents arrive", || async {
        let docs = rx.inbox.events();
        docs.iter().any(|d| d.get("IDOC").is_some())
            && docs.iter().any(|d| d.get("WorkRequestNumber").is_some())
    })
    .await;
    let docs = rx.inbox.events();
    let idoc = docs.iter().find(|d| d.get("IDOC").is_some()).unwrap();
    assert_eq!(idoc["IDOC"]["EDI_DC40"]["IDOCTYP"], "ZTWIN_PROD01");
    assert!(idoc["IDOC"]["EDI_DC40"]["DOCNUM"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    let seg = &idoc["IDOC"]["E1PRODEVT"][0];
    assert_eq!(seg["EQUNR"], "r1");
    assert_eq!(seg["MEASTS"], 1_800_000_000_000i64);
    let values: Vec<(String, f64)> = seg["E1VALUE"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["ATNAM"].as_str().unwrap().to_string(),
                v["ATWRT"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        values,
        vec![("PRESSURE".into(), 6.25), ("TEMPERATURE".into(), 390.5)]
    );
    let wr = docs
        .iter()
        .find(|d| d.get("WorkRequestNumber").is_some())
        .unwrap();
    assert_eq!(wr["AssetNumber"], "r1");
    assert_eq!(wr["Criticality"], "HIGH");
    assert_eq!(wr["Description"], "Overheat on r1");
    assert!(
        wr["WorkRequestNumber"]
            .as_str()
            .unwrap()
            .starts_with("TWH-"),
        "{wr}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_device_function_call_is_answered_through_its_route() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let s = TestServer::start().await;
    // The function's endpoint: adds a and b, and shows who called.
    let app = axum::Router::new().route(
        "/fn",
        axum::routing::post(
            |headers: axum::http::HeaderMap, body: axum::Json<Value>| async move {
                let p = &body.0["payload"];
                axum::Json(json!({
                    "sum": p["a"].as_f64().unwrap_or(0.0) + p["b"].as_f64().unwrap_or(0.0),
                    "device": body.0["device"], "function": body.0["function"],
                    "signed": headers.contains_key("x-twinhub-signature"),
                }))
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/fn", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    s.http
        .put(s.url("/api/v1/secrets/fn-key"))
        .bearer_auth(&s.token)
        .json(&json!({"value": "k"}))
        .send()
        .await
        .unwrap();
    let v = create(
        &s,
        json!({"id": "calc", "select": {"functions": ["add"]},
               "sink": {"kind": "function", "url": url, "secret": "fn-key", "timeout": "5s"}}),
    )
    .await;
    assert_eq!(v["sink"]["kind"], "function");
    let r = s
        .post(
            "/api/v1/routes",
            json!({"select": {"functions": ["x"]}, "sink": {"kind": "webhook", "url": url}}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .starts_with("select.functions:"));

    let key = s.device("calc-dev").await;
    let mut opts = MqttOptions::new("calc-dev", s.mqtt().ip().to_string(), s.mqtt().port());
    opts.set_credentials("calc-dev", &key);
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe("devices/calc-dev/functions/replies/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send((String::new(), Value::Null));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), serde_json::from_slice(&p.payload).unwrap()));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    assert_eq!(next(&mut replies).await.0, "", "subscribed");
    client
        .publish(
            "devices/calc-dev/functions/add/req-1",
            QoS::AtLeastOnce,
            false,
            r#"{"a": 2, "b": 3.5}"#,
        )
        .await
        .unwrap();
    let (topic, reply) = next(&mut replies).await;
    assert_eq!(topic, "devices/calc-dev/functions/replies/req-1");
    assert_eq!(
        reply,
        json!({"status": 200, "payload": {"sum": 5.5, "device": "calc-dev", "function": "add", "signed": true}})
    );
    client
        .publish(
            "devices/calc-dev/functions/mul/req-2",
            QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    let (topic, reply) = next(&mut replies).await;
    assert_eq!(topic, "devices/calc-dev/functions/replies/req-2");
    assert_eq!(reply["status"], 404, "{reply}");
    s.stop().await;
}

async fn next(r: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(std::time::Duration::from_secs(10), r.recv())
        .await
        .expect("a reply in time")
        .unwrap()
}
