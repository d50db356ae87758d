//! Soft sensors: a binding maps a model's features to twin properties;
//! whenever a bound twin's inputs change, the prediction (and its
//! interval) is written back to the twin as telemetry — live value and
//! history — so it charts, alarms and routes like a measured value. When
//! the model's own output name arrives later as telemetry (ground truth),
//! the version's error statistics are updated.
//!
//! Runs after the store on the event stream (ingest → … → store → here),
//! writing through the pipeline like any source. It ignores events that
//! carry only its own outputs, so a binding never feeds itself.
//!
//! May call: ml (predict), pipeline (ingest_derived), store (latest values
//! and binding rows), twins (model checks), events (subscribe).

use super::{MlError, MlModels};
use crate::events::{Event, EventBus};
use crate::pipeline::Pipeline;
use crate::store::ml as rows;
use crate::store::Store;
use crate::twins::TwinGraphs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use twinhub_ml::FieldError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Select {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    /// Every twin of this DTDL model (and models extending it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The twins a query returns (`SELECT T FROM DIGITALTWINS T WHERE …`),
    /// re-evaluated every few seconds as the graph changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

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
    fn property_of<'a>(&'a self, feature: &'a str) -> &'a str {
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

/// The last prediction per (tenant, twin, model): (version, value), for
/// ground truth arriving later.
type Recent = HashMap<(String, String, String), (String, f64)>;

pub struct Bindings {
    store: Store,
    by_id: RwLock<HashMap<Key, Arc<Binding>>>,
    recent: Mutex<Recent>,
    /// The twins each query binding selects.
    members: RwLock<HashMap<Key, Arc<HashSet<String>>>>,
    /// Tenants whose graph changed since their query bindings last ran.
    stale: Mutex<HashSet<String>>,
    pub written: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

impl Bindings {
    pub fn load(store: Store) -> Result<Arc<Bindings>, crate::store::StoreError> {
        let mut m = HashMap::new();
        for (tenant, id, body) in store.read(rows::load_bindings)? {
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
        let given = [
            b.select.twin.is_some(),
            b.select.model.is_some(),
            b.select.query.is_some(),
        ];
        if given.iter().filter(|x| **x).count() != 1 {
            return Err(bad(
                400,
                "select",
                "give exactly one of twin, model or query",
            ));
        }
        let members = match &b.select.query {
            Some(q) => Some(
                query_members(tenant, q, twins, &self.store)
                    .map_err(|rule| bad(400, "select.query", rule))?,
            ),
            None => None,
        };
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
            if let Ok(m) = query_members(&tenant, q, twins, &self.store) {
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

    fn matching(&self, e: &Event, twins: &TwinGraphs) -> Vec<Arc<Binding>> {
        let Some(twin) = e.twin.as_deref() else {
            return Vec::new();
        };
        let m = self.by_id.read().expect("bindings");
        let members = self.members.read().expect("members");
        m.iter()
            .filter(|((t, _), _)| *t == e.tenant)
            .filter(|(k, b)| match (&b.select.twin, &b.select.model) {
                _ if b.select.query.is_some() => members.get(*k).is_some_and(|s| s.contains(twin)),
                (Some(t), _) => t == twin,
                (_, Some(dtmi)) => twins.read(&e.tenant, |g| {
                    let (Some(tw), Ok(want)) =
                        (g.twins.get(twin), twinhub_model::dtdl::Dtmi::parse(dtmi))
                    else {
                        return false;
                    };
                    tw.model == want || g.models.is_a(&tw.model, &want)
                }),
                _ => false,
            })
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// The twin ids a query returns.
fn query_members(
    tenant: &str,
    q: &str,
    twins: &TwinGraphs,
    store: &Store,
) -> Result<HashSet<String>, String> {
    let parsed = twinhub_model::query::parse(q).map_err(|e| e.to_string())?;
    let page = twins
        .query(tenant, &parsed, 0, 1_000_000, None, |id| {
            store.latest_of_twin(tenant, id)
        })
        .map_err(|e| e.0)?;
    let mut out = HashSet::new();
    for row in &page.items {
        let id = row.get("$dtId").or_else(|| {
            row.as_object()
                .and_then(|o| o.values().find_map(|v| v.get("$dtId")))
        });
        match id.and_then(|v| v.as_str()) {
            Some(id) => {
                out.insert(id.to_string());
            }
            None => return Err("must return twins (SELECT T FROM DIGITALTWINS T …)".into()),
        }
    }
    Ok(out)
}

/// The soft-sensor loop: follows telemetry events until shutdown.
pub async fn run(
    bindings: Arc<Bindings>,
    ml: Arc<MlModels>,
    pipeline: Arc<Pipeline>,
    store: Store,
    twins: Arc<TwinGraphs>,
    events: Arc<EventBus>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (_, mut rx) = events.subscribe(None);
    bindings.refresh_queries(&twins, None);
    let mut refresh = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let e = tokio::select! {
            r = rx.recv() => r,
            // Graph changes refresh query bindings at once (below); the
            // tick catches conditions on telemetry values.
            _ = refresh.tick() => {
                bindings.refresh_queries(&twins, None);
                continue;
            }
            _ = shutdown.changed() => return,
        };
        let e = match e {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "soft sensors fell behind the event stream");
                continue;
            }
            Err(_) => return,
        };
        if e.kind == "twin" || e.kind == "relationship" {
            bindings
                .stale
                .lock()
                .expect("stale")
                .insert(e.tenant.clone());
            continue;
        }
        if e.kind != "telemetry" {
            continue;
        }
        if bindings.stale.lock().expect("stale").remove(&e.tenant) {
            bindings.refresh_queries(&twins, Some(&e.tenant));
        }
        let Some(values) = e.data.get("values").and_then(|v| v.as_object()) else {
            continue;
        };
        let twin = e.twin.clone().unwrap_or_default();
        for b in bindings.matching(&e, &twins) {
            let Some(entry) = ml.get(&e.tenant, &b.model) else {
                continue;
            };
            let Some(active) = entry.version(&entry.active) else {
                continue;
            };
            let manifest = &active.predictor.manifest;
            // Ground truth for the model's output, measured later.
            if let Some(actual) = values.get(&manifest.output.name).and_then(|v| v.as_f64()) {
                let k = (e.tenant.clone(), twin.clone(), b.model.clone());
                if let Some((ver, predicted)) =
                    bindings.recent.lock().expect("recent").get(&k).cloned()
                {
                    if let Some(v) = entry.version(&ver) {
                        v.stats.record_truth(predicted, actual);
                    }
                }
            }
            let touches_input = manifest
                .features
                .iter()
                .any(|f| values.contains_key(b.property_of(&f.name)));
            if !touches_input {
                continue;
            }
            let latest: HashMap<String, f64> = store
                .latest_of_twin(&e.tenant, &twin)
                .into_iter()
                .filter_map(|(n, p)| Some((n, p.value.as_f64()?)))
                .collect();
            let row: Option<Vec<f32>> = manifest
                .features
                .iter()
                .map(|f| latest.get(b.property_of(&f.name)).map(|x| *x as f32))
                .collect();
            let Some(row) = row else { continue };
            if manifest.range_policy == twinhub_ml::manifest::RangePolicy::Reject
                && manifest.features.iter().zip(&row).any(|(f, x)| {
                    let x = *x as f64;
                    f.min.is_some_and(|lo| x < lo) || f.max.is_some_and(|hi| x > hi)
                })
            {
                continue;
            }
            let Ok(version) = ml.pick(&e.tenant, &b.model, None, Some(&twin)) else {
                continue;
            };
            let pred = match ml.predict(&e.tenant, &b.model, &version, &[row]) {
                Ok(mut p) => p.remove(0),
                Err(err) => {
                    bindings
                        .failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(binding = %b.id, error = %err, "soft sensor prediction failed");
                    continue;
                }
            };
            let value = match &pred.prediction {
                serde_json::Value::Number(n) => {
                    twinhub_model::Value::Number(n.as_f64().unwrap_or(f64::NAN))
                }
                serde_json::Value::String(s) => twinhub_model::Value::String(s.clone()),
                serde_json::Value::Bool(b) => twinhub_model::Value::Bool(*b),
                _ => continue,
            };
            if let Some(y) = value.as_f64() {
                bindings.recent.lock().expect("recent").insert(
                    (e.tenant.clone(), twin.clone(), b.model.clone()),
                    (version.version.clone(), y),
                );
            }
            let ts = e
                .data
                .get("ts")
                .and_then(|t| t.as_i64())
                .map(|ms| ms * 1000);
            let mut out = vec![(b.outputs.prediction.clone(), value, Default::default())];
            let probability = pred
                .probabilities
                .as_ref()
                .and_then(|p| p.iter().copied().reduce(f64::max));
            for (name, v) in [
                (&b.outputs.probability, probability),
                (&b.outputs.score, pred.score),
            ] {
                if let (Some(name), Some(v)) = (name, v) {
                    out.push((
                        name.clone(),
                        twinhub_model::Value::Number(v),
                        Default::default(),
                    ));
                }
            }
            if let (Some(iv), Some(lo)) = (pred.interval, &b.outputs.lower) {
                out.push((
                    lo.clone(),
                    twinhub_model::Value::Number(iv.lower),
                    Default::default(),
                ));
            }
            if let (Some(iv), Some(hi)) = (pred.interval, &b.outputs.upper) {
                out.push((
                    hi.clone(),
                    twinhub_model::Value::Number(iv.upper),
                    Default::default(),
                ));
            }
            let msg = twinhub_codec::TelemetryMessage { ts, values: out };
            match pipeline
                .ingest_derived(&e.tenant, &twin, "ml", vec![msg])
                .await
            {
                Ok(_) => {
                    bindings
                        .written
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(err) => {
                    bindings
                        .failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(binding = %b.id, twin = %twin, error = %err, "soft sensor output refused");
                }
            }
        }
    }
}
