//! What devices, operators and integrations rely on: telemetry through
//! MQTT into history with PUBACK only after it is durable, tenant
//! isolation, presence, commands, slow subscribers.

use super::*;
use crate::common::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};

#[tokio::test]
async fn telemetry_is_acknowledged_only_once_durable_and_reaches_history() {
    let s = TestServer::start().await;
    let key = s.device("m1").await;
    let (mut d, ack) = open4(s.mqtt(), "m1", Some(("m1", &key)), true).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    let pause = s.store().pause_writer();
    d.send4(pub4(
        "devices/m1/telemetry",
        1,
        1,
        br#"{"ts": 1700000000000, "temperature": 351.5}"#,
        false,
    ))
    .await;
    // Not durable yet: no PUBACK.
    d.expect_silence(std::time::Duration::from_millis(400))
        .await;
    drop(pause);
    assert!(matches!(d.recv4().await, v4::Packet::PubAck(a) if a.pkid == 1));
    let (_, v) = s
        .json(s.get("/api/v1/twins/m1/telemetry/temperature?from=0"))
        .await;
    assert_eq!(
        v["points"],
        json!([{"ts": 1_700_000_000_000i64, "value": 351.5}])
    );
    let (_, twin) = s.json(s.get("/api/v1/twins/m1")).await;
    assert_eq!(twin["temperature"], 351.5);
    s.stop().await;
}

#[tokio::test]
async fn invalid_telemetry_is_refused_with_0x99_in_v5_and_dropped_in_3_1_1() {
    let s = TestServer::start().await;
    let key = s.device("bad").await;
    let (mut d5, _) = open5(s.mqtt(), "bad", Some(("bad", &key)), true, None).await;
    d5.send5(pub5("devices/bad/telemetry", 1, 1, b"{\"t\": null}", None))
        .await;
    match d5.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::PayloadFormatInvalid),
        p => panic!("{p:?}"),
    }
    drop(d5);
    let (mut d4, _) = open4(s.mqtt(), "bad", Some(("bad", &key)), true).await;
    d4.send4(pub4("devices/bad/telemetry", 1, 2, b"not json", false))
        .await;
    assert!(
        matches!(d4.recv4().await, v4::Packet::PubAck(_)),
        "3.1.1 acknowledges and drops"
    );
    assert_eq!(
        s.get("/api/v1/twins/bad").send().await.unwrap().status(),
        200
    );
    let (_, series) = s.json(s.get("/api/v1/twins/bad/telemetry")).await;
    assert_eq!(series["value"], json!([]), "nothing was stored");
    let text = s.metrics().await;
    assert!(
        text.contains("twinhub_mqtt_telemetry_rejected_total 2"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn operators_see_telemetry_and_tenants_see_only_their_own() {
    let s = TestServer::start().await;
    let key = s.device("t-a").await;
    s.post("/api/v1/tenants", json!({"id": "other", "name": "Other"}))
        .send()
        .await
        .unwrap();
    s.post("/api/v1/users", json!({"username": "o-op", "password": "Other-pass-1", "tenant": "other", "roles": ["operator"]})).send().await.unwrap();
    let (mut mine, _) = open4(s.mqtt(), "ops-a", Some(("admin", ADMIN_PASSWORD)), true).await;
    mine.send4(sub4(1, "devices/+/telemetry", 0)).await;
    mine.recv4().await;
    let (mut theirs, ack) = open4(s.mqtt(), "ops-b", Some(("o-op", "Other-pass-1")), true).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    theirs.send4(sub4(1, "#", 0)).await;
    theirs.recv4().await;
    let (mut d, _) = open4(s.mqtt(), "t-a", Some(("t-a", &key)), true).await;
    d.send4(pub4("devices/t-a/telemetry", 1, 1, br#"{"v": 1}"#, false))
        .await;
    d.recv4().await;
    match mine.recv4().await {
        v4::Packet::Publish(p) => assert_eq!(p.topic, "devices/t-a/telemetry"),
        p => panic!("{p:?}"),
    }
    theirs
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
    // A viewer may subscribe but not publish.
    s.user("viewer-m", &["viewer"]).await;
    let (mut v, _) = open5(
        s.mqtt(),
        "viewer-m-c",
        Some(("viewer-m", "User-pass-123")),
        true,
        None,
    )
    .await;
    v.send5(pub5("plant/x", 1, 1, b"nope", None)).await;
    match v.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::NotAuthorized),
        p => panic!("{p:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn anonymous_clients_only_when_allowed_and_never_under_devices() {
    let s = TestServer::start_with(|c| c.mqtt.allow_anonymous = true).await;
    let (mut a, ack) = open4(s.mqtt(), "anon1", None, true).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    a.send4(v4::Packet::Subscribe(v4::Subscribe {
        pkid: 1,
        filters: vec![
            v4::SubscribeFilter::new("plant/#".into(), rumqttc::QoS::AtMostOnce),
            v4::SubscribeFilter::new("devices/#".into(), rumqttc::QoS::AtMostOnce),
            v4::SubscribeFilter::new("#".into(), rumqttc::QoS::AtMostOnce),
        ],
    }))
    .await;
    match a.recv4().await {
        v4::Packet::SubAck(s) => {
            use v4::SubscribeReasonCode::*;
            // `#` is granted (generic tools subscribe to it first) and
            // filtered per message; `devices/#` can match nothing an
            // anonymous client may read.
            assert_eq!(
                s.return_codes,
                vec![
                    Success(rumqttc::QoS::AtMostOnce),
                    Failure,
                    Success(rumqttc::QoS::AtMostOnce)
                ]
            );
        }
        p => panic!("{p:?}"),
    }
    // A device's telemetry never reaches the anonymous `#`…
    let key = s.device("anon-d").await;
    let (mut d, _) = open4(s.mqtt(), "anon-d", Some(("anon-d", &key)), true).await;
    d.send4(pub4(
        "devices/anon-d/telemetry",
        1,
        1,
        br#"{"v": 1}"#,
        false,
    ))
    .await;
    assert!(matches!(d.recv4().await, v4::Packet::PubAck(_)));
    // …while the plant topic arrives (once: `plant/#` and `#` overlap).
    a.send4(pub4("plant/line", 0, 0, b"hello", false)).await;
    assert!(matches!(a.recv4().await, v4::Packet::Publish(p) if p.topic == "plant/line"));
    a.expect_silence(std::time::Duration::from_millis(300))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn presence_follows_the_connection() {
    let s = TestServer::start().await;
    let key = s.device("pres").await;
    let events = s.get("/api/v1/events?types=device").send().await.unwrap();
    let (mut d, _) = open4(s.mqtt(), "pres", Some(("pres", &key)), true).await;
    let (_, dev) = s.json(s.get("/api/v1/devices/pres")).await;
    assert_eq!(dev["connected"], true);
    d.send4(v4::Packet::Disconnect).await;
    d.expect_closed().await;
    let evs = crate::events::read_events(events, 2).await;
    assert_eq!(
        evs[0].2["data"],
        json!({"device": "pres", "connected": true})
    );
    assert_eq!(
        evs[1].2["data"],
        json!({"device": "pres", "connected": false})
    );
    let (_, dev) = s.json(s.get("/api/v1/devices/pres")).await;
    assert_eq!(dev["connected"], false);
    s.stop().await;
}

#[tokio::test]
async fn commands_round_trip_through_the_device() {
    let s = TestServer::start().await;
    let key = s.device("cmd").await;
    let r = s
        .post("/api/v1/devices/cmd/commands/reboot", json!({}))
        .send()
        .await
        .unwrap();
    error_of(r, 409, "conflict").await;
    let (mut d, _) = open5(s.mqtt(), "cmd", Some(("cmd", &key)), true, None).await;
    d.send5(sub5(1, "devices/cmd/commands/#", 1, |_| {}, None))
        .await;
    d.recv5().await;
    let call = tokio::spawn({
        let req = s.post(
            "/api/v1/devices/cmd/commands/setpoint?timeout=5s",
            json!({"temperature": 355}),
        );
        async move { req.send().await.unwrap() }
    });
    let v5::Packet::Publish(cmd) = d.recv5().await else {
        panic!()
    };
    let topic = String::from_utf8(cmd.topic.to_vec()).unwrap();
    assert!(
        topic.starts_with("devices/cmd/commands/setpoint/"),
        "{topic}"
    );
    let request_id = topic.rsplit('/').next().unwrap().to_string();
    let props = cmd.properties.clone().unwrap();
    assert_eq!(
        props.response_topic.as_deref(),
        Some(format!("devices/cmd/replies/{request_id}").as_str())
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&cmd.payload).unwrap(),
        json!({"temperature": 355})
    );
    d.send5(v5::Packet::PubAck(v5::PubAck::new(cmd.pkid, None)))
        .await;
    d.send5(pub5(
        &format!("devices/cmd/replies/{request_id}"),
        1,
        5,
        br#"{"status":200,"payload":{"applied":true}}"#,
        None,
    ))
    .await;
    let resp = call.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"status": 200, "payload": {"applied": true}})
    );
    // No reply: 504 after the timeout.
    let r = s
        .post("/api/v1/devices/cmd/commands/ping?timeout=300ms", json!({}))
        .send()
        .await
        .unwrap();
    error_of(r, 504, "gateway_timeout").await;
    let viewer = s.user("cmd-viewer", &["viewer"]).await;
    let r = s
        .http
        .post(s.url("/api/v1/devices/cmd/commands/x"))
        .bearer_auth(&viewer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden")
        .await
        .contains("commands:send"));
    s.stop().await;
}

/// A subscriber that stops reading never slows the producer or ingest: its
/// queue drops the oldest messages and the drops are counted.
#[tokio::test]
async fn a_slow_subscriber_never_slows_producers() {
    let s = TestServer::start_with(|c| {
        c.mqtt.max_queued = 50;
        c.mqtt.max_inflight = 10;
    })
    .await;
    let key = s.device("fast").await;
    let (mut slow, _) = open4(s.mqtt(), "slow", Some(("admin", ADMIN_PASSWORD)), true).await;
    slow.send4(sub4(1, "devices/+/telemetry", 1)).await;
    slow.recv4().await;
    // The slow client never reads again (and never acknowledges).
    let (mut d, _) = open4(s.mqtt(), "fast", Some(("fast", &key)), true).await;
    let started = std::time::Instant::now();
    for i in 1..=500u16 {
        d.send4(pub4(
            "devices/fast/telemetry",
            1,
            i,
            format!("{{\"ts\":{},\"v\":{i}}}", 1_700_000_000_000i64 + i as i64).as_bytes(),
            false,
        ))
        .await;
    }
    for _ in 1..=500u16 {
        assert!(matches!(d.recv4().await, v4::Packet::PubAck(_)));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let (_, v) = s
        .json(s.get("/api/v1/twins/fast/telemetry/v?from=0&bucket=1d&agg=count"))
        .await;
    assert_eq!(v["buckets"][0]["count"], 500, "ingest got every message");
    let text = s.metrics().await;
    let dropped: u64 = text
        .lines()
        .find(|l| l.starts_with("twinhub_mqtt_dropped_total "))
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(dropped >= 400, "drops are counted ({dropped})");
    drop(slow);
    s.stop().await;
}

/// Retained messages and persistent sessions (subscriptions and the QoS 1
/// messages queued while the client was away) survive a restart.
#[tokio::test]
async fn retained_messages_and_persistent_sessions_survive_restart() {
    let s = TestServer::start().await;
    let admin = Some(("admin", ADMIN_PASSWORD));
    let (mut away, _) = open4(s.mqtt(), "away", admin, false).await;
    away.send4(sub4(1, "plant/+/alarm", 1)).await;
    away.recv4().await;
    away.send4(v4::Packet::Disconnect).await;
    away.expect_closed().await;
    let (mut p, _) = open5(s.mqtt(), "pub", admin, true, None).await;
    p.send5(pub5("plant/l1/alarm", 1, 1, b"high temperature", None))
        .await;
    assert!(matches!(p.recv5().await, v5::Packet::PubAck(_)));
    let mut retained = v5::Publish::new("plant/l1/mode", q5(1), b"auto".to_vec(), None);
    retained.retain = true;
    retained.pkid = 2;
    p.send5(v5::Packet::Publish(retained)).await;
    assert!(matches!(p.recv5().await, v5::Packet::PubAck(_)));
    drop(p);

    let s = s.restart().await;
    let (mut back, ack) = open4(s.mqtt(), "away", admin, false).await;
    assert!(ack.session_present, "the session outlived the restart");
    match back.recv4().await {
        v4::Packet::Publish(m) => {
            assert_eq!(
                (m.topic.as_str(), m.payload.as_ref()),
                ("plant/l1/alarm", &b"high temperature"[..])
            );
            back.send4(v4::Packet::PubAck(v4::PubAck::new(m.pkid)))
                .await;
        }
        p => panic!("{p:?}"),
    }
    // The subscription itself survived too.
    let (mut p, _) = open4(s.mqtt(), "pub2", admin, true).await;
    p.send4(pub4("plant/l2/alarm", 1, 1, b"after", false)).await;
    p.recv4().await;
    assert!(matches!(back.recv4().await, v4::Packet::Publish(m) if m.payload.as_ref() == b"after"));
    let (mut late, _) = open4(s.mqtt(), "late", admin, true).await;
    late.send4(sub4(1, "plant/+/mode", 0)).await;
    late.recv4().await;
    match late.recv4().await {
        v4::Packet::Publish(m) => assert!(m.retain && m.payload.as_ref() == b"auto"),
        p => panic!("{p:?}"),
    }
    // Delivered messages are not delivered again after another restart.
    back.send4(v4::Packet::Disconnect).await;
    drop(back);
    let s = s.restart().await;
    let (mut again, ack) = open4(s.mqtt(), "away", admin, false).await;
    assert!(ack.session_present);
    loop {
        match again
            .recv4_within(std::time::Duration::from_millis(500))
            .await
        {
            Got4::P(v4::Packet::Publish(m)) => {
                // Only the unacknowledged "after" may come back.
                assert_eq!(m.payload.as_ref(), b"after");
                again
                    .send4(v4::Packet::PubAck(v4::PubAck::new(m.pkid)))
                    .await;
            }
            Got4::Silent => break,
            other => panic!("{}", matches!(other, Got4::Closed)),
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn over_rate_devices_are_rejected_or_throttled() {
    let s = TestServer::start_with(|c| {
        c.mqtt.rate_limit_messages = 10.0;
        c.mqtt.rate_limit_action = "reject".into();
    })
    .await;
    let key = s.device("chatty").await;
    let (mut d, _) = open5(s.mqtt(), "chatty", Some(("chatty", &key)), true, None).await;
    for _ in 0..40 {
        d.send5(pub5("devices/chatty/status", 0, 0, b"x", None))
            .await;
    }
    match d.recv5().await {
        v5::Packet::Disconnect(x) => {
            assert_eq!(x.reason_code, v5::DisconnectReasonCode::MessageRateTooHigh)
        }
        p => panic!("{p:?}"),
    }
    d.expect_closed().await;
    s.stop().await;

    let s = TestServer::start_with(|c| {
        c.mqtt.rate_limit_messages = 20.0;
        c.mqtt.rate_limit_action = "throttle".into();
    })
    .await;
    let key = s.device("chatty").await;
    let (mut d, _) = open4(s.mqtt(), "chatty", Some(("chatty", &key)), true).await;
    let started = std::time::Instant::now();
    for i in 1..=60u16 {
        d.send4(pub4("devices/chatty/status", 1, i, b"x", false))
            .await;
    }
    for _ in 1..=60 {
        assert!(
            matches!(d.recv4().await, v4::Packet::PubAck(_)),
            "throttled, not dropped"
        );
    }
    // 60 messages at 20/s with a burst of 20 take about two seconds.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let text = s.metrics().await;
    assert!(
        !text.contains("twinhub_mqtt_rate_limited_total 0"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn limits_on_packet_size_and_connections() {
    let s = TestServer::start_with(|c| {
        c.mqtt.max_packet_size = 1024;
        c.mqtt.max_connections = 2;
    })
    .await;
    let admin = Some(("admin", ADMIN_PASSWORD));
    let (mut big, _) = open5(s.mqtt(), "big", admin, true, None).await;
    big.send5(pub5("x/y", 0, 0, &[7u8; 2048], None)).await;
    match big.recv5().await {
        v5::Packet::Disconnect(x) => {
            assert_eq!(x.reason_code, v5::DisconnectReasonCode::PacketTooLarge)
        }
        p => panic!("{p:?}"),
    }
    let (_a, ack) = open5(s.mqtt(), "a", admin, true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let (_b, ack) = open5(s.mqtt(), "b", admin, true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let (_c, ack) = open5(s.mqtt(), "c", admin, true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::ServerBusy);
    let (_d, ack) = open4(s.mqtt(), "d", admin, true).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::ServiceUnavailable);
    s.stop().await;
}

/// MQTT 5 will delay: the will waits; a reconnect within the delay
/// cancels it [MQTT-3.1.3-9].
#[tokio::test]
async fn v5_will_delay_waits_and_a_reconnect_cancels_it() {
    let s = TestServer::start().await;
    let admin = Some(("admin", ADMIN_PASSWORD));
    let (mut watch, _) = open5(s.mqtt(), "watch", admin, true, None).await;
    watch.send5(sub5(1, "wills/#", 0, |_| {}, None)).await;
    watch.recv5().await;
    let connect_with_will = |id: &str| {
        let mut c = super::connect5(id, admin, true, Some(60));
        if let v5::Packet::Connect(_, will, _) = &mut c {
            *will = Some(v5::LastWill {
                topic: bytes::Bytes::from(format!("wills/{id}")),
                message: bytes::Bytes::from_static(b"lost"),
                qos: q5(0),
                retain: false,
                properties: Some(v5::LastWillProperties {
                    delay_interval: Some(1),
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    content_type: None,
                    response_topic: None,
                    correlation_data: None,
                    user_properties: vec![],
                }),
            });
        }
        c
    };
    // Lost for good: the will arrives, but not at once.
    let mut r = Raw::open(s.mqtt(), true).await;
    r.send5(connect_with_will("gone")).await;
    r.recv5().await;
    drop(r);
    watch
        .expect_silence(std::time::Duration::from_millis(500))
        .await;
    match watch.recv5().await {
        v5::Packet::Publish(p) => assert_eq!(&p.topic[..], b"wills/gone"),
        p => panic!("{p:?}"),
    }
    // Back within the delay: no will.
    let mut r = Raw::open(s.mqtt(), true).await;
    r.send5(connect_with_will("flaky")).await;
    r.recv5().await;
    drop(r);
    let (_back, _) = open5(s.mqtt(), "flaky", admin, false, Some(60)).await;
    watch
        .expect_silence(std::time::Duration::from_millis(1800))
        .await;
    s.stop().await;
}

/// A message that expires while a persistent session is away is not
/// delivered [MQTT-3.3.2-5]; the test moves the server's clock.
#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let s = TestServer::start().await;
    let admin = Some(("admin", ADMIN_PASSWORD));
    let (mut c, _) = open5(s.mqtt(), "later", admin, true, Some(3600)).await;
    c.send5(sub5(1, "news/#", 1, |_| {}, None)).await;
    c.recv5().await;
    c.send5(v5::Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    c.expect_closed().await;
    let (mut p, _) = open5(s.mqtt(), "pub", admin, true, None).await;
    let props = |s: u32| v5::PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: Some(s),
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
        subscription_identifiers: vec![],
        content_type: None,
    };
    p.send5(pub5("news/short", 1, 1, b"stale", Some(props(10))))
        .await;
    p.recv5().await;
    p.send5(pub5("news/long", 1, 2, b"fresh", Some(props(3600))))
        .await;
    p.recv5().await;
    s.clock.advance_us(60 * 1_000_000);
    let (mut c, ack) = open5(s.mqtt(), "later", admin, false, Some(3600)).await;
    assert!(ack.session_present);
    match c.recv5().await {
        v5::Packet::Publish(m) => {
            assert_eq!(&m.payload[..], b"fresh");
            let left = m.properties.unwrap().message_expiry_interval.unwrap();
            assert!(left <= 3540, "the remaining lifetime is sent ({left})");
        }
        p => panic!("{p:?}"),
    }
    c.expect_silence(std::time::Duration::from_millis(300))
        .await;
    s.stop().await;
}

/// A connection told to leave from outside its task says why (MQTT 5):
/// taken over by a new connection with its client id, then the server
/// shutting down.
#[tokio::test]
async fn taken_over_and_shutdown_disconnects_say_why() {
    let s = TestServer::start().await;
    let key = s.device("twice").await;
    let (mut first, _) = open5(s.mqtt(), "twice", Some(("twice", &key)), true, None).await;
    let (mut second, _) = open5(s.mqtt(), "twice", Some(("twice", &key)), true, None).await;
    match first.recv5().await {
        v5::Packet::Disconnect(x) => {
            assert_eq!(x.reason_code, v5::DisconnectReasonCode::SessionTakenOver)
        }
        p => panic!("{p:?}"),
    }
    first.expect_closed().await;
    // The new connection is the live one.
    second.send5(v5::Packet::PingReq(v5::PingReq)).await;
    assert!(matches!(second.recv5().await, v5::Packet::PingResp(_)));
    let stopping = tokio::spawn(s.stop());
    match second.recv5().await {
        v5::Packet::Disconnect(x) => {
            assert_eq!(x.reason_code, v5::DisconnectReasonCode::ServerShuttingDown)
        }
        p => panic!("{p:?}"),
    }
    second.expect_closed().await;
    stopping.await.unwrap();
}
