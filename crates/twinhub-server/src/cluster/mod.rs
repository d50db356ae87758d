//! Several nodes on one PostgreSQL store (`cluster.nats` set): which node
//! writes, and what the others do meanwhile.
//!
//! The store has one writer — the node holding its PostgreSQL writer lock
//! (a session advisory lock, `store/backend.rs`) — the *primary*; it does
//! everything a single node does and announces where it is on NATS
//! (`twinhub.<cluster>.primary`, every `ANNOUNCE`). Every other member is
//! a *replica* (`replica.rs`): it forwards HTTP requests and MQTT
//! connections to the primary it heard of, so any node serves any call and
//! a load balancer may use them all; and it tries the writer lock every
//! `RETRY`. When the primary dies its PostgreSQL session ends, the lock is
//! free, and a replica opens the store — replaying the batch log, so every
//! acknowledged point is there — and becomes the primary; the others
//! follow its announcement. A primary that loses the lock (its connection
//! dropped and another node took over meanwhile) stops, rather than serve
//! from a stale memory.
//!
//! Replicas relay raw frames too (`frames.rs`): TCP connections as bytes,
//! UDP datagrams one by one, each under the signed header of `forwarded`.
//! A device's HTTP telemetry they decode themselves (`decode.rs`) and hand
//! to the primary in binary, so the JSON parsing spreads over the nodes.
//!
//! A primary that is stopped, hung or cut off from NATS keeps its
//! PostgreSQL session, and with it the lock, but says nothing: a replica
//! that heard nothing from the lock's holder for `FENCE` while NATS
//! answered it ends that session (`pg_terminate_backend`, which the nodes'
//! shared database role may do) and takes the lock. The old holder, if it
//! wakes, finds its connection gone, fails to retake the lock, hears the
//! new holder's greater term and stops (`announce.rs`). A host that
//! vanishes without a word is covered by PostgreSQL too: the writer's
//! session has TCP keepalives of seconds, not the kernel's two hours.
//!
//! The nodes share the keys the store's rows depend on (secrets,
//! audit chains): in a cluster they come from the configuration, not from
//! each node's data directory.
//!
//! May call: `store` (to open it), `clock`, `tls` (the listeners it
//! forwards from), `forwarded` (the header of a relayed MQTT connection),
//! `ports` (a replica's ports.json).

mod announce;
mod decode;
mod frames;
mod replica;

pub use announce::{Announcer, PrimaryInfo, Serving};
pub use decode::Decoding;

use crate::store::backend::Source;
use crate::store::{DirLock, Store, StoreError, StoreOptions};
use serde::Deserialize;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often a replica tries the store's writer lock.
pub const RETRY: Duration = Duration::from_millis(500);
/// How often the primary says where it is; a replica that heard nothing
/// for `STALE` forwards nothing.
pub const ANNOUNCE: Duration = Duration::from_millis(250);
pub const STALE: Duration = Duration::from_secs(2);
/// How long the lock's holder may say nothing before a replica ends its
/// session.
pub const FENCE: Duration = Duration::from_secs(5);

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `nats://host:4222` makes this node a cluster member (env
    /// `TWINHUB_CLUSTER_NATS`); empty = a single node.
    pub nats: String,
    /// This node's name in the cluster (env `TWINHUB_CLUSTER_NODE_ID`);
    /// default: host name and HTTP port.
    pub node_id: String,
    /// The host other nodes reach this one at (env
    /// `TWINHUB_CLUSTER_ADVERTISE`); default: the HTTP listen address's IP,
    /// or the host name when it listens on every interface.
    pub advertise: String,
}

/// By hand: the NATS address may hold credentials.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("nats", &crate::store::redact_url(&self.nats))
            .field("node_id", &self.node_id)
            .field("advertise", &self.advertise)
            .finish()
    }
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
        format!("{}:{}", host_name(), http.port())
    }

    /// `addr` as other nodes reach it.
    pub fn advertised(&self, addr: std::net::SocketAddr) -> String {
        let host = if !self.advertise.trim().is_empty() {
            self.advertise.trim().to_string()
        } else if addr.ip().is_unspecified() {
            host_name()
        } else {
            addr.ip().to_string()
        };
        format!("{host}:{}", addr.port())
    }

    /// The NATS subject prefix of this cluster: one per store (schema).
    pub fn subject(&self, schema: &str) -> String {
        let name: String = if schema.is_empty() { "public" } else { schema }
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("twinhub.{name}")
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Where a replica forwards to and how it reaches the cluster.
pub struct Membership<'a> {
    pub node: &'a str,
    pub nats: &'a str,
    pub subject: &'a str,
    pub http: &'a TcpListener,
    pub mqtt: Option<&'a TcpListener>,
    /// The TLS listeners: a replica terminates TLS and forwards as it does
    /// over plain TCP.
    pub https: Option<&'a (TcpListener, tokio_rustls::TlsAcceptor)>,
    pub mqtts: Option<&'a (TcpListener, tokio_rustls::TlsAcceptor)>,
    /// The raw-frame sockets: a replica relays frames with the device's
    /// address in a signed header.
    pub udp: Option<&'a tokio::net::UdpSocket>,
    pub tcp: Option<&'a TcpListener>,
    /// Signs the header before each relayed MQTT connection (the client's
    /// address and certificate identity, for the primary; `validate`
    /// makes sure a cluster member has it).
    pub forward_key: Option<crate::forwarded::Key>,
    /// How a replica decodes device telemetry before handing it on.
    pub decoding: Decoding,
}

/// How the wait for the writer lock ended.
pub enum Opened {
    /// With the announcer, saying "opening" until told `serving`.
    Primary(Store, Announcer),
    /// Shutdown came first.
    Stopped,
}

/// Opens the store as the primary, serving as a replica while another
/// node holds it.
pub async fn open_when_primary(
    dir: &std::path::Path,
    mut opts: StoreOptions,
    clock: crate::clock::SharedClock,
    member: Membership<'_>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Opened, StoreError> {
    let node = member.node;
    let announcer = Announcer::start(member.nats, member.subject, node);
    opts.on_writer_lock = Some(announcer.on_locked());
    let source = Source::of(&opts, dir);
    let mut serving: Option<replica::Replica> = None;
    loop {
        let lock = DirLock::acquire_within(dir, Duration::from_secs(1))?;
        let (o, c) = (opts.clone(), clock.clone());
        let opened = tokio::task::spawn_blocking(move || Store::open(lock, o, c))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        match opened {
            Ok(store) => {
                if let Some(s) = serving.take() {
                    s.stop().await;
                    tracing::info!(node, "this node holds the store's writer lock now: primary");
                }
                return Ok(Opened::Primary(store, announcer));
            }
            Err(StoreError::StoreInUse(_)) => match &serving {
                None => {
                    tracing::info!(
                        node,
                        "another node is the primary; serving as a replica until its writer lock is free"
                    );
                    serving = Some(replica::Replica::start(&member)?);
                    // Where to reach it (the server rewrites the file with
                    // every listener once it is the primary).
                    let addr = |l: Option<&TcpListener>| l.and_then(|l| l.local_addr().ok());
                    crate::ports::write(
                        dir,
                        &[
                            ("http", member.http.local_addr().ok()),
                            ("mqtt", addr(member.mqtt)),
                            ("https", addr(member.https.map(|(l, _)| l))),
                            ("mqtts", addr(member.mqtts.map(|(l, _)| l))),
                            ("udp", member.udp.and_then(|u| u.local_addr().ok())),
                            ("tcp", addr(member.tcp)),
                        ],
                        &[("role", "replica")],
                    )?;
                }
                Some(replica) if replica.holder_silent(FENCE) => {
                    let source = source.clone();
                    let ended = tokio::task::spawn_blocking(move || {
                        source.end_writer_session(FENCE.as_secs() as i64)
                    })
                    .await
                    .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
                    match ended {
                        Ok(n) if n > 0 => tracing::warn!(
                            node,
                            silent_s = FENCE.as_secs(),
                            "the primary holds the store's writer lock but has said nothing; ended its PostgreSQL session"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not end the silent primary's PostgreSQL session"),
                    }
                    replica.restart_silence();
                }
                Some(_) => {}
            },
            Err(e) => {
                if let Some(s) = serving.take() {
                    s.stop().await;
                }
                return Err(e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = &mut *shutdown => {
                if let Some(s) = serving.take() {
                    s.stop().await;
                }
                return Ok(Opened::Stopped);
            }
        }
    }
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
        // MQTTS alone: replicas would have no plain listener to relay to.
        let mqtts_only = [
            ("TWINHUB_MQTT_LISTEN", ""),
            ("TWINHUB_MQTT_TLS_LISTEN", "0.0.0.0:8883"),
            ("TWINHUB_TLS_CERT", "server.pem"),
            ("TWINHUB_TLS_KEY", "server-key.pem"),
        ];
        let member = [[nats, url, keys[0], keys[1]].as_slice(), &mqtts_only].concat();
        let e = load(&member).unwrap_err();
        assert!(e.contains("mqtt.listen") && e.contains("relay"), "{e}");
        let single = load(&mqtts_only);
        assert!(
            single.is_ok(),
            "a single node may serve MQTTS alone: {single:?}"
        );
    }

    /// Passwords and keys — in the store's or the bus's URL, the secret and
    /// audit keys, the admin password — never reach a `{:?}` of the
    /// configuration, the store's options or its source.
    #[test]
    fn debug_output_carries_no_credentials() {
        let c = load(&[
            ("TWINHUB_CLUSTER_NATS", "nats://bus:hunter2-nats@nats:4222"),
            (
                "TWINHUB_STORE_URL",
                "postgres://app:hunter2-pg@db:5432/twinhub",
            ),
            ("TWINHUB_SECRETS_KEY", "hunter2-secrets-key"),
            ("TWINHUB_AUDIT_KEY", "hunter2-audit-key"),
            ("TWINHUB_METRICS_BEARER_TOKEN", "hunter2-metrics"),
        ])
        .unwrap();
        let mut c = c;
        c.admin_password = Some("hunter2-admin".into());
        let shown = format!("{c:?} {:?}", c.store_options());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://db:5432/twinhub") && shown.contains("nats://nats:4222"));
        let source = crate::store::backend::Source::Pg {
            url: c.store.url.clone(),
            schema: None,
        };
        assert!(!format!("{source:?}").contains("hunter2"));
    }
}
