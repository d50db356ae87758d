//! The `[store]` section of the configuration as written (`StoreConfig`,
//! assembled into the whole by `config` with `[retention]`) and what the
//! engine works with (`StoreOptions`).

use super::{health, RetentionPolicy, StoreOptions};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use twinhub_model::time::parse_duration;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub flush_points: usize,
    pub flush_interval: String,
    pub queue: usize,
    /// Free space kept in reserve ("64MB", "2%", or both as "64MB,2%":
    /// the larger); under it new telemetry is refused.
    pub min_free: String,
    /// `postgres://…` keeps everything in PostgreSQL; empty is the
    /// embedded file in the data directory (`TWINHUB_STORE_URL`). May
    /// hold a password: never logged.
    pub url: String,
    /// The PostgreSQL schema the tables live in (created if missing);
    /// empty is the connection's default (`public`).
    pub schema: String,
}

/// A connection URL without its credentials (`user:password@` dropped),
/// for anything a person or a log may see.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => url.rsplit_once('@').map_or(url, |(_, h)| h).to_string(),
    }
}

/// By hand: `url` may hold a password, and a derived `Debug` would print it.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("flush_points", &self.flush_points)
            .field("flush_interval", &self.flush_interval)
            .field("queue", &self.queue)
            .field("min_free", &self.min_free)
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        let d = StoreOptions::default();
        StoreConfig {
            flush_points: d.flush_points,
            flush_interval: "10m".into(),
            queue: d.queue,
            min_free: "64MB".into(),
            url: String::new(),
            schema: String::new(),
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
        if !self.url.is_empty()
            && !self.url.starts_with("postgres://")
            && !self.url.starts_with("postgresql://")
        {
            return Err((
                "url",
                "must be empty (the embedded store) or a postgres:// URL".into(),
            ));
        }
        if !self
            .schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(("schema", "letters, digits and _ only".into()));
        }
        Ok(())
    }

    /// Where the store is, for people: the PostgreSQL address without its
    /// credentials, or "embedded".
    pub fn shown(&self) -> String {
        if self.url.is_empty() {
            return "embedded".into();
        }
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let at = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let schema = if self.schema.is_empty() {
            "public"
        } else {
            &self.schema
        };
        format!("postgres://{at} (schema {schema})")
    }

    pub fn options(&self, retention: &RetentionPolicy, data_dir: &Path) -> StoreOptions {
        StoreOptions {
            flush_points: self.flush_points,
            flush_interval: Duration::from_micros(
                parse_duration(&self.flush_interval).unwrap_or(600_000_000) as u64,
            ),
            queue: self.queue.max(16),
            retention: retention.clone(),
            url: (!self.url.is_empty()).then(|| self.url.clone()),
            schema: (!self.schema.is_empty()).then(|| self.schema.clone()),
            min_free: health::parse_min_free(&self.min_free, health::total_space(data_dir))
                .unwrap_or(0),
            ..StoreOptions::default()
        }
    }
}
