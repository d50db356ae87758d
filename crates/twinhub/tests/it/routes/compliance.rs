//! The one test every sink passes, against a real peer (the webhook
//! receiver in this process, the machine's Mosquitto, …): a route whose
//! endpoint is unreachable queues; the server restarts with the backlog;
//! the route is pointed at the real endpoint (a new version, same
//! position); everything arrives, in order, once per id.

use super::receiver::Receiver;
use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A system that receives a route's events.
pub enum Peer {
    Webhook(Receiver),
    Mqtt {
        prefix: String,
        got: Arc<Mutex<Vec<(String, Value)>>>,
        _client: rumqttc::AsyncClient,
    },
    Nats {
        prefix: String,
        stream: String,
        got: Arc<Mutex<Vec<(String, Value)>>>,
        client: async_nats::Client,
    },
    Postgres {
        table: String,
        client: tokio_postgres::Client,
    },
}

const PG_URL: &str = "postgres://root@127.0.0.1:5432/test";

fn unique() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

impl Peer {
    pub async fn webhook() -> Peer {
        Peer::Webhook(Receiver::start().await)
    }

    /// A subscriber on the machine's Mosquitto (127.0.0.1:1883).
    pub async fn mosquitto() -> Peer {
        let prefix = format!("twinhub-test/{}", unique());
        let (client, got) = mosquitto_recorder(&format!("{prefix}/#")).await;
        Peer::Mqtt {
            prefix,
            got,
            _client: client,
        }
    }

    /// A subscriber on the machine's NATS (127.0.0.1:4222); the route
    /// publishes through JetStream into a stream of its own.
    pub async fn nats() -> Peer {
        use futures_util::StreamExt;
        let u = unique().replace('-', "_");
        let prefix = format!("twinhubtest.{u}");
        let client = async_nats::connect("nats://127.0.0.1:4222")
            .await
            .expect("NATS on 127.0.0.1:4222 answers");
        let mut sub = client.subscribe(format!("{prefix}.>")).await.unwrap();
        client.flush().await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                sink.lock().unwrap().push((m.subject.to_string(), v));
            }
        });
        Peer::Nats {
            prefix,
            stream: format!("TWINHUB_TEST_{u}"),
            got,
            client,
        }
    }

    /// A table in the machine's PostgreSQL (database `test`).
    pub async fn postgres() -> Peer {
        let (client, conn) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 answers");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Peer::Postgres {
            table: format!("twinhub_test_{}", unique().replace('-', "_")),
            client,
        }
    }

    pub fn sink(&self) -> Value {
        match self {
            Peer::Webhook(r) => json!({"kind": "webhook", "url": r.url()}),
            Peer::Mqtt { prefix, .. } => json!({"kind": "mqtt", "url": "mqtt://127.0.0.1:1883",
                "topic": format!("{prefix}/{{type}}/{{twin}}"), "qos": 1}),
            Peer::Nats { prefix, stream, .. } => {
                json!({"kind": "nats", "url": "nats://127.0.0.1:4222",
                "subject": format!("{prefix}.{{type}}.{{twin}}"), "jetstream": true, "stream": stream})
            }
            Peer::Postgres { table, .. } => {
                json!({"kind": "postgres", "url": PG_URL, "table": table})
            }
        }
    }

    /// The same kind of sink, pointing where nothing answers.
    pub fn unreachable(&self) -> Value {
        let mut s = self.sink();
        s["url"] = match self {
            Peer::Webhook(_) => json!("http://127.0.0.1:9/hook"),
            Peer::Mqtt { .. } => json!("mqtt://127.0.0.1:9"),
            Peer::Nats { .. } => json!("nats://127.0.0.1:9"),
            Peer::Postgres { .. } => json!("postgres://root@127.0.0.1:9/test"),
        };
        s
    }

    /// Removes what the test left on the shared service.
    pub async fn clean(&self) {
        match self {
            Peer::Nats { stream, client, .. } => {
                let _ = async_nats::jetstream::new(client.clone())
                    .delete_stream(stream)
                    .await;
            }
            Peer::Postgres { table, client } => {
                let _ = client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                    .await;
            }
            _ => {}
        }
    }

    pub async fn events(&self) -> Vec<Value> {
        match self {
            Peer::Nats { prefix, got, .. } => {
                let got = got.lock().unwrap();
                for (subject, e) in got.iter() {
                    assert_eq!(
                        *subject,
                        format!(
                            "{prefix}.{}.{}",
                            e["type"].as_str().unwrap(),
                            e["twin"].as_str().unwrap()
                        )
                    );
                }
                got.iter().map(|(_, e)| e.clone()).collect()
            }
            Peer::Postgres { table, client } => {
                // The table's rows in id (commit) order, as envelopes.
                let rows = match client
                    .query(
                        &format!(
                            "SELECT id, type, tenant, twin, data::text FROM {table} ORDER BY id::numeric"
                        ),
                        &[],
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return Vec::new(), // not created yet
                };
                rows.iter()
                    .map(|r| {
                        json!({"id": r.get::<_, String>(0), "type": r.get::<_, String>(1),
                               "tenant": r.get::<_, String>(2), "twin": r.get::<_, Option<String>>(3),
                               "data": serde_json::from_str::<Value>(&r.get::<_, String>(4)).unwrap()})
                    })
                    .collect()
            }
            Peer::Webhook(r) => r.inbox.events(),
            Peer::Mqtt { prefix, got, .. } => {
                let got = got.lock().unwrap();
                for (topic, e) in got.iter() {
                    assert_eq!(
                        *topic,
                        format!(
                            "{prefix}/{}/{}",
                            e["type"].as_str().unwrap(),
                            e["twin"].as_str().unwrap()
                        )
                    );
                }
                got.iter().map(|(_, e)| e.clone()).collect()
            }
        }
    }
}

/// The `n` values of the distinct events received, in arrival order.
async fn received(peer: &Peer) -> Vec<u64> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in peer.events().await {
        if e["type"] != "telemetry" || !seen.insert(e["id"].as_str().unwrap().to_string()) {
            continue;
        }
        for m in e["data"]["messages"].as_array().unwrap() {
            if let Some(n) = m["values"]["n"].as_f64() {
                out.push(n as u64);
            }
        }
    }
    out
}

pub async fn run(peer: Peer) {
    let s = TestServer::start().await;
    let retry =
        json!({"initial": "20ms", "max_backoff": "100ms", "open_for": "100ms", "max_attempts": 0});
    let (st, v) = s
        .json(s.post(
            "/api/v1/routes",
            json!({"id": "c", "select": {"types": ["telemetry"], "twin": "dev-c"},
                   "sink": peer.unreachable(), "batch": {"max": 7, "linger": "5ms"}, "retry": retry}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    let key = s.device("dev-c").await;
    for n in 0..30 {
        assert_eq!(s.send("dev-c", &key, json!({"n": n})).await.status(), 200);
    }
    until("the route retries", || async {
        let (_, v) = s.json(s.get("/api/v1/routes/c")).await;
        v["retried"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(received(&peer).await.is_empty());
    let s = s.restart().await;
    let (st, v) = s
        .json(
            s.http
                .put(s.url("/api/v1/routes/c"))
                .bearer_auth(&s.token)
                .json(&json!({"select": {"types": ["telemetry"], "twin": "dev-c"},
                    "sink": peer.sink(), "batch": {"max": 7, "linger": "5ms"}, "retry": retry})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 2);
    for n in 30..60 {
        assert_eq!(s.send("dev-c", &key, json!({"n": n})).await.status(), 200);
    }
    until("every event arrives", || async {
        received(&peer).await.len() >= 60
    })
    .await;
    assert_eq!(
        received(&peer).await,
        (0..60).collect::<Vec<u64>>(),
        "in order, once per id"
    );
    let (_, v) = s.json(s.get("/api/v1/routes/c")).await;
    assert_eq!(v["dead_letters"], 0, "{v}");
    assert!(v["delivered"].as_u64().unwrap() >= 30, "{v}");
    s.stop().await;
    peer.clean().await;
}

#[tokio::test]
async fn the_webhook_sink_passes_the_compliance_suite() {
    run(Peer::webhook().await).await;
}

#[tokio::test]
async fn the_mqtt_bridge_passes_the_compliance_suite() {
    run(Peer::mosquitto().await).await;
}

#[tokio::test]
async fn the_nats_jetstream_sink_passes_the_compliance_suite() {
    run(Peer::nats().await).await;
}

#[tokio::test]
async fn the_postgres_sink_passes_the_compliance_suite() {
    run(Peer::postgres().await).await;
}
