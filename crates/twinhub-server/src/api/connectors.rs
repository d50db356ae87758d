//! Inbound connectors: CRUD with status, and browsing a connected OPC UA
//! server's address space. The connectors themselves run in
//! `crate::connectors`.

use super::error::{ApiError, Code};
use super::extract::{ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::auth::{Perm, Principal};
use crate::connectors::{ConnectorError, ConnectorSpec};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

impl From<ConnectorError> for ApiError {
    fn from(e: ConnectorError) -> ApiError {
        match e {
            ConnectorError::Spec(s) => ApiError::field(&s.field, &s.rule),
            ConnectorError::Unresolved(s) => ApiError::invalid(&s.field, &s.rule),
            ConnectorError::NotFound(m) => ApiError::not_found(m),
            ConnectorError::Conflict(m) => ApiError::conflict(m),
            ConnectorError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::ServiceUnavailable, m)
            }
            ConnectorError::Store(s) => s.into(),
        }
    }
}

const SPEC_DOC: &str = "{id?, kind: opcua, enabled?, endpoint: opc.tcp://…, security?: {policy: None|Basic256Sha256, mode: None|Sign|SignAndEncrypt}, auth?: {user, password_secret}, trust?: {any?, certificates?: [base64 DER]}, publishing_interval?, sampling_interval?, nodes: [{node: ns=2;s=…, twin, property, mode?: read|write|read_write}]}";

/// Creates a connector; it starts connecting at once (when enabled).
#[utoipa::path(post, path = "/api/v1/connectors", tag = "connectors", params(Paging),
    request_body(content = Value, description = SPEC_DOC),
    responses((status = 201, body = Value), (status = 400), (status = 409), (status = 422)))]
pub async fn create_connector(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(spec): ApiJson<ConnectorSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::ConnectorsWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let (c, _) = state
        .connectors
        .put(&tenant, spec, None, &|t| state.twin_exists(&tenant, t))
        .await?;
    state
        .audit(
            &p,
            &tenant,
            "connector.create",
            &c.id,
            json!({"kind": c.spec.kind}),
        )
        .await;
    Ok((StatusCode::CREATED, Json(state.connectors.doc(&c))))
}

#[utoipa::path(get, path = "/api/v1/connectors", tag = "connectors", params(Paging),
    responses((status = 200, body = Value)))]
pub async fn list_connectors(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::ConnectorsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let all = state.connectors.list(&tenant);
    let (page, next) = q.page(&all, |c| &c.id)?;
    let page: Vec<Value> = page.iter().map(|c| state.connectors.doc(c)).collect();
    Ok(Json(json!({"value": page, "next": next})))
}

/// The connector with its status: `state` (starting, connecting,
/// connected, reconnecting, disconnected, disabled, error), `last_error`,
/// `points_in`, `rejected`, `dropped`, `monitored_items`, `failed_items`,
/// `writes`, `write_errors`; and `client_certificate` to trust on the
/// server.
#[utoipa::path(get, path = "/api/v1/connectors/{id}", tag = "connectors", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn get_connector(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::ConnectorsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let c = state
        .connectors
        .get(&tenant, &id)
        .ok_or_else(|| ApiError::not_found(format!("connector {id} not found")))?;
    Ok(Json(state.connectors.doc(&c)))
}

/// Creates (201) or replaces (200) a connector; a replaced one reconnects
/// with its new definition.
#[utoipa::path(put, path = "/api/v1/connectors/{id}", tag = "connectors", params(("id" = String, Path), Paging),
    request_body(content = Value, description = SPEC_DOC),
    responses((status = 200, body = Value), (status = 201, body = Value), (status = 400), (status = 422)))]
pub async fn put_connector(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(spec): ApiJson<ConnectorSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::ConnectorsWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let (c, replaced) = state
        .connectors
        .put(&tenant, spec, Some(&id), &|t| state.twin_exists(&tenant, t))
        .await?;
    let action = if replaced {
        "connector.update"
    } else {
        "connector.create"
    };
    state.audit(&p, &tenant, action, &id, json!({})).await;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(state.connectors.doc(&c))))
}

#[utoipa::path(delete, path = "/api/v1/connectors/{id}", tag = "connectors", params(("id" = String, Path), Paging),
    responses((status = 204), (status = 404)))]
pub async fn delete_connector(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::ConnectorsWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.connectors.delete(&tenant, &id).await? {
        return Err(ApiError::not_found(format!("connector {id} not found")));
    }
    state
        .audit(&p, &tenant, "connector.delete", &id, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BrowseQuery {
    /// The node whose children to list (default: the Objects folder).
    pub node: Option<String>,
    /// System admins: a connector of this tenant.
    pub tenant: Option<String>,
}

/// One level of the connected server's address space:
/// `{"node", "children": [{"node", "browse_name", "display_name",
/// "class"}], "more"}`; 503 while the connector is not connected.
#[utoipa::path(get, path = "/api/v1/connectors/{id}/browse", tag = "connectors", params(("id" = String, Path), BrowseQuery),
    responses((status = 200, body = Value), (status = 400), (status = 404), (status = 503)))]
pub async fn browse_connector(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BrowseQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::ConnectorsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    Ok(Json(
        state
            .connectors
            .browse(&tenant, &id, q.node.as_deref())
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UplinkQuery {
    /// ChirpStack's HTTP integration names the event (`up`; others are
    /// accepted and ignored).
    pub event: Option<String>,
    /// System admins: a connector of this tenant.
    pub tenant: Option<String>,
}

/// A LoRaWAN network server's uplink (The Things Stack's webhook, or
/// ChirpStack's HTTP integration): stored like the device's telemetry;
/// 204 once durable, 422 for an unknown device or a payload that cannot be
/// decoded (the connector's status counts it), 503 to send it again.
#[utoipa::path(post, path = "/api/v1/connectors/{id}/uplink", tag = "connectors", params(("id" = String, Path), UplinkQuery),
    request_body(content = Value, description = "The network server's uplink event JSON"),
    responses((status = 204), (status = 400), (status = 404), (status = 422), (status = 429), (status = 503)))]
pub async fn post_uplink(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<UplinkQuery>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::TelemetryWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if q.event.as_deref().is_some_and(|e| e != "up") {
        return Ok(StatusCode::NO_CONTENT);
    }
    use crate::connectors::lorawan::UplinkError;
    match state.connectors.uplink(&tenant, &id, &body).await? {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(UplinkError::Malformed(m)) => {
            let (field, rule) = m.split_once(": ").unwrap_or(("body", m.as_str()));
            Err(ApiError::field(field, rule))
        }
        Err(UplinkError::Invalid(m)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::UnprocessableEntity,
            m,
        )),
        Err(UplinkError::OverQuota(m)) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::QuotaExceeded,
            m,
        )),
        Err(UplinkError::RetryLater) => Err(ApiError::busy()),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Downlink {
    /// The twinhub device (it has sent an uplink through this connector).
    pub device: String,
    /// LoRaWAN port, 1–223.
    pub f_port: u8,
    /// The payload, base64 …
    #[serde(default)]
    pub data: Option<String>,
    /// … or hex.
    #[serde(default)]
    pub hex: Option<String>,
    #[serde(default)]
    pub confirmed: bool,
}

/// The bytes of a downlink: `data` (base64) or `hex`, one of them.
pub fn payload_of(d: &Downlink) -> Result<Vec<u8>, ApiError> {
    match (&d.data, &d.hex) {
        (Some(b), None) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| ApiError::field("data", "must be base64"))
        }
        (None, Some(h)) => {
            let h = h.trim();
            if h.len() % 2 != 0 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(ApiError::field(
                    "hex",
                    "must be an even number of hex digits",
                ));
            }
            Ok((0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex checked"))
                .collect())
        }
        _ => Err(ApiError::field(
            "data",
            "give the payload as data (base64) or hex, one of them",
        )),
    }
}

/// Sends a downlink and maps its failure to an answer.
pub async fn send_downlink(
    state: &AppState,
    tenant: &str,
    connector: &str,
    d: &Downlink,
) -> Result<(), ApiError> {
    let data = payload_of(d)?;
    match state
        .connectors
        .downlink(tenant, connector, &d.device, d.f_port, &data, d.confirmed)
        .await?
    {
        Ok(()) => Ok(()),
        Err(m)
            if [
                "f_port:",
                "device:",
                "broker:",
                "api_url:",
                "api_key_secret:",
            ]
            .iter()
            .any(|p| m.starts_with(p)) =>
        {
            let (field, rule) = m.split_once(": ").unwrap_or(("device", m.as_str()));
            Err(ApiError::invalid(field, rule))
        }
        Err(m) => Err(ApiError::new(StatusCode::BAD_GATEWAY, Code::BadGateway, m)),
    }
}

/// Queues a downlink with the network server (ChirpStack through its MQTT
/// integration, The Things Stack through its webhook API); 202 once the
/// network server took it.
#[utoipa::path(post, path = "/api/v1/connectors/{id}/downlink", tag = "connectors", params(("id" = String, Path), Paging),
    request_body = Downlink,
    responses((status = 202, body = Value), (status = 400), (status = 404), (status = 422), (status = 502)))]
pub async fn post_downlink(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(d): ApiJson<Downlink>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::CommandsSend)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    send_downlink(&state, &tenant, &id, &d).await?;
    state
        .audit(
            &p,
            &tenant,
            "connector.downlink",
            &id,
            json!({"device": d.device, "f_port": d.f_port}),
        )
        .await;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": true}))))
}
