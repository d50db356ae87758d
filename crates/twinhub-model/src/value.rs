//! Telemetry values, their quality flag and timestamped points.

use serde::{Deserialize, Serialize};

/// One telemetry value: the scalars a device may report.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Bool(bool),
    String(String),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::String(_) => "string",
        }
    }

    /// A JSON scalar as a value (null, arrays and objects are none).
    pub fn from_json(v: &serde_json::Value) -> Option<Value> {
        match v {
            serde_json::Value::Number(n) => n.as_f64().map(Value::Number),
            serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
            serde_json::Value::String(s) => Some(Value::String(s.clone())),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Number(n) => number_json(*n),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::String(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// JSON for a finite f64; whole numbers that fit exactly print without a
/// fraction (a device that sent `1` reads back `1`).
pub fn number_json(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        return serde_json::Value::from(n as i64);
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// OPC UA style quality of a point. `Good` is the default and costs nothing
/// to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    #[default]
    Good,
    Uncertain,
    Bad,
}

impl Quality {
    pub fn as_u8(self) -> u8 {
        match self {
            Quality::Good => 0,
            Quality::Uncertain => 1,
            Quality::Bad => 2,
        }
    }

    pub fn from_u8(v: u8) -> Quality {
        match v {
            1 => Quality::Uncertain,
            2 => Quality::Bad,
            _ => Quality::Good,
        }
    }

    pub fn parse(s: &str) -> Option<Quality> {
        match s {
            "good" => Some(Quality::Good),
            "uncertain" => Some(Quality::Uncertain),
            "bad" => Some(Quality::Bad),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }
}

/// A value at a time (microseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub ts: i64,
    pub value: Value,
    pub quality: Quality,
}

impl Point {
    pub fn number(ts: i64, v: f64) -> Point {
        Point {
            ts,
            value: Value::Number(v),
            quality: Quality::Good,
        }
    }
}
