//! Raw frames over UDP, for devices too small for MQTT or TLS (seed 001's
//! Binary Parser). A datagram carries the device id and key and a payload
//! (`twinhub_codec::layout::Frame`): a binary frame decoded with the
//! device's layout (`layouts.rs`), or JSON telemetry
//! when it starts with `{` or `[`. The points are stored like a device's
//! HTTP request; if the frame asks for it, a 6-byte acknowledgement
//! answers once they are durable (or says why not). Malformed frames are
//! counted (`twinhub_ingest_refused_total{protocol="udp"}`), logged, and
//! never stop the listener.

use crate::metrics::ServerMetrics;
use crate::pipeline::{IngestError, Pipeline};
use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use twinhub_codec::layout::{ack, AckStatus, Frame};
use twinhub_codec::{DecodeError, Limits};

pub use super::layouts::{Layouts, PutError};

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
        _ => match d.layouts.for_device(&device.row.tenant, &device.row.id, device.twin()) {
            Some(l) => l.decode(frame.payload),
            None => Err(DecodeError {
                field: "frame".into(),
                rule: "the device has no layout (PUT /api/v1/devices/{id}/layout, or a named layout at /api/v1/layouts/{id} for it or its model)".into(),
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
