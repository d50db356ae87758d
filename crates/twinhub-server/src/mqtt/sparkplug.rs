//! Sparkplug B edge nodes on the built-in broker. An edge node connects
//! as the device named like its edge node id (its births, data and deaths
//! are under `spBv1.0/{group}/…/{edge}`; the ACL allows nothing else).
//! Node metrics update the edge device's twin; a Sparkplug device `X`
//! under edge `E` is the device `E.X`, registered by its first DBIRTH
//! (an unmodelled twin of its own). Births declare metric names and
//! aliases, data may use the aliases; `seq` must count up by one (mod
//! 256): a gap, or data with an alias no birth declared, asks the node to
//! send its births again (NCMD `Node Control/Rebirth`). Deaths mark the
//! node or device inactive (a presence event); a node's death marks its
//! devices inactive too. An NDEATH whose `bdSeq` is not the current
//! NBIRTH's belongs to an earlier session of the node (a late will) and is
//! ignored. Values are stored through the pipeline before a QoS 1 message
//! is acknowledged, like telemetry. A device command to a Sparkplug node
//! or device goes out as NCMD / DCMD writing one metric.
//!
//! The messages are routed to subscribers (SCADA hosts) as published.

use super::broker::Broker;
use crate::events::{Draft, Kind};
use std::collections::HashMap;
use std::sync::Mutex;
use twinhub_codec::sparkplug::{self, Aliases, MsgType, Payload};
use twinhub_codec::Telemetry;

type NodeKey = (String, String);
type AliasKey = (String, String, Option<String>);

/// What the broker remembers of the edge nodes: each node's and device's
/// aliases, and each node's last `seq`.
#[derive(Default)]
pub struct SparkplugState {
    aliases: Mutex<HashMap<AliasKey, Aliases>>,
    seq: Mutex<HashMap<NodeKey, u64>>,
    /// Each node's group, and the bdSeq of its current birth.
    nodes: Mutex<HashMap<NodeKey, (String, Option<u64>)>>,
    pub rebirths: std::sync::atomic::AtomicU64,
    pub stale_deaths: std::sync::atomic::AtomicU64,
}

/// One Sparkplug PUBLISH, decoded, waiting for its pass to be stored.
pub struct Work {
    pub group: String,
    pub kind: MsgType,
    pub edge: String,
    pub device: Option<String>,
    pub payload: Payload,
}

/// Decodes a publish on a Sparkplug topic; None for other topics and for
/// the host's own NCMD/DCMD/STATE (routed, not stored).
pub fn work(topic: &str, payload: &[u8]) -> Option<Result<Work, sparkplug::SparkplugError>> {
    let t = sparkplug::topic(topic)?;
    if matches!(t.kind, MsgType::NCmd | MsgType::DCmd | MsgType::State) {
        return None;
    }
    Some(sparkplug::decode(payload).map(|payload| Work {
        group: t.group.to_string(),
        kind: t.kind,
        edge: t.edge.to_string(),
        device: t.device.map(str::to_string),
        payload,
    }))
}

/// Why a Sparkplug message was not stored (the v5 reason it answers).
#[derive(Debug)]
pub enum Refusal {
    /// Bad payload, unknown alias, no such edge node: 0x99.
    Invalid,
    /// Not stored (store, quota): retry.
    NotStored(crate::pipeline::IngestError),
}

impl Broker {
    fn rebirth(&self, tenant: &str, group: &str, edge: &str) {
        self.sparkplug
            .rebirths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now_ms = (self.now_us() / 1000).max(0) as u64;
        self.publish_from_server(
            tenant,
            &format!("spBv1.0/{group}/NCMD/{edge}"),
            bytes::Bytes::from(sparkplug::rebirth_request(now_ms)),
        );
    }

    /// Applies one Sparkplug message: births, data, deaths.
    pub async fn sparkplug(&self, tenant: &str, w: Work) -> Result<(), Refusal> {
        let registry = &self.deps.registry;
        let Some(node) = registry.device_in(tenant, &w.edge) else {
            return Err(Refusal::Invalid);
        };
        {
            let key = (tenant.to_string(), w.edge.clone());
            let mut nodes = self.sparkplug.nodes.lock().expect("nodes");
            let entry = nodes.entry(key).or_insert((w.group.clone(), None));
            entry.0 = w.group.clone();
            match w.kind {
                MsgType::NBirth => entry.1 = sparkplug::bd_seq(&w.payload),
                MsgType::NDeath => {
                    if let (Some(now), Some(dead)) = (entry.1, sparkplug::bd_seq(&w.payload)) {
                        if now != dead {
                            self.sparkplug
                                .stale_deaths
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::info!(edge = %w.edge, birth = now, death = dead, "stale Sparkplug NDEATH ignored");
                            return Ok(());
                        }
                    }
                }
                _ => {}
            }
        }
        // seq counts every message of the node but NDEATH, 0 at NBIRTH.
        if let Some(seq) = w.payload.seq {
            let key = (tenant.to_string(), w.edge.clone());
            let mut last = self.sparkplug.seq.lock().expect("seq");
            let gap = match (w.kind, last.get(&key)) {
                (MsgType::NBirth, _) | (MsgType::NDeath, _) => false,
                (_, Some(prev)) => seq != (prev + 1) % 256,
                (_, None) => true,
            };
            if w.kind != MsgType::NDeath {
                last.insert(key, seq);
            }
            drop(last);
            if gap {
                tracing::info!(edge = %w.edge, seq, "Sparkplug sequence gap: rebirth requested");
                self.rebirth(tenant, &w.group, &w.edge);
            }
        }
        let device = match &w.device {
            None => node.clone(),
            Some(d) => {
                let id = format!("{}.{d}", w.edge);
                match registry.device_in(tenant, &id) {
                    Some(dev) => dev,
                    None if w.kind == MsgType::DBirth => registry
                        .create_device(tenant, &id, None)
                        .await
                        .map(|(dev, _key)| dev)
                        .map_err(|_| Refusal::Invalid)?,
                    // Data of a device no birth announced: ask for births.
                    None => {
                        self.rebirth(tenant, &w.group, &w.edge);
                        return Err(Refusal::Invalid);
                    }
                }
            }
        };
        let akey = (tenant.to_string(), w.edge.clone(), w.device.clone());
        match w.kind {
            MsgType::NDeath | MsgType::DDeath => {
                // A node's death is its devices' death too.
                let mut dead = vec![device.clone()];
                if w.kind == MsgType::NDeath {
                    let prefix = format!("{}.", w.edge);
                    dead.extend(
                        registry
                            .all_devices()
                            .into_iter()
                            .filter(|d| d.row.tenant == tenant && d.row.id.starts_with(&prefix)),
                    );
                    self.sparkplug
                        .aliases
                        .lock()
                        .expect("aliases")
                        .retain(|(t, e, _), _| !(t == tenant && *e == w.edge));
                } else {
                    self.sparkplug
                        .aliases
                        .lock()
                        .expect("aliases")
                        .remove(&akey);
                }
                let mut drafts = Vec::new();
                for d in dead {
                    if d.active.swap(false, std::sync::atomic::Ordering::Relaxed)
                        || d.row.id == device.row.id
                    {
                        let data = serde_json::json!({"device": d.row.id, "active": false, "source": "sparkplug"});
                        drafts.push(Draft::new(tenant, Kind::Device, Some(d.twin()), None, data));
                    }
                }
                let _ = self.deps.store.emit(drafts).await;
                return Ok(());
            }
            MsgType::NBirth | MsgType::DBirth => {
                let a = Aliases::of_birth(&w.payload);
                self.sparkplug
                    .aliases
                    .lock()
                    .expect("aliases")
                    .insert(akey.clone(), a);
            }
            _ => {}
        }
        let aliases = self
            .sparkplug
            .aliases
            .lock()
            .expect("aliases")
            .get(&akey)
            .cloned()
            .unwrap_or_default();
        let (readings, _skipped) = match sparkplug::readings(&w.payload, &aliases) {
            Ok(r) => r,
            Err(sparkplug::SparkplugError::UnknownAlias(_)) => {
                self.rebirth(tenant, &w.group, &w.edge);
                return Err(Refusal::Invalid);
            }
            Err(_) => return Err(Refusal::Invalid),
        };
        if readings.is_empty() {
            return Ok(());
        }
        let mut t = Telemetry::default();
        for (name, value, quality, ts) in readings {
            t.begin(ts);
            let n = t.intern(&name);
            t.push(n, value, quality);
        }
        self.deps
            .pipeline
            .ingest(&device, "sparkplug", t, None)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                crate::pipeline::IngestError::Invalid { .. } => Refusal::Invalid,
                e => Refusal::NotStored(e),
            })
    }
}

impl Broker {
    /// (group, edge node, device) of a Sparkplug node or device (`{edge}`
    /// or `{edge}.{device}`) this server has heard from.
    pub fn sparkplug_target(
        &self,
        tenant: &str,
        device: &str,
    ) -> Option<(String, String, Option<String>)> {
        let nodes = self.sparkplug.nodes.lock().expect("nodes");
        if let Some((g, _)) = nodes.get(&(tenant.to_string(), device.to_string())) {
            return Some((g.clone(), device.to_string(), None));
        }
        let (edge, dev) = device.split_once('.')?;
        let (g, _) = nodes.get(&(tenant.to_string(), edge.to_string()))?;
        Some((g.clone(), edge.to_string(), Some(dev.to_string())))
    }

    /// A device command as Sparkplug: NCMD to an edge node, DCMD to one of
    /// its devices (`{edge}.{device}`), writing the metric `name`. None
    /// when the device is not a Sparkplug node or device this server has
    /// heard from; else the topic it went to, or why it could not.
    pub fn sparkplug_command(
        &self,
        tenant: &str,
        device: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> Option<Result<String, String>> {
        let (group, edge, dev) = self.sparkplug_target(tenant, device)?;
        let value = match value {
            serde_json::Value::Object(m) if m.len() == 1 && m.contains_key("value") => &m["value"],
            v => v,
        };
        let now_ms = (self.now_us() / 1000).max(0) as u64;
        let Some(payload) = sparkplug::command(name, value, now_ms) else {
            return Some(Err(
                "a Sparkplug command writes one value: a boolean, number or text (or {\"value\": …})".into(),
            ));
        };
        let topic = match dev.as_deref() {
            None => format!("spBv1.0/{group}/NCMD/{edge}"),
            Some(d) => format!("spBv1.0/{group}/DCMD/{edge}/{d}"),
        };
        self.publish_from_server(tenant, &topic, bytes::Bytes::from(payload));
        Some(Ok(topic))
    }
}
