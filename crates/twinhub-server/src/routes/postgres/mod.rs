//! PostgreSQL sink: each batch is one multi-row insert into a table
//! created on first use (`id` is the primary key and a resent event is
//! ignored, so the table holds every event exactly once):
//! `(id text primary key, type text, tenant text, twin text, model text,
//! ts timestamptz, data jsonb, received_at timestamptz default now())`.
//! The connection string is given as `url` or, with a password, as the
//! name of a secret (`url_secret`). Plain TCP only (no TLS yet).

use super::sink::{only, text, Delivery, Sink, SinkContext, SinkError};
use super::spec::{refuse, SinkSpec, SpecError};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::Mutex;

pub struct Postgres {
    url: Option<String>,
    url_secret: Option<String>,
    table: String,
    timeout: Duration,
    ctx: SinkContext,
    conn: Mutex<Option<tokio_postgres::Client>>,
}

/// `name` or `schema.name`, lower-case identifiers (no quoting needed).
fn valid_table(t: &str) -> bool {
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 63
                && p.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

impl Postgres {
    pub fn new(spec: &SinkSpec, field: &str, ctx: SinkContext) -> Result<Postgres, SpecError> {
        only(
            spec,
            field,
            &["kind", "url", "url_secret", "table", "timeout"],
        )?;
        let f = |k: &str| format!("{field}.{k}");
        let url = text(spec, field, "url", false)?;
        let url_secret = text(spec, field, "url_secret", false)?;
        match (&url, &url_secret) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(refuse(
                    400,
                    &f("url"),
                    "give url or url_secret (one of them)",
                ))
            }
            (Some(u), None) => {
                u.parse::<tokio_postgres::Config>()
                    .map_err(|_| refuse(400, &f("url"), "is not a PostgreSQL connection string"))?;
            }
            (None, Some(name)) => {
                let u = ctx
                    .secrets
                    .reveal(&ctx.tenant, name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        refuse(
                            422,
                            &f("url_secret"),
                            format!("no secret named {name} in this tenant"),
                        )
                    })?;
                u.parse::<tokio_postgres::Config>().map_err(|_| {
                    refuse(
                        422,
                        &f("url_secret"),
                        "the secret is not a PostgreSQL connection string",
                    )
                })?;
            }
        }
        let table = text(spec, field, "table", false)?.unwrap_or_else(|| "twinhub_events".into());
        if !valid_table(&table) {
            return Err(refuse(
                400,
                &f("table"),
                "must be a lower-case identifier (schema.name allowed)",
            ));
        }
        let timeout = super::sink::timeout(spec, field)?;
        Ok(Postgres {
            url,
            url_secret,
            table,
            timeout,
            ctx,
            conn: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, SinkError> {
        let url = match (&self.url, &self.url_secret) {
            (Some(u), _) => u.clone(),
            (None, Some(n)) => self.ctx.secret(n)?,
            (None, None) => return Err(SinkError::permanent("no connection string")),
        };
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|_| SinkError::transient("connection to PostgreSQL failed"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, type text NOT NULL, tenant text NOT NULL,
                 twin text, model text, ts timestamptz, data jsonb, received_at timestamptz NOT NULL DEFAULT now())",
                self.table
            ))
            .await
            .map_err(|e| SinkError::transient(format!("the table {} cannot be created: {}", self.table, e.code().map(|c| c.code()).unwrap_or("?"))))?;
        Ok(client)
    }
}

impl Sink for Postgres {
    fn send<'a>(&'a self, batch: &'a [Delivery]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut conn = self.conn.lock().await;
            if conn.as_ref().is_none_or(|c| c.is_closed()) {
                *conn = Some(self.connect().await?);
            }
            let client = conn.as_ref().expect("connected");
            // The table keeps envelopes (a template shapes what other
            // sinks send; a row needs the envelope's columns).
            let batch: Vec<&Value> = batch.iter().map(|d| &d.env).collect();
            let s = |v: &Value, k: &str| v[k].as_str().map(str::to_string);
            let ids: Vec<String> = batch
                .iter()
                .map(|v| s(v, "id").unwrap_or_default())
                .collect();
            let types: Vec<String> = batch
                .iter()
                .map(|v| s(v, "type").unwrap_or_default())
                .collect();
            let tenants: Vec<String> = batch
                .iter()
                .map(|v| s(v, "tenant").unwrap_or_default())
                .collect();
            let twins: Vec<Option<String>> = batch.iter().map(|v| s(v, "twin")).collect();
            let models: Vec<Option<String>> = batch.iter().map(|v| s(v, "model")).collect();
            let ts: Vec<f64> = batch
                .iter()
                .map(|v| v["ts"].as_f64().unwrap_or(0.0))
                .collect();
            let data: Vec<String> = batch.iter().map(|v| v["data"].to_string()).collect();
            let sql = format!(
                "INSERT INTO {} (id, type, tenant, twin, model, ts, data)
                 SELECT id, type, tenant, twin, model, to_timestamp(ts / 1000.0), data::jsonb
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::text[])
                   AS u(id, type, tenant, twin, model, ts, data)
                 ON CONFLICT (id) DO NOTHING",
                self.table
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                [&ids, &types, &tenants, &twins, &models, &ts, &data];
            let insert = client.execute(&sql, &params);
            match tokio::time::timeout(self.timeout, insert).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    let code = e.code().map(|c| c.code().to_string());
                    *conn = None;
                    // A constraint or type the table refuses is the batch's
                    // fault (class 22/23); anything else is the connection's.
                    match code.as_deref() {
                        Some(c) if c.starts_with("22") || c.starts_with("23") => Err(
                            SinkError::permanent(format!("PostgreSQL refused the rows ({c})")),
                        ),
                        Some(c) => Err(SinkError::transient(format!("PostgreSQL error {c}"))),
                        None => Err(SinkError::transient("the PostgreSQL connection failed")),
                    }
                }
                Err(_) => {
                    *conn = None;
                    Err(SinkError::transient("PostgreSQL did not answer in time"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_names_are_plain_identifiers() {
        for ok in ["twinhub_events", "plant.events_2", "_x"] {
            assert!(super::valid_table(ok), "{ok}");
        }
        for bad in [
            "",
            "Events",
            "a;drop table x",
            "a.b.c",
            "1abc",
            "a b",
            "\"x\"",
        ] {
            assert!(!super::valid_table(bad), "{bad}");
        }
    }
}
