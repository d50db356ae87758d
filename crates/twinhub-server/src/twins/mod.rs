//! The twin graph: DTDL models, twins and relationships per tenant, kept
//! in memory with query indexes and persisted through the store's writer.
//! Writes validate and apply inside the writer's transaction (so checks
//! such as `If-Match` and multiplicity are atomic with the write), are
//! undone if the commit fails, and publish change events once committed.
//!
//! May call: `store`, `events`, `clock`, `auth` (scopes), `twinhub-model`
//! (DTDL, JSON Patch, query).

mod graph;
pub mod ops;
mod query;
pub mod select;

pub use graph::{Rel, TenantGraph, Twin};

use crate::clock::SharedClock;
use crate::store::twins as rows;
use crate::store::{Store, StoreError};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use twinhub_model::dtdl::{parse_models, Dtmi, ModelSet};
use twinhub_model::time::format_rfc3339;
use twinhub_model::Point;

/// Largest twin document accepted (bytes of JSON), as Azure Digital Twins.
pub const MAX_TWIN_BYTES: usize = 32 * 1024;
/// Relationships one twin may have.
pub const MAX_RELATIONSHIPS_PER_TWIN: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    /// Several model errors at once (422), each naming interface, element, rule.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Models(Vec<twinhub_model::dtdl::ModelError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a telemetry value fits the twin's model.
#[derive(Debug, Clone, PartialEq)]
pub enum TelemetryCheck {
    Ok,
    /// The model has no such telemetry (or property).
    Unknown(String),
    /// The model has it, with another type.
    Invalid(String),
}

/// How a value fits the telemetry `schema` the twin's `model` gives `name`
/// (none: the model lacks it).
fn telemetry_fit(
    models: &ModelSet,
    model: &Dtmi,
    schema: Option<&twinhub_model::dtdl::Schema>,
    name: &str,
    v: &Value,
) -> TelemetryCheck {
    let Some(schema) = schema else {
        return TelemetryCheck::Unknown(format!("is not telemetry of {model}"));
    };
    match twinhub_model::dtdl::check_value(models, schema, v, name) {
        Ok(()) => TelemetryCheck::Ok,
        Err(e) => TelemetryCheck::Invalid(e.rule),
    }
}

pub struct TwinGraphs {
    tenants: RwLock<HashMap<String, TenantGraph>>,
    store: Store,
    clock: SharedClock,
}

fn etag() -> String {
    format!("W/\"{}\"", crate::auth::random_secret(9))
}

impl TwinGraphs {
    pub fn load(store: Store, clock: SharedClock) -> Result<Arc<TwinGraphs>, StoreError> {
        let (models, twins, rels) = store.read(|c| {
            Ok((
                rows::load_models(c)?,
                rows::load_twins(c)?,
                rows::load_relationships(c)?,
            ))
        })?;
        let mut tenants: HashMap<String, TenantGraph> = HashMap::new();
        let mut by_tenant: HashMap<String, Vec<rows::ModelRow>> = HashMap::new();
        for m in models {
            by_tenant.entry(m.tenant.clone()).or_default().push(m);
        }
        for (tenant, ms) in by_tenant {
            let g = tenants.entry(tenant.clone()).or_default();
            let mut ifaces = Vec::new();
            for m in &ms {
                match parse_models(m.body.as_bytes()) {
                    Ok(mut i) => ifaces.append(&mut i),
                    Err(e) => {
                        tracing::error!(tenant = %tenant, model = %m.id, errors = ?e, "a stored model no longer parses")
                    }
                }
                if let Ok(id) = Dtmi::parse(&m.id) {
                    g.model_info.insert(
                        id,
                        graph::ModelInfo {
                            uploaded_at: m.uploaded_at,
                            decommissioned: m.decommissioned,
                        },
                    );
                }
            }
            // Inline interfaces are stored with their parents; keep one copy.
            let mut seen = std::collections::HashSet::new();
            ifaces.retain(|i| seen.insert(i.id.clone()));
            g.models = ModelSet::default().with(ifaces).unwrap_or_else(|e| {
                tracing::error!(tenant = %tenant, errors = ?e, "stored models are inconsistent");
                ModelSet::default()
            });
        }
        for t in twins {
            let body: Value = serde_json::from_str(&t.body).unwrap_or_default();
            let Ok(model) = Dtmi::parse(&t.model) else {
                continue;
            };
            let twin = Twin {
                id: t.id.as_str().into(),
                model,
                etag: t.etag,
                props: body
                    .get("props")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                meta: body
                    .get("meta")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            };
            tenants.entry(t.tenant).or_default().put_twin(twin);
        }
        for r in rels {
            let props = serde_json::from_str::<Value>(&r.body)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default();
            tenants.entry(r.tenant).or_default().put_rel(Rel {
                id: r.id,
                source: r.source.as_str().into(),
                name: r.name,
                target: r.target.as_str().into(),
                etag: r.etag,
                props,
            });
        }
        Ok(Arc::new(TwinGraphs {
            tenants: RwLock::new(tenants),
            store,
            clock,
        }))
    }

    /// Runs `f` on a tenant's graph (an empty one if the tenant has none).
    pub fn read<R>(&self, tenant: &str, f: impl FnOnce(&TenantGraph) -> R) -> R {
        let all = self.tenants.read().expect("twins");
        match all.get(tenant) {
            Some(g) => f(g),
            None => f(&TenantGraph::default()),
        }
    }

    pub fn twin_exists(&self, tenant: &str, id: &str) -> bool {
        self.read(tenant, |g| g.twins.contains_key(id))
    }

    /// Checks one telemetry value against the twin's model. Ok when the
    /// twin has no model (it accepts any scalar).
    pub fn check_telemetry(
        &self,
        tenant: &str,
        twin: &str,
        name: &str,
        v: &Value,
    ) -> TelemetryCheck {
        self.read(tenant, |g| match g.twins.get(twin) {
            None => TelemetryCheck::Ok,
            Some(t) => {
                let schema = g.models.telemetry_schema(&t.model, name);
                telemetry_fit(&g.models, &t.model, schema, name, v)
            }
        })
    }

    /// Checks a whole batch against the twin's model, each name's schema
    /// looked up once: the first reading that breaks it, as (name, rule).
    /// `record_unknown` lets names the model lacks through.
    pub fn check_batch(
        &self,
        tenant: &str,
        twin: &str,
        batch: &twinhub_codec::Telemetry,
        record_unknown: bool,
    ) -> Result<(), (String, String)> {
        self.read(tenant, |g| {
            let Some(t) = g.twins.get(twin) else {
                return Ok(());
            };
            let schemas: Vec<_> = batch
                .names()
                .iter()
                .map(|n| g.models.telemetry_schema(&t.model, n))
                .collect();
            for r in batch.readings() {
                let name = &*batch.names()[r.name as usize];
                let schema = schemas[r.name as usize];
                if schema.is_none() && record_unknown {
                    continue;
                }
                match telemetry_fit(&g.models, &t.model, schema, name, &r.value.to_json()) {
                    TelemetryCheck::Ok => {}
                    TelemetryCheck::Unknown(rule) | TelemetryCheck::Invalid(rule) => {
                        return Err((name.to_string(), rule))
                    }
                }
            }
            Ok(())
        })
    }

    /// The twin as Azure Digital Twins shows it: `$dtId`, `$etag`,
    /// `$metadata` (`$model`, per-property `lastUpdateTime`), properties,
    /// components with their own `$metadata`, and live telemetry.
    pub fn render(twin: Option<&Twin>, id: &str, live: &[(String, Point)]) -> Value {
        let mut root = Map::new();
        root.insert("$dtId".into(), json!(id));
        root.insert(
            "$etag".into(),
            json!(twin.map(|t| t.etag.as_str()).unwrap_or("W/\"1\"")),
        );
        let mut meta = Map::new();
        if let Some(t) = twin {
            meta.insert("$model".into(), json!(t.model.as_str()));
            for (k, v) in &t.props {
                match (v, t.meta.get(k)) {
                    (Value::Object(comp), Some(Value::Object(cm)))
                        if cm.values().all(Value::is_object)
                            && !cm.contains_key("lastUpdateTime") =>
                    {
                        let mut c = comp.clone();
                        c.insert("$metadata".into(), Value::Object(cm.clone()));
                        root.insert(k.clone(), Value::Object(c));
                    }
                    (v, m) => {
                        root.insert(k.clone(), v.clone());
                        if let Some(m) = m {
                            meta.insert(k.clone(), m.clone());
                        }
                    }
                }
            }
        }
        root.insert("$metadata".into(), Value::Object(meta));
        for (name, pt) in live {
            let parts: Vec<&str> = name.split('.').collect();
            let mut obj = &mut root;
            for comp in &parts[..parts.len() - 1] {
                let entry = obj
                    .entry(comp.to_string())
                    .or_insert_with(|| json!({"$metadata": {}}));
                if !entry.is_object() {
                    *entry = json!({"$metadata": {}});
                }
                obj = entry.as_object_mut().expect("object");
            }
            let leaf = parts[parts.len() - 1];
            obj.insert(leaf.to_string(), pt.value.to_json());
            let mut m = Map::new();
            m.insert("lastUpdateTime".into(), json!(format_rfc3339(pt.ts)));
            if pt.quality != twinhub_model::Quality::Good {
                m.insert("quality".into(), json!(pt.quality.as_str()));
            }
            obj.entry("$metadata")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("metadata")
                .insert(leaf.to_string(), Value::Object(m));
        }
        Value::Object(root)
    }

    fn now(&self) -> String {
        format_rfc3339(self.clock.now_us())
    }
}
