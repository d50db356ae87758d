//! The HTTP API under `/api/v1` plus the operational endpoints. Handlers
//! take the `Principal` as an argument (authorisation happens through it
//! alone), answer JSON, and fail with `ApiError`. The OpenAPI document is
//! generated from the handlers' annotations.
//!
//! May call: `ingest` (the device endpoint), `registry`, `pipeline`,
//! `store` (reads and deletions),
//! `events`, `auth`, `audit`, `roles`, `secrets`, `quotas`, `twins`, `ml`,
//! `rules` (rules and alarms), `routes` (outbound delivery), `connectors`
//! (inbound sources), `web` (the
//! dashboard's files),
//! `mqtt` (commands, the WebSocket transport), `metrics`, `clock`,
//! `config`, `tls` (the peer address of HTTPS requests), `forwarded` (the
//! signature of a body a cluster replica decoded). Nothing below the API
//! calls it.

pub mod access;
pub mod audit;
mod auth;
pub mod connectors;
pub mod devices;
pub mod error;
pub mod events;
pub mod extract;
pub mod graph;
pub mod layouts;
pub mod lineproto;
pub mod ml;
mod openapi;
pub mod ops;
pub mod routes;
pub mod rules;
pub mod scope;
pub mod secrets;
pub mod twins;

use crate::api::error::Code;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::events::EventBus;
use crate::metrics::ServerMetrics;
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use error::ApiError;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use twinhub_codec::Limits;
use twinhub_model::time::format_rfc3339;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub struct AppInner {
    pub config: Config,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub pipeline: Arc<Pipeline>,
    pub events: Arc<EventBus>,
    pub metrics: Arc<ServerMetrics>,
    pub clock: SharedClock,
    pub ready: AtomicBool,
    /// Flips to true when the server is shutting down; long-lived streams
    /// end on it.
    pub shutdown: watch::Receiver<bool>,
    pub decode_limits: Limits,
    /// `Config::forward_key`, derived once: checks the signature of
    /// bodies a cluster replica decoded.
    pub forward_key: Option<crate::forwarded::Key>,
    pub queue_wait: Duration,
    /// The MQTT broker when the listener is enabled.
    pub mqtt: std::sync::RwLock<Option<Arc<crate::mqtt::Broker>>>,
    pub twins: Arc<crate::twins::TwinGraphs>,
    pub audit: crate::audit::AuditLog,
    pub limiter: crate::auth::ratelimit::RateLimiter,
    pub quotas: Arc<crate::quotas::Quotas>,
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub ml: Arc<crate::ml::MlModels>,
    pub bindings: Arc<crate::ml::bindings::Bindings>,
    pub rules: Arc<crate::rules::RuleBook>,
    pub alarms: Arc<crate::rules::alarms::Alarms>,
    pub routes: Arc<crate::routes::RouteBook>,
    pub connectors: Arc<crate::connectors::ConnectorBook>,
    /// Binary layouts of devices sending raw frames.
    pub layouts: Arc<crate::ingest::frames::Layouts>,
    /// The bound addresses (as in ports.json), once the server is ready.
    pub listeners: std::sync::OnceLock<serde_json::Value>,
}

#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Who an audit entry names for a principal.
fn actor_of(p: &crate::auth::Principal) -> String {
    match &p.kind {
        crate::auth::PrincipalKind::User(u) => format!("user:{u}"),
        crate::auth::PrincipalKind::ApiKey(k) => format!("apikey:{k}"),
        crate::auth::PrincipalKind::Device(d) => format!("device:{d}"),
        crate::auth::PrincipalKind::Local => "cli:local".to_string(),
    }
}

impl AppInner {
    /// The audit entry for a change, to commit with it (see
    /// `AuditLog::entry`).
    pub fn audit_entry(
        &self,
        p: &crate::auth::Principal,
        tenant: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> crate::store::AlsoWrite {
        Box::new(
            self.audit
                .entry(tenant, &actor_of(p), action, target, detail),
        )
    }

    /// Appends to the audit chain of `tenant`; a failure is logged (the
    /// action itself already happened).
    pub async fn audit(
        &self,
        p: &crate::auth::Principal,
        tenant: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) {
        let actor = actor_of(p);
        if let Err(e) = self
            .audit
            .record(tenant, &actor, action, target, detail)
            .await
        {
            tracing::error!(error = %e, action, "could not append to the audit log");
        }
    }

    pub fn broker(&self) -> Option<Arc<crate::mqtt::Broker>> {
        self.mqtt.read().expect("mqtt").clone()
    }

    pub fn mqtt_connections(&self) -> usize {
        self.broker()
            .map(|b| {
                b.metrics
                    .connections
                    .load(std::sync::atomic::Ordering::SeqCst)
            })
            .unwrap_or(0)
    }

    /// A twin exists once it was created, a device is bound to it, or it
    /// has history.
    pub fn twin_exists(&self, tenant: &str, id: &str) -> bool {
        if self.twins.twin_exists(tenant, id) {
            return true;
        }
        if !self.store.series_of_twin(tenant, id).is_empty() {
            return true;
        }
        if self
            .registry
            .device_in(tenant, id)
            .is_some_and(|d| d.twin() == id)
        {
            return true;
        }
        self.registry
            .all_devices()
            .iter()
            .any(|d| d.row.tenant == tenant && d.twin() == id)
    }
}

pub fn rfc3339_opt(us: Option<i64>) -> Option<String> {
    us.map(format_rfc3339)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "twinhub", description = "Industrial IoT and digital twin platform API. Errors answer {\"error\":{\"code\",\"message\"}}."),
    modifiers(&Security),
    security(("bearer" = []))
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        c.add_security_scheme(
            "device_basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(ops::server_info))
        .routes(routes!(access::create_tenant, access::list_tenants))
        .routes(routes!(access::get_tenant))
        .routes(routes!(devices::rotate_key))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(secrets::put_secret, secrets::delete_secret))
        .routes(routes!(access::put_quotas))
        .routes(routes!(access::create_user, access::list_users))
        .routes(routes!(access::update_user, access::delete_user))
        .routes(routes!(access::put_role, access::list_roles))
        .routes(routes!(access::delete_role))
        .routes(routes!(devices::create_device, devices::list_devices))
        .routes(routes!(
            devices::get_device,
            devices::patch_device,
            devices::delete_device
        ))
        .routes(routes!(devices::post_telemetry))
        .routes(routes!(lineproto::write_v2))
        .routes(routes!(lineproto::write_v1))
        .routes(routes!(devices::send_command))
        .routes(routes!(devices::put_layout, devices::get_layout))
        .routes(routes!(
            graph::get_twin,
            graph::put_twin,
            graph::patch_twin,
            graph::delete_twin
        ))
        .routes(routes!(graph::upload_models, graph::list_models))
        .routes(routes!(
            graph::get_model,
            graph::patch_model,
            graph::delete_model
        ))
        .routes(routes!(
            graph::put_relationship,
            graph::get_relationship,
            graph::patch_relationship,
            graph::delete_relationship
        ))
        .routes(routes!(graph::list_relationships))
        .routes(routes!(graph::list_incoming))
        .routes(routes!(graph::query))
        .routes(routes!(rules::create_rule, rules::list_rules))
        .routes(routes!(
            rules::get_rule,
            rules::update_rule,
            rules::patch_rule,
            rules::delete_rule
        ))
        .routes(routes!(rules::list_alarms))
        .routes(routes!(rules::count_alarms))
        .routes(routes!(rules::get_alarm))
        .routes(routes!(rules::ack_alarm))
        .routes(routes!(rules::clear_alarm))
        .routes(routes!(rules::comment_alarm))
        .routes(routes!(routes::create_route, routes::list_routes))
        .routes(routes!(
            routes::get_route,
            routes::put_route,
            routes::patch_route,
            routes::delete_route
        ))
        .routes(routes!(routes::test_route))
        .routes(routes!(routes::list_dead_letters))
        .routes(routes!(routes::replay_dead_letters))
        .routes(routes!(
            connectors::create_connector,
            connectors::list_connectors
        ))
        .routes(routes!(
            connectors::get_connector,
            connectors::put_connector,
            connectors::delete_connector
        ))
        .routes(routes!(connectors::browse_connector))
        .routes(routes!(connectors::post_uplink))
        .routes(routes!(connectors::post_downlink))
        .routes(routes!(layouts::list_named_layouts))
        .routes(routes!(
            layouts::put_named_layout,
            layouts::get_named_layout,
            layouts::delete_named_layout
        ))
        .routes(routes!(audit::list_audit))
        .routes(routes!(access::create_apikey, access::list_apikeys))
        .routes(routes!(access::revoke_apikey))
        .routes(routes!(audit::verify_audit))
        .routes(routes!(twins::list_series))
        .routes(routes!(twins::get_history, twins::delete_history))
        .routes(routes!(twins::multi_history))
        .routes(routes!(events::events))
        .routes(routes!(ml::upload, ml::list))
        .routes(routes!(ml::info))
        .routes(routes!(ml::predict))
        .routes(routes!(ml::predict_batch))
        .routes(routes!(ml::scenarios))
        .routes(routes!(ml::activate))
        .routes(routes!(ml::put_ab, ml::delete_ab))
        .routes(routes!(ml::delete_version))
        .routes(routes!(ml::info_alias))
        .routes(routes!(ml::export_bundle))
        .routes(routes!(ml::put_binding, ml::list_bindings))
        .routes(routes!(ml::delete_binding))
        .split_for_parts();
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    openapi::complete(&mut doc);
    let doc = Arc::new(doc.to_string());
    let limit = state
        .config
        .http
        .max_body
        .max(crate::forwarded::decoded_body_limit(
            state.config.http.max_ingest_body,
        ))
        .max(graph::MAX_MODEL_UPLOAD)
        .max(state.config.ml.max_model_bytes.saturating_mul(2) + (1 << 20));
    api.route("/mqtt", get(mqtt_websocket))
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .merge(crate::web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// MQTT over WebSocket; MQTT's CONNECT authenticates, as over TCP.
async fn mqtt_websocket(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(crate::tls::PeerAddr(peer)): axum::extract::ConnectInfo<
        crate::tls::PeerAddr,
    >,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let broker = state.broker().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::ServiceUnavailable,
            "MQTT is disabled on this server",
        )
    })?;
    Ok(ws
        .protocols(["mqtt"])
        .on_upgrade(move |socket| crate::mqtt::serve_websocket(broker, socket, peer))
        .into_response())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn count_responses(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await.into_response();
    let class = match resp.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state.metrics.http_responses.add(class, 1);
    resp
}
