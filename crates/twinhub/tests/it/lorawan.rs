//! LoRaWAN through the network server: ChirpStack v4's MQTT integration
//! on a real broker (the machine's Mosquitto), The Things Stack's webhook,
//! and downlinks back through each. The uplink JSON is the networks'
//! documented event shape.

use crate::common::*;
use rumqttc::QoS;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

/// ChirpStack v4's `up` event (its documentation's example), for `app`.
fn chirpstack_up(app: &str, eui: &str, data: &str, object: Option<Value>) -> Value {
    let mut v = json!({
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2022-07-18T09:34:15.775023242+00:00",
        "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
            "applicationId": app, "applicationName": "Test application",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad", "deviceProfileName": "Test device-profile",
            "deviceName": "Test device", "devEui": eui, "tags": {"key": "value"}},
        "devAddr": "00189440", "dr": 1, "fPort": 1, "data": data,
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "uplinkId": 4217106255u64, "rssi": -36, "snr": 10.5}],
        "txInfo": {"frequency": 868100000}
    });
    if let Some(o) = object {
        v["object"] = o;
    }
    v
}

async fn history(s: &TestServer, twin: &str, name: &str) -> Vec<Value> {
    let (_, v) = s
        .json(s.get(&format!("/api/v1/twins/{twin}/telemetry/{name}?from=0")))
        .await;
    v["points"].as_array().cloned().unwrap_or_default()
}

async fn status(s: &TestServer, id: &str) -> Value {
    let (st, v) = s.json(s.get(&format!("/api/v1/connectors/{id}"))).await;
    assert_eq!(st, 200, "{v}");
    v["status"].clone()
}

#[tokio::test]
async fn chirpstack_uplinks_over_its_mqtt_broker_and_downlinks_back() {
    let s = TestServer::start().await;
    let app = format!("app-{}", unique());
    let eui = "0101010101010101";
    s.device(eui).await;
    // The device packs its level in one byte.
    let r = s
        .http
        .put(s.url("/api/v1/layouts/level-sensor"))
        .bearer_auth(&s.token)
        .json(&json!({"fields": [{"name": "level", "type": "u8", "offset": 0}], "devices": [eui]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (st, v) = s
        .json(s.post(
            "/api/v1/connectors",
            json!({"id": "cs", "kind": "lorawan", "network": "chirpstack",
                   "broker": "mqtt://127.0.0.1:1883", "application_id": app}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    until("connected to the broker", || async {
        status(&s, "cs").await["state"] == "connected"
    })
    .await;
    // ChirpStack publishes its events; the down topic is watched.
    let (pubc, down) =
        mosquitto_recorder(&format!("application/{app}/device/+/command/down")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let up = format!("application/{app}/device/{eui}/event/up");
    pubc.publish(
        &up,
        QoS::AtLeastOnce,
        false,
        chirpstack_up(&app, eui, "qg==", None).to_string(),
    )
    .await
    .unwrap();
    until("the uplink stored", || async {
        !history(&s, eui, "level").await.is_empty()
    })
    .await;
    let p = history(&s, eui, "level").await;
    assert_eq!(p[0]["value"], 170.0);
    assert_eq!(p[0]["ts"].as_f64().unwrap() as i64, 1_658_136_855_775);
    // A decoded object is stored as it is.
    let mut with_object = chirpstack_up(
        &app,
        eui,
        "",
        Some(json!({"temperature": 21.5, "battery": {"value": 3.1, "quality": "uncertain"}})),
    );
    with_object["time"] = json!("2022-07-18T09:35:15Z");
    pubc.publish(&up, QoS::AtLeastOnce, false, with_object.to_string())
        .await
        .unwrap();
    until("the decoded object stored", || async {
        !history(&s, eui, "temperature").await.is_empty()
    })
    .await;
    assert_eq!(history(&s, eui, "battery").await[0]["quality"], "uncertain");
    // An unknown device and a malformed event are counted, never fatal.
    pubc.publish(
        format!("application/{app}/device/ffffffffffffffff/event/up"),
        QoS::AtLeastOnce,
        false,
        chirpstack_up(&app, "ffffffffffffffff", "qg==", None).to_string(),
    )
    .await
    .unwrap();
    pubc.publish(&up, QoS::AtLeastOnce, false, "not json")
        .await
        .unwrap();
    until("the refusals counted", || async {
        status(&s, "cs").await["rejected"].as_u64() == Some(2)
    })
    .await;
    assert!(status(&s, "cs").await["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("ffffffffffffffff"));

    // Downlink: published where ChirpStack takes it.
    let r = s
        .post(
            "/api/v1/connectors/cs/downlink",
            json!({"device": eui, "f_port": 10, "hex": "01ff", "confirmed": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    until("the downlink on the broker", || async {
        !down.lock().unwrap().is_empty()
    })
    .await;
    let (topic, body) = down.lock().unwrap()[0].clone();
    assert_eq!(
        topic,
        format!("application/{app}/device/{eui}/command/down")
    );
    assert_eq!(
        body,
        json!({"devEui": eui, "confirmed": true, "fPort": 10, "data": "Af8="})
    );
    let r = s
        .post(
            "/api/v1/connectors/cs/downlink",
            json!({"device": "never-seen", "f_port": 10, "hex": "01"}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .starts_with("device:"));
    let r = s
        .post(
            "/api/v1/connectors/cs/downlink",
            json!({"device": eui, "f_port": 10, "hex": "0"}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.starts_with("hex:"));
    s.stop().await;
}

/// What a fake The Things Stack API received: (path, authorization, body).
type Pushed = Arc<Mutex<Vec<(String, String, Value)>>>;

async fn tts_api() -> (String, Pushed) {
    use axum::extract::State;
    let got: Pushed = Default::default();
    let app = axum::Router::new()
        .fallback(
            |State(got): State<Pushed>,
             uri: axum::http::Uri,
             headers: axum::http::HeaderMap,
             body: axum::body::Bytes| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                got.lock().unwrap().push((
                    uri.path().to_string(),
                    auth,
                    serde_json::from_slice(&body).unwrap_or(Value::Null),
                ));
                axum::http::StatusCode::OK
            },
        )
        .with_state(got.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

#[tokio::test]
async fn the_things_stack_webhook_uplinks_and_downlinks() {
    let s = TestServer::start().await;
    let dev = "eui-0004a30b001c0530";
    s.device(dev).await;
    let (api, pushed) = tts_api().await;
    let r = s
        .http
        .put(s.url("/api/v1/secrets/tts-key"))
        .bearer_auth(&s.token)
        .json(&json!({"value": "NNSXS.TESTKEY"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // A definition naming a secret that is not there is refused.
    let r = s
        .post(
            "/api/v1/connectors",
            json!({"id": "x", "kind": "lorawan", "network": "tts",
            "api_url": api, "webhook_id": "twinhub", "api_key_secret": "nope"}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("api_key_secret"));
    let r = s
        .post(
            "/api/v1/connectors",
            json!({"id": "x", "kind": "lorawan", "network": "lorawan-hub"}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .starts_with("network:"));
    let (st, v) = s
        .json(s.post(
            "/api/v1/connectors",
            json!({"id": "tts", "kind": "lorawan", "network": "tts", "device_key": "name",
                   "api_url": api, "webhook_id": "twinhub", "api_key_secret": "tts-key"}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");

    // The webhook posts with an API key allowed to write telemetry.
    let (_, k) = s
        .json(s.post(
            "/api/v1/apikeys",
            json!({"name": "tts-webhook", "permissions": ["telemetry:write"]}),
        ))
        .await;
    let key = k["key"].as_str().unwrap().to_string();
    let uplink = |body: Value| {
        s.http
            .post(s.url("/api/v1/connectors/tts/uplink"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let up = json!({"end_device_ids": {"device_id": dev,
            "application_ids": {"application_id": "plant-sensors"}, "dev_eui": "0004A30B001C0530"},
        "correlation_ids": ["as:up:01E0"],
        "received_at": "2024-02-12T15:15:00.5Z",
        "uplink_message": {"f_port": 15, "f_cnt": 7, "frm_payload": "CB0=",
            "decoded_payload": {"temperature": 22.5, "humidity": 41},
            "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-1"}, "rssi": -42}],
            "received_at": "2024-02-12T15:15:00.25Z"}});
    let r = uplink(up.clone()).await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let t = history(&s, dev, "temperature").await;
    assert_eq!(t[0]["value"], 22.5);
    assert_eq!(t[0]["ts"].as_f64().unwrap() as i64, 1_707_750_900_250);
    assert_eq!(history(&s, dev, "humidity").await[0]["value"], 41.0);
    // Unknown devices 422, malformed events 400 naming the field.
    let mut other = up.clone();
    other["end_device_ids"]["device_id"] = json!("someone-else");
    let r = uplink(other).await.unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("someone-else"));
    let r = uplink(json!({"end_device_ids": {"device_id": dev}}))
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .starts_with("uplink_message:"));
    // A disabled device's uplinks are refused.
    let r = s
        .patch(&format!("/api/v1/devices/{dev}"), json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = uplink(up.clone()).await.unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("disabled"));
    let r = s
        .patch(&format!("/api/v1/devices/{dev}"), json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An API key without telemetry:write is refused.
    let (_, k2) = s
        .json(s.post(
            "/api/v1/apikeys",
            json!({"name": "reader", "permissions": ["telemetry:read"]}),
        ))
        .await;
    let r = s
        .http
        .post(s.url("/api/v1/connectors/tts/uplink"))
        .bearer_auth(k2["key"].as_str().unwrap())
        .json(&up)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Downlink: pushed to The Things Stack's webhook API with its key.
    let r = s
        .post(
            "/api/v1/connectors/tts/downlink",
            json!({"device": dev, "f_port": 2, "data": "AQI="}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let got = pushed.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0,
        format!("/api/v3/as/applications/plant-sensors/webhooks/twinhub/devices/{dev}/down/push")
    );
    assert_eq!(got[0].1, "Bearer NNSXS.TESTKEY");
    assert_eq!(
        got[0].2,
        json!({"downlinks": [{"f_port": 2, "frm_payload": "AQI=", "priority": "NORMAL", "confirmed": false}]})
    );
    // A device command to a LoRaWAN device is a downlink too.
    let (st, v) = s
        .json(s.post(
            &format!("/api/v1/devices/{dev}/commands/open-valve"),
            json!({"f_port": 3, "hex": "ff"}),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], 202);
    let got = pushed.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].2["downlinks"][0]["frm_payload"], "/w==");
    assert_eq!(got[1].2["downlinks"][0]["f_port"], 3);
    assert_eq!(status(&s, "tts").await["points_in"], 2);
    s.stop().await;
}
