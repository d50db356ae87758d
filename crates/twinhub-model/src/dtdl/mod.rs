//! DTDL v3 (and v2) models: parsing JSON-LD interfaces, resolving and
//! validating a set of them, and validating twin and relationship values
//! against their schemas. Pure.

mod dtmi;
mod parse;
mod set;
mod values;

pub use dtmi::{valid_name, Dtmi};
pub use parse::parse_models;
pub use set::{ModelSet, Resolved};
pub use values::{check_value, ValueError};

use std::collections::BTreeMap;

/// A model error names the interface, the element and the rule broken.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelError {
    pub interface: String,
    pub element: String,
    pub rule: String,
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.element.is_empty() {
            write!(f, "{}: {}", self.interface, self.rule)
        } else {
            write!(f, "{} {}: {}", self.interface, self.element, self.rule)
        }
    }
}

/// `displayName`/`description`: a plain string (stored under "en") or a
/// language map.
pub type LangText = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub id: Dtmi,
    pub extends: Vec<Dtmi>,
    pub contents: Vec<Content>,
    /// Named complex schemas declared under `schemas`.
    pub schemas: Vec<(Dtmi, Schema)>,
    pub display_name: Option<LangText>,
    pub description: Option<LangText>,
    /// The interface as uploaded (served back by the API).
    pub source: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub name: String,
    pub kind: ContentKind,
    /// Extra `@type`s (semantic types such as Temperature).
    pub semantic_types: Vec<String>,
    pub unit: Option<String>,
    pub display_name: Option<LangText>,
    pub description: Option<LangText>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContentKind {
    Property {
        schema: Schema,
        writable: bool,
    },
    Telemetry {
        schema: Schema,
    },
    Command {
        request: Option<(String, Schema)>,
        response: Option<(String, Schema)>,
    },
    Relationship {
        target: Option<Dtmi>,
        min: Option<u64>,
        max: Option<u64>,
        properties: Vec<(String, Schema)>,
        writable: bool,
    },
    Component {
        schema: Dtmi,
    },
}

impl ContentKind {
    pub fn label(&self) -> &'static str {
        match self {
            ContentKind::Property { .. } => "Property",
            ContentKind::Telemetry { .. } => "Telemetry",
            ContentKind::Command { .. } => "Command",
            ContentKind::Relationship { .. } => "Relationship",
            ContentKind::Component { .. } => "Component",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Boolean,
    Date,
    DateTime,
    Double,
    Duration,
    Float,
    Integer,
    Long,
    String,
    Time,
}

impl Primitive {
    pub fn parse(s: &str) -> Option<Primitive> {
        Some(match s {
            "boolean" => Primitive::Boolean,
            "date" => Primitive::Date,
            "dateTime" => Primitive::DateTime,
            "double" => Primitive::Double,
            "duration" => Primitive::Duration,
            "float" => Primitive::Float,
            "integer" => Primitive::Integer,
            "long" => Primitive::Long,
            "string" => Primitive::String,
            "time" => Primitive::Time,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    Primitive(Primitive),
    Enum {
        value: Primitive,
        values: Vec<(String, serde_json::Value)>,
    },
    Object {
        fields: Vec<(String, Schema)>,
    },
    Map {
        key_name: String,
        value_name: String,
        value: Box<Schema>,
    },
    Array {
        element: Box<Schema>,
    },
    /// A named schema declared in some interface's `schemas`.
    Ref(Dtmi),
}

#[cfg(test)]
mod spec_tests;
#[cfg(test)]
mod tests;
