//! Routes (outbound): CRUD, pause/resume, a test event, and dead letters
//! (list and replay). The delivery itself is `crate::routes`.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::auth::{Perm, Principal};
use crate::routes::{RouteError, RouteSpec};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        match e {
            RouteError::Spec(s) if s.status == 422 => ApiError::invalid(&s.field, &s.rule),
            RouteError::Spec(s) => ApiError::field(&s.field, &s.rule),
            RouteError::NotFound(m) => ApiError::not_found(m),
            RouteError::Conflict(m) => ApiError::conflict(m),
            RouteError::Store(s) => s.into(),
        }
    }
}

const SPEC_DOC: &str = "{id?, select: {types?: [telemetry|twin|relationship|alarm|presence|rule], twin?|model?|query?, condition?, functions?}, sink: {kind: webhook|mqtt|nats|postgres|function, …}, fallback?: {sink}, template?, batch?: {max, linger}, retry?: {initial, max_backoff, max_attempts, circuit_after, open_for, fallback_after}, on_full?: block|drop_oldest, max_backlog?, paused?}";

/// Creates a route: from now on every committed event it selects is
/// delivered to its sink.
#[utoipa::path(post, path = "/api/v1/routes", tag = "routes", params(Paging),
    request_body(content = Value, description = SPEC_DOC),
    responses((status = 201, body = Value), (status = 400), (status = 409), (status = 422)))]
pub async fn create_route(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(spec): ApiJson<RouteSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::RoutesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let route = state.routes.put(&tenant, spec, None).await?;
    let doc = state.routes.doc(&route);
    state
        .audit(&p, &tenant, "route.create", &route.id, json!({}))
        .await;
    Ok((StatusCode::CREATED, Json(doc)))
}

#[utoipa::path(get, path = "/api/v1/routes", tag = "routes", params(Paging),
    responses((status = 200, body = Value)))]
pub async fn list_routes(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RoutesRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let all = state.routes.list(&tenant);
    let (page, next) = q.page(&all, |r| &r.id)?;
    let page: Vec<Value> = page.iter().map(|r| state.routes.doc(r)).collect();
    Ok(Json(json!({"value": page, "next": next})))
}

/// The route with its status: `ok|retrying|open|paused`, lag, delivered,
/// retried, dead-lettered, last error.
#[utoipa::path(get, path = "/api/v1/routes/{id}", tag = "routes", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn get_route(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RoutesRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let r = state
        .routes
        .get(&tenant, &id)
        .ok_or_else(|| ApiError::not_found(format!("route {id} not found")))?;
    Ok(Json(state.routes.doc(&r)))
}

/// Creates (201) or replaces (200, a new version) a route; a replaced
/// route resumes from where it was.
#[utoipa::path(put, path = "/api/v1/routes/{id}", tag = "routes", params(("id" = String, Path), Paging),
    request_body(content = Value, description = SPEC_DOC),
    responses((status = 200, body = Value), (status = 201, body = Value), (status = 400), (status = 422)))]
pub async fn put_route(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(mut spec): ApiJson<RouteSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::RoutesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let exists = state.routes.get(&tenant, &id).is_some();
    let route = if exists {
        state.routes.put(&tenant, spec, Some(&id)).await?
    } else {
        if spec.id.as_deref().is_some_and(|given| given != id) {
            return Err(ApiError::field("id", "differs from the id in the path"));
        }
        spec.id = Some(id.clone());
        state.routes.put(&tenant, spec, None).await?
    };
    let action = if exists {
        "route.update"
    } else {
        "route.create"
    };
    state.audit(&p, &tenant, action, &id, json!({})).await;
    let status = if exists {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(state.routes.doc(&route))))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutePatch {
    /// Pause (events queue up, nothing is sent) or resume.
    pub paused: bool,
}

#[utoipa::path(patch, path = "/api/v1/routes/{id}", tag = "routes", params(("id" = String, Path), Paging),
    request_body = RoutePatch, responses((status = 200, body = Value), (status = 400), (status = 404)))]
pub async fn patch_route(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(patch): ApiJson<RoutePatch>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RoutesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let route = state.routes.set_paused(&tenant, &id, patch.paused).await?;
    let action = if patch.paused {
        "route.pause"
    } else {
        "route.resume"
    };
    state.audit(&p, &tenant, action, &id, json!({})).await;
    Ok(Json(state.routes.doc(&route)))
}

#[utoipa::path(delete, path = "/api/v1/routes/{id}", tag = "routes", params(("id" = String, Path), Paging),
    responses((status = 204), (status = 404)))]
pub async fn delete_route(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::RoutesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.routes.delete(&tenant, &id).await? {
        return Err(ApiError::not_found(format!("route {id} not found")));
    }
    state
        .audit(&p, &tenant, "route.delete", &id, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends one test event straight to the sink (not queued, not retried)
/// and answers what happened: `{"delivered": true, "event"}` or
/// `{"delivered": false, "error"}`.
#[utoipa::path(post, path = "/api/v1/routes/{id}/test", tag = "routes", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn test_route(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RoutesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    Ok(Json(match state.routes.test(&tenant, &id).await? {
        Ok(event) => json!({"delivered": true, "event": event}),
        Err(error) => json!({"delivered": false, "error": error}),
    }))
}

/// Events the route gave up on, oldest first: `{"value": [{"seq",
/// "event_id", "at", "attempts", "error", "event"}], "next"}`.
#[utoipa::path(get, path = "/api/v1/routes/{id}/deadletters", tag = "routes", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RoutesRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let limit = q.limit()?;
    let after = match &q.next {
        None => 0,
        Some(n) => n
            .parse::<i64>()
            .map_err(|_| ApiError::field("next", "is not a token this server issued"))?,
    };
    let letters = state.routes.dead_letters(&tenant, &id, after, limit + 1)?;
    let more = letters.len() > limit;
    let page: Vec<Value> = letters
        .iter()
        .take(limit)
        .map(|l| {
            json!({
                "seq": l.seq,
                "event_id": l.event_id.to_string(),
                "at": twinhub_model::time::to_epoch_ms_json(l.at),
                "attempts": l.attempts,
                "error": l.error,
                "event": serde_json::from_str::<Value>(&l.body).unwrap_or(Value::Null),
            })
        })
        .collect();
    let next = more.then(|| letters[limit - 1].seq.to_string());
    Ok(Json(json!({"value": page, "next": next})))
}

/// Sends the dead letters again (in the background, oldest first); those
/// delivered leave the list.
#[utoipa::path(post, path = "/api/v1/routes/{id}/deadletters/replay", tag = "routes", params(("id" = String, Path), Paging),
    responses((status = 202, body = Value), (status = 404)))]
pub async fn replay_dead_letters(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::RoutesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    state.routes.replay(&tenant, &id)?;
    state
        .audit(&p, &tenant, "route.replay", &id, json!({}))
        .await;
    Ok((StatusCode::ACCEPTED, Json(json!({"replaying": true}))))
}
