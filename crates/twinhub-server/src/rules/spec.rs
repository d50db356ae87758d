//! Rules as written: the API's JSON body and its parts.

use crate::twins::select::Select;
use serde::{Deserialize, Serialize};
use twinhub_model::rules::alarm::Severity;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// An expression raises (held for `for`) and clears (the `clear`
    /// expression, else when it stops holding).
    #[default]
    Condition,
    /// No telemetry from a selected twin for `timeout`.
    NoData,
    /// A property's value is anomalous against its own rolling baseline
    /// (z-score, EWMA limits, rate of change, flatline).
    Statistical,
    /// An expression's value written to a twin property through the
    /// pipeline (a virtual sensor): stored, charted, routed, and seen by
    /// other rules.
    Calculated,
    /// A soft sensor's prediction outside a band, or a measured value
    /// outside the prediction's own interval.
    ModelOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelCheck {
    /// The prediction below `min` or above `max`.
    Band,
    /// The measured property outside [lower, upper] of the prediction.
    Interval,
    /// The bound model's input drift: the largest feature PSI above `psi`
    /// (checked every 10 s; the alarm's originator is `ml:<model>`).
    Drift,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelOutputSpec {
    /// The soft-sensor binding whose outputs are checked.
    pub binding: String,
    pub check: ModelCheck,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// interval: the measured property (the ground truth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<String>,
    /// drift: the PSI above which the model's inputs have drifted
    /// (0.2 is the usual "significant shift").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi: Option<f64>,
}

/// When an action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOn {
    Raise,
    Escalate,
    Clear,
}

/// What a rule does besides raising an alarm: one of `set_property`
/// (a twin property write, DTDL-checked), `command` (to the device, as
/// the commands API sends it) or `event` (a `rule` event on the fan-out,
/// for routes), on the listed alarm changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default = "on_raise")]
    pub on: Vec<ActionOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_property: Option<SetProperty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

fn on_raise() -> Vec<ActionOn> {
    vec![ActionOn::Raise]
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetProperty {
    pub name: String,
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandAction {
    pub name: String,
    /// The device (default: the one with the twin's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// What a statistical rule watches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatisticSpec {
    pub property: String,
    pub method: twinhub_model::rules::stats::Method,
    /// zscore/ewma: in standard deviations (default 3); rate: units per
    /// second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Effective samples in the baseline (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// Samples before it may fire (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<u32>,
    /// flatline: how long the value must stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlarmSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: Severity,
    /// A relationship name: the alarm also counts on the twins its
    /// originator reaches through it (reactor → line → plant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagate: Option<String>,
}

/// A rule as written (the API's body).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub kind: RuleKind,
    pub select: Select,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<String>,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<StatisticSpec>,
    /// calculated: the expression and the property receiving its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_output: Option<ModelOutputSpec>,
    /// Every kind but `calculated` raises this alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionSpec>,
    /// Least time between two actions of this rule for one twin (default
    /// `rules.action_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<String>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}
