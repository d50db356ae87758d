//! Raw frames over UDP, for devices too small for MQTT or TLS (seed 001's
//! Binary Parser). A datagram carries the device id and key and a payload
//! (`twinhub_codec::layout::Frame`): a binary frame decoded with the
//! device's layout (`PUT /api/v1/devices/{id}/layout`), or JSON telemetry
//! when it starts with `{` or `[`. The points are stored like a device's
//! HTTP request; if the frame asks for it, a 6-byte acknowledgement
//! answers once they are durable (or says why not). Malformed frames are
//! counted (`twinhub_ingest_refused_total{protocol="udp"}`), logged, and
//! never stop the listener.

use crate::metrics::ServerMetrics;
use crate::pipeline::{IngestError, Pipeline};
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use twinhub_codec::layout::{ack, AckStatus, Frame, Layout};
use twinhub_codec::{DecodeError, Limits};

/// Every device's layout, kept in memory (a frame is decoded without a
/// store read).
pub struct Layouts {
    store: Store,
    map: RwLock<HashMap<String, (String, Arc<Layout>, String)>>,
}

impl Layouts {
    pub fn load(store: Store) -> Result<Arc<Layouts>, StoreError> {
        let mut map = HashMap::new();
        for (tenant, device, body) in store.read(crate::store::registry::load_layouts)? {
            match Layout::parse(body.as_bytes()) {
                Ok(l) => {
                    map.insert(device, (tenant, Arc::new(l), body));
                }
                Err(e) => {
                    tracing::error!(device, error = %e.rule, "stored layout no longer parses")
                }
            }
        }
        Ok(Arc::new(Layouts {
            store,
            map: RwLock::new(map),
        }))
    }

    /// Checks and stores a device's layout (errors name the field).
    pub async fn put(&self, tenant: &str, device: &str, body: &[u8]) -> Result<(), PutError> {
        let layout = Layout::parse(body).map_err(PutError::Invalid)?;
        let text = String::from_utf8_lossy(body).into_owned();
        let (t, d, b) = (tenant.to_string(), device.to_string(), text.clone());
        self.store
            .write(move |ctx| crate::store::registry::put_layout(ctx.tx, &t, &d, Some(&b)))
            .await?;
        self.map.write().expect("layouts").insert(
            device.to_string(),
            (tenant.to_string(), Arc::new(layout), text),
        );
        Ok(())
    }

    /// The layout as declared (JSON), if the device has one.
    pub fn declared(&self, tenant: &str, device: &str) -> Option<String> {
        let m = self.map.read().expect("layouts");
        m.get(device)
            .filter(|(t, _, _)| t == tenant)
            .map(|(_, _, b)| b.clone())
    }

    fn get(&self, device: &str) -> Option<Arc<Layout>> {
        self.map
            .read()
            .expect("layouts")
            .get(device)
            .map(|(_, l, _)| l.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("{}: {}", .0.field, .0.rule)]
    Invalid(DecodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct UdpDeps {
    pub registry: Arc<Registry>,
    pub pipeline: Arc<Pipeline>,
    pub layouts: Arc<Layouts>,
    pub metrics: Arc<ServerMetrics>,
    pub limits: Limits,
    pub wait: Duration,
}

/// One datagram: its outcome (and the sequence number to acknowledge).
async fn handle(d: &UdpDeps, buf: &[u8]) -> Option<(bool, u16, AckStatus)> {
    let frame = match Frame::parse(buf) {
        Ok(f) => f,
        Err(why) => {
            d.metrics.refused("udp", "invalid");
            tracing::debug!(why, "UDP datagram refused");
            return None;
        }
    };
    let reply = |s| Some((frame.ack, frame.seq, s));
    let device = match d.registry.authenticate_device(frame.device, frame.key) {
        Ok(dev) => dev,
        Err(_) => {
            d.metrics.auth_failures.add("udp", 1);
            return reply(AckStatus::Unauthorized);
        }
    };
    let decoded = match frame.payload.first() {
        Some(b'{' | b'[') => twinhub_codec::decode_telemetry(frame.payload, &d.limits),
        _ => match d.layouts.get(&device.row.id) {
            Some(l) => l.decode(frame.payload),
            None => Err(DecodeError {
                field: "frame".into(),
                rule: "the device has no layout (PUT /api/v1/devices/{id}/layout)".into(),
            }),
        },
    };
    let msgs = match decoded {
        Ok(m) => m,
        Err(e) => {
            d.metrics.refused("udp", "invalid");
            tracing::info!(device = %device.row.id, error = %format!("{}: {}", e.field, e.rule), "UDP frame refused");
            return reply(AckStatus::Invalid);
        }
    };
    match d.pipeline.ingest(&device, "udp", msgs, Some(d.wait)).await {
        Ok(_) => reply(AckStatus::Stored),
        Err(IngestError::Invalid { .. }) => reply(AckStatus::Invalid),
        Err(_) => reply(AckStatus::RetryLater),
    }
}

/// Receives datagrams until shutdown; each is handled in its own task so
/// a slow commit never stops the socket.
pub async fn serve_udp(
    socket: tokio::net::UdpSocket,
    deps: UdpDeps,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let deps = Arc::new(deps);
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let datagram = buf[..n].to_vec();
        let (socket, deps) = (socket.clone(), deps.clone());
        tokio::spawn(async move {
            if let Some((true, seq, status)) = handle(&deps, &datagram).await {
                let _ = socket.send_to(&ack(seq, status), peer).await;
            }
        });
    }
}
