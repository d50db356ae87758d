//! Rules for identifiers that appear in URLs and MQTT topics.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
#[error("{field}: {rule}")]
pub struct IdError {
    pub field: String,
    pub rule: &'static str,
}

/// Device, twin, tenant and user ids: 1–128 characters of letters, digits
/// and `-_.:`; they must be usable unescaped in MQTT topics and URL paths.
pub fn check_id(field: &str, id: &str) -> Result<(), IdError> {
    let err = |rule| {
        Err(IdError {
            field: field.to_string(),
            rule,
        })
    };
    if id.is_empty() || id.len() > 128 {
        return err("must be 1 to 128 characters long");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return err("may contain only letters, digits and - _ . :");
    }
    if id.starts_with('.') || id.starts_with('$') {
        return err("must not start with '.'");
    }
    Ok(())
}

/// Property names (the dotted path of a component member is built from
/// these): 1–128 characters, no '.', '/', '#', '+', '$' prefix or control
/// characters.
pub fn check_property_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 128 {
        return Err("property names must be 1 to 128 characters long");
    }
    if name.starts_with('$') {
        return Err("property names must not start with '$'");
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '.' | '/' | '#' | '+'))
    {
        return Err("property names must not contain '.', '/', '#', '+' or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("id", "plant1-reactor2").is_ok());
        assert!(check_id("id", "a:b.c_d").is_ok());
        assert_eq!(
            check_id("id", "a/b").unwrap_err().to_string(),
            "id: may contain only letters, digits and - _ . :"
        );
        assert!(check_id("id", "").is_err());
        assert!(check_id("id", &"x".repeat(129)).is_err());
        assert!(check_property_name("temperature").is_ok());
        assert!(check_property_name("a.b").is_err());
        assert!(check_property_name("$x").is_err());
    }
}
