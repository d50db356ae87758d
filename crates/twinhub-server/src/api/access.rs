//! Tenants, users and API keys: who may act, and in which tenant.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::api::error::Code;
use crate::auth::{Perm, Principal};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use twinhub_model::time::format_rfc3339;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    /// 1–128 letters, digits and - _ . : (not starting with '.').
    #[schema(pattern = r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$")]
    pub id: String,
    #[schema(min_length = 1)]
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
    /// 1–128 letters, digits and - _ . : (not starting with '.').
    #[schema(pattern = r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$")]
    pub username: String,
    /// At least 10 characters, not all of one kind.
    #[schema(min_length = 10)]
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
            Code::Forbidden,
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
        .map(user_view)
        .collect();
    Ok(Json(UserList { value, next: None }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// A new password; ends all of the user's sessions.
    pub password: Option<String>,
    /// Needed when users change their own password (not for admins).
    pub current_password: Option<String>,
    /// New roles (users:admin only); effective from the next request.
    pub roles: Option<Vec<String>>,
}

/// The user `username` as seen by `p`: another tenant's user is not found.
fn user_for(
    state: &AppState,
    p: &Principal,
    username: &str,
) -> Result<crate::store::registry::UserRow, ApiError> {
    state
        .registry
        .user(username)
        .filter(|u| u.tenant == p.tenant || p.is_system_admin())
        .ok_or_else(|| ApiError::not_found(format!("user {username} not found")))
}

fn user_view(u: crate::store::registry::UserRow) -> UserView {
    UserView {
        username: u.username,
        tenant: u.tenant,
        roles: u.roles,
        created_at: format_rfc3339(u.created_at),
    }
}

/// Changes a password and/or roles. Users may change their own password
/// (with `current_password`); everything else needs `users:admin`.
#[utoipa::path(patch, path = "/api/v1/users/{username}", tag = "users", request_body = UpdateUser,
    params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 400), (status = 403), (status = 404)))]
pub async fn update_user(
    State(state): State<AppState>,
    p: Principal,
    Path(username): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    let own = matches!(&p.kind, crate::auth::PrincipalKind::User(n) if *n == username);
    let admin = p.perms.contains(Perm::UsersAdmin);
    if !admin && (!own || req.roles.is_some()) {
        p.require(Perm::UsersAdmin)?;
    }
    let user = user_for(&state, &p, &username)?;
    if let Some(roles) = &req.roles {
        if roles.iter().any(|r| r == "system_admin") && !p.is_system_admin() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::Forbidden,
                "only a system admin may grant system_admin",
            ));
        }
        if user.roles.iter().any(|r| r == "system_admin") && !p.is_system_admin() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::Forbidden,
                "only a system admin may change a system admin",
            ));
        }
    }
    if let Some(pw) = &req.password {
        if !admin {
            let current = req.current_password.as_deref().ok_or_else(|| {
                ApiError::field(
                    "current_password",
                    "is required to change your own password",
                )
            })?;
            if state
                .registry
                .check_password(&username, current)
                .await
                .is_none()
            {
                return Err(ApiError::field("current_password", "is not your password"));
            }
        }
        state.registry.set_password(&username, pw).await?;
        tracing::info!(username = %username, by = %p.name(), "password changed");
        state
            .audit(
                &p,
                &user.tenant,
                "user.password",
                &username,
                serde_json::json!({}),
            )
            .await;
    }
    if let Some(roles) = req.roles {
        state.registry.set_roles(&username, roles.clone()).await?;
        tracing::info!(username = %username, by = %p.name(), "roles changed");
        state
            .audit(
                &p,
                &user.tenant,
                "user.roles",
                &username,
                serde_json::json!({"roles": roles}),
            )
            .await;
    }
    Ok(Json(user_view(user_for(&state, &p, &username)?)))
}

/// Deletes a user; their tokens stop working at once.
#[utoipa::path(delete, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path)), responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete_user(
    State(state): State<AppState>,
    p: Principal,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::UsersAdmin)?;
    let user = user_for(&state, &p, &username)?;
    if user.roles.iter().any(|r| r == "system_admin") && !p.is_system_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "only a system admin may delete a system admin",
        ));
    }
    if matches!(&p.kind, crate::auth::PrincipalKind::User(n) if *n == username) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::Conflict,
            "you cannot delete yourself",
        ));
    }
    state.registry.delete_user(&username).await?;
    tracing::info!(username = %username, by = %p.name(), "user deleted");
    state
        .audit(
            &p,
            &user.tenant,
            "user.delete",
            &username,
            serde_json::json!({}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Roles the key acts with…
    #[serde(default)]
    pub roles: Vec<String>,
    /// …or an explicit permission set (e.g. ["telemetry:read"]).
    pub permissions: Option<Vec<String>>,
    /// RFC 3339 or epoch ms; never expires when absent.
    pub expires_at: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub permissions: Option<Vec<String>>,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used: Option<String>,
    pub revoked: bool,
}

fn key_view(k: &crate::registry::ApiKey) -> ApiKeyView {
    let last = k.last_used.load(std::sync::atomic::Ordering::Relaxed);
    ApiKeyView {
        id: k.row.id.clone(),
        name: k.row.name.clone(),
        roles: k.row.roles.clone(),
        permissions: k.row.permissions.clone(),
        created_by: k.row.created_by.clone(),
        created_at: format_rfc3339(k.row.created_at),
        expires_at: k.row.expires_at.map(format_rfc3339),
        last_used: (last > 0).then(|| format_rfc3339(last)),
        revoked: k.row.revoked_at.is_some(),
    }
}

/// Creates an API key for machines: `thk_<id>_<secret>`, sent as a Bearer
/// token (or as the MQTT password with user name `apikey`). Shown once.
#[utoipa::path(post, path = "/api/v1/apikeys", tag = "apikeys", request_body = CreateApiKey,
    responses((status = 201, body = serde_json::Value, description = "{\"id\",\"key\",…}: the key is shown only here"), (status = 400), (status = 403)))]
pub async fn create_apikey(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(req): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    p.require(Perm::ApikeysAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.registry.tenant_exists(&tenant) {
        return Err(ApiError::not_found(format!("tenant {tenant} not found")));
    }
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    if req.roles.is_empty() && req.permissions.is_none() {
        return Err(ApiError::field("roles", "give roles or permissions"));
    }
    state
        .registry
        .roles
        .check_names(&tenant, &req.roles)
        .map_err(|rule| ApiError::field("roles", &rule))?;
    if req.roles.iter().any(|r| r == "system_admin") && !p.is_system_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "only a system admin may grant system_admin",
        ));
    }
    let mut key_p = state.registry.principal(
        crate::auth::PrincipalKind::ApiKey(String::new()),
        &tenant,
        req.roles.clone(),
        None,
    );
    if let Some(perms) = &req.permissions {
        for (i, s) in perms.iter().enumerate() {
            let perm = crate::auth::Perm::parse(s).ok_or_else(|| {
                ApiError::field(
                    &format!("permissions[{i}]"),
                    &format!("unknown permission '{s}'"),
                )
            })?;
            key_p.perms = key_p.perms.union(crate::auth::PermSet::of(&[perm]));
        }
    }
    // A key never holds more than its creator: tenant-wide permissions the
    // creator has, and scoped ones only under the creator's own scopes.
    let exceeds = |perm: crate::auth::Perm, root: Option<&str>| {
        !p.perms.contains(perm)
            && !root.is_some_and(|r| {
                p.scoped
                    .iter()
                    .any(|g| g.root == r && g.perms.contains(perm))
            })
    };
    for perm in crate::auth::Perm::ALL {
        let over = (key_p.perms.contains(perm) && exceeds(perm, None))
            || key_p
                .scoped
                .iter()
                .any(|g| g.perms.contains(perm) && exceeds(perm, Some(&g.root)));
        if over {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                Code::Forbidden,
                format!("a key cannot hold {}, which you lack", perm.as_str()),
            ));
        }
    }
    let expires_at = match &req.expires_at {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            twinhub_model::time::parse_timestamp_json(v)
                .map_err(|rule| ApiError::field("expires_at", rule))?,
        ),
    };
    if expires_at.is_some_and(|e| e <= state.clock.now_us()) {
        return Err(ApiError::field("expires_at", "must be in the future"));
    }
    let row = crate::store::registry::ApiKeyRow {
        id: String::new(),
        tenant: tenant.clone(),
        name: req.name.clone(),
        key_hash: Vec::new(),
        roles: req.roles.clone(),
        permissions: req.permissions.clone(),
        created_by: p.name().to_string(),
        created_at: 0,
        expires_at,
        revoked_at: None,
        last_used: None,
    };
    let (k, key) = state.registry.create_apikey(row).await?;
    tracing::info!(apikey = %k.row.id, by = %p.name(), "API key created");
    state.audit(&p, &tenant, "apikey.create", &k.row.id, serde_json::json!({"name": req.name, "roles": req.roles, "permissions": req.permissions})).await;
    let mut v = serde_json::to_value(key_view(&k)).unwrap_or_default();
    v["key"] = serde_json::json!(key);
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(get, path = "/api/v1/apikeys", tag = "apikeys", responses((status = 200, body = serde_json::Value), (status = 403)))]
pub async fn list_apikeys(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(Perm::ApikeysAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.registry.tenant_exists(&tenant) {
        return Err(ApiError::not_found(format!("tenant {tenant} not found")));
    }
    let value: Vec<ApiKeyView> = state
        .registry
        .apikeys_of(&tenant)
        .iter()
        .map(|k| key_view(k))
        .collect();
    Ok(Json(serde_json::json!({"value": value, "next": null})))
}

/// Revokes at once: the next request with the key answers 401.
#[utoipa::path(delete, path = "/api/v1/apikeys/{id}", tag = "apikeys", params(("id" = String, Path)), responses((status = 204), (status = 404)))]
pub async fn revoke_apikey(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::ApikeysAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.registry.tenant_exists(&tenant) {
        return Err(ApiError::not_found(format!("tenant {tenant} not found")));
    }
    if !state.registry.revoke_apikey(&tenant, &id).await? {
        return Err(ApiError::not_found(format!("API key {id} not found")));
    }
    tracing::info!(apikey = %id, by = %p.name(), "API key revoked");
    state
        .audit(&p, &tenant, "apikey.revoke", &id, serde_json::json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// 1–128 letters, digits and - _ . : ; not a built-in role's name.
    #[schema(pattern = r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$")]
    pub name: String,
    /// Permission names, e.g. ["twins:read", "alarms:ack"].
    pub permissions: Vec<String>,
    /// Limits the role to the twins under `twin`, reached through
    /// `relationships` (default ["contains"]).
    pub scope: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub permissions: Vec<String>,
    pub scope: Option<serde_json::Value>,
    pub builtin: bool,
}

fn role_view(r: crate::store::registry::RoleRow) -> RoleView {
    RoleView {
        name: r.name,
        permissions: r.permissions,
        scope: r.scope,
        builtin: false,
    }
}

/// Creates or replaces a custom role of the tenant. Users and keys holding
/// it act with the new definition from their next request.
#[utoipa::path(post, path = "/api/v1/roles", tag = "roles", request_body = RoleBody, params(Paging),
    responses((status = 201, body = RoleView), (status = 400), (status = 403)))]
pub async fn put_role(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(req): ApiJson<RoleBody>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    p.require(Perm::UsersAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.registry.tenant_exists(&tenant) {
        return Err(ApiError::not_found(format!("tenant {tenant} not found")));
    }
    let row = crate::store::registry::RoleRow {
        tenant: tenant.clone(),
        name: req.name.clone(),
        permissions: req.permissions.clone(),
        scope: req.scope.clone(),
        created_at: state.clock.now_us(),
    };
    crate::roles::RoleBook::validate(&row).map_err(role_error)?;
    // Nobody defines a role with more than they hold themselves.
    if let Some(missing) = req
        .permissions
        .iter()
        .filter_map(|s| Perm::parse(s))
        .find(|perm| !p.perms.contains(*perm))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            format!("a role cannot hold {}, which you lack", missing.as_str()),
        ));
    }
    state
        .registry
        .roles
        .put(state.registry.store(), row.clone())
        .await
        .map_err(role_error)?;
    tracing::info!(role = %req.name, tenant = %tenant, by = %p.name(), "role written");
    state
        .audit(
            &p,
            &tenant,
            "role.put",
            &req.name,
            serde_json::json!({"permissions": req.permissions, "scope": req.scope}),
        )
        .await;
    Ok((StatusCode::CREATED, Json(role_view(row))))
}

fn role_error(e: crate::roles::RoleError) -> ApiError {
    match e {
        crate::roles::RoleError::Invalid { field, rule } => ApiError::field(&field, &rule),
        crate::roles::RoleError::Store(s) => s.into(),
    }
}

/// The built-in roles and the tenant's own.
#[utoipa::path(get, path = "/api/v1/roles", tag = "roles", params(Paging),
    responses((status = 200, body = serde_json::Value), (status = 403)))]
pub async fn list_roles(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(Perm::UsersAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let mut value: Vec<RoleView> = crate::auth::BUILTIN_ROLES
        .iter()
        .map(|name| {
            let perms = crate::auth::role_perms(name).unwrap_or_default();
            RoleView {
                name: name.to_string(),
                permissions: crate::auth::Perm::ALL
                    .into_iter()
                    .filter(|x| perms.contains(*x))
                    .map(|x| x.as_str().to_string())
                    .collect(),
                scope: None,
                builtin: true,
            }
        })
        .collect();
    value.extend(
        state
            .registry
            .roles
            .list(&tenant)
            .into_iter()
            .map(role_view),
    );
    Ok(Json(serde_json::json!({"value": value, "next": null})))
}

#[utoipa::path(delete, path = "/api/v1/roles/{name}", tag = "roles", params(("name" = String, Path), Paging),
    responses((status = 204), (status = 404), (status = 409)))]
pub async fn delete_role(
    State(state): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::UsersAdmin)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if let Some(u) = state
        .registry
        .users_of(&tenant)
        .into_iter()
        .find(|u| u.roles.contains(&name))
    {
        return Err(ApiError::conflict(format!(
            "role {name} is held by user {}; change their roles first",
            u.username
        )));
    }
    if !state
        .registry
        .roles
        .delete(state.registry.store(), &tenant, &name)
        .await
        .map_err(role_error)?
    {
        return Err(ApiError::not_found(format!("role {name} not found")));
    }
    state
        .audit(&p, &tenant, "role.delete", &name, serde_json::json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A tenant with its quotas and what it uses of them.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantDetail {
    pub id: String,
    pub name: String,
    pub quotas: crate::quotas::TenantQuotas,
    pub usage: TenantUsage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantUsage {
    pub devices: usize,
    pub twins: usize,
    /// Points accepted today (UTC); counted while a daily quota is set.
    pub points_today: u64,
    pub storage_bytes: u64,
    pub mqtt_connections: u64,
}

fn tenant_detail(state: &AppState, id: &str) -> Result<TenantDetail, ApiError> {
    let t = state
        .registry
        .tenants()
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::not_found(format!("tenant {id} not found")))?;
    Ok(TenantDetail {
        usage: TenantUsage {
            devices: state.registry.device_count(id),
            twins: state.twins.read(id, |g| g.twins.len()),
            points_today: state.quotas.points_today(id),
            storage_bytes: state.quotas.storage_of(id),
            mqtt_connections: state.quotas.connections_of(id),
        },
        quotas: state.quotas.of(id),
        id: t.id,
        name: t.name,
    })
}

/// A tenant's quotas and usage: system admins for any tenant, tenant
/// admins (users:admin) for their own.
#[utoipa::path(get, path = "/api/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = TenantDetail), (status = 403), (status = 404)))]
pub async fn get_tenant(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<TenantDetail>, ApiError> {
    if !p.perms.contains(Perm::TenantsAdmin) {
        p.require(Perm::UsersAdmin)?;
        if id != p.tenant {
            return Err(ApiError::not_found(format!("tenant {id} not found")));
        }
    }
    Ok(Json(tenant_detail(&state, &id)?))
}

/// Sets a tenant's quotas (system admins). Absent fields are unlimited.
/// Lowering a quota below current use refuses new work; nothing already
/// accepted is removed.
#[utoipa::path(put, path = "/api/v1/tenants/{id}/quotas", tag = "tenants", params(("id" = String, Path)),
    request_body = crate::quotas::TenantQuotas,
    responses((status = 200, body = TenantDetail), (status = 400), (status = 403), (status = 404)))]
pub async fn put_quotas(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(q): ApiJson<crate::quotas::TenantQuotas>,
) -> Result<Json<TenantDetail>, ApiError> {
    p.require(Perm::TenantsAdmin)?;
    if !state.registry.tenant_exists(&id) {
        return Err(ApiError::not_found(format!("tenant {id} not found")));
    }
    if q.requests_per_second
        .is_some_and(|r| !(r > 0.0 && r.is_finite()))
    {
        return Err(ApiError::field(
            "requests_per_second",
            "must be a positive number",
        ));
    }
    state.quotas.set(&id, q.clone()).await?;
    tracing::info!(tenant = %id, by = %p.name(), "quotas set");
    state
        .audit(
            &p,
            &id,
            "tenant.quotas",
            &id,
            serde_json::to_value(&q).unwrap_or_default(),
        )
        .await;
    Ok(Json(tenant_detail(&state, &id)?))
}
