//! The `[ml]` section of the configuration as written (`MlConfig`,
//! assembled into the whole by `config`) and what the model registry works
//! with (`MlSettings`).

use super::MlSettings;
use serde::Deserialize;
use twinhub_model::time::parse_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlConfig {
    /// Largest ONNX model accepted (bytes); larger uploads answer 413.
    pub max_model_bytes: usize,
    /// Rows per batch prediction at most; more answer 413.
    pub max_batch: usize,
    /// Prediction cache entries (0 disables it) and how long one lives.
    pub cache_entries: usize,
    pub cache_ttl: String,
    /// Scenario rows per what-if call at most.
    pub max_scenarios: usize,
    /// Versions one model keeps at most; an upload beyond answers 409.
    pub max_versions: usize,
}

impl Default for MlConfig {
    fn default() -> Self {
        MlConfig {
            max_model_bytes: 64 << 20,
            max_batch: 1000,
            cache_entries: 10_000,
            cache_ttl: "60s".into(),
            max_scenarios: 10_000,
            max_versions: 32,
        }
    }
}

impl MlConfig {
    pub fn settings(&self) -> MlSettings {
        MlSettings {
            max_model_bytes: self.max_model_bytes,
            max_batch: self.max_batch.max(1),
            cache_entries: self.cache_entries,
            cache_ttl_us: parse_duration(&self.cache_ttl).unwrap_or(60_000_000),
            max_scenarios: self.max_scenarios.max(1),
            max_versions: self.max_versions.max(1),
        }
    }
}
