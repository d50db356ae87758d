//! JSON telemetry: one object (or an array of objects) of property →
//! number/bool/string, optionally `ts` (RFC 3339 or epoch ms); a value may
//! be `{"value":…, "quality":"good|uncertain|bad"}`; nested objects are
//! components, flattened to dotted names (`thermostat1.temperature`).

use serde_json::{Map, Value as Json};
use thiserror::Error;
use twinhub_model::ids::check_property_name;
use twinhub_model::time::parse_timestamp_json;
use twinhub_model::{Quality, Value};

pub use crate::telemetry::{Telemetry, TelemetryMessage};

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

/// Decodes a body into one `Telemetry`, streaming: no JSON tree is built
/// for flat messages, and a property name is stored once per body.
pub fn decode_telemetry(bytes: &[u8], limits: &Limits) -> Result<Telemetry, DecodeError> {
    use serde::de::DeserializeSeed;
    let mut state = State {
        out: Telemetry::default(),
        limits,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let res = Body(&mut state)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match (res, state.error) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(DecodeError {
            field: "body".into(),
            rule: format!("must be valid JSON ({})", json_error_kind(&e)),
        }),
        (Ok(()), None) => Ok(state.out),
    }
}

struct State<'l> {
    out: Telemetry,
    limits: &'l Limits,
    /// The decoding failure that stopped the parser (its own errors are
    /// syntax errors).
    error: Option<DecodeError>,
}

impl State<'_> {
    fn fail<E: serde::de::Error>(&mut self, field: &str, rule: &str) -> E {
        self.error = Some(err(field, rule));
        E::custom("telemetry")
    }
}

fn at_of(index: Option<usize>) -> String {
    index.map(|i| format!("[{i}]")).unwrap_or_default()
}

/// The whole body: one object or an array of objects.
struct Body<'s, 'l>(&'s mut State<'l>);

impl<'de> serde::de::DeserializeSeed<'de> for Body<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Body<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        MessageVisitor {
            state: self.0,
            index: None,
        }
        .visit_map(map)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            if i == self.0.limits.max_messages {
                // One more element is over the limit; the end is not.
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    let rule = format!("may hold at most {} messages", self.0.limits.max_messages);
                    return Err(self.0.fail("body", &rule));
                }
                break;
            }
            let seed = MessageSeed {
                state: &mut *self.0,
                index: i,
            };
            if seq.next_element_seed(seed)?.is_none() {
                break;
            }
            i += 1;
        }
        if i == 0 {
            return Err(self.0.fail("body", "must hold at least one message"));
        }
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(self
            .0
            .fail("body", "must be a JSON object or an array of objects"))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.visit_unit()
    }
}

/// One element of the array: must be an object.
struct MessageSeed<'s, 'l> {
    state: &'s mut State<'l>,
    index: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for MessageSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(MessageVisitor {
            state: self.state,
            index: Some(self.index),
        })
    }
}

struct MessageVisitor<'s, 'l> {
    state: &'s mut State<'l>,
    index: Option<usize>,
}

impl MessageVisitor<'_, '_> {
    fn not_object<E: serde::de::Error>(self) -> Result<(), E> {
        let at = at_of(self.index);
        Err(self.state.fail(&at, "must be a JSON object"))
    }
}

impl<'de> serde::de::Visitor<'de> for MessageVisitor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.state;
        state.out.begin(None);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.as_str();
            if key == "ts" {
                let v: Json = map.next_value()?;
                match parse_timestamp_json(&v) {
                    Ok(ts) => state.out.set_ts(Some(ts)),
                    Err(rule) => return Err(state.fail(&join(&at_of(self.index), "ts"), rule)),
                }
                continue;
            }
            if let Err(e) = check_property_name(key) {
                return Err(state.fail(&join(&at_of(self.index), key), e));
            }
            let seed = ValueSeed {
                state: &mut *state,
                index: self.index,
                key,
            };
            map.next_value_seed(seed)?;
        }
        if state.out.current_len() == 0 {
            let at = at_of(self.index);
            let field = if at.is_empty() { "body" } else { &at };
            return Err(state.fail(field, "must hold at least one property"));
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.not_object()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.not_object()
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.not_object()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.not_object()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.not_object()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.not_object()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.not_object()
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl Key<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A top-level property's value: a scalar read directly, an object
/// (component or quality wrapper) read as a small tree and flattened.
struct ValueSeed<'s, 'l, 'k> {
    state: &'s mut State<'l>,
    index: Option<usize>,
    key: &'k str,
}

impl ValueSeed<'_, '_, '_> {
    fn field(&self) -> String {
        join(&at_of(self.index), self.key)
    }

    fn push<E: serde::de::Error>(self, value: Result<Value, String>) -> Result<(), E> {
        let limits = self.state.limits;
        if self.state.out.current_len() >= limits.max_properties {
            let at = at_of(self.index);
            let field = if at.is_empty() { "body" } else { &at };
            let rule = format!("may hold at most {} properties", limits.max_properties);
            return Err(self.state.fail(field, &rule));
        }
        match value {
            Ok(v) => {
                let name = self.state.out.intern(self.key);
                self.state.out.push(name, v, Quality::Good);
                Ok(())
            }
            Err(rule) => {
                let field = self.field();
                Err(self.state.fail(&field, &rule))
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, boolean, string or object")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        let v = if v.is_finite() {
            Ok(Value::Number(v))
        } else {
            Err("must be a finite number".to_string())
        };
        self.push(v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Ok(Value::Number(v as f64)))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Ok(Value::Number(v as f64)))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Ok(Value::Bool(v)))
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        let max = self.state.limits.max_string_len;
        let v = if s.len() > max {
            Err(format!("strings may be at most {max} bytes"))
        } else {
            Ok(Value::String(s.to_string()))
        };
        self.push(v)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.push(Err("must be a number, boolean or string, not null".into()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.push(Err(
            "must be a number, boolean or string, not an array".into()
        ))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        use serde::Deserialize;
        let v = Json::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        let at = at_of(self.index);
        let mut values = Vec::new();
        let res = flatten(self.key, &v, &at, "", 1, self.state.limits, &mut values);
        if let Err(e) = res {
            self.state.error = Some(e);
            return Err(serde::de::Error::custom("telemetry"));
        }
        for (name, value, quality) in values {
            if self.state.out.current_len() >= self.state.limits.max_properties {
                let field = if at.is_empty() { "body" } else { &at };
                let rule = format!(
                    "may hold at most {} properties",
                    self.state.limits.max_properties
                );
                return Err(self.state.fail(field, &rule));
            }
            let i = self.state.out.intern(&name);
            self.state.out.push(i, value, quality);
        }
        Ok(())
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
        decode_telemetry(s.as_bytes(), &Limits::default()).map(|t| t.to_messages())
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

        /// The streaming decoder reads what a JSON tree holds: per message,
        /// every key's last value, and the timestamp.
        #[test]
        fn streaming_matches_the_tree(msgs in proptest::collection::vec(
            (proptest::option::of(0i64..2_000_000_000_000),
             proptest::collection::vec(("[a-e]{1,2}", prop_oneof![
                 (-1e6f64..1e6).prop_map(|v| serde_json::json!(v)),
                 any::<bool>().prop_map(|v| serde_json::json!(v)),
                 "[a-z ]{0,8}".prop_map(|v| serde_json::json!(v)),
             ]), 1..6)), 1..8)) {
            let mut body = String::from("[");
            for (i, (ts, kvs)) in msgs.iter().enumerate() {
                if i > 0 { body.push(','); }
                body.push('{');
                let mut parts: Vec<String> = kvs.iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::json!(k), v)).collect();
                if let Some(ts) = ts { parts.push(format!("\"ts\":{ts}")); }
                body.push_str(&parts.join(","));
                body.push('}');
            }
            body.push(']');
            let tree: Vec<serde_json::Map<String, Json>> = serde_json::from_str(&body).unwrap();
            let got = dec(&body).unwrap();
            prop_assert_eq!(got.len(), tree.len());
            for (m, obj) in got.iter().zip(&tree) {
                prop_assert_eq!(m.ts, obj.get("ts").map(|t| t.as_i64().unwrap() * 1000));
                prop_assert_eq!(m.values.len(), obj.len() - usize::from(obj.contains_key("ts")));
                for (name, v, _) in &m.values {
                    prop_assert_eq!(&v.to_json(), &obj[name]);
                }
            }
        }

        #[test]
        fn numbers_round_trip(vals in proptest::collection::vec(-1e300f64..1e300, 1..20)) {
            let obj: serde_json::Map<String, Json> = vals.iter().enumerate()
                .map(|(i, v)| (format!("p{i}"), serde_json::json!(v))).collect();
            let bytes = serde_json::to_vec(&obj).unwrap();
            let m = decode_telemetry(&bytes, &Limits::default()).unwrap().to_messages();
            for (name, v, _) in &m[0].values {
                let i: usize = name[1..].parse().unwrap();
                prop_assert_eq!(v, &Value::Number(vals[i]));
            }
        }
    }
}
