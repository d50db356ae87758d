//! LoRaWAN network-server uplinks as their integrations deliver them:
//! ChirpStack v4 (the MQTT and HTTP integrations' `up` event JSON) and
//! The Things Stack v3 (the webhook's uplink message JSON). An uplink is
//! reduced to what twinhub needs: which device, the application payload
//! (`data` / `frm_payload`, base64) and the network server's decoded
//! object when it has one, the port and the time. Errors name the field.

use crate::DecodeError;
use base64::Engine;
use serde_json::Value;

/// One uplink, whichever network server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    pub dev_eui: String,
    /// ChirpStack's device name, The Things Stack's device id.
    pub name: String,
    /// ChirpStack's application id, The Things Stack's application id.
    pub application: String,
    pub f_port: Option<u32>,
    pub payload: Vec<u8>,
    /// The payload as the network server's codec decoded it.
    pub decoded: Option<Value>,
    /// When the network server received it (µs).
    pub time: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    ChirpStack,
    TheThingsStack,
}

impl Network {
    pub fn parse(s: &str) -> Option<Network> {
        match s {
            "chirpstack" => Some(Network::ChirpStack),
            "tts" | "thethingsstack" => Some(Network::TheThingsStack),
            _ => None,
        }
    }
}

fn bad(field: &str, rule: &str) -> DecodeError {
    DecodeError {
        field: field.into(),
        rule: rule.into(),
    }
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_string)
}

fn time(v: Option<&Value>, field: &str) -> Result<Option<i64>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => twinhub_model::time::parse_timestamp_str(s)
            .map(Some)
            .map_err(|rule| bad(field, rule)),
        Some(_) => Err(bad(field, "must be an RFC 3339 time")),
    }
}

fn payload(v: Option<&Value>, field: &str) -> Result<Vec<u8>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| bad(field, "must be base64")),
        Some(_) => Err(bad(field, "must be base64 text")),
    }
}

fn decoded(v: Option<&Value>) -> Option<Value> {
    match v {
        Some(o @ Value::Object(m)) if !m.is_empty() => Some(o.clone()),
        _ => None,
    }
}

/// Parses an uplink event of `network`.
pub fn parse_uplink(network: Network, body: &[u8]) -> Result<Uplink, DecodeError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| bad("body", "is not a JSON uplink event"))?;
    if !v.is_object() {
        return Err(bad("body", "must be a JSON object"));
    }
    match network {
        Network::ChirpStack => {
            let dev_eui = text(&v, &["deviceInfo", "devEui"])
                .ok_or_else(|| bad("deviceInfo.devEui", "is missing"))?;
            Ok(Uplink {
                name: text(&v, &["deviceInfo", "deviceName"]).unwrap_or_default(),
                application: text(&v, &["deviceInfo", "applicationId"]).unwrap_or_default(),
                dev_eui: dev_eui.to_ascii_lowercase(),
                f_port: v.get("fPort").and_then(Value::as_u64).map(|p| p as u32),
                payload: payload(v.get("data"), "data")?,
                decoded: decoded(v.get("object")),
                time: time(v.get("time"), "time")?,
            })
        }
        Network::TheThingsStack => {
            let ids = v
                .get("end_device_ids")
                .ok_or_else(|| bad("end_device_ids", "is missing"))?;
            let up = v.get("uplink_message").ok_or_else(|| {
                bad(
                    "uplink_message",
                    "is missing (only uplink messages are taken)",
                )
            })?;
            Ok(Uplink {
                dev_eui: text(ids, &["dev_eui"])
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                name: text(ids, &["device_id"])
                    .ok_or_else(|| bad("end_device_ids.device_id", "is missing"))?,
                application: text(ids, &["application_ids", "application_id"]).unwrap_or_default(),
                f_port: up.get("f_port").and_then(Value::as_u64).map(|p| p as u32),
                payload: payload(up.get("frm_payload"), "uplink_message.frm_payload")?,
                decoded: decoded(up.get("decoded_payload")),
                time: match time(up.get("received_at"), "uplink_message.received_at")? {
                    Some(t) => Some(t),
                    None => time(v.get("received_at"), "received_at")?,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `up` event of ChirpStack v4's documentation (JSON marshaler).
    pub const CHIRPSTACK_UP: &str = r#"{
      "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
      "time": "2022-07-18T09:34:15.775023242+00:00",
      "deviceInfo": {
        "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
        "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97", "applicationName": "Test application",
        "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad", "deviceProfileName": "Test device-profile",
        "deviceName": "Test device", "devEui": "0101010101010101", "tags": {"key": "value"}
      },
      "devAddr": "00189440", "dr": 1, "fPort": 1, "data": "qg==",
      "rxInfo": [{"gatewayId": "0016c001f153a14c", "uplinkId": 4217106255, "rssi": -36, "snr": 10.5}],
      "txInfo": {"frequency": 868100000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}}}
    }"#;

    #[test]
    fn chirpstack_up_events_parse() {
        let u = parse_uplink(Network::ChirpStack, CHIRPSTACK_UP.as_bytes()).unwrap();
        assert_eq!(u.dev_eui, "0101010101010101");
        assert_eq!(u.name, "Test device");
        assert_eq!(u.application, "17c82e96-be03-4f38-aef3-f83d48582d97");
        assert_eq!(u.f_port, Some(1));
        assert_eq!(u.payload, vec![0xaa]);
        assert_eq!(u.decoded, None);
        assert_eq!(u.time, Some(1_658_136_855_775_023));
    }

    #[test]
    fn tts_uplinks_parse() {
        let body = r#"{"end_device_ids": {"device_id": "eui-0004a30b001c0530",
            "application_ids": {"application_id": "plant-sensors"}, "dev_eui": "0004A30B001C0530"},
            "received_at": "2024-02-12T15:15:00.5Z",
            "uplink_message": {"f_port": 15, "f_cnt": 7, "frm_payload": "CB0=",
              "decoded_payload": {"temperature": 22.5}, "received_at": "2024-02-12T15:15:00.25Z"}}"#;
        let u = parse_uplink(Network::TheThingsStack, body.as_bytes()).unwrap();
        assert_eq!(u.dev_eui, "0004a30b001c0530");
        assert_eq!(u.name, "eui-0004a30b001c0530");
        assert_eq!(u.application, "plant-sensors");
        assert_eq!(u.payload, vec![0x08, 0x1d]);
        assert_eq!(u.decoded, Some(serde_json::json!({"temperature": 22.5})));
        assert_eq!(u.f_port, Some(15));
        assert_eq!(u.time, Some(1_707_750_900_250_000));
    }

    #[test]
    fn bad_uplinks_name_the_field() {
        for (net, body, field) in [
            (Network::ChirpStack, "[]", "body"),
            (Network::ChirpStack, "{", "body"),
            (
                Network::ChirpStack,
                r#"{"deviceInfo": {}}"#,
                "deviceInfo.devEui",
            ),
            (
                Network::ChirpStack,
                r#"{"deviceInfo": {"devEui": "01"}, "data": "!!"}"#,
                "data",
            ),
            (
                Network::ChirpStack,
                r#"{"deviceInfo": {"devEui": "01"}, "time": "noon"}"#,
                "time",
            ),
            (
                Network::TheThingsStack,
                r#"{"uplink_message": {}}"#,
                "end_device_ids",
            ),
            (
                Network::TheThingsStack,
                r#"{"end_device_ids": {"device_id": "d"}}"#,
                "uplink_message",
            ),
            (
                Network::TheThingsStack,
                r#"{"end_device_ids": {}, "uplink_message": {}}"#,
                "end_device_ids.device_id",
            ),
        ] {
            let e = parse_uplink(net, body.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{body}");
        }
    }
}
