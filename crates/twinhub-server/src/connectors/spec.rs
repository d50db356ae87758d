//! Connector definitions as the API takes them, checked: every refusal
//! names the field (`nodes[2].twin`) and the rule.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// The kinds this server runs.
pub const KINDS: [&str; 2] = ["opcua", "lorawan"];

/// Why a definition was refused: the field and the rule.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub field: String,
    pub rule: String,
}

pub fn refuse(field: &str, rule: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        rule: rule.into(),
    }
}

/// A definition: the fields every kind has, and the kind's own settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kind: String,
    /// A disabled connector keeps its definition and does not connect.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// `kind: "opcua"`: an OPC UA client subscribed to a server's nodes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpcUaSpec {
    /// `opc.tcp://host:port/path`.
    pub endpoint: String,
    #[serde(default)]
    pub security: Security,
    /// Absent: anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<UserAuth>,
    #[serde(default)]
    pub trust: Trust,
    /// How often the server sends changes (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishing_interval: Option<String>,
    /// How often the server samples each node (default: the publishing
    /// interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_interval: Option<String>,
    pub nodes: Vec<NodeMap>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// `None` or `Basic256Sha256`.
    #[serde(default = "none")]
    pub policy: String,
    /// `None`, `Sign` or `SignAndEncrypt`.
    #[serde(default = "none")]
    pub mode: String,
}

fn none() -> String {
    "None".into()
}

impl Default for Security {
    fn default() -> Security {
        Security {
            policy: none(),
            mode: none(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserAuth {
    pub user: String,
    /// The name of a secret of the tenant (`PUT /api/v1/secrets/{name}`).
    pub password_secret: String,
}

/// Which server certificates are trusted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// Trust any server certificate (test benches only).
    #[serde(default)]
    pub any: bool,
    /// Trusted server certificates, base64 DER.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
}

/// One node to a twin property.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeMap {
    /// An OPC UA node id: `ns=2;s=Reactor1.Temperature`, `ns=3;i=1001`.
    pub node: String,
    pub twin: String,
    pub property: String,
    /// `read` (default: the node's values become telemetry), `write` (a
    /// change of the twin's property is written to the node) or
    /// `read_write`.
    #[serde(default = "read")]
    pub mode: String,
}

fn read() -> String {
    "read".into()
}

impl NodeMap {
    pub fn reads(&self) -> bool {
        self.mode != "write"
    }

    pub fn writes(&self) -> bool {
        self.mode != "read"
    }
}

/// The most nodes one connector maps.
pub const MAX_NODES: usize = 50_000;

fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration, SpecError> {
    match v {
        None => Ok(default),
        Some(s) => twinhub_model::time::parse_duration(s)
            .map(|us| Duration::from_micros(us as u64))
            .map_err(|rule| refuse(field, rule)),
    }
}

/// An OPC UA definition, checked.
#[derive(Debug, Clone)]
pub struct OpcUa {
    pub spec: OpcUaSpec,
    pub publishing: Duration,
    pub sampling: Duration,
}

impl OpcUa {
    pub fn parse(settings: &Map<String, Value>) -> Result<OpcUa, SpecError> {
        let spec: OpcUaSpec = serde_path_to_error::deserialize(Value::Object(settings.clone()))
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { "body".into() } else { path };
                refuse(&field, e.into_inner().to_string())
            })?;
        if !spec.endpoint.starts_with("opc.tcp://") || spec.endpoint.len() <= "opc.tcp://".len() {
            return Err(refuse(
                "endpoint",
                "must be an opc.tcp:// URL (opc.tcp://host:4840/)",
            ));
        }
        match spec.security.policy.as_str() {
            "None" | "Basic256Sha256" => {}
            _ => return Err(refuse("security.policy", "must be None or Basic256Sha256")),
        }
        match (spec.security.policy.as_str(), spec.security.mode.as_str()) {
            ("None", "None") | ("Basic256Sha256", "Sign" | "SignAndEncrypt") => {}
            ("None", _) => {
                return Err(refuse(
                    "security.mode",
                    "must be None when the policy is None",
                ))
            }
            _ => {
                return Err(refuse(
                    "security.mode",
                    "must be Sign or SignAndEncrypt with Basic256Sha256",
                ))
            }
        }
        if let Some(a) = &spec.auth {
            if a.user.is_empty() {
                return Err(refuse("auth.user", "must not be empty"));
            }
            twinhub_model::ids::check_id("auth.password_secret", &a.password_secret)
                .map_err(|e| refuse(&e.field, e.rule))?;
        }
        use base64::Engine;
        for (i, c) in spec.trust.certificates.iter().enumerate() {
            let der = base64::engine::general_purpose::STANDARD
                .decode(c.trim())
                .map_err(|_| refuse(&format!("trust.certificates[{i}]"), "must be base64 DER"))?;
            if opcua::crypto::X509::from_der(&der).is_err() {
                return Err(refuse(
                    &format!("trust.certificates[{i}]"),
                    "is not an X.509 certificate",
                ));
            }
        }
        let publishing = duration(
            "publishing_interval",
            &spec.publishing_interval,
            Duration::from_secs(1),
        )?;
        let sampling = duration("sampling_interval", &spec.sampling_interval, publishing)?;
        if publishing < Duration::from_millis(50) {
            return Err(refuse("publishing_interval", "must be at least 50ms"));
        }
        if spec.nodes.is_empty() {
            return Err(refuse("nodes", "must map at least one node"));
        }
        if spec.nodes.len() > MAX_NODES {
            return Err(refuse(
                "nodes",
                format!("maps at most {MAX_NODES} nodes per connector"),
            ));
        }
        for (i, n) in spec.nodes.iter().enumerate() {
            let at = |f: &str| format!("nodes[{i}].{f}");
            if n.node.parse::<opcua::types::NodeId>().is_err() {
                return Err(refuse(
                    &at("node"),
                    "must be an OPC UA node id such as ns=2;s=Reactor1.Temperature or ns=3;i=1001",
                ));
            }
            twinhub_model::ids::check_id(&at("twin"), &n.twin)
                .map_err(|e| refuse(&e.field, e.rule))?;
            if n.property.is_empty() || n.property.len() > 64 || n.property.contains('/') {
                return Err(refuse(
                    &at("property"),
                    "must be a property name (1 to 64 characters, no '/')",
                ));
            }
            if !["read", "write", "read_write"].contains(&n.mode.as_str()) {
                return Err(refuse(&at("mode"), "must be read, write or read_write"));
            }
        }
        Ok(OpcUa {
            spec,
            publishing,
            sampling,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<OpcUa, SpecError> {
        OpcUa::parse(v.as_object().unwrap())
    }

    fn base() -> Value {
        json!({"endpoint": "opc.tcp://plc:4840/", "nodes": [
            {"node": "ns=2;s=R1.T", "twin": "r1", "property": "temperature"}]})
    }

    #[test]
    fn a_minimal_definition_takes_the_defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.publishing, Duration::from_secs(1));
        assert_eq!(c.sampling, Duration::from_secs(1));
        assert_eq!(c.spec.security, Security::default());
        assert!(c.spec.nodes[0].reads() && !c.spec.nodes[0].writes());
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({"endpoint": "http://x"}), "endpoint"),
            (json!({"nodes": []}), "nodes"),
            (
                json!({"security": {"policy": "Basic128Rsa15"}}),
                "security.policy",
            ),
            (
                json!({"security": {"policy": "Basic256Sha256"}}),
                "security.mode",
            ),
            (json!({"security": {"mode": "Sign"}}), "security.mode"),
            (
                json!({"publishing_interval": "soon"}),
                "publishing_interval",
            ),
            (
                json!({"trust": {"certificates": ["!!"]}}),
                "trust.certificates[0]",
            ),
            (
                json!({"auth": {"user": "op", "password_secret": "bad name"}}),
                "auth.password_secret",
            ),
            (json!({"extra": 1}), "extra"),
        ];
        for (patch, field) in cases {
            let mut v = base();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = parse(v).unwrap_err();
            assert_eq!(e.field, field, "{e:?}");
        }
        let mut v = base();
        v["nodes"][0]["node"] = json!("R1.T");
        assert_eq!(parse(v).unwrap_err().field, "nodes[0].node");
        let mut v = base();
        v["nodes"][0]["mode"] = json!("sometimes");
        assert_eq!(parse(v).unwrap_err().field, "nodes[0].mode");
        let mut v = base();
        v["nodes"][0]["twin"] = json!("");
        assert_eq!(parse(v).unwrap_err().field, "nodes[0].twin");
        let mut v = base();
        v["nodes"][0]["unit"] = json!("K");
        assert!(parse(v).unwrap_err().field.starts_with("nodes[0]"));
    }
}
