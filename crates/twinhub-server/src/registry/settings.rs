//! The `[auth]` section of the configuration as written (`AuthConfig`,
//! assembled into the whole by `config`) and what the registry works with
//! (`AuthSettings`).

use super::AuthSettings;
use crate::auth::password;
use serde::Deserialize;
use twinhub_model::time::parse_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub access_token_ttl: String,
    pub refresh_token_ttl: String,
    /// argon2id memory cost in KiB, time cost and lanes for human
    /// passwords. The defaults (32 MiB, 5 passes) take about 100 ms per
    /// login on a 2-core box; see `twinhub bench auth`.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_lanes: u32,
    /// Failed logins in a row before the user name is locked.
    pub lockout_threshold: u32,
    pub lockout_duration: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_token_ttl: "15m".into(),
            refresh_token_ttl: "24h".into(),
            argon2_memory_kib: 32 * 1024,
            argon2_iterations: 5,
            argon2_lanes: 1,
            lockout_threshold: 5,
            lockout_duration: "15m".into(),
        }
    }
}

impl AuthConfig {
    pub fn settings(&self) -> AuthSettings {
        AuthSettings {
            cost: password::Cost {
                memory_kib: self.argon2_memory_kib,
                iterations: self.argon2_iterations,
                lanes: self.argon2_lanes,
            },
            access_ttl_s: parse_duration(&self.access_token_ttl).unwrap_or(900_000_000) / 1_000_000,
            refresh_ttl_s: parse_duration(&self.refresh_token_ttl).unwrap_or(86_400_000_000)
                / 1_000_000,
            lockout_threshold: self.lockout_threshold.max(1),
            lockout_s: parse_duration(&self.lockout_duration).unwrap_or(900_000_000) / 1_000_000,
        }
    }
}
