//! Rules and alarms through the real interfaces: rules over HTTP, telemetry
//! over HTTP and MQTT, alarms listed, acknowledged and cleared over HTTP.
//! The lifecycle, `for` and hysteresis by event time, no-data on the
//! injected clock, exactly one alarm under concurrency, state and position
//! kept across a restart, and clear errors for bad rules.

use crate::common::*;
use crate::mqtt::*;
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub(crate) const T0: i64 = 1_764_500_000_000;

pub(crate) async fn rule(s: &TestServer, body: Value) -> Value {
    let (st, v) = s.json(s.post("/api/v1/rules", body)).await;
    assert_eq!(st, 201, "{v}");
    v
}

pub(crate) fn hot(id: &str, twin: &str) -> Value {
    json!({
        "id": id, "name": "Reactor too hot",
        "select": {"twin": twin},
        "condition": "temperature > 375", "clear": "temperature < 370",
        "alarm": {"type": "HighTemperature", "severity": "major"},
    })
}

pub(crate) async fn alarms(s: &TestServer, query: &str) -> Vec<Value> {
    let (st, v) = s.json(s.get(&format!("/api/v1/alarms?{query}"))).await;
    assert_eq!(st, 200, "{v}");
    v["value"].as_array().unwrap().clone()
}

/// Waits until the alarms matching `query` satisfy `f` (rules run after
/// the commit that acknowledged the telemetry), and returns them.
pub(crate) async fn alarms_until(
    s: &TestServer,
    query: &str,
    what: &str,
    f: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let a = alarms(s, query).await;
        if f(&a) {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; alarms: {a:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until `rule` has evaluated `n` events, so an absence of alarms
/// afterwards means something.
pub(crate) async fn evaluated(s: &TestServer, rule: &str, n: u64) {
    until(&format!("{n} evaluations of {rule}"), || async {
        let (_, r) = s.json(s.get(&format!("/api/v1/rules/{rule}"))).await;
        r["status"]["evaluations"] == n
    })
    .await;
}

pub(crate) async fn temp(s: &TestServer, id: &str, key: &str, at_s: i64, t: f64) {
    let r = s
        .send(id, key, json!({"ts": T0 + at_s * 1000, "temperature": t}))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_alarm_is_raised_counted_acknowledged_and_cleared_by_recovery() {
    let s = TestServer::start().await;
    let key = s.device("r1").await;
    let r = rule(&s, hot("hot", "r1")).await;
    assert_eq!(r["version"], 1);
    assert_eq!(r["status"]["state"], "ok");
    temp(&s, "r1", &key, 0, 350.0).await;
    temp(&s, "r1", &key, 1, 380.0).await;
    temp(&s, "r1", &key, 2, 381.5).await;
    let a = alarms_until(&s, "status=active", "an active alarm counting 2", |a| {
        a.len() == 1 && a[0]["count"] == 2
    })
    .await;
    let a = &a[0];
    assert_eq!(a["status"], "ACTIVE_UNACK");
    assert_eq!(a["type"], "HighTemperature");
    assert_eq!(a["severity"], "major");
    assert_eq!(a["originator"], "r1");
    assert_eq!(a["rule"], "hot");
    assert_eq!(a["start_ts"], T0 + 1000);
    assert_eq!(a["last_value"], json!({"temperature": 381.5}));
    let id = a["id"].as_str().unwrap().to_string();
    // Inside the hysteresis band: nothing changes.
    temp(&s, "r1", &key, 3, 372.0).await;
    let (st, acked) = s
        .json(s.post(&format!("/api/v1/alarms/{id}/ack"), json!(null)))
        .await;
    assert_eq!(st, 200, "{acked}");
    assert_eq!(acked["status"], "ACTIVE_ACK");
    assert_eq!(acked["ack_by"], "admin");
    let r = s
        .post(&format!("/api/v1/alarms/{id}/ack"), json!(null))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 409, "conflict")
        .await
        .contains("already acknowledged"));
    // Recovery clears it.
    temp(&s, "r1", &key, 4, 365.0).await;
    let a = alarms_until(&s, "", "the alarm cleared", |a| {
        a.len() == 1 && a[0]["status"] == "CLEARED_ACK"
    })
    .await;
    assert_eq!(a[0]["end_ts"], T0 + 4000);
    assert_eq!(a[0]["count"], 2, "the in-band point did not count");
    // A new excursion opens a new alarm.
    temp(&s, "r1", &key, 5, 390.0).await;
    let a = alarms_until(&s, "status=active", "a second alarm", |a| a.len() == 1).await;
    assert_ne!(a[0]["id"], id);
    assert_eq!(a[0]["status"], "ACTIVE_UNACK");
    assert_eq!(alarms(&s, "status=cleared").await.len(), 1);
    // Comments and audit.
    let (st, c) = s
        .json(s.post(
            &format!("/api/v1/alarms/{id}/comments"),
            json!({"text": "valve replaced"}),
        ))
        .await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["comments"][0]["text"], "valve replaced");
    let (_, audit) = s.json(s.get("/api/v1/audit")).await;
    let acks: Vec<&Value> = audit["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "alarm.ack")
        .collect();
    assert_eq!(acks.len(), 1, "{audit}");
    assert_eq!(acks[0]["target"], id.as_str());
    s.stop().await;
}

#[tokio::test]
async fn for_durations_count_event_time() {
    let s = TestServer::start().await;
    let key = s.device("r2").await;
    let mut body = hot("hot30", "r2");
    body["for"] = json!("30s");
    rule(&s, body).await;
    // 20 s over the threshold, a dip, then 30 s over it.
    for i in 0..=20 {
        temp(&s, "r2", &key, i, 380.0).await;
    }
    temp(&s, "r2", &key, 21, 360.0).await;
    for i in 22..=51 {
        temp(&s, "r2", &key, i, 380.0).await;
    }
    evaluated(&s, "hot30", 52).await;
    assert!(alarms(&s, "").await.is_empty(), "29 s is not 30 s");
    temp(&s, "r2", &key, 52, 380.0).await;
    let a = alarms_until(&s, "", "the alarm after 30 s", |a| a.len() == 1).await;
    assert_eq!(a[0]["start_ts"], T0 + 52_000);
    s.stop().await;
}

/// ThingsBoard's users see duplicate alarms when events race; here 200
/// events over the threshold, sent at once from several HTTP and MQTT
/// clients, make exactly one open alarm counting all 200 — and 50 twins at
/// once make one alarm each.
#[tokio::test]
async fn concurrent_events_make_exactly_one_alarm_per_twin() {
    let s = TestServer::start().await;
    let key = s.device("hot1").await;
    rule(&s, hot("hot", "hot1")).await;
    let mut tasks = Vec::new();
    for w in 0..3i64 {
        // Two HTTP writers, 50 events each…
        if w < 2 {
            let (http, url, key) = (
                s.http.clone(),
                s.url("/api/v1/devices/hot1/telemetry"),
                key.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..50i64 {
                    let r = http
                        .post(&url)
                        .basic_auth("hot1", Some(&key))
                        .json(&json!({"ts": T0 + w * 1000 + i, "temperature": 380.0 + i as f64}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            }));
        } else {
            // …and the device's MQTT connection, 100 events (QoS 1).
            let (addr, key) = (s.mqtt(), key.clone());
            tasks.push(tokio::spawn(async move {
                let (mut c, ack) = open5(addr, "hot1", Some(("hot1", &key)), true, None).await;
                assert_eq!(ack.code, v5::ConnectReturnCode::Success);
                for i in 0..100i64 {
                    let body = json!({"ts": T0 + w * 1000 + i, "temperature": 380.0 + i as f64});
                    c.send5(pub5(
                        "devices/hot1/telemetry",
                        1,
                        (i + 1) as u16,
                        body.to_string().as_bytes(),
                        None,
                    ))
                    .await;
                    match c.recv5().await {
                        v5::Packet::PubAck(a) => assert_eq!(a.pkid, (i + 1) as u16),
                        p => panic!("expected PUBACK, got {p:?}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let a = alarms_until(&s, "originator=hot1", "one alarm counting 200", |a| {
        a.iter()
            .map(|a| a["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 200
    })
    .await;
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["count"], 200);

    // 50 twins of a model at once, 10 events each.
    let model = json!([{"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Kiln;1", "@type": "Interface",
        "contents": [{"@type": "Telemetry", "name": "temperature", "schema": "double"}]}]);
    let (st, v) = s.json(s.post("/api/v1/models", model)).await;
    assert_eq!(st, 201, "{v}");
    let mut keys = Vec::new();
    for i in 0..50 {
        let twin = json!({"$metadata": {"$model": "dtmi:test:Kiln;1"}});
        let r = s
            .http
            .put(s.url(&format!("/api/v1/twins/m{i}")))
            .bearer_auth(&s.token)
            .json(&twin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        keys.push(s.device(&format!("m{i}")).await);
    }
    rule(
        &s,
        json!({
            "id": "fleet", "name": "any hot kiln", "select": {"model": "dtmi:test:Kiln;1"},
            "condition": "temperature > 375", "alarm": {"type": "Hot", "severity": "minor"},
        }),
    )
    .await;
    let mut tasks = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let (http, url, id) = (
            s.http.clone(),
            s.url(&format!("/api/v1/devices/m{i}/telemetry")),
            format!("m{i}"),
        );
        tasks.push(tokio::spawn(async move {
            for j in 0..10i64 {
                let r = http
                    .post(&url)
                    .basic_auth(&id, Some(&key))
                    .json(&json!({"ts": T0 + j, "temperature": 400.0}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let a = alarms_until(
        &s,
        "type=Hot&limit=1000",
        "50 alarms counting 10 each",
        |a| a.len() == 50 && a.iter().all(|a| a["count"] == 10),
    )
    .await;
    assert_eq!(a.len(), 50);
    s.stop().await;
}

#[tokio::test]
async fn rule_state_and_open_alarms_survive_a_restart_without_duplicates() {
    let s = TestServer::start().await;
    let key = s.device("r3").await;
    rule(&s, hot("hot", "r3")).await;
    for i in 0..3 {
        temp(&s, "r3", &key, i, 380.0).await;
    }
    alarms_until(&s, "", "an alarm counting 3", |a| {
        a.len() == 1 && a[0]["count"] == 3
    })
    .await;
    let s = s.restart().await;
    temp(&s, "r3", &key, 3, 381.0).await;
    let a = alarms_until(&s, "", "the same alarm counting 4", |a| {
        a.len() == 1 && a[0]["count"] == 4
    })
    .await;
    assert_eq!(a[0]["status"], "ACTIVE_UNACK");
    // The rule is still raised: the hysteresis clear still applies.
    temp(&s, "r3", &key, 4, 360.0).await;
    alarms_until(&s, "status=cleared", "cleared after the restart", |a| {
        a.len() == 1
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn no_data_raises_on_the_clock_and_clears_when_data_returns() {
    let s = TestServer::start().await;
    let key = s.device("quiet").await;
    rule(
        &s,
        json!({
            "id": "silent", "name": "no data", "kind": "no_data", "select": {"twin": "quiet"},
            "timeout": "60s", "alarm": {"type": "NoData", "severity": "warning"},
        }),
    )
    .await;
    temp(&s, "quiet", &key, 0, 300.0).await;
    // The engine saw the point (its silence is counted from when it does),
    // then the clock moves on 61 s (no sleeping for a minute).
    evaluated(&s, "silent", 1).await;
    s.clock.advance_us(61_000_000);
    let a = alarms_until(&s, "type=NoData", "a no-data alarm", |a| a.len() == 1).await;
    assert_eq!(a[0]["severity"], "warning");
    temp(&s, "quiet", &key, 1, 300.0).await;
    alarms_until(
        &s,
        "type=NoData&status=cleared",
        "cleared by new data",
        |a| a.len() == 1,
    )
    .await;
    s.stop().await;
}

/// A no-data state's row is not rewritten for every point (only once its
/// `last_seen` moved by a tenth of the timeout), so after a restart the row
/// may be behind the last point: it is read back late-biased, and the
/// alarm never comes early. Here the row says t0 and the last point came
/// at t0+4 s; restored as t0 the alarm would be raised at t0+60 s, beside
/// a witness twin's, which is due then.
#[tokio::test]
async fn no_data_after_a_restart_is_never_raised_early() {
    let s = TestServer::start().await;
    let quiet = s.device("quiet2").await;
    let witness = s.device("witness").await;
    let no_data = |id: &str, twin: &str, timeout: &str| {
        json!({
            "id": id, "name": "no data", "kind": "no_data", "select": {"twin": twin},
            "timeout": timeout, "alarm": {"type": "NoData", "severity": "warning"},
        })
    };
    rule(&s, no_data("silent-q", "quiet2", "60s")).await;
    rule(&s, no_data("silent-w", "witness", "56s")).await;
    temp(&s, "quiet2", &quiet, 0, 300.0).await;
    evaluated(&s, "silent-q", 1).await;
    s.clock.advance_us(4_000_000);
    temp(&s, "quiet2", &quiet, 4, 300.0).await;
    evaluated(&s, "silent-q", 2).await;
    let s = s.restart().await;
    // The witness is first seen now (t0+4 s): due at t0+60 s.
    temp(&s, "witness", &witness, 4, 300.0).await;
    evaluated(&s, "silent-w", 1).await;
    s.clock.advance_us(57_000_000);
    let raised = alarms_until(&s, "type=NoData", "the witness's no-data alarm", |a| {
        !a.is_empty()
    })
    .await;
    let originators: Vec<&Value> = raised.iter().map(|a| &a["originator"]).collect();
    assert_eq!(
        originators,
        ["witness"],
        "quiet2's last point was at t0+4 s: due at t0+64 s"
    );
    s.clock.advance_us(3_000_000);
    alarms_until(
        &s,
        "type=NoData&originator=quiet2",
        "quiet2's alarm at t0+64 s",
        |a| a.len() == 1,
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn bad_rules_are_refused_with_the_field_and_the_position() {
    let s = TestServer::start().await;
    let mut body = hot("bad", "r1");
    body["condition"] = json!("temperature >\n  && pressure");
    let r = s.post("/api/v1/rules", body).send().await.unwrap();
    let msg = error_of(r, 422, "unprocessable_entity").await;
    assert!(
        msg.contains("condition") && msg.contains("line 2, column 3"),
        "{msg}"
    );
    let mut body = hot("bad", "r1");
    body["condition"] = json!("temperature * 2 > 750");
    let r = s.post("/api/v1/rules", body).send().await.unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("2.0"));
    let mut body = hot("bad", "r1");
    body["alarm"]["severity"] = json!("apocalyptic");
    let r = s.post("/api/v1/rules", body).send().await.unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("severity"));
    let mut body = hot("bad", "r1");
    body["select"] = json!({});
    let r = s.post("/api/v1/rules", body).send().await.unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("select"));
    rule(&s, hot("dup", "r1")).await;
    let r = s
        .post("/api/v1/rules", hot("dup", "r1"))
        .send()
        .await
        .unwrap();
    error_of(r, 409, "conflict").await;
    s.stop().await;
}

#[tokio::test]
async fn a_failing_rule_shows_its_error_and_others_go_on() {
    let s = TestServer::start().await;
    let key = s.device("r4").await;
    let mut broken = hot("needs-pressure", "r4");
    broken["condition"] = json!("pressure > 5");
    broken["clear"] = json!(null);
    rule(&s, broken).await;
    rule(&s, hot("hot", "r4")).await;
    temp(&s, "r4", &key, 0, 390.0).await;
    alarms_until(&s, "", "the working rule's alarm", |a| a.len() == 1).await;
    let (_, r) = s.json(s.get("/api/v1/rules/needs-pressure")).await;
    assert_eq!(r["status"]["state"], "failing", "{r}");
    assert!(
        r["status"]["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("pressure"),
        "{r}"
    );
    assert_eq!(r["status"]["last_error"]["twin"], "r4");
    // Disabling is a new version; a disabled rule raises nothing.
    let (st, r) = s
        .json(s.patch("/api/v1/rules/hot", json!({"enabled": false})))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["version"].clone(), r["enabled"].clone()),
        (json!(2), json!(false))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_zscore_rule_learns_the_baseline_and_flags_a_spike() {
    let s = TestServer::start().await;
    let key = s.device("z1").await;
    rule(&s, json!({
        "id": "spiky", "name": "temperature spike", "kind": "statistical", "select": {"twin": "z1"},
        "statistic": {"property": "temperature", "method": "zscore", "threshold": 4, "window": 50, "warmup": 20},
        "alarm": {"type": "TemperatureAnomaly", "severity": "minor"},
    }))
    .await;
    for i in 0..60 {
        temp(&s, "z1", &key, i, 350.0 + ((i * 7) % 5) as f64 * 0.2).await;
    }
    temp(&s, "z1", &key, 60, 351.0).await;
    evaluated(&s, "spiky", 61).await;
    assert!(
        alarms(&s, "").await.is_empty(),
        "the baseline is not an anomaly"
    );
    temp(&s, "z1", &key, 61, 380.0).await;
    let a = alarms_until(&s, "", "an anomaly alarm", |a| a.len() == 1).await;
    assert_eq!(a[0]["last_value"]["temperature"].as_f64(), Some(380.0));
    temp(&s, "z1", &key, 62, 350.4).await;
    alarms_until(&s, "status=cleared", "back to normal", |a| a.len() == 1).await;
    let mut bad = json!({
        "name": "x", "kind": "statistical", "select": {"twin": "z1"},
        "statistic": {"property": "temperature", "method": "flatline"},
        "alarm": {"type": "Stuck", "severity": "minor"},
    });
    let r = s.post("/api/v1/rules", bad.clone()).send().await.unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .contains("statistic.duration"));
    bad["statistic"]["duration"] = json!("10m");
    rule(&s, bad).await;
    s.stop().await;
}

/// A calculated property is stored like telemetry (a virtual sensor) and
/// feeds other rules.
#[tokio::test]
async fn calculated_properties_are_stored_and_feed_other_rules() {
    let s = TestServer::start().await;
    let key = s.device("c1").await;
    rule(
        &s,
        json!({
            "id": "fahrenheit", "name": "°F", "kind": "calculated", "select": {"twin": "c1"},
            "expression": "temperature * 1.8 - 459.67", "output": "temperature_f",
        }),
    )
    .await;
    rule(
        &s,
        json!({
            "id": "hot-f", "name": "hot in °F", "select": {"twin": "c1"},
            "condition": "temperature_f > 200", "alarm": {"type": "HotF", "severity": "minor"},
        }),
    )
    .await;
    temp(&s, "c1", &key, 0, 400.0).await;
    let a = alarms_until(&s, "", "an alarm on the calculated value", |a| a.len() == 1).await;
    assert_eq!(a[0]["type"], "HotF");
    let (st, h) = s
        .json(s.get(&format!(
            "/api/v1/twins/c1/telemetry/temperature_f?from={T0}"
        )))
        .await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["points"][0]["ts"], T0);
    assert!(
        (h["points"][0]["value"].as_f64().unwrap() - 260.33).abs() < 1e-9,
        "{h}"
    );
    let r = s
        .post(
            "/api/v1/rules",
            json!({
                "name": "loop", "kind": "calculated", "select": {"twin": "c1"},
                "expression": "x + 1.0", "output": "x",
            }),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("its own output"));
    s.stop().await;
}

/// A model-output rule watches a soft sensor's prediction; its actions
/// write a twin property and put a `rule` event on the stream when the
/// alarm is raised.
#[tokio::test]
async fn model_output_rules_watch_a_soft_sensor_and_actions_follow_alarms() {
    let s = TestServer::start().await;
    let keys = crate::ml::yield_reactors(&s, &[("y1", "A")]).await;
    crate::ml::upload_yield(&s, "1.0.0").await;
    let (st, v) = s
        .json(s.post("/api/v1/ml/bindings", json!({"id": "yield", "model": "reactor-yield",
            "select": {"twin": "y1"},
            "outputs": {"prediction": "yield_pred", "lower": "yield_pred_lower", "upper": "yield_pred_upper"}})))
        .await;
    assert_eq!(st, 201, "{v}");
    let r = s
        .post(
            "/api/v1/rules",
            json!({
                "name": "x", "kind": "model_output", "select": {"twin": "y1"},
                "model_output": {"binding": "nope", "check": "band", "max": 1.0},
                "alarm": {"type": "YieldOff", "severity": "major"},
            }),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("nope"));
    let stream = s.get("/api/v1/events?types=rule").send().await.unwrap();
    rule(&s, json!({
        "id": "yield-band", "name": "yield outside 0–1 %", "kind": "model_output", "select": {"twin": "y1"},
        "model_output": {"binding": "yield", "check": "band", "min": 0.0, "max": 1.0},
        "alarm": {"type": "YieldOff", "severity": "major"},
        "actions": [
            {"set_property": {"name": "line", "value": "HOLD"}},
            {"event": {"page": "shift-lead"}},
        ],
    }))
    .await;
    let r = s
        .send(
            "d-y1",
            &keys[0],
            json!({"ts": T0, "temperature": 355.0, "pressure": 6.0, "flow_rate": 100.0}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let a = alarms_until(&s, "type=YieldOff", "the model-output alarm", |a| {
        a.len() == 1
    })
    .await;
    assert_eq!(a[0]["originator"], "y1");
    let evs = crate::events::read_events(stream, 1).await;
    assert_eq!(evs[0].1, "rule");
    assert_eq!(evs[0].2["data"]["data"]["page"], "shift-lead");
    assert_eq!(evs[0].2["data"]["op"], "raise");
    until("the action's property write", || async {
        let (_, t) = s.json(s.get("/api/v1/twins/y1")).await;
        t["line"] == "HOLD"
    })
    .await;
    s.stop().await;
}

/// Exactly once across SIGKILL: the real binary is killed at random
/// moments while a device keeps sending events that cross the threshold.
/// Afterwards the one open alarm has counted every stored event — none
/// twice (the batch replayed after a crash starts from the saved state),
/// none lost — and at least every acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_counts_are_exact_across_kill_9() {
    use crate::process::{device_key, get_json, kill9, layout, login, post_json, start_env, PW};
    let env: &[(&str, &str)] = &[("TWINHUB_STORE_FLUSH_POINTS", "1000")];
    let (_root, dir) = layout();
    let mut s = start_env(&dir, true, env);
    let token = login(&s.base, PW).await;
    let http = reqwest::Client::new();
    let key = device_key(&http, &s.base, &token, "k1").await;
    let r = post_json(
        &http,
        &format!("{}/api/v1/rules", s.base),
        &token,
        &json!({
            "id": "any", "name": "every event", "select": {"twin": "k1"},
            "condition": "v > 0", "alarm": {"type": "Seen", "severity": "warning"},
        }),
    )
    .await;
    assert_eq!(r["id"], "any", "{r}");
    let mut acked = 0u64;
    let mut ts = T0;
    for round in 0..4u64 {
        if round > 0 {
            s = start_env(&dir, false, env);
        }
        let until_kill = Instant::now() + Duration::from_millis(300 + 150 * round);
        while Instant::now() < until_kill {
            let body: Vec<Value> = (0..20).map(|i| json!({"ts": ts + i, "v": 1})).collect();
            ts += 20;
            let r = http
                .post(format!("{}/api/v1/devices/k1/telemetry", s.base))
                .basic_auth("k1", Some(&key))
                .json(&body)
                .send()
                .await;
            if matches!(r, Ok(ref r) if r.status().is_success()) {
                acked += 20;
            }
        }
        kill9(&mut s);
    }
    s = start_env(&dir, false, env);
    let token = login(&s.base, PW).await;
    let count_stored = || {
        let (http, base, token) = (http.clone(), s.base.clone(), token.clone());
        async move {
            let h = get_json(
                &http,
                &format!("{base}/api/v1/twins/k1/telemetry/v?from=0&bucket=1d&agg=count"),
                &token,
            )
            .await;
            h["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["count"].as_u64().unwrap())
                .sum::<u64>()
        }
    };
    let stored = count_stored().await;
    assert!(stored >= acked, "stored {stored} < acknowledged {acked}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let alarm = loop {
        let a = get_json(
            &http,
            &format!("{}/api/v1/alarms?type=Seen", s.base),
            &token,
        )
        .await;
        let list = a["value"].as_array().unwrap().clone();
        assert!(list.len() <= 1, "one alarm only: {a}");
        if list
            .first()
            .is_some_and(|x| x["count"].as_u64() == Some(stored))
        {
            break list[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the alarm should count all {stored} stored events (acknowledged {acked}): {a}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(alarm["status"], "ACTIVE_UNACK");
    kill9(&mut s);
}

/// A drift rule raises when the bound model's inputs drift from its
/// training distribution (checked on the injected clock).
#[tokio::test]
async fn model_drift_raises_an_alarm_on_the_model() {
    let s = TestServer::start().await;
    crate::ml::yield_reactors(&s, &[("y2", "A")]).await;
    crate::ml::upload_yield(&s, "1.0.0").await;
    let (st, v) = s
        .json(s.post(
            "/api/v1/ml/bindings",
            json!({"id": "yield", "model": "reactor-yield",
            "select": {"twin": "y2"}, "outputs": {"prediction": "yield_pred"}}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    let r = s
        .post(
            "/api/v1/rules",
            json!({
                "name": "x", "kind": "model_output", "select": {"twin": "y2"},
                "model_output": {"binding": "yield", "check": "drift"},
                "alarm": {"type": "ModelDrift", "severity": "minor"},
            }),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("psi"));
    rule(&s, json!({
        "id": "drift", "name": "yield model drift", "kind": "model_output", "select": {"twin": "y2"},
        "model_output": {"binding": "yield", "check": "drift", "psi": 0.2},
        "alarm": {"type": "ModelDrift", "severity": "minor"},
    }))
    .await;
    // Hot inputs, far from the training distribution.
    let rows: Vec<Value> = (0..200)
        .map(|i| json!({"temperature": 375 + (i % 10), "pressure": 4 + (i % 5), "flow_rate": 80 + (i % 40)}))
        .collect();
    let (st, _) = s
        .json(s.post(
            "/api/v1/ml/models/reactor-yield/predict/batch",
            json!({"rows": rows}),
        ))
        .await;
    assert_eq!(st, 200);
    s.clock.advance_us(11_000_000);
    let a = alarms_until(&s, "type=ModelDrift", "a drift alarm", |a| a.len() == 1).await;
    assert_eq!(a[0]["originator"], "ml:reactor-yield");
    assert!(a[0]["last_value"]["psi"].as_f64().unwrap() > 0.2, "{a:?}");
    s.stop().await;
}

/// Without rules nothing is kept for the engine (ingest pays nothing for
/// rules nobody wrote); the first rule starts its durable position, and
/// deleting the last one ends it.
#[tokio::test]
async fn the_engine_keeps_a_position_only_while_rules_exist() {
    let s = TestServer::start().await;
    let key = s.device("p1").await;
    temp(&s, "p1", &key, 0, 380.0).await;
    let m = s.metrics().await;
    assert_eq!(metric_value(&m, "twinhub_outbox_rows"), Some(0.0), "{m}");
    assert!(!m.contains("consumer=\"rules\""), "{m}");
    rule(&s, hot("hot", "p1")).await;
    // The position exists once the rule is created, not once the engine
    // gets round to it: telemetry committed in between would be skipped.
    assert!(
        s.metrics()
            .await
            .contains("twinhub_outbox_consumer_lag{consumer=\"rules\"}"),
        "no position right after the rule's creation"
    );
    temp(&s, "p1", &key, 1, 381.0).await;
    alarms_until(&s, "", "the first event after the rule raises", |a| {
        a.len() == 1
    })
    .await;
    assert!(s
        .metrics()
        .await
        .contains("twinhub_outbox_consumer_lag{consumer=\"rules\"}"));
    let r = s.delete("/api/v1/rules/hot").send().await.unwrap();
    assert_eq!(r.status(), 204);
    until("the position dropped", || async {
        !s.metrics().await.contains("consumer=\"rules\"")
    })
    .await;
    temp(&s, "p1", &key, 2, 382.0).await;
    assert_eq!(
        metric_value(&s.metrics().await, "twinhub_outbox_rows"),
        Some(0.0)
    );
    s.stop().await;
}
