//! The manifest that travels with a model: features in input order with
//! units and valid ranges, the output, the interval method, conformal
//! calibration and the training distribution (for drift). A `Predictor`
//! joins a manifest to a loaded model and turns JSON rows into answers.

use crate::model::{percentile, Model};
use crate::tensor::Data;
use crate::OnnxError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum IntervalMethod {
    Trees,
    Conformal,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntervalSpec {
    pub method: IntervalMethod,
    #[serde(default = "default_level")]
    pub level: f64,
}

fn default_level() -> f64 {
    0.9
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Conformal {
    pub level: f64,
    /// Half-width: the calibration quantile of |y - ŷ|.
    pub quantile: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_rows: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    /// Bin edges (n + 1, increasing); values outside fall in the end bins.
    pub edges: Vec<f64>,
    /// Share of training rows per bin (n, summing to 1).
    pub shares: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Training {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default)]
    pub distribution: BTreeMap<String, Distribution>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RangePolicy {
    #[default]
    Reject,
    Warn,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Regressor,
    Classifier,
    Outlier,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub features: Vec<Feature>,
    pub output: Output,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IntervalSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conformal: Option<Conformal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    #[serde(default)]
    pub range_policy: RangePolicy,
    /// Detected from the graph's outputs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A manifest or row problem, naming the field and the rule; `status`
/// is the HTTP answer (400 shape, 422 domain rule).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct FieldError {
    pub status: u16,
    pub field: String,
    pub rule: String,
}

fn field(status: u16, field: impl Into<String>, rule: impl Into<String>) -> FieldError {
    FieldError {
        status,
        field: field.into(),
        rule: rule.into(),
    }
}

impl Manifest {
    /// Parses and checks a manifest on its own (the model is checked
    /// against it by `Predictor::new`).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, FieldError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| field(400, "manifest", format!("is not a valid manifest: {e}")))?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), FieldError> {
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok_name(&self.name) {
            return Err(field(
                400,
                "manifest.name",
                "must be 1 to 128 letters, digits, '-', '_' or '.'",
            ));
        }
        if !ok_name(&self.version) {
            return Err(field(
                400,
                "manifest.version",
                "must be 1 to 128 letters, digits, '-', '_' or '.'",
            ));
        }
        if self.features.is_empty() {
            return Err(field(
                400,
                "manifest.features",
                "must list the model's inputs in order",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.features.iter().enumerate() {
            if f.name.is_empty() || !seen.insert(f.name.as_str()) {
                return Err(field(
                    400,
                    format!("manifest.features[{i}].name"),
                    "must be a non-empty name used once",
                ));
            }
            if let (Some(lo), Some(hi)) = (f.min, f.max) {
                // Negated so NaN bounds are refused too.
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                if !(lo < hi) {
                    return Err(field(
                        400,
                        format!("manifest.features[{i}]"),
                        "min must be below max",
                    ));
                }
            }
        }
        if let Some(iv) = &self.interval {
            if !(iv.level > 0.0 && iv.level < 1.0) {
                return Err(field(
                    400,
                    "manifest.interval.level",
                    "must be between 0 and 1",
                ));
            }
            if iv.method == IntervalMethod::Conformal && self.conformal.is_none() {
                return Err(field(
                    400,
                    "manifest.conformal",
                    "is required for conformal intervals (calibration quantile)",
                ));
            }
        }
        if let Some(c) = &self.conformal {
            if !(c.quantile >= 0.0 && c.quantile.is_finite() && c.level > 0.0 && c.level < 1.0) {
                return Err(field(
                    400,
                    "manifest.conformal",
                    "needs a level in (0, 1) and a non-negative quantile",
                ));
            }
        }
        if let Some(t) = &self.training {
            for (name, d) in &t.distribution {
                let f = format!("manifest.training.distribution.{name}");
                if !seen.contains(name.as_str()) {
                    return Err(field(400, f, "is not a feature"));
                }
                if d.shares.is_empty() || d.edges.len() != d.shares.len() + 1 {
                    return Err(field(400, f, "needs n shares and n + 1 edges"));
                }
                #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN edges fail too
                if d.edges.windows(2).any(|w| !(w[0] <= w[1])) {
                    return Err(field(400, f, "edges must increase"));
                }
                let sum: f64 = d.shares.iter().sum();
                if (sum - 1.0).abs() > 1e-3 || d.shares.iter().any(|s| *s < 0.0) {
                    return Err(field(400, f, "shares must be non-negative and sum to 1"));
                }
            }
        }
        Ok(())
    }
}

/// One answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    /// A number (regressors), the label (classifiers) or the outlier label.
    pub prediction: Value,
    pub interval: Option<Interval>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Features outside their range under `range_policy: warn`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
}

/// A model with its manifest, ready to answer.
pub struct Predictor {
    pub model: Model,
    pub manifest: Manifest,
    pub kind: Kind,
}

impl Predictor {
    /// Joins a model and its manifest; refuses mismatches (feature count,
    /// a tree interval on a model without averaging trees).
    pub fn new(model: Model, manifest: Manifest) -> Result<Predictor, FieldError> {
        if let Some(n) = model.n_features {
            if n != manifest.features.len() {
                return Err(field(
                    422,
                    "manifest.features",
                    format!(
                        "lists {} features but the model takes {n}",
                        manifest.features.len()
                    ),
                ));
            }
        }
        let names = model.output_names();
        let kind = match manifest.kind {
            Some(k) => k,
            None if names.len() == 1 => Kind::Regressor,
            None if names.get(1).is_some_and(|n| n.contains("prob")) => Kind::Classifier,
            None if names.len() == 2 => Kind::Outlier,
            None => {
                return Err(field(
                    422,
                    "manifest.kind",
                    "cannot be detected from the model's outputs; state it",
                ))
            }
        };
        if let Some(iv) = &manifest.interval {
            if iv.method == IntervalMethod::Trees
                && (kind != Kind::Regressor || !model.has_tree_interval())
            {
                return Err(field(
                    422,
                    "manifest.interval.method",
                    "trees needs a tree-ensemble regressor (random forest); use conformal",
                ));
            }
        }
        Ok(Predictor {
            model,
            manifest,
            kind,
        })
    }

    /// A JSON row → feature values in model order (plus range warnings).
    pub fn row(
        &self,
        row: &Map<String, Value>,
        at: &str,
    ) -> Result<(Vec<f32>, Vec<String>), FieldError> {
        let mut out = Vec::with_capacity(self.manifest.features.len());
        let mut warnings = Vec::new();
        for k in row.keys() {
            if !self.manifest.features.iter().any(|f| &f.name == k) {
                return Err(field(
                    400,
                    format!("{at}{k}"),
                    "is not a feature of this model",
                ));
            }
        }
        for f in &self.manifest.features {
            let name = format!("{at}{}", f.name);
            let v = match row.get(&f.name) {
                None => return Err(field(400, name, "is missing")),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| field(400, name.clone(), "must be a number"))?,
            };
            let (lo, hi) = (
                f.min.unwrap_or(f64::NEG_INFINITY),
                f.max.unwrap_or(f64::INFINITY),
            );
            if !(v >= lo && v <= hi) {
                let rule = format!(
                    "{v} is outside the valid range [{}, {}]",
                    fmt_bound(f.min),
                    fmt_bound(f.max)
                );
                match self.manifest.range_policy {
                    RangePolicy::Reject => return Err(field(422, name, rule)),
                    RangePolicy::Warn => warnings.push(format!("{}: {rule}", f.name)),
                }
            }
            out.push(v as f32);
        }
        Ok((out, warnings))
    }

    /// Answers for rows of features (model order).
    pub fn predict(&self, rows: &[Vec<f32>]) -> Result<Vec<Prediction>, OnnxError> {
        // Large batches use every core: a batch is one caller's bulk job,
        // and a thread costs tens of microseconds against milliseconds.
        const PER_THREAD: usize = 256;
        // available_parallelism reads cgroup files: ask once.
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads = (rows.len() / PER_THREAD).min(
            *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        );
        if threads < 2 {
            return self.predict_serial(rows);
        }
        let chunk = rows.len().div_ceil(threads);
        let parts: Vec<Result<Vec<Prediction>, OnnxError>> = std::thread::scope(|s| {
            let handles: Vec<_> = rows
                .chunks(chunk)
                .map(|c| s.spawn(move || self.predict_serial(c)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("prediction thread"))
                .collect()
        });
        let mut out = Vec::with_capacity(rows.len());
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }

    fn predict_serial(&self, rows: &[Vec<f32>]) -> Result<Vec<Prediction>, OnnxError> {
        let n = rows.len();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let trees = matches!(
            &self.manifest.interval,
            Some(IntervalSpec {
                method: IntervalMethod::Trees,
                ..
            })
        );
        let mut run = self.model.run(n, flat, trees)?;
        let mut per_tree = run.per_tree.take().unwrap_or_default().into_iter();
        let mut out = Vec::with_capacity(n);
        let first = &run.outputs[0].1;
        for i in 0..n {
            let mut p = Prediction {
                prediction: Value::Null,
                interval: None,
                probabilities: None,
                score: None,
                warnings: Vec::new(),
            };
            match self.kind {
                Kind::Regressor => {
                    let (_, cols) = first.rows_cols();
                    let y = first.as_f32()?[i * cols] as f64;
                    p.prediction = json_num(y);
                    p.interval = match &self.manifest.interval {
                        Some(IntervalSpec {
                            method: IntervalMethod::Trees,
                            level,
                        }) => {
                            let mut t = per_tree.next().unwrap_or_default();
                            let tail = (1.0 - level) / 2.0 * 100.0;
                            Some(Interval {
                                lower: percentile(&mut t, tail),
                                upper: percentile(&mut t, 100.0 - tail),
                                level: *level,
                            })
                        }
                        Some(IntervalSpec {
                            method: IntervalMethod::Conformal,
                            level,
                        }) => {
                            let q = self
                                .manifest
                                .conformal
                                .as_ref()
                                .map(|c| c.quantile)
                                .unwrap_or(0.0);
                            Some(Interval {
                                lower: y - q,
                                upper: y + q,
                                level: *level,
                            })
                        }
                        None => None,
                    };
                }
                Kind::Classifier | Kind::Outlier => {
                    p.prediction = match &first.data {
                        Data::I64(v) => Value::from(v[i]),
                        Data::F32(v) => json_num(v[i] as f64),
                        Data::Bool(v) => Value::from(v[i]),
                    };
                    if let Some((_, second)) = run.outputs.get(1) {
                        let (_, cols) = second.rows_cols();
                        let row: Vec<f64> = second.as_f32()?[i * cols..(i + 1) * cols]
                            .iter()
                            .map(|x| *x as f64)
                            .collect();
                        if self.kind == Kind::Classifier {
                            p.probabilities = Some(row);
                        } else {
                            p.score = row.first().copied();
                        }
                    }
                }
            }
            out.push(p);
        }
        Ok(out)
    }
}

fn fmt_bound(b: Option<f64>) -> String {
    b.map(|x| x.to_string()).unwrap_or_else(|| "-inf".into())
}

fn json_num(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Live input statistics against the training distribution: the
/// population stability index per feature (< 0.1 stable, 0.1–0.25
/// moderate shift, > 0.25 significant).
#[derive(Debug, Clone, Default)]
pub struct Drift {
    counts: BTreeMap<String, Vec<u64>>,
}

impl Drift {
    pub fn observe(&mut self, manifest: &Manifest, row: &[f32]) {
        let Some(t) = &manifest.training else { return };
        for (f, x) in manifest.features.iter().zip(row) {
            let Some(d) = t.distribution.get(&f.name) else {
                continue;
            };
            let n = d.shares.len();
            let c = self
                .counts
                .entry(f.name.clone())
                .or_insert_with(|| vec![0; n]);
            let x = *x as f64;
            // Bin k holds edges[k] < x <= edges[k + 1]; the ends are open.
            let k = d.edges[1..n].partition_point(|e| *e < x).min(n - 1);
            c[k] += 1;
        }
    }

    /// (feature, PSI, rows seen) for every feature with a distribution.
    pub fn psi(&self, manifest: &Manifest) -> Vec<(String, f64, u64)> {
        let Some(t) = &manifest.training else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, d) in &t.distribution {
            let Some(c) = self.counts.get(name) else {
                continue;
            };
            let total: u64 = c.iter().sum();
            if total == 0 {
                continue;
            }
            let eps = 1e-4;
            let psi = c
                .iter()
                .zip(&d.shares)
                .map(|(n, e)| {
                    let a = (*n as f64 / total as f64).max(eps);
                    let e = e.max(eps);
                    (a - e) * (a / e).ln()
                })
                .sum();
            out.push((name.clone(), psi, total));
        }
        out
    }
}
