//! Raw frames over UDP: a device declares its binary layout, sends packed
//! frames (and JSON) with its id and key, and gets a 6-byte
//! acknowledgement once the points are durable — or the reason they are
//! not. Bad layouts name the field; bad frames are counted, never fatal.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;
use twinhub_codec::layout::{AckStatus, Frame};
use twinhub_server::store::health::Faults;

pub(crate) const LAYOUT: &str = r#"{"fields": [
    {"name": "temperature", "type": "i16", "offset": 0, "scale": 0.01},
    {"name": "pressure", "type": "u16", "offset": 2, "endian": "little", "scale": 0.1, "add": -50},
    {"name": "door_open", "type": "bool", "offset": 4, "bit": 3}],
  "timestamp": {"type": "u32", "offset": 5, "unit": "s"}}"#;

pub(crate) fn packed(t: i16, p: u16, door: bool, ts: u32) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&t.to_be_bytes());
    f.extend_from_slice(&p.to_le_bytes());
    f.push(if door { 0b1000 } else { 0 });
    f.extend_from_slice(&ts.to_be_bytes());
    f
}

async fn exchange(sock: &tokio::net::UdpSocket, frame: &[u8]) -> Option<[u8; 6]> {
    sock.send(frame).await.unwrap();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await {
        Ok(Ok(6)) => Some(buf[..6].try_into().unwrap()),
        _ => None,
    }
}

pub(crate) fn frame(device: &str, key: &str, seq: u16, payload: &[u8]) -> Vec<u8> {
    Frame {
        ack: true,
        cbor: false,
        json: false,
        seq,
        device,
        key,
        payload,
    }
    .encode()
}

async fn history(s: &TestServer, twin: &str, name: &str) -> Vec<Value> {
    let (_, v) = s
        .json(s.get(&format!("/api/v1/twins/{twin}/telemetry/{name}?from=0")))
        .await;
    v["points"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn udp_frames_are_decoded_with_the_layout_and_acknowledged_when_durable() {
    let s = TestServer::start_with(|c| c.ingest.udp_listen = "127.0.0.1:0".into()).await;
    let udp = s.handle_ready().udp.expect("the UDP socket is open");
    let key = s.device("tiny-1").await;

    // Layouts are checked: a bad field is named.
    let r = s
        .http
        .put(s.url("/api/v1/devices/tiny-1/layout"))
        .bearer_auth(&s.token)
        .body(r#"{"fields": [{"name": "t", "type": "u24", "offset": 0}]}"#)
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .starts_with("fields[0].type:"));
    let r = s
        .http
        .put(s.url("/api/v1/devices/tiny-1/layout"))
        .bearer_auth(&s.token)
        .body(LAYOUT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, got) = s.json(s.get("/api/v1/devices/tiny-1/layout")).await;
    assert_eq!(
        (st.as_u16(), got["fields"][2]["bit"].clone()),
        (200, json!(3))
    );

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(udp).await.unwrap();
    let stored = [b'T', b'H', 0x81, 0, 7, AckStatus::Stored as u8];
    let ack = exchange(
        &sock,
        &frame("tiny-1", &key, 7, &packed(-1234, 600, true, 1_700_000_000)),
    )
    .await;
    assert_eq!(ack, Some(stored));
    // Acknowledged means stored.
    assert_eq!(
        history(&s, "tiny-1", "temperature").await,
        vec![json!({"ts": 1_700_000_000_000i64, "value": -12.34})]
    );
    assert_eq!(history(&s, "tiny-1", "pressure").await[0]["value"], 10.0);
    assert_eq!(history(&s, "tiny-1", "door_open").await[0]["value"], true);
    // JSON frames work too (flagged: a device with a layout sends
    // packed frames, whatever their first byte).
    let json_frame = Frame {
        ack: true,
        cbor: false,
        json: true,
        seq: 8,
        device: "tiny-1",
        key: &key,
        payload: br#"{"ts": 1700000001000, "temperature": 20.5}"#,
    }
    .encode();
    let ack = exchange(&sock, &json_frame).await;
    assert_eq!(ack.map(|a| a[5]), Some(AckStatus::Stored as u8));
    assert_eq!(history(&s, "tiny-1", "temperature").await.len(), 2);
    // A packed frame that starts with `{` (0x7b) is still packed.
    let brace = packed(0x7b00, 600, false, 1_700_000_002);
    assert_eq!(brace[0], b'{');
    let ack = exchange(&sock, &frame("tiny-1", &key, 30, &brace)).await;
    assert_eq!(ack.map(|a| a[5]), Some(AckStatus::Stored as u8));
    assert_eq!(
        history(&s, "tiny-1", "temperature").await[2]["value"],
        314.88
    );

    // A wrong key, a frame too short for the layout, garbage.
    let ack = exchange(
        &sock,
        &frame("tiny-1", "wrong-key", 9, &packed(1, 1, false, 1)),
    )
    .await;
    assert_eq!(ack.map(|a| a[5]), Some(AckStatus::Unauthorized as u8));
    let ack = exchange(&sock, &frame("tiny-1", &key, 10, &[1, 2, 3])).await;
    assert_eq!(
        ack,
        Some([b'T', b'H', 0x81, 0, 10, AckStatus::Invalid as u8])
    );
    sock.send(b"\x00garbage").await.unwrap();
    // A store failure is not acknowledged as stored.
    Faults::set(&s.store().faults().commit, true);
    let ack = exchange(
        &sock,
        &frame("tiny-1", &key, 11, &packed(5, 5, false, 1_700_000_002)),
    )
    .await;
    Faults::set(&s.store().faults().commit, false);
    assert_eq!(ack.map(|a| a[5]), Some(AckStatus::RetryLater as u8));
    assert_eq!(
        history(&s, "tiny-1", "temperature").await.len(),
        3,
        "nothing of it kept"
    );
    // The listener is still there, and the refusals are counted.
    let ack = exchange(
        &sock,
        &frame("tiny-1", &key, 12, &packed(100, 500, false, 1_700_000_003)),
    )
    .await;
    assert_eq!(ack.map(|a| a[5]), Some(AckStatus::Stored as u8));
    let m = s.metrics().await;
    assert!(
        metric_value(
            &m,
            r#"twinhub_ingest_refused_total{protocol="udp",reason="invalid"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
    // A layout survives a restart.
    let s = s.restart().await;
    let (st, _) = s.json(s.get("/api/v1/devices/tiny-1/layout")).await;
    assert_eq!(st, 200);
    s.stop().await;
}

/// One layout for many devices: those a named layout lists, or every
/// device whose twin is of its model (extending models too); a device's
/// own layout wins.
#[tokio::test]
async fn named_layouts_serve_listed_devices_and_devices_of_a_model() {
    let s = TestServer::start_with(|c| c.ingest.udp_listen = "127.0.0.1:0".into()).await;
    let udp = s.handle_ready().udp.expect("the UDP socket is open");
    let models = json!([
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:Tiny;1", "@type": "Interface",
         "contents": [{"@type": "Telemetry", "name": "t", "schema": "double"}]},
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:TinyPlus;1", "@type": "Interface",
         "extends": "dtmi:test:Tiny;1", "contents": []}]);
    let (st, v) = s.json(s.post("/api/v1/models", models)).await;
    assert_eq!(st, 201, "{v}");
    let r = s
        .http
        .put(s.url("/api/v1/twins/m1"))
        .bearer_auth(&s.token)
        .json(&json!({"$metadata": {"$model": "dtmi:test:TinyPlus;1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let keys = [
        ("m1", s.device("m1").await),
        ("l1", s.device("l1").await),
        ("o1", s.device("o1").await),
    ];
    let put = |path: &str, body: Value| {
        s.http
            .put(s.url(path))
            .bearer_auth(&s.token)
            .json(&body)
            .send()
    };
    let by_model = json!({"fields": [{"name": "t", "type": "i16", "offset": 0, "scale": 0.1}],
        "model": "dtmi:test:Tiny;1"});
    assert_eq!(
        put("/api/v1/layouts/tiny", by_model)
            .await
            .unwrap()
            .status(),
        201
    );
    let listed =
        json!({"fields": [{"name": "t", "type": "u8", "offset": 0}], "devices": ["l1", "o1"]});
    assert_eq!(
        put("/api/v1/layouts/listed", listed.clone())
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        put("/api/v1/layouts/listed", listed)
            .await
            .unwrap()
            .status(),
        200
    );
    let own = json!({"fields": [{"name": "t", "type": "u8", "offset": 0, "scale": 10}]});
    assert_eq!(
        put("/api/v1/devices/o1/layout", own)
            .await
            .unwrap()
            .status(),
        200
    );
    // Refusals name the field.
    let r = put(
        "/api/v1/layouts/x",
        json!({"fields": [{"name": "t", "type": "u8", "offset": 0}]}),
    )
    .await
    .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .starts_with("devices:"));
    let r = put(
        "/api/v1/layouts/x",
        json!({"fields": [{"name": "t", "type": "u8", "offset": 0}], "model": "Tiny"}),
    )
    .await
    .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .starts_with("model:"));
    let (_, list) = s.json(s.get("/api/v1/layouts")).await;
    let ids: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["listed", "tiny"]);

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(udp).await.unwrap();
    let send = |dev: &'static str, seq: u16, payload: Vec<u8>| {
        let key = keys.iter().find(|(d, _)| *d == dev).unwrap().1.clone();
        let sock = &sock;
        async move {
            exchange(sock, &frame(dev, &key, seq, &payload))
                .await
                .unwrap()[5]
        }
    };
    assert_eq!(
        send("m1", 1, vec![0x01, 0x00]).await,
        AckStatus::Stored as u8
    );
    assert_eq!(send("l1", 2, vec![7]).await, AckStatus::Stored as u8);
    assert_eq!(send("o1", 3, vec![7]).await, AckStatus::Stored as u8);
    assert_eq!(history(&s, "m1", "t").await[0]["value"], 25.6);
    assert_eq!(history(&s, "l1", "t").await[0]["value"], 7.0);
    assert_eq!(history(&s, "o1", "t").await[0]["value"], 70.0);

    // Deleted: the listed device has no layout any more.
    assert_eq!(
        s.delete("/api/v1/layouts/listed")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(send("l1", 4, vec![8]).await, AckStatus::Invalid as u8);
    // Named layouts survive a restart.
    let s = s.restart().await;
    let (st, v) = s.json(s.get("/api/v1/layouts/tiny")).await;
    assert_eq!(st, 200);
    assert_eq!(v["model"], "dtmi:test:Tiny;1");
    s.stop().await;
}

/// `{"temperature": v}` in CBOR (a map of one text key and a float64).
fn cbor_temperature(v: f64) -> Vec<u8> {
    let mut b = vec![0xa1, 0x60 | 11];
    b.extend_from_slice(b"temperature");
    b.push(0xfb);
    b.extend_from_slice(&v.to_be_bytes());
    b
}

/// Frames over TCP: length-prefixed, acknowledged in order on the
/// connection; CBOR payloads; every refusal counted per device.
#[tokio::test]
async fn tcp_frames_are_acknowledged_in_order_and_refusals_counted_per_device() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.ingest.tcp_listen = "127.0.0.1:0".into()).await;
    let tcp = s.handle_ready().tcp.expect("the TCP listener is open");
    let key = s.device("tcp-1").await;
    let r = s
        .http
        .put(s.url("/api/v1/devices/tcp-1/layout"))
        .bearer_auth(&s.token)
        .body(LAYOUT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut conn = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let framed = |f: Vec<u8>| {
        let mut out = (f.len() as u16).to_be_bytes().to_vec();
        out.extend(f);
        out
    };
    let cbor = Frame {
        ack: true,
        cbor: true,
        json: false,
        seq: 2,
        device: "tcp-1",
        key: &key,
        payload: &cbor_temperature(19.25),
    }
    .encode();
    // Three frames in one write: binary, CBOR, and one with a bad key.
    let mut burst = framed(frame(
        "tcp-1",
        &key,
        1,
        &packed(2150, 600, false, 1_700_000_000),
    ));
    burst.extend(framed(cbor));
    burst.extend(framed(frame("tcp-1", "wrong-key", 3, &[0; 9])));
    conn.write_all(&burst).await.unwrap();
    let mut acks = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut acks))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &acks[..6],
        &[b'T', b'H', 0x81, 0, 1, AckStatus::Stored as u8]
    );
    assert_eq!(
        &acks[6..12],
        &[b'T', b'H', 0x81, 0, 2, AckStatus::Stored as u8]
    );
    assert_eq!(
        &acks[12..],
        &[b'T', b'H', 0x81, 0, 3, AckStatus::Unauthorized as u8]
    );
    let t = history(&s, "tcp-1", "temperature").await;
    let values: Vec<f64> = t.iter().map(|p| p["value"].as_f64().unwrap()).collect();
    assert!(values.contains(&21.5) && values.contains(&19.25), "{t:?}");
    // Too short for the layout, and garbage: refused, counted, and the
    // connection carries on.
    conn.write_all(&framed(frame("tcp-1", &key, 4, &[1, 2])))
        .await
        .unwrap();
    conn.write_all(&framed(b"XX-not-a-frame".to_vec()))
        .await
        .unwrap();
    conn.write_all(&framed(frame(
        "tcp-1",
        &key,
        5,
        &packed(2200, 600, true, 1_700_000_001),
    )))
    .await
    .unwrap();
    let mut two = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut two))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(two[5], AckStatus::Invalid as u8);
    assert_eq!(
        &two[6..],
        &[b'T', b'H', 0x81, 0, 5, AckStatus::Stored as u8]
    );
    let m = s.metrics().await;
    let count =
        |series: &str| metric_value(&m, series).unwrap_or_else(|| panic!("{series} in {m}"));
    assert_eq!(
        count("twinhub_frames_refused_total{device=\"tcp-1\",reason=\"unauthorized\"}"),
        1.0
    );
    assert_eq!(
        count("twinhub_frames_refused_total{device=\"tcp-1\",reason=\"invalid\"}"),
        1.0
    );
    assert_eq!(
        count("twinhub_frames_refused_total{device=\"unknown\",reason=\"malformed\"}"),
        1.0
    );
    s.stop().await;
}

/// On a closed network a device is known by its address and sends only
/// its bare payload.
#[tokio::test]
async fn devices_known_by_address_send_bare_payloads() {
    let s = TestServer::start_with(|c| {
        c.ingest.udp_listen = "127.0.0.1:0".into();
        c.ingest
            .frame_sources
            .insert("127.0.0.1".into(), "bare-1".into());
    })
    .await;
    let udp = s.handle_ready().udp.unwrap();
    s.device("bare-1").await;
    let r = s
        .http
        .put(s.url("/api/v1/devices/bare-1/layout"))
        .bearer_auth(&s.token)
        .body(LAYOUT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(udp).await.unwrap();
    sock.send(&packed(2345, 600, true, 1_700_000_000))
        .await
        .unwrap();
    until("the bare payload stored", || async {
        !history(&s, "bare-1", "temperature").await.is_empty()
    })
    .await;
    assert_eq!(
        history(&s, "bare-1", "temperature").await[0]["value"],
        23.45
    );
    assert_eq!(history(&s, "bare-1", "door_open").await[0]["value"], true);
    s.stop().await;
}
