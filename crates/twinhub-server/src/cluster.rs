//! Several nodes on one PostgreSQL store (`cluster.nats` set): which node
//! writes, and what the others do meanwhile.
//!
//! The store has one writer — the node holding its PostgreSQL writer lock
//! (a session advisory lock, `store/backend.rs`) — the *primary*. Every
//! other node of the cluster starts as a *standby*: it answers `/health`
//! (200, role `standby`) and `/ready` (503), so a load balancer sends it
//! nothing, and tries the lock every `RETRY`. When the primary dies its
//! PostgreSQL session ends, the lock is free, and a standby opens the store
//! — replaying the batch log, so every acknowledged point is there — and
//! becomes ready: devices reconnect through the load balancer and carry on.
//! A primary that loses the lock (its connection dropped and another node
//! took over meanwhile) stops, rather than serve from a stale memory.
//!
//! The nodes share the keys the store's rows depend on (secrets,
//! audit chains): in a cluster they come from the configuration, not from
//! each node's data directory.
//!
//! May call: `store` (to open it), `clock`.

use crate::store::{DirLock, Store, StoreError, StoreOptions};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often a standby tries the store's writer lock.
pub const RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `nats://host:4222` makes this node a cluster member (env
    /// `TWINHUB_CLUSTER_NATS`); empty = a single node.
    pub nats: String,
    /// This node's name in the cluster (env `TWINHUB_CLUSTER_NODE_ID`);
    /// default: host name and HTTP port.
    pub node_id: String,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.nats.trim().is_empty()
    }

    /// What a cluster member needs besides the NATS address.
    pub fn validate(
        &self,
        store_url: &str,
        secrets_key: bool,
        audit_key: bool,
    ) -> Result<(), (&'static str, &'static str)> {
        if !self.enabled() {
            return Ok(());
        }
        let n = self.nats.trim();
        if !(n.starts_with("nats://") || n.starts_with("tls://")) {
            return Err(("nats", "must be a nats:// or tls:// address"));
        }
        if store_url.is_empty() {
            return Err((
                "nats",
                "needs store.url (PostgreSQL): the nodes of a cluster share one store",
            ));
        }
        if !secrets_key || !audit_key {
            return Err((
                "nats",
                "needs secrets.key and audit.key: every node of a cluster must use the same keys (a node's own key files would not open what another wrote)",
            ));
        }
        Ok(())
    }

    /// The node's name: configured, or host name and HTTP port.
    pub fn node_name(&self, http: std::net::SocketAddr) -> String {
        if !self.node_id.trim().is_empty() {
            return self.node_id.trim().to_string();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        format!("{host}:{}", http.port())
    }
}

/// How the wait for the writer lock ended.
pub enum Opened {
    Primary(Store),
    /// Shutdown came first.
    Stopped,
}

/// Opens the store as the primary, waiting as a standby while another
/// node holds it; `http` answers health checks meanwhile.
pub async fn open_when_primary(
    dir: &std::path::Path,
    opts: StoreOptions,
    clock: crate::clock::SharedClock,
    http: &TcpListener,
    node: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Opened, StoreError> {
    let mut standby: Option<Standby> = None;
    loop {
        let lock = DirLock::acquire_within(dir, Duration::from_secs(1))?;
        let (o, c) = (opts.clone(), clock.clone());
        let opened = tokio::task::spawn_blocking(move || Store::open(lock, o, c))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        match opened {
            Ok(store) => {
                if let Some(s) = standby.take() {
                    s.stop().await;
                    tracing::info!(node, "this node holds the store's writer lock now: primary");
                }
                return Ok(Opened::Primary(store));
            }
            Err(StoreError::StoreInUse(_)) => {
                if standby.is_none() {
                    tracing::info!(
                        node,
                        "another node is the primary; standing by until its writer lock is free"
                    );
                    standby = Some(Standby::start(http, node)?);
                    // Where to reach it (the server rewrites the file with
                    // every listener once it is the primary).
                    let ports = json!({"http": http.local_addr()?.to_string(), "role": "standby"});
                    let tmp = dir.join("ports.json.tmp");
                    std::fs::write(&tmp, ports.to_string())?;
                    std::fs::rename(tmp, dir.join("ports.json"))?;
                }
            }
            Err(e) => {
                if let Some(s) = standby.take() {
                    s.stop().await;
                }
                return Err(e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = &mut *shutdown => {
                if let Some(s) = standby.take() {
                    s.stop().await;
                }
                return Ok(Opened::Stopped);
            }
        }
    }
}

/// The standby's HTTP answers, on a second handle of the node's own
/// listener (the real server takes the listener over once primary).
struct Standby {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Standby {
    fn start(http: &TcpListener, node: &str) -> std::io::Result<Standby> {
        let other = second_handle(http)?;
        let node = node.to_string();
        let n1 = node.clone();
        let app = axum::Router::new()
            .route(
                "/health",
                axum::routing::get(move || {
                    let node = n1.clone();
                    async move { Json(json!({"status": "ok", "role": "standby", "node": node})) }
                }),
            )
            .route(
                "/ready",
                axum::routing::get(move || {
                    let node = node.clone();
                    async move {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(json!({"status": "standby", "role": "standby", "node": node})),
                        )
                    }
                }),
            )
            .fallback(|| async {
                // The API's error shape and code (`service_unavailable`).
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": {"code": "service_unavailable",
                        "message": "this node is a standby; the primary serves requests (retry through the load balancer)"}})),
                )
                    .into_response();
                r.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
                r
            });
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(other, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Standby { stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// A second handle of a listening socket (both accept from one queue).
fn second_handle(l: &TcpListener) -> std::io::Result<TcpListener> {
    use std::os::fd::AsFd;
    let fd = l.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(vars: &[(&str, &str)]) -> Result<Config, String> {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(None, env, &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn a_cluster_member_needs_a_shared_store_and_shared_keys() {
        let nats = ("TWINHUB_CLUSTER_NATS", "nats://127.0.0.1:4222");
        let url = ("TWINHUB_STORE_URL", "postgres://u@h/db");
        let keys = [
            ("TWINHUB_SECRETS_KEY", "k1-k1-k1-k1-k1-k1"),
            ("TWINHUB_AUDIT_KEY", "k2-k2-k2-k2-k2-k2"),
        ];
        assert!(!load(&[]).unwrap().cluster.enabled(), "one node by default");
        let e = load(&[nats]).unwrap_err();
        assert!(e.contains("cluster.nats") && e.contains("store.url"), "{e}");
        let e = load(&[nats, url]).unwrap_err();
        assert!(e.contains("secrets.key and audit.key"), "{e}");
        let e = load(&[("TWINHUB_CLUSTER_NATS", "http://x"), url, keys[0], keys[1]]).unwrap_err();
        assert!(e.contains("nats:// or tls://"), "{e}");
        let c = load(&[
            nats,
            url,
            keys[0],
            keys[1],
            ("TWINHUB_CLUSTER_NODE_ID", "n1"),
        ])
        .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.node_name("127.0.0.1:8080".parse().unwrap()), "n1");
    }
}
