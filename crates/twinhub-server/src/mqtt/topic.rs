//! Topic names and filters: validation, matching (with the `$` rules of
//! both specifications) and shared-subscription parsing. Pure.

/// [MQTT-4.7.3-1] non-empty; [MQTT-4.7.1-1] no wildcards in names;
/// [MQTT-1.5.3-2] no NUL.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= 65_535 && !t.contains(['+', '#', '\0'])
}

/// [MQTT-4.7.1-2] `#` alone and last; [MQTT-4.7.1-3] `+` alone in its
/// level; non-empty [MQTT-4.7.3-1].
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > 65_535 || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
            return false;
        }
        if l.contains('+') && *l != "+" {
            return false;
        }
    }
    true
}

/// A `$share/{group}/{filter}` subscription split into group and filter.
/// `Err` when it is a malformed shared subscription.
pub fn parse_shared(f: &str) -> Result<(Option<&str>, &str), ()> {
    let Some(rest) = f.strip_prefix("$share/") else {
        return Ok((None, f));
    };
    let (group, filter) = rest.split_once('/').ok_or(())?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_filter(filter) {
        return Err(());
    }
    Ok((Some(group), filter))
}

/// Whether `topic` matches `filter`. [MQTT-4.7.2-1]: a filter starting
/// with a wildcard does not match a topic starting with `$`.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert!(valid_topic("a/b") && valid_topic("/") && valid_topic("$SYS/x"));
        assert!(
            !valid_topic("") && !valid_topic("a/+") && !valid_topic("a/#") && !valid_topic("a\0b")
        );
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "$SYS/#"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a"] {
            assert!(!valid_filter(bad), "{bad}");
        }
        assert_eq!(parse_shared("$share/g/a/+"), Ok((Some("g"), "a/+")));
        assert_eq!(parse_shared("a/b"), Ok((None, "a/b")));
        assert!(parse_shared("$share/g").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g/a#").is_err());
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        // [MQTT-4.7.1-2] examples: "sport/tennis/player1/#".
        for t in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(matches(t, "sport/tennis/player1/#"));
        }
        assert!(matches("sport", "sport/#"), "# matches the parent level");
        assert!(matches("sport/tennis/player1", "sport/tennis/+"));
        assert!(!matches("sport/tennis/player1/ranking", "sport/tennis/+"));
        assert!(!matches("sport", "sport/+"));
        assert!(matches("sport/", "sport/+"));
        assert!(
            matches("/finance", "+/+") && matches("/finance", "/+") && !matches("/finance", "+")
        );
        assert!(
            !matches("$SYS/monitor/Clients", "#")
                && !matches("$SYS/monitor/Clients", "+/monitor/Clients")
        );
        assert!(
            matches("$SYS/monitor/Clients", "$SYS/#")
                && matches("$SYS/monitor/Clients", "$SYS/monitor/+")
        );
        assert!(!matches("a/b", "a/b/c") && !matches("a/b/c", "a/b"));
    }
}
