//! The soft-sensor loop: follows the event stream; when a bound twin's
//! inputs change it predicts and writes the outputs through the pipeline
//! (stored, evented and routed like measurements); when the model's output
//! is measured (ground truth, often a lab value arriving late), it scores
//! the prediction that was made from the inputs of the measurement's time.
//!
//! May call: bindings (selection), ml (predict, stats), store (latest
//! values), pipeline (derived ingest), twins (query bindings), events.

use super::bindings::{Binding, Bindings};
use super::MlModels;
use crate::events::{Event, EventBus, Kind, RecvError};
use crate::pipeline::Pipeline;
use crate::store::Store;
use crate::twins::TwinGraphs;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Everything the loop works with.
struct Ctx {
    bindings: Arc<Bindings>,
    ml: Arc<MlModels>,
    pipeline: Arc<Pipeline>,
    store: Store,
}

/// Follows the event stream until shutdown.
pub async fn run(
    bindings: Arc<Bindings>,
    ml: Arc<MlModels>,
    pipeline: Arc<Pipeline>,
    store: Store,
    twins: Arc<TwinGraphs>,
    events: Arc<EventBus>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut rx = events.subscribe_as("ml");
    bindings.refresh_queries(&twins, None);
    let mut refresh = tokio::time::interval(std::time::Duration::from_secs(5));
    let cx = Ctx {
        bindings,
        ml,
        pipeline,
        store,
    };
    loop {
        let e = tokio::select! {
            r = rx.recv() => r,
            // Graph changes refresh query bindings at once (below); the
            // tick catches conditions on telemetry values.
            _ = refresh.tick() => {
                cx.bindings.refresh_queries(&twins, None);
                continue;
            }
            _ = shutdown.changed() => return,
        };
        let e = match e {
            Ok(e) => e,
            Err(RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if matches!(e.kind, Kind::Twin | Kind::Relationship) {
            cx.bindings
                .stale
                .lock()
                .expect("stale")
                .insert(e.tenant.clone());
            continue;
        }
        if e.kind != Kind::Telemetry {
            continue;
        }
        if cx.bindings.stale.lock().expect("stale").remove(&e.tenant) {
            cx.bindings.refresh_queries(&twins, Some(&e.tenant));
        }
        for b in cx.bindings.matching(&e, &twins) {
            cx.serve(&e, &b).await;
        }
    }
}

impl Ctx {
    /// One telemetry event for one binding, message by message: predict
    /// when an input changed, then score a measured output (after, so a
    /// measurement sent with its inputs pairs with the prediction from
    /// those inputs). The predictions of one event are stored together.
    async fn serve(&self, e: &Event, b: &Binding) {
        let Some(t) = e.data.telemetry() else {
            return;
        };
        let twin = e.twin.clone().unwrap_or_default();
        let Some(entry) = self.ml.get(&e.tenant, &b.model) else {
            return;
        };
        let Some(active) = entry.version(&entry.active) else {
            return;
        };
        let manifest = &active.predictor.manifest;
        let key = (e.tenant.clone(), twin.clone(), b.model.clone());
        let mut out = Vec::new();
        for (ts_us, m) in t.messages() {
            if manifest
                .features
                .iter()
                .any(|f| m.get(b.property_of(&f.name)).is_some())
            {
                out.extend(self.predict(e, b, &twin, ts_us, m, &key));
            }
            if let Some(actual) = m.get(&manifest.output.name).and_then(|v| v.as_f64()) {
                let recent = self.bindings.recent.lock().expect("recent");
                if let Some((ver, predicted)) = recent.get(&key).and_then(|l| l.at(ts_us)) {
                    if let Some(v) = entry.version(ver) {
                        v.stats.record_truth(predicted, actual);
                    }
                }
            }
        }
        if out.is_empty() {
            return;
        }
        let n = out.len() as u64;
        match crate::ingest::derived::store(&self.pipeline, &e.tenant, &twin, "ml", out).await {
            Ok(_) => {
                self.bindings.written.fetch_add(n, Relaxed);
            }
            Err(err) => {
                self.bindings.failed.fetch_add(n, Relaxed);
                tracing::warn!(binding = %b.id, twin = %twin, error = %err, "soft sensor output refused");
            }
        }
    }

    /// The outputs for one message, if the model could run.
    fn predict(
        &self,
        e: &Event,
        b: &Binding,
        twin: &str,
        ts_us: i64,
        m: twinhub_codec::Message<'_>,
        key: &(String, String, String),
    ) -> Option<twinhub_codec::TelemetryMessage> {
        let version = self.ml.pick(&e.tenant, &b.model, None, Some(twin)).ok()?;
        let manifest = &version.predictor.manifest;
        // The inputs of this message, completed by the twin's latest
        // values: the prediction belongs to this message's time even when
        // newer telemetry has arrived meanwhile.
        let mut latest: HashMap<String, f64> = self
            .store
            .latest_of_twin(&e.tenant, twin)
            .into_iter()
            .filter_map(|(n, p)| Some((n, p.value.as_f64()?)))
            .collect();
        for (n, v, _) in m.values() {
            if let Some(x) = v.as_f64() {
                latest.insert(n.to_string(), x);
            }
        }
        let row: Option<Vec<f32>> = manifest
            .features
            .iter()
            .map(|f| latest.get(b.property_of(&f.name)).map(|x| *x as f32))
            .collect();
        let row = row?;
        if manifest.range_policy == twinhub_ml::manifest::RangePolicy::Reject
            && manifest.features.iter().zip(&row).any(|(f, x)| {
                let x = *x as f64;
                f.min.is_some_and(|lo| x < lo) || f.max.is_some_and(|hi| x > hi)
            })
        {
            return None;
        }
        let pred = match self.ml.predict(&e.tenant, &b.model, &version, &[row]) {
            Ok(mut p) => p.remove(0),
            Err(err) => {
                self.bindings.failed.fetch_add(1, Relaxed);
                tracing::debug!(binding = %b.id, error = %err, "soft sensor prediction failed");
                return None;
            }
        };
        let value = match &pred.prediction {
            serde_json::Value::Number(n) => {
                twinhub_model::Value::Number(n.as_f64().unwrap_or(f64::NAN))
            }
            serde_json::Value::String(s) => twinhub_model::Value::String(s.clone()),
            serde_json::Value::Bool(b) => twinhub_model::Value::Bool(*b),
            _ => return None,
        };
        if let Some(y) = value.as_f64() {
            let at = ts_us;
            self.bindings
                .recent
                .lock()
                .expect("recent")
                .entry(key.clone())
                .or_default()
                .record(at, version.version.as_str().into(), y);
        }
        let probability = pred
            .probabilities
            .as_ref()
            .and_then(|p| p.iter().copied().reduce(f64::max));
        let o = &b.outputs;
        let mut out = vec![(o.prediction.clone(), value, Default::default())];
        let labels = version
            .predictor
            .model
            .class_labels
            .as_deref()
            .unwrap_or(&[]);
        for (label, name) in &o.probabilities {
            let p = label
                .parse::<i64>()
                .ok()
                .and_then(|l| labels.iter().position(|x| *x == l))
                .and_then(|i| pred.probabilities.as_ref()?.get(i).copied());
            if let Some(p) = p {
                out.push((
                    name.clone(),
                    twinhub_model::Value::Number(p),
                    Default::default(),
                ));
            }
        }
        for (name, v) in [
            (&o.probability, probability),
            (&o.score, pred.score),
            (&o.lower, pred.interval.map(|i| i.lower)),
            (&o.upper, pred.interval.map(|i| i.upper)),
        ] {
            if let (Some(name), Some(v)) = (name, v) {
                out.push((
                    name.clone(),
                    twinhub_model::Value::Number(v),
                    Default::default(),
                ));
            }
        }
        Some(twinhub_codec::TelemetryMessage {
            ts: Some(ts_us),
            values: out,
        })
    }
}
