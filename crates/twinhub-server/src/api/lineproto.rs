//! InfluxDB line protocol over HTTP, as Influx clients and Telegraf send
//! it: `POST /api/v2/write?bucket=&precision=` and the 1.x `POST
//! /write?db=&precision=`, authenticated with an API key (or token) as
//! `Authorization: Token …` (or `Bearer`, or for 1.x clients `?p=` /
//! HTTP Basic with the key as password). The `twin` tag (else the
//! measurement) names the twin, fields are its properties; 204 once every
//! point is durable. The bucket or database names nothing in twinhub (the
//! tenant is the caller's); it is accepted for the clients' sake.

use super::error::ApiError;
use super::AppState;
use crate::auth::{Perm, Principal};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use serde::Deserialize;
use twinhub_codec::Precision;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteQuery {
    /// v2: the bucket (accepted, not used).
    pub bucket: Option<String>,
    /// v2: the organisation (accepted, not used).
    pub org: Option<String>,
    /// v1: the database (accepted, not used).
    pub db: Option<String>,
    /// Timestamp unit: ns (default), us, ms, s (v1 also n, u, m, h).
    pub precision: Option<String>,
    /// The tag that names the twin (default `twin`).
    pub twin_tag: Option<String>,
    /// v1: user (ignored) and password (an API key).
    pub u: Option<String>,
    pub p: Option<String>,
    /// System admins: write in this tenant.
    pub tenant: Option<String>,
}

/// The caller: the usual bearer/Token header, else a 1.x client's key as
/// `?p=` or as the HTTP Basic password.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    q: &WriteQuery,
) -> Result<Principal, ApiError> {
    let mut req = axum::http::Request::new(());
    *req.headers_mut() = headers.clone();
    let key = q.p.clone().or_else(|| {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let raw = v.strip_prefix("Basic ")?;
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':').map(|(_, pw)| pw.to_string())
    });
    if let Some(k) = key {
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {k}")
                .parse()
                .map_err(|_| ApiError::unauthorized("the key is not a valid header value"))?,
        );
    }
    let (mut parts, ()): (Parts, ()) = req.into_parts();
    Principal::from_request_parts(&mut parts, state).await
}

async fn write(
    state: AppState,
    headers: HeaderMap,
    q: WriteQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let p = caller(&state, &headers, &q).await?;
    if !p.holds_somewhere(Perm::TelemetryWrite) {
        p.require(Perm::TelemetryWrite)?;
    }
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(ApiError::field(
            "Content-Encoding",
            "is not supported: send the body uncompressed (Telegraf: content_encoding = \"identity\")",
        ));
    }
    let precision = Precision::of_query(q.precision.as_deref()).ok_or_else(|| {
        ApiError::field(
            "precision",
            "must be ns, us, ms or s (v1: n, u, ms, s, m, h)",
        )
    })?;
    let limit = state.config.http.max_ingest_body;
    let body = body.map_err(|e| super::extract::body_error(e.status(), limit))?;
    let lines_type = crate::forwarded::DECODED_LINES_TYPE;
    let decoded = super::extract::telemetry_body(&state, &headers, &body, lines_type)?;
    let twin_tag = q
        .twin_tag
        .as_deref()
        .unwrap_or(twinhub_codec::lineproto::DEFAULT_TWIN_TAG);
    let limits = &state.decode_limits;
    let batches = if decoded {
        twinhub_codec::decode_wire_batches(&body, limits)
    } else {
        twinhub_codec::decode_line_protocol(&body, precision, twin_tag, limits)
    }
    .inspect_err(|_| state.metrics.refused("line", "invalid"))?;
    // Every twin must exist and be writable by the caller before anything
    // is stored.
    for b in &batches {
        if !state.twin_exists(&tenant, &b.twin) {
            state.metrics.refused("line", "invalid");
            return Err(ApiError::invalid(
                "twin",
                &format!(
                    "{} does not exist (create the twin or a device for it first; the {twin_tag} tag, else the measurement, names it)",
                    b.twin
                ),
            ));
        }
        state.authorize_twin(&p, Perm::TelemetryWrite, &tenant, &b.twin)?;
    }
    crate::ingest::lineproto::store(&state.pipeline, &tenant, batches, state.queue_wait).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// InfluxDB 2.x write: line protocol; 204 once durable.
#[utoipa::path(post, path = "/api/v2/write", tag = "telemetry", params(WriteQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "InfluxDB line protocol text (any content type is read; Influx clients send text/plain)"),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 413), (status = 422), (status = 503)))]
pub async fn write_v2(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    write(state, headers, q, body).await
}

/// InfluxDB 1.x write: line protocol; 204 once durable.
#[utoipa::path(post, path = "/write", tag = "telemetry", params(WriteQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "InfluxDB line protocol text (any content type is read; Influx clients send text/plain)"),
    responses((status = 204), (status = 400), (status = 401), (status = 403), (status = 413), (status = 422), (status = 503)))]
pub async fn write_v1(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    write(state, headers, q, body).await
}
