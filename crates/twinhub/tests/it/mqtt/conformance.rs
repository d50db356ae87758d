//! Conformance with the MQTT 3.1.1 and 5.0 specifications: one test per
//! normative statement that applies to a server, named after it.

use super::*;
use crate::common::*;
use rumqttc::mqttbytes::v4::{self, ConnectReturnCode as C4};
use rumqttc::v5::mqttbytes::v5;

const ADMIN: Option<(&str, &str)> = Some(("admin", ADMIN_PASSWORD));

async fn raw_publish_payload4(r: &mut Raw) -> (String, Vec<u8>, bool, u8) {
    match r.recv4().await {
        v4::Packet::Publish(p) => (p.topic, p.payload.to_vec(), p.retain, p.qos as u8),
        p => panic!("expected PUBLISH, got {p:?}"),
    }
}

#[tokio::test]
async fn mqtt_3_1_0_1_the_first_packet_must_be_connect() {
    let s = TestServer::start().await;
    let mut r = Raw::open(s.mqtt(), false).await;
    r.send4(pub4("a/b", 0, 0, b"x", false)).await;
    r.expect_closed().await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_0_2_a_second_connect_is_a_protocol_violation() {
    let s = TestServer::start().await;
    let (mut r, ack) = open4(s.mqtt(), "c1", ADMIN, true).await;
    assert_eq!(ack.code, C4::Success);
    r.send4(connect4("c1", ADMIN, true)).await;
    r.expect_closed().await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_2_2_an_unsupported_protocol_level_gets_connack_1() {
    let s = TestServer::start().await;
    let mut r = Raw::open(s.mqtt(), false).await;
    // MQTT 3.1 ("MQIsdp", level 3).
    r.send_bytes(&[
        0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'a',
    ])
    .await;
    match r.recv4().await {
        v4::Packet::ConnAck(a) => assert_eq!(a.code, C4::RefusedProtocolVersion),
        p => panic!("{p:?}"),
    }
    r.expect_closed().await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_2_24_keep_alive_expiry_closes_the_connection() {
    let s = TestServer::start().await;
    let mut r = Raw::open(s.mqtt(), false).await;
    let mut c = v4::Connect::new("ka");
    c.keep_alive = 1;
    c.login = Some(v4::Login::new("admin", ADMIN_PASSWORD));
    r.send4(v4::Packet::Connect(c)).await;
    assert!(matches!(r.recv4().await, v4::Packet::ConnAck(_)));
    // 1.5 × 1 s without a packet: closed.
    match r.recv4_within(std::time::Duration::from_secs(4)).await {
        Got4::Closed => {}
        _ => panic!("still open after 1.5 × keep-alive"),
    }
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_3_8_an_empty_client_id_needs_a_clean_session() {
    let s = TestServer::start().await;
    let (_r, ack) = open4(s.mqtt(), "", ADMIN, false).await;
    assert_eq!(ack.code, C4::BadClientId);
    let (_r, ack) = open4(s.mqtt(), "", ADMIN, true).await;
    assert_eq!(
        ack.code,
        C4::Success,
        "[MQTT-3.1.3-6]: the server assigns one"
    );
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_4_2_a_second_connection_takes_the_session_over() {
    let s = TestServer::start().await;
    let (mut first, _) = open4(s.mqtt(), "same", ADMIN, true).await;
    let (mut second, ack) = open4(s.mqtt(), "same", ADMIN, true).await;
    assert_eq!(ack.code, C4::Success);
    first.expect_closed().await;
    second.send4(v4::Packet::PingReq).await;
    assert!(matches!(second.recv4().await, v4::Packet::PingResp));
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_2_2_1_and_2_session_present_reflects_the_stored_session() {
    let s = TestServer::start().await;
    let (mut r, ack) = open4(s.mqtt(), "p1", ADMIN, false).await;
    assert!(!ack.session_present, "no session yet");
    r.send4(sub4(1, "q/#", 1)).await;
    assert!(matches!(r.recv4().await, v4::Packet::SubAck(_)));
    r.send4(v4::Packet::Disconnect).await;
    r.expect_closed().await;
    // Messages published while away are queued for the session.
    let (mut p, _) = open4(s.mqtt(), "pub", ADMIN, true).await;
    p.send4(pub4("q/1", 1, 1, b"while away", false)).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubAck(_)));
    let (mut r, ack) = open4(s.mqtt(), "p1", ADMIN, false).await;
    assert!(ack.session_present);
    assert_eq!(raw_publish_payload4(&mut r).await.1, b"while away");
    // A clean session discards it [MQTT-3.2.2-1].
    let (_r2, ack) = open4(s.mqtt(), "p1", ADMIN, true).await;
    assert!(!ack.session_present);
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_3_1_5_to_11_retained_messages() {
    let s = TestServer::start().await;
    let (mut p, _) = open4(s.mqtt(), "pub", ADMIN, true).await;
    p.send4(pub4("plant/line1/state", 1, 1, b"running", true))
        .await;
    assert!(matches!(p.recv4().await, v4::Packet::PubAck(_)));
    // [MQTT-3.3.1-6]: a new subscriber gets the retained message, flagged.
    let (mut sub, _) = open4(s.mqtt(), "sub", ADMIN, true).await;
    sub.send4(sub4(1, "plant/+/state", 1)).await;
    assert!(matches!(sub.recv4().await, v4::Packet::SubAck(_)));
    let (topic, payload, retain, _) = raw_publish_payload4(&mut sub).await;
    assert_eq!(
        (topic.as_str(), payload.as_slice(), retain),
        ("plant/line1/state", &b"running"[..], true)
    );
    // [MQTT-3.3.1-9]: live delivery to an established subscription has retain 0.
    p.send4(pub4("plant/line1/state", 0, 0, b"stopped", true))
        .await;
    let (_, payload, retain, _) = raw_publish_payload4(&mut sub).await;
    assert_eq!((payload.as_slice(), retain), (&b"stopped"[..], false));
    // [MQTT-3.3.1-10/11]: an empty retained payload clears it.
    p.send4(pub4("plant/line1/state", 0, 0, b"", true)).await;
    let _ = raw_publish_payload4(&mut sub).await;
    let (mut late, _) = open4(s.mqtt(), "late", ADMIN, true).await;
    late.send4(sub4(1, "plant/#", 0)).await;
    assert!(matches!(late.recv4().await, v4::Packet::SubAck(_)));
    late.expect_silence(std::time::Duration::from_millis(300))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_3_4_1_qos_flows_are_acknowledged() {
    let s = TestServer::start().await;
    let (mut sub, _) = open4(s.mqtt(), "sub", ADMIN, true).await;
    sub.send4(sub4(1, "x/#", 2)).await;
    assert!(matches!(sub.recv4().await, v4::Packet::SubAck(_)));
    let (mut p, _) = open4(s.mqtt(), "pub", ADMIN, true).await;
    p.send4(pub4("x/1", 1, 7, b"one", false)).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubAck(a) if a.pkid == 7));
    p.send4(pub4("x/2", 2, 8, b"two", false)).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubRec(a) if a.pkid == 8));
    p.send4(v4::Packet::PubRel(v4::PubRel::new(8))).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubComp(a) if a.pkid == 8));
    // The subscriber receives QoS 1 then QoS 2, and completes the flows.
    let v4::Packet::Publish(m1) = sub.recv4().await else {
        panic!()
    };
    assert_eq!((m1.qos as u8, m1.payload.as_ref()), (1, &b"one"[..]));
    sub.send4(v4::Packet::PubAck(v4::PubAck::new(m1.pkid)))
        .await;
    let v4::Packet::Publish(m2) = sub.recv4().await else {
        panic!()
    };
    assert_eq!(m2.qos as u8, 2);
    sub.send4(v4::Packet::PubRec(v4::PubRec::new(m2.pkid)))
        .await;
    assert!(matches!(sub.recv4().await, v4::Packet::PubRel(r) if r.pkid == m2.pkid));
    sub.send4(v4::Packet::PubComp(v4::PubComp::new(m2.pkid)))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt_4_3_3_2_a_repeated_qos2_publish_is_delivered_once() {
    let s = TestServer::start().await;
    let (mut sub, _) = open4(s.mqtt(), "sub", ADMIN, true).await;
    sub.send4(sub4(1, "d/#", 0)).await;
    assert!(matches!(sub.recv4().await, v4::Packet::SubAck(_)));
    let (mut p, _) = open4(s.mqtt(), "pub", ADMIN, true).await;
    p.send4(pub4("d/1", 2, 3, b"once", false)).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubRec(_)));
    let mut dup = v4::Publish::new("d/1", rumqttc::QoS::ExactlyOnce, b"once".to_vec());
    dup.pkid = 3;
    dup.dup = true;
    p.send4(v4::Packet::Publish(dup)).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubRec(_)));
    p.send4(v4::Packet::PubRel(v4::PubRel::new(3))).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubComp(_)));
    assert_eq!(raw_publish_payload4(&mut sub).await.1, b"once");
    sub.expect_silence(std::time::Duration::from_millis(300))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt_4_6_0_2_pubacks_follow_publish_order() {
    let s = TestServer::start().await;
    let key = s.device("order").await;
    let (mut d, _) = open4(s.mqtt(), "order", Some(("order", &key)), true).await;
    // Telemetry (acknowledged after it is durable) interleaved with plain
    // messages (acknowledged at once): the PUBACKs still come in order.
    for i in 1..=20u16 {
        let (topic, body) = if i % 2 == 0 {
            (
                "devices/order/telemetry".to_string(),
                format!("{{\"v\":{i}}}"),
            )
        } else {
            (format!("devices/order/status/{i}"), "ok".to_string())
        };
        d.send4(pub4(&topic, 1, i, body.as_bytes(), false)).await;
    }
    for i in 1..=20u16 {
        match d.recv4().await {
            v4::Packet::PubAck(a) => assert_eq!(a.pkid, i),
            p => panic!("{p:?}"),
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_8_3_and_4_7_1_invalid_filters_are_refused_in_suback() {
    let s = TestServer::start().await;
    let (mut r, _) = open4(s.mqtt(), "f", ADMIN, true).await;
    r.send4(v4::Packet::Subscribe(v4::Subscribe {
        pkid: 9,
        filters: vec![
            v4::SubscribeFilter::new("ok/+".into(), rumqttc::QoS::AtLeastOnce),
            v4::SubscribeFilter::new("bad#".into(), rumqttc::QoS::AtLeastOnce),
            v4::SubscribeFilter::new("a/+b".into(), rumqttc::QoS::AtMostOnce),
            v4::SubscribeFilter::new("x/#".into(), rumqttc::QoS::ExactlyOnce),
        ],
    }))
    .await;
    match r.recv4().await {
        v4::Packet::SubAck(a) => {
            use v4::SubscribeReasonCode::*;
            assert_eq!(a.pkid, 9);
            assert_eq!(
                a.return_codes,
                vec![
                    Success(rumqttc::QoS::AtLeastOnce),
                    Failure,
                    Failure,
                    Success(rumqttc::QoS::ExactlyOnce)
                ]
            );
        }
        p => panic!("{p:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_8_4_3_a_repeated_subscription_replaces_and_3_10_4_unsubscribe_stops() {
    let s = TestServer::start().await;
    let (mut sub, _) = open4(s.mqtt(), "sub", ADMIN, true).await;
    sub.send4(sub4(1, "r/#", 0)).await;
    sub.recv4().await;
    sub.send4(sub4(2, "r/#", 1)).await;
    sub.recv4().await;
    let (mut p, _) = open4(s.mqtt(), "pub", ADMIN, true).await;
    p.send4(pub4("r/1", 1, 1, b"a", false)).await;
    p.recv4().await;
    let (_, _, _, qos) = raw_publish_payload4(&mut sub).await;
    assert_eq!(qos, 1, "one delivery, at the new QoS");
    sub.expect_silence(std::time::Duration::from_millis(200))
        .await;
    sub.send4(v4::Packet::Unsubscribe(v4::Unsubscribe {
        pkid: 3,
        topics: vec!["r/#".into()],
    }))
    .await;
    // The PUBACK for the delivered message may come first.
    loop {
        match sub.recv4().await {
            v4::Packet::UnsubAck(a) => {
                assert_eq!(a.pkid, 3);
                break;
            }
            v4::Packet::Publish(_) => {}
            p => panic!("{p:?}"),
        }
    }
    p.send4(pub4("r/2", 0, 0, b"b", false)).await;
    sub.expect_silence(std::time::Duration::from_millis(300))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_12_4_1_pingreq_gets_pingresp() {
    let s = TestServer::start().await;
    let (mut r, _) = open4(s.mqtt(), "ping", ADMIN, true).await;
    r.send4(v4::Packet::PingReq).await;
    assert!(matches!(r.recv4().await, v4::Packet::PingResp));
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_2_8_and_3_14_4_3_the_will_follows_abnormal_closes_only() {
    let s = TestServer::start().await;
    let (mut sub, _) = open4(s.mqtt(), "watch", ADMIN, true).await;
    sub.send4(sub4(1, "status/#", 0)).await;
    sub.recv4().await;
    for (id, graceful) in [("w1", true), ("w2", false)] {
        let mut r = Raw::open(s.mqtt(), false).await;
        let mut c = v4::Connect::new(id);
        c.login = Some(v4::Login::new("admin", ADMIN_PASSWORD));
        c.last_will = Some(v4::LastWill::new(
            format!("status/{id}"),
            "gone",
            rumqttc::QoS::AtMostOnce,
            false,
        ));
        r.send4(v4::Packet::Connect(c)).await;
        r.recv4().await;
        if graceful {
            r.send4(v4::Packet::Disconnect).await;
        }
        drop(r);
    }
    let (topic, payload, _, _) = raw_publish_payload4(&mut sub).await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("status/w2", &b"gone"[..])
    );
    sub.expect_silence(std::time::Duration::from_millis(300))
        .await;
    s.stop().await;
}

/// Clients cannot publish into the server's `$` namespace; that `#` never
/// matches `$` topics [MQTT-4.7.2-1] is proven on the router itself
/// (`mqtt::router` property test and `mqtt::topic` unit tests).
#[tokio::test]
async fn mqtt_4_7_2_1_clients_cannot_publish_dollar_topics() {
    let s = TestServer::start().await;
    let (mut sub, _) = open4(s.mqtt(), "sub", ADMIN, true).await;
    sub.send4(sub4(1, "#", 0)).await;
    sub.recv4().await;
    // Clients may not publish to `$` topics; the command API's topics and
    // regular ones arrive.
    let (mut p, _) = open4(s.mqtt(), "pub", ADMIN, true).await;
    p.send4(pub4("$SYS/x", 1, 1, b"no", false)).await;
    assert!(matches!(p.recv4().await, v4::Packet::PubAck(_)));
    p.send4(pub4("plain", 0, 0, b"yes", false)).await;
    assert_eq!(raw_publish_payload4(&mut sub).await.0, "plain");
    s.stop().await;
}

#[tokio::test]
async fn mqtt5_3_2_2_connack_reason_codes_for_credentials() {
    let s = TestServer::start().await;
    let key = s.device("dev5").await;
    let code = |a: v5::ConnAck| a.code;
    assert_eq!(
        code(
            open5(s.mqtt(), "dev5", Some(("dev5", "wrong")), true, None)
                .await
                .1
        ),
        v5::ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        code(
            open5(s.mqtt(), "ghost", Some(("ghost", "wrong")), true, None)
                .await
                .1
        ),
        v5::ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        code(
            open5(s.mqtt(), "other", Some(("dev5", &key)), true, None)
                .await
                .1
        ),
        v5::ConnectReturnCode::ClientIdentifierNotValid
    );
    assert_eq!(
        code(open5(s.mqtt(), "anon", None, true, None).await.1),
        v5::ConnectReturnCode::NotAuthorized
    );
    s.patch(
        "/api/v1/devices/dev5",
        serde_json::json!({"enabled": false}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        code(
            open5(s.mqtt(), "dev5", Some(("dev5", &key)), true, None)
                .await
                .1
        ),
        v5::ConnectReturnCode::NotAuthorized
    );
    s.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_4_connack_codes_for_credentials_in_3_1_1() {
    let s = TestServer::start().await;
    let key = s.device("dev4").await;
    assert_eq!(
        open4(s.mqtt(), "dev4", Some(("dev4", "wrong")), true)
            .await
            .1
            .code,
        C4::BadUserNamePassword
    );
    assert_eq!(
        open4(s.mqtt(), "ghost", Some(("ghost", "x")), true)
            .await
            .1
            .code,
        C4::BadUserNamePassword
    );
    assert_eq!(
        open4(s.mqtt(), "zzz", Some(("dev4", &key)), true)
            .await
            .1
            .code,
        C4::BadClientId
    );
    assert_eq!(
        open4(s.mqtt(), "anon", None, true).await.1.code,
        C4::NotAuthorized
    );
    s.patch(
        "/api/v1/devices/dev4",
        serde_json::json!({"enabled": false}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        open4(s.mqtt(), "dev4", Some(("dev4", &key)), true)
            .await
            .1
            .code,
        C4::NotAuthorized
    );
    let text = s.metrics().await;
    assert!(
        text.contains("twinhub_mqtt_connections_refused_total{reason=\"bad_credentials\"} 2"),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn mqtt5_3_3_2_topic_aliases_user_properties_and_expiry() {
    let s = TestServer::start().await;
    let (mut sub, _) = open5(s.mqtt(), "sub5", ADMIN, true, None).await;
    sub.send5(sub5(1, "al/#", 1, |_| {}, Some(42))).await;
    assert!(matches!(sub.recv5().await, v5::Packet::SubAck(_)));
    let (mut p, _) = open5(s.mqtt(), "pub5", ADMIN, true, None).await;
    let props = |alias: Option<u16>| v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: alias,
        response_topic: Some("al/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![],
        content_type: Some("text/plain".into()),
    };
    p.send5(pub5("al/one", 1, 1, b"first", Some(props(Some(3)))))
        .await;
    assert!(matches!(p.recv5().await, v5::Packet::PubAck(_)));
    // The alias alone now names the topic.
    p.send5(pub5("", 1, 2, b"second", Some(props(Some(3)))))
        .await;
    assert!(
        matches!(p.recv5().await, v5::Packet::PubAck(a) if a.reason == v5::PubAckReason::Success)
    );
    for want in [&b"first"[..], &b"second"[..]] {
        let v5::Packet::Publish(m) = sub.recv5().await else {
            panic!()
        };
        assert_eq!(&m.topic[..], b"al/one");
        assert_eq!(&m.payload[..], want);
        let pr = m.properties.unwrap();
        assert_eq!(pr.user_properties, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(pr.response_topic.as_deref(), Some("al/reply"));
        assert_eq!(pr.correlation_data.as_deref(), Some(&b"corr"[..]));
        assert_eq!(pr.content_type.as_deref(), Some("text/plain"));
        assert_eq!(pr.subscription_identifiers, vec![42]);
        assert!(pr.message_expiry_interval.unwrap() <= 60);
        sub.send5(v5::Packet::PubAck(v5::PubAck::new(m.pkid, None)))
            .await;
    }
    // An alias never set is a protocol error.
    p.send5(pub5("", 0, 0, b"x", Some(props(Some(9))))).await;
    p.expect_closed().await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt5_4_8_2_shared_subscriptions_deliver_to_one_member() {
    let s = TestServer::start().await;
    let mut members = Vec::new();
    for i in 0..2 {
        let (mut m, _) = open5(s.mqtt(), &format!("m{i}"), ADMIN, true, None).await;
        m.send5(sub5(1, "$share/workers/jobs/+", 0, |_| {}, None))
            .await;
        assert!(matches!(m.recv5().await, v5::Packet::SubAck(_)));
        members.push(m);
    }
    let (mut p, _) = open5(s.mqtt(), "producer", ADMIN, true, None).await;
    for i in 0..10 {
        p.send5(pub5(&format!("jobs/{i}"), 0, 0, b"job", None))
            .await;
    }
    let mut total = 0;
    for m in members.iter_mut() {
        while let Got5::P(v5::Packet::Publish(_)) =
            m.recv5_within(std::time::Duration::from_millis(400)).await
        {
            total += 1;
        }
    }
    assert_eq!(total, 10, "each job went to exactly one member");
    s.stop().await;
}

#[tokio::test]
async fn mqtt5_3_8_3_3_no_local_skips_own_messages() {
    let s = TestServer::start().await;
    let (mut c, _) = open5(s.mqtt(), "self", ADMIN, true, None).await;
    c.send5(sub5(1, "echo", 0, |f| f.nolocal = true, None))
        .await;
    assert!(matches!(c.recv5().await, v5::Packet::SubAck(_)));
    c.send5(pub5("echo", 0, 0, b"mine", None)).await;
    c.expect_silence(std::time::Duration::from_millis(300))
        .await;
    s.stop().await;
}

#[tokio::test]
async fn mqtt5_3_1_2_11_session_expiry_keeps_the_session_for_its_interval() {
    let s = TestServer::start().await;
    let (mut c, ack) = open5(s.mqtt(), "exp", ADMIN, true, Some(300)).await;
    assert!(!ack.session_present);
    c.send5(sub5(1, "keep/#", 1, |_| {}, None)).await;
    c.recv5().await;
    c.send5(v5::Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    c.expect_closed().await;
    let (mut p, _) = open5(s.mqtt(), "p", ADMIN, true, None).await;
    p.send5(pub5("keep/1", 1, 1, b"kept", None)).await;
    p.recv5().await;
    let (mut c, ack) = open5(s.mqtt(), "exp", ADMIN, false, Some(300)).await;
    assert!(ack.session_present);
    let v5::Packet::Publish(m) = c.recv5().await else {
        panic!()
    };
    assert_eq!(&m.payload[..], b"kept");
    s.stop().await;
}

#[tokio::test]
async fn mqtt5_3_3_2_4_the_server_refuses_foreign_topics_with_0x87() {
    let s = TestServer::start().await;
    let key = s.device("own").await;
    let (mut d, _) = open5(s.mqtt(), "own", Some(("own", &key)), true, None).await;
    d.send5(pub5("devices/other/telemetry", 1, 1, b"{\"v\":1}", None))
        .await;
    match d.recv5().await {
        v5::Packet::PubAck(a) => assert_eq!(a.reason, v5::PubAckReason::NotAuthorized),
        p => panic!("{p:?}"),
    }
    // A filter that can match nothing the device may read is refused…
    d.send5(sub5(2, "devices/other/#", 0, |_| {}, None)).await;
    match d.recv5().await {
        v5::Packet::SubAck(a) => {
            assert_eq!(a.return_codes, vec![v5::SubscribeReasonCode::NotAuthorized])
        }
        p => panic!("{p:?}"),
    }
    // …a wildcard that can reach its own topics is granted and filtered:
    // another device's telemetry never arrives.
    d.send5(sub5(4, "devices/+/telemetry", 0, |_| {}, None))
        .await;
    match d.recv5().await {
        v5::Packet::SubAck(a) => assert!(matches!(
            a.return_codes[0],
            v5::SubscribeReasonCode::Success(_)
        )),
        p => panic!("{p:?}"),
    }
    let other_key = s.device("other").await;
    let (mut o, _) = open5(s.mqtt(), "other", Some(("other", &other_key)), true, None).await;
    o.send5(pub5("devices/other/telemetry", 1, 1, b"{\"v\":2}", None))
        .await;
    assert!(matches!(o.recv5().await, v5::Packet::PubAck(_)));
    d.expect_silence(std::time::Duration::from_millis(300))
        .await;
    d.send5(sub5(3, "devices/own/commands/#", 1, |_| {}, None))
        .await;
    match d.recv5().await {
        v5::Packet::SubAck(a) => assert!(matches!(
            a.return_codes[0],
            v5::SubscribeReasonCode::Success(_)
        )),
        p => panic!("{p:?}"),
    }
    let text = s.metrics().await;
    assert!(text.contains("twinhub_mqtt_acl_denied_total 2"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn mqtt_2_3_1_1_subscribe_needs_a_non_zero_packet_id() {
    let s = TestServer::start().await;
    let (mut r, _) = open4(s.mqtt(), "zero", ADMIN, true).await;
    r.send4(sub4(0, "a/b", 0)).await;
    r.expect_closed().await;
    let (mut r, _) = open4(s.mqtt(), "zero2", ADMIN, true).await;
    r.send4(v4::Packet::Unsubscribe(v4::Unsubscribe {
        pkid: 0,
        topics: vec!["a".into()],
    }))
    .await;
    r.expect_closed().await;
    s.stop().await;
}

/// [MQTT-3.2.2-21]: with `mqtt.max_keepalive` set, a v5 client asking
/// for more (or for none) is told the server's value in CONNACK and held
/// to it; a 3.1.1 client cannot be told and is refused (0x02).
#[tokio::test]
async fn mqtt5_3_2_2_21_server_keep_alive_caps_the_clients() {
    let s = TestServer::start_with(|c| c.mqtt.max_keepalive = 20).await;
    // connect5 asks for 30 s.
    let (_c, ack) = open5(s.mqtt(), "ka5", ADMIN, true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    assert_eq!(ack.properties.unwrap().server_keep_alive, Some(20));
    // Within the maximum: the client's own value stands, nothing is sent.
    let mut r = Raw::open(s.mqtt(), true).await;
    let mut p = connect5("ka5b", ADMIN, true, None);
    if let v5::Packet::Connect(c, ..) = &mut p {
        c.keep_alive = 10;
    }
    r.send5(p).await;
    match r.recv5().await {
        v5::Packet::ConnAck(a) => assert_eq!(a.properties.unwrap().server_keep_alive, None),
        p => panic!("{p:?}"),
    }
    // 3.1.1 asking for 30 s: identifier rejected.
    let (_c4, ack) = open4(s.mqtt(), "ka4", ADMIN, true).await;
    assert_eq!(ack.code, C4::BadClientId);
    s.stop().await;
}

/// [MQTT-3.3.2-…] Topic Alias: the server assigns outbound aliases up to
/// the client's Topic Alias Maximum — the topic is sent once, then only
/// its alias — and never to a client that allows none.
#[tokio::test]
async fn mqtt5_3_3_2_outbound_topic_aliases_up_to_the_clients_maximum() {
    let s = TestServer::start().await;
    let connect_with_aliases = |id: &str, max: Option<u16>| {
        let mut p = connect5(id, ADMIN, true, None);
        if let v5::Packet::Connect(c, ..) = &mut p {
            c.properties.as_mut().unwrap().topic_alias_max = max;
        }
        p
    };
    let topic = "plants/osaka/line-1/reactor-7/temperature";
    let mut subs = Vec::new();
    for (id, max) in [("alias-yes", Some(4)), ("alias-no", None)] {
        let mut r = Raw::open(s.mqtt(), true).await;
        r.send5(connect_with_aliases(id, max)).await;
        assert!(matches!(r.recv5().await, v5::Packet::ConnAck(_)));
        r.send5(sub5(1, "plants/#", 0, |_| {}, None)).await;
        assert!(matches!(r.recv5().await, v5::Packet::SubAck(_)));
        subs.push(r);
    }
    let (mut p, _) = open5(s.mqtt(), "alias-pub", ADMIN, true, None).await;
    for i in 0..3u8 {
        p.send5(pub5(topic, 0, 0, &[i], None)).await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        match subs[0].recv5().await {
            v5::Packet::Publish(m) => seen.push((
                String::from_utf8(m.topic.to_vec()).unwrap(),
                m.properties.and_then(|p| p.topic_alias),
                m.payload.to_vec(),
            )),
            p => panic!("{p:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (topic.to_string(), Some(1), vec![0]),
            (String::new(), Some(1), vec![1]),
            (String::new(), Some(1), vec![2]),
        ]
    );
    for i in 0..3u8 {
        match subs[1].recv5().await {
            v5::Packet::Publish(m) => {
                assert_eq!(m.topic, topic.as_bytes());
                assert_eq!(m.properties.and_then(|p| p.topic_alias), None);
                assert_eq!(m.payload.to_vec(), vec![i]);
            }
            p => panic!("{p:?}"),
        }
    }
    s.stop().await;
}
