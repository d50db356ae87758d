//! InfluxDB line protocol → telemetry, grouped by twin.
//!
//! `measurement[,tag=value…] field=value[,field=value…] [timestamp]`, one
//! point per line; `#` comments and blank lines are skipped. The twin is
//! the value of the `twin_tag` tag when the line has it, else the
//! measurement; fields are properties; other tags are not stored.
//! Values: floats (`1`, `-2.5e3`), integers (`7i`) and unsigned (`7u`)
//! become numbers, `"strings"` strings, `t/T/true/True/TRUE` and the `f`
//! forms booleans. Escapes follow the protocol (`\ `, `\,`, `\=` in names
//! and tags; `\"` and `\\` in strings). Timestamps are integers in the
//! request's precision. Errors name the line (1-based) and the rule.

use crate::json::{DecodeError, Limits};
use crate::telemetry::Telemetry;
use twinhub_model::{Quality, Value};

/// The unit of a line's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Ns,
    Us,
    Ms,
    S,
    Min,
    H,
}

/// The tag that names the twin when the request names none.
pub const DEFAULT_TWIN_TAG: &str = "twin";

impl Precision {
    /// A request's `precision` parameter: nanoseconds when absent, None
    /// when it names no unit.
    pub fn of_query(p: Option<&str>) -> Option<Precision> {
        p.map_or(Some(Precision::Ns), Precision::parse)
    }

    /// `ns|us|ms|s` (v2) and `n|u|ms|s|m|h` (v1).
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "ns" | "n" => Precision::Ns,
            "us" | "u" | "µs" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            "m" => Precision::Min,
            "h" => Precision::H,
            _ => return None,
        })
    }

    /// A timestamp in this unit as µs (None when out of range).
    fn to_us(self, t: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(t.div_euclid(1000)),
            Precision::Us => Some(t),
            Precision::Ms => t.checked_mul(1000),
            Precision::S => t.checked_mul(1_000_000),
            Precision::Min => t.checked_mul(60_000_000),
            Precision::H => t.checked_mul(3_600_000_000),
        }
    }
}

/// One twin's points of a request, in line order.
#[derive(Debug, Clone, Default)]
pub struct TwinBatch {
    pub twin: String,
    pub telemetry: Telemetry,
}

fn err(line: usize, rule: impl Into<String>) -> DecodeError {
    DecodeError {
        field: format!("line {line}"),
        rule: rule.into(),
    }
}

/// Splits at the first unescaped `stop` byte outside quotes (`quotes`
/// only for the field set).
fn split_unescaped(s: &[u8], stop: u8, quotes: bool) -> (&[u8], Option<&[u8]>) {
    let mut i = 0;
    let mut in_quotes = false;
    while i < s.len() {
        let c = s[i];
        if c == b'\\' {
            i += 2;
            continue;
        }
        if quotes && c == b'"' {
            in_quotes = !in_quotes;
        } else if c == stop && !in_quotes {
            return (&s[..i], Some(&s[i + 1..]));
        }
        i += 1;
    }
    (s, None)
}

/// Splits on every unescaped `sep` outside quotes.
fn split_all(s: &[u8], sep: u8, quotes: bool) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let (head, tail) = split_unescaped(rest, sep, quotes);
        out.push(head);
        match tail {
            Some(t) => rest = t,
            None => return out,
        }
    }
}

/// A name or tag value with its backslash escapes removed.
fn unescape(s: &[u8], line: usize, what: &str) -> Result<String, DecodeError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() && matches!(s[i + 1], b' ' | b',' | b'=' | b'\\' | b'"')
        {
            out.push(s[i + 1]);
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err(line, format!("{what} is not UTF-8")))
}

fn field_value(v: &[u8], line: usize, key: &str, limits: &Limits) -> Result<Value, DecodeError> {
    let bad = |rule: &str| err(line, format!("field {key}: {rule}"));
    match v {
        [] => Err(bad("has no value")),
        [b'"', inner @ .., b'"'] => {
            let s = unescape(inner, line, "a string field")?;
            if s.len() > limits.max_string_len {
                return Err(bad(&format!(
                    "string longer than {} bytes",
                    limits.max_string_len
                )));
            }
            Ok(Value::String(s))
        }
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => Ok(Value::Bool(true)),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => Ok(Value::Bool(false)),
        _ => {
            let text = std::str::from_utf8(v).map_err(|_| bad("is not UTF-8"))?;
            let n = if let Some(i) = text.strip_suffix('i') {
                i.parse::<i64>()
                    .map(|n| n as f64)
                    .map_err(|_| bad("is not an integer"))?
            } else if let Some(u) = text.strip_suffix('u') {
                u.parse::<u64>()
                    .map(|n| n as f64)
                    .map_err(|_| bad("is not an unsigned integer"))?
            } else {
                text.parse::<f64>()
                    .map_err(|_| bad("is not a number, string or boolean"))?
            };
            if !n.is_finite() {
                return Err(bad("must be finite"));
            }
            Ok(Value::Number(n))
        }
    }
}

/// Decodes a request body into one batch per twin (in order of first
/// appearance).
pub fn decode_line_protocol(
    body: &[u8],
    precision: Precision,
    twin_tag: &str,
    limits: &Limits,
) -> Result<Vec<TwinBatch>, DecodeError> {
    let mut out: Vec<TwinBatch> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut lines = 0usize;
    for (n, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = n + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = raw.trim_ascii();
        if text.is_empty() || text[0] == b'#' {
            continue;
        }
        lines += 1;
        if lines > limits.max_messages {
            return Err(err(
                line,
                format!("more than {} lines in one request", limits.max_messages),
            ));
        }
        let (series, rest) = split_unescaped(text, b' ', false);
        let rest = rest.ok_or_else(|| err(line, "needs a field set after the measurement"))?;
        let (fields, ts) = split_unescaped(rest.trim_ascii_start(), b' ', true);
        let mut parts = split_all(series, b',', false).into_iter();
        let measurement = unescape(parts.next().unwrap_or_default(), line, "the measurement")?;
        if measurement.is_empty() {
            return Err(err(line, "the measurement is empty"));
        }
        let mut twin = None;
        for tag in parts {
            let (k, v) = split_unescaped(tag, b'=', false);
            let v = v.ok_or_else(|| err(line, "a tag needs key=value"))?;
            if unescape(k, line, "a tag key")? == twin_tag {
                twin = Some(unescape(v, line, "a tag value")?);
            }
        }
        let twin = twin.unwrap_or(measurement);
        if twin.is_empty() {
            return Err(err(line, format!("the {twin_tag} tag is empty")));
        }
        let ts = match ts.map(|t| t.trim_ascii()).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => {
                let v: i64 = std::str::from_utf8(t)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| err(line, "the timestamp must be an integer"))?;
                Some(
                    precision
                        .to_us(v)
                        .ok_or_else(|| err(line, "the timestamp is out of range"))?,
                )
            }
        };
        let at = *index.entry(twin.clone()).or_insert_with(|| {
            out.push(TwinBatch {
                twin,
                telemetry: Telemetry::default(),
            });
            out.len() - 1
        });
        let batch = &mut out[at].telemetry;
        batch.begin(ts);
        let fields = split_all(fields, b',', true);
        if fields.len() > limits.max_properties {
            return Err(err(
                line,
                format!("more than {} fields", limits.max_properties),
            ));
        }
        for f in fields {
            let (k, v) = split_unescaped(f, b'=', true);
            let v = v.ok_or_else(|| err(line, "a field needs key=value"))?;
            let key = unescape(k, line, "a field key")?;
            if key.is_empty() {
                return Err(err(line, "a field key is empty"));
            }
            let value = field_value(v, line, &key, limits)?;
            let name = batch.intern(&key);
            batch.push(name, value, Quality::Good);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(s: &str) -> Result<Vec<TwinBatch>, DecodeError> {
        decode_line_protocol(s.as_bytes(), Precision::Ns, "twin", &Limits::default())
    }

    fn points(b: &TwinBatch) -> Vec<(Option<i64>, Vec<(String, Value)>)> {
        b.telemetry
            .messages()
            .map(|m| {
                (
                    m.ts,
                    m.values()
                        .map(|(k, v, _)| (k.to_string(), v.clone()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_group_by_twin_with_every_value_kind() {
        let got = decode(
            "# comment\n\
             reactor,twin=r1,site=a temperature=351.25,running=t,mode=\"auto\",count=7i 1700000000000000000\n\
             \n\
             pump speed=1200u,ok=FALSE\r\n\
             reactor,twin=r1 temperature=352 1700000001000000000\n",
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].twin, "r1");
        assert_eq!(
            points(&got[0]),
            vec![
                (
                    Some(1_700_000_000_000_000),
                    vec![
                        ("temperature".into(), Value::Number(351.25)),
                        ("running".into(), Value::Bool(true)),
                        ("mode".into(), Value::String("auto".into())),
                        ("count".into(), Value::Number(7.0)),
                    ]
                ),
                (
                    Some(1_700_000_001_000_000),
                    vec![("temperature".into(), Value::Number(352.0))]
                ),
            ]
        );
        assert_eq!(got[1].twin, "pump");
        assert_eq!(
            points(&got[1]),
            vec![(
                None,
                vec![
                    ("speed".into(), Value::Number(1200.0)),
                    ("ok".into(), Value::Bool(false))
                ]
            )]
        );
    }

    #[test]
    fn escapes_and_quoted_spaces_and_commas() {
        let got =
            decode(r#"my\ plant,twin=line\,1 note="a, b=c \"quoted\"",temp\ C=1.5 5"#).unwrap();
        assert_eq!(got[0].twin, "line,1");
        assert_eq!(
            points(&got[0]),
            vec![(
                Some(0),
                vec![
                    ("note".into(), Value::String(r#"a, b=c "quoted""#.into())),
                    ("temp C".into(), Value::Number(1.5)),
                ]
            )]
        );
    }

    #[test]
    fn precisions_convert_to_microseconds() {
        for (p, t, us) in [
            (Precision::S, 2, 2_000_000),
            (Precision::Ms, 2, 2_000),
            (Precision::Us, 2, 2),
            (Precision::Ns, 2_999, 2),
            (Precision::H, 1, 3_600_000_000),
        ] {
            let got = decode_line_protocol(
                format!("m v=1 {t}").as_bytes(),
                p,
                "twin",
                &Limits::default(),
            )
            .unwrap();
            assert_eq!(
                got[0].telemetry.messages().next().unwrap().ts,
                Some(us),
                "{p:?}"
            );
        }
        assert_eq!(Precision::parse("n"), Some(Precision::Ns));
        assert_eq!(Precision::parse("u"), Some(Precision::Us));
        assert_eq!(Precision::parse("fortnight"), None);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_rule() {
        for (body, want) in [
            ("m", "line 1: needs a field set"),
            ("m v=1\nm v=", "line 2: field v: has no value"),
            ("m v=abc", "line 1: field v: is not a number"),
            ("m v=1.5i", "line 1: field v: is not an integer"),
            ("m v=1 12x", "line 1: the timestamp must be an integer"),
            ("m,tag v=1", "line 1: a tag needs key=value"),
            ("m v", "line 1: a field needs key=value"),
            (",twin=a v=1", "line 1: the measurement is empty"),
            ("m =1", "line 1: a field key is empty"),
            ("m v=1e999", "line 1: field v: must be finite"),
        ] {
            let e = decode(body)
                .err()
                .unwrap_or_else(|| panic!("{body} decoded"));
            let text = format!("{}: {}", e.field, e.rule);
            assert!(text.starts_with(want), "{body}: {text}");
        }
        let mut limits = Limits::default();
        limits.max_messages = 2;
        let e = decode_line_protocol(b"m v=1\nm v=2\nm v=3", Precision::Ns, "twin", &limits)
            .unwrap_err();
        assert_eq!(e.field, "line 3");
    }

    proptest! {
        /// Whatever the bytes, the decoder answers (no panic), and what it
        /// writes in line protocol it reads back.
        #[test]
        fn total_and_round_trips(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            twin in "[a-z][a-z0-9 ,=]{0,8}",
            key in "[a-z][a-z0-9 ,=]{0,8}",
            v in -1e9f64..1e9,
            s in "[ -~]{0,12}",
            ts in 0i64..4_000_000_000_000_000_000,
        ) {
            let _ = decode_line_protocol(&bytes, Precision::Ns, "twin", &Limits::default());
            let esc = |x: &str| x.replace('\\', "\\\\").replace(' ', "\\ ").replace(',', "\\,").replace('=', "\\=");
            let sq = s.replace('\\', "\\\\").replace('"', "\\\"");
            let line = format!("m,twin={} {}={v},s=\"{sq}\" {ts}", esc(&twin), esc(&key));
            let got = decode(&line).unwrap();
            prop_assert_eq!(&got[0].twin, &twin);
            let p = points(&got[0]);
            prop_assert_eq!(p[0].0, Some(ts / 1000));
            let want_key = if key == "s" { None } else { Some(key.clone()) };
            if let Some(k) = want_key {
                prop_assert_eq!(&p[0].1[0], &(k, Value::Number(v)));
            }
            prop_assert!(p[0].1.iter().any(|(k, val)| k == "s" && *val == Value::String(s.clone())));
        }
    }
}
