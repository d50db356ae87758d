//! One set of cases, every ingest adapter (HTTP, MQTT 5, MQTT 3.1.1): the
//! same situation gets the same outcome — stored and acknowledged, refused
//! and told (or, on 3.1.1, acknowledged and dropped where the contract
//! says so), refused at authentication, or not acknowledged so the client
//! retries — and nothing refused is stored. Refusals are counted under one
//! metric with a `protocol` label. A new adapter (OPC UA, Sparkplug, line
//! protocol, raw TCP/UDP) joins by adding itself to `Adapter`.

use crate::common::*;
use crate::mqtt::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};
use twinhub_server::store::health::Faults;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Adapter {
    Http,
    Mqtt5,
    Mqtt311,
    /// InfluxDB line protocol with an API key (the key stands for the
    /// device's credentials; a revoked key for a disabled device).
    Line,
    /// Sparkplug B over MQTT 5: the device is the edge node; the message
    /// is an NBIRTH carrying the value.
    Sparkplug,
    /// A LoRaWAN uplink posted by The Things Stack's webhook to a lorawan
    /// connector with an API key (the key stands for the credentials, a
    /// revoked key for a disabled device); the value is the decoded object.
    LoRaWan,
}

/// What the client learns, whatever the protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Acknowledged: durable.
    Stored,
    /// Told it was refused and why (4xx, or a v5 reason code).
    Refused,
    /// Acknowledged but dropped (3.1.1 has no negative PUBACK; invalid
    /// telemetry only, as the contract says).
    AckedDropped,
    /// The credentials were refused (401/403, CONNACK refusal).
    NotAuthenticated,
    /// No acknowledgement: retry later (503 + Retry-After, v5 0x80, 3.1.1
    /// connection closed).
    RetryLater,
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Valid,
    InvalidProperty,
    WrongKey,
    Disabled,
    OverQuota,
    StoreFailure,
}

fn expected(case: Case, a: Adapter) -> Outcome {
    use Adapter::*;
    use Outcome::*;
    match (case, a) {
        (Case::Valid, _) => Stored,
        (Case::InvalidProperty, Mqtt311) => AckedDropped,
        (Case::InvalidProperty, _) => Refused,
        (Case::WrongKey | Case::Disabled, _) => NotAuthenticated,
        (Case::OverQuota, Mqtt311) => RetryLater,
        (Case::OverQuota, _) => Refused,
        (Case::StoreFailure, _) => RetryLater,
    }
}

/// What an HTTP client learns from the status (`ok` is the success code).
fn http_outcome(status: u16, ok: u16) -> Outcome {
    match status {
        s if s == ok => Outcome::Stored,
        401 | 403 => Outcome::NotAuthenticated,
        503 => Outcome::RetryLater,
        400 | 422 | 429 => Outcome::Refused,
        st => panic!("HTTP {st}"),
    }
}

/// What an MQTT 5 client learns from the PUBACK of its QoS 1 publish.
async fn v5_outcome(c: &mut Raw) -> Outcome {
    match c.recv5_within(WAIT).await {
        Got5::P(v5::Packet::PubAck(a)) => match a.reason {
            v5::PubAckReason::Success => Outcome::Stored,
            v5::PubAckReason::UnspecifiedError => Outcome::RetryLater,
            _ => Outcome::Refused,
        },
        Got5::Closed => Outcome::RetryLater,
        Got5::P(p) => panic!("{p:?}"),
        Got5::Silent => panic!("no answer"),
    }
}

/// Sends one message `{"ts": ts, name: value}` as device `id` and reports
/// what the client saw.
async fn send(s: &TestServer, a: Adapter, id: &str, key: &str, body: Value) -> Outcome {
    let payload = body.to_string();
    let topic = format!("devices/{id}/telemetry");
    match a {
        Adapter::Sparkplug => {
            use prost::Message as _;
            use twinhub_codec::sparkplug::{Metric, MetricValue, Payload};
            let m = body.as_object().unwrap();
            let (name, value) = m.iter().find(|(k, _)| *k != "ts").unwrap();
            let payload = Payload {
                timestamp: m["ts"].as_u64(),
                seq: Some(0),
                metrics: vec![Metric {
                    name: Some(name.clone()),
                    value: Some(MetricValue::DoubleValue(value.as_f64().unwrap())),
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec();
            let (mut c, ack) = open5(s.mqtt(), id, Some((id, key)), true, None).await;
            if ack.code != v5::ConnectReturnCode::Success {
                return Outcome::NotAuthenticated;
            }
            c.send5(pub5(
                &format!("spBv1.0/plant/NBIRTH/{id}"),
                1,
                1,
                &payload,
                None,
            ))
            .await;
            v5_outcome(&mut c).await
        }
        Adapter::LoRaWan => {
            let up = json!({"end_device_ids": {"device_id": id,
                    "application_ids": {"application_id": "compliance"}, "dev_eui": "0000000000000001"},
                "received_at": "2024-02-12T15:15:00Z",
                "uplink_message": {"f_port": 1, "frm_payload": "AA==", "decoded_payload": body}});
            let r = s
                .http
                .post(s.url("/api/v1/connectors/tts/uplink"))
                .bearer_auth(key)
                .json(&up)
                .send()
                .await
                .unwrap();
            http_outcome(r.status().as_u16(), 204)
        }
        Adapter::Line => {
            let m = body.as_object().unwrap();
            let (name, value) = m.iter().find(|(k, _)| *k != "ts").unwrap();
            let line = format!("m,twin={} {name}={value} {}", twin_of(id), m["ts"]);
            let r = s
                .http
                .post(s.url("/api/v2/write?bucket=b&precision=ms"))
                .header("authorization", format!("Token {key}"))
                .body(line)
                .send()
                .await
                .unwrap();
            http_outcome(r.status().as_u16(), 204)
        }
        Adapter::Http => {
            let r = s.send(id, key, body).await;
            http_outcome(r.status().as_u16(), 200)
        }
        Adapter::Mqtt5 => {
            let (mut c, ack) = open5(s.mqtt(), id, Some((id, key)), true, None).await;
            if ack.code != v5::ConnectReturnCode::Success {
                return Outcome::NotAuthenticated;
            }
            c.send5(pub5(&topic, 1, 1, payload.as_bytes(), None)).await;
            v5_outcome(&mut c).await
        }
        Adapter::Mqtt311 => {
            let (mut c, ack) = open4(s.mqtt(), id, Some((id, key)), false).await;
            if ack.code != v4::ConnectReturnCode::Success {
                return Outcome::NotAuthenticated;
            }
            c.send4(pub4(&topic, 1, 1, payload.as_bytes(), false)).await;
            match c.recv4_within(WAIT).await {
                // Stored, or dropped: the caller tells them apart by history.
                Got4::P(v4::Packet::PubAck(_)) => Outcome::Stored,
                Got4::Closed => Outcome::RetryLater,
                Got4::P(p) => panic!("{p:?}"),
                Got4::Silent => panic!("no answer"),
            }
        }
    }
}

fn twin_of(id: &str) -> String {
    format!("tw-{id}")
}

fn tenant_of(id: &str) -> &'static str {
    if id.contains("quota") {
        "small"
    } else {
        "default"
    }
}

async fn stored_points(s: &TestServer, id: &str) -> usize {
    let (st, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/{}/telemetry/temperature?from=0&tenant={}",
            twin_of(id),
            tenant_of(id)
        )))
        .await;
    if st != 200 {
        return 0;
    }
    v["points"].as_array().map(|p| p.len()).unwrap_or(0)
}

async fn reactor_twin(s: &TestServer, tenant: &str, twin: &str) -> (reqwest::StatusCode, Value) {
    s.json(
        s.http
            .put(s.url(&format!("/api/v1/twins/{twin}?tenant={tenant}")))
            .bearer_auth(&s.token)
            .json(&json!({"$metadata": {"$model": "dtmi:test:Reactor;1"}, "jacket": {"$metadata": {}}})),
    )
    .await
}

fn refused_metric(text: &str, protocol: &str, reason: &str) -> u64 {
    let series =
        format!("twinhub_ingest_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}");
    metric_value(text, &series).unwrap_or(0.0) as u64
}

#[tokio::test]
async fn every_adapter_answers_every_case_alike() {
    let s = TestServer::start().await;
    crate::graph::load_plant(&s).await;
    crate::quotas::small_tenant(&s, json!({"points_per_day": 1})).await;
    let adapters = [
        Adapter::Http,
        Adapter::Mqtt5,
        Adapter::Mqtt311,
        Adapter::Line,
        Adapter::Sparkplug,
        Adapter::LoRaWan,
    ];
    let cases = [
        Case::Valid,
        Case::InvalidProperty,
        Case::WrongKey,
        Case::Disabled,
        Case::OverQuota,
        Case::StoreFailure,
    ];
    let mut ts = 1_764_500_000_000i64;
    for a in adapters {
        let proto = match a {
            Adapter::Http => "http",
            Adapter::Line => "line",
            Adapter::Sparkplug => "sparkplug",
            Adapter::LoRaWan => "lorawan",
            _ => "mqtt",
        };
        for case in cases {
            let id = format!("{:?}-{:?}", a, case).to_lowercase();
            let id = if matches!(case, Case::OverQuota) {
                format!("quota-{id}")
            } else {
                id
            };
            let tenant = tenant_of(&id);
            // A modelled twin (a reactor) for the device to update.
            let (st, v) = reactor_twin(&s, tenant, &twin_of(&id)).await;
            if st != 201 {
                // The small tenant needs the models too.
                s.http
                    .post(s.url(&format!("/api/v1/models?tenant={tenant}")))
                    .bearer_auth(&s.token)
                    .json(&crate::graph::plant_models())
                    .send()
                    .await
                    .unwrap();
                let (st2, v2) = reactor_twin(&s, tenant, &twin_of(&id)).await;
                assert_eq!(st2, 201, "{v} {v2}");
            }
            let (st, d) = s
                .json(s.post(
                    &format!("/api/v1/devices?tenant={tenant}"),
                    json!({"id": id, "twin_id": twin_of(&id)}),
                ))
                .await;
            assert_eq!(st, 201, "{d}");
            let device_key = d["key"].as_str().unwrap().to_string();
            let mut key = device_key.clone();
            let mut apikey_id = String::new();
            if a == Adapter::LoRaWan {
                // The tenant's connector, made once.
                let _ = s
                    .post(
                        &format!("/api/v1/connectors?tenant={tenant}"),
                        json!({"id": "tts", "kind": "lorawan", "network": "tts", "device_key": "name"}),
                    )
                    .send()
                    .await
                    .unwrap();
            }
            if matches!(a, Adapter::Line | Adapter::LoRaWan) {
                let (st, k) = s
                    .json(s.post(
                        &format!("/api/v1/apikeys?tenant={tenant}"),
                        json!({"name": id, "permissions": ["telemetry:write"]}),
                    ))
                    .await;
                assert_eq!(st, 201, "{k}");
                key = k["key"].as_str().unwrap().to_string();
                apikey_id = k["id"].as_str().unwrap().to_string();
            }
            ts += 1;
            let mut body = json!({"ts": ts, "temperature": 350.5});
            match case {
                Case::Valid => {}
                Case::InvalidProperty => body = json!({"ts": ts, "humidity": 3}),
                Case::WrongKey => key = "wrong-key-0123456789".into(),
                Case::Disabled if matches!(a, Adapter::Line | Adapter::LoRaWan) => {
                    let r = s
                        .delete(&format!("/api/v1/apikeys/{apikey_id}?tenant={tenant}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 204);
                }
                Case::Disabled => {
                    let r = s
                        .patch(
                            &format!("/api/v1/devices/{id}?tenant={tenant}"),
                            json!({"enabled": false}),
                        )
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
                Case::OverQuota => {
                    // The tenant's one point of the day is used first.
                    let first = send(
                        &s,
                        Adapter::Http,
                        &id,
                        &device_key,
                        json!({"ts": ts - 1_000_000, "temperature": 1}),
                    )
                    .await;
                    assert!(matches!(first, Outcome::Stored | Outcome::Refused));
                }
                Case::StoreFailure => Faults::set(&s.store().faults().commit, true),
            }
            let before_model = refused_metric(&s.metrics().await, proto, "model");
            let before_points = stored_points(&s, &id).await;
            let got = send(&s, a, &id, &key, body).await;
            Faults::set(&s.store().faults().commit, false);
            let mut got = got;
            let after = stored_points(&s, &id).await;
            if a == Adapter::Mqtt311 && got == Outcome::Stored && after == before_points {
                got = Outcome::AckedDropped;
            }
            assert_eq!(got, expected(case, a), "{a:?} {case:?}");
            let stored_now = after - before_points;
            assert_eq!(
                stored_now,
                usize::from(got == Outcome::Stored),
                "{a:?} {case:?}: only an acknowledged message is stored"
            );
            if matches!(case, Case::InvalidProperty) {
                let m = s.metrics().await;
                assert_eq!(
                    refused_metric(&m, proto, "model"),
                    before_model + 1,
                    "{a:?}: counted under the same name"
                );
            }
        }
    }
    s.stop().await;
}
