//! Device registry endpoints and HTTP telemetry ingest.

use super::error::ApiError;
use super::extract::{body_error, ApiJson, ApiQuery, DeviceCreds, Paging};
use super::{rfc3339_opt, AppState};
use crate::api::error::Code;
use crate::auth::{Perm, Principal};
use crate::registry::Device;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::atomic::Ordering;
use twinhub_model::time::format_rfc3339;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    /// Unique across the system: it is the MQTT client id and user name.
    /// 1–128 letters, digits and - _ . : (not starting with '.').
    #[schema(pattern = r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$")]
    pub id: String,
    /// The twin this device's telemetry updates; its own id when absent.
    #[schema(pattern = r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$")]
    pub twin_id: Option<String>,
    /// For a modelled twin: `reject` (default) telemetry names its model
    /// lacks, or `record` them without validation.
    #[schema(pattern = r"^(reject|record)$")]
    pub unknown_telemetry: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    pub twin_id: Option<String>,
    pub enabled: bool,
    pub created_at: String,
    pub last_seen: Option<String>,
    /// False once the device has been silent for `devices.inactivity_timeout`.
    pub active: bool,
    /// Holds an MQTT connection right now.
    pub connected: bool,
    pub unknown_telemetry: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceCreated {
    #[serde(flatten)]
    pub device: DeviceView,
    /// The device key: shown only in this answer.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub value: Vec<DeviceView>,
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchDevice {
    pub enabled: Option<bool>,
    /// A twin id, or null to make the device update its own twin again.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub twin_id: Option<Option<String>>,
    #[schema(pattern = r"^(reject|record)$")]
    pub unknown_telemetry: Option<String>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestReceipt {
    pub messages: usize,
    pub points: usize,
}

pub fn view(d: &Device) -> DeviceView {
    let seen = d.last_seen.load(Ordering::Relaxed);
    DeviceView {
        id: d.row.id.clone(),
        twin_id: d.row.twin_id.clone(),
        enabled: d.row.enabled,
        created_at: format_rfc3339(d.row.created_at),
        last_seen: rfc3339_opt((seen > 0).then_some(seen)),
        active: d.active.load(Ordering::Relaxed),
        connected: d.connected.load(Ordering::Relaxed),
        unknown_telemetry: d.row.unknown_telemetry.clone(),
    }
}

fn scope(state: &AppState, p: &Principal, tenant: Option<&str>) -> Result<String, ApiError> {
    let t = p.tenant_scope(tenant);
    if !state.registry.tenant_exists(&t) {
        return Err(ApiError::not_found(format!("tenant {t} not found")));
    }
    Ok(t)
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices",
    request_body = CreateDevice,
    params(("tenant" = Option<String>, Query, description = "System admins: act in this tenant")),
    responses((status = 201, body = DeviceCreated), (status = 400), (status = 401), (status = 403), (status = 409)))]
pub async fn create_device(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(req): ApiJson<CreateDevice>,
) -> Result<(StatusCode, Json<DeviceCreated>), ApiError> {
    p.require(Perm::DevicesAdmin)?;
    let tenant = scope(&state, &p, q.tenant.as_deref())?;
    state
        .quotas
        .check_devices(&tenant, state.registry.device_count(&tenant))?;
    let (dev, key) = state
        .registry
        .create_device_with(
            &tenant,
            &req.id,
            req.twin_id,
            req.unknown_telemetry.as_deref().unwrap_or("reject"),
        )
        .await?;
    tracing::info!(device = %dev.row.id, tenant = %tenant, by = %p.name(), "device created");
    state
        .audit(
            &p,
            &tenant,
            "device.create",
            &dev.row.id,
            serde_json::json!({"twin_id": dev.row.twin_id}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(DeviceCreated {
            device: view(&dev),
            key,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    params(Paging),
    responses((status = 200, body = DeviceList), (status = 401), (status = 403)))]
pub async fn list_devices(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<DeviceList>, ApiError> {
    p.require(Perm::DevicesRead)?;
    let tenant = scope(&state, &p, q.tenant.as_deref())?;
    let limit = q.limit()?;
    let mut devs = state
        .registry
        .devices_of(&tenant, q.next.as_deref(), limit + 1);
    let next = if devs.len() > limit {
        devs.truncate(limit);
        devs.last().map(|d| d.row.id.clone())
    } else {
        None
    };
    Ok(Json(DeviceList {
        value: devs.iter().map(|d| view(d)).collect(),
        next,
    }))
}

fn find(
    state: &AppState,
    p: &Principal,
    tenant: Option<&str>,
    id: &str,
) -> Result<std::sync::Arc<Device>, ApiError> {
    let tenant = p.tenant_scope(tenant);
    state
        .registry
        .device_in(&tenant, id)
        .ok_or_else(|| ApiError::not_found(format!("device {id} not found")))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path), ("tenant" = Option<String>, Query)),
    responses((status = 200, body = DeviceView), (status = 404)))]
pub async fn get_device(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<DeviceView>, ApiError> {
    p.require(Perm::DevicesRead)?;
    let dev = find(&state, &p, q.tenant.as_deref(), &id)?;
    Ok(Json(view(&dev)))
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path), ("tenant" = Option<String>, Query)),
    request_body = PatchDevice,
    responses((status = 200, body = DeviceView), (status = 400), (status = 404)))]
pub async fn patch_device(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(req): ApiJson<PatchDevice>,
) -> Result<Json<DeviceView>, ApiError> {
    p.require(Perm::DevicesAdmin)?;
    let dev = find(&state, &p, q.tenant.as_deref(), &id)?;
    let dev = state
        .registry
        .update_device(&dev, req.enabled, req.twin_id, req.unknown_telemetry)
        .await?;
    tracing::info!(device = %id, enabled = dev.row.enabled, by = %p.name(), "device updated");
    state.audit(&p, &dev.row.tenant, "device.update", &id, serde_json::json!({"enabled": dev.row.enabled, "twin_id": dev.row.twin_id, "unknown_telemetry": dev.row.unknown_telemetry})).await;
    Ok(Json(view(&dev)))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working ("0s" to "30d"; default "0s":
    /// the old key stops at once).
    pub overlap: Option<String>,
}

/// Issues a new device key (shown once). With an overlap the old key
/// keeps working until the device has switched.
#[utoipa::path(post, path = "/api/v1/devices/{id}/key", tag = "devices",
    params(("id" = String, Path), ("tenant" = Option<String>, Query)),
    request_body = RotateKey,
    responses((status = 200, body = serde_json::Value, description = "{\"id\",\"key\",\"previous_key_valid_until\"}"), (status = 400), (status = 404)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(req): ApiJson<RotateKey>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(Perm::DevicesAdmin)?;
    let dev = find(&state, &p, q.tenant.as_deref(), &id)?;
    let overlap = match req.overlap.as_deref() {
        None => 0,
        Some(o) => twinhub_model::time::parse_duration(o)
            .map_err(|rule| ApiError::field("overlap", rule))?,
    };
    if !(0..=30 * 86_400_000_000).contains(&overlap) {
        return Err(ApiError::field("overlap", "must be between 0s and 30d"));
    }
    let (dev, key) = state.registry.rotate_device_key(&dev, overlap).await?;
    tracing::info!(device = %id, by = %p.name(), "device key rotated");
    state
        .audit(
            &p,
            &dev.row.tenant,
            "device.rotate_key",
            &id,
            serde_json::json!({"overlap": req.overlap}),
        )
        .await;
    Ok(Json(serde_json::json!({
        "id": id,
        "key": key,
        "previous_key_valid_until": dev.row.previous_key_until.map(twinhub_model::time::format_rfc3339),
    })))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path), ("tenant" = Option<String>, Query)),
    responses((status = 204), (status = 404)))]
pub async fn delete_device(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::DevicesAdmin)?;
    find(&state, &p, q.tenant.as_deref(), &id)?;
    state.registry.delete_device(&id).await?;
    tracing::info!(device = %id, by = %p.name(), "device deleted");
    state
        .audit(
            &p,
            &p.tenant_scope(q.tenant.as_deref()),
            "device.delete",
            &id,
            serde_json::json!({}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A device posts telemetry: one JSON object or an array of them. The
/// answer comes only after every point is durable.
#[utoipa::path(post, path = "/api/v1/devices/{id}/telemetry", tag = "telemetry",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, description = "{\"temperature\": 351.2, \"ts\": \"2026-01-01T00:00:00Z\"} or an array of such objects"),
    responses((status = 200, body = IngestReceipt), (status = 400), (status = 401), (status = 403), (status = 413), (status = 422), (status = 503)),
    security(("device_basic" = [])))]
pub async fn post_telemetry(
    State(state): State<AppState>,
    DeviceCreds(dev): DeviceCreds,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestReceipt>, ApiError> {
    if dev.row.id != id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Code::Forbidden,
            "a device may post only its own telemetry",
        ));
    }
    let limit = state.config.http.max_ingest_body;
    let body = body.map_err(|e| body_error(e.status(), limit))?;
    let decoded = crate::forwarded::DECODED_TYPE;
    let wire = super::extract::telemetry_body(&state, &headers, &body, decoded)?;
    use crate::ingest::http::Encoding;
    let encoding = if wire { Encoding::Wire } else { Encoding::Json };
    let r = crate::ingest::http::store(
        &state.pipeline,
        &state.metrics,
        &state.decode_limits,
        &dev,
        (&body, encoding),
        state.queue_wait,
    )
    .await?;
    Ok(Json(IngestReceipt {
        messages: r.messages,
        points: r.points,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandQuery {
    /// How long to wait for the device's reply (default 10s, at most 5m).
    pub timeout: Option<String>,
    pub tenant: Option<String>,
}

/// Sends a command to a connected device over MQTT
/// (`devices/{id}/commands/{name}/{requestId}`, with MQTT 5 response topic
/// and correlation data) and answers with the device's reply from
/// `devices/{id}/replies/{requestId}`.
#[utoipa::path(post, path = "/api/v1/devices/{id}/commands/{name}", tag = "devices",
    params(("id" = String, Path), ("name" = String, Path), CommandQuery),
    request_body(content = serde_json::Value, description = "The command's arguments (any JSON)"),
    responses((status = 200, body = serde_json::Value, description = "The device's reply, e.g. {\"status\":200,\"payload\":…}"),
        (status = 404), (status = 409, description = "The device is not connected"), (status = 502), (status = 504)))]
pub async fn send_command(
    State(state): State<AppState>,
    p: Principal,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !p.holds_somewhere(Perm::CommandsSend) {
        p.require(Perm::CommandsSend)?;
    }
    let dev = find(&state, &p, q.tenant.as_deref(), &id)?;
    // Scoped operators command the devices of the twins in their scope.
    state
        .authorize_twin(&p, Perm::CommandsSend, &dev.row.tenant, dev.twin())
        .map_err(|e| match e.status {
            StatusCode::NOT_FOUND => ApiError::not_found(format!("device {id} not found")),
            _ => e,
        })?;
    twinhub_model::ids::check_property_name(&name).map_err(|rule| ApiError::field("name", rule))?;
    let wait = match q.timeout.as_deref() {
        None => 10_000_000,
        Some(t) => twinhub_model::time::parse_duration(t)
            .map_err(|rule| ApiError::field("timeout", rule))?,
    };
    if wait > 300_000_000 {
        return Err(ApiError::field("timeout", "must be at most 5m"));
    }
    // LoRaWAN devices take commands as downlinks through the connector
    // their uplinks came by: {"f_port", "data" | "hex", "confirmed"?}.
    if let Some(connector) = state.connectors.lorawan_of_device(&dev.row.tenant, &id) {
        let mut args = body.clone();
        if let Some(o) = args.as_object_mut() {
            o.insert("device".into(), serde_json::json!(id));
        }
        let d: super::connectors::Downlink = serde_json::from_value(args).map_err(|e| {
            ApiError::field(
                "body",
                &format!("a LoRaWAN command is {{f_port, data | hex, confirmed?}}: {e}"),
            )
        })?;
        super::connectors::send_downlink(&state, &dev.row.tenant, &connector, &d).await?;
        state
            .audit(
                &p,
                &dev.row.tenant,
                "command.send",
                &id,
                serde_json::json!({"command": name, "lorawan": connector}),
            )
            .await;
        return Ok(Json(
            serde_json::json!({"status": 202, "sent": format!("downlink via {connector}")}),
        ));
    }
    let broker = state.broker().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::ServiceUnavailable,
            "MQTT is disabled on this server",
        )
    })?;
    // Sparkplug nodes and devices take commands as NCMD / DCMD (no reply).
    if let Some((_, edge, _)) = broker.sparkplug_target(&dev.row.tenant, &id) {
        if !broker.device_session(&edge).is_some_and(|s| s.connected()) {
            return Err(ApiError::conflict(format!(
                "edge node {edge} is not connected"
            )));
        }
        let topic = broker
            .sparkplug_command(&dev.row.tenant, &id, &name, &body)
            .unwrap_or_else(|| Err("not a Sparkplug device".into()))
            .map_err(|rule| ApiError::field("body", &rule))?;
        state
            .audit(
                &p,
                &dev.row.tenant,
                "command.send",
                &id,
                serde_json::json!({"command": name, "sparkplug": topic}),
            )
            .await;
        return Ok(Json(serde_json::json!({"status": 202, "sent": topic})));
    }
    if !broker.device_session(&id).is_some_and(|s| s.connected()) {
        return Err(ApiError::conflict(format!("device {id} is not connected")));
    }
    let (request_id, reply) = broker.send_command(
        &dev.row.tenant,
        &id,
        &name,
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    );
    tracing::info!(device = %id, command = %name, by = %p.name(), "command sent");
    state
        .audit(
            &p,
            &dev.row.tenant,
            "command.send",
            &id,
            serde_json::json!({"command": name, "request_id": request_id}),
        )
        .await;
    match tokio::time::timeout(std::time::Duration::from_micros(wait as u64), reply).await {
        Ok(Ok(payload)) => serde_json::from_slice(&payload).map(Json).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                Code::BadGateway,
                "the device replied with something other than JSON",
            )
        }),
        _ => {
            broker.forget_reply(&request_id);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                Code::GatewayTimeout,
                format!("device {id} did not reply within the timeout"),
            ))
        }
    }
}

impl From<crate::ingest::layouts::PutError> for ApiError {
    fn from(e: crate::ingest::layouts::PutError) -> ApiError {
        match e {
            crate::ingest::layouts::PutError::Invalid(d) if d.field == "layout" => {
                ApiError::field(&d.field, &d.rule)
            }
            crate::ingest::layouts::PutError::Invalid(d) => ApiError::invalid(&d.field, &d.rule),
            crate::ingest::layouts::PutError::Store(s) => s.into(),
        }
    }
}

/// Declares how the device packs its raw frames (UDP): `{"fields": [{"name",
/// "type": "u8…u64|i8…i64|f32|f64|bool", "offset", "endian"?, "scale"?,
/// "add"?, "bit"?, "unit"?}], "timestamp"?: {"type": "u32|u64", "offset",
/// "unit": "s|ms"}}`. A field that breaks a rule answers 422 naming it.
#[utoipa::path(put, path = "/api/v1/devices/{id}/layout", tag = "devices",
    params(("id" = String, Path), ("tenant" = Option<String>, Query)),
    request_body(content = serde_json::Value, description = "The binary layout"),
    responses((status = 200, body = serde_json::Value), (status = 400), (status = 404), (status = 422)))]
pub async fn put_layout(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(Perm::DevicesAdmin)?;
    let dev = find(&state, &p, q.tenant.as_deref(), &id)?;
    state
        .layouts
        .put(&dev.row.tenant, &dev.row.id, &body)
        .await?;
    state
        .audit(
            &p,
            &dev.row.tenant,
            "device.layout",
            &id,
            serde_json::json!({}),
        )
        .await;
    let declared = state
        .layouts
        .declared(&dev.row.tenant, &dev.row.id)
        .unwrap_or_default();
    Ok(Json(serde_json::from_str(&declared).unwrap_or_default()))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/layout", tag = "devices",
    params(("id" = String, Path), ("tenant" = Option<String>, Query)),
    responses((status = 200, body = serde_json::Value), (status = 404)))]
pub async fn get_layout(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.require(Perm::DevicesRead)?;
    let dev = find(&state, &p, q.tenant.as_deref(), &id)?;
    let declared = state
        .layouts
        .declared(&dev.row.tenant, &dev.row.id)
        .ok_or_else(|| ApiError::not_found(format!("device {id} has no layout")))?;
    Ok(Json(serde_json::from_str(&declared).unwrap_or_default()))
}
