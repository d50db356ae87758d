//! An acknowledgement means durable: with a fault injected in the store,
//! no client is told that a message was kept. MQTT 5 gets a reason code,
//! MQTT 3.1.1 (which has no negative PUBACK) a closed connection and so a
//! resend; HTTP a 503. Invalid telemetry is refused alone, never with its
//! neighbours.

use crate::common::*;
use crate::mqtt::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};
use std::time::Duration;
use twinhub_server::store::health::Faults;

async fn history(s: &TestServer, twin: &str, name: &str) -> Vec<Value> {
    let (st, v) = s
        .json(s.get(&format!("/api/v1/twins/{twin}/telemetry/{name}?from=0")))
        .await;
    if st == 404 {
        return Vec::new();
    }
    v["points"].as_array().cloned().unwrap_or_default()
}

fn commit_fault(s: &TestServer, on: bool) {
    Faults::set(&s.store().faults().commit, on);
}

/// A 3.1.1 publish with the DUP flag, as a client resends after reconnect.
fn dup4(topic: &str, pkid: u16, payload: &[u8]) -> v4::Packet {
    match pub4(topic, 1, pkid, payload, false) {
        v4::Packet::Publish(mut p) => {
            p.dup = true;
            v4::Packet::Publish(p)
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn mqtt_3_1_1_gets_no_puback_when_storing_fails_and_its_resend_is_kept() {
    let s = TestServer::start().await;
    let key = s.device("d311").await;
    let topic = "devices/d311/telemetry";
    let (mut c, _) = open4(s.mqtt(), "d311", Some(("d311", &key)), false).await;
    c.send4(pub4(topic, 1, 1, br#"{"ts": 1000, "v": 1}"#, false))
        .await;
    assert!(matches!(c.recv4().await, v4::Packet::PubAck(a) if a.pkid == 1));

    commit_fault(&s, true);
    c.send4(pub4(topic, 1, 2, br#"{"ts": 2000, "v": 2}"#, false))
        .await;
    // No PUBACK: the connection closes, so the client keeps the message.
    match c.recv4_within(WAIT).await {
        Got4::Closed => {}
        Got4::P(p) => panic!("expected the connection to close without PUBACK, got {p:?}"),
        Got4::Silent => panic!("the connection stayed open without an answer"),
    }
    assert_eq!(history(&s, "d311", "v").await.len(), 1);
    let m = s.metrics().await;
    assert!(
        m.contains("twinhub_mqtt_unacknowledged_closes_total 1"),
        "{m}"
    );

    // The fault clears; the client reconnects and resends: now it is kept.
    commit_fault(&s, false);
    let (mut c, ack) = open4(s.mqtt(), "d311", Some(("d311", &key)), false).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    c.send4(dup4(topic, 2, br#"{"ts": 2000, "v": 2}"#)).await;
    assert!(matches!(c.recv4().await, v4::Packet::PubAck(a) if a.pkid == 2));
    assert_eq!(
        history(&s, "d311", "v").await,
        vec![
            json!({"ts": 1000, "value": 1}),
            json!({"ts": 2000, "value": 2})
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_1_over_quota_is_closed_not_acknowledged() {
    let s = TestServer::start().await;
    crate::quotas::small_tenant(&s, json!({"points_per_day": 1})).await;
    let (_, d) = s
        .json(s.post("/api/v1/devices?tenant=small", json!({"id": "q1"})))
        .await;
    let key = d["key"].as_str().unwrap().to_string();
    let (mut c, _) = open4(s.mqtt(), "q1", Some(("q1", &key)), false).await;
    c.send4(pub4("devices/q1/telemetry", 1, 1, br#"{"v": 1}"#, false))
        .await;
    assert!(matches!(c.recv4().await, v4::Packet::PubAck(a) if a.pkid == 1));
    c.send4(pub4("devices/q1/telemetry", 1, 2, br#"{"v": 2}"#, false))
        .await;
    assert!(
        matches!(c.recv4_within(WAIT).await, Got4::Closed),
        "over quota: no PUBACK, the connection closes"
    );
    let (_, h) = s
        .json(s.get("/api/v1/twins/q1/telemetry/v?from=0&tenant=small"))
        .await;
    assert_eq!(h["points"].as_array().unwrap().len(), 1, "{h}");
    s.stop().await;
}

#[tokio::test]
async fn mqtt_5_gets_0x80_when_storing_fails_and_a_qos2_id_is_free_again() {
    let s = TestServer::start().await;
    let key = s.device("d5").await;
    let topic = "devices/d5/telemetry";
    let (mut c, _) = open5(s.mqtt(), "d5", Some(("d5", &key)), true, None).await;
    commit_fault(&s, true);
    c.send5(pub5(topic, 1, 1, br#"{"ts": 1000, "v": 1}"#, None))
        .await;
    match c.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::UnspecifiedError),
        p => panic!("{p:?}"),
    }
    c.send5(pub5(topic, 2, 2, br#"{"ts": 2000, "v": 2}"#, None))
        .await;
    match c.recv5().await {
        v5::Packet::PubRec(a) => assert_eq!(a.reason, v5::PubRecReason::UnspecifiedError),
        p => panic!("{p:?}"),
    }
    assert!(history(&s, "d5", "v").await.is_empty());
    commit_fault(&s, false);
    // The refused QoS 2 exchange is over: the same packet id carries a
    // new message that is stored, not taken for a duplicate.
    c.send5(pub5(topic, 2, 2, br#"{"ts": 2000, "v": 2}"#, None))
        .await;
    match c.recv5().await {
        v5::Packet::PubRec(a) => assert_eq!(a.reason, v5::PubRecReason::Success),
        p => panic!("{p:?}"),
    }
    assert_eq!(
        history(&s, "d5", "v").await,
        vec![json!({"ts": 2000, "value": 2})]
    );
    s.stop().await;
}

#[tokio::test]
async fn http_answers_503_and_keeps_nothing_when_storing_fails() {
    let s = TestServer::start().await;
    let key = s.device("h1").await;
    commit_fault(&s, true);
    let r = s.send("h1", &key, json!({"ts": 1000, "v": 1})).await;
    error_of(r, 503, "service_unavailable").await;
    commit_fault(&s, false);
    assert!(history(&s, "h1", "v").await.is_empty());
    assert_eq!(
        s.send("h1", &key, json!({"ts": 1000, "v": 1}))
            .await
            .status(),
        200
    );
    assert_eq!(history(&s, "h1", "v").await.len(), 1);
    s.stop().await;
}

/// Messages for persistent sessions and retained messages are broker
/// state in the store: when it cannot be written, the publisher is not
/// acknowledged either.
#[tokio::test]
async fn broker_state_that_was_not_stored_is_not_acknowledged() {
    let s = TestServer::start().await;
    // A persistent subscriber, offline: its copy must be stored.
    let (mut sub, _) = open4(s.mqtt(), "keeper", Some(("admin", ADMIN_PASSWORD)), false).await;
    sub.send4(sub4(1, "plant/#", 1)).await;
    assert!(matches!(sub.recv4().await, v4::Packet::SubAck(_)));
    sub.send4(v4::Packet::Disconnect).await;
    drop(sub);

    let (mut p5, _) = open5(
        s.mqtt(),
        "pub5",
        Some(("admin", ADMIN_PASSWORD)),
        true,
        None,
    )
    .await;
    let (mut p4, _) = open4(s.mqtt(), "pub4", Some(("admin", ADMIN_PASSWORD)), true).await;
    commit_fault(&s, true);
    p5.send5(pub5("plant/a", 1, 1, b"queued", None)).await;
    match p5.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::UnspecifiedError),
        p => panic!("{p:?}"),
    }
    p4.send4(pub4("plant/b", 1, 1, b"retained", true)).await;
    assert!(
        matches!(p4.recv4_within(WAIT).await, Got4::Closed),
        "3.1.1: no PUBACK for a retained message that was not stored"
    );
    commit_fault(&s, false);
    // Once the store works, the same publish is acknowledged.
    p5.send5(pub5("plant/c", 1, 2, b"queued", None)).await;
    match p5.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::Success),
        p => panic!("{p:?}"),
    }
    s.stop().await;
}

/// Several PUBLISHes read in one pass are committed together, but each
/// gets its own answer: one invalid message refuses only itself.
#[tokio::test]
async fn one_bad_message_does_not_refuse_its_neighbours() {
    let s = TestServer::start().await;
    crate::graph::load_plant(&s).await;
    crate::graph::reactor(&s, "r1").await;
    let (_, d) = s
        .json(s.post("/api/v1/devices", json!({"id": "rd1", "twin_id": "r1"})))
        .await;
    let key = d["key"].as_str().unwrap().to_string();
    let topic = "devices/rd1/telemetry";
    let packet5 = |pkid: u16, body: &[u8]| {
        let mut out = bytes::BytesMut::new();
        pub5(topic, 1, pkid, body, None)
            .write(&mut out, None)
            .unwrap();
        out
    };
    let (mut c, _) = open5(s.mqtt(), "rd1", Some(("rd1", &key)), true, None).await;
    // One write, three messages: the middle one names no property of the
    // model.
    let mut all = packet5(1, br#"{"ts": 1000, "temperature": 350.0}"#);
    all.extend_from_slice(&packet5(2, br#"{"ts": 2000, "humidity": 3}"#));
    all.extend_from_slice(&packet5(3, br#"{"ts": 3000, "temperature": 351.0}"#));
    c.send_bytes(&all).await;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        match c.recv5().await {
            v5::Packet::PubAck(a) => reasons.push((a.pkid, a.reason)),
            p => panic!("{p:?}"),
        }
    }
    assert_eq!(
        reasons,
        vec![
            (1, v5::PubAckReason::Success),
            (2, v5::PubAckReason::PayloadFormatInvalid),
            (3, v5::PubAckReason::Success)
        ]
    );
    assert_eq!(
        history(&s, "r1", "temperature").await,
        vec![
            json!({"ts": 1000, "value": 350}),
            json!({"ts": 3000, "value": 351})
        ]
    );
    drop(c);

    // 3.1.1: all three acknowledged (the contract: invalid is dropped and
    // counted), both valid ones stored.
    let (mut c, _) = open4(s.mqtt(), "rd1", Some(("rd1", &key)), true).await;
    let packet4 = |pkid: u16, body: &[u8]| {
        let mut out = bytes::BytesMut::new();
        pub4(topic, 1, pkid, body, false)
            .write(&mut out, usize::MAX)
            .unwrap();
        out
    };
    let mut all = packet4(1, br#"{"ts": 4000, "temperature": 352.0}"#);
    all.extend_from_slice(&packet4(2, br#"{"ts": 5000, "temperature": "hot"}"#));
    all.extend_from_slice(&packet4(3, br#"{"ts": 6000, "temperature": 353.0}"#));
    c.send_bytes(&all).await;
    for want in 1..=3 {
        assert!(matches!(c.recv4().await, v4::Packet::PubAck(a) if a.pkid == want));
    }
    let got: Vec<i64> = history(&s, "r1", "temperature")
        .await
        .iter()
        .map(|p| p["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![1000, 3000, 4000, 6000]);
    c.expect_silence(Duration::from_millis(100)).await;
    s.stop().await;
}
