//! MQTT bridge sink: each event is published to an external broker (TLS
//! and user/password supported) on a topic made from a template
//! (`{tenant}`, `{type}`, `{twin}`, `{model}`, `{route}`, `{id}`). At QoS
//! 1 a batch is delivered once the broker has acknowledged every message;
//! a connection error fails the batch (it is sent again: at least once).

use super::sink::{only, text, Delivery, Sink, SinkContext, SinkError};
use super::spec::{refuse, SinkSpec, SpecError};
use futures_util::future::BoxFuture;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

enum Note {
    Acked,
    Failed(String),
}

pub struct MqttBridge {
    client: AsyncClient,
    notes: Mutex<mpsc::UnboundedReceiver<Note>>,
    topic: String,
    qos: QoS,
    retain: bool,
    timeout: Duration,
    ctx: SinkContext,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fills a topic template from an envelope. Empty or missing values become
/// `_`, and MQTT wildcards or separators inside a value are replaced, so
/// an id can never change the topic's shape.
pub fn topic_for(template: &str, env: &Value, route: &str) -> String {
    let field = |k: &str| -> String {
        let v = match k {
            "route" => route.to_string(),
            "type" | "tenant" | "twin" | "model" | "id" => {
                env[k].as_str().map(str::to_string).unwrap_or_default()
            }
            _ => return format!("{{{k}}}"),
        };
        let clean: String = v
            .chars()
            .map(|c| {
                if matches!(c, '/' | '+' | '#' | '\0') {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        if clean.is_empty() {
            "_".into()
        } else {
            clean
        }
    };
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        match rest[i..].find('}') {
            Some(j) => {
                out.push_str(&field(&rest[i + 1..i + j]));
                rest = &rest[i + j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn tls_config(ca_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let mut r = std::io::BufReader::new(pem.as_bytes());
            for c in rustls_pemfile::certs(&mut r) {
                let c = c.map_err(|_| "the CA is not PEM".to_string())?;
                roots
                    .add(c)
                    .map_err(|_| "the CA certificate is invalid".to_string())?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl MqttBridge {
    pub fn new(spec: &SinkSpec, field: &str, ctx: SinkContext) -> Result<MqttBridge, SpecError> {
        only(
            spec,
            field,
            &[
                "kind",
                "url",
                "topic",
                "qos",
                "retain",
                "username",
                "password_secret",
                "ca_secret",
                "client_id",
                "timeout",
            ],
        )?;
        let f = |k: &str| format!("{field}.{k}");
        let raw = text(spec, field, "url", true)?.unwrap_or_default();
        let url = reqwest::Url::parse(&raw)
            .map_err(|e| refuse(400, &f("url"), format!("is not a URL: {e}")))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => {
                return Err(refuse(
                    400,
                    &f("url"),
                    "must be mqtt://host:port or mqtts://host:port",
                ))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| refuse(400, &f("url"), "has no host"))?
            .to_string();
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let topic = text(spec, field, "topic", false)?
            .unwrap_or_else(|| "twinhub/{tenant}/{type}/{twin}".into());
        if topic.is_empty() || topic.contains('+') || topic.contains('#') {
            return Err(refuse(
                400,
                &f("topic"),
                "must be a topic without wildcards",
            ));
        }
        let qos = match spec.settings.get("qos") {
            None | Some(Value::Null) => QoS::AtLeastOnce,
            Some(v) => match v.as_u64() {
                Some(0) => QoS::AtMostOnce,
                Some(1) => QoS::AtLeastOnce,
                _ => return Err(refuse(400, &f("qos"), "must be 0 or 1")),
            },
        };
        let retain = match spec.settings.get("retain") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(refuse(400, &f("retain"), "must be true or false")),
        };
        let timeout = super::sink::timeout(spec, field)?;
        let secret = |key: &str| -> Result<Option<String>, SpecError> {
            match text(spec, field, key, false)? {
                None => Ok(None),
                Some(name) => ctx
                    .secrets
                    .reveal(&ctx.tenant, &name)
                    .ok()
                    .flatten()
                    .map(Some)
                    .ok_or_else(|| {
                        refuse(
                            422,
                            &f(key),
                            format!("no secret named {name} in this tenant"),
                        )
                    }),
            }
        };
        let client_id = text(spec, field, "client_id", false)?.unwrap_or_else(|| {
            format!(
                "twinhub-{}-{}-{}",
                ctx.tenant,
                ctx.route,
                crate::auth::random_secret(4).to_lowercase()
            )
        });
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(user) = text(spec, field, "username", false)? {
            opts.set_credentials(user, secret("password_secret")?.unwrap_or_default());
        } else if spec.settings.contains_key("password_secret") {
            return Err(refuse(400, &f("password_secret"), "needs a username"));
        }
        if tls {
            let ca = secret("ca_secret")?;
            let cfg =
                tls_config(ca.as_deref()).map_err(|rule| refuse(422, &f("ca_secret"), rule))?;
            opts.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(cfg)));
        } else if spec.settings.contains_key("ca_secret") {
            return Err(refuse(400, &f("ca_secret"), "needs an mqtts:// url"));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        // The event loop runs for the sink's life: it (re)connects, sends
        // what `send` queues, and reports acknowledgements and failures.
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if tx.send(Note::Acked).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let msg = match e {
                            rumqttc::ConnectionError::ConnectionRefused(code) => {
                                format!("the broker refused the connection ({code:?})")
                            }
                            rumqttc::ConnectionError::Io(_) => "connection failed".to_string(),
                            rumqttc::ConnectionError::Tls(_) => "TLS handshake failed".to_string(),
                            _ => "the connection to the broker failed".to_string(),
                        };
                        // What was queued is dropped: `send` fails the batch
                        // and the route sends it again, so nothing piles up
                        // inside the client during an outage.
                        eventloop.clean();
                        eventloop.pending.clear();
                        if tx.send(Note::Failed(msg)).is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(MqttBridge {
            client,
            notes: Mutex::new(rx),
            topic,
            qos,
            retain,
            timeout,
            ctx,
            task,
        })
    }
}

impl Sink for MqttBridge {
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut notes = self.notes.lock().await;
            // Notes from before this batch (a late ack, an old error).
            while notes.try_recv().is_ok() {}
            let deadline = tokio::time::Instant::now() + self.timeout;
            for d in batch {
                let topic = topic_for(&self.topic, &d.env, &self.ctx.route);
                let publish =
                    self.client
                        .publish(topic, self.qos, self.retain, d.body().to_string());
                match tokio::time::timeout_at(deadline, publish).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(SinkError::transient("the MQTT client is closed")),
                    Err(_) => {
                        return Err(SinkError::transient("the broker is not taking messages"))
                    }
                }
            }
            if self.qos == QoS::AtMostOnce {
                return Ok(());
            }
            let mut acked = 0;
            while acked < batch.len() {
                match tokio::time::timeout_at(deadline, notes.recv()).await {
                    Ok(Some(Note::Acked)) => acked += 1,
                    Ok(Some(Note::Failed(msg))) => return Err(SinkError::transient(msg)),
                    Ok(None) => return Err(SinkError::transient("the MQTT client stopped")),
                    Err(_) => {
                        return Err(SinkError::transient(format!(
                            "the broker acknowledged {acked} of {} messages in time",
                            batch.len()
                        )))
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::topic_for;
    use serde_json::json;

    #[test]
    fn topics_fill_the_template_and_never_gain_levels() {
        let env = json!({"tenant": "default", "type": "telemetry", "twin": "a/b+#", "id": "7"});
        assert_eq!(
            topic_for("x/{tenant}/{type}/{twin}", &env, "r"),
            "x/default/telemetry/a_b__"
        );
        assert_eq!(topic_for("{route}/{model}/{id}", &env, "r"), "r/_/7");
        assert_eq!(topic_for("a/{unknown}/b", &env, "r"), "a/{unknown}/b");
        assert_eq!(topic_for("open{", &env, "r"), "open{");
    }
}
