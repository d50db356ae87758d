//! The OPC UA client connector: a session to one server (security None or
//! Basic256Sha256 Sign / SignAndEncrypt, anonymous or user/password, a
//! trust list of server certificates), one subscription with a monitored
//! item per mapped node, and writes back to nodes when a mapped twin
//! property changes. Values become telemetry of the mapped twins with the
//! node's source timestamp as `ts` and its status as `quality`; they are
//! stored in batches (kept and retried while the store refuses, dropped
//! and counted only past a bound). The session layer of `async-opcua`
//! reconnects with backoff and recreates the subscription; a connection
//! that cannot be made at all is retried here, with backoff.

use super::spec::{NodeMap, OpcUa};
use super::{Status, WriteRequest};
use crate::pipeline::{IngestError, Pipeline};
use futures_util::StreamExt;
use opcua::client::{
    ClientBuilder, DataChangeCallback, IdentityToken, MonitoredItem, Session, SessionPollResult,
};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, DataValue,
    MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId,
    ReadValueId, ReferenceTypeId, StatusCode, TimestampsToReturn, UserTokenPolicy, Variant,
    WriteValue,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use twinhub_codec::Telemetry;
use twinhub_model::{Quality, Value};

/// Values waiting to be stored, at most (beyond, new ones are dropped and
/// counted): about a minute of 10k nodes at 1 s, with room.
const MAX_PENDING: usize = 1 << 20;
/// Values stored per batch, at most.
const BATCH: usize = 50_000;

/// One value read from a node, for the mapping at `map`.
struct Reading {
    map: u32,
    value: Value,
    quality: Quality,
    ts: i64,
}

/// What a running OPC UA connector shares with the API (browse, status).
#[derive(Default)]
pub struct Live {
    session: Mutex<Option<Arc<Session>>>,
    /// The client's application certificate (DER), for the server's
    /// trust list.
    pub certificate: Mutex<Option<Vec<u8>>>,
}

impl Live {
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.lock().expect("session").clone()
    }
}

pub struct Runner {
    pub tenant: String,
    pub id: String,
    pub conf: OpcUa,
    pub password: Option<String>,
    pub pki_dir: PathBuf,
    pub pipeline: Arc<Pipeline>,
    pub status: Arc<Status>,
    pub live: Arc<Live>,
    pub clock: crate::clock::SharedClock,
}

fn policy(conf: &OpcUa) -> (SecurityPolicy, MessageSecurityMode) {
    let p = match conf.spec.security.policy.as_str() {
        "Basic256Sha256" => SecurityPolicy::Basic256Sha256,
        _ => SecurityPolicy::None,
    };
    let m = match conf.spec.security.mode.as_str() {
        "Sign" => MessageSecurityMode::Sign,
        "SignAndEncrypt" => MessageSecurityMode::SignAndEncrypt,
        _ => MessageSecurityMode::None,
    };
    (p, m)
}

/// Puts the trusted server certificates where the client's certificate
/// store looks for them (and only those: a certificate removed from the
/// definition is no longer trusted).
fn write_trust_list(pki: &std::path::Path, certs: &[String]) -> std::io::Result<()> {
    use base64::Engine;
    let dir = pki.join("trusted");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for c in certs {
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(c.trim()) else {
            continue;
        };
        if let Ok(x) = opcua::crypto::X509::from_der(&der) {
            let name = opcua::crypto::CertificateStore::cert_file_name(&x);
            // A certificate met before it was trusted sits in `rejected`,
            // which the store checks first.
            let _ = std::fs::remove_file(pki.join("rejected").join(&name));
            std::fs::write(dir.join(name), &der)?;
        }
    }
    Ok(())
}

/// OPC UA value → telemetry value; None for kinds twinhub does not store
/// (arrays, structures) and for non-finite numbers.
fn to_value(v: &Variant) -> Option<Value> {
    let n = |x: f64| x.is_finite().then_some(Value::Number(x));
    match v {
        Variant::Boolean(b) => Some(Value::Bool(*b)),
        Variant::SByte(x) => n(*x as f64),
        Variant::Byte(x) => n(*x as f64),
        Variant::Int16(x) => n(*x as f64),
        Variant::UInt16(x) => n(*x as f64),
        Variant::Int32(x) => n(*x as f64),
        Variant::UInt32(x) => n(*x as f64),
        Variant::Int64(x) => n(*x as f64),
        Variant::UInt64(x) => n(*x as f64),
        // Through its shortest decimal form: 0.1f32 is stored as 0.1.
        Variant::Float(x) => n(x.to_string().parse().ok()?),
        Variant::Double(x) => n(*x),
        Variant::String(s) => s.value().clone().map(Value::String),
        Variant::LocalizedText(t) => t.text.value().clone().map(Value::String),
        _ => None,
    }
}

/// A JSON value as the OPC UA type `like` has (the node's current value),
/// or None when it does not fit that type.
pub fn to_variant(like: &Variant, v: &serde_json::Value) -> Option<Variant> {
    use serde_json::Value as J;
    let int = || -> Option<i64> {
        let f = v.as_f64()?;
        (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    };
    Some(match like {
        Variant::Boolean(_) => Variant::Boolean(v.as_bool()?),
        Variant::SByte(_) => Variant::SByte(int()?.try_into().ok()?),
        Variant::Byte(_) => Variant::Byte(int()?.try_into().ok()?),
        Variant::Int16(_) => Variant::Int16(int()?.try_into().ok()?),
        Variant::UInt16(_) => Variant::UInt16(int()?.try_into().ok()?),
        Variant::Int32(_) => Variant::Int32(int()?.try_into().ok()?),
        Variant::UInt32(_) => Variant::UInt32(int()?.try_into().ok()?),
        Variant::Int64(_) => Variant::Int64(int()?),
        Variant::UInt64(_) => Variant::UInt64(int()?.try_into().ok()?),
        Variant::Float(_) => Variant::Float(v.as_f64()? as f32),
        Variant::Double(_) => Variant::Double(v.as_f64()?),
        Variant::String(_) => Variant::String(v.as_str()?.into()),
        // A node without a value yet: the JSON value's own type.
        Variant::Empty => match v {
            J::Bool(b) => Variant::Boolean(*b),
            J::Number(n) => Variant::Double(n.as_f64()?),
            J::String(s) => Variant::String(s.as_str().into()),
            _ => return None,
        },
        _ => return None,
    })
}

fn quality(s: Option<StatusCode>) -> Quality {
    match s {
        None => Quality::Good,
        Some(s) if s.is_good() => Quality::Good,
        Some(s) if s.is_uncertain() => Quality::Uncertain,
        Some(_) => Quality::Bad,
    }
}

/// A value's timestamp (µs): the source's, else the server's, else now.
fn stamp(dv: &DataValue, now: i64) -> i64 {
    let t = dv.source_timestamp.or(dv.server_timestamp);
    match t {
        Some(t) if !t.is_null() => t.as_chrono().timestamp_micros(),
        _ => now,
    }
}

impl Runner {
    fn error(&self, msg: impl Into<String>) {
        self.status.error(self.clock.now_us(), msg.into());
    }

    /// Runs until `stop` turns true: connect, subscribe, store values,
    /// write back; reconnect when needed.
    pub async fn run(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        mut writes: mpsc::Receiver<WriteRequest>,
    ) {
        let (tx, rx) = mpsc::channel::<Reading>(MAX_PENDING);
        let storer = tokio::spawn(self.clone().store_loop(rx));
        let mut backoff = Duration::from_millis(500);
        while !*stop.borrow() {
            self.status.set_state("connecting", self.clock.now_us());
            match self.session().await {
                Ok((session, event_loop)) => {
                    backoff = Duration::from_millis(500);
                    *self.live.session.lock().expect("session") = Some(session.clone());
                    let ended = self
                        .connected(&session, event_loop, tx.clone(), &mut stop, &mut writes)
                        .await;
                    *self.live.session.lock().expect("session") = None;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
                    if !ended {
                        break;
                    }
                }
                Err(e) => {
                    self.error(e);
                    self.status.set_state("disconnected", self.clock.now_us());
                }
            }
            let jitter = 0.75 + rand::random::<f64>() * 0.5;
            tokio::select! {
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                _ = stop.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        drop(tx);
        let _ = storer.await;
        self.status.set_state("stopped", self.clock.now_us());
    }

    /// Connects and subscribes; the session and its event loop (not yet
    /// polled).
    async fn session(
        self: &Arc<Self>,
    ) -> Result<
        (
            Arc<Session>,
            opcua::client::SessionEventLoop<opcua::client::transport::TcpConnector>,
        ),
        String,
    > {
        let conf = &self.conf;
        write_trust_list(&self.pki_dir, &conf.spec.trust.certificates)
            .map_err(|e| format!("cannot write the trust list: {e}"))?;
        let mut client = ClientBuilder::new()
            .application_name("twinhub")
            .application_uri("urn:twinhub:connector")
            .product_uri("urn:twinhub")
            .pki_dir(self.pki_dir.clone())
            .create_sample_keypair(true)
            .trust_server_certs(conf.spec.trust.any)
            // A lost connection ends the session; `run` connects again
            // with backoff and subscribes afresh (async-opcua 0.19's own
            // reconnect recreates the subscription but sends no Publish
            // requests for it afterwards, so values would stop).
            .session_retry_limit(0)
            .keep_alive_interval(Duration::from_secs(5))
            .recreate_subscriptions(false)
            .session_timeout(60_000)
            .client()
            .map_err(|e| format!("client settings: {}", e.join("; ")))?;
        if let Ok(der) = std::fs::read(self.pki_dir.join("own/cert.der")) {
            *self.live.certificate.lock().expect("cert") = Some(der);
        }
        let (p, m) = policy(conf);
        // The endpoint is matched by policy and mode; the identity is
        // chosen from the server's token policies when the session starts.
        let token_policy = UserTokenPolicy::anonymous();
        let identity = match (&conf.spec.auth, &self.password) {
            (Some(a), Some(pw)) => IdentityToken::new_user_name(a.user.clone(), pw.clone()),
            _ => IdentityToken::Anonymous,
        };
        let (session, event_loop) = tokio::time::timeout(
            Duration::from_secs(15),
            client.connect_to_matching_endpoint(
                (conf.spec.endpoint.as_str(), p.to_str(), m, token_policy),
                identity,
            ),
        )
        .await
        .map_err(|_| "the server did not answer within 15 s".to_string())?
        .map_err(|e| describe(&e.to_string()))?;
        Ok((session, event_loop))
    }

    /// Polls the session until it fails for good (true: try again) or
    /// `stop` (false).
    async fn connected(
        self: &Arc<Self>,
        session: &Arc<Session>,
        event_loop: opcua::client::SessionEventLoop<opcua::client::transport::TcpConnector>,
        tx: mpsc::Sender<Reading>,
        stop: &mut watch::Receiver<bool>,
        writes: &mut mpsc::Receiver<WriteRequest>,
    ) -> bool {
        let mut polls = Box::pin(event_loop.enter());
        let mut subscribed = false;
        let subscribe = self.clone().subscribe(session.clone(), tx);
        tokio::pin!(subscribe);
        loop {
            tokio::select! {
                p = polls.next() => match p {
                    None => return true,
                    Some(Err(code)) => {
                        self.error(format!("session ended: {}", describe(&code.to_string())));
                        return true;
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                        self.error(format!("connection lost: {}", describe(&code.to_string())));
                        self.status.set_state("reconnecting", self.clock.now_us());
                        return true;
                    }
                    Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                        self.error(format!("connecting failed: {}", describe(&code.to_string())));
                        return true;
                    }
                    Some(Ok(_)) => {}
                },
                r = &mut subscribe, if !subscribed => {
                    subscribed = true;
                    match r {
                        Ok(()) => {
                            self.status.connects.fetch_add(1, Ordering::Relaxed);
                            self.status.set_state("connected", self.clock.now_us());
                        }
                        Err(e) => {
                            self.error(e);
                            return true;
                        }
                    }
                }
                w = writes.recv() => {
                    // Its own task: the session's requests complete only
                    // while this loop keeps polling the event loop.
                    if let Some(w) = w {
                        let (me, session) = (self.clone(), session.clone());
                        tokio::spawn(async move { me.write(&session, w).await });
                    }
                }
                _ = stop.changed() => return false,
            }
        }
    }

    /// The subscription and one monitored item per read mapping (client
    /// handle = mapping index + 1); items the server refuses are named in
    /// the status.
    async fn subscribe(
        self: Arc<Self>,
        session: Arc<Session>,
        tx: mpsc::Sender<Reading>,
    ) -> Result<(), String> {
        if !session.wait_for_connection().await {
            return Err("the session did not connect".into());
        }
        let me = self.clone();
        let sub = session
            .create_subscription(
                self.conf.publishing,
                60,
                10,
                // Publish responses of at most 1,000 values: the client
                // decodes arrays of up to 1,000 elements.
                1000,
                0,
                true,
                DataChangeCallback::new(move |dv, item: &MonitoredItem| {
                    me.on_value(&tx, dv, item);
                }),
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot create the subscription: {}",
                    describe(&e.to_string())
                )
            })?;
        let sampling = self.conf.sampling.as_secs_f64() * 1000.0;
        let items: Vec<(usize, MonitoredItemCreateRequest)> = self
            .conf
            .spec
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.reads())
            .map(|(i, n)| {
                let node: NodeId = n.node.parse().expect("checked at save");
                (
                    i,
                    MonitoredItemCreateRequest {
                        item_to_monitor: node.into(),
                        monitoring_mode: MonitoringMode::Reporting,
                        requested_parameters: MonitoringParameters {
                            client_handle: i as u32 + 1,
                            sampling_interval: sampling,
                            queue_size: 10,
                            discard_oldest: true,
                            ..Default::default()
                        },
                    },
                )
            })
            .collect();
        let mut failed = Vec::new();
        let mut ok = 0u64;
        for chunk in items.chunks(1000) {
            let idx: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
            let reqs = chunk.iter().map(|(_, r)| r.clone()).collect();
            let created = session
                .create_monitored_items(sub, TimestampsToReturn::Both, reqs)
                .await
                .map_err(|e| format!("cannot monitor the nodes: {}", describe(&e.to_string())))?;
            for (i, c) in idx.iter().zip(created) {
                if c.result.status_code.is_good() {
                    ok += 1;
                } else {
                    failed.push((
                        self.conf.spec.nodes[*i].node.clone(),
                        c.result.status_code.to_string(),
                    ));
                }
            }
        }
        self.status.items.store(ok, Ordering::Relaxed);
        if let Some((node, why)) = failed.first() {
            self.error(format!(
                "{} node(s) cannot be monitored; first: {node}: {why}",
                failed.len()
            ));
        }
        *self.status.failed_items.lock().expect("failed") = failed;
        Ok(())
    }

    fn on_value(&self, tx: &mpsc::Sender<Reading>, dv: DataValue, item: &MonitoredItem) {
        let map = item.client_handle().wrapping_sub(1);
        let Some(n) = self.conf.spec.nodes.get(map as usize) else {
            return;
        };
        let Some(value) = dv.value.as_ref().and_then(to_value) else {
            // A Bad value often has no value at all: nothing to store.
            if dv
                .value
                .as_ref()
                .is_some_and(|v| !matches!(v, Variant::Empty))
            {
                self.status.unsupported.fetch_add(1, Ordering::Relaxed);
                self.error(format!(
                    "{}: value of a type twinhub does not store",
                    n.node
                ));
            }
            return;
        };
        let r = Reading {
            map,
            value,
            quality: quality(dv.status),
            ts: stamp(&dv, self.clock.now_us()),
        };
        if tx.try_send(r).is_err() {
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stores readings in batches, one pipeline call per twin; a batch the
    /// store cannot take now is retried (readings queue meanwhile).
    async fn store_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Reading>) {
        let mut buf = Vec::with_capacity(1024);
        let mut retry = Duration::from_millis(100);
        loop {
            if rx.recv_many(&mut buf, BATCH).await == 0 {
                return;
            }
            // Let a publish's worth of values gather into one commit.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let room = BATCH.saturating_sub(buf.len());
            if room > 0 {
                while let Ok(r) = rx.try_recv() {
                    buf.push(r);
                    if buf.len() >= BATCH {
                        break;
                    }
                }
            }
            let mut batches = self.group(&buf);
            buf.clear();
            while !batches.is_empty() {
                batches = self.store(batches).await;
                if batches.is_empty() {
                    retry = Duration::from_millis(100);
                    break;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        }
    }

    fn group(&self, readings: &[Reading]) -> Vec<(String, Telemetry)> {
        let mut by_twin: HashMap<&str, Telemetry> = HashMap::new();
        for r in readings {
            let n: &NodeMap = &self.conf.spec.nodes[r.map as usize];
            let t = by_twin.entry(n.twin.as_str()).or_default();
            let last_ts = t.messages().last().and_then(|m| m.ts);
            if t.is_empty() || last_ts != Some(r.ts) {
                t.begin(Some(r.ts));
            }
            let name = t.intern(&n.property);
            t.push(name, r.value.clone(), r.quality);
        }
        by_twin
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// Stores each twin's batch; the batches to try again.
    async fn store(&self, batches: Vec<(String, Telemetry)>) -> Vec<(String, Telemetry)> {
        let calls = batches.into_iter().map(|(twin, t)| async move {
            let r = self
                .pipeline
                .ingest_twin(
                    &self.tenant,
                    &twin,
                    "opcua",
                    t.clone(),
                    Some(Duration::from_secs(5)),
                )
                .await;
            (twin, t, r)
        });
        let mut again = Vec::new();
        for (twin, t, r) in futures_util::future::join_all(calls).await {
            match r {
                Ok(n) => {
                    self.status.points.fetch_add(n as u64, Ordering::Relaxed);
                    self.status
                        .last_value_at
                        .store(self.clock.now_us(), Ordering::Relaxed);
                }
                Err(IngestError::Invalid { field, rule }) => {
                    self.status
                        .rejected
                        .fetch_add(t.points() as u64, Ordering::Relaxed);
                    self.error(format!("twin {twin}: {field}: {rule}"));
                }
                Err(IngestError::Quota(why)) => {
                    self.status
                        .dropped
                        .fetch_add(t.points() as u64, Ordering::Relaxed);
                    self.error(format!("twin {twin}: over quota: {why}"));
                }
                Err(e) => {
                    self.error(format!("twin {twin}: not stored yet, retrying: {e}"));
                    again.push((twin, t));
                }
            }
        }
        again
    }

    /// Writes a twin property's new value to its node, as the node's own
    /// type (read first).
    async fn write(&self, session: &Arc<Session>, w: WriteRequest) {
        let node: NodeId = match w.node.parse() {
            Ok(n) => n,
            Err(_) => return,
        };
        let outcome: Result<(), String> = async {
            let read = session
                .read(
                    &[ReadValueId::from(node.clone())],
                    TimestampsToReturn::Neither,
                    0.0,
                )
                .await
                .map_err(|e| describe(&e.to_string()))?;
            let current = read
                .first()
                .and_then(|dv| dv.value.clone())
                .unwrap_or(Variant::Empty);
            let value = to_variant(&current, &w.value).ok_or_else(|| {
                format!(
                    "{} does not fit the node's type {}",
                    w.value,
                    format!("{:?}", current.type_id())
                )
            })?;
            let results = session
                .write(&[WriteValue {
                    node_id: node.clone(),
                    attribute_id: AttributeId::Value as u32,
                    index_range: Default::default(),
                    value: DataValue::value_only(value),
                }])
                .await
                .map_err(|e| describe(&e.to_string()))?;
            match results.first() {
                Some(s) if s.is_good() => Ok(()),
                Some(s) => Err(format!("the server refused the write: {s}")),
                None => Err("the server answered no result".into()),
            }
        }
        .await;
        match outcome {
            Ok(()) => {
                self.status.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.status.write_errors.fetch_add(1, Ordering::Relaxed);
                self.error(format!(
                    "write of {}.{} to {}: {e}",
                    w.twin, w.property, w.node
                ));
            }
        }
    }
}

/// A client error in words an operator can act on (async-opcua's texts
/// carry Rust debug output; the status code's name says enough).
fn describe(e: &str) -> String {
    let hint = if e.contains("BadCertificateUntrusted") || e.contains("BadSecurityChecksFailed") {
        " (is the server's certificate in trust.certificates, and the connector's in the server's trust list?)"
    } else if e.contains("BadIdentityTokenRejected") || e.contains("BadUserAccessDenied") {
        " (check auth.user and the password secret)"
    } else if e.contains("BadTcpEndpointUrlInvalid")
        || e.contains("BadCommunicationError")
        || e.contains("BadConnectionRejected")
        || e.contains("BadNotConnected")
    {
        " (is the server running and the endpoint right?)"
    } else {
        ""
    };
    let mut s: String = e.chars().take(300).collect();
    s.push_str(hint);
    s
}

/// One level of the server's address space under `node` (the Objects
/// folder when None): the hierarchical references, for a UI to pick nodes.
pub async fn browse(
    session: &Session,
    node: Option<&str>,
) -> Result<serde_json::Value, BrowseError> {
    let start: NodeId = match node {
        None => NodeId::objects_folder_id(),
        Some(s) => s.parse().map_err(|_| BrowseError::BadNode)?,
    };
    let desc = BrowseDescription {
        node_id: start.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::All as u32,
    };
    let results = session
        .browse(&[desc], 1000, None)
        .await
        .map_err(|e| BrowseError::Failed(describe(&e.to_string())))?;
    let Some(r) = results.into_iter().next() else {
        return Err(BrowseError::Failed("the server answered no result".into()));
    };
    if !r.status_code.is_good() {
        return Err(BrowseError::Failed(r.status_code.to_string()));
    }
    let children: Vec<serde_json::Value> = r
        .references
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "node": d.node_id.node_id.to_string(),
                "browse_name": d.browse_name.to_string(),
                "display_name": d.display_name.text.as_ref(),
                "class": format!("{:?}", d.node_class),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "node": start.to_string(),
        "children": children,
        "more": !r.continuation_point.is_null(),
    }))
}

#[derive(Debug)]
pub enum BrowseError {
    BadNode,
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_map_to_telemetry_and_back() {
        assert_eq!(to_value(&Variant::Float(0.1)), Some(Value::Number(0.1)));
        assert_eq!(to_value(&Variant::Int32(-7)), Some(Value::Number(-7.0)));
        assert_eq!(to_value(&Variant::Boolean(true)), Some(Value::Bool(true)));
        assert_eq!(to_value(&Variant::Double(f64::NAN)), None);
        assert_eq!(
            to_value(&Variant::from("run")),
            Some(Value::String("run".into()))
        );
        assert_eq!(
            to_variant(&Variant::Int16(0), &json!(42)),
            Some(Variant::Int16(42))
        );
        assert_eq!(to_variant(&Variant::Int16(0), &json!(4.5)), None);
        assert_eq!(to_variant(&Variant::Byte(0), &json!(300)), None);
        assert_eq!(
            to_variant(&Variant::Double(0.0), &json!(372.5)),
            Some(Variant::Double(372.5))
        );
        assert_eq!(to_variant(&Variant::Boolean(false), &json!("yes")), None);
    }

    #[test]
    fn status_codes_map_to_quality() {
        assert_eq!(quality(None), Quality::Good);
        assert_eq!(quality(Some(StatusCode::Good)), Quality::Good);
        assert_eq!(
            quality(Some(StatusCode::UncertainLastUsableValue)),
            Quality::Uncertain
        );
        assert_eq!(quality(Some(StatusCode::BadSensorFailure)), Quality::Bad);
    }
}
