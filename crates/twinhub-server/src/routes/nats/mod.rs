//! NATS sink: each event is published on a subject made from a template
//! (`twinhub.{tenant}.{type}.{twin}` by default). With `jetstream` the
//! batch is delivered once the stream has stored every message, and each
//! carries `Nats-Msg-Id: <event id>`, so JetStream itself drops a resent
//! duplicate within its window; `stream` creates that stream (capturing
//! the template's subjects) on first use if it does not exist. Without
//! JetStream, a batch is delivered once the server has it (a flush).

use super::sink::{only, text, Delivery, Sink, SinkContext, SinkError};
use super::spec::{refuse, SinkSpec, SpecError};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::Mutex;

pub struct Nats {
    url: String,
    subject: String,
    jetstream: bool,
    stream: Option<String>,
    user: Option<String>,
    password_secret: Option<String>,
    token_secret: Option<String>,
    timeout: Duration,
    ctx: SinkContext,
    conn: Mutex<Option<async_nats::Client>>,
}

/// A subject token from a value: NATS separators and wildcards inside an
/// id become `_`, so an id never changes the subject's shape.
fn token(v: &str) -> String {
    let t: String = v
        .chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

pub fn subject_for(template: &str, env: &Value, route: &str) -> String {
    template
        .split('.')
        .map(|part| match part {
            "{route}" => token(route),
            "{tenant}" | "{type}" | "{twin}" | "{model}" | "{id}" => {
                token(env[&part[1..part.len() - 1]].as_str().unwrap_or(""))
            }
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl Nats {
    pub fn new(spec: &SinkSpec, field: &str, ctx: SinkContext) -> Result<Nats, SpecError> {
        only(
            spec,
            field,
            &[
                "kind",
                "url",
                "subject",
                "jetstream",
                "stream",
                "user",
                "password_secret",
                "token_secret",
                "timeout",
            ],
        )?;
        let f = |k: &str| format!("{field}.{k}");
        let url = text(spec, field, "url", true)?.unwrap_or_default();
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(refuse(
                400,
                &f("url"),
                "must be nats://host:port or tls://host:port",
            ));
        }
        let subject = text(spec, field, "subject", false)?
            .unwrap_or_else(|| "twinhub.{tenant}.{type}.{twin}".into());
        if subject.is_empty()
            || subject
                .split('.')
                .any(|p| p.is_empty() || p.contains('*') || p.contains('>') || p.contains(' '))
        {
            return Err(refuse(
                400,
                &f("subject"),
                "must be dot-separated tokens without wildcards",
            ));
        }
        let jetstream = match spec.settings.get("jetstream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(refuse(400, &f("jetstream"), "must be true or false")),
        };
        let stream = text(spec, field, "stream", false)?;
        if stream.is_some() && !jetstream {
            return Err(refuse(400, &f("stream"), "needs jetstream: true"));
        }
        if let Some(s) = &stream {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(refuse(400, &f("stream"), "letters, digits, - and _ only"));
            }
        }
        for key in ["password_secret", "token_secret"] {
            super::sink::secret_name(spec, field, key, &ctx)?;
        }
        let timeout = super::sink::timeout(spec, field)?;
        Ok(Nats {
            url,
            subject,
            jetstream,
            stream,
            user: text(spec, field, "user", false)?,
            password_secret: text(spec, field, "password_secret", false)?,
            token_secret: text(spec, field, "token_secret", false)?,
            timeout,
            ctx,
            conn: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<async_nats::Client, SinkError> {
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .name(format!("twinhub route {}", self.ctx.route));
        if let Some(user) = &self.user {
            let pw = match &self.password_secret {
                Some(n) => self.ctx.secret(n)?,
                None => String::new(),
            };
            opts = opts.user_and_password(user.clone(), pw);
        }
        if let Some(n) = &self.token_secret {
            opts = opts.token(self.ctx.secret(n)?);
        }
        let client = opts
            .connect(self.url.as_str())
            .await
            .map_err(|_| SinkError::transient("connection to NATS failed"))?;
        if let Some(name) = &self.stream {
            let js = async_nats::jetstream::new(client.clone());
            let subjects = self
                .subject
                .split('.')
                .map(|p| if p.starts_with('{') { "*" } else { p })
                .collect::<Vec<_>>()
                .join(".");
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subjects],
                ..Default::default()
            })
            .await
            .map_err(|e| {
                SinkError::transient(format!("the stream {name} cannot be created: {e}"))
            })?;
        }
        Ok(client)
    }
}

impl Sink for Nats {
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut conn = self.conn.lock().await;
            if conn.is_none() {
                *conn = Some(self.connect().await?);
            }
            let client = conn.clone().expect("connected");
            let outcome = async {
                if self.jetstream {
                    let js = async_nats::jetstream::new(client.clone());
                    let mut acks = Vec::with_capacity(batch.len());
                    for d in batch {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", d.env["id"].as_str().unwrap_or(""));
                        let subject = subject_for(&self.subject, &d.env, &self.ctx.route);
                        let ack = js
                            .publish_with_headers(subject, headers, d.body().to_string().into())
                            .await
                            .map_err(|e| {
                                SinkError::transient(format!("JetStream publish failed: {e}"))
                            })?;
                        acks.push(ack);
                    }
                    for ack in acks {
                        ack.await.map_err(|e| {
                            SinkError::transient(format!(
                                "JetStream did not store the message: {e}"
                            ))
                        })?;
                    }
                } else {
                    for d in batch {
                        let subject = subject_for(&self.subject, &d.env, &self.ctx.route);
                        client
                            .publish(subject, d.body().to_string().into())
                            .await
                            .map_err(|_| SinkError::transient("NATS publish failed"))?;
                    }
                    client
                        .flush()
                        .await
                        .map_err(|_| SinkError::transient("NATS flush failed"))?;
                }
                Ok(())
            };
            match tokio::time::timeout(self.timeout, outcome).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    *conn = None;
                    Err(e)
                }
                Err(_) => {
                    *conn = None;
                    Err(SinkError::transient("NATS did not answer in time"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn subjects_fill_the_template_and_never_gain_tokens() {
        let env = json!({"tenant": "default", "type": "telemetry", "twin": "a.b *>"});
        assert_eq!(
            super::subject_for("plant.{tenant}.{type}.{twin}", &env, "r"),
            "plant.default.telemetry.a_b___"
        );
        assert_eq!(super::subject_for("x.{model}.{route}", &env, "r"), "x._.r");
    }
}
