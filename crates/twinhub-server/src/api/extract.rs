//! Request extractors: the authenticated principal (bearer token), a
//! device's HTTP Basic credentials, JSON bodies whose errors name the
//! field, and list paging.

use super::error::ApiError;
use super::AppState;
use crate::api::error::Code;
use crate::auth::Principal;
use crate::registry::{Device, DeviceAuthError};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::sync::Arc;

fn too_many(wait: std::time::Duration) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError {
        retry_after: Some(secs),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::RateLimited,
            format!("too many requests; retry in {secs} s"),
        )
    }
}

/// The token of `Authorization: Bearer …`, or of `Token …` as InfluxDB
/// clients send an API key.
fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("Token "))
        .map(str::trim)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::unauthorized(
                "this endpoint needs a bearer token (POST /api/v1/auth/login)",
            ));
        };
        let p = state.registry.principal_for_token(token).ok_or_else(|| {
            state.metrics.auth_failures.add("token", 1);
            ApiError::unauthorized("the bearer token is invalid, expired or revoked")
        })?;
        let rl = &state.config.rate_limits;
        let rate = p
            .roles
            .iter()
            .filter_map(|r| rl.roles.get(r))
            .cloned()
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
            .unwrap_or(rl.requests_per_second);
        if let Some(rps) = state.quotas.of(&p.tenant).requests_per_second {
            if let Err(wait) = state.limiter.check(
                &format!("t:{}", p.tenant),
                rps,
                rps.max(1.0),
                state.clock.now_us(),
            ) {
                return Err(crate::quotas::QuotaExceeded {
                    tenant: p.tenant.clone(),
                    name: "requests_per_second",
                    limit: rps.to_string(),
                    retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                }
                .into());
            }
        }
        if let Err(wait) = state.limiter.check(
            &format!("p:{}:{}", p.tenant, p.name()),
            rate,
            rl.burst.max(rate),
            state.clock.now_us(),
        ) {
            return Err(too_many(wait));
        }
        Ok(p)
    }
}

/// A device authenticated with HTTP Basic (device id, device key).
pub struct DeviceCreds(pub Arc<Device>);

impl FromRequestParts<AppState> for DeviceCreds {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let creds = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let Some((id, key)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
            return Err(ApiError::unauthorized(
                "device telemetry needs HTTP Basic credentials: the device id and its key",
            ));
        };
        match state.registry.authenticate_device(id, key) {
            Ok(d) => {
                let rate = state.config.rate_limits.device_requests_per_second;
                if let Err(wait) =
                    state
                        .limiter
                        .check(&format!("d:{id}"), rate, rate * 2.0, state.clock.now_us())
                {
                    return Err(too_many(wait));
                }
                Ok(DeviceCreds(d))
            }
            Err(DeviceAuthError::BadCredentials) => {
                state.metrics.auth_failures.add("device", 1);
                tracing::info!(device = %id, "device authentication failed");
                Err(ApiError::unauthorized("bad device credentials"))
            }
            Err(DeviceAuthError::Disabled) => {
                state.metrics.auth_failures.add("device_disabled", 1);
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    Code::Forbidden,
                    "this device is disabled",
                ))
            }
        }
    }
}

/// A JSON body; a malformed body or a wrong field answers 400 naming the
/// field, an oversized one 413.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| body_error(e.status(), state.config.http.max_body))?;
        // The router's limit is the largest of any route (telemetry); JSON
        // API routes hold to their own.
        if bytes.len() > state.config.http.max_body {
            return Err(ApiError::too_large(state.config.http.max_body));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn body_error(status: StatusCode, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_request("could not read the request body")
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = strip_position(&inner.to_string());
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("body: {what}"))
        } else {
            ApiError::bad_request(format!("{path}: {what}"))
        }
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Page size (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next` token of the previous page.
    pub next: Option<String>,
    /// System admins only: act in this tenant.
    pub tenant: Option<String>,
}

impl Paging {
    /// One page of a list sorted by id: the items after `next` (at most
    /// `limit`) and the token of the page after, if any.
    pub fn page<'a, T>(
        &self,
        all: &'a [T],
        id: impl Fn(&T) -> &str,
    ) -> Result<(&'a [T], Option<String>), ApiError> {
        let limit = self.limit()?;
        let start = match &self.next {
            Some(after) => all
                .iter()
                .position(|r| id(r) > after.as_str())
                .unwrap_or(all.len()),
            None => 0,
        };
        let end = (start + limit).min(all.len());
        let next = (end < all.len() && end > start).then(|| id(&all[end - 1]).to_string());
        Ok((&all[start..end], next))
    }

    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=1000).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::field("limit", "must be between 1 and 1000")),
        }
    }
}

/// Query parameters; a bad one answers 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                ApiError::bad_request(format!("query parameter {path}: {}", e.into_inner()))
            })
    }
}

/// Checks a telemetry body's size, and tells whether a cluster replica
/// decoded it (it comes in the binary `content_type` with the replica's
/// signature, `forwarded::sign_body`, and may be a little larger than the
/// JSON it came from). That form from anyone else is refused, never read:
/// devices and clients send their own formats.
pub fn telemetry_body(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    content_type: &str,
) -> Result<bool, ApiError> {
    use crate::forwarded::{check_body, decoded_body_limit, now_ms, DECODED_HEADER};
    let limit = state.config.http.max_ingest_body;
    let decoded = headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == content_type.as_bytes());
    let max = if decoded {
        decoded_body_limit(limit)
    } else {
        limit
    };
    if body.len() > max {
        return Err(ApiError::too_large(limit));
    }
    if !decoded {
        return Ok(false);
    }
    let signed = match (&state.forward_key, headers.get(DECODED_HEADER)) {
        (Some(key), Some(sig)) => sig
            .to_str()
            .ok()
            .is_some_and(|sig| check_body(key, sig, body, now_ms()).is_ok()),
        _ => false,
    };
    if !signed {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            Code::BadRequest,
            format!("content-type: {content_type} is taken only from a member of this node's cluster, with its {DECODED_HEADER} signature"),
        ));
    }
    state.metrics.http_bodies_decoded_by_replica.inc();
    Ok(true)
}
