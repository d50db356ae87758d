//! JSON telemetry: one object (or an array of objects) of property →
//! number/bool/string, optionally `ts` (RFC 3339 or epoch ms); a value may
//! be `{"value":…, "quality":"good|uncertain|bad"}`; nested objects are
//! components, flattened to dotted names (`thermostat1.temperature`).

use serde_json::{Map, Value as Json};
use thiserror::Error;
use twinhub_model::ids::check_property_name;
use twinhub_model::time::parse_timestamp_json;
use twinhub_model::{Quality, Value};

/// A decoding failure naming the field (a JSON path such as
/// `[2].thermostat1.temperature`) and the rule it broke.
#[derive(Debug, Error, PartialEq)]
#[error("{field}: {rule}")]
pub struct DecodeError {
    pub field: String,
    pub rule: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: usize,
    pub max_properties: usize,
    pub max_depth: usize,
    pub max_string_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_messages: 10_000,
            max_properties: 1_000,
            max_depth: 8,
            max_string_len: 4_096,
        }
    }
}

/// One telemetry message: an optional device timestamp (µs) and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryMessage {
    pub ts: Option<i64>,
    pub values: Vec<(String, Value, Quality)>,
}

pub fn decode_telemetry(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<TelemetryMessage>, DecodeError> {
    let doc: Json = serde_json::from_slice(bytes).map_err(|e| DecodeError {
        field: "body".into(),
        rule: format!("must be valid JSON ({})", json_error_kind(&e)),
    })?;
    match doc {
        Json::Object(obj) => Ok(vec![decode_message(&obj, "", limits)?]),
        Json::Array(items) => {
            if items.is_empty() {
                return Err(err("body", "must hold at least one message"));
            }
            if items.len() > limits.max_messages {
                return Err(err(
                    "body",
                    &format!("may hold at most {} messages", limits.max_messages),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Json::Object(obj) => decode_message(obj, &format!("[{i}]"), limits),
                    _ => Err(err(&format!("[{i}]"), "must be a JSON object")),
                })
                .collect()
        }
        _ => Err(err("body", "must be a JSON object or an array of objects")),
    }
}

fn json_error_kind(e: &serde_json::Error) -> String {
    // Line and column help the sender; the parser's inner text is not
    // needed to find the problem.
    format!("line {} column {}", e.line(), e.column())
}

fn err(field: &str, rule: &str) -> DecodeError {
    DecodeError {
        field: field.to_string(),
        rule: rule.to_string(),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn decode_message(
    obj: &Map<String, Json>,
    at: &str,
    limits: &Limits,
) -> Result<TelemetryMessage, DecodeError> {
    let mut ts = None;
    let mut values = Vec::new();
    for (k, v) in obj {
        if k == "ts" {
            ts = Some(parse_timestamp_json(v).map_err(|rule| err(&join(at, "ts"), rule))?);
            continue;
        }
        flatten(k, v, at, "", 1, limits, &mut values)?;
    }
    if values.is_empty() {
        return Err(err(
            if at.is_empty() { "body" } else { at },
            "must hold at least one property",
        ));
    }
    Ok(TelemetryMessage { ts, values })
}

fn flatten(
    key: &str,
    v: &Json,
    at: &str,
    name_prefix: &str,
    depth: usize,
    limits: &Limits,
    out: &mut Vec<(String, Value, Quality)>,
) -> Result<(), DecodeError> {
    let name = if name_prefix.is_empty() {
        key.to_string()
    } else {
        format!("{name_prefix}.{key}")
    };
    let field = join(at, &name);
    check_property_name(key).map_err(|rule| err(&field, rule))?;
    if out.len() >= limits.max_properties {
        return Err(err(
            if at.is_empty() { "body" } else { at },
            &format!("may hold at most {} properties", limits.max_properties),
        ));
    }
    match v {
        Json::Object(inner) if is_quality_wrapper(inner) => {
            let value = scalar(&inner["value"], &format!("{field}.value"), limits)?;
            let quality = match inner.get("quality") {
                None => Quality::Good,
                Some(Json::String(q)) => Quality::parse(q).ok_or_else(|| {
                    err(
                        &format!("{field}.quality"),
                        "must be one of good, uncertain, bad",
                    )
                })?,
                Some(_) => {
                    return Err(err(
                        &format!("{field}.quality"),
                        "must be one of good, uncertain, bad",
                    ))
                }
            };
            out.push((name, value, quality));
        }
        Json::Object(inner) => {
            if depth >= limits.max_depth {
                return Err(err(
                    &field,
                    &format!("nests deeper than {} levels", limits.max_depth),
                ));
            }
            for (k, v) in inner {
                if k == "$metadata" {
                    continue;
                }
                flatten(k, v, at, &name, depth + 1, limits, out)?;
            }
        }
        other => {
            let value = scalar(other, &field, limits)?;
            out.push((name, value, Quality::Good));
        }
    }
    Ok(())
}

fn is_quality_wrapper(obj: &Map<String, Json>) -> bool {
    obj.contains_key("value") && obj.keys().all(|k| k == "value" || k == "quality")
}

fn scalar(v: &Json, field: &str, limits: &Limits) -> Result<Value, DecodeError> {
    match v {
        Json::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Value::Number(f)),
            _ => Err(err(field, "must be a finite number")),
        },
        Json::Bool(b) => Ok(Value::Bool(*b)),
        Json::String(s) if s.len() > limits.max_string_len => Err(err(
            field,
            &format!("strings may be at most {} bytes", limits.max_string_len),
        )),
        Json::String(s) => Ok(Value::String(s.clone())),
        Json::Null => Err(err(field, "must be a number, boolean or string, not null")),
        Json::Array(_) => Err(err(
            field,
            "must be a number, boolean or string, not an array",
        )),
        Json::Object(_) => Err(err(field, "must be a number, boolean or string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(s: &str) -> Result<Vec<TelemetryMessage>, DecodeError> {
        decode_telemetry(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn object_with_ts_and_types() {
        let m = dec(r#"{"ts":1700000000000,"temperature":351.2,"running":true,"mode":"auto"}"#)
            .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].ts, Some(1_700_000_000_000_000));
        assert_eq!(m[0].values.len(), 3);
        assert!(m[0]
            .values
            .contains(&("temperature".into(), Value::Number(351.2), Quality::Good)));
    }

    #[test]
    fn components_flatten_and_quality_wrappers() {
        let m = dec(r#"[{"thermostat1":{"temperature":21,"$metadata":{}}},{"temperature":{"value":351.2,"quality":"bad"}}]"#).unwrap();
        assert_eq!(m[0].values[0].0, "thermostat1.temperature");
        assert_eq!(
            m[1].values[0],
            ("temperature".into(), Value::Number(351.2), Quality::Bad)
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(dec(r#"{"t":null}"#).unwrap_err().field, "t");
        assert_eq!(dec(r#"[{"a":1},{"b":[1]}]"#).unwrap_err().field, "[1].b");
        assert_eq!(dec(r#"{"ts":"soon","a":1}"#).unwrap_err().field, "ts");
        assert_eq!(
            dec(r#"{"c":{"x":{"value":1,"quality":"meh"}}}"#)
                .unwrap_err()
                .field,
            "c.x.quality"
        );
        assert_eq!(dec(r#"{"a":1e999}"#).unwrap_err().field, "body");
        assert_eq!(dec("[]").unwrap_err().field, "body");
        assert_eq!(dec("{}").unwrap_err().field, "body");
        assert_eq!(dec("42").unwrap_err().field, "body");
        assert_eq!(dec("{\"a\":").unwrap_err().field, "body");
        assert_eq!(dec(r#"{"a.b":1}"#).unwrap_err().field, "a.b");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_telemetry(&bytes, &Limits::default());
        }

        #[test]
        fn numbers_round_trip(vals in proptest::collection::vec(-1e300f64..1e300, 1..20)) {
            let obj: serde_json::Map<String, Json> = vals.iter().enumerate()
                .map(|(i, v)| (format!("p{i}"), serde_json::json!(v))).collect();
            let bytes = serde_json::to_vec(&obj).unwrap();
            let m = decode_telemetry(&bytes, &Limits::default()).unwrap();
            for (name, v, _) in &m[0].values {
                let i: usize = name[1..].parse().unwrap();
                prop_assert_eq!(v, &Value::Number(vals[i]));
            }
        }
    }
}
