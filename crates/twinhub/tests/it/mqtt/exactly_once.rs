//! QoS 2 stays exactly-once across a server restart, in both directions:
//! the exchanges in flight resume under their packet ids.

use super::*;
use crate::common::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use std::time::Duration;

#[tokio::test]
async fn qos2_exchanges_in_flight_survive_restart() {
    let s = TestServer::start().await;
    let admin = Some(("admin", ADMIN_PASSWORD));
    let (mut sub, _) = open4(s.mqtt(), "sub", admin, false).await;
    sub.send4(sub4(1, "q2/+", 2)).await;
    assert!(matches!(sub.recv4().await, v4::Packet::SubAck(_)));
    let (mut p, _) = open5(s.mqtt(), "pub", admin, false, Some(3600)).await;
    // "first" completes on the publisher side; "second" stops after PUBREC.
    p.send5(pub5("q2/a", 2, 10, b"first", None)).await;
    assert!(matches!(p.recv5().await, v5::Packet::PubRec(r) if r.pkid == 10));
    p.send5(v5::Packet::PubRel(v5::PubRel::new(10, None))).await;
    assert!(matches!(p.recv5().await, v5::Packet::PubComp(c) if c.pkid == 10));
    p.send5(pub5("q2/b", 2, 11, b"second", None)).await;
    assert!(matches!(p.recv5().await, v5::Packet::PubRec(r) if r.pkid == 11));

    // The subscriber takes "first" up to PUBREL and "second" not at all.
    let mut ids = std::collections::HashMap::new();
    for _ in 0..2 {
        match sub.recv4().await {
            v4::Packet::Publish(m) => {
                ids.insert(m.payload.to_vec(), m.pkid);
            }
            other => panic!("{other:?}"),
        }
    }
    let (first, second) = (ids[&b"first".to_vec()], ids[&b"second".to_vec()]);
    sub.send4(v4::Packet::PubRec(v4::PubRec::new(first))).await;
    assert!(matches!(sub.recv4().await, v4::Packet::PubRel(r) if r.pkid == first));
    drop(sub);
    // A QoS 1 message for the absent subscriber: its PUBACK means every
    // earlier state change is durable too.
    p.send5(pub5("q2/c", 1, 12, b"third", None)).await;
    assert!(matches!(p.recv5().await, v5::Packet::PubAck(_)));
    drop(p);

    let s = s.restart().await;
    let (mut sub, ack) = open4(s.mqtt(), "sub", admin, false).await;
    assert!(ack.session_present);
    // PUBREL again for "first", "second" again under its id with DUP, then
    // the queued "third"; nothing twice.
    assert!(matches!(sub.recv4().await, v4::Packet::PubRel(r) if r.pkid == first));
    match sub.recv4().await {
        v4::Packet::Publish(m) => {
            assert_eq!(
                (m.pkid, m.dup, m.payload.as_ref()),
                (second, true, &b"second"[..])
            )
        }
        other => panic!("{other:?}"),
    }
    let third = match sub.recv4().await {
        v4::Packet::Publish(m) => {
            assert_eq!(m.payload.as_ref(), b"third");
            m.pkid
        }
        other => panic!("{other:?}"),
    };
    sub.send4(v4::Packet::PubComp(v4::PubComp::new(first)))
        .await;
    sub.send4(v4::Packet::PubRec(v4::PubRec::new(second))).await;
    assert!(matches!(sub.recv4().await, v4::Packet::PubRel(r) if r.pkid == second));
    sub.send4(v4::Packet::PubComp(v4::PubComp::new(second)))
        .await;
    sub.send4(v4::Packet::PubAck(v4::PubAck::new(third))).await;

    // The publisher retransmits "second": acknowledged, not delivered again;
    // its PUBREL finds the packet id.
    let (mut p, ack) = open5(s.mqtt(), "pub", admin, false, Some(3600)).await;
    assert!(ack.session_present);
    let mut again = v5::Publish::new("q2/b", q5(2), b"second".to_vec(), None);
    again.pkid = 11;
    again.dup = true;
    p.send5(v5::Packet::Publish(again)).await;
    assert!(matches!(p.recv5().await, v5::Packet::PubRec(r) if r.pkid == 11));
    p.send5(v5::Packet::PubRel(v5::PubRel::new(11, None))).await;
    match p.recv5().await {
        v5::Packet::PubComp(c) => {
            assert_eq!((c.pkid, c.reason), (11, v5::PubCompReason::Success))
        }
        other => panic!("{other:?}"),
    }
    match sub.recv4_within(Duration::from_millis(300)).await {
        Got4::Silent => {}
        Got4::P(p) => panic!("delivered twice: {p:?}"),
        Got4::Closed => panic!("closed"),
    }
    s.stop().await;
}
