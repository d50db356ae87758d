//! Function routes (request–reply, not the event stream): a device
//! publishes a request on `devices/{id}/functions/{name}/{requestId}`;
//! the route POSTs `{tenant, device, function, request_id, payload}` to
//! its endpoint (signed like the webhook sink) and publishes the answer on
//! `devices/{id}/functions/replies/{requestId}`: `{"status": 200,
//! "payload": <the endpoint's JSON>}`, or `{"status": 502|504|<code>,
//! "error"}`. A device retries a call it got no answer to; nothing is
//! queued.

use super::sink::{only, Delivery, Sink, SinkContext, SinkError};
use super::spec::{refuse, SinkSpec, SpecError};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};

pub struct Endpoint {
    url: reqwest::Url,
    secret: Option<String>,
    client: reqwest::Client,
    ctx: SinkContext,
}

impl Endpoint {
    pub fn new(spec: &SinkSpec, field: &str, ctx: SinkContext) -> Result<Endpoint, SpecError> {
        only(spec, field, &["kind", "url", "secret", "timeout"])?;
        let url = super::sink::http_url(spec, field)?;
        let secret = super::sink::secret_name(spec, field, "secret", &ctx)?;
        let timeout = super::sink::timeout(spec, field)?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|_| refuse(400, field, "cannot build an HTTP client"))?;
        Ok(Endpoint {
            url,
            secret,
            client,
            ctx,
        })
    }

    /// Runs one call; the reply the device gets.
    pub async fn call(&self, device: &str, name: &str, request_id: &str, payload: &[u8]) -> Value {
        let payload: Value = serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
        let body = serde_json::to_vec(&json!({
            "tenant": self.ctx.tenant, "device": device, "function": name,
            "request_id": request_id, "payload": payload,
        }))
        .expect("serialises");
        let ts = (self.ctx.clock.now_us() / 1_000_000).to_string();
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-twinhub-timestamp", &ts)
            .header("x-twinhub-tenant", &self.ctx.tenant)
            .header("x-twinhub-route", &self.ctx.route)
            .header("x-twinhub-device", device);
        if let Some(name) = &self.secret {
            match self.ctx.secret(name) {
                Ok(secret) => {
                    req = req.header(
                        "x-twinhub-signature",
                        format!("sha256={}", super::webhook::signature(&secret, &ts, &body)),
                    )
                }
                Err(e) => return json!({"status": 502, "error": e.message}),
            }
        }
        match req.body(body).send().await {
            Err(e) if e.is_timeout() => {
                json!({"status": 504, "error": "the function did not answer in time"})
            }
            Err(_) => json!({"status": 502, "error": "the function's endpoint cannot be reached"}),
            Ok(r) if r.status().is_success() => {
                let bytes = r.bytes().await.unwrap_or_default();
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                });
                json!({"status": 200, "payload": answer})
            }
            Ok(r) => {
                json!({"status": r.status().as_u16(), "error": format!("the function answered {}", r.status())})
            }
        }
    }
}

/// A function route takes no events: it answers calls.
impl Sink for Endpoint {
    fn send<'a>(&'a self, _batch: &'a [Delivery]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async {
            Err(SinkError::permanent(
                "a function route answers calls, not events",
            ))
        })
    }
}
