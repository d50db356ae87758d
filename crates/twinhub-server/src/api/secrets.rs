//! The tenant's secret box over HTTP: write-only values, masked previews.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::api::error::Code;
use crate::auth::{Perm, Principal};
use crate::secrets::{SecretError, SecretInfo, MAX_SECRET_BYTES};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretValue {
    /// 1 byte to 64 KiB.
    #[schema(min_length = 1, max_length = 65536)]
    pub value: String,
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> ApiError {
        match e {
            SecretError::Undecryptable(name) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::SecretUndecryptable,
                format!("secret {name} cannot be decrypted with the configured key"),
            ),
            SecretError::Store(s) => s.into(),
        }
    }
}

/// Stores or replaces a secret; the answer shows only a masked preview.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path), Paging), request_body = SecretValue,
    responses((status = 200, body = SecretInfo), (status = 400), (status = 403)))]
pub async fn put_secret(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(req): ApiJson<SecretValue>,
) -> Result<Json<SecretInfo>, ApiError> {
    p.require(Perm::SecretsAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    twinhub_model::ids::check_id("name", &name).map_err(|e| ApiError::field(&e.field, e.rule))?;
    if req.value.is_empty() || req.value.len() > MAX_SECRET_BYTES {
        return Err(ApiError::field(
            "value",
            &format!("must be 1 to {MAX_SECRET_BYTES} bytes"),
        ));
    }
    let info = state.secrets.put(&tenant, &name, &req.value).await?;
    tracing::info!(secret = %name, tenant = %tenant, by = %p.name(), "secret written");
    state
        .audit(&p, &tenant, "secret.put", &name, serde_json::json!({}))
        .await;
    Ok(Json(info))
}

#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets", params(Paging),
    responses((status = 200, body = serde_json::Value), (status = 403)))]
pub async fn list_secrets(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(Perm::SecretsAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let value = state.secrets.list(&tenant)?;
    Ok(Json(serde_json::json!({"value": value, "next": null})))
}

#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path), Paging), responses((status = 204), (status = 404)))]
pub async fn delete_secret(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::SecretsAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.secrets.delete(&tenant, &name).await? {
        return Err(ApiError::not_found(format!("secret {name} not found")));
    }
    state
        .audit(&p, &tenant, "secret.delete", &name, serde_json::json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
