//! The `[store]` section of the configuration as written (`StoreConfig`,
//! assembled into the whole by `config` with `[retention]`) and what the
//! engine works with (`StoreOptions`).

use super::{health, RetentionPolicy, StoreOptions};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use twinhub_model::time::parse_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub flush_points: usize,
    pub flush_interval: String,
    pub queue: usize,
    /// Free space kept in reserve ("64MB", "2%", or both as "64MB,2%":
    /// the larger); under it new telemetry is refused.
    pub min_free: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let d = StoreOptions::default();
        StoreConfig {
            flush_points: d.flush_points,
            flush_interval: "10m".into(),
            queue: d.queue,
            min_free: "64MB".into(),
        }
    }
}

impl StoreConfig {
    /// The first setting that breaks a rule, as (field, rule).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        health::parse_min_free(&self.min_free, None).map_err(|rule| ("min_free", rule))?;
        if self.flush_points < 1000 {
            return Err(("flush_points", "must be at least 1000".into()));
        }
        Ok(())
    }

    pub fn options(&self, retention: &RetentionPolicy, data_dir: &Path) -> StoreOptions {
        StoreOptions {
            flush_points: self.flush_points,
            flush_interval: Duration::from_micros(
                parse_duration(&self.flush_interval).unwrap_or(600_000_000) as u64,
            ),
            queue: self.queue.max(16),
            retention: retention.clone(),
            min_free: health::parse_min_free(&self.min_free, health::total_space(data_dir))
                .unwrap_or(0),
            ..StoreOptions::default()
        }
    }
}
