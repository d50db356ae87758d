//! CBOR telemetry (RFC 8949), for devices that find JSON too big: the
//! same shapes as JSON telemetry (an object of values, `{"ts", …}`, an
//! array of those, `{"value", "quality"}` wrappers), read into a JSON
//! tree and decoded by the JSON decoder, so both follow one set of rules.
//! Byte strings, undefined, non-text map keys and nesting deeper than the
//! JSON decoder allows are refused naming where.

use crate::{decode_telemetry, DecodeError, Limits, Telemetry};
use ciborium::value::Value as Cbor;
use serde_json::Value as Json;

fn bad(field: String, rule: &str) -> DecodeError {
    DecodeError {
        field,
        rule: rule.into(),
    }
}

const MAX_DEPTH: usize = 16;

fn to_json(v: Cbor, at: &str, depth: usize) -> Result<Json, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(bad(at.into(), "is nested too deeply"));
    }
    Ok(match v {
        Cbor::Integer(i) => {
            let i: i128 = i.into();
            Json::from(i as f64)
        }
        Cbor::Float(f) if f.is_finite() => Json::from(f),
        Cbor::Float(_) => return Err(bad(at.into(), "is not a finite number")),
        Cbor::Bool(b) => Json::Bool(b),
        Cbor::Text(t) => Json::String(t),
        Cbor::Null => Json::Null,
        Cbor::Tag(_, inner) => to_json(*inner, at, depth + 1)?,
        Cbor::Array(items) => Json::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, x)| to_json(x, &format!("{at}[{i}]"), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Map(entries) => {
            let mut m = serde_json::Map::new();
            for (k, x) in entries {
                let Cbor::Text(k) = k else {
                    return Err(bad(at.into(), "has a map key that is not text"));
                };
                let child = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                m.insert(k, to_json(x, &child, depth + 1)?);
            }
            Json::Object(m)
        }
        Cbor::Bytes(_) => return Err(bad(at.into(), "is a byte string (not a telemetry value)")),
        _ => return Err(bad(at.into(), "is not a telemetry value")),
    })
}

/// Decodes CBOR telemetry with the JSON decoder's rules and limits.
pub fn decode_cbor_telemetry(bytes: &[u8], limits: &Limits) -> Result<Telemetry, DecodeError> {
    let v: Cbor = ciborium::de::from_reader(bytes)
        .map_err(|e| bad("body".into(), &format!("is not CBOR: {e}")))?;
    let json = to_json(v, "", 0).map_err(|mut e| {
        if e.field.is_empty() {
            e.field = "body".into();
        }
        e
    })?;
    decode_telemetry(json.to_string().as_bytes(), limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(v: &Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn cbor_telemetry_reads_like_json() {
        let v = Cbor::Map(vec![
            (
                Cbor::Text("ts".into()),
                Cbor::Integer(1_700_000_000_000i64.into()),
            ),
            (Cbor::Text("temperature".into()), Cbor::Float(21.5)),
            (Cbor::Text("running".into()), Cbor::Bool(true)),
            (
                Cbor::Text("pressure".into()),
                Cbor::Map(vec![
                    (Cbor::Text("value".into()), Cbor::Integer(5.into())),
                    (Cbor::Text("quality".into()), Cbor::Text("bad".into())),
                ]),
            ),
        ]);
        let t = decode_cbor_telemetry(&cbor(&v), &Limits::default()).unwrap();
        let j = decode_telemetry(
            br#"{"ts": 1700000000000, "temperature": 21.5, "running": true, "pressure": {"value": 5, "quality": "bad"}}"#,
            &Limits::default(),
        )
        .unwrap();
        // The same readings (a JSON tree keeps keys sorted).
        let sorted = |t: &Telemetry| {
            let mut m = t.to_messages();
            for x in &mut m {
                x.values.sort_by(|a, b| a.0.cmp(&b.0));
            }
            m
        };
        assert_eq!(sorted(&t), sorted(&j));
    }

    #[test]
    fn what_cbor_has_and_json_has_not_is_refused_by_name() {
        let bytes = Cbor::Map(vec![(Cbor::Text("blob".into()), Cbor::Bytes(vec![1, 2]))]);
        let e = decode_cbor_telemetry(&cbor(&bytes), &Limits::default()).unwrap_err();
        assert_eq!(e.field, "blob");
        let key = Cbor::Map(vec![(Cbor::Integer(1.into()), Cbor::Bool(true))]);
        assert_eq!(
            decode_cbor_telemetry(&cbor(&key), &Limits::default())
                .unwrap_err()
                .field,
            "body"
        );
        assert_eq!(
            decode_cbor_telemetry(&[0xff, 0x00], &Limits::default())
                .unwrap_err()
                .field,
            "body"
        );
        let mut deep = Cbor::Bool(true);
        for _ in 0..40 {
            deep = Cbor::Array(vec![deep]);
        }
        assert!(decode_cbor_telemetry(&cbor(&deep), &Limits::default()).is_err());
    }
}
