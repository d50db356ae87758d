//! What an event carries. Telemetry events hold the decoded payload that
//! was stored, shared (`Arc`) with nothing copied, and become JSON only
//! where JSON is wanted (SSE, MQTT, the outbox): one event per ingest
//! group (an HTTP request, an MQTT PUBLISH, a derived batch), shaped
//! `{"device", "source", "messages": [{"ts", "values": {name: value}}]}`.
//! Other events carry JSON.

use super::Kind;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use std::sync::Arc;
use twinhub_codec::Telemetry;
use twinhub_model::time::to_epoch_ms_json;
use twinhub_model::Quality;

#[derive(Debug, Clone)]
pub enum Data {
    Json(serde_json::Value),
    Telemetry(Arc<TelemetryData>),
}

/// Committed telemetry: every message has its timestamp.
#[derive(Debug)]
pub struct TelemetryData {
    /// The device that sent it; none for derived values.
    pub device: Option<String>,
    /// `http`, `mqtt`, `ml`, `rule`, a connector's kind.
    pub source: String,
    pub batch: Telemetry,
}

impl TelemetryData {
    /// Each message with its timestamp (µs).
    pub fn messages(&self) -> impl Iterator<Item = (i64, twinhub_codec::Message<'_>)> + '_ {
        self.batch.messages().map(|m| (m.ts.unwrap_or(0), m))
    }
}

static NULL: serde_json::Value = serde_json::Value::Null;

impl Data {
    /// A field of a JSON event (telemetry has typed accessors).
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        match self {
            Data::Json(v) => v.get(key),
            Data::Telemetry(_) => None,
        }
    }

    pub fn telemetry(&self) -> Option<&TelemetryData> {
        match self {
            Data::Telemetry(t) => Some(t),
            Data::Json(_) => None,
        }
    }

    #[cfg(test)]
    fn to_json(&self) -> serde_json::Value {
        match self {
            Data::Json(v) => v.clone(),
            Data::Telemetry(_) => serde_json::to_value(self).unwrap_or_default(),
        }
    }

    /// Data read back from the outbox: telemetry becomes typed again.
    pub fn from_stored(kind: Kind, v: serde_json::Value) -> Data {
        if kind == Kind::Telemetry {
            if let Some(t) = parse_telemetry(&v) {
                return Data::Telemetry(Arc::new(t));
            }
        }
        Data::Json(v)
    }
}

impl From<serde_json::Value> for Data {
    fn from(v: serde_json::Value) -> Data {
        Data::Json(v)
    }
}

impl std::ops::Index<&str> for Data {
    type Output = serde_json::Value;
    fn index(&self, key: &str) -> &serde_json::Value {
        self.get(key).unwrap_or(&NULL)
    }
}

fn parse_telemetry(v: &serde_json::Value) -> Option<TelemetryData> {
    let mut batch = Telemetry::default();
    for m in v.get("messages")?.as_array()? {
        let ms = m.get("ts")?.as_f64()?;
        batch.begin(Some((ms * 1000.0).round() as i64));
        let flags = m.get("quality").and_then(|q| q.as_object());
        for (name, value) in m.get("values")?.as_object()? {
            let value = twinhub_model::Value::from_json(value)?;
            let quality = flags
                .and_then(|f| f.get(name)?.as_str())
                .and_then(Quality::parse)
                .unwrap_or_default();
            let i = batch.intern(name);
            batch.push(i, value, quality);
        }
    }
    Some(TelemetryData {
        device: v.get("device").and_then(|d| d.as_str()).map(str::to_string),
        source: v.get("source")?.as_str()?.to_string(),
        batch,
    })
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Json(v) => v.serialize(s),
            Data::Telemetry(t) => t.serialize(s),
        }
    }
}

impl Serialize for TelemetryData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("device", &self.device)?;
        m.serialize_entry("source", &self.source)?;
        m.serialize_entry("messages", &Messages(&self.batch))?;
        m.end()
    }
}

struct Messages<'a>(&'a Telemetry);

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for m in self.0.messages() {
            seq.serialize_element(&MessageJson(m))?;
        }
        seq.end()
    }
}

/// `{"ts": epoch ms, "values": {name: value}}`, and `"quality": {name:
/// "uncertain"|"bad"}` when a reading is not good (beside the values, so
/// readers of `values` see plain values whatever their quality).
struct MessageJson<'a>(twinhub_codec::Message<'a>);

impl Serialize for MessageJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let flagged = self.0.readings.iter().any(|r| r.quality != Quality::Good);
        let mut m = s.serialize_map(Some(2 + usize::from(flagged)))?;
        m.serialize_entry("ts", &to_epoch_ms_json(self.0.ts.unwrap_or(0)))?;
        m.serialize_entry("values", &Values(self.0))?;
        if flagged {
            m.serialize_entry("quality", &Qualities(self.0))?;
        }
        m.end()
    }
}

/// `{name: quality}` of the readings of one message that are not good.
struct Qualities<'a>(twinhub_codec::Message<'a>);

impl Serialize for Qualities<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (name, _, q) in self.0.values().filter(|(_, _, q)| *q != Quality::Good) {
            m.serialize_entry(name, q.as_str())?;
        }
        m.end()
    }
}

/// `{name: value}` of one message.
struct Values<'a>(twinhub_codec::Message<'a>);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.readings.len()))?;
        for (name, value, _) in self.0.values() {
            m.serialize_entry(name, &ValueJson(value))?;
        }
        m.end()
    }
}

/// A value as JSON, written straight to the serializer.
pub struct ValueJson<'a>(pub &'a twinhub_model::Value);

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            // As `number_json`: whole numbers print without a fraction.
            twinhub_model::Value::Number(n)
                if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 =>
            {
                s.serialize_i64(*n as i64)
            }
            twinhub_model::Value::Number(n) => s.serialize_f64(*n),
            twinhub_model::Value::Bool(b) => s.serialize_bool(*b),
            twinhub_model::Value::String(v) => s.serialize_str(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_round_trips_through_json() {
        let body =
            br#"[{"ts":1700000000000,"t":1.5,"on":true},{"ts":1700000001000.5,"mode":"auto"}]"#;
        let batch = twinhub_codec::decode_telemetry(body, &Default::default()).unwrap();
        let d = Data::Telemetry(Arc::new(TelemetryData {
            device: Some("d1".into()),
            source: "http".into(),
            batch,
        }));
        let v = d.to_json();
        assert_eq!(v["messages"][0]["values"]["t"], 1.5);
        assert!(
            v["messages"][0].get("quality").is_none(),
            "good readings carry no flag"
        );
        assert_eq!(v["messages"][1]["ts"], 1700000001000.5);
        let back = Data::from_stored(Kind::Telemetry, v.clone());
        assert_eq!(back.to_json(), v);
        assert_eq!(back.telemetry().unwrap().device.as_deref(), Some("d1"));
    }

    #[test]
    fn a_readings_quality_is_in_the_event_and_read_back_from_the_outbox() {
        let body = br#"{"ts":1700000000000,"t":{"value":351.2,"quality":"bad"},"p":{"value":2,"quality":"uncertain"},"ok":1}"#;
        let batch = twinhub_codec::decode_telemetry(body, &Default::default()).unwrap();
        let d = Data::Telemetry(Arc::new(TelemetryData {
            device: None,
            source: "http".into(),
            batch,
        }));
        let v = d.to_json();
        let m = &v["messages"][0];
        assert_eq!(
            m["values"],
            serde_json::json!({"t": 351.2, "p": 2, "ok": 1})
        );
        assert_eq!(
            m["quality"],
            serde_json::json!({"t": "bad", "p": "uncertain"})
        );
        let back = Data::from_stored(Kind::Telemetry, v.clone());
        let mut qualities: Vec<(String, Quality)> = back
            .telemetry()
            .unwrap()
            .batch
            .messages()
            .flat_map(|m| {
                m.values()
                    .map(|(n, _, q)| (n.to_string(), q))
                    .collect::<Vec<_>>()
            })
            .collect();
        qualities.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            qualities,
            vec![
                ("ok".to_string(), Quality::Good),
                ("p".to_string(), Quality::Uncertain),
                ("t".to_string(), Quality::Bad),
            ]
        );
        assert_eq!(back.to_json(), v);
    }
}
