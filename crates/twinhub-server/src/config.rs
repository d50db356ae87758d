//! Configuration: defaults, then `twinhub.toml` (or `--config`), then
//! `TWINHUB_*` environment variables, then command-line flags. Unknown
//! keys are errors that name the key, so a typo never silently falls back
//! to a default.
//!
//! Each section's type is owned by the module it configures (`mqtt`,
//! `store`, `registry` for `[auth]`, `ml`), which also turns it into the
//! settings it works with; this module only assembles them, reads the file
//! and the environment, and checks what spans sections.
//!
//! May call: `mqtt`, `store`, `registry`, `ml`, `rules`, `cluster` (their
//! settings sections), `forwarded` (the cluster's relay key).

use crate::store::{RetentionPolicy, StoreOptions};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use twinhub_model::time::parse_duration;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The embedded store and everything else the server keeps.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub ingest: IngestConfig,
    pub devices: DevicesConfig,
    pub store: StoreConfig,
    pub retention: RetentionPolicy,
    pub metrics: MetricsConfig,
    pub tls: TlsConfig,
    pub audit: AuditConfig,
    pub rate_limits: RateLimitConfig,
    pub secrets: SecretsConfig,
    pub ml: MlConfig,
    pub rules: RulesConfig,
    /// Several nodes on one PostgreSQL store (`cluster.nats`).
    pub cluster: crate::cluster::ClusterConfig,
    /// The bootstrap admin's password (only read on first start); from
    /// `TWINHUB_ADMIN_PASSWORD`, never from a file.
    #[serde(skip)]
    pub admin_password: Option<String>,
}

/// Whether a secret is configured, never the secret itself.
fn set_or_not(v: &Option<String>) -> &'static str {
    if v.is_some() {
        "(set)"
    } else {
        "(unset)"
    }
}

impl std::fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsConfig")
            .field("key", &set_or_not(&self.key))
            .finish()
    }
}

impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("bearer_token", &set_or_not(&self.bearer_token))
            .finish()
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("key", &set_or_not(&self.key))
            .finish()
    }
}

/// By hand: the admin password and the keys are shown as set or unset.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("http", &self.http)
            .field("mqtt", &self.mqtt)
            .field("log", &self.log)
            .field("auth", &self.auth)
            .field("ingest", &self.ingest)
            .field("devices", &self.devices)
            .field("store", &self.store)
            .field("retention", &self.retention)
            .field("metrics", &self.metrics)
            .field("tls", &self.tls)
            .field("audit", &self.audit)
            .field("rate_limits", &self.rate_limits)
            .field("secrets", &self.secrets)
            .field("ml", &self.ml)
            .field("rules", &self.rules)
            .field("cluster", &self.cluster)
            .field("admin_password", &set_or_not(&self.admin_password))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./twinhub-data"),
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            ingest: IngestConfig::default(),
            devices: DevicesConfig::default(),
            store: StoreConfig::default(),
            retention: RetentionPolicy::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
            audit: AuditConfig::default(),
            rate_limits: RateLimitConfig::default(),
            secrets: SecretsConfig::default(),
            ml: MlConfig::default(),
            rules: RulesConfig::default(),
            cluster: Default::default(),
            admin_password: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// HTTPS listen address (needs `tls.cert` and `tls.key`); empty
    /// disables it. Serves the same API as `listen`.
    pub tls_listen: String,
    /// Largest request body for JSON API routes.
    pub max_body: usize,
    /// Largest telemetry body a device may post.
    pub max_ingest_body: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            tls_listen: String::new(),
            max_body: 1 << 20,
            max_ingest_body: 4 << 20,
        }
    }
}

pub use crate::ml::MlConfig;
pub use crate::mqtt::MqttConfig;
pub use crate::registry::AuthConfig;
pub use crate::rules::RulesConfig;
pub use crate::store::StoreConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `twinhub_server=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub max_messages: usize,
    pub max_properties: usize,
    /// How long an HTTP ingest waits for room in the store's queue before
    /// answering 503 with Retry-After.
    pub queue_wait: String,
    /// UDP address for raw frames from small devices; empty (the default)
    /// keeps it closed. Port 0 picks a free port (in ports.json as `udp`).
    pub udp_listen: String,
    /// TCP address for raw frames (length-prefixed); empty (the default)
    /// keeps it closed (in ports.json as `tcp`).
    pub tcp_listen: String,
    /// Closed networks: source IP address → device id. Frames from these
    /// addresses are the device's bare payload (no header, id or key).
    pub frame_sources: std::collections::BTreeMap<String, String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_messages: 10_000,
            max_properties: 1_000,
            queue_wait: "2s".into(),
            udp_listen: String::new(),
            tcp_listen: String::new(),
            frame_sources: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// A device that sends nothing for this long is marked inactive.
    pub inactivity_timeout: String,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            inactivity_timeout: "10m".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// API requests per second per user or API key (0: unlimited).
    pub requests_per_second: f64,
    /// Requests a principal may make in a burst.
    pub burst: f64,
    /// Per-role rates; a principal gets the highest of its roles'.
    pub roles: std::collections::HashMap<String, f64>,
    /// HTTP telemetry requests per second per device (0: unlimited).
    pub device_requests_per_second: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_second: 500.0,
            burst: 1000.0,
            roles: Default::default(),
            device_requests_per_second: 0.0,
        }
    }
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Key of the secret box (env TWINHUB_SECRETS_KEY). When unset, a
    /// random key is kept in `<data_dir>/secrets.key` (0600), outside the
    /// database.
    pub key: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// HMAC key of the audit chains (env TWINHUB_AUDIT_KEY). When unset, a
    /// random key is kept in `<data_dir>/audit.key` (0600), outside the
    /// database.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain for the TLS listeners.
    pub cert: Option<PathBuf>,
    /// PEM private key for the TLS listeners.
    pub key: Option<PathBuf>,
    /// PEM CA whose client certificates log devices in over MQTTS
    /// (CN = device id); `twinhub cert --client <id>` issues them.
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, `/metrics` requires `Authorization: Bearer <this>`.
    pub bearer_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

fn invalid(origin: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        message: message.into(),
    }
}

/// Environment variables that are not configuration keys.
const NOT_KEYS: &[&str] = &[
    "TWINHUB_ADMIN_PASSWORD",
    "TWINHUB_CONFIG",
    "TWINHUB_TOKEN",
    "TWINHUB_URL",
    "TWINHUB_PASSWORD",
    "TWINHUB_USERNAME",
];

impl Config {
    /// Layers file, environment and flag overrides (`section.key`, value).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut doc = toml::Table::new();
        let explicit = file.is_some();
        let path = file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("twinhub.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                doc = toml::from_str(&text)
                    .map_err(|e| invalid(&path.display().to_string(), e.to_string()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        let mut admin_password = None;
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("TWINHUB_") else {
                continue;
            };
            if k == "TWINHUB_ADMIN_PASSWORD" {
                admin_password = Some(v);
                continue;
            }
            if NOT_KEYS.contains(&k.as_str()) || rest.is_empty() {
                continue;
            }
            let path = env_key_path(&rest.to_ascii_lowercase());
            // Secrets and addresses stay text even when they look numeric.
            let text = path.rsplit('.').next().is_some_and(|k| {
                k == "key"
                    || k == "url"
                    || k == "schema"
                    || k.ends_with("token")
                    || k.ends_with("listen")
            });
            let value = if text {
                toml::Value::String(v)
            } else {
                parse_scalar(&v)
            };
            set_path(&mut doc, &path, value).map_err(|m| invalid(&k, m))?;
        }
        for (path, v) in flags {
            set_path(&mut doc, path, toml::Value::String(v.clone()))
                .map_err(|m| invalid(path, m))?;
        }
        let mut cfg: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| invalid("configuration", e.message().to_string()))?;
        cfg.admin_password = admin_password;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (k, v) in [
            ("auth.access_token_ttl", &self.auth.access_token_ttl),
            ("auth.refresh_token_ttl", &self.auth.refresh_token_ttl),
            ("auth.lockout_duration", &self.auth.lockout_duration),
            ("ml.cache_ttl", &self.ml.cache_ttl),
            ("ingest.queue_wait", &self.ingest.queue_wait),
            (
                "devices.inactivity_timeout",
                &self.devices.inactivity_timeout,
            ),
            ("store.flush_interval", &self.store.flush_interval),
            ("mqtt.session_expiry_max", &self.mqtt.session_expiry_max),
            ("mqtt.connect_timeout", &self.mqtt.connect_timeout),
        ] {
            parse_duration(v).map_err(|rule| invalid(k, rule))?;
        }
        if !["drop_oldest", "disconnect"].contains(&self.mqtt.slow_subscriber.as_str()) {
            return Err(invalid(
                "mqtt.slow_subscriber",
                "must be drop_oldest or disconnect",
            ));
        }
        if !["throttle", "reject", "disconnect"].contains(&self.mqtt.rate_limit_action.as_str()) {
            return Err(invalid(
                "mqtt.rate_limit_action",
                "must be throttle, reject or disconnect",
            ));
        }
        if !self.mqtt.tls_listen.trim().is_empty()
            && (self.tls.cert.is_none() || self.tls.key.is_none())
        {
            return Err(invalid("mqtt.tls_listen", "needs tls.cert and tls.key"));
        }
        if !self.http.tls_listen.trim().is_empty()
            && (self.tls.cert.is_none() || self.tls.key.is_none())
        {
            return Err(invalid("http.tls_listen", "needs tls.cert and tls.key"));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(invalid("log.format", "must be text or json"));
        }
        self.retention
            .validate()
            .map_err(|m| invalid("retention", m))?;
        self.store
            .validate()
            .map_err(|(field, rule)| invalid(&format!("store.{field}"), rule))?;
        self.rules
            .validate()
            .map_err(|(field, rule)| invalid(&format!("rules.{field}"), rule))?;
        self.cluster
            .validate(
                &self.store.url,
                self.secrets.key.is_some(),
                self.audit.key.is_some(),
            )
            .map_err(|(field, rule)| invalid(&format!("cluster.{field}"), rule))?;
        // Replicas relay every MQTT connection (TCP, TLS, WebSocket) to the
        // primary's plain listener: without one, MQTT would work only on
        // whichever node happens to be the primary.
        if self.cluster.enabled()
            && self.mqtt.listen.trim().is_empty()
            && !self.mqtt.tls_listen.trim().is_empty()
        {
            return Err(invalid(
                "mqtt.listen",
                "must be set on a cluster member that serves MQTT (replicas relay MQTT, MQTTS and MQTT over WebSocket to the primary's plain listener; bind it to the cluster's network)",
            ));
        }
        Ok(())
    }

    /// The key of the headers before MQTT connections relayed between
    /// cluster members (`forwarded`): from the shared secrets key, which
    /// every member has (checked in `validate`); none on a single node.
    pub fn forward_key(&self) -> Option<crate::forwarded::Key> {
        if !self.cluster.enabled() {
            return None;
        }
        self.secrets
            .key
            .as_deref()
            .map(crate::forwarded::Key::from_secret)
    }

    /// What a telemetry body may hold (`ingest.max_messages`,
    /// `ingest.max_properties`).
    pub fn decode_limits(&self) -> twinhub_codec::Limits {
        twinhub_codec::Limits {
            max_messages: self.ingest.max_messages,
            max_properties: self.ingest.max_properties,
            ..Default::default()
        }
    }

    pub fn auth_settings(&self) -> crate::registry::AuthSettings {
        self.auth.settings()
    }

    pub fn ml_settings(&self) -> crate::ml::MlSettings {
        self.ml.settings()
    }

    pub fn store_options(&self) -> StoreOptions {
        self.store.options(&self.retention, &self.data_dir)
    }

    pub fn duration(s: &str) -> Duration {
        Duration::from_micros(parse_duration(s).unwrap_or(1_000_000) as u64)
    }
}

/// `HTTP_MAX_INGEST_BODY` → `http.max_ingest_body`; `DATA_DIR` → `data_dir`.
/// `rate_limits_requests_per_second` → `rate_limits.requests_per_second`:
/// the longest section name that prefixes the variable wins, so sections
/// with an underscore in their name work too.
fn env_key_path(lower: &str) -> String {
    const TOP: &[&str] = &["data_dir"];
    const SECTIONS: &[&str] = &[
        "rate_limits",
        "http",
        "mqtt",
        "log",
        "auth",
        "ingest",
        "devices",
        "store",
        "retention",
        "metrics",
        "tls",
        "audit",
        "secrets",
        "ml",
        "rules",
        "cluster",
    ];
    if TOP.contains(&lower) {
        return lower.to_string();
    }
    for section in SECTIONS {
        if let Some(key) = lower
            .strip_prefix(section)
            .and_then(|k| k.strip_prefix('_'))
        {
            return format!("{section}.{key}");
        }
    }
    match lower.split_once('_') {
        Some((section, key)) => format!("{section}.{key}"),
        None => lower.to_string(),
    }
}

fn parse_scalar(v: &str) -> toml::Value {
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() {
            return toml::Value::Float(f);
        }
    }
    toml::Value::String(v.to_string())
}

fn set_path(doc: &mut toml::Table, path: &str, v: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().ok_or("empty key")?;
    let mut t = doc;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a section"))?;
    }
    // Numbers given as flags arrive as text; keep the file's type.
    let v = match (t.get(last), v) {
        (Some(toml::Value::Integer(_)), toml::Value::String(s)) => s
            .parse()
            .map(toml::Value::Integer)
            .unwrap_or(toml::Value::String(s)),
        (Some(toml::Value::Boolean(_)), toml::Value::String(s)) => s
            .parse()
            .map(toml::Value::Boolean)
            .unwrap_or(toml::Value::String(s)),
        (_, v) => v,
    };
    t.insert(last.to_string(), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            "data_dir = \"/from/file\"\n[http]\nlisten = \"127.0.0.1:1\"\nmax_body = 10\n",
        )
        .unwrap();
        let env = vec![
            ("TWINHUB_HTTP_LISTEN".to_string(), "127.0.0.1:2".to_string()),
            (
                "TWINHUB_MQTT_ALLOW_ANONYMOUS".to_string(),
                "true".to_string(),
            ),
            (
                "TWINHUB_ADMIN_PASSWORD".to_string(),
                "s3cret-pass".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(Some(&f), env, &[("http.listen", "127.0.0.1:3".into())]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.http.listen, "127.0.0.1:3");
        assert_eq!(c.http.max_body, 10);
        assert!(c.mqtt.allow_anonymous);
        assert_eq!(c.admin_password.as_deref(), Some("s3cret-pass"));
    }

    #[test]
    fn environment_reaches_every_section() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::load(
            None,
            env("TWINHUB_RATE_LIMITS_REQUESTS_PER_SECOND", "0.5"),
            &[],
        )
        .unwrap();
        assert_eq!(c.rate_limits.requests_per_second, 0.5);
        let c = Config::load(
            None,
            env("TWINHUB_RATE_LIMITS_REQUESTS_PER_SECOND", "0"),
            &[],
        )
        .unwrap();
        assert_eq!(c.rate_limits.requests_per_second, 0.0);
        let c = Config::load(None, env("TWINHUB_ML_MAX_BATCH", "5"), &[]).unwrap();
        assert_eq!(c.ml.max_batch, 5);
        let c = Config::load(None, env("TWINHUB_SECRETS_KEY", "12e4"), &[]).unwrap();
        assert_eq!(c.secrets.key.as_deref(), Some("12e4"));
        let c = Config::load(None, env("TWINHUB_DATA_DIR", "/d"), &[]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e =
            Config::load(None, vec![("TWINHUB_HTTP_LISTN".into(), "x".into())], &[]).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let e = Config::load(
            None,
            vec![("TWINHUB_DEVICES_INACTIVITY_TIMEOUT".into(), "soon".into())],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("devices.inactivity_timeout"), "{e}");
        let missing = Config::load(
            Some(Path::new("/nonexistent/twinhub.toml")),
            Vec::new(),
            &[],
        );
        assert!(missing.is_err());
    }

    #[test]
    fn the_example_config_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../twinhub.example.toml");
        let c = Config::load(Some(Path::new(example)), Vec::new(), &[]).unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:8080");
    }
}
