//! Binary layouts: how a constrained device packs its readings into a
//! frame (seed 001's Binary Parser), declared as JSON and checked once,
//! then used to turn each frame into telemetry.
//!
//! ```json
//! {"fields": [
//!   {"name": "temperature", "type": "i16", "offset": 0, "scale": 0.01, "unit": "degreeCelsius"},
//!   {"name": "pressure", "type": "u16", "offset": 2, "endian": "little", "scale": 0.1, "add": -50},
//!   {"name": "door_open", "type": "bool", "offset": 4, "bit": 3},
//!   {"name": "energy", "type": "f32", "offset": 5}
//! ],
//!  "timestamp": {"type": "u32", "offset": 9, "unit": "s"}}
//! ```
//!
//! Types: `u8 u16 u32 u64 i8 i16 i32 i64 f32 f64` (big-endian unless
//! `"endian": "little"`; the value is `raw × scale + add`) and `bool` (one
//! bit, 0 = least significant, of the byte at `offset`). An optional
//! `timestamp` field (an unsigned integer in `s` or `ms`) dates the frame.
//! Errors name the field (`fields[2].type: …`); a frame too short for the
//! layout is refused, never read past its end.

use crate::json::DecodeError;
use crate::telemetry::Telemetry;
use serde::Deserialize;
use twinhub_model::{Quality, Value};

/// The largest offset a layout may use (frames are small by design).
pub const MAX_FRAME: usize = 1024;
pub const MAX_FIELDS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "u8" => Kind::U8,
            "u16" => Kind::U16,
            "u32" => Kind::U32,
            "u64" => Kind::U64,
            "i8" => Kind::I8,
            "i16" => Kind::I16,
            "i32" => Kind::I32,
            "i64" => Kind::I64,
            "f32" => Kind::F32,
            "f64" => Kind::F64,
            "bool" => Kind::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Kind::U8 | Kind::I8 | Kind::Bool => 1,
            Kind::U16 | Kind::I16 => 2,
            Kind::U32 | Kind::I32 | Kind::F32 => 4,
            Kind::U64 | Kind::I64 | Kind::F64 => 8,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    offset: usize,
    #[serde(default)]
    endian: Option<String>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    add: Option<f64>,
    #[serde(default)]
    bit: Option<u8>,
    #[serde(default)]
    unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimestampSpec {
    #[serde(rename = "type")]
    kind: String,
    offset: usize,
    #[serde(default)]
    endian: Option<String>,
    unit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutSpec {
    fields: Vec<FieldSpec>,
    #[serde(default)]
    timestamp: Option<TimestampSpec>,
}

/// One field of a checked layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub kind: Kind,
    pub offset: usize,
    pub little: bool,
    pub scale: f64,
    pub add: f64,
    pub bit: u8,
    pub unit: Option<String>,
}

/// A checked layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub fields: Vec<Field>,
    /// (kind, offset, little endian, µs per unit)
    pub timestamp: Option<(Kind, usize, bool, i64)>,
    /// Bytes a frame needs.
    pub min_len: usize,
}

fn bad(field: impl Into<String>, rule: impl Into<String>) -> DecodeError {
    DecodeError {
        field: field.into(),
        rule: rule.into(),
    }
}

fn endian(v: &Option<String>, at: &str) -> Result<bool, DecodeError> {
    match v.as_deref() {
        None | Some("big") => Ok(false),
        Some("little") => Ok(true),
        Some(_) => Err(bad(format!("{at}.endian"), "must be big or little")),
    }
}

impl Layout {
    /// Checks a layout declaration (JSON); errors name the field.
    pub fn parse(json: &[u8]) -> Result<Layout, DecodeError> {
        let spec: LayoutSpec = serde_json::from_slice(json).map_err(|e| {
            let msg = e.to_string();
            bad(
                "layout",
                msg.split(" at line")
                    .next()
                    .unwrap_or("is not a layout")
                    .to_string(),
            )
        })?;
        if spec.fields.is_empty() || spec.fields.len() > MAX_FIELDS {
            return Err(bad("fields", format!("must list 1 to {MAX_FIELDS} fields")));
        }
        let mut fields = Vec::with_capacity(spec.fields.len());
        let mut min_len = 0;
        let mut names = std::collections::HashSet::new();
        for (i, f) in spec.fields.into_iter().enumerate() {
            let at = format!("fields[{i}]");
            if f.name.is_empty() || f.name.len() > 128 || f.name.starts_with('$') {
                return Err(bad(
                    format!("{at}.name"),
                    "must be 1 to 128 characters, not starting with $",
                ));
            }
            if !names.insert(f.name.clone()) {
                return Err(bad(
                    format!("{at}.name"),
                    format!("{} is declared twice", f.name),
                ));
            }
            let kind = Kind::parse(&f.kind).ok_or_else(|| {
                bad(
                    format!("{at}.type"),
                    "must be one of u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bool",
                )
            })?;
            let end = f.offset.saturating_add(kind.size());
            if end > MAX_FRAME {
                return Err(bad(
                    format!("{at}.offset"),
                    format!("the field must end within {MAX_FRAME} bytes"),
                ));
            }
            let bit = match (kind, f.bit) {
                (Kind::Bool, Some(b)) if b < 8 => b,
                (Kind::Bool, Some(_)) => return Err(bad(format!("{at}.bit"), "must be 0 to 7")),
                (Kind::Bool, None) => 0,
                (_, Some(_)) => return Err(bad(format!("{at}.bit"), "is for bool fields only")),
                (_, None) => 0,
            };
            if kind == Kind::Bool && (f.scale.is_some() || f.add.is_some()) {
                return Err(bad(
                    format!("{at}.scale"),
                    "a bool field has no scale or add",
                ));
            }
            let scale = f.scale.unwrap_or(1.0);
            let add = f.add.unwrap_or(0.0);
            if !scale.is_finite() || scale == 0.0 || !add.is_finite() {
                return Err(bad(
                    format!("{at}.scale"),
                    "scale must be finite and not 0; add finite",
                ));
            }
            min_len = min_len.max(end);
            fields.push(Field {
                name: f.name,
                kind,
                offset: f.offset,
                little: endian(&f.endian, &at)?,
                scale,
                add,
                bit,
                unit: f.unit,
            });
        }
        let timestamp = match spec.timestamp {
            None => None,
            Some(t) => {
                let kind = match Kind::parse(&t.kind) {
                    Some(k @ (Kind::U32 | Kind::U64)) => k,
                    _ => return Err(bad("timestamp.type", "must be u32 or u64")),
                };
                let per = match t.unit.as_str() {
                    "s" => 1_000_000,
                    "ms" => 1_000,
                    _ => return Err(bad("timestamp.unit", "must be s or ms")),
                };
                let end = t.offset.saturating_add(kind.size());
                if end > MAX_FRAME {
                    return Err(bad(
                        "timestamp.offset",
                        format!("must end within {MAX_FRAME} bytes"),
                    ));
                }
                min_len = min_len.max(end);
                Some((kind, t.offset, endian(&t.endian, "timestamp")?, per))
            }
        };
        Ok(Layout {
            fields,
            timestamp,
            min_len,
        })
    }

    /// One frame → one telemetry message.
    pub fn decode(&self, frame: &[u8]) -> Result<Telemetry, DecodeError> {
        if frame.len() < self.min_len {
            return Err(bad(
                "frame",
                format!(
                    "needs {} bytes for this layout, got {}",
                    self.min_len,
                    frame.len()
                ),
            ));
        }
        let ts = match self.timestamp {
            None => None,
            Some((kind, off, little, per)) => {
                let raw = uint(&frame[off..off + kind.size()], little);
                Some(
                    i64::try_from(raw)
                        .ok()
                        .and_then(|r| r.checked_mul(per))
                        .ok_or_else(|| bad("timestamp", "is out of range"))?,
                )
            }
        };
        let mut t = Telemetry::default();
        t.begin(ts);
        for f in &self.fields {
            let bytes = &frame[f.offset..f.offset + f.kind.size()];
            let value = match f.kind {
                Kind::Bool => Value::Bool(bytes[0] >> f.bit & 1 == 1),
                k => {
                    let raw = number(k, bytes, f.little);
                    let v = raw * f.scale + f.add;
                    if !v.is_finite() {
                        return Err(bad(f.name.clone(), "is not a finite number"));
                    }
                    Value::Number(v)
                }
            };
            let n = t.intern(&f.name);
            t.push(n, value, Quality::Good);
        }
        Ok(t)
    }
}

/// A datagram of the raw frame protocol: `"TH"`, a version byte (1; bit 7
/// set asks for an acknowledgement), a 16-bit sequence number (echoed in
/// the acknowledgement), the device id and key each prefixed by its
/// length in one byte, then the payload (a binary frame for the device's
/// layout, or JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub ack: bool,
    /// The payload is CBOR telemetry (version byte bit 0x40).
    pub cbor: bool,
    /// The payload is JSON telemetry (version byte bit 0x20).
    pub json: bool,
    pub seq: u16,
    pub device: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Frame<'a>, &'static str> {
        let [b'T', b'H', ver, s0, s1, rest @ ..] = b else {
            return Err("not a twinhub frame (no TH header)");
        };
        if ver & 0x1f != 1 {
            return Err("unknown frame version");
        }
        let (id, rest) = lp(rest).ok_or("the device id is cut short")?;
        let (key, payload) = lp(rest).ok_or("the key is cut short")?;
        Ok(Frame {
            ack: ver & 0x80 != 0,
            cbor: ver & 0x40 != 0,
            json: ver & 0x20 != 0,
            seq: u16::from_be_bytes([*s0, *s1]),
            device: std::str::from_utf8(id).map_err(|_| "the device id is not UTF-8")?,
            key: std::str::from_utf8(key).map_err(|_| "the key is not UTF-8")?,
            payload,
        })
    }

    /// The bytes of a frame (for clients and tests).
    pub fn encode(&self) -> Vec<u8> {
        let flags = if self.ack { 0x80 } else { 0 }
            | if self.cbor { 0x40 } else { 0 }
            | if self.json { 0x20 } else { 0 };
        let mut out = vec![b'T', b'H', 1 | flags];
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(self.device.len() as u8);
        out.extend_from_slice(self.device.as_bytes());
        out.push(self.key.len() as u8);
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(self.payload);
        out
    }
}

/// The acknowledgement of a frame: `"TH"`, 0x81, the frame's sequence
/// number, and the outcome.
pub fn ack(seq: u16, status: AckStatus) -> [u8; 6] {
    let s = seq.to_be_bytes();
    [b'T', b'H', 0x81, s[0], s[1], status as u8]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AckStatus {
    /// Stored (durable).
    Stored = 0,
    /// The device id or key was refused (or the device is disabled).
    Unauthorized = 1,
    /// The payload breaks the layout or the twin's model: not stored.
    Invalid = 2,
    /// Not stored (store busy or failing, quota): send it again later.
    RetryLater = 3,
}

fn lp(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (n, rest) = b.split_first()?;
    let n = *n as usize;
    (rest.len() >= n).then(|| rest.split_at(n))
}

fn uint(b: &[u8], little: bool) -> u64 {
    let mut v = 0u64;
    if little {
        for (i, x) in b.iter().enumerate() {
            v |= (*x as u64) << (8 * i);
        }
    } else {
        for x in b {
            v = (v << 8) | *x as u64;
        }
    }
    v
}

fn number(k: Kind, b: &[u8], little: bool) -> f64 {
    let u = uint(b, little);
    match k {
        Kind::U8 | Kind::U16 | Kind::U32 | Kind::U64 => u as f64,
        Kind::I8 => u as u8 as i8 as f64,
        Kind::I16 => u as u16 as i16 as f64,
        Kind::I32 => u as u32 as i32 as f64,
        Kind::I64 => u as i64 as f64,
        Kind::F32 => f32::from_bits(u as u32) as f64,
        Kind::F64 => f64::from_bits(u),
        Kind::Bool => (u & 1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(t: &Telemetry) -> Vec<(String, Value)> {
        t.messages()
            .next()
            .unwrap()
            .values()
            .map(|(k, v, _)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn the_documented_example_decodes() {
        let l = Layout::parse(
            br#"{"fields": [
              {"name": "temperature", "type": "i16", "offset": 0, "scale": 0.01, "unit": "degreeCelsius"},
              {"name": "pressure", "type": "u16", "offset": 2, "endian": "little", "scale": 0.1, "add": -50},
              {"name": "door_open", "type": "bool", "offset": 4, "bit": 3},
              {"name": "energy", "type": "f32", "offset": 5}],
             "timestamp": {"type": "u32", "offset": 9, "unit": "s"}}"#,
        )
        .unwrap();
        assert_eq!(l.min_len, 13);
        let mut frame = Vec::new();
        frame.extend_from_slice(&(-1234i16).to_be_bytes());
        frame.extend_from_slice(&600u16.to_le_bytes());
        frame.push(0b0000_1000);
        frame.extend_from_slice(&12.5f32.to_be_bytes());
        frame.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        let t = l.decode(&frame).unwrap();
        assert_eq!(t.messages().next().unwrap().ts, Some(1_700_000_000_000_000));
        assert_eq!(
            values(&t),
            vec![
                ("temperature".into(), Value::Number(-12.34)),
                ("pressure".into(), Value::Number(10.0)),
                ("door_open".into(), Value::Bool(true)),
                ("energy".into(), Value::Number(12.5)),
            ]
        );
        let e = l.decode(&frame[..12]).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule.as_str()),
            ("frame", "needs 13 bytes for this layout, got 12")
        );
    }

    #[test]
    fn bad_layouts_name_the_field() {
        for (json, field) in [
            (r#"{"fields": []}"#, "fields"),
            (
                r#"{"fields": [{"name": "a", "type": "u24", "offset": 0}]}"#,
                "fields[0].type",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u8", "offset": 0}, {"name": "a", "type": "u8", "offset": 1}]}"#,
                "fields[1].name",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u32", "offset": 1022}]}"#,
                "fields[0].offset",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "bool", "offset": 0, "bit": 8}]}"#,
                "fields[0].bit",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u8", "offset": 0, "bit": 1}]}"#,
                "fields[0].bit",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u8", "offset": 0, "endian": "middle"}]}"#,
                "fields[0].endian",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u8", "offset": 0, "scale": 0}]}"#,
                "fields[0].scale",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u8", "offset": 0}], "timestamp": {"type": "f32", "offset": 1, "unit": "s"}}"#,
                "timestamp.type",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u8", "offset": 0}], "timestamp": {"type": "u32", "offset": 1, "unit": "fortnight"}}"#,
                "timestamp.unit",
            ),
            (
                r#"{"fields": [{"name": "a", "type": "u8", "offset": 0, "colour": 1}]}"#,
                "layout",
            ),
        ] {
            let e = Layout::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e:?}");
        }
    }

    #[test]
    fn frames_parse_round_trip_and_refuse_garbage() {
        let f = Frame {
            ack: true,
            cbor: false,
            json: false,
            seq: 513,
            device: "m-1",
            key: "k3y",
            payload: &[1, 2, 3],
        };
        let bytes = f.encode();
        assert_eq!(Frame::parse(&bytes).unwrap(), f);
        assert_eq!(ack(513, AckStatus::Invalid), [b'T', b'H', 0x81, 2, 1, 2]);
        for bad in [
            &b""[..],
            b"TH",
            b"XY\x01\x00\x00",
            b"TH\x02\x00\x00\x01a\x00",
            b"TH\x01\x00\x00\x05ab",
        ] {
            assert!(Frame::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_datagram_parses_or_is_refused(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Frame::parse(&b);
        }

        /// Values packed by the layout's own rules come back (integers
        /// exactly, floats bit for bit); any bytes decode or are refused,
        /// never read out of bounds.
        #[test]
        fn packed_values_round_trip(
            a in any::<i32>(), b in any::<u16>(), c in any::<f64>().prop_filter("finite", |v| v.is_finite()),
            bits in any::<u8>(), little in any::<bool>(), junk in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let e = if little { "little" } else { "big" };
            let json = format!(r#"{{"fields": [
                {{"name": "a", "type": "i32", "offset": 0, "endian": "{e}"}},
                {{"name": "b", "type": "u16", "offset": 4, "endian": "{e}"}},
                {{"name": "c", "type": "f64", "offset": 6, "endian": "{e}"}},
                {{"name": "bit5", "type": "bool", "offset": 14, "bit": 5}}]}}"#);
            let l = Layout::parse(json.as_bytes()).unwrap();
            let mut f = Vec::new();
            if little {
                f.extend_from_slice(&a.to_le_bytes()); f.extend_from_slice(&b.to_le_bytes()); f.extend_from_slice(&c.to_le_bytes());
            } else {
                f.extend_from_slice(&a.to_be_bytes()); f.extend_from_slice(&b.to_be_bytes()); f.extend_from_slice(&c.to_be_bytes());
            }
            f.push(bits);
            let got = values(&l.decode(&f).unwrap());
            prop_assert_eq!(&got[0].1, &Value::Number(a as f64));
            prop_assert_eq!(&got[1].1, &Value::Number(b as f64));
            prop_assert_eq!(&got[2].1, &Value::Number(c));
            prop_assert_eq!(&got[3].1, &Value::Bool(bits >> 5 & 1 == 1));
            let _ = l.decode(&junk);
        }
    }
}
