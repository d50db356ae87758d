//! ML over HTTP: upload (multipart: `model` + `manifest`, or a `bundle`),
//! versions, activation, A/B, predictions (one row, a batch, scenarios).

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::api::error::Code;
use crate::auth::{Perm, Principal};
use crate::ml::{Entry, MlError, Version};
use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

impl From<MlError> for ApiError {
    fn from(e: MlError) -> ApiError {
        match e {
            MlError::NotFound(m) => ApiError::not_found(m),
            MlError::Conflict(m) => ApiError::conflict(m),
            MlError::TooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, Code::PayloadTooLarge, m)
            }
            MlError::Field(f) if f.status == 422 => ApiError::invalid(&f.field, &f.rule),
            MlError::Field(f) => ApiError::field(&f.field, &f.rule),
            MlError::Unsupported(what) => {
                ApiError::invalid("model", &format!("uses {what}, which twinhub cannot run"))
            }
            MlError::Store(s) => s.into(),
        }
    }
}

fn entry_view(e: &Entry) -> Value {
    json!({
        "name": e.name,
        "active": e.active,
        "candidate": e.candidate.as_ref().map(|(v, s)| json!({"version": v, "share": s})),
        "versions": e.versions.iter().map(|v| v.version.clone()).collect::<Vec<_>>(),
    })
}

/// Uploads a model version: multipart parts `model` (ONNX bytes) and
/// `manifest` (JSON), or one `bundle` part. The first version of a name
/// becomes active.
/// The multipart form of a model upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ModelUpload {
    /// The ONNX model.
    #[schema(value_type = Option<String>, format = Binary)]
    model: Option<Vec<u8>>,
    /// The manifest (JSON text: name, version, features, output, interval).
    manifest: Option<String>,
    /// Instead of both: a bundle made by `twinhub model package`.
    #[schema(value_type = Option<String>, format = Binary)]
    bundle: Option<Vec<u8>>,
}

#[utoipa::path(post, path = "/api/v1/ml/models", tag = "ml", params(Paging),
    request_body(content_type = "multipart/form-data", content = ModelUpload, description = "parts: model (ONNX), manifest (JSON); or bundle"),
    responses((status = 201, body = Value), (status = 400), (status = 409), (status = 413), (status = 422)))]
pub async fn upload(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Permission first: a refused caller learns nothing about the body.
    p.require(Perm::MlAdmin)?;
    let mut form = form.map_err(|_| {
        ApiError::field(
            "body",
            "must be multipart/form-data with parts model and manifest (or bundle)",
        )
    })?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let limit = state.ml.settings.max_model_bytes;
    let (mut model, mut manifest) = (None, None);
    while let Some(field) = form.next_field().await.map_err(|e| {
        ApiError::field(
            "body",
            &format!("is not a valid multipart form: {}", e.body_text()),
        )
    })? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::field(&name, "could not be read")
            }
        })?;
        match name.as_str() {
            "model" => model = Some(bytes.to_vec()),
            "manifest" => manifest = Some(bytes.to_vec()),
            "bundle" => {
                let b: crate::ml::bundle::Bundle = super::extract::parse_json(&bytes)?;
                let (onnx, m) = crate::ml::bundle::open(b).map_err(|r| match r {
                    crate::ml::bundle::Refused::Malformed(field, rule) => {
                        ApiError::field(field, rule)
                    }
                    crate::ml::bundle::Refused::Damaged => ApiError::invalid(
                        "bundle.sha256",
                        "does not match the model: the bundle is damaged",
                    ),
                })?;
                model = Some(onnx);
                manifest = Some(serde_json::to_vec(&m).unwrap_or_default());
            }
            other => {
                return Err(ApiError::field(
                    other,
                    "is not a part of a model upload (model, manifest, bundle)",
                ))
            }
        }
    }
    let model = model.ok_or_else(|| ApiError::field("model", "is missing (the ONNX file)"))?;
    let manifest =
        manifest.ok_or_else(|| ApiError::field("manifest", "is missing (the JSON manifest)"))?;
    let (v, active) = state.ml.upload(&tenant, model, &manifest).await?;
    let name = v.predictor.manifest.name.clone();
    tracing::info!(model = %name, version = %v.version, tenant = %tenant, by = %p.name(), "model uploaded");
    state
        .audit(
            &p,
            &tenant,
            "ml.upload",
            &format!("{name}/{}", v.version),
            json!({"sha256": v.sha256, "size": v.size}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": name,
            "version": v.version,
            "active": active,
            "kind": v.predictor.kind,
            "sha256": v.sha256,
            "trees": v.predictor.model.n_trees(),
        })),
    ))
}

#[utoipa::path(get, path = "/api/v1/ml/models", tag = "ml", params(Paging), responses((status = 200, body = Value)))]
pub async fn list(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let value: Vec<Value> = state
        .ml
        .list(&tenant)
        .iter()
        .map(|e| entry_view(e))
        .collect();
    Ok(Json(json!({"value": value, "next": null})))
}

fn entry(state: &AppState, tenant: &str, name: &str) -> Result<Arc<Entry>, ApiError> {
    state
        .ml
        .get(tenant, name)
        .ok_or_else(|| ApiError::not_found(format!("model {name} not found")))
}

/// The model: its active manifest, versions with per-version statistics
/// (calls, latency, mean output, error against ground truth) and drift.
#[utoipa::path(get, path = "/api/v1/ml/models/{name}", tag = "ml", params(("name" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn info(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let e = entry(&state, &tenant, &name)?;
    let active = e
        .version(&e.active)
        .map(|v| serde_json::to_value(&v.predictor.manifest).unwrap_or_default());
    let mut v = entry_view(&e);
    v["manifest"] = active.unwrap_or(Value::Null);
    // A classifier's labels, in the order of its `probabilities`.
    if let Some(labels) = e
        .version(&e.active)
        .and_then(|v| v.predictor.model.class_labels.clone())
    {
        v["classes"] = json!(labels);
    }
    v["version_details"] = json!(crate::ml::versions_view(&e));
    v["cache"] = json!({
        "hits": state.ml.cache.hits.load(std::sync::atomic::Ordering::Relaxed),
        "misses": state.ml.cache.misses.load(std::sync::atomic::Ordering::Relaxed),
        "entries": state.ml.cache.len(),
    });
    Ok(Json(v))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictQuery {
    /// Use this version instead of the routed one.
    pub version: Option<String>,
    /// A/B assignment key (the twin id for bound models).
    pub key: Option<String>,
    pub tenant: Option<String>,
}

fn answer(v: &Version, p: &twinhub_ml::Prediction) -> Value {
    let mut o = serde_json::to_value(p).unwrap_or_default();
    o["model_version"] = json!(v.version);
    o
}

/// One row of features as a flat JSON object (seed 000's predict).
#[utoipa::path(post, path = "/api/v1/ml/models/{name}/predict", tag = "ml", params(("name" = String, Path), PredictQuery),
    request_body = Value,
    responses((status = 200, body = Value, description = "{prediction, interval:{lower,upper,level}, model_version, inference_time_ms}"), (status = 400), (status = 404), (status = 422)))]
pub async fn predict(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<PredictQuery>,
    ApiJson(row): ApiJson<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlPredict)?;
    let t0 = std::time::Instant::now();
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let v = state
        .ml
        .pick(&tenant, &name, q.version.as_deref(), q.key.as_deref())?;
    let (x, warnings) = v.predictor.row(&row, "").map_err(MlError::from)?;
    let mut out = state.ml.predict(&tenant, &name, &v, &[x])?;
    let mut pred = out.remove(0);
    pred.warnings = warnings;
    let mut a = answer(&v, &pred);
    a["inference_time_ms"] = json!(t0.elapsed().as_secs_f64() * 1e3);
    Ok(Json(a))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub rows: Vec<Map<String, Value>>,
}

/// Several rows; answers in the same order. A bad row fails the batch,
/// naming `rows[i].feature`; more rows than `ml.max_batch` answer 413.
#[utoipa::path(post, path = "/api/v1/ml/models/{name}/predict/batch", tag = "ml", params(("name" = String, Path), PredictQuery),
    request_body = BatchBody, responses((status = 200, body = Value), (status = 400), (status = 413), (status = 422)))]
pub async fn predict_batch(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<PredictQuery>,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlPredict)?;
    let t0 = std::time::Instant::now();
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let max = state.ml.settings.max_batch;
    if body.rows.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::PayloadTooLarge,
            format!(
                "rows: {} rows; a batch holds at most {max} (ml.max_batch)",
                body.rows.len()
            ),
        ));
    }
    let v = state
        .ml
        .pick(&tenant, &name, q.version.as_deref(), q.key.as_deref())?;
    let mut rows = Vec::with_capacity(body.rows.len());
    let mut warnings = Vec::with_capacity(body.rows.len());
    for (i, r) in body.rows.iter().enumerate() {
        let (x, w) = v
            .predictor
            .row(r, &format!("rows[{i}]."))
            .map_err(MlError::from)?;
        rows.push(x);
        warnings.push(w);
    }
    let preds = state
        .ml
        .predict_rows(&tenant, &name, v.clone(), rows)
        .await?;
    let predictions: Vec<Value> = preds
        .into_iter()
        .zip(warnings)
        .map(|(mut p, w)| {
            p.warnings = w;
            serde_json::to_value(&p).unwrap_or_default()
        })
        .collect();
    Ok(Json(json!({
        "predictions": predictions,
        "model_version": v.version,
        "inference_time_ms": t0.elapsed().as_secs_f64() * 1e3,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioBody {
    /// Values for the features the grid does not vary.
    #[serde(default)]
    pub base: Map<String, Value>,
    /// Feature → list of values, or {"from","to","steps"}.
    #[serde(default)]
    pub grid: Map<String, Value>,
    /// Or explicit scenarios.
    #[serde(default)]
    pub rows: Vec<Map<String, Value>>,
}

fn axis_values(name: &str, v: &Value) -> Result<Vec<f64>, ApiError> {
    let f = format!("grid.{name}");
    match v {
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| ApiError::field(&f, "must hold numbers"))
            })
            .collect(),
        Value::Object(o) => {
            let get = |k: &str| {
                o.get(k)
                    .and_then(|x| x.as_f64())
                    .ok_or_else(|| ApiError::field(&format!("{f}.{k}"), "must be a number"))
            };
            let (from, to, steps) = (get("from")?, get("to")?, get("steps")?);
            if !(2.0..=10_000.0).contains(&steps) {
                return Err(ApiError::field(&format!("{f}.steps"), "must be 2 to 10000"));
            }
            let n = steps as usize;
            Ok((0..n)
                .map(|i| from + (to - from) * i as f64 / (n - 1) as f64)
                .collect())
        }
        _ => Err(ApiError::field(
            &f,
            "must be a non-empty list or {from, to, steps}",
        )),
    }
}

/// What-if: runs the model over a grid (or list) of scenarios and returns
/// the table: the features, then prediction, lower, upper.
#[utoipa::path(post, path = "/api/v1/ml/models/{name}/scenarios", tag = "ml", params(("name" = String, Path), PredictQuery),
    request_body = ScenarioBody, responses((status = 200, body = Value), (status = 400), (status = 413), (status = 422)))]
pub async fn scenarios(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<PredictQuery>,
    ApiJson(body): ApiJson<ScenarioBody>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlPredict)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let v = state
        .ml
        .pick(&tenant, &name, q.version.as_deref(), q.key.as_deref())?;
    let max = state.ml.settings.max_scenarios;
    let mut scen: Vec<Map<String, Value>> = body.rows.clone();
    if !body.grid.is_empty() {
        let axes: Vec<(String, Vec<f64>)> = body
            .grid
            .iter()
            .map(|(k, v)| Ok((k.clone(), axis_values(k, v)?)))
            .collect::<Result<_, ApiError>>()?;
        let total = axes
            .iter()
            .try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len()))
            .unwrap_or(usize::MAX);
        if total.saturating_add(scen.len()) > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                format!("grid: {total} scenarios; at most {max} (ml.max_scenarios)"),
            ));
        }
        for i in 0..total {
            let mut row = body.base.clone();
            let mut rest = i;
            for (k, vals) in axes.iter().rev() {
                row.insert(k.clone(), json!(vals[rest % vals.len()]));
                rest /= vals.len();
            }
            scen.push(row);
        }
    }
    if scen.is_empty() {
        return Err(ApiError::field("grid", "give a grid or rows"));
    }
    if scen.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::PayloadTooLarge,
            format!("rows: at most {max} scenarios"),
        ));
    }
    let mut rows = Vec::with_capacity(scen.len());
    for (i, r) in scen.iter().enumerate() {
        rows.push(
            v.predictor
                .row(r, &format!("scenarios[{i}]."))
                .map_err(MlError::from)?
                .0,
        );
    }
    let (v2, rows) = (v.clone(), Arc::new(rows));
    let rows2 = rows.clone();
    let preds = crate::ml::sized(rows.len(), move || v2.predictor.predict(&rows2))
        .await?
        .map_err(|e| ApiError::invalid("model", &e.to_string()))?;
    let features: Vec<String> = v
        .predictor
        .manifest
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let mut columns: Vec<Value> = features.iter().map(|f| json!(f)).collect();
    columns.extend([json!("prediction"), json!("lower"), json!("upper")]);
    let table: Vec<Value> = rows
        .iter()
        .zip(&preds)
        .map(|(x, p)| {
            let mut r: Vec<Value> = x.iter().map(|v| json!(*v as f64)).collect();
            r.push(p.prediction.clone());
            r.push(p.interval.map(|i| json!(i.lower)).unwrap_or(Value::Null));
            r.push(p.interval.map(|i| json!(i.upper)).unwrap_or(Value::Null));
            Value::Array(r)
        })
        .collect();
    Ok(Json(
        json!({"model_version": v.version, "columns": columns, "rows": table}),
    ))
}

/// Makes a version the active one (also the one-call rollback).
#[utoipa::path(post, path = "/api/v1/ml/models/{name}/versions/{version}/activate", tag = "ml",
    params(("name" = String, Path), ("version" = String, Path), Paging), responses((status = 200, body = Value), (status = 404)))]
pub async fn activate(
    State(state): State<AppState>,
    p: Principal,
    Path((name, version)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let e = state.ml.activate(&tenant, &name, &version).await?;
    tracing::info!(model = %name, version = %version, by = %p.name(), "model version activated");
    state
        .audit(
            &p,
            &tenant,
            "ml.activate",
            &format!("{name}/{version}"),
            json!({}),
        )
        .await;
    Ok(Json(entry_view(&e)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbBody {
    pub candidate: String,
    /// Share of keys (0 < share < 1) routed to the candidate.
    pub share: f64,
}

/// Starts (or changes) an A/B test: `share` of keys go to `candidate`.
#[utoipa::path(put, path = "/api/v1/ml/models/{name}/ab", tag = "ml", params(("name" = String, Path), Paging),
    request_body = AbBody, responses((status = 200, body = Value), (status = 400), (status = 404), (status = 422)))]
pub async fn put_ab(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(b): ApiJson<AbBody>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let e = state
        .ml
        .set_ab(&tenant, &name, Some((b.candidate.clone(), b.share)))
        .await?;
    state
        .audit(
            &p,
            &tenant,
            "ml.ab",
            &name,
            json!({"candidate": b.candidate, "share": b.share}),
        )
        .await;
    Ok(Json(entry_view(&e)))
}

#[utoipa::path(delete, path = "/api/v1/ml/models/{name}/ab", tag = "ml", params(("name" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn delete_ab(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let e = state.ml.set_ab(&tenant, &name, None).await?;
    state
        .audit(&p, &tenant, "ml.ab_end", &name, json!({}))
        .await;
    Ok(Json(entry_view(&e)))
}

/// The model's information, as `GET /api/v1/ml/models/{name}` (seed 000's
/// `/model/info`).
#[utoipa::path(get, path = "/api/v1/ml/models/{name}/info", tag = "ml", params(("name" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn info_alias(
    state: State<AppState>,
    p: Principal,
    name: Path<String>,
    q: ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    info(state, p, name, q).await
}

/// One version as a checksummed bundle (`twinhub-model-bundle/1`) to carry
/// to an air-gapped edge box, where `twinhub model upload` takes it.
#[utoipa::path(get, path = "/api/v1/ml/models/{name}/versions/{version}/bundle", tag = "ml",
    params(("name" = String, Path), ("version" = String, Path), Paging), responses((status = 200, body = Value), (status = 404)))]
pub async fn export_bundle(
    State(state): State<AppState>,
    p: Principal,
    Path((name, version)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let (t, n, v) = (tenant.clone(), name.clone(), version.clone());
    let (manifest, onnx) = state
        .store
        .read(move |c| crate::store::ml::model_files(c, &t, &n, &v))?
        .ok_or_else(|| {
            ApiError::not_found(format!("version {version} of model {name} not found"))
        })?;
    let manifest: Value = serde_json::from_str(&manifest).unwrap_or(Value::Null);
    Ok(Json(crate::ml::bundle::make(&onnx, &manifest)))
}

/// Deletes a version that is neither active nor the A/B candidate.
#[utoipa::path(delete, path = "/api/v1/ml/models/{name}/versions/{version}", tag = "ml",
    params(("name" = String, Path), ("version" = String, Path), Paging), responses((status = 204), (status = 404), (status = 409)))]
pub async fn delete_version(
    State(state): State<AppState>,
    p: Principal,
    Path((name, version)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::MlAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.ml.delete_version(&tenant, &name, &version).await?;
    state
        .audit(
            &p,
            &tenant,
            "ml.delete",
            &format!("{name}/{version}"),
            json!({}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Binds a model to twins as a soft sensor: whenever a bound twin's inputs
/// change, the prediction (and interval) is written to the named twin
/// properties and to history.
#[utoipa::path(post, path = "/api/v1/ml/bindings", tag = "ml", params(Paging),
    request_body(content = Value, description = "{id, model, select:{twin}|{model}, inputs?:{feature: property}, outputs:{prediction, lower?, upper?}}"),
    responses((status = 201, body = Value), (status = 400), (status = 422)))]
pub async fn put_binding(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(b): ApiJson<crate::ml::bindings::Binding>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::MlAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let v = serde_json::to_value(&b).unwrap_or_default();
    state
        .bindings
        .put(&tenant, b, &state.ml, &state.twins)
        .await?;
    state
        .audit(
            &p,
            &tenant,
            "ml.bind",
            v["id"].as_str().unwrap_or_default(),
            v.clone(),
        )
        .await;
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(get, path = "/api/v1/ml/bindings", tag = "ml", params(Paging), responses((status = 200, body = Value)))]
pub async fn list_bindings(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::MlRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let value: Vec<Value> = state
        .bindings
        .list(&tenant)
        .iter()
        .map(|b| serde_json::to_value(&**b).unwrap_or_default())
        .collect();
    Ok(Json(json!({"value": value, "next": null})))
}

#[utoipa::path(delete, path = "/api/v1/ml/bindings/{id}", tag = "ml", params(("id" = String, Path), Paging),
    responses((status = 204), (status = 404)))]
pub async fn delete_binding(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::MlAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.bindings.delete(&tenant, &id).await? {
        return Err(ApiError::not_found(format!("binding {id} not found")));
    }
    state.audit(&p, &tenant, "ml.unbind", &id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}
