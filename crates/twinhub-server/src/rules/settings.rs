//! The `[rules]` section of the configuration (assembled by `config`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// How long closed alarms (CLEARED_ACK) are kept for history.
    pub alarm_retention: String,
    /// Least time between two actions of one rule for one twin.
    pub action_interval: String,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            alarm_retention: "90d".into(),
            action_interval: "10s".into(),
        }
    }
}

impl RulesConfig {
    /// The first setting that breaks a rule, as (field, rule).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (name, v) in [
            ("alarm_retention", &self.alarm_retention),
            ("action_interval", &self.action_interval),
        ] {
            if twinhub_model::time::parse_duration(v).is_err() {
                return Err((name, "must be a duration such as 10s, 5m or 90d".into()));
            }
        }
        Ok(())
    }

    pub fn alarm_retention_us(&self) -> i64 {
        twinhub_model::time::parse_duration(&self.alarm_retention).unwrap_or(90 * 86_400_000_000)
    }

    pub fn action_interval_us(&self) -> i64 {
        twinhub_model::time::parse_duration(&self.action_interval).unwrap_or(10_000_000)
    }
}
