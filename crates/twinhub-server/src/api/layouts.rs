//! Named binary layouts: one layout for many devices — those it lists, or
//! every device whose twin is of its model. (A device's own layout is at
//! `/api/v1/devices/{id}/layout`; the decoding is `crate::ingest`.)

use super::error::ApiError;
use super::extract::{ApiQuery, Paging};
use super::AppState;
use crate::auth::{Perm, Principal};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

fn body_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Creates (201) or replaces (200) a named layout: the layout language
/// (`fields`, `timestamp`) plus `devices` (ids) and/or `model` (a DTDL
/// model id; extending models included). A field that breaks a rule
/// answers 422 naming it.
#[utoipa::path(put, path = "/api/v1/layouts/{id}", tag = "devices",
    params(("id" = String, Path), Paging),
    request_body(content = Value, description = "{fields: [...], timestamp?, devices?: [id], model?: dtmi}"),
    responses((status = 200, body = Value), (status = 201, body = Value), (status = 400), (status = 422)))]
pub async fn put_named_layout(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::DevicesAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    twinhub_model::ids::check_id("id", &id).map_err(|e| ApiError::field(&e.field, &e.rule))?;
    let created = state.layouts.put_named(&tenant, &id, &body).await?;
    state.audit(&p, &tenant, "layout.put", &id, json!({})).await;
    let text = state.layouts.named(&tenant, &id).unwrap_or_default();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body_of(&text))))
}

#[utoipa::path(get, path = "/api/v1/layouts/{id}", tag = "devices",
    params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn get_named_layout(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::DevicesRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let text = state
        .layouts
        .named(&tenant, &id)
        .ok_or_else(|| ApiError::not_found(format!("layout {id} not found")))?;
    Ok(Json(body_of(&text)))
}

/// `{"value": [{"id", "layout"}], "next"}`.
#[utoipa::path(get, path = "/api/v1/layouts", tag = "devices", params(Paging),
    responses((status = 200, body = Value)))]
pub async fn list_named_layouts(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::DevicesRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let all = state.layouts.list_named(&tenant);
    let (page, next) = q.page(&all, |(id, _)| id)?;
    let page: Vec<Value> = page
        .iter()
        .map(|(id, text)| json!({"id": id, "layout": body_of(text)}))
        .collect();
    Ok(Json(json!({"value": page, "next": next})))
}

#[utoipa::path(delete, path = "/api/v1/layouts/{id}", tag = "devices",
    params(("id" = String, Path), Paging),
    responses((status = 204), (status = 404)))]
pub async fn delete_named_layout(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::DevicesAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.layouts.delete_named(&tenant, &id).await? {
        return Err(ApiError::not_found(format!("layout {id} not found")));
    }
    state
        .audit(&p, &tenant, "layout.delete", &id, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
