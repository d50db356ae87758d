//! Soft-sensor bindings: which model serves which twins (by twin id, DTDL
//! model or twin query) and which twin properties receive the outputs;
//! validated against the model and the twins' DTDL, stored, and matched
//! against telemetry events. The loop that predicts and writes lives in
//! `soft_sensor`.
//!
//! May call: ml (model lookup), store (binding rows, latest values for
//! queries), twins (model checks, queries).

use super::{MlError, MlModels};
use crate::events::Event;
use crate::store::ml as rows;
use crate::store::Store;
use crate::twins::TwinGraphs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use twinhub_ml::FieldError;

pub use crate::twins::select::Select;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    pub prediction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<String>,
    /// Classifiers: the probability of the predicted label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<String>,
    /// Classifiers: class label → property receiving its probability
    /// (e.g. `{"2": "p_off_spec"}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probabilities: BTreeMap<String, String>,
    /// Outlier models: the anomaly score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub id: String,
    /// The ML model's name; its routed version answers (A/B key: twin id).
    pub model: String,
    pub select: Select,
    /// Feature → twin property (features not listed read the property of
    /// the same name).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    pub outputs: Outputs,
}

impl Binding {
    pub(super) fn property_of<'a>(&'a self, feature: &'a str) -> &'a str {
        self.inputs
            .get(feature)
            .map(String::as_str)
            .unwrap_or(feature)
    }

    fn output_names(&self) -> Vec<&str> {
        let o = &self.outputs;
        std::iter::once(o.prediction.as_str())
            .chain(o.lower.as_deref())
            .chain(o.upper.as_deref())
            .chain(o.probability.as_deref())
            .chain(o.probabilities.values().map(String::as_str))
            .chain(o.score.as_deref())
            .collect()
    }
}

fn bad(status: u16, field: &str, rule: impl Into<String>) -> MlError {
    MlError::Field(FieldError {
        status,
        field: field.into(),
        rule: rule.into(),
    })
}

type Key = (String, String);

/// The bindings of every tenant, with what the soft-sensor loop keeps
/// between events.
pub struct Bindings {
    store: Store,
    by_id: RwLock<HashMap<Key, Arc<Binding>>>,
    pub(super) recent: Mutex<super::prediction_log::Recent>,
    /// The twins each query binding selects.
    members: RwLock<HashMap<Key, Arc<HashSet<String>>>>,
    /// Tenants whose graph changed since their query bindings last ran.
    pub(super) stale: Mutex<HashSet<String>>,
    pub written: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

impl Bindings {
    pub fn load(store: Store) -> Result<Arc<Bindings>, crate::store::StoreError> {
        let mut m = HashMap::new();
        for (tenant, id, body) in store.read(|c| rows::load_bindings(c))? {
            match serde_json::from_str::<Binding>(&body) {
                Ok(b) => {
                    m.insert((tenant, id), Arc::new(b));
                }
                Err(e) => {
                    tracing::error!(binding = %id, error = %e, "stored binding no longer parses")
                }
            }
        }
        Ok(Arc::new(Bindings {
            store,
            by_id: RwLock::new(m),
            recent: Mutex::new(HashMap::new()),
            members: RwLock::new(HashMap::new()),
            stale: Mutex::new(HashSet::new()),
            written: Default::default(),
            failed: Default::default(),
        }))
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Binding>> {
        self.by_id
            .read()
            .expect("bindings")
            .get(&(tenant.to_string(), id.to_string()))
            .cloned()
    }

    pub fn list(&self, tenant: &str) -> Vec<Arc<Binding>> {
        let mut v: Vec<_> = self
            .by_id
            .read()
            .expect("bindings")
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, b)| b.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Checks and stores a binding: the model exists and knows the
    /// features; for modelled twins the outputs are telemetry of the twin's
    /// DTDL model (else 422).
    pub async fn put(
        &self,
        tenant: &str,
        b: Binding,
        ml: &MlModels,
        twins: &TwinGraphs,
    ) -> Result<(), MlError> {
        twinhub_model::ids::check_id("id", &b.id).map_err(|e| bad(400, &e.field, e.rule))?;
        let entry = ml
            .get(tenant, &b.model)
            .ok_or_else(|| bad(422, "model", format!("no ML model named {}", b.model)))?;
        let predictor = &entry
            .version(&entry.active)
            .expect("active version")
            .predictor;
        let manifest = &predictor.manifest;
        let kind = predictor.kind;
        if b.outputs.probability.is_some() && kind != twinhub_ml::Kind::Classifier {
            return Err(bad(
                422,
                "outputs.probability",
                format!("needs a classifier; {} is not one", b.model),
            ));
        }
        for label in b.outputs.probabilities.keys() {
            let known = predictor
                .model
                .class_labels
                .as_ref()
                .is_some_and(|ls| label.parse::<i64>().is_ok_and(|l| ls.contains(&l)));
            if !known {
                return Err(bad(
                    422,
                    &format!("outputs.probabilities.{label}"),
                    match &predictor.model.class_labels {
                        Some(ls) => format!("is not a class of {}; classes are {ls:?}", b.model),
                        None => format!("needs a classifier; {} is not one", b.model),
                    },
                ));
            }
        }
        if b.outputs.score.is_some() && kind != twinhub_ml::Kind::Outlier {
            return Err(bad(
                422,
                "outputs.score",
                format!("needs an outlier model; {} is not one", b.model),
            ));
        }
        for f in b.inputs.keys() {
            if !manifest.features.iter().any(|x| &x.name == f) {
                return Err(bad(
                    422,
                    &format!("inputs.{f}"),
                    format!("is not a feature of {}", b.model),
                ));
            }
        }
        let members = b
            .select
            .check(tenant, twins, &self.store)
            .map_err(|(field, rule)| bad(400, field, rule))?;
        if b.outputs.prediction.is_empty() {
            return Err(bad(400, "outputs.prediction", "must name a property"));
        }
        let outs: Vec<String> = b.output_names().iter().map(|s| s.to_string()).collect();
        let sample = twinhub_model::Value::Number(0.0).to_json();
        if let Some(dtmi) = &b.select.model {
            let model = twinhub_model::dtdl::Dtmi::parse(dtmi)
                .map_err(|rule| bad(400, "select.model", rule))?;
            let known = twins.read(tenant, |g| {
                g.models.get(&model).is_some().then(|| {
                    outs.iter()
                        .find(|o| g.models.telemetry_schema(&model, o).is_none())
                        .cloned()
                })
            });
            match known {
                None => {
                    return Err(bad(
                        422,
                        "select.model",
                        format!("{dtmi} is not an uploaded model"),
                    ))
                }
                Some(Some(missing)) => {
                    return Err(bad(
                        422,
                        "outputs",
                        format!("{missing} is not telemetry of {dtmi}"),
                    ))
                }
                Some(None) => {}
            }
        }
        if let Some(twin) = &b.select.twin {
            for o in &outs {
                // A classifier's label may be text; only its existence is
                // checked here.
                let label = kind == twinhub_ml::Kind::Classifier && *o == b.outputs.prediction;
                match twins.check_telemetry(tenant, twin, o, &sample) {
                    crate::twins::TelemetryCheck::Unknown(rule) => {
                        return Err(bad(422, "outputs", format!("{o} {rule}")))
                    }
                    crate::twins::TelemetryCheck::Invalid(rule) if !label => {
                        return Err(bad(422, "outputs", format!("{o} {rule}")))
                    }
                    _ => {}
                }
            }
        }
        let body = serde_json::to_string(&b).unwrap_or_default();
        let (t, id, now) = (tenant.to_string(), b.id.clone(), 0);
        self.store
            .write(move |ctx| rows::put_binding(ctx.tx, &t, &id, &body, now))
            .await?;
        let key = (tenant.to_string(), b.id.clone());
        if let Some(m) = members {
            self.members
                .write()
                .expect("members")
                .insert(key.clone(), Arc::new(m));
        }
        self.by_id
            .write()
            .expect("bindings")
            .insert(key, Arc::new(b));
        Ok(())
    }

    /// Re-evaluates the queries of query bindings (of one tenant, or all).
    pub fn refresh_queries(&self, twins: &TwinGraphs, tenant: Option<&str>) {
        let list: Vec<(Key, Arc<Binding>)> = self
            .by_id
            .read()
            .expect("bindings")
            .iter()
            .filter(|((t, _), b)| b.select.query.is_some() && tenant.is_none_or(|x| x == t))
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        for ((tenant, id), b) in list {
            let q = b.select.query.as_deref().unwrap_or_default();
            if let Ok(m) = crate::twins::select::query_members(&tenant, q, twins, &self.store) {
                self.members
                    .write()
                    .expect("members")
                    .insert((tenant, id), Arc::new(m));
            }
        }
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, MlError> {
        let (t, i) = (tenant.to_string(), id.to_string());
        let gone = self
            .store
            .write(move |ctx| rows::delete_binding(ctx.tx, &t, &i))
            .await?;
        self.by_id
            .write()
            .expect("bindings")
            .remove(&(tenant.to_string(), id.to_string()));
        Ok(gone)
    }

    pub(super) fn matching(&self, e: &Event, twins: &TwinGraphs) -> Vec<Arc<Binding>> {
        let Some(twin) = e.twin.as_deref() else {
            return Vec::new();
        };
        let m = self.by_id.read().expect("bindings");
        let members = self.members.read().expect("members");
        m.iter()
            .filter(|((t, _), _)| *t == e.tenant)
            .filter(|(k, b)| {
                b.select
                    .matches(&e.tenant, twin, twins, members.get(*k).map(|m| &**m))
            })
            .map(|(_, b)| b.clone())
            .collect()
    }
}
