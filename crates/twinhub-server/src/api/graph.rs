//! The twin graph API: DTDL models, twins (PUT/GET/PATCH/DELETE with
//! ETags), relationships, and the query language.

use super::error::ApiError;
use super::extract::{body_error, parse_json, ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::auth::{Perm, Principal};
use crate::twins::{ops::Cond, Rel, Twin, TwinGraphs};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use twinhub_model::dtdl::Dtmi;
use utoipa::{IntoParams, ToSchema};

/// Longest query text accepted.
pub const MAX_QUERY_CHARS: usize = 8000;
/// Largest model upload (bytes).
pub const MAX_MODEL_UPLOAD: usize = 16 << 20;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantParam {
    /// System admins: act in this tenant.
    pub tenant: Option<String>,
}

fn cond(h: &HeaderMap) -> Cond {
    let s = |n: header::HeaderName| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
    };
    Cond {
        if_match: s(header::IF_MATCH),
        if_none_match_any: s(header::IF_NONE_MATCH).as_deref() == Some("*"),
    }
}

fn with_etag(status: StatusCode, etag: &str, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn dtmi(id: &str) -> Result<Dtmi, ApiError> {
    Dtmi::parse(id).map_err(|r| ApiError::field("id", r))
}

fn twin_json(state: &AppState, tenant: &str, t: &Twin) -> Value {
    TwinGraphs::render(Some(t), &t.id, &state.store.latest_of_twin(tenant, &t.id))
}

// ---- models ----

#[utoipa::path(post, path = "/api/v1/models", tag = "models",
    request_body(content = serde_json::Value, description = "One DTDL interface or an array of interfaces (JSON-LD)"),
    params(TenantParam),
    responses((status = 201, body = serde_json::Value), (status = 400), (status = 409), (status = 422, description = "Invalid models: every error names the interface, the element and the rule")))]
pub async fn upload_models(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<TenantParam>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::ModelsWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let body = body.map_err(|e| body_error(e.status(), MAX_MODEL_UPLOAD))?;
    if body.len() > MAX_MODEL_UPLOAD {
        return Err(ApiError::too_large(MAX_MODEL_UPLOAD));
    }
    let out = state
        .twins
        .add_models(&tenant, &body)
        .await
        .map_err(|e| match e {
            crate::twins::TwinError::Models(m)
                if m.iter().all(|e| e.rule.contains("already exists")) =>
            {
                ApiError::conflict(
                    m.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            }
            e => e.into(),
        })?;
    tracing::info!(tenant = %tenant, count = out.len(), by = %p.name(), "models uploaded");
    state
        .audit(
            &p,
            &tenant,
            "model.upload",
            &out.iter()
                .filter_map(|m| m["id"].as_str())
                .collect::<Vec<_>>()
                .join(","),
            json!({}),
        )
        .await;
    Ok((StatusCode::CREATED, Json(Value::Array(out))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelListQuery {
    /// Include each model's DTDL definition.
    #[serde(rename = "includeModelDefinition", default)]
    pub include_definition: bool,
    pub limit: Option<usize>,
    pub next: Option<String>,
    pub tenant: Option<String>,
}

fn model_view(g: &crate::twins::TenantGraph, id: &Dtmi, definition: bool) -> Value {
    let i = g.models.get(id);
    let info = g.model_info.get(id);
    let mut v = json!({
        "id": id.as_str(),
        "displayName": i.and_then(|i| i.display_name.clone()),
        "description": i.and_then(|i| i.description.clone()),
        "uploadTime": info.map(|i| twinhub_model::time::format_rfc3339(i.uploaded_at)),
        "decommissioned": info.is_some_and(|i| i.decommissioned),
    });
    if definition {
        v["model"] = i.map(|i| i.source.clone()).unwrap_or(Value::Null);
        v["elements"] = Value::Array(elements(g, id));
    }
    v
}

/// Every element a twin of the model has, inherited ones included, in a
/// flat shape a client can render without resolving `extends` itself:
/// `{name, kind, schema, unit?, displayName?, writable?, target?, origin}`.
fn elements(g: &crate::twins::TenantGraph, id: &Dtmi) -> Vec<Value> {
    use twinhub_model::dtdl::{ContentKind, Primitive, Schema};
    fn schema_name(s: &Schema) -> String {
        match s {
            Schema::Primitive(p) | Schema::Enum { value: p, .. } => match p {
                Primitive::Boolean => "boolean",
                Primitive::Date => "date",
                Primitive::DateTime => "dateTime",
                Primitive::Double => "double",
                Primitive::Duration => "duration",
                Primitive::Float => "float",
                Primitive::Integer => "integer",
                Primitive::Long => "long",
                Primitive::String => "string",
                Primitive::Time => "time",
            }
            .to_string(),
            Schema::Object { .. } => "object".into(),
            Schema::Map { .. } => "map".into(),
            Schema::Array { .. } => "array".into(),
            Schema::Ref(d) => d.to_string(),
        }
    }
    let text = |t: &Option<twinhub_model::dtdl::LangText>| {
        t.as_ref()
            .and_then(|t| t.get("en").or_else(|| t.values().next()).cloned())
    };
    let Some(r) = g.models.resolved(id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for anc in &r.ancestors {
        let Some(iface) = g.models.get(anc) else {
            continue;
        };
        for c in &iface.contents {
            if r.origin.get(&c.name) != Some(anc) {
                continue;
            }
            let mut e = json!({
                "name": c.name,
                "kind": c.kind.label(),
                "origin": anc.as_str(),
            });
            if let Some(u) = &c.unit {
                e["unit"] = json!(u);
            }
            if let Some(d) = text(&c.display_name) {
                e["displayName"] = json!(d);
            }
            match &c.kind {
                ContentKind::Property { schema, writable } => {
                    e["schema"] = json!(schema_name(schema));
                    e["writable"] = json!(writable);
                }
                ContentKind::Telemetry { schema } => e["schema"] = json!(schema_name(schema)),
                ContentKind::Command { request, .. } => {
                    if let Some((name, schema)) = request {
                        e["request"] = json!({"name": name, "schema": schema_name(schema)});
                    }
                }
                ContentKind::Relationship { target, .. } => {
                    e["target"] = json!(target.as_ref().map(|t| t.as_str()));
                }
                ContentKind::Component { schema } => e["schema"] = json!(schema.as_str()),
            }
            out.push(e);
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out
}

#[utoipa::path(get, path = "/api/v1/models", tag = "models", params(ModelListQuery), responses((status = 200, body = serde_json::Value)))]
pub async fn list_models(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<ModelListQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::ModelsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let limit = Paging {
        limit: q.limit,
        next: None,
        tenant: None,
    }
    .limit()?;
    let page = state.twins.read(&tenant, |g| {
        let mut ids: Vec<&Dtmi> = g.models.ids().filter(|i| q.next.as_deref().is_none_or(|n| i.as_str() > n)).collect();
        ids.sort();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next = if more { ids.last().map(|i| i.to_string()) } else { None };
        json!({"value": ids.iter().map(|i| model_view(g, i, q.include_definition)).collect::<Vec<_>>(), "next": next})
    });
    Ok(Json(page))
}

#[utoipa::path(get, path = "/api/v1/models/{id}", tag = "models", params(("id" = String, Path, description = "The model's DTMI"), TenantParam), responses((status = 200, body = serde_json::Value), (status = 404)))]
pub async fn get_model(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantParam>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::ModelsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let id = dtmi(&id)?;
    state
        .twins
        .read(&tenant, |g| {
            g.models
                .get(&id)
                .is_some()
                .then(|| model_view(g, &id, true))
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("model {id} not found")))
}

/// Decommissions a model (no new twins may use it), as Azure Digital
/// Twins: `[{"op":"replace","path":"/decommissioned","value":true}]`.
#[utoipa::path(patch, path = "/api/v1/models/{id}", tag = "models", params(("id" = String, Path), TenantParam),
    request_body = serde_json::Value, responses((status = 200, body = serde_json::Value), (status = 400), (status = 404)))]
pub async fn patch_model(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantParam>,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::ModelsWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let id = dtmi(&id)?;
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("body: a JSON Patch array"))?;
    let flag = match ops.as_slice() {
        [op] if op.get("path").and_then(Value::as_str) == Some("/decommissioned")
            && matches!(
                op.get("op").and_then(Value::as_str),
                Some("replace" | "add")
            ) =>
        {
            op.get("value")
                .and_then(Value::as_bool)
                .ok_or_else(|| ApiError::field("[0].value", "must be true or false"))?
        }
        _ => return Err(ApiError::field(
            "body",
            "only [{\"op\":\"replace\",\"path\":\"/decommissioned\",\"value\":true}] is supported",
        )),
    };
    state.twins.decommission(&tenant, &id, flag).await?;
    state
        .audit(
            &p,
            &tenant,
            "model.decommission",
            id.as_str(),
            json!({"decommissioned": flag}),
        )
        .await;
    Ok(Json(
        state.twins.read(&tenant, |g| model_view(g, &id, false)),
    ))
}

#[utoipa::path(delete, path = "/api/v1/models/{id}", tag = "models", params(("id" = String, Path), TenantParam), responses((status = 204), (status = 404), (status = 409)))]
pub async fn delete_model(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantParam>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::ModelsWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.twins.delete_model(&tenant, &dtmi(&id)?).await?;
    tracing::info!(tenant = %tenant, model = %id, by = %p.name(), "model deleted");
    state
        .audit(&p, &tenant, "model.delete", &id, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- twins ----

/// The twin as Azure Digital Twins shapes it: `$dtId`, `$etag`,
/// `$metadata` (`$model`, per-property `lastUpdateTime`), then properties,
/// components and live telemetry. Device twins without a model have no
/// `$model`.
#[utoipa::path(get, path = "/api/v1/twins/{id}", tag = "twins", params(("id" = String, Path), TenantParam),
    responses((status = 200, body = serde_json::Value), (status = 404)))]
pub async fn get_twin(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantParam>,
) -> Result<Response, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(&p, Perm::TwinsRead, &tenant, &id)?;
    if !state.twin_exists(&tenant, &id) {
        return Err(ApiError::not_found(format!("twin {id} not found")));
    }
    let live = state.store.latest_of_twin(&tenant, &id);
    let (doc, etag) = state.twins.read(&tenant, |g| {
        let t = g.twins.get(id.as_str());
        (
            TwinGraphs::render(t, &id, &live),
            t.map(|t| t.etag.clone())
                .unwrap_or_else(|| "W/\"1\"".into()),
        )
    });
    Ok(with_etag(StatusCode::OK, &etag, doc))
}

#[utoipa::path(put, path = "/api/v1/twins/{id}", tag = "twins", params(("id" = String, Path), TenantParam),
    request_body(content = serde_json::Value, description = "{\"$metadata\":{\"$model\":\"dtmi:…;1\"}, …properties}"),
    responses((status = 201, body = serde_json::Value), (status = 200, body = serde_json::Value), (status = 400), (status = 412), (status = 422)))]
pub async fn put_twin(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantParam>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if state.twins.twin_exists(&tenant, &id) {
        state.authorize_twin(&p, Perm::TwinsWrite, &tenant, &id)?;
    } else {
        // A new twin belongs to no scope yet: creating one is tenant-wide.
        p.require(Perm::TwinsWrite)?;
        let count = state.twins.read(&tenant, |g| g.twins.len());
        state.quotas.check_twins(&tenant, count)?;
    }
    twinhub_model::ids::check_id("id", &id).map_err(|e| ApiError::field(&e.field, e.rule))?;
    let (twin, created) = state
        .twins
        .put_twin(&tenant, &id, body, cond(&headers))
        .await?;
    tracing::info!(tenant = %tenant, twin = %id, created, by = %p.name(), "twin written");
    state
        .audit(
            &p,
            &tenant,
            "twin.put",
            &id,
            json!({"model": twin.model.as_str(), "created": created}),
        )
        .await;
    Ok(with_etag(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &twin.etag,
        twin_json(&state, &tenant, &twin),
    ))
}

#[utoipa::path(patch, path = "/api/v1/twins/{id}", tag = "twins", params(("id" = String, Path), TenantParam),
    request_body(content = serde_json::Value, description = "A JSON Patch (RFC 6902) of the twin's properties"),
    responses((status = 200, body = serde_json::Value), (status = 400), (status = 404), (status = 412), (status = 422)))]
pub async fn patch_twin(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantParam>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(&p, Perm::TwinsWrite, &tenant, &id)?;
    // The change and its audit entry commit together: one commit per PATCH.
    let entry = state.audit_entry(&p, &tenant, "twin.patch", &id, json!({"patch": patch}));
    let twin = state
        .twins
        .patch_twin(&tenant, &id, patch, cond(&headers), Some(entry))
        .await?;
    Ok(with_etag(
        StatusCode::OK,
        &twin.etag,
        twin_json(&state, &tenant, &twin),
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteTwinQuery {
    /// Keep the twin's telemetry history (deleted with the twin otherwise).
    #[serde(default)]
    pub keep_history: bool,
    pub tenant: Option<String>,
}

#[utoipa::path(delete, path = "/api/v1/twins/{id}", tag = "twins", params(("id" = String, Path), DeleteTwinQuery),
    responses((status = 204), (status = 404), (status = 409, description = "The twin still has relationships"), (status = 412)))]
pub async fn delete_twin(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteTwinQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(&p, Perm::TwinsWrite, &tenant, &id)?;
    state
        .twins
        .delete_twin(&tenant, &id, cond(&headers))
        .await?;
    if !q.keep_history {
        for name in state.store.series_of_twin(&tenant, &id) {
            state
                .store
                .delete_range(
                    &crate::store::SeriesKey::new(&tenant, &id, &name),
                    i64::MIN,
                    i64::MAX,
                )
                .await?;
        }
    }
    tracing::info!(tenant = %tenant, twin = %id, keep_history = q.keep_history, by = %p.name(), "twin deleted");
    state
        .audit(
            &p,
            &tenant,
            "twin.delete",
            &id,
            json!({"keep_history": q.keep_history}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- relationships ----

fn rel_json(r: &Rel) -> Value {
    r.doc()
}

#[utoipa::path(put, path = "/api/v1/twins/{id}/relationships/{rel_id}", tag = "twins", params(("id" = String, Path), ("rel_id" = String, Path), TenantParam),
    request_body(content = serde_json::Value, description = "{\"$relationshipName\":\"contains\",\"$targetId\":\"…\", …properties}"),
    responses((status = 201, body = serde_json::Value), (status = 200, body = serde_json::Value), (status = 400), (status = 404), (status = 412), (status = 422)))]
pub async fn put_relationship(
    State(state): State<AppState>,
    p: Principal,
    Path((id, rel_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<TenantParam>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(&p, Perm::TwinsWrite, &tenant, &id)?;
    twinhub_model::ids::check_id("relationshipId", &rel_id)
        .map_err(|e| ApiError::field(&e.field, e.rule))?;
    if let Some(target) = body.get("$targetId").and_then(|t| t.as_str()) {
        // A scoped principal cannot pull an outside twin into its subtree.
        state.authorize_twin(&p, Perm::TwinsRead, &tenant, target)?;
    }
    let (rel, created) = state
        .twins
        .put_relationship(&tenant, &id, &rel_id, body, cond(&headers))
        .await?;
    state
        .audit(
            &p,
            &tenant,
            "relationship.put",
            &format!("{id}/{rel_id}"),
            json!({"name": rel.name, "target": rel.target.as_ref(), "created": created}),
        )
        .await;
    Ok(with_etag(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &rel.etag,
        rel_json(&rel),
    ))
}

#[utoipa::path(get, path = "/api/v1/twins/{id}/relationships/{rel_id}", tag = "twins", params(("id" = String, Path), ("rel_id" = String, Path), TenantParam),
    responses((status = 200, body = serde_json::Value), (status = 404)))]
pub async fn get_relationship(
    State(state): State<AppState>,
    p: Principal,
    Path((id, rel_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<TenantParam>,
) -> Result<Response, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(&p, Perm::TwinsRead, &tenant, &id)?;
    let rel = state
        .twins
        .read(&tenant, |g| g.rel(&id, &rel_id).cloned())
        .ok_or_else(|| ApiError::not_found(format!("relationship {rel_id} of {id} not found")))?;
    Ok(with_etag(StatusCode::OK, &rel.etag, rel_json(&rel)))
}

#[utoipa::path(patch, path = "/api/v1/twins/{id}/relationships/{rel_id}", tag = "twins", params(("id" = String, Path), ("rel_id" = String, Path), TenantParam),
    request_body = serde_json::Value, responses((status = 200, body = serde_json::Value), (status = 404), (status = 412), (status = 422)))]
pub async fn patch_relationship(
    State(state): State<AppState>,
    p: Principal,
    Path((id, rel_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<TenantParam>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(&p, Perm::TwinsWrite, &tenant, &id)?;
    let rel = state
        .twins
        .patch_relationship(&tenant, &id, &rel_id, patch.clone(), cond(&headers))
        .await?;
    state
        .audit(
            &p,
            &tenant,
            "relationship.patch",
            &format!("{id}/{rel_id}"),
            json!({"patch": patch}),
        )
        .await;
    Ok(with_etag(StatusCode::OK, &rel.etag, rel_json(&rel)))
}

#[utoipa::path(delete, path = "/api/v1/twins/{id}/relationships/{rel_id}", tag = "twins", params(("id" = String, Path), ("rel_id" = String, Path), TenantParam),
    responses((status = 204), (status = 404), (status = 412)))]
pub async fn delete_relationship(
    State(state): State<AppState>,
    p: Principal,
    Path((id, rel_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<TenantParam>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(&p, Perm::TwinsWrite, &tenant, &id)?;
    state
        .twins
        .delete_relationship(&tenant, &id, &rel_id, cond(&headers))
        .await?;
    state
        .audit(
            &p,
            &tenant,
            "relationship.delete",
            &format!("{id}/{rel_id}"),
            json!({}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RelListQuery {
    /// Only relationships with this name.
    #[serde(rename = "relationshipName")]
    pub relationship_name: Option<String>,
    pub limit: Option<usize>,
    pub next: Option<String>,
    pub tenant: Option<String>,
}

fn page_rels(
    mut rels: Vec<Rel>,
    q: &RelListQuery,
    key: impl Fn(&Rel) -> String,
) -> Result<Value, ApiError> {
    let limit = Paging {
        limit: q.limit,
        next: None,
        tenant: None,
    }
    .limit()?;
    rels.retain(|r| q.relationship_name.as_deref().is_none_or(|n| r.name == n));
    rels.sort_by_key(&key);
    rels.retain(|r| q.next.as_deref().is_none_or(|n| key(r).as_str() > n));
    let more = rels.len() > limit;
    rels.truncate(limit);
    let next = if more { rels.last().map(&key) } else { None };
    Ok(json!({"value": rels.iter().map(rel_json).collect::<Vec<_>>(), "next": next}))
}

#[utoipa::path(get, path = "/api/v1/twins/{id}/relationships", tag = "twins", params(("id" = String, Path), RelListQuery), responses((status = 200, body = serde_json::Value), (status = 404)))]
pub async fn list_relationships(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RelListQuery>,
) -> Result<Json<Value>, ApiError> {
    list_rels(&state, &p, &id, &q, false).map(Json)
}

#[utoipa::path(get, path = "/api/v1/twins/{id}/incomingrelationships", tag = "twins", params(("id" = String, Path), RelListQuery), responses((status = 200, body = serde_json::Value), (status = 404)))]
pub async fn list_incoming(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RelListQuery>,
) -> Result<Json<Value>, ApiError> {
    list_rels(&state, &p, &id, &q, true).map(Json)
}

/// A twin's outgoing or incoming relationships, a page at a time.
/// Incoming ones from twins outside a scoped caller's subtrees are left
/// out; pages continue by relationship id (outgoing) or source and id.
fn list_rels(
    state: &AppState,
    p: &Principal,
    id: &str,
    q: &RelListQuery,
    incoming: bool,
) -> Result<Value, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.authorize_twin(p, Perm::TwinsRead, &tenant, id)?;
    let rels = state.twins.read(&tenant, |g| {
        g.twins.contains_key(id).then(|| {
            if incoming {
                g.incoming_of(id).cloned().collect::<Vec<_>>()
            } else {
                g.outgoing(id).cloned().collect::<Vec<_>>()
            }
        })
    });
    let mut rels = rels.ok_or_else(|| ApiError::not_found(format!("twin {id} not found")))?;
    if !incoming {
        return page_rels(rels, q, |r| r.id.clone());
    }
    if let Some(f) = state.twin_filter(p, Perm::TwinsRead, &tenant)? {
        rels.retain(|r| f(&r.source));
    }
    page_rels(rels, q, |r| format!("{}\u{0}{}", r.source, r.id))
}

// ---- query ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub query: Option<String>,
    #[serde(rename = "continuationToken")]
    pub continuation_token: Option<String>,
    /// Items per page (default 100, at most 1000).
    #[serde(rename = "pageSize")]
    #[schema(minimum = 1, maximum = 1000)]
    pub page_size: Option<usize>,
}

fn query_hash(q: &str) -> String {
    use sha2::Digest;
    hex_prefix(&sha2::Sha256::digest(q.as_bytes()))
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

/// Runs a query as Azure Digital Twins does: `{"value":[…],
/// "continuationToken":…}`; pass the token (with the same query, or
/// alone) to continue.
#[utoipa::path(post, path = "/api/v1/query", tag = "twins", request_body = QueryRequest, params(TenantParam),
    responses((status = 200, body = serde_json::Value), (status = 400, description = "Syntax errors point at the position")))]
pub async fn query(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(tq): ApiQuery<TenantParam>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = p.tenant_scope(tq.tenant.as_deref());
    let scope = state.twin_scope(&p, Perm::TwinsRead)?;
    let body = body.map_err(|e| body_error(e.status(), state.config.http.max_body))?;
    let req: QueryRequest = parse_json(&body)?;
    let page = match req.page_size {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::field("pageSize", "must be between 1 and 1000")),
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (text, offset) = match &req.continuation_token {
        Some(t) => {
            let tok: Value = b64
                .decode(t)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    ApiError::field("continuationToken", "is not a token this server issued")
                })?;
            let q = tok["q"].as_str().unwrap_or_default().to_string();
            if req.query.as_deref().is_some_and(|given| given != q) {
                return Err(ApiError::field(
                    "continuationToken",
                    "belongs to another query",
                ));
            }
            (q, tok["o"].as_u64().unwrap_or(0) as usize)
        }
        None => (
            req.query
                .clone()
                .ok_or_else(|| ApiError::field("query", "is required"))?,
            0,
        ),
    };
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::field(
            "query",
            &format!("may be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let parsed =
        twinhub_model::query::parse(&text).map_err(|e| ApiError::field("query", &e.to_string()))?;
    let store = state.store.clone();
    let tenant2 = tenant.clone();
    let result = state
        .twins
        // A scoped caller's query sees only its subtrees, so counts and
        // pages are of what it may see.
        .query(
            &tenant,
            &parsed,
            offset,
            page,
            scope.as_deref(),
            move |id| store.latest_of_twin(&tenant2, id),
        )
        .map_err(|e| ApiError::field("query", &e.0))?;
    let token = result
        .next
        .map(|o| b64.encode(json!({"q": text, "o": o, "h": query_hash(&text)}).to_string()));
    Ok(Json(
        json!({"value": result.items, "continuationToken": token}),
    ))
}
