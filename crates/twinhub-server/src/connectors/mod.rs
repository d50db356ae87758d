//! Inbound connectors: sources twinhub connects to itself (an OPC UA
//! server today), defined per tenant through `/api/v1/connectors`. Each
//! enabled connector runs as its own task; its values go through the
//! pipeline like any device's (validated against the twin's model, stored,
//! fanned out), and changes of mapped twin properties are written back.
//! Credentials are names of the tenant's secrets (the secret box), never
//! stored in the definition. Status (state, last error, values in) is
//! kept per connector for the API and `/metrics`.
//!
//! May call: `store` (definition rows), `pipeline` (values), `registry`
//! and `ingest` (LoRaWAN devices and their binary layouts), `secrets` (passwords), `events` (property changes
//! to write back), `clock`, `auth` (random ids), `twinhub-model` (ids,
//! durations).

pub mod lorawan;
pub mod opcua_client;
pub mod spec;

use crate::clock::SharedClock;
use crate::events::{EventBus, Kind, RecvError};
use crate::pipeline::Pipeline;
use crate::store::connectors::{self as rows, ConnectorRow};
use crate::store::{Store, StoreError};
use serde_json::{json, Value};
pub use spec::{ConnectorSpec, SpecError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// 400: the definition's shape.
    #[error("{}: {}", .0.field, .0.rule)]
    Spec(SpecError),
    /// 422: well formed, but names what does not exist.
    #[error("{}: {}", .0.field, .0.rule)]
    Unresolved(SpecError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The connector is not connected (browse needs a session).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SpecError> for ConnectorError {
    fn from(e: SpecError) -> ConnectorError {
        ConnectorError::Spec(e)
    }
}

/// A mapped property changed: write it to its node.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub twin: String,
    pub property: String,
    pub node: String,
    pub value: Value,
}

/// What a connector is doing, as the API and `/metrics` show it.
#[derive(Default)]
pub struct Status {
    state: Mutex<(&'static str, i64)>,
    last_error: Mutex<Option<(i64, String)>>,
    pub points: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub unsupported: AtomicU64,
    pub writes: AtomicU64,
    pub write_errors: AtomicU64,
    pub items: AtomicU64,
    pub connects: AtomicU64,
    pub errors: AtomicU64,
    pub last_value_at: AtomicI64,
    pub failed_items: Mutex<Vec<(String, String)>>,
}

impl Status {
    pub fn set_state(&self, s: &'static str, now: i64) {
        let mut st = self.state.lock().expect("state");
        if st.0 != s {
            *st = (s, now);
        }
    }

    pub fn state(&self) -> &'static str {
        let s = self.state.lock().expect("state").0;
        if s.is_empty() {
            "starting"
        } else {
            s
        }
    }

    /// Records an error; logged when it differs from the last one or a
    /// minute has passed (a server down for hours logs once a minute).
    pub fn error(&self, now: i64, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.lock().expect("error");
        let log = last
            .as_ref()
            .is_none_or(|(at, m)| *m != msg || now - at > 60_000_000);
        if log {
            tracing::warn!(error = %msg, "connector");
        }
        *last = Some((
            if log {
                now
            } else {
                last.as_ref().map_or(now, |l| l.0)
            },
            msg,
        ));
    }

    fn doc(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (state, since) = *self.state.lock().expect("state");
        let last_value = self.last_value_at.load(Ordering::Relaxed);
        let failed: Vec<Value> = self
            .failed_items
            .lock()
            .expect("failed")
            .iter()
            .take(100)
            .map(|(node, why)| json!({"node": node, "status": why}))
            .collect();
        json!({
            "state": if state.is_empty() { "starting" } else { state },
            "since": (since > 0).then(|| twinhub_model::time::format_rfc3339(since)),
            "last_error": self.last_error.lock().expect("error").as_ref().map(|(at, m)| json!({
                "at": twinhub_model::time::format_rfc3339(*at), "message": m})),
            "points_in": n(&self.points),
            "rejected": n(&self.rejected),
            "dropped": n(&self.dropped),
            "unsupported_values": n(&self.unsupported),
            "monitored_items": n(&self.items),
            "failed_items": failed,
            "writes": n(&self.writes),
            "write_errors": n(&self.write_errors),
            "connects": n(&self.connects),
            "last_value_at": (last_value > 0).then(|| twinhub_model::time::format_rfc3339(last_value)),
        })
    }
}

/// What a connector connects to, checked.
pub enum Source {
    OpcUa(spec::OpcUa),
    LoRaWan(lorawan::LoRaWan),
}

/// A stored definition, checked.
pub struct Connector {
    pub tenant: String,
    pub id: String,
    pub spec: ConnectorSpec,
    pub source: Source,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Connector {
    fn opcua(&self) -> Option<&spec::OpcUa> {
        match &self.source {
            Source::OpcUa(o) => Some(o),
            _ => None,
        }
    }
}

struct Running {
    conn: Arc<Connector>,
    status: Arc<Status>,
    live: Arc<opcua_client::Live>,
    lora: Option<Arc<lorawan::Runner>>,
    stop: watch::Sender<bool>,
    writes: mpsc::Sender<WriteRequest>,
}

pub struct ConnectorDeps {
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub events: Arc<EventBus>,
    pub registry: Arc<crate::registry::Registry>,
    pub layouts: Arc<crate::ingest::layouts::Layouts>,
    pub clock: SharedClock,
    /// Where each connector keeps its client certificate and trust list.
    pub data_dir: PathBuf,
    pub shutdown: watch::Receiver<bool>,
}

pub struct ConnectorBook {
    deps: ConnectorDeps,
    running: RwLock<HashMap<(String, String), Running>>,
}

fn key(tenant: &str, id: &str) -> (String, String) {
    (tenant.to_string(), id.to_string())
}

impl ConnectorBook {
    /// Loads the stored connectors, starts the enabled ones, and the task
    /// that writes mapped property changes back.
    pub fn start(deps: ConnectorDeps) -> Result<Arc<ConnectorBook>, StoreError> {
        let stored = deps.store.read(|c| rows::load_connectors(c))?;
        let book = Arc::new(ConnectorBook {
            deps,
            running: RwLock::new(HashMap::new()),
        });
        for r in stored {
            let spec = match serde_json::from_str::<ConnectorSpec>(&r.body) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(connector = %r.id, error = %e, "stored connector no longer parses");
                    continue;
                }
            };
            match book.compile(&r.tenant, &r.id, spec) {
                Ok(mut c) => {
                    c.created_at = r.created_at;
                    c.updated_at = r.updated_at;
                    book.launch(Arc::new(c));
                }
                Err(e) => {
                    tracing::error!(connector = %r.id, error = %e, "stored connector no longer compiles")
                }
            }
        }
        tokio::spawn(write_back(book.clone()));
        Ok(book)
    }

    fn compile(
        &self,
        tenant: &str,
        id: &str,
        mut spec: ConnectorSpec,
    ) -> Result<Connector, ConnectorError> {
        if !spec::KINDS.contains(&spec.kind.as_str()) {
            return Err(
                spec::refuse("kind", format!("must be one of {}", spec::KINDS.join(", "))).into(),
            );
        }
        spec.id = None;
        let source = match spec.kind.as_str() {
            "lorawan" => Source::LoRaWan(lorawan::LoRaWan::parse(&spec.settings)?),
            _ => Source::OpcUa(spec::OpcUa::parse(&spec.settings)?),
        };
        Ok(Connector {
            tenant: tenant.into(),
            id: id.into(),
            spec,
            source,
            created_at: 0,
            updated_at: 0,
        })
    }

    /// What a definition names must exist when it is saved: the twins
    /// (`twin_exists`: a twin or a device's twin) and the password secret.
    fn resolve(
        &self,
        c: &Connector,
        twin_exists: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(), ConnectorError> {
        let secret = |field: &str, name: &str| -> Result<(), ConnectorError> {
            match self.deps.secrets.reveal(&c.tenant, name) {
                Ok(Some(_)) => Ok(()),
                _ => Err(ConnectorError::Unresolved(spec::refuse(
                    field,
                    format!(
                        "no secret named {name} in this tenant (PUT /api/v1/secrets/{name} first)"
                    ),
                ))),
            }
        };
        match &c.source {
            Source::OpcUa(o) => {
                for (i, n) in o.spec.nodes.iter().enumerate() {
                    if !twin_exists(&n.twin) {
                        return Err(ConnectorError::Unresolved(spec::refuse(
                            &format!("nodes[{i}].twin"),
                            format!("twin {} does not exist in this tenant", n.twin),
                        )));
                    }
                }
                if let Some(a) = &o.spec.auth {
                    secret("auth.password_secret", &a.password_secret)?;
                }
            }
            Source::LoRaWan(l) => {
                for (field, name) in l.secrets() {
                    secret(field, name)?;
                }
            }
        }
        Ok(())
    }

    fn pki_dir(&self, tenant: &str, id: &str) -> PathBuf {
        self.deps
            .data_dir
            .join("connectors")
            .join(tenant)
            .join(id)
            .join("pki")
    }

    fn launch(&self, conn: Arc<Connector>) {
        let k = key(&conn.tenant, &conn.id);
        let status = Arc::new(Status::default());
        let live = Arc::new(opcua_client::Live::default());
        let (stop, stop_rx) = watch::channel(false);
        let (writes, writes_rx) = mpsc::channel(1024);
        let lora = match &conn.source {
            Source::LoRaWan(l) => Some(Arc::new(lorawan::Runner::new(
                &conn.tenant,
                l.clone(),
                self.deps.registry.clone(),
                self.deps.layouts.clone(),
                self.deps.pipeline.clone(),
                self.deps.secrets.clone(),
                status.clone(),
                self.deps.clock.clone(),
            ))),
            Source::OpcUa(_) => None,
        };
        if let Some(old) = self.running.write().expect("connectors").insert(
            k,
            Running {
                conn: conn.clone(),
                status: status.clone(),
                live: live.clone(),
                lora: lora.clone(),
                stop,
                writes,
            },
        ) {
            let _ = old.stop.send(true);
        }
        if !conn.spec.enabled {
            status.set_state("disabled", self.deps.clock.now_us());
            return;
        }
        // Stops with the connector or with the server.
        let mut shutdown = self.deps.shutdown.clone();
        let mut stop_rx2 = stop_rx.clone();
        let (both_tx, both_rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => {}
                _ = stop_rx2.wait_for(|s| *s) => {}
            }
            let _ = both_tx.send(true);
        });
        let opcua = match &conn.source {
            Source::OpcUa(o) => o,
            Source::LoRaWan(_) => {
                if let Some(l) = lora {
                    tokio::spawn(l.run_mqtt(both_rx));
                }
                return;
            }
        };
        let password = opcua.spec.auth.as_ref().and_then(|a| {
            self.deps
                .secrets
                .reveal(&conn.tenant, &a.password_secret)
                .ok()
                .flatten()
        });
        if opcua.spec.auth.is_some() && password.is_none() {
            status.error(
                self.deps.clock.now_us(),
                "the password secret cannot be read; connecting anonymously is not tried".into(),
            );
            status.set_state("error", self.deps.clock.now_us());
            return;
        }
        let runner = Arc::new(opcua_client::Runner {
            tenant: conn.tenant.clone(),
            id: conn.id.clone(),
            conf: opcua.clone(),
            password,
            pki_dir: self.pki_dir(&conn.tenant, &conn.id),
            pipeline: self.deps.pipeline.clone(),
            status,
            live,
            clock: self.deps.clock.clone(),
        });
        tokio::spawn(runner.run(both_rx, writes_rx));
    }

    fn lora(&self, tenant: &str, id: &str) -> Result<Arc<lorawan::Runner>, ConnectorError> {
        let running = self.running.read().expect("connectors");
        let r = running
            .get(&key(tenant, id))
            .ok_or_else(|| ConnectorError::NotFound(format!("connector {id} not found")))?;
        if !r.conn.spec.enabled {
            return Err(ConnectorError::Unavailable(format!(
                "connector {id} is disabled"
            )));
        }
        r.lora.clone().ok_or_else(|| {
            ConnectorError::Spec(spec::refuse(
                "id",
                format!("connector {id} is not a lorawan connector"),
            ))
        })
    }

    /// An uplink event posted by the network server (webhook / HTTP
    /// integration); the points stored.
    pub async fn uplink(
        &self,
        tenant: &str,
        id: &str,
        body: &[u8],
    ) -> Result<Result<usize, lorawan::UplinkError>, ConnectorError> {
        let r = self.lora(tenant, id)?;
        Ok(r.uplink(body).await)
    }

    /// The LoRaWAN connector a device's uplinks came through (its commands
    /// go back as downlinks there).
    pub fn lorawan_of_device(&self, tenant: &str, device: &str) -> Option<String> {
        let running = self.running.read().expect("connectors");
        let mut ids: Vec<&String> = running
            .values()
            .filter(|r| r.conn.tenant == tenant && r.conn.spec.enabled)
            .filter(|r| r.lora.as_ref().is_some_and(|l| l.has_seen(device)))
            .map(|r| &r.conn.id)
            .collect();
        ids.sort();
        ids.first().map(|s| s.to_string())
    }

    /// Sends a downlink through a LoRaWAN connector.
    pub async fn downlink(
        &self,
        tenant: &str,
        id: &str,
        device: &str,
        f_port: u8,
        data: &[u8],
        confirmed: bool,
    ) -> Result<Result<(), String>, ConnectorError> {
        let r = self.lora(tenant, id)?;
        Ok(r.downlink(device, f_port, data, confirmed).await)
    }

    /// Checks and stores a definition, new (`replace` None) or replacing
    /// one; the connector (re)starts with it.
    pub async fn put(
        &self,
        tenant: &str,
        spec: ConnectorSpec,
        replace: Option<&str>,
        twin_exists: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Arc<Connector>, bool), ConnectorError> {
        let id = match (replace, &spec.id) {
            (Some(id), Some(given)) if given != id => {
                return Err(spec::refuse("id", "differs from the id in the path").into())
            }
            (Some(id), _) => id.to_string(),
            (None, Some(given)) => given.clone(),
            (None, None) => format!("cn-{}", crate::auth::random_secret(6).to_lowercase()),
        };
        twinhub_model::ids::check_id("id", &id).map_err(|e| spec::refuse(&e.field, e.rule))?;
        let current = self.get(tenant, &id);
        if replace.is_none() && current.is_some() {
            return Err(ConnectorError::Conflict(format!(
                "connector {id} already exists"
            )));
        }
        let mut c = self.compile(tenant, &id, spec)?;
        self.resolve(&c, twin_exists)?;
        let now = self.deps.clock.now_us();
        c.created_at = current.as_ref().map_or(now, |c| c.created_at);
        c.updated_at = now;
        let row = ConnectorRow {
            tenant: tenant.into(),
            id: id.clone(),
            kind: c.spec.kind.clone(),
            body: serde_json::to_string(&c.spec).unwrap_or_default(),
            created_at: c.created_at,
            updated_at: now,
        };
        self.deps
            .store
            .write(move |ctx| rows::put_connector(ctx.tx, &row))
            .await?;
        let c = Arc::new(c);
        self.launch(c.clone());
        Ok((c, current.is_some()))
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, ConnectorError> {
        if let Some(old) = self
            .running
            .write()
            .expect("connectors")
            .remove(&key(tenant, id))
        {
            let _ = old.stop.send(true);
        }
        let (t, i) = (tenant.to_string(), id.to_string());
        let gone = self
            .deps
            .store
            .write(move |ctx| rows::delete_connector(ctx.tx, &t, &i))
            .await?;
        let _ = std::fs::remove_dir_all(self.pki_dir(tenant, id).parent().expect("dir"));
        Ok(gone)
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Connector>> {
        self.running
            .read()
            .expect("connectors")
            .get(&key(tenant, id))
            .map(|r| r.conn.clone())
    }

    pub fn list(&self, tenant: &str) -> Vec<Arc<Connector>> {
        let mut v: Vec<Arc<Connector>> = self
            .running
            .read()
            .expect("connectors")
            .values()
            .filter(|r| r.conn.tenant == tenant)
            .map(|r| r.conn.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The definition as stored plus its status and the client
    /// certificate (to add to the server's trust list).
    pub fn doc(&self, c: &Connector) -> Value {
        let mut v = serde_json::to_value(&c.spec).unwrap_or(Value::Null);
        v["id"] = json!(c.id);
        v["created_at"] = json!(twinhub_model::time::format_rfc3339(c.created_at));
        v["updated_at"] = json!(twinhub_model::time::format_rfc3339(c.updated_at));
        let running = self.running.read().expect("connectors");
        if let Some(r) = running.get(&key(&c.tenant, &c.id)) {
            v["status"] = r.status.doc();
            if let Some(der) = r.live.certificate.lock().expect("cert").as_ref() {
                use base64::Engine;
                use sha2::Digest;
                v["client_certificate"] = json!({
                    "der_base64": base64::engine::general_purpose::STANDARD.encode(der),
                    "sha1_thumbprint": hex(&sha1_of(der)),
                    "sha256": hex(&sha2::Sha256::digest(der)),
                });
            }
        }
        v
    }

    /// One level of the connected server's address space.
    pub async fn browse(
        &self,
        tenant: &str,
        id: &str,
        node: Option<&str>,
    ) -> Result<Value, ConnectorError> {
        let session = {
            let running = self.running.read().expect("connectors");
            let r = running
                .get(&key(tenant, id))
                .ok_or_else(|| ConnectorError::NotFound(format!("connector {id} not found")))?;
            r.live.session()
        };
        let session = session.ok_or_else(|| {
            ConnectorError::Unavailable(format!("connector {id} is not connected"))
        })?;
        opcua_client::browse(&session, node)
            .await
            .map_err(|e| match e {
                opcua_client::BrowseError::BadNode => {
                    spec::refuse("node", "must be an OPC UA node id such as ns=2;s=Reactor1").into()
                }
                opcua_client::BrowseError::Failed(m) => {
                    ConnectorError::Unavailable(format!("browse failed: {m}"))
                }
            })
    }

    /// (tenant, connector, kind, status) of every connector, for `/metrics`.
    pub fn all_status(&self) -> Vec<(String, String, Arc<Status>)> {
        let mut v: Vec<_> = self
            .running
            .read()
            .expect("connectors")
            .values()
            .map(|r| (r.conn.tenant.clone(), r.conn.id.clone(), r.status.clone()))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }

    /// The writes a committed twin change asks of the running connectors.
    fn writes_for(
        &self,
        tenant: &str,
        twin: &str,
        patch: &[Value],
    ) -> Vec<(mpsc::Sender<WriteRequest>, WriteRequest)> {
        let running = self.running.read().expect("connectors");
        let mut out = Vec::new();
        for r in running
            .values()
            .filter(|r| r.conn.tenant == tenant && r.conn.spec.enabled)
        {
            let Some(opcua) = r.conn.opcua() else {
                continue;
            };
            for n in opcua
                .spec
                .nodes
                .iter()
                .filter(|n| n.writes() && n.twin == twin)
            {
                let path = format!("/{}", n.property);
                for op in patch {
                    let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
                    if (kind == "add" || kind == "replace")
                        && op.get("path").and_then(Value::as_str) == Some(path.as_str())
                    {
                        if let Some(v) = op.get("value") {
                            out.push((
                                r.writes.clone(),
                                WriteRequest {
                                    twin: twin.to_string(),
                                    property: n.property.clone(),
                                    node: n.node.clone(),
                                    value: v.clone(),
                                },
                            ));
                        }
                    }
                }
            }
        }
        out
    }
}

/// Committed twin updates → writes to mapped nodes. Live, at most once:
/// a write that would come from a missed event (the fan-out's bound) or
/// while the connector is down is not replayed later, so a stale setpoint
/// never reaches a machine.
async fn write_back(book: Arc<ConnectorBook>) {
    let mut rx = book.deps.events.subscribe_as("connectors");
    let mut shutdown = book.deps.shutdown.clone();
    loop {
        let e = tokio::select! {
            r = rx.recv() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let e = match e {
            Ok(e) => e,
            Err(RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if e.kind != Kind::Twin || e.data.get("op").and_then(Value::as_str) != Some("update") {
            continue;
        }
        let (Some(twin), Some(Value::Array(patch))) = (&e.twin, e.data.get("patch")) else {
            continue;
        };
        for (tx, w) in book.writes_for(&e.tenant, twin, patch) {
            if tx.try_send(w).is_err() {
                tracing::warn!("a connector's write queue is full; a write was skipped");
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// OPC UA names certificates by their SHA-1 thumbprint.
fn sha1_of(der: &[u8]) -> Vec<u8> {
    ::opcua::crypto::X509::from_der(der)
        .map(|x| x.thumbprint().value().to_vec())
        .unwrap_or_default()
}
