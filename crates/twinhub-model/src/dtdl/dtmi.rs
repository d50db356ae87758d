//! Digital Twin Model Identifiers: `dtmi:<segment>(:<segment>)*;<version>`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dtmi(String);

impl Dtmi {
    /// Parses and validates a DTMI; the error is the rule it breaks.
    pub fn parse(s: &str) -> Result<Dtmi, &'static str> {
        const RULE: &str = "must be a DTMI such as dtmi:com:example:Thermostat;1 (segments of letters, digits and _ starting with a letter, not ending with _, optional version 1-999999999)";
        if s.len() > 4096 {
            return Err("a DTMI may be at most 4096 characters");
        }
        let rest = s.strip_prefix("dtmi:").ok_or(RULE)?;
        let (path, version) = match rest.split_once(';') {
            Some((p, v)) => (p, Some(v)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(RULE);
        }
        for seg in path.split(':') {
            let b = seg.as_bytes();
            if b.is_empty() || !b[0].is_ascii_alphabetic() || b[b.len() - 1] == b'_' {
                return Err(RULE);
            }
            if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                return Err(RULE);
            }
        }
        if let Some(v) = version {
            let (major, minor) = match v.split_once('.') {
                Some((a, b)) => (a, Some(b)),
                None => (v, None),
            };
            let ok = |d: &str, max: usize| {
                !d.is_empty()
                    && d.len() <= max
                    && d.bytes().all(|c| c.is_ascii_digit())
                    && !d.starts_with('0')
            };
            if !ok(major, 9) || minor.is_some_and(|m| !ok(m, 6)) {
                return Err(RULE);
            }
        }
        Ok(Dtmi(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Dtmi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Element names: a letter, then letters, digits and _ (not ending with
/// _), at most 512 characters.
pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 512
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1] != b'_'
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmis() {
        for ok in [
            "dtmi:com:example:Thermostat;1",
            "dtmi:a;2",
            "dtmi:a:b_c:D1",
            "dtmi:com:x;1.5",
        ] {
            assert!(Dtmi::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "com:example;1",
            "dtmi:",
            "dtmi:1a;1",
            "dtmi:a_;1",
            "dtmi:a;0",
            "dtmi:a;01",
            "dtmi:a::b;1",
            "dtmi:a-b;1",
            "dtmi:a;1.0",
        ] {
            assert!(Dtmi::parse(bad).is_err(), "{bad}");
        }
        assert!(valid_name("targetTemperature") && valid_name("a1_b"));
        assert!(!valid_name("1a") && !valid_name("a_") && !valid_name("a-b") && !valid_name(""));
    }
}
