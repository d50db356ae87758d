//! Timestamps (microseconds since the Unix epoch) and durations: parsing
//! what clients send and formatting what the API answers.

use jiff::{tz::TimeZone, Timestamp};

/// Earliest accepted timestamp: 1970-01-01T00:00:00Z.
pub const MIN_TS: i64 = 0;
/// Latest accepted timestamp: 2200-01-01T00:00:00Z.
pub const MAX_TS: i64 = 7_258_118_400_000_000;

pub const US_PER_MS: i64 = 1_000;
pub const US_PER_SEC: i64 = 1_000_000;
pub const US_PER_MIN: i64 = 60 * US_PER_SEC;
pub const US_PER_HOUR: i64 = 60 * US_PER_MIN;
pub const US_PER_DAY: i64 = 24 * US_PER_HOUR;

const RANGE_RULE: &str = "must be between 1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z";

/// Epoch milliseconds (possibly fractional) to microseconds, range-checked.
pub fn from_epoch_ms(ms: f64) -> Result<i64, &'static str> {
    if !ms.is_finite() {
        return Err("must be a finite number of epoch milliseconds");
    }
    let us = (ms * 1000.0).round();
    if us < MIN_TS as f64 || us >= MAX_TS as f64 {
        return Err(RANGE_RULE);
    }
    Ok(us as i64)
}

/// A timestamp as clients write it: RFC 3339 text or epoch milliseconds
/// (a JSON number or a string of digits).
pub fn parse_timestamp_str(s: &str) -> Result<i64, &'static str> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let ms: f64 = s
            .parse()
            .map_err(|_| "must be RFC 3339 or epoch milliseconds")?;
        return from_epoch_ms(ms);
    }
    let t: Timestamp = s
        .parse()
        .map_err(|_| "must be RFC 3339 (e.g. 2026-01-02T03:04:05Z) or epoch milliseconds")?;
    let us = t.as_microsecond();
    if !(MIN_TS..MAX_TS).contains(&us) {
        return Err(RANGE_RULE);
    }
    Ok(us)
}

pub fn parse_timestamp_json(v: &serde_json::Value) -> Result<i64, &'static str> {
    match v {
        serde_json::Value::Number(n) => from_epoch_ms(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => parse_timestamp_str(s),
        _ => Err("must be RFC 3339 text or a number of epoch milliseconds"),
    }
}

/// RFC 3339 in UTC with as many fractional digits as needed.
pub fn format_rfc3339(us: i64) -> String {
    match Timestamp::from_microsecond(us) {
        Ok(t) => t.to_string(),
        Err(_) => String::from("invalid"),
    }
}

/// Microseconds to epoch milliseconds as the API shows them: an integer when
/// whole, a fraction otherwise.
pub fn to_epoch_ms_json(us: i64) -> serde_json::Value {
    if us % US_PER_MS == 0 {
        serde_json::Value::from(us / US_PER_MS)
    } else {
        crate::value::number_json(us as f64 / 1000.0)
    }
}

/// Durations such as `250ms`, `30s`, `5m`, `1h`, `1d`, `2w` to microseconds.
pub fn parse_duration(s: &str) -> Result<i64, &'static str> {
    const RULE: &str =
        "must be a positive whole number followed by ms, s, m, h, d or w (e.g. 30s, 1m)";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(RULE)?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| RULE)?;
    let mult = match unit {
        "ms" => US_PER_MS,
        "s" => US_PER_SEC,
        "m" | "min" => US_PER_MIN,
        "h" => US_PER_HOUR,
        "d" => US_PER_DAY,
        "w" => 7 * US_PER_DAY,
        _ => return Err(RULE),
    };
    if n <= 0 {
        return Err(RULE);
    }
    n.checked_mul(mult).ok_or(RULE)
}

pub fn parse_tz(name: &str) -> Result<TimeZone, &'static str> {
    TimeZone::get(name).map_err(|_| "must be an IANA time zone name such as Europe/Berlin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(
            parse_timestamp_str("1700000000000").unwrap(),
            1_700_000_000_000_000
        );
        assert_eq!(
            parse_timestamp_str("1970-01-01T00:00:01Z").unwrap(),
            1_000_000
        );
        assert_eq!(
            parse_timestamp_str("2026-01-01T01:00:00+01:00").unwrap(),
            parse_timestamp_str("2026-01-01T00:00:00Z").unwrap()
        );
        assert!(parse_timestamp_str("yesterday").is_err());
        assert!(parse_timestamp_str("2300-01-01T00:00:00Z").is_err());
        assert_eq!(parse_timestamp_json(&serde_json::json!(1.5)).unwrap(), 1500);
        assert!(parse_timestamp_json(&serde_json::json!(-1)).is_err());
        assert!(parse_timestamp_json(&serde_json::json!(true)).is_err());
        assert_eq!(format_rfc3339(1_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(to_epoch_ms_json(1500), serde_json::json!(1.5));
        assert_eq!(to_epoch_ms_json(2000), serde_json::json!(2));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), 30 * US_PER_SEC);
        assert_eq!(parse_duration("1d").unwrap(), US_PER_DAY);
        assert_eq!(parse_duration("250ms").unwrap(), 250 * US_PER_MS);
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("3y").is_err());
    }
}
