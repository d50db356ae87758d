//! Login, token refresh and logout; tenants and users (the security issue
//! extends these).

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::auth::{Perm, Principal};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use twinhub_model::time::format_rfc3339;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always "Bearer".
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Exchange at /api/v1/auth/refresh for new tokens (single use).
    pub refresh_token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

impl From<crate::registry::Tokens> for TokenResponse {
    fn from(t: crate::registry::Tokens) -> Self {
        TokenResponse {
            access_token: t.access_token,
            token_type: "Bearer",
            expires_in: t.expires_in,
            refresh_token: t.refresh_token,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 400), (status = 401)), security(()))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let Some(user) = state
        .registry
        .check_password(&req.username, &req.password)
        .await
    else {
        state.metrics.auth_failures.add("login", 1);
        tracing::info!(username = %req.username, "login failed");
        state
            .audit
            .record(
                crate::audit::SYSTEM_CHAIN,
                "anonymous",
                "auth.login_failed",
                &req.username,
                serde_json::json!({}),
            )
            .await
            .ok();
        return Err(ApiError::unauthorized("invalid username or password"));
    };
    tracing::info!(username = %user.username, "login");
    state
        .audit
        .record(
            &user.tenant,
            &format!("user:{}", user.username),
            "auth.login",
            &user.username,
            serde_json::json!({}),
        )
        .await
        .ok();
    Ok(Json(state.registry.issue_tokens(&user, None).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401)), security(()))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    match state.registry.refresh(&req.refresh_token).await? {
        Some(t) => Ok(Json(t.into())),
        None => Err(ApiError::unauthorized(
            "the refresh token is invalid, used or expired",
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 204), (status = 401)))]
pub async fn logout(State(state): State<AppState>, p: Principal) -> Result<StatusCode, ApiError> {
    if let Some(s) = &p.session {
        state.registry.logout(s).await?;
    }
    tracing::info!(username = %p.name(), "logout");
    state
        .audit(
            &p,
            &p.tenant,
            "auth.logout",
            p.name(),
            serde_json::json!({}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub value: Vec<TenantBody>,
    pub next: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = TenantBody,
    responses((status = 201, body = TenantBody), (status = 403), (status = 409)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<TenantBody>,
) -> Result<(StatusCode, Json<TenantBody>), ApiError> {
    p.require(Perm::TenantsAdmin)?;
    let t = state.registry.create_tenant(&req.id, &req.name).await?;
    tracing::info!(tenant = %t.id, by = %p.name(), "tenant created");
    state
        .audit(
            &p,
            crate::audit::SYSTEM_CHAIN,
            "tenant.create",
            &t.id,
            serde_json::json!({"name": t.name}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(TenantBody {
            id: t.id,
            name: t.name,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", responses((status = 200, body = TenantList), (status = 403)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<TenantList>, ApiError> {
    p.require(Perm::TenantsAdmin)?;
    let value = state
        .registry
        .tenants()
        .into_iter()
        .map(|t| TenantBody {
            id: t.id,
            name: t.name,
        })
        .collect();
    Ok(Json(TenantList { value, next: None }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    /// Defaults to the caller's tenant; only a system admin may name another.
    pub tenant: Option<String>,
    pub roles: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub username: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub value: Vec<UserView>,
    pub next: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 400), (status = 403), (status = 409)))]
pub async fn create_user(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    p.require(Perm::UsersAdmin)?;
    let tenant = p.tenant_scope(req.tenant.as_deref());
    if req.tenant.as_deref().is_some_and(|t| t != tenant) || !state.registry.tenant_exists(&tenant)
    {
        return Err(ApiError::not_found(format!(
            "tenant {} not found",
            req.tenant.as_deref().unwrap_or(&tenant)
        )));
    }
    if req.roles.iter().any(|r| r == "system_admin") && !p.is_system_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only a system admin may grant system_admin",
        ));
    }
    state
        .registry
        .create_user(&req.username, &tenant, &req.password, req.roles.clone())
        .await?;
    tracing::info!(username = %req.username, tenant = %tenant, by = %p.name(), "user created");
    state
        .audit(
            &p,
            &tenant,
            "user.create",
            &req.username,
            serde_json::json!({"roles": req.roles}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            username: req.username,
            tenant,
            roles: req.roles,
            created_at: format_rfc3339(state.clock.now_us()),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(Paging), responses((status = 200, body = UserList), (status = 403)))]
pub async fn list_users(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<UserList>, ApiError> {
    p.require(Perm::UsersAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let value = state
        .registry
        .users_of(&tenant)
        .into_iter()
        .map(|u| UserView {
            username: u.username,
            tenant: u.tenant,
            roles: u.roles,
            created_at: format_rfc3339(u.created_at),
        })
        .collect();
    Ok(Json(UserList { value, next: None }))
}
