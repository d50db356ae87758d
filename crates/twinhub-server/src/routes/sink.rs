//! The one extension point of routes: a `Sink` takes a batch of event
//! envelopes and answers once the receiver has them (or why not). Every
//! kind is registered in `build`, and every kind passes the shared
//! compliance tests (`tests/it/routes.rs`).

use super::spec::{refuse, SinkSpec, SpecError};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;

/// Why a delivery failed. A permanent failure (the receiver refused the
/// batch as such: a 4xx other than 408/429) is not retried; it goes to the
/// dead letters at once.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkError {
    pub permanent: bool,
    pub message: String,
}

impl SinkError {
    pub fn transient(message: impl Into<String>) -> SinkError {
        SinkError {
            permanent: false,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> SinkError {
        SinkError {
            permanent: true,
            message: message.into(),
        }
    }
}

/// What a sink needs from the server besides its settings.
#[derive(Clone)]
pub struct SinkContext {
    pub tenant: String,
    pub route: String,
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub clock: crate::clock::SharedClock,
}

impl SinkContext {
    /// A secret of the route's tenant, by name (read at each use, so a
    /// rotated secret applies to the next delivery).
    pub fn secret(&self, name: &str) -> Result<String, SinkError> {
        match self.secrets.reveal(&self.tenant, name) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(SinkError::transient(format!(
                "secret {name} does not exist"
            ))),
            Err(_) => Err(SinkError::transient(format!(
                "secret {name} cannot be read"
            ))),
        }
    }
}

/// One event to deliver: its envelope (id, type, twin, … — what topics,
/// subjects, dedupe ids and table rows are made from) and the document a
/// receiver gets: the envelope itself, or the route's template output.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub env: Value,
    pub body: Option<Value>,
}

impl Delivery {
    pub fn body(&self) -> &Value {
        self.body.as_ref().unwrap_or(&self.env)
    }
}

pub trait Sink: Send + Sync {
    /// Delivers `batch` (in event order); Ok once the receiver has
    /// acknowledged all of it.
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// The sink kinds, in one place.
pub const KINDS: [&str; 5] = ["webhook", "mqtt", "nats", "postgres", "function"];

/// Builds the sink a spec describes; `field` names it in errors (`sink`
/// or `fallback`).
pub fn build(spec: &SinkSpec, field: &str, ctx: SinkContext) -> Result<Arc<dyn Sink>, SpecError> {
    match spec.kind.as_str() {
        "webhook" => Ok(Arc::new(super::webhook::Webhook::new(spec, field, ctx)?)),
        "mqtt" => Ok(Arc::new(super::mqtt::MqttBridge::new(spec, field, ctx)?)),
        "nats" => Ok(Arc::new(super::nats::Nats::new(spec, field, ctx)?)),
        "postgres" => Ok(Arc::new(super::postgres::Postgres::new(spec, field, ctx)?)),
        "function" if field == "sink" => {
            Ok(Arc::new(super::function::Endpoint::new(spec, field, ctx)?))
        }
        other => Err(refuse(
            400,
            &format!("{field}.kind"),
            format!("unknown sink kind {other}: use {}", KINDS.join(", ")),
        )),
    }
}

/// A setting of a sink: a string, required or not.
pub fn text(
    spec: &SinkSpec,
    field: &str,
    key: &str,
    required: bool,
) -> Result<Option<String>, SpecError> {
    match spec.settings.get(key) {
        None | Some(Value::Null) if required => {
            Err(refuse(400, &format!("{field}.{key}"), "is required"))
        }
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(refuse(400, &format!("{field}.{key}"), "must be a string")),
    }
}

/// Refuses settings a sink does not know (a typo must not be ignored).
pub fn only(spec: &SinkSpec, field: &str, known: &[&str]) -> Result<(), SpecError> {
    for k in spec.settings.keys() {
        if !known.contains(&k.as_str()) {
            return Err(refuse(
                400,
                &format!("{field}.{k}"),
                format!(
                    "unknown setting for a {} sink (known: {})",
                    spec.kind,
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The `timeout` setting (default 10 s).
pub fn timeout(spec: &SinkSpec, field: &str) -> Result<std::time::Duration, SpecError> {
    match text(spec, field, "timeout", false)? {
        None => Ok(std::time::Duration::from_secs(10)),
        Some(t) => twinhub_model::time::parse_duration(&t)
            .map(|us| std::time::Duration::from_micros(us as u64))
            .map_err(|rule| refuse(400, &format!("{field}.timeout"), rule)),
    }
}

/// A setting naming a secret of the route's tenant: the name, checked to
/// exist now (its value is read at each use).
pub fn secret_name(
    spec: &SinkSpec,
    field: &str,
    key: &str,
    ctx: &SinkContext,
) -> Result<Option<String>, SpecError> {
    let Some(name) = text(spec, field, key, false)? else {
        return Ok(None);
    };
    match ctx.secrets.reveal(&ctx.tenant, &name) {
        Ok(Some(_)) => Ok(Some(name)),
        _ => Err(refuse(
            422,
            &format!("{field}.{key}"),
            format!("no secret named {name} in this tenant (PUT /api/v1/secrets/{name} first)"),
        )),
    }
}

/// The `url` setting as an http(s) URL.
pub fn http_url(spec: &SinkSpec, field: &str) -> Result<reqwest::Url, SpecError> {
    let raw = text(spec, field, "url", true)?.unwrap_or_default();
    let url = reqwest::Url::parse(&raw)
        .map_err(|e| refuse(400, &format!("{field}.url"), format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse(
            400,
            &format!("{field}.url"),
            "must be http or https",
        ));
    }
    Ok(url)
}
