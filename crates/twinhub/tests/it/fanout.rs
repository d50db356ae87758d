//! The post-commit fan-out: telemetry reaches MQTT subscribers whatever
//! protocol brought it (PRODUCT.md, "Fan-out and MQTT delivery"), derived
//! values appear on `twins/{twinId}/derived`, per-series order is kept,
//! and a subscriber that stops reading never slows ingest.

use crate::common::*;
use crate::mqtt::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};

fn body(p: &[u8]) -> Value {
    serde_json::from_slice(p).unwrap()
}

/// The messages of one MQTT payload: a request of several messages is
/// published as one array, as a device could have sent it.
fn messages(p: &[u8]) -> Vec<Value> {
    match body(p) {
        Value::Array(items) => items,
        one => vec![one],
    }
}

#[tokio::test]
async fn http_telemetry_reaches_mqtt_subscribers_in_order() {
    let s = TestServer::start().await;
    let key = s.device("h-fan").await;
    let (mut q1, _) = open5(
        s.mqtt(),
        "fan-q1",
        Some(("admin", ADMIN_PASSWORD)),
        true,
        None,
    )
    .await;
    q1.send5(sub5(1, "devices/+/telemetry", 1, |_| {}, None))
        .await;
    assert!(matches!(q1.recv5().await, v5::Packet::SubAck(_)));
    let (mut q0, _) = open4(s.mqtt(), "fan-q0", Some(("admin", ADMIN_PASSWORD)), true).await;
    q0.send4(sub4(1, "devices/h-fan/#", 0)).await;
    assert!(matches!(q0.recv4().await, v4::Packet::SubAck(_)));
    let events = s
        .get("/api/v1/events?types=telemetry")
        .send()
        .await
        .unwrap();

    for i in 0..3i64 {
        let r = s
            .send(
                "h-fan",
                &key,
                json!([{"ts": 1_764_500_000_000i64 + 2 * i, "v": 2 * i}, {"ts": 1_764_500_000_001i64 + 2 * i, "v": 2 * i + 1}]),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let want: Vec<Value> = (0..6i64)
        .map(|i| json!({"ts": 1_764_500_000_000i64 + i, "v": i}))
        .collect();
    let mut got1 = Vec::new();
    while got1.len() < 6 {
        match q1.recv5().await {
            v5::Packet::Publish(p) => {
                assert_eq!(p.topic, "devices/h-fan/telemetry".as_bytes());
                assert_eq!(p.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
                q1.send5(v5::Packet::PubAck(v5::PubAck::new(p.pkid, None)))
                    .await;
                let m = messages(&p.payload);
                assert_eq!(m.len(), 2, "one publish per request");
                got1.extend(m);
            }
            p => panic!("{p:?}"),
        }
    }
    assert_eq!(got1, want, "QoS 1, in order");
    let mut got0 = Vec::new();
    while got0.len() < 6 {
        match q0.recv4().await {
            v4::Packet::Publish(p) => got0.extend(messages(&p.payload)),
            p => panic!("{p:?}"),
        }
    }
    assert_eq!(got0, want, "QoS 0, in order");
    // The SSE stream carries the same messages, an event per request.
    let evs = crate::events::read_events(events, 3).await;
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[2].2["data"]["messages"][1]["values"]["v"], 5);
    assert_eq!(evs[2].2["data"]["source"], "http");
    s.stop().await;
}

#[tokio::test]
async fn derived_values_are_published_on_twins_derived() {
    let s = TestServer::start().await;
    crate::ml::upload_yield(&s, "1.0.0").await;
    let key = s.device("sd1").await;
    let (st, v) = s
        .json(s.post(
            "/api/v1/ml/bindings",
            json!({"id": "y", "model": "reactor-yield", "select": {"twin": "sd1"},
                "outputs": {"prediction": "yield_pred"}}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    let (mut sub, _) = open5(
        s.mqtt(),
        "derived-sub",
        Some(("admin", ADMIN_PASSWORD)),
        true,
        None,
    )
    .await;
    sub.send5(sub5(1, "twins/+/derived", 1, |_| {}, None)).await;
    assert!(matches!(sub.recv5().await, v5::Packet::SubAck(_)));
    let ts = 1_764_500_000_000i64;
    let r = s
        .send(
            "sd1",
            &key,
            json!({"ts": ts, "temperature": 350, "pressure": 5.5, "flow_rate": 100}),
        )
        .await;
    assert_eq!(r.status(), 200);
    match sub.recv5().await {
        v5::Packet::Publish(p) => {
            assert_eq!(p.topic, "twins/sd1/derived".as_bytes());
            let b = body(&p.payload);
            assert_eq!(b["ts"], ts, "{b}");
            let (_, direct) = s
                .json(s.post(
                    "/api/v1/ml/models/reactor-yield/predict",
                    json!({"temperature": 350, "pressure": 5.5, "flow_rate": 100}),
                ))
                .await;
            assert_eq!(b["yield_pred"], direct["prediction"], "{b}");
        }
        p => panic!("{p:?}"),
    }
    // The device's inputs (from HTTP) arrive on its telemetry topic too;
    // derived values never do.
    sub.expect_silence(std::time::Duration::from_millis(200))
        .await;
    s.stop().await;
}

/// A QoS 1 subscriber that never reads nor acknowledges: its queue fills
/// and drops (counted), and every HTTP ingest is still answered.
#[tokio::test]
async fn a_stalled_subscriber_never_slows_ingest() {
    let s = TestServer::start_with(|c| {
        c.mqtt.max_queued = 100;
        c.mqtt.max_inflight = 10;
    })
    .await;
    let key = s.device("busy").await;
    let (mut stalled, _) = open5(
        s.mqtt(),
        "stalled",
        Some(("admin", ADMIN_PASSWORD)),
        true,
        None,
    )
    .await;
    stalled
        .send5(sub5(1, "devices/+/telemetry", 1, |_| {}, None))
        .await;
    assert!(matches!(stalled.recv5().await, v5::Packet::SubAck(_)));
    // From here on the subscriber reads nothing. 200 requests are 200
    // publishes (a request's messages go as one), twice its queue.
    for i in 0..200i64 {
        let batch: Vec<Value> = (0..5)
            .map(|j| json!({"ts": 1_764_500_000_000i64 + i * 5 + j, "v": j}))
            .collect();
        assert_eq!(s.send("busy", &key, json!(batch)).await.status(), 200);
    }
    let (_, h) = s
        .json(s.get("/api/v1/twins/busy/telemetry/v?from=0&bucket=1d&agg=count"))
        .await;
    assert_eq!(h["buckets"][0]["count"], 1000, "{h}");
    // Dropping happens in the delivery task, after the answers: wait for it.
    until("90 drops of the stalled subscriber", || async {
        metric_value(&s.metrics().await, "twinhub_mqtt_dropped_total").unwrap_or(0.0) >= 90.0
    })
    .await;
    drop(stalled);
    s.stop().await;
}

/// An SSE client that stops reading: ingest goes on at full speed, every
/// batch is stored, and when the client reads again it gets every event or
/// is told how many it missed — never less than the whole.
#[tokio::test]
async fn a_stalled_event_stream_never_slows_ingest_and_is_told_what_it_missed() {
    let s = TestServer::start().await;
    let key = s.device("chatty").await;
    let mut stream = s
        .get("/api/v1/events?types=telemetry")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // 12,000 events (an MQTT PUBLISH each), three times what a
    // subscriber's queue holds, while the stream is not read.
    const N: i64 = 12_000;
    let (mut dev, _) = open4(s.mqtt(), "chatty", Some(("chatty", &key)), true).await;
    for i in 0..N {
        let body = json!({"ts": 1_764_500_000_000i64 + i, "v": i});
        dev.send4(pub4(
            "devices/chatty/telemetry",
            0,
            0,
            body.to_string().as_bytes(),
            false,
        ))
        .await;
    }
    until("every point stored", || async {
        let (_, h) = s
            .json(s.get("/api/v1/twins/chatty/telemetry/v?from=0&bucket=1d&agg=count"))
            .await;
        h["buckets"][0]["count"] == N
    })
    .await;
    let (mut got, mut missed, mut buf) = (0i64, 0i64, String::new());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while got + missed < N {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("got {got}, told of {missed} missed, of {N}"))
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if frame.contains("event: telemetry") {
                got += 1;
            } else if frame.contains("event: lagged") {
                let n = frame.split("\"missed\":").nth(1).and_then(|t| {
                    t.split('}')
                        .next()
                        .and_then(|n| n.trim().parse::<i64>().ok())
                });
                missed += n.expect("lagged names how many were missed");
            }
        }
    }
    assert_eq!(got + missed, N);
    if missed > 0 {
        let m = s.metrics().await;
        assert_eq!(
            metric_value(&m, "twinhub_fanout_dropped_total{subscriber=\"sse\"}"),
            Some(missed as f64),
            "{m}"
        );
    }
    s.stop().await;
}

/// A reading posted with a quality flag reaches MQTT subscribers as the
/// device sent it: `{"value", "quality"}`, plain values for good ones.
#[tokio::test]
async fn a_flagged_readings_quality_reaches_mqtt_subscribers() {
    let s = TestServer::start().await;
    let key = s.device("q-fan").await;
    let (mut q0, _) = open4(s.mqtt(), "fan-qual", Some(("admin", ADMIN_PASSWORD)), true).await;
    q0.send4(sub4(1, "devices/q-fan/telemetry", 0)).await;
    assert!(matches!(q0.recv4().await, v4::Packet::SubAck(_)));
    let sent = json!({"ts": 1_764_500_000_000i64, "t": {"value": 351.2, "quality": "bad"}, "p": 2});
    assert_eq!(s.send("q-fan", &key, sent).await.status(), 200);
    let got = loop {
        match q0.recv4().await {
            v4::Packet::Publish(p) => break messages(&p.payload),
            p => panic!("{p:?}"),
        }
    };
    assert_eq!(
        got,
        vec![json!({"ts": 1_764_500_000_000i64, "t": {"value": 351.2, "quality": "bad"}, "p": 2})]
    );
    s.stop().await;
}
