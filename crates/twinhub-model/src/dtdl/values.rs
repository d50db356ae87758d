//! Values against DTDL schemas.

use super::{ModelSet, Primitive, Schema};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct ValueError {
    pub path: String,
    pub rule: String,
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

fn err(path: &str, rule: impl Into<String>) -> ValueError {
    ValueError {
        path: path.to_string(),
        rule: rule.into(),
    }
}

pub fn check_value(
    set: &ModelSet,
    schema: &Schema,
    v: &Value,
    path: &str,
) -> Result<(), ValueError> {
    match set.schema(schema) {
        Schema::Primitive(p) => check_primitive(*p, v, path),
        Schema::Enum { values, .. } => {
            if values.iter().any(|(_, ev)| ev == v) {
                Ok(())
            } else {
                let allowed: Vec<String> = values.iter().map(|(_, ev)| ev.to_string()).collect();
                Err(err(path, format!("must be one of {}", allowed.join(", "))))
            }
        }
        Schema::Object { fields } => {
            let o = v
                .as_object()
                .ok_or_else(|| err(path, "must be an object"))?;
            for (k, fv) in o {
                let (_, fs) = fields
                    .iter()
                    .find(|(n, _)| n == k)
                    .ok_or_else(|| err(&format!("{path}.{k}"), "is not a field of this object"))?;
                if !fv.is_null() {
                    check_value(set, fs, fv, &format!("{path}.{k}"))?;
                }
            }
            Ok(())
        }
        Schema::Map { value, .. } => {
            let o = v
                .as_object()
                .ok_or_else(|| err(path, "must be an object (a map)"))?;
            for (k, mv) in o {
                check_value(set, value, mv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Schema::Array { element } => {
            let a = v.as_array().ok_or_else(|| err(path, "must be an array"))?;
            for (i, ev) in a.iter().enumerate() {
                check_value(set, element, ev, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Schema::Ref(r) => Err(err(path, format!("unresolved schema {r}"))),
    }
}

fn check_primitive(p: Primitive, v: &Value, path: &str) -> Result<(), ValueError> {
    let ok = match p {
        Primitive::Boolean => v.is_boolean(),
        Primitive::Integer => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        Primitive::Long => v.as_i64().is_some(),
        Primitive::Float | Primitive::Double => v.as_f64().is_some_and(f64::is_finite),
        Primitive::String => v.is_string(),
        Primitive::Date => v
            .as_str()
            .is_some_and(|s| s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10),
        Primitive::DateTime => v
            .as_str()
            .is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok()),
        Primitive::Time => v
            .as_str()
            .is_some_and(|s| s.parse::<jiff::civil::Time>().is_ok()),
        Primitive::Duration => v
            .as_str()
            .is_some_and(|s| s.starts_with('P') && s.parse::<jiff::Span>().is_ok()),
    };
    if ok {
        Ok(())
    } else {
        let what = match p {
            Primitive::Boolean => "a boolean",
            Primitive::Integer => "a 32-bit integer",
            Primitive::Long => "a 64-bit integer",
            Primitive::Float | Primitive::Double => "a number",
            Primitive::String => "a string",
            Primitive::Date => "a date (YYYY-MM-DD)",
            Primitive::DateTime => "an RFC 3339 date-time",
            Primitive::Time => "a time (hh:mm:ss)",
            Primitive::Duration => "an ISO 8601 duration (e.g. PT5M)",
        };
        Err(err(path, format!("must be {what}")))
    }
}
