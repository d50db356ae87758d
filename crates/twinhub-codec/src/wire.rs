//! A compact binary form of one decoded `Telemetry` (or of line
//! protocol's batches, one per twin), for telemetry that
//! was already decoded elsewhere: a cluster replica decodes a device's
//! JSON body and hands the primary this, so the primary does not parse
//! the JSON again. Not a device format (devices send JSON, CBOR, line
//! protocol or their binary layouts); the primary takes it only under a
//! replica's signature (`twinhub-server`'s `forwarded`).
//!
//! Layout (varints are LEB128, signed ones zigzag):
//! `THW1`, names (count, then length + UTF-8 each), messages (count, then
//! each: 0 or 1 + a signed varint timestamp, reading count, then each
//! reading: name index, a byte of quality × 8 + kind, and the value —
//! a signed varint for a whole number below 2^53, 8 bytes of f64 for any
//! other number, nothing for false/true, length + UTF-8 for a string).
//! It is never much larger than the JSON it was decoded from (at most
//! `MAX_GROWTH`: a reading `"a":0.1,` is 8 bytes of JSON and 10 here). The decoder checks what the JSON decoder checks (names,
//! finite numbers, timestamps' range, the limits), so what it accepts is
//! what a JSON body could have said.

use crate::json::{DecodeError, Limits};
use crate::lineproto::TwinBatch;
use crate::telemetry::Telemetry;
use twinhub_model::ids::check_property_name;
use twinhub_model::time::{MAX_TS, MIN_TS};
use twinhub_model::{Quality, Value};

const MAGIC: &[u8; 4] = b"THW1";
const BATCHES_MAGIC: &[u8; 4] = b"THB1";
const NUMBER: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const STRING: u8 = 3;
const WHOLE: u8 = 4;
/// Bodies in this form may be this much larger than the JSON they came
/// from (a bound the receiver's size limit allows for).
pub const MAX_GROWTH: (usize, usize) = (3, 2);

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// `f` as a whole number a varint carries exactly (not -0.0).
fn whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < (1u64 << 53) as f64 && f.to_bits() != (-0.0f64).to_bits())
        .then_some(f as i64)
}

/// The binary form of `t`.
pub fn encode_wire(t: &Telemetry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + t.points() * 12);
    out.extend_from_slice(MAGIC);
    put_telemetry(&mut out, t);
    out
}

/// The binary form of line protocol's batches (one per twin).
pub fn encode_wire_batches(batches: &[TwinBatch]) -> Vec<u8> {
    let points: usize = batches.iter().map(|b| b.telemetry.points()).sum();
    let mut out = Vec::with_capacity(16 + points * 12);
    out.extend_from_slice(BATCHES_MAGIC);
    put_uvar(&mut out, batches.len() as u64);
    for b in batches {
        put_bytes(&mut out, b.twin.as_bytes());
        put_telemetry(&mut out, &b.telemetry);
    }
    out
}

fn put_telemetry(out: &mut Vec<u8>, t: &Telemetry) {
    put_uvar(out, t.names().len() as u64);
    for n in t.names() {
        put_bytes(out, n.as_bytes());
    }
    put_uvar(out, t.len() as u64);
    for m in t.messages() {
        match m.ts {
            Some(ts) => {
                out.push(1);
                put_uvar(out, zigzag(ts));
            }
            None => out.push(0),
        }
        put_uvar(out, m.readings.len() as u64);
        for r in m.readings {
            put_uvar(out, r.name as u64);
            let q = r.quality.as_u8() << 3;
            match &r.value {
                Value::Number(f) if whole(*f).is_some() => {
                    out.push(q | WHOLE);
                    put_uvar(out, zigzag(whole(*f).unwrap_or_default()));
                }
                Value::Number(f) => {
                    out.push(q | NUMBER);
                    out.extend_from_slice(&f.to_le_bytes());
                }
                Value::Bool(false) => out.push(q | FALSE),
                Value::Bool(true) => out.push(q | TRUE),
                Value::String(s) => {
                    out.push(q | STRING);
                    put_bytes(out, s.as_bytes());
                }
            }
        }
    }
}

/// Reads what `encode_wire` wrote, checked against `limits` as a JSON body
/// would be; never panics on any input.
pub fn decode_wire(bytes: &[u8], limits: &Limits) -> Result<Telemetry, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(bad("is not twinhub's binary telemetry"));
    }
    let t = read_telemetry(&mut r, limits, limits.max_messages, true)?;
    r.end()?;
    Ok(t)
}

/// Reads what `encode_wire` wrote in this process or an earlier run of it
/// (the store's outbox): the structure is checked, so any bytes decode or
/// fail without panicking, but names, timestamps and sizes are not held
/// to a device body's rules — what was stored passed them or was made by
/// the server (calculated values, predictions) and must read back whole.
pub fn decode_wire_trusted(bytes: &[u8]) -> Result<Telemetry, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(bad("is not twinhub's binary telemetry"));
    }
    let t = read_telemetry(&mut r, &Limits::default(), usize::MAX, false)?;
    r.end()?;
    Ok(t)
}

/// Reads what `encode_wire_batches` wrote, checked as line protocol is:
/// at most `max_messages` lines in all, twins named and each once.
pub fn decode_wire_batches(bytes: &[u8], limits: &Limits) -> Result<Vec<TwinBatch>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != BATCHES_MAGIC {
        return Err(bad("is not twinhub's binary line batches"));
    }
    let n = r.count()?;
    let mut out: Vec<TwinBatch> = Vec::with_capacity(n);
    let mut left = limits.max_messages;
    for i in 0..n {
        let twin = r.text()?;
        if twin.is_empty() || out.iter().any(|b| b.twin == twin) {
            return Err(err(&format!("batches[{i}]"), "must name a twin, once"));
        }
        let telemetry = read_telemetry(&mut r, limits, left, true)?;
        left -= telemetry.len();
        out.push(TwinBatch {
            twin: twin.to_string(),
            telemetry,
        });
    }
    r.end()?;
    Ok(out)
}

/// One telemetry section of at most `max_messages` messages; `checked`
/// holds it to a device body's rules (names, ranges, limits).
fn read_telemetry(
    r: &mut Reader<'_>,
    limits: &Limits,
    max_messages: usize,
    checked: bool,
) -> Result<Telemetry, DecodeError> {
    let mut t = Telemetry::default();
    let names = r.count()?;
    for i in 0..names {
        let name = r.text()?;
        // Components arrive flattened to dotted names, as from JSON.
        let field = || format!("names[{i}]");
        if checked {
            name.split('.')
                .try_for_each(check_property_name)
                .map_err(|rule| err(&field(), rule))?;
        }
        if checked && name.split('.').count() > limits.max_depth {
            let rule = format!("nests deeper than {} levels", limits.max_depth);
            return Err(err(&field(), &rule));
        }
        if t.intern(name) as usize != i {
            return Err(err(&field(), "appears twice"));
        }
    }
    let messages = r.count()?;
    if messages > max_messages {
        let rule = format!("may hold at most {} messages", limits.max_messages);
        return Err(bad(&rule));
    }
    for m in 0..messages {
        let ts = match r.byte()? {
            0 => None,
            1 => {
                let ts = unzigzag(r.uvar()?);
                if checked && !(MIN_TS..MAX_TS).contains(&ts) {
                    return Err(err(&format!("[{m}].ts"), "is out of range"));
                }
                Some(ts)
            }
            _ => return Err(err(&format!("[{m}].ts"), "has an unknown marker")),
        };
        t.begin(ts);
        let readings = r.count()?;
        if checked && readings > limits.max_properties {
            let rule = format!("may hold at most {} properties", limits.max_properties);
            return Err(err(&format!("[{m}]"), &rule));
        }
        for _ in 0..readings {
            let name = r.uvar()?;
            if name >= names as u64 {
                return Err(err(&format!("[{m}]"), "names an unknown property"));
            }
            let field = |t: &Telemetry| format!("[{m}].{}", t.names()[name as usize]);
            let head = r.byte()?;
            let quality = match head >> 3 {
                q @ 0..=2 => Quality::from_u8(q),
                _ => return Err(err(&field(&t), "has an unknown quality")),
            };
            let value = match head & 7 {
                NUMBER => {
                    let b: [u8; 8] = r.take(8)?.try_into().expect("8 bytes");
                    let f = f64::from_le_bytes(b);
                    if checked && !f.is_finite() {
                        return Err(err(&field(&t), "must be a finite number"));
                    }
                    Value::Number(f)
                }
                WHOLE => Value::Number(unzigzag(r.uvar()?) as f64),
                FALSE => Value::Bool(false),
                TRUE => Value::Bool(true),
                STRING => {
                    let s = r.text()?;
                    if checked && s.len() > limits.max_string_len {
                        let rule =
                            format!("strings may be at most {} bytes", limits.max_string_len);
                        return Err(err(&field(&t), &rule));
                    }
                    Value::String(s.to_string())
                }
                _ => return Err(err(&field(&t), "has an unknown kind of value")),
            };
            let before = t.current_len();
            t.push(name as u32, value, quality);
            if t.current_len() == before {
                return Err(err(&field(&t), "appears twice in one message"));
            }
        }
    }
    Ok(t)
}

fn put_uvar(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvar(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn err(field: &str, rule: &str) -> DecodeError {
    DecodeError {
        field: field.to_string(),
        rule: rule.to_string(),
    }
}

fn bad(rule: &str) -> DecodeError {
    err("body", rule)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| bad("ends too early"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.at != self.bytes.len() {
            return Err(bad("has bytes after its end"));
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn uvar(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("holds a number too long"))
    }

    /// A count of items that each take at least a byte: never more than
    /// the bytes left, so no count makes the decoder allocate.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.uvar()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(bad("counts more items than it holds"));
        }
        Ok(n as usize)
    }

    fn text(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.count()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| bad("holds text that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Number),
            any::<i64>().prop_map(|i| Value::Number(i as f64)),
            any::<bool>().prop_map(Value::Bool),
            "[ -~]{0,40}".prop_map(Value::String),
        ]
    }

    fn telemetry() -> impl Strategy<Value = Telemetry> {
        let message = (
            proptest::option::of(MIN_TS..MAX_TS),
            proptest::collection::vec(("[a-z][a-z0-9_]{0,8}", value(), 0u8..3), 0..6),
        );
        proptest::collection::vec(message, 0..20).prop_map(|msgs| {
            let mut t = Telemetry::default();
            for (ts, readings) in msgs {
                t.begin(ts);
                for (name, v, q) in readings {
                    let i = t.intern(&name);
                    t.push(i, v, Quality::from_u8(q));
                }
            }
            t
        })
    }

    proptest! {
        #[test]
        fn what_is_encoded_decodes_to_the_same_telemetry(t in telemetry()) {
            let back = decode_wire(&encode_wire(&t), &Limits::default()).unwrap();
            prop_assert_eq!(back.to_messages(), t.to_messages());
            prop_assert_eq!(back.names(), t.names());
            let trusted = decode_wire_trusted(&encode_wire(&t)).unwrap();
            prop_assert_eq!(trusted.to_messages(), t.to_messages());
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = b;
            if b.len() >= 4 {
                b[..4].copy_from_slice(MAGIC);
            }
            let _ = decode_wire(&b, &Limits::default());
            let _ = decode_wire_trusted(&b);
        }

        #[test]
        fn every_cut_short_encoding_is_refused(t in telemetry(), cut in any::<prop::sample::Index>()) {
            let b = encode_wire(&t);
            let n = cut.index(b.len());
            prop_assert!(decode_wire(&b[..n], &Limits::default()).is_err());
            prop_assert!(decode_wire_trusted(&b[..n]).is_err());
        }
    }

    /// What the server stored is read back whole by the trusted decoder,
    /// even what a device body may not say.
    #[test]
    fn the_trusted_decoder_skips_the_device_rules_only() {
        let mut t = Telemetry::default();
        t.begin(Some(MAX_TS + 5));
        let i = t.intern("$made.by_the_server");
        t.push(i, Value::String("x".repeat(5_000)), Quality::Uncertain);
        let b = encode_wire(&t);
        assert!(decode_wire(&b, &Limits::default()).is_err());
        let back = decode_wire_trusted(&b).unwrap();
        assert_eq!(back.to_messages(), t.to_messages());
    }

    #[test]
    fn line_protocol_batches_carried_in_binary_are_the_same() {
        let body = b"reactor,twin=r1 t=21.5,on=true 1700000000000000000\nreactor,twin=r2 t=3i,s=\"x\"\nreactor,twin=r1 t=22 1700000001000000000\n";
        let limits = Limits::default();
        let lines =
            crate::decode_line_protocol(body, crate::Precision::Ns, "twin", &limits).unwrap();
        let wire = encode_wire_batches(&lines);
        assert!(wire.len() <= body.len() * MAX_GROWTH.0 / MAX_GROWTH.1 + 64);
        let back = decode_wire_batches(&wire, &limits).unwrap();
        assert_eq!(back.len(), 2);
        for (a, b) in back.iter().zip(&lines) {
            assert_eq!(a.twin, b.twin);
            assert_eq!(a.telemetry.to_messages(), b.telemetry.to_messages());
        }
        let two = Limits {
            max_messages: 2,
            ..limits
        };
        assert_eq!(
            decode_wire_batches(&wire, &two).unwrap_err().rule,
            "may hold at most 2 messages",
            "the lines of all twins count together"
        );
        assert!(
            decode_wire(&wire, &limits).is_err(),
            "one form is not taken for the other"
        );
        assert!(decode_wire_batches(&encode_wire(&lines[0].telemetry), &limits).is_err());
        let twice = [lines[0].clone(), lines[0].clone()];
        assert!(decode_wire_batches(&encode_wire_batches(&twice), &limits).is_err());
    }

    #[test]
    fn a_json_body_decoded_then_carried_in_binary_is_the_same() {
        let body = br#"[{"ts":1700000000000,"t":21.5,"ok":true,"state":"run"},
                        {"t":{"value":22,"quality":"bad"},"unit":{"temp":3}}]"#;
        let json = crate::decode_telemetry(body, &Limits::default()).unwrap();
        assert!(json.names().iter().any(|n| &**n == "unit.temp"));
        let back = decode_wire(&encode_wire(&json), &Limits::default()).unwrap();
        assert_eq!(back.to_messages(), json.to_messages());
    }

    #[test]
    fn the_binary_form_stays_within_its_growth_bound_of_the_json() {
        let worst = r#"{"a":0.1}"#.repeat(500).replace("}{", "},{");
        let bodies = [
            format!("[{worst}]"),
            r#"{"a":0.1,"b":0.2,"c":-0.3}"#.into(),
            r#"{"a":-0,"b":1e300,"c":9007199254740993,"d":-12}"#.into(),
            r#"[{"a":true},{"a":"x"},{"a":{"value":1,"quality":"uncertain"}}]"#.into(),
        ];
        for body in bodies {
            let t = crate::decode_telemetry(body.as_bytes(), &Limits::default()).unwrap();
            let wire = encode_wire(&t);
            assert!(
                wire.len() * MAX_GROWTH.1 <= body.len() * MAX_GROWTH.0 + 64,
                "{} bytes of JSON became {}",
                body.len(),
                wire.len()
            );
            let back = decode_wire(&wire, &Limits::default()).unwrap();
            assert_eq!(back.to_messages(), t.to_messages());
            let bits = |t: &Telemetry| {
                t.readings()
                    .iter()
                    .map(|r| match r.value {
                        Value::Number(f) => f.to_bits(),
                        _ => 0,
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                bits(&back),
                bits(&t),
                "numbers are carried bit for bit (-0 too)"
            );
        }
    }

    #[test]
    fn the_limits_and_rules_of_json_bodies_hold() {
        let limits = Limits {
            max_messages: 2,
            max_properties: 2,
            max_string_len: 3,
            ..Limits::default()
        };
        let mut t = Telemetry::default();
        for _ in 0..3 {
            t.begin(None);
        }
        let e = decode_wire(&encode_wire(&t), &limits).unwrap_err();
        assert_eq!(e.rule, "may hold at most 2 messages");

        let mut t = Telemetry::default();
        t.begin(None);
        for n in ["a", "b", "c"] {
            let i = t.intern(n);
            t.push(i, Value::Bool(true), Quality::Good);
        }
        let e = decode_wire(&encode_wire(&t), &limits).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule.as_str()),
            ("[0]", "may hold at most 2 properties")
        );

        let mut t = Telemetry::default();
        t.begin(None);
        let i = t.intern("s");
        t.push(i, Value::String("long".into()), Quality::Good);
        let e = decode_wire(&encode_wire(&t), &limits).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule.as_str()),
            ("[0].s", "strings may be at most 3 bytes")
        );

        // A name JSON could not carry, and a number JSON could not either.
        let mut t = Telemetry::default();
        t.begin(None);
        let i = t.intern("a/b");
        t.push(i, Value::Number(1.0), Quality::Good);
        assert_eq!(
            decode_wire(&encode_wire(&t), &limits).unwrap_err().field,
            "names[0]"
        );
        let mut b = encode_wire(&{
            let mut t = Telemetry::default();
            t.begin(None);
            let i = t.intern("x");
            t.push(i, Value::Number(1.5), Quality::Good);
            t
        });
        let n = b.len();
        b[n - 8..].copy_from_slice(&f64::NAN.to_le_bytes());
        assert_eq!(
            decode_wire(&b, &limits).unwrap_err().rule,
            "must be a finite number"
        );
        assert!(decode_wire(b"{\"x\":1}", &limits).is_err());
    }
}
