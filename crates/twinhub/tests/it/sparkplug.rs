//! Sparkplug B: an edge node (built from the Tahu payload schema, over
//! MQTT 5) births a node and a device, sends data by alias, skips a
//! sequence number, uses an alias it never declared, publishes under
//! another node's id, and dies — and twinhub stores, asks for rebirths,
//! refuses and marks presence as the specification says.

use crate::common::*;
use crate::mqtt::*;
use prost::Message as _;
use rumqttc::v5::mqttbytes::v5;
use serde_json::Value;
use twinhub_codec::sparkplug::{datatype, Metric, MetricValue, Payload};

fn metric(name: Option<&str>, alias: u64, v: MetricValue, dt: u32) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: Some(dt),
        value: Some(v),
        ..Default::default()
    }
}

fn payload(seq: u64, ts: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(ts),
        seq: Some(seq),
        metrics,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Publishes at QoS 1 and returns the PUBACK's reason, with any
/// publishes (commands) that arrived meanwhile.
async fn publish(
    c: &mut Raw,
    pkid: u16,
    topic: &str,
    body: &[u8],
) -> (v5::PubAckReason, Vec<v5::Publish>) {
    c.send5(pub5(topic, 1, pkid, body, None)).await;
    let mut got = Vec::new();
    loop {
        match c.recv5().await {
            v5::Packet::PubAck(a) if a.pkid == pkid => return (a.reason, got),
            v5::Packet::Publish(p) => got.push(p),
            _ => {}
        }
    }
}

fn rebirth_asked(ps: &[v5::Publish]) -> bool {
    ps.iter().any(|p| {
        let pl = Payload::decode(&p.payload[..]).unwrap();
        p.topic == "spBv1.0/plant/NCMD/edge1"[..].as_bytes()
            && pl.metrics[0].name.as_deref() == Some("Node Control/Rebirth")
    })
}

async fn values(s: &TestServer, twin: &str, name: &str) -> Vec<Value> {
    let (_, v) = s
        .json(s.get(&format!("/api/v1/twins/{twin}/telemetry/{name}?from=0")))
        .await;
    v["points"]
        .as_array()
        .map(|p| p.iter().map(|x| x["value"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_edge_node_births_sends_by_alias_and_is_asked_to_rebirth() {
    let s = TestServer::start().await;
    let key = s.device("edge1").await;
    s.device("edge2").await;
    let (mut c, ack) = open5(s.mqtt(), "edge1", Some(("edge1", &key)), true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    c.send5(sub5(1, "spBv1.0/plant/NCMD/edge1", 1, |_| {}, None))
        .await;
    assert!(matches!(c.recv5().await, v5::Packet::SubAck(_)));
    let t0 = 1_700_000_000_000u64;

    let birth = payload(
        0,
        t0,
        vec![
            metric(
                Some("temperature"),
                1,
                MetricValue::DoubleValue(350.5),
                datatype::DOUBLE,
            ),
            metric(
                Some("running"),
                2,
                MetricValue::BooleanValue(true),
                datatype::BOOLEAN,
            ),
            metric(
                Some("offset"),
                3,
                MetricValue::IntValue((-4i32) as u32),
                datatype::INT32,
            ),
        ],
    );
    let (r, _) = publish(&mut c, 10, "spBv1.0/plant/NBIRTH/edge1", &birth).await;
    assert_eq!(r, v5::PubAckReason::Success);
    let dbirth = payload(
        1,
        t0,
        vec![metric(
            Some("pressure"),
            10,
            MetricValue::FloatValue(5.5),
            datatype::FLOAT,
        )],
    );
    let (r, _) = publish(&mut c, 11, "spBv1.0/plant/DBIRTH/edge1/press", &dbirth).await;
    assert_eq!(r, v5::PubAckReason::Success);
    // Data by alias only.
    let data = payload(
        2,
        t0 + 1000,
        vec![Metric {
            alias: Some(1),
            value: Some(MetricValue::DoubleValue(351.25)),
            ..Default::default()
        }],
    );
    let (r, asked) = publish(&mut c, 12, "spBv1.0/plant/NDATA/edge1", &data).await;
    assert_eq!(r, v5::PubAckReason::Success);
    assert!(!rebirth_asked(&asked));
    let ddata = payload(
        3,
        t0 + 1000,
        vec![Metric {
            alias: Some(10),
            value: Some(MetricValue::FloatValue(5.75)),
            ..Default::default()
        }],
    );
    let (r, _) = publish(&mut c, 13, "spBv1.0/plant/DDATA/edge1/press", &ddata).await;
    assert_eq!(r, v5::PubAckReason::Success);

    // Acknowledged means stored: the node's twin and the device's.
    assert_eq!(
        values(&s, "edge1", "temperature").await,
        vec![Value::from(350.5), Value::from(351.25)]
    );
    assert_eq!(values(&s, "edge1", "offset").await, vec![Value::from(-4)]);
    assert_eq!(
        values(&s, "edge1", "running").await,
        vec![Value::from(true)]
    );
    assert_eq!(
        values(&s, "edge1.press", "pressure").await,
        vec![Value::from(5.5), Value::from(5.75)]
    );
    let (st, dev) = s.json(s.get("/api/v1/devices/edge1.press")).await;
    assert_eq!(st, 200, "the DBIRTH registered the device: {dev}");

    // A gap in seq (3 → 7): stored, and a rebirth is requested.
    let gap = payload(
        7,
        t0 + 2000,
        vec![Metric {
            alias: Some(1),
            value: Some(MetricValue::DoubleValue(352.0)),
            ..Default::default()
        }],
    );
    let (r, mut asked) = publish(&mut c, 14, "spBv1.0/plant/NDATA/edge1", &gap).await;
    assert_eq!(r, v5::PubAckReason::Success);
    if !rebirth_asked(&asked) {
        if let v5::Packet::Publish(p) = c.recv5().await {
            asked.push(p);
        }
    }
    assert!(rebirth_asked(&asked), "a sequence gap asks for a rebirth");
    // An alias no birth declared: refused, and a rebirth is requested.
    let unknown = payload(
        8,
        t0 + 3000,
        vec![Metric {
            alias: Some(99),
            value: Some(MetricValue::DoubleValue(1.0)),
            ..Default::default()
        }],
    );
    let (r, mut asked) = publish(&mut c, 15, "spBv1.0/plant/NDATA/edge1", &unknown).await;
    assert_eq!(r, v5::PubAckReason::PayloadFormatInvalid);
    if !rebirth_asked(&asked) {
        if let v5::Packet::Publish(p) = c.recv5().await {
            asked.push(p);
        }
    }
    assert!(rebirth_asked(&asked));
    // Not a protobuf: refused.
    let (r, _) = publish(&mut c, 16, "spBv1.0/plant/NDATA/edge1", b"\xff\xff\xff").await;
    assert_eq!(r, v5::PubAckReason::PayloadFormatInvalid);
    // Another node's namespace: not authorised.
    let (r, _) = publish(&mut c, 17, "spBv1.0/plant/NDATA/edge2", &data).await;
    assert_eq!(r, v5::PubAckReason::NotAuthorized);
    assert!(values(&s, "edge2", "temperature").await.is_empty());

    // A device death marks it inactive.
    let (r, _) = publish(
        &mut c,
        18,
        "spBv1.0/plant/DDEATH/edge1/press",
        &payload(9, t0 + 4000, vec![]),
    )
    .await;
    assert_eq!(r, v5::PubAckReason::Success);
    let (_, dev) = s.json(s.get("/api/v1/devices/edge1.press")).await;
    assert_eq!(dev["active"], false, "{dev}");
    s.stop().await;
}

fn bd_seq(n: u64) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        datatype: Some(datatype::INT64),
        value: Some(MetricValue::LongValue(n)),
        ..Default::default()
    }
}

/// Commands go out as NCMD / DCMD; an NDEATH of an earlier session (its
/// bdSeq is not the current birth's) is ignored, the current one takes
/// the node and its devices offline.
#[tokio::test]
async fn commands_go_out_as_ncmd_and_dcmd_and_stale_deaths_are_ignored() {
    let s = TestServer::start().await;
    let key = s.device("e5").await;
    let (mut c, _) = open5(s.mqtt(), "e5", Some(("e5", &key)), true, None).await;
    c.send5(sub5(1, "spBv1.0/plant/+/e5/#", 1, |_| {}, None))
        .await;
    assert!(matches!(c.recv5().await, v5::Packet::SubAck(_)));
    c.send5(sub5(2, "spBv1.0/plant/NCMD/e5", 1, |_| {}, None))
        .await;
    assert!(matches!(c.recv5().await, v5::Packet::SubAck(_)));
    let t0 = 1_700_000_000_000u64;
    let birth = payload(
        0,
        t0,
        vec![
            bd_seq(1),
            metric(
                Some("temperature"),
                1,
                MetricValue::DoubleValue(20.0),
                datatype::DOUBLE,
            ),
        ],
    );
    let (r, _) = publish(&mut c, 10, "spBv1.0/plant/NBIRTH/e5", &birth).await;
    assert_eq!(r, v5::PubAckReason::Success);
    let dbirth = payload(
        1,
        t0,
        vec![metric(
            Some("position"),
            5,
            MetricValue::DoubleValue(10.0),
            datatype::DOUBLE,
        )],
    );
    let (r, _) = publish(&mut c, 11, "spBv1.0/plant/DBIRTH/e5/valve", &dbirth).await;
    assert_eq!(r, v5::PubAckReason::Success);

    // A device command is a DCMD writing the metric, a node's an NCMD.
    let (st, v) = s
        .json(s.post(
            "/api/v1/devices/e5.valve/commands/position",
            serde_json::json!({"value": 42.5}),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sent"], "spBv1.0/plant/DCMD/e5/valve");
    let (st, v) = s
        .json(s.post(
            "/api/v1/devices/e5/commands/reboot",
            serde_json::json!(true),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sent"], "spBv1.0/plant/NCMD/e5");
    let mut cmds = Vec::new();
    while cmds.len() < 2 {
        if let v5::Packet::Publish(p) = c.recv5().await {
            let pl = Payload::decode(&p.payload[..]).unwrap();
            cmds.push((
                String::from_utf8(p.topic.to_vec()).unwrap(),
                pl.metrics[0].clone(),
            ));
        }
    }
    assert_eq!(cmds[0].0, "spBv1.0/plant/DCMD/e5/valve");
    assert_eq!(cmds[0].1.name.as_deref(), Some("position"));
    assert_eq!(cmds[0].1.value, Some(MetricValue::DoubleValue(42.5)));
    assert_eq!(cmds[1].0, "spBv1.0/plant/NCMD/e5");
    assert_eq!(cmds[1].1.value, Some(MetricValue::BooleanValue(true)));
    let r = s
        .post(
            "/api/v1/devices/e5.valve/commands/position",
            serde_json::json!({"a": 1, "b": 2}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.starts_with("body:"));

    // The will of an earlier session (bdSeq 0) changes nothing.
    let (r, _) = publish(
        &mut c,
        12,
        "spBv1.0/plant/NDEATH/e5",
        &payload(0, t0, vec![bd_seq(0)]),
    )
    .await;
    assert_eq!(r, v5::PubAckReason::Success);
    let (_, dev) = s.json(s.get("/api/v1/devices/e5.valve")).await;
    assert_eq!(dev["active"], true, "{dev}");
    let (_, node) = s.json(s.get("/api/v1/devices/e5")).await;
    assert_eq!(node["active"], true, "{node}");
    // This session's death: the node and its device are offline.
    let (r, _) = publish(
        &mut c,
        13,
        "spBv1.0/plant/NDEATH/e5",
        &payload(0, t0, vec![bd_seq(1)]),
    )
    .await;
    assert_eq!(r, v5::PubAckReason::Success);
    let (_, dev) = s.json(s.get("/api/v1/devices/e5.valve")).await;
    assert_eq!(dev["active"], false, "{dev}");
    let (_, node) = s.json(s.get("/api/v1/devices/e5")).await;
    assert_eq!(node["active"], false, "{node}");
    s.stop().await;
}
