//! Models beside the data: versions of ONNX models per tenant, the active
//! one and an A/B candidate, predictions with a cache, per-version stats
//! and drift; soft-sensor bindings live in `bindings`.
//!
//! A model entry is immutable and swapped whole (copy on write), so an
//! upload or an activation never blocks predictions in flight.
//!
//! May call: `store` (ml rows), twinhub-ml (inference), `clock`; soft
//! sensors also `ingest` and `pipeline` (derived values), `events` (their input) and
//! `twins` (query bindings).

pub mod bindings;
pub mod bundle;
pub mod cache;
pub mod prediction_log;
mod settings;
pub mod soft_sensor;
pub mod stats;

use crate::clock::SharedClock;
use crate::store::ml::{self as rows, ModelRow, RoutingRow};
use crate::store::{Store, StoreError};
use cache::{CacheKey, PredictionCache};
pub use settings::MlConfig;
use sha2::Digest;
use stats::VersionStats;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use twinhub_ml::{Drift, FieldError, Manifest, Model, Prediction, Predictor};

/// Rows from which a prediction call leaves the async workers.
pub const OFFLOAD_ROWS: usize = 64;

/// Runs inference over `rows` rows: inline when small, on the blocking
/// pool from `OFFLOAD_ROWS` on, so MQTT and HTTP traffic on the async
/// workers never waits behind a big batch.
pub async fn sized<T: Send + 'static>(
    rows: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, MlError> {
    if rows < OFFLOAD_ROWS {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| MlError::Store(StoreError::Unavailable))
}

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A manifest or row problem (400 or 422), naming the field.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The ONNX graph uses something we do not run (422).
    #[error("the model cannot run here: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct MlSettings {
    pub max_model_bytes: usize,
    pub max_batch: usize,
    pub cache_entries: usize,
    pub cache_ttl_us: i64,
    pub max_scenarios: usize,
    /// Versions one model keeps at most (each is compiled in memory).
    pub max_versions: usize,
}

/// One uploaded version, compiled.
pub struct Version {
    pub version: String,
    pub predictor: Predictor,
    pub sha256: String,
    pub created_at: i64,
    pub size: usize,
    pub stats: VersionStats,
    pub drift: Mutex<Drift>,
}

/// A model's versions (in upload order) and its routing.
#[derive(Clone)]
pub struct Entry {
    pub name: String,
    pub versions: Vec<Arc<Version>>,
    pub active: String,
    pub candidate: Option<(String, f64)>,
}

impl Entry {
    pub fn version(&self, v: &str) -> Option<&Arc<Version>> {
        self.versions.iter().find(|x| x.version == v)
    }
}

type Key = (String, String);

pub struct MlModels {
    store: Store,
    clock: SharedClock,
    pub settings: MlSettings,
    entries: RwLock<HashMap<Key, Arc<Entry>>>,
    pub cache: PredictionCache,
}

fn compile(onnx: &[u8], manifest: Manifest) -> Result<Predictor, MlError> {
    let model = Model::load(onnx).map_err(|e| match e {
        twinhub_ml::OnnxError::Unsupported(what) => MlError::Unsupported(what),
        twinhub_ml::OnnxError::Invalid(why) => MlError::Field(FieldError {
            status: 422,
            field: "model".into(),
            rule: why,
        }),
    })?;
    Ok(Predictor::new(model, manifest)?)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Stable share in [0, 1) for an A/B key.
fn share_of(key: &str) -> f64 {
    let d = sha2::Sha256::digest(key.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) as f64 / (u64::MAX as f64 + 1.0)
}

impl MlModels {
    pub fn load(
        store: Store,
        clock: SharedClock,
        settings: MlSettings,
    ) -> Result<Arc<MlModels>, StoreError> {
        let (models, routing) =
            store.read(|c| Ok((rows::load_models(c)?, rows::load_routing(c)?)))?;
        let mut entries: HashMap<Key, Entry> = HashMap::new();
        for m in models {
            let manifest = match Manifest::parse(m.manifest.as_bytes()) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(model = %m.name, version = %m.version, error = %e, "stored manifest no longer parses");
                    continue;
                }
            };
            let predictor = match compile(&m.onnx, manifest) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(model = %m.name, version = %m.version, error = %e, "stored model no longer loads");
                    continue;
                }
            };
            let e = entries
                .entry((m.tenant.clone(), m.name.clone()))
                .or_insert_with(|| Entry {
                    name: m.name.clone(),
                    versions: Vec::new(),
                    active: m.version.clone(),
                    candidate: None,
                });
            e.versions.push(Arc::new(Version {
                version: m.version,
                predictor,
                sha256: m.sha256,
                created_at: m.created_at,
                size: m.onnx.len(),
                stats: VersionStats::default(),
                drift: Mutex::new(Drift::default()),
            }));
        }
        for r in routing {
            if let Some(e) = entries.get_mut(&(r.tenant, r.name)) {
                if e.version(&r.active).is_some() {
                    e.active = r.active;
                }
                e.candidate = r
                    .candidate
                    .filter(|c| e.version(c).is_some())
                    .map(|c| (c, r.share));
            }
        }
        let cache = PredictionCache::new(settings.cache_entries, settings.cache_ttl_us);
        Ok(Arc::new(MlModels {
            store,
            clock,
            settings,
            entries: RwLock::new(entries.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            cache,
        }))
    }

    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .expect("ml")
            .get(&(tenant.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, tenant: &str) -> Vec<Arc<Entry>> {
        let mut v: Vec<Arc<Entry>> = self
            .entries
            .read()
            .expect("ml")
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, e)| e.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn replace(&self, tenant: &str, e: Option<Entry>, name: &str) {
        let mut m = self.entries.write().expect("ml");
        let k = (tenant.to_string(), name.to_string());
        match e {
            Some(e) => m.insert(k, Arc::new(e)),
            None => m.remove(&k),
        };
    }

    fn not_found(name: &str) -> MlError {
        MlError::NotFound(format!("model {name} not found"))
    }

    /// Stores and compiles a new version; the first of a name is active.
    /// Returns the version and whether it is active.
    pub async fn upload(
        &self,
        tenant: &str,
        onnx: Vec<u8>,
        manifest: &[u8],
    ) -> Result<(Arc<Version>, bool), MlError> {
        if onnx.len() > self.settings.max_model_bytes {
            return Err(MlError::TooLarge(format!(
                "the model is {} bytes; the limit is {} (ml.max_model_bytes)",
                onnx.len(),
                self.settings.max_model_bytes
            )));
        }
        let parsed = Manifest::parse(manifest)?;
        let (name, version) = (parsed.name.clone(), parsed.version.clone());
        if let Some(e) = self.get(tenant, &name) {
            if e.version(&version).is_some() {
                return Err(MlError::Conflict(format!(
                    "model {name} version {version} already exists"
                )));
            }
            if e.versions.len() >= self.settings.max_versions {
                return Err(MlError::Conflict(format!(
                    "model {name} has {} versions, the most it keeps (ml.max_versions); delete an old one first",
                    e.versions.len()
                )));
            }
        }
        let bytes = onnx.clone();
        let predictor = tokio::task::spawn_blocking(move || compile(&bytes, parsed))
            .await
            .map_err(|_| StoreError::Unavailable)??;
        let sha256 = hex(&sha2::Sha256::digest(&onnx));
        let now = self.clock.now_us();
        let row = ModelRow {
            tenant: tenant.into(),
            name: name.clone(),
            version: version.clone(),
            manifest: serde_json::to_string(&predictor.manifest).unwrap_or_default(),
            onnx,
            sha256: sha256.clone(),
            created_at: now,
        };
        let current = self.get(tenant, &name);
        let first = current.is_none();
        let routing = first.then(|| RoutingRow {
            tenant: tenant.into(),
            name: name.clone(),
            active: version.clone(),
            candidate: None,
            share: 0.0,
        });
        let size = row.onnx.len();
        self.store
            .write(move |ctx| {
                rows::insert_model(ctx.tx, &row)?;
                if let Some(r) = &routing {
                    rows::put_routing(ctx.tx, r)?;
                }
                Ok(())
            })
            .await?;
        let v = Arc::new(Version {
            version: version.clone(),
            predictor,
            sha256,
            created_at: now,
            size,
            stats: VersionStats::default(),
            drift: Mutex::new(Drift::default()),
        });
        let mut e = current.map(|e| (*e).clone()).unwrap_or(Entry {
            name: name.clone(),
            versions: Vec::new(),
            active: version.clone(),
            candidate: None,
        });
        e.versions.push(v.clone());
        self.replace(tenant, Some(e), &name);
        Ok((v, first))
    }

    async fn save_routing(&self, tenant: &str, e: &Entry) -> Result<(), MlError> {
        let r = RoutingRow {
            tenant: tenant.into(),
            name: e.name.clone(),
            active: e.active.clone(),
            candidate: e.candidate.as_ref().map(|c| c.0.clone()),
            share: e.candidate.as_ref().map(|c| c.1).unwrap_or(0.0),
        };
        self.store
            .write(move |ctx| rows::put_routing(ctx.tx, &r))
            .await?;
        Ok(())
    }

    /// Makes `version` the active one (also a one-call rollback).
    pub async fn activate(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<Entry>, MlError> {
        let mut e = (*self
            .get(tenant, name)
            .ok_or_else(|| Self::not_found(name))?)
        .clone();
        if e.version(version).is_none() {
            return Err(MlError::NotFound(format!(
                "model {name} has no version {version}"
            )));
        }
        e.active = version.to_string();
        if e.candidate.as_ref().is_some_and(|c| c.0 == version) {
            e.candidate = None;
        }
        self.save_routing(tenant, &e).await?;
        self.replace(tenant, Some(e), name);
        Ok(self.get(tenant, name).expect("just written"))
    }

    /// Routes `share` of keys to `candidate` (None ends the test).
    pub async fn set_ab(
        &self,
        tenant: &str,
        name: &str,
        candidate: Option<(String, f64)>,
    ) -> Result<Arc<Entry>, MlError> {
        let mut e = (*self
            .get(tenant, name)
            .ok_or_else(|| Self::not_found(name))?)
        .clone();
        if let Some((c, share)) = &candidate {
            if e.version(c).is_none() {
                return Err(MlError::NotFound(format!(
                    "model {name} has no version {c}"
                )));
            }
            if *c == e.active {
                return Err(MlError::Field(FieldError {
                    status: 422,
                    field: "candidate".into(),
                    rule: "is the active version".into(),
                }));
            }
            if !(*share > 0.0 && *share < 1.0) {
                return Err(MlError::Field(FieldError {
                    status: 400,
                    field: "share".into(),
                    rule: "must be between 0 and 1".into(),
                }));
            }
        }
        e.candidate = candidate;
        self.save_routing(tenant, &e).await?;
        self.replace(tenant, Some(e), name);
        Ok(self.get(tenant, name).expect("just written"))
    }

    /// Deletes a version that is neither active nor the candidate; the
    /// last version takes the model with it.
    pub async fn delete_version(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<(), MlError> {
        let e = self
            .get(tenant, name)
            .ok_or_else(|| Self::not_found(name))?;
        if e.version(version).is_none() {
            return Err(MlError::NotFound(format!(
                "model {name} has no version {version}"
            )));
        }
        let last = e.versions.len() == 1;
        if !last && (e.active == version || e.candidate.as_ref().is_some_and(|c| c.0 == version)) {
            return Err(MlError::Conflict(format!(
                "version {version} is in use; activate another first"
            )));
        }
        let (t, n, v) = (tenant.to_string(), name.to_string(), version.to_string());
        self.store
            .write(move |ctx| {
                rows::delete_model_version(ctx.tx, &t, &n, &v)?;
                if last {
                    rows::delete_routing(ctx.tx, &t, &n)?;
                }
                Ok(())
            })
            .await?;
        let mut e = (*e).clone();
        e.versions.retain(|x| x.version != version);
        self.replace(tenant, (!last).then_some(e), name);
        self.cache.forget(tenant, name);
        Ok(())
    }

    /// The version that answers: `version` when given, else by A/B key,
    /// else the active one.
    pub fn pick(
        &self,
        tenant: &str,
        name: &str,
        version: Option<&str>,
        key: Option<&str>,
    ) -> Result<Arc<Version>, MlError> {
        let e = self
            .get(tenant, name)
            .ok_or_else(|| Self::not_found(name))?;
        let chosen = match (version, key, &e.candidate) {
            (Some(v), _, _) => v,
            (None, Some(k), Some((c, share))) if share_of(k) < *share => c.as_str(),
            _ => e.active.as_str(),
        };
        e.version(chosen)
            .cloned()
            .ok_or_else(|| MlError::NotFound(format!("model {name} has no version {chosen}")))
    }

    /// Predicts rows with `v`, through the cache; records stats and drift.
    /// `predict`, with batches big enough to matter run off the async
    /// workers so MQTT and HTTP traffic on them never waits behind one.
    pub async fn predict_rows(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        v: Arc<Version>,
        rows: Vec<Vec<f32>>,
    ) -> Result<Vec<Prediction>, MlError> {
        let (me, t, n) = (self.clone(), tenant.to_string(), name.to_string());
        sized(rows.len(), move || me.predict(&t, &n, &v, &rows)).await?
    }

    pub fn predict(
        &self,
        tenant: &str,
        name: &str,
        v: &Version,
        rows: &[Vec<f32>],
    ) -> Result<Vec<Prediction>, MlError> {
        let t0 = std::time::Instant::now();
        let now = self.clock.now_us();
        let mut out: Vec<Option<Prediction>> = rows
            .iter()
            .map(|r| {
                self.cache
                    .get(&CacheKey::new(tenant, name, &v.version, r), now)
            })
            .collect();
        let missing: Vec<usize> = (0..rows.len()).filter(|i| out[*i].is_none()).collect();
        if !missing.is_empty() {
            let todo: Vec<Vec<f32>> = missing.iter().map(|i| rows[*i].clone()).collect();
            let fresh = v.predictor.predict(&todo).map_err(|e| {
                v.stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                MlError::Field(FieldError {
                    status: 422,
                    field: "rows".into(),
                    rule: e.to_string(),
                })
            })?;
            for (i, p) in missing.into_iter().zip(fresh) {
                self.cache.put(
                    CacheKey::new(tenant, name, &v.version, &rows[i]),
                    p.clone(),
                    now,
                );
                out[i] = Some(p);
            }
        }
        let out: Vec<Prediction> = out.into_iter().map(|p| p.expect("filled")).collect();
        {
            let mut d = v.drift.lock().expect("drift");
            for r in rows {
                d.observe(&v.predictor.manifest, r);
            }
        }
        v.stats.record(
            rows.len(),
            t0.elapsed().as_secs_f64() * 1e6,
            out.iter().filter_map(|p| p.prediction.as_f64()),
        );
        Ok(out)
    }

    /// (tenant, model, feature, psi) of every version with drift data, for
    /// `/metrics` (active versions only).
    /// Every version's statistics: (tenant, model, version, stats).
    pub fn version_stats(&self) -> Vec<(String, String, String, stats::StatsView)> {
        let m = self.entries.read().expect("ml");
        let mut out = Vec::new();
        for ((t, n), e) in m.iter() {
            for v in &e.versions {
                out.push((t.clone(), n.clone(), v.version.clone(), v.stats.view()));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        out
    }

    pub fn drift_gauges(&self) -> Vec<(String, String, String, f64)> {
        let m = self.entries.read().expect("ml");
        let mut out = Vec::new();
        for ((t, n), e) in m.iter() {
            if let Some(v) = e.version(&e.active) {
                for (f, psi, _) in v.drift.lock().expect("drift").psi(&v.predictor.manifest) {
                    out.push((t.clone(), n.clone(), f, psi));
                }
            }
        }
        out
    }
}

/// A short, sortable view of an entry's versions for the API.
pub fn versions_view(e: &Entry) -> BTreeMap<String, serde_json::Value> {
    e.versions
        .iter()
        .map(|v| {
            let drift: serde_json::Map<String, serde_json::Value> = v
                .drift
                .lock()
                .expect("drift")
                .psi(&v.predictor.manifest)
                .into_iter()
                .map(|(f, psi, n)| (f, serde_json::json!({"psi": psi, "rows": n})))
                .collect();
            (
                v.version.clone(),
                serde_json::json!({
                    "version": v.version,
                    "sha256": v.sha256,
                    "size": v.size,
                    "created_at": twinhub_model::time::format_rfc3339(v.created_at),
                    "kind": v.predictor.kind,
                    "stats": v.stats.view(),
                    "drift": drift,
                }),
            )
        })
        .collect()
}
