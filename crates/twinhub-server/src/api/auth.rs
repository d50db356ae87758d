//! Login (with lockout), token refresh and logout.

use super::error::ApiError;
use super::extract::ApiJson;
use super::AppState;
use crate::api::error::Code;
use crate::auth::Principal;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
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
    let user = match state.registry.login(&req.username, &req.password).await {
        Ok(u) => u,
        Err(e) => {
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
            return Err(match e {
                crate::registry::LoginError::Locked(until) => {
                    let secs = ((until - state.clock.now_us()) / 1_000_000).max(1) as u64;
                    ApiError {
                        retry_after: Some(secs),
                        ..ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            Code::RateLimited,
                            format!("too many failed logins for this user name; retry in {secs} s"),
                        )
                    }
                }
                crate::registry::LoginError::Bad => {
                    ApiError::unauthorized("invalid username or password")
                }
            });
        }
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ScopedGrantInfo {
    pub root: String,
    pub relationships: Vec<String>,
    pub permissions: Vec<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The user name, API key id or device id.
    pub name: String,
    /// `user`, `apikey` or `device`.
    pub kind: &'static str,
    pub tenant: String,
    pub roles: Vec<String>,
    /// What the caller may do anywhere in its tenant.
    pub permissions: Vec<&'static str>,
    /// What the caller may do only under a twin subtree.
    pub scoped: Vec<ScopedGrantInfo>,
}

/// Who the caller is and what it may do, so a client (the dashboard) can
/// offer only what the API would allow. The API still checks every call.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", responses((status = 200, body = WhoAmI), (status = 401)))]
pub async fn me(p: Principal) -> Json<WhoAmI> {
    use crate::auth::PrincipalKind;
    let kind = match &p.kind {
        PrincipalKind::User(_) => "user",
        PrincipalKind::ApiKey(_) => "apikey",
        PrincipalKind::Device(_) => "device",
        PrincipalKind::Local => "local",
    };
    Json(WhoAmI {
        name: p.name().to_string(),
        kind,
        tenant: p.tenant.clone(),
        roles: p.roles.clone(),
        permissions: p.perms.names(),
        scoped: p
            .scoped
            .iter()
            .map(|g| ScopedGrantInfo {
                root: g.root.clone(),
                relationships: g.relationships.clone(),
                permissions: g.perms.names(),
            })
            .collect(),
    })
}
