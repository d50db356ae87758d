//! Sparkplug B payloads (the Eclipse Tahu `sparkplug_b.proto`, the fields
//! twinhub reads, as prost messages) and topics
//! (`spBv1.0/{group}/{type}/{edge}[/{device}]`).
//!
//! A birth (NBIRTH/DBIRTH) names every metric and may give it an alias;
//! data (NDATA/DDATA) may carry only aliases, so `Aliases` keeps the map a
//! birth made and `readings` turns a payload into named values. Scalar
//! metrics become numbers, booleans and strings; datasets, templates and
//! bytes are skipped (counted by the caller). Pure, total (never panics).

use prost::Message;
use std::collections::HashMap;
use twinhub_model::{Quality, Value};

#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes, tag = "16")]
    BytesValue(Vec<u8>),
}

/// Sparkplug data types (the spec's numbering) twinhub reads.
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
}

/// The message types of the topic namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
    NCmd,
    DCmd,
    State,
}

/// A parsed Sparkplug topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic<'a> {
    pub group: &'a str,
    pub kind: MsgType,
    pub edge: &'a str,
    pub device: Option<&'a str>,
}

/// `spBv1.0/{group}/{type}/{edge}[/{device}]`; None for other topics or a
/// type that needs (or forbids) a device id it does not have.
pub fn topic(t: &str) -> Option<Topic<'_>> {
    let mut p = t.split('/');
    if p.next()? != "spBv1.0" {
        return None;
    }
    let group = p.next()?;
    let kind = match p.next()? {
        "NBIRTH" => MsgType::NBirth,
        "NDEATH" => MsgType::NDeath,
        "DBIRTH" => MsgType::DBirth,
        "DDEATH" => MsgType::DDeath,
        "NDATA" => MsgType::NData,
        "DDATA" => MsgType::DData,
        "NCMD" => MsgType::NCmd,
        "DCMD" => MsgType::DCmd,
        "STATE" => MsgType::State,
        _ => return None,
    };
    let edge = p.next()?;
    let device = p.next();
    if p.next().is_some() || group.is_empty() || edge.is_empty() {
        return None;
    }
    let needs_device = matches!(
        kind,
        MsgType::DBirth | MsgType::DDeath | MsgType::DData | MsgType::DCmd
    );
    if needs_device != device.is_some() || device == Some("") {
        return None;
    }
    Some(Topic {
        group,
        kind,
        edge,
        device,
    })
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparkplugError {
    #[error("the payload is not a Sparkplug B protobuf")]
    NotProtobuf,
    #[error("metric {0} has neither a name nor an alias a birth declared")]
    UnknownAlias(u64),
    #[error("a metric has neither a name nor an alias")]
    Unnamed,
}

pub fn decode(payload: &[u8]) -> Result<Payload, SparkplugError> {
    Payload::decode(payload).map_err(|_| SparkplugError::NotProtobuf)
}

/// Alias → metric name, as a birth declared them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aliases(pub HashMap<u64, String>);

impl Aliases {
    /// The aliases a birth declares.
    pub fn of_birth(p: &Payload) -> Aliases {
        Aliases(
            p.metrics
                .iter()
                .filter_map(|m| Some((m.alias?, m.name.clone()?)))
                .collect(),
        )
    }
}

/// A metric's value as twinhub stores it; None for null and for the kinds
/// it does not store (bytes).
fn value_of(m: &Metric) -> Option<Value> {
    if m.is_null == Some(true) {
        return None;
    }
    let signed = matches!(
        m.datatype,
        Some(datatype::INT8 | datatype::INT16 | datatype::INT32 | datatype::INT64)
    );
    Some(match m.value.as_ref()? {
        // Signed types travel in the unsigned fields, two's complement.
        MetricValue::IntValue(v) if signed => Value::Number(match m.datatype {
            Some(datatype::INT8) => *v as u8 as i8 as f64,
            Some(datatype::INT16) => *v as u16 as i16 as f64,
            _ => *v as i32 as f64,
        }),
        MetricValue::IntValue(v) => Value::Number(*v as f64),
        MetricValue::LongValue(v) if signed => Value::Number(*v as i64 as f64),
        MetricValue::LongValue(v) => Value::Number(*v as f64),
        MetricValue::FloatValue(v) => Value::Number(*v as f64),
        MetricValue::DoubleValue(v) => Value::Number(*v),
        MetricValue::BooleanValue(v) => Value::Bool(*v),
        MetricValue::StringValue(s) => Value::String(s.clone()),
        MetricValue::BytesValue(_) => return None,
    })
    .filter(|v| !matches!(v, Value::Number(n) if !n.is_finite()))
}

/// One reading: (name, value, timestamp in µs if the metric or the
/// payload has one).
pub type Reading = (String, Value, Quality, Option<i64>);

/// The named readings of a payload (births and data alike); metrics the
/// store keeps no value for are skipped and counted in the second field.
pub fn readings(p: &Payload, aliases: &Aliases) -> Result<(Vec<Reading>, usize), SparkplugError> {
    let mut out = Vec::with_capacity(p.metrics.len());
    let mut skipped = 0;
    for m in &p.metrics {
        let name = match (&m.name, m.alias) {
            (Some(n), _) if !n.is_empty() => n.clone(),
            (_, Some(a)) => aliases
                .0
                .get(&a)
                .cloned()
                .ok_or(SparkplugError::UnknownAlias(a))?,
            _ => return Err(SparkplugError::Unnamed),
        };
        let Some(value) = value_of(m) else {
            skipped += 1;
            continue;
        };
        let ts = m
            .timestamp
            .or(p.timestamp)
            .and_then(|ms| i64::try_from(ms).ok())
            .and_then(|ms| ms.checked_mul(1000));
        out.push((name, value, Quality::Good, ts));
    }
    Ok((out, skipped))
}

/// The NCMD that asks an edge node to send its births again.
pub fn rebirth_request(now_ms: u64) -> Vec<u8> {
    Payload {
        timestamp: Some(now_ms),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            datatype: Some(datatype::BOOLEAN),
            value: Some(MetricValue::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// The `bdSeq` metric of an NBIRTH or NDEATH: which MQTT session of the
/// node the message belongs to (a death whose bdSeq is not the current
/// birth's is stale).
pub fn bd_seq(p: &Payload) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| match m.value {
            Some(MetricValue::LongValue(v)) => Some(v),
            Some(MetricValue::IntValue(v)) => Some(v as u64),
            _ => None,
        })
}

/// An NCMD/DCMD payload writing one metric `name` with a JSON scalar
/// (boolean → Boolean, integer → Int64, other numbers → Double, text →
/// String); None for anything else.
pub fn command(name: &str, value: &serde_json::Value, now_ms: u64) -> Option<Vec<u8>> {
    use serde_json::Value as J;
    let (dt, v) = match value {
        J::Bool(b) => (datatype::BOOLEAN, MetricValue::BooleanValue(*b)),
        J::Number(n) => match n.as_i64() {
            // Signed values travel as two's complement in the long field.
            Some(i) => (datatype::INT64, MetricValue::LongValue(i as u64)),
            None => (datatype::DOUBLE, MetricValue::DoubleValue(n.as_f64()?)),
        },
        J::String(t) => (datatype::STRING, MetricValue::StringValue(t.clone())),
        _ => return None,
    };
    Some(
        Payload {
            timestamp: Some(now_ms),
            metrics: vec![Metric {
                name: Some(name.into()),
                timestamp: Some(now_ms),
                datatype: Some(dt),
                value: Some(v),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metric(name: Option<&str>, alias: Option<u64>, dt: u32, v: MetricValue) -> Metric {
        Metric {
            name: name.map(str::to_string),
            alias,
            datatype: Some(dt),
            value: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn topics_parse_and_refuse_malformed_ones() {
        assert_eq!(
            topic("spBv1.0/plant/DDATA/edge1/press").unwrap(),
            Topic {
                group: "plant",
                kind: MsgType::DData,
                edge: "edge1",
                device: Some("press")
            }
        );
        assert_eq!(
            topic("spBv1.0/plant/NBIRTH/edge1").unwrap().kind,
            MsgType::NBirth
        );
        for bad in [
            "spBv1.0/plant/DDATA/edge1",
            "spBv1.0/plant/NDATA/edge1/x",
            "spBv1.0/plant/XDATA/edge1",
            "spBv1.0//NDATA/e",
            "spAv1.0/plant/NDATA/e",
            "spBv1.0/plant/DDATA/e/d/extra",
        ] {
            assert!(topic(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn births_declare_aliases_that_data_uses() {
        let birth = Payload {
            timestamp: Some(1_700_000_000_000),
            seq: Some(0),
            metrics: vec![
                metric(
                    Some("temperature"),
                    Some(1),
                    datatype::DOUBLE,
                    MetricValue::DoubleValue(350.5),
                ),
                metric(
                    Some("offset"),
                    Some(2),
                    datatype::INT32,
                    MetricValue::IntValue((-5i32) as u32),
                ),
                metric(
                    Some("running"),
                    Some(3),
                    datatype::BOOLEAN,
                    MetricValue::BooleanValue(true),
                ),
                metric(Some("blob"), Some(4), 17, MetricValue::BytesValue(vec![1])),
            ],
            ..Default::default()
        };
        let bytes = birth.encode_to_vec();
        let decoded = decode(&bytes).unwrap();
        let aliases = Aliases::of_birth(&decoded);
        assert_eq!(aliases.0.len(), 4);
        let (r, skipped) = readings(&decoded, &aliases).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(
            r,
            vec![
                (
                    "temperature".into(),
                    Value::Number(350.5),
                    Quality::Good,
                    Some(1_700_000_000_000_000)
                ),
                (
                    "offset".into(),
                    Value::Number(-5.0),
                    Quality::Good,
                    Some(1_700_000_000_000_000)
                ),
                (
                    "running".into(),
                    Value::Bool(true),
                    Quality::Good,
                    Some(1_700_000_000_000_000)
                ),
            ]
        );
        let data = Payload {
            seq: Some(1),
            metrics: vec![Metric {
                alias: Some(1),
                timestamp: Some(1_700_000_001_000),
                value: Some(MetricValue::DoubleValue(351.0)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (r, _) = readings(&data, &aliases).unwrap();
        assert_eq!(r[0].0, "temperature");
        assert_eq!(r[0].3, Some(1_700_000_001_000_000));
        let unknown = Payload {
            metrics: vec![Metric {
                alias: Some(9),
                value: Some(MetricValue::DoubleValue(1.0)),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            readings(&unknown, &aliases).unwrap_err(),
            SparkplugError::UnknownAlias(9)
        );
        assert_eq!(
            decode(b"\xff\xff\xff").unwrap_err(),
            SparkplugError::NotProtobuf
        );
        let rebirth = decode(&rebirth_request(5)).unwrap();
        assert_eq!(
            rebirth.metrics[0].name.as_deref(),
            Some("Node Control/Rebirth")
        );
    }

    proptest! {
        #[test]
        fn decoding_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(p) = decode(&bytes) {
                let _ = readings(&p, &Aliases::of_birth(&p));
            }
        }
    }
}
