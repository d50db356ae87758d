//! Raw frames over UDP and TCP, for devices too small for MQTT or TLS
//! (seed 001's Binary Parser). A frame carries the device id and key and a
//! payload (`twinhub_codec::layout::Frame`): binary, decoded with the
//! device's layout (`layouts.rs`); CBOR telemetry (flag 0x40); or JSON
//! telemetry when it starts with `{` or `[`. Over TCP each frame is
//! preceded by its length (2 bytes, big-endian) and acknowledgements come
//! back on the connection in order. On a closed network a device can be
//! known by its address instead (`ingest.frame_sources`): what it sends is
//! the bare payload, with no header, id or key, and gets no
//! acknowledgement. The points are stored like a device's HTTP request;
//! if the frame asks for it, a 6-byte acknowledgement answers once they
//! are durable (or says why not). Refused frames are counted per device
//! (`twinhub_frames_refused_total{device,reason}`) and per protocol,
//! logged, and never stop a listener.

use crate::metrics::ServerMetrics;
use crate::pipeline::{IngestError, Pipeline};
use crate::registry::{Device, Registry};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twinhub_codec::layout::{ack, AckStatus, Frame};
use twinhub_codec::{DecodeError, Limits, Telemetry};

pub use super::layouts::{Layouts, PutError};

pub struct FrameDeps {
    pub registry: Arc<Registry>,
    pub pipeline: Arc<Pipeline>,
    pub layouts: Arc<Layouts>,
    pub metrics: Arc<ServerMetrics>,
    pub limits: Limits,
    pub wait: Duration,
    /// Source address → device, for devices that send bare payloads.
    pub sources: HashMap<IpAddr, String>,
}

/// Kept for the UDP listener's callers.
pub type UdpDeps = FrameDeps;

/// The payload of `device` as telemetry.
fn decode(
    d: &FrameDeps,
    device: &Device,
    payload: &[u8],
    cbor: bool,
) -> Result<Telemetry, DecodeError> {
    if cbor {
        return twinhub_codec::decode_cbor_telemetry(payload, &d.limits);
    }
    match payload.first() {
        Some(b'{' | b'[') => twinhub_codec::decode_telemetry(payload, &d.limits),
        _ => match d.layouts.for_device(&device.row.tenant, &device.row.id, device.twin()) {
            Some(l) => l.decode(payload),
            None => Err(DecodeError {
                field: "frame".into(),
                rule: "the device has no layout (PUT /api/v1/devices/{id}/layout, or a named layout at /api/v1/layouts/{id} for it or its model)".into(),
            }),
        },
    }
}

/// Decodes and stores one device's payload.
async fn store(
    d: &FrameDeps,
    protocol: &'static str,
    device: &Device,
    payload: &[u8],
    cbor: bool,
) -> AckStatus {
    let msgs = match decode(d, device, payload, cbor) {
        Ok(m) => m,
        Err(e) => {
            d.metrics.refused(protocol, "invalid");
            d.metrics.frame_refused(&device.row.id, "invalid");
            tracing::info!(device = %device.row.id, error = %format!("{}: {}", e.field, e.rule), "raw frame refused");
            return AckStatus::Invalid;
        }
    };
    match d
        .pipeline
        .ingest(device, protocol, msgs, Some(d.wait))
        .await
    {
        Ok(_) => AckStatus::Stored,
        Err(IngestError::Invalid { .. }) => {
            d.metrics.frame_refused(&device.row.id, "model");
            AckStatus::Invalid
        }
        Err(_) => AckStatus::RetryLater,
    }
}

/// One frame from `peer`: the outcome to acknowledge, if asked for.
async fn handle(
    d: &FrameDeps,
    protocol: &'static str,
    peer: IpAddr,
    buf: &[u8],
) -> Option<(bool, u16, AckStatus)> {
    if let Some(id) = d.sources.get(&peer) {
        match d.registry.device(id).filter(|dev| dev.row.enabled) {
            Some(dev) => {
                store(d, protocol, &dev, buf, false).await;
            }
            None => {
                d.metrics.frame_refused(id, "unauthorized");
                tracing::info!(device = %id, %peer, "frame from a known address of a missing or disabled device");
            }
        }
        return None;
    }
    let frame = match Frame::parse(buf) {
        Ok(f) => f,
        Err(why) => {
            d.metrics.refused(protocol, "invalid");
            d.metrics.frame_refused("", "malformed");
            tracing::debug!(why, %peer, "raw frame refused");
            return None;
        }
    };
    let reply = |s| Some((frame.ack, frame.seq, s));
    let device = match d.registry.authenticate_device(frame.device, frame.key) {
        Ok(dev) => dev,
        Err(_) => {
            d.metrics.auth_failures.add(protocol, 1);
            if d.registry.device(frame.device).is_some() {
                d.metrics.frame_refused(frame.device, "unauthorized");
            }
            return reply(AckStatus::Unauthorized);
        }
    };
    reply(store(d, protocol, &device, frame.payload, frame.cbor).await)
}

/// Receives datagrams until shutdown; each is handled in its own task so
/// a slow commit never stops the socket.
pub async fn serve_udp(
    socket: tokio::net::UdpSocket,
    deps: FrameDeps,
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
            if let Some((true, seq, status)) = handle(&deps, "udp", peer.ip(), &datagram).await {
                let _ = socket.send_to(&ack(seq, status), peer).await;
            }
        });
    }
}

/// Largest frame over TCP (its length prefix is 2 bytes).
const MAX_TCP_FRAME: usize = u16::MAX as usize;

/// Accepts TCP connections until shutdown; each reads length-prefixed
/// frames and answers acknowledgements in order. A connection idle for
/// five minutes is closed.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    deps: FrameDeps,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let deps = Arc::new(deps);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let (deps, mut stop) = (deps.clone(), shutdown.clone());
        tokio::spawn(async move {
            let (mut rd, mut wr) = stream.into_split();
            let mut buf = vec![0u8; MAX_TCP_FRAME];
            loop {
                let mut len = [0u8; 2];
                let read = async {
                    rd.read_exact(&mut len).await?;
                    let n = u16::from_be_bytes(len) as usize;
                    rd.read_exact(&mut buf[..n]).await.map(|_| n)
                };
                let n = tokio::select! {
                    r = tokio::time::timeout(Duration::from_secs(300), read) => match r {
                        Ok(Ok(n)) => n,
                        _ => return,
                    },
                    _ = stop.changed() => return,
                };
                if let Some((true, seq, status)) = handle(&deps, "tcp", peer.ip(), &buf[..n]).await
                {
                    if wr.write_all(&ack(seq, status)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
