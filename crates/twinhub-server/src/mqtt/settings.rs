//! The MQTT server's settings: the `[mqtt]` section of the configuration
//! as written (`MqttConfig`, assembled into the whole by `config`) and
//! what the broker works with (`Settings`).
//!
//! May call: nothing of twinhub (owned here; `config` assembles it).

use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use twinhub_model::time::parse_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Empty disables the MQTT listener.
    pub listen: String,
    /// MQTT over TLS (needs `tls.cert` and `tls.key`); empty disables it.
    pub tls_listen: String,
    pub allow_anonymous: bool,
    pub anonymous_tenant: String,
    /// Largest packet accepted (bytes); larger ones close the connection.
    pub max_packet_size: usize,
    /// Connections at most; more are refused (server busy).
    pub max_connections: usize,
    /// QoS 1/2 messages in flight to one client (capped by its Receive
    /// Maximum).
    pub max_inflight: u16,
    /// Messages queued for one client; beyond it `slow_subscriber` applies.
    pub max_queued: usize,
    /// `drop_oldest` or `disconnect`.
    pub slow_subscriber: String,
    /// Per-device publish rate limit in messages per second (0: none).
    pub rate_limit_messages: f64,
    /// Per-device publish rate limit in bytes per second (0: none).
    pub rate_limit_bytes: f64,
    /// `throttle`, `reject` or `disconnect`.
    pub rate_limit_action: String,
    /// How long a persistent 3.1.1 session (clean session false) outlives
    /// its connection; MQTT 5 clients state their own, capped by this.
    pub session_expiry_max: String,
    /// Time allowed between connecting and sending CONNECT.
    pub connect_timeout: String,
    /// Longest keep-alive (seconds) a client may use; 0: no maximum.
    /// MQTT 5 clients asking for more (or none) are told this one in
    /// CONNACK (Server Keep Alive); 3.1.1 clients, who cannot be told, are
    /// refused (CONNACK 0x02), as Mosquitto does.
    pub max_keepalive: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: "127.0.0.1:1883".into(),
            tls_listen: String::new(),
            allow_anonymous: false,
            anonymous_tenant: "default".into(),
            max_packet_size: 1 << 20,
            max_connections: 200_000,
            max_inflight: 100,
            max_queued: 1000,
            slow_subscriber: "drop_oldest".into(),
            rate_limit_messages: 0.0,
            rate_limit_bytes: 0.0,
            rate_limit_action: "throttle".into(),
            session_expiry_max: "7d".into(),
            connect_timeout: "10s".into(),
            max_keepalive: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_packet_size: usize,
    pub max_connections: usize,
    pub max_inflight: u16,
    pub max_queued: usize,
    pub disconnect_slow: bool,
    pub rate_messages: f64,
    pub rate_bytes: f64,
    pub rate_action: RateAction,
    pub session_expiry_max_s: u32,
    pub connect_timeout: Duration,
    pub allow_anonymous: bool,
    pub anonymous_tenant: Arc<str>,
    pub topic_alias_max: u16,
    /// 0: no maximum.
    pub max_keepalive: u16,
    /// In a cluster: the key of the headers replicas write before the
    /// connections they relay (`forwarded`), whose client address and
    /// certificate identity the broker then takes as the client's own.
    pub forward_key: Option<crate::forwarded::Key>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateAction {
    Throttle,
    Reject,
    Disconnect,
}

impl Settings {
    pub fn from_config(c: &MqttConfig) -> Settings {
        Settings {
            max_packet_size: c.max_packet_size.max(64),
            max_connections: c.max_connections,
            max_inflight: c.max_inflight.max(1),
            max_queued: c.max_queued.max(1),
            disconnect_slow: c.slow_subscriber == "disconnect",
            rate_messages: c.rate_limit_messages,
            rate_bytes: c.rate_limit_bytes,
            rate_action: match c.rate_limit_action.as_str() {
                "reject" => RateAction::Reject,
                "disconnect" => RateAction::Disconnect,
                _ => RateAction::Throttle,
            },
            session_expiry_max_s: (duration(&c.session_expiry_max).as_secs()).min(u32::MAX as u64)
                as u32,
            connect_timeout: duration(&c.connect_timeout),
            allow_anonymous: c.allow_anonymous,
            anonymous_tenant: c.anonymous_tenant.as_str().into(),
            topic_alias_max: 64,
            max_keepalive: c.max_keepalive,
            forward_key: None,
        }
    }
}

/// A duration setting ("10s", "7d"); validated by `config` before use.
fn duration(s: &str) -> Duration {
    Duration::from_micros(parse_duration(s).unwrap_or(1_000_000) as u64)
}
