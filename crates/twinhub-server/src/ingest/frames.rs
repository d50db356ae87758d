//! Raw frames over UDP and TCP, for devices too small for MQTT or TLS
//! (seed 001's Binary Parser). A frame carries the device id and key and a
//! payload (`twinhub_codec::layout::Frame`): binary, decoded with the
//! device's layout (`layouts.rs`); CBOR telemetry (flag 0x40); or JSON
//! telemetry (flag 0x20, or starting with `{` or `[` from a device with
//! no layout — a packed frame may start with any byte). Over TCP each frame is
//! preceded by its length (2 bytes, big-endian) and acknowledgements come
//! back on the connection in order. On a closed network a device can be
//! known by its address instead (`ingest.frame_sources`): what it sends is
//! the bare payload, with no header, id or key, and gets no
//! acknowledgement. The points are stored like a device's HTTP request;
//! if the frame asks for it, a 6-byte acknowledgement answers once they
//! are durable (or says why not). Refused frames are counted per device
//! (`twinhub_frames_refused_total{device,reason}`) and per protocol,
//! logged, and never stop a listener.
//!
//! In a cluster a replica relays frames to the primary (`cluster`): a TCP
//! connection starts with the signed header of `forwarded` and each UDP
//! datagram carries one, naming the device's own address — what
//! `ingest.frame_sources` matches and where acknowledgements go (back
//! through the replica, under a header of the primary's).

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
    /// A cluster member's relay key: frames relayed by a replica are
    /// taken from the device's address in their header.
    pub forward_key: Option<crate::forwarded::Key>,
}

/// Where an acknowledgement goes: the device, and the replica that
/// relayed its datagram, if one did.
#[derive(Clone, Copy)]
struct Dest {
    peer: std::net::SocketAddr,
    via: Option<std::net::SocketAddr>,
}

/// A relayed frame's header failed: a member with another key or a
/// skewed clock is worth a warning, anything else is noise.
fn refuse_relay(
    d: &FrameDeps,
    protocol: &'static str,
    from: std::net::SocketAddr,
    e: &crate::forwarded::HeaderError,
) {
    use crate::forwarded::HeaderError::{BadSignature, Stale};
    d.metrics.refused(protocol, "unauthorized");
    match e {
        BadSignature | Stale => tracing::warn!(%from, error = %e, "relayed raw frames refused"),
        _ => tracing::debug!(%from, error = %e, "relayed raw frames refused"),
    }
}

/// Kept for the UDP listener's callers.
pub type UdpDeps = FrameDeps;

/// How a payload is encoded.
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    /// Binary with the device's layout; JSON if the device has none and
    /// the payload starts with `{` or `[`.
    Packed,
    Json,
    Cbor,
}

/// The payload of `device` as telemetry. A device with a layout sends
/// binary frames (its first byte may be anything, `{` too); JSON and CBOR
/// are flagged, or JSON is recognised for devices without a layout.
fn decode(
    d: &FrameDeps,
    device: &Device,
    payload: &[u8],
    enc: Encoding,
) -> Result<Telemetry, DecodeError> {
    match enc {
        Encoding::Cbor => return twinhub_codec::decode_cbor_telemetry(payload, &d.limits),
        Encoding::Json => return twinhub_codec::decode_telemetry(payload, &d.limits),
        Encoding::Packed => {}
    }
    match d.layouts.for_device(&device.row.tenant, &device.row.id, device.twin()) {
        Some(l) => l.decode(payload),
        None if matches!(payload.first(), Some(b'{' | b'[')) => {
            twinhub_codec::decode_telemetry(payload, &d.limits)
        }
        None => Err(DecodeError {
            field: "frame".into(),
            rule: "the device has no layout (PUT /api/v1/devices/{id}/layout, or a named layout at /api/v1/layouts/{id} for it or its model)".into(),
        }),
    }
}

/// A frame read and checked, before it is stored.
enum Prepared {
    /// Answered already (refused), or nothing to answer.
    Done(Option<(bool, u16, AckStatus)>),
    /// To store for the device; (ack wanted, seq) when it is framed.
    Store {
        device: Arc<Device>,
        msgs: Telemetry,
        ack: Option<(bool, u16)>,
    },
}

fn refuse_decode(d: &FrameDeps, protocol: &'static str, device: &Device, e: DecodeError) {
    d.metrics.refused(protocol, "invalid");
    d.metrics.frame_refused(&device.row.id, "invalid");
    tracing::info!(device = %device.row.id, error = %format!("{}: {}", e.field, e.rule), "raw frame refused");
}

/// Reads one frame from `peer`: authenticates and decodes it.
fn prepare(d: &FrameDeps, protocol: &'static str, peer: IpAddr, buf: &[u8]) -> Prepared {
    if let Some(id) = d.sources.get(&peer) {
        return match d.registry.device(id).filter(|dev| dev.row.enabled) {
            Some(dev) => match decode(d, &dev, buf, Encoding::Packed) {
                Ok(msgs) => Prepared::Store {
                    device: dev,
                    msgs,
                    ack: None,
                },
                Err(e) => {
                    refuse_decode(d, protocol, &dev, e);
                    Prepared::Done(None)
                }
            },
            None => {
                d.metrics.frame_refused(id, "unauthorized");
                tracing::info!(device = %id, %peer, "frame from a known address of a missing or disabled device");
                Prepared::Done(None)
            }
        };
    }
    let frame = match Frame::parse(buf) {
        Ok(f) => f,
        Err(why) => {
            d.metrics.refused(protocol, "invalid");
            d.metrics.frame_refused("", "malformed");
            tracing::debug!(why, %peer, "raw frame refused");
            return Prepared::Done(None);
        }
    };
    let reply = |s| Prepared::Done(Some((frame.ack, frame.seq, s)));
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
    let enc = if frame.cbor {
        Encoding::Cbor
    } else if frame.json {
        Encoding::Json
    } else {
        Encoding::Packed
    };
    match decode(d, &device, frame.payload, enc) {
        Ok(msgs) => Prepared::Store {
            device,
            msgs,
            ack: Some((frame.ack, frame.seq)),
        },
        Err(e) => {
            refuse_decode(d, protocol, &device, e);
            reply(AckStatus::Invalid)
        }
    }
}

/// What a frame's storing outcome tells the device.
fn outcome(d: &FrameDeps, device: &Device, r: &Result<usize, IngestError>) -> AckStatus {
    match r {
        Ok(_) => AckStatus::Stored,
        Err(IngestError::Invalid { .. }) => {
            d.metrics.frame_refused(&device.row.id, "model");
            AckStatus::Invalid
        }
        Err(_) => AckStatus::RetryLater,
    }
}

/// One frame from `peer`, stored alone: the outcome to acknowledge.
async fn handle(
    d: &FrameDeps,
    protocol: &'static str,
    peer: IpAddr,
    buf: &[u8],
) -> Option<(bool, u16, AckStatus)> {
    match prepare(d, protocol, peer, buf) {
        Prepared::Done(r) => r,
        Prepared::Store { device, msgs, ack } => {
            let r = d
                .pipeline
                .ingest(&device, protocol, msgs, Some(d.wait))
                .await;
            let status = outcome(d, &device, &r);
            ack.map(|(a, seq)| (a, seq, status))
        }
    }
}

/// Datagrams read in one go, at most.
const UDP_BURST: usize = 512;
/// Bursts being stored at once, at most.
const UDP_BURSTS_IN_FLIGHT: usize = 8;

/// Stores a burst of datagrams: each device's frames in one pipeline call
/// (one commit for all of them, an outcome per frame), then every
/// acknowledgement.
async fn handle_burst(
    d: &FrameDeps,
    socket: &tokio::net::UdpSocket,
    burst: Vec<(Vec<u8>, std::net::SocketAddr)>,
) {
    type Pending = (Arc<Device>, Vec<Telemetry>, Vec<Option<(Dest, u16)>>);
    let mut replies: Vec<(Dest, [u8; 6])> = Vec::new();
    let mut by_device: HashMap<String, Pending> = HashMap::new();
    let now = crate::forwarded::now_ms();
    for (data, from) in burst {
        let relayed = d
            .forward_key
            .as_ref()
            .and_then(|k| crate::forwarded::split_datagram(k, &data, now));
        let (dest, bytes) = match relayed {
            None => (
                Dest {
                    peer: from,
                    via: None,
                },
                &data[..],
            ),
            Some(Ok((who, bytes))) => (
                Dest {
                    peer: who.peer,
                    via: Some(from),
                },
                bytes,
            ),
            Some(Err(e)) => {
                refuse_relay(d, "udp", from, &e);
                continue;
            }
        };
        match prepare(d, "udp", dest.peer.ip(), bytes) {
            Prepared::Done(Some((true, seq, status))) => replies.push((dest, ack(seq, status))),
            Prepared::Done(_) => {}
            Prepared::Store { device, msgs, ack } => {
                let e = by_device
                    .entry(device.row.id.clone())
                    .or_insert_with(|| (device, Vec::new(), Vec::new()));
                e.1.push(msgs);
                e.2.push(ack.filter(|(a, _)| *a).map(|(_, seq)| (dest, seq)));
            }
        }
    }
    let stores = by_device
        .into_values()
        .map(|(device, groups, acks)| async move {
            let out = d
                .pipeline
                .ingest_each(&device, "udp", groups, Some(d.wait))
                .await;
            out.iter()
                .zip(acks)
                .filter_map(|(r, a)| a.map(|(dest, seq)| (dest, ack(seq, outcome(d, &device, r)))))
                .collect::<Vec<_>>()
        });
    for done in futures_util::future::join_all(stores).await {
        replies.extend(done);
    }
    for (dest, a) in replies {
        let _ = match (dest.via, &d.forward_key) {
            (Some(replica), Some(key)) => {
                let relayed =
                    crate::forwarded::datagram(key, dest.peer, &a, crate::forwarded::now_ms());
                socket.send_to(&relayed, replica).await
            }
            _ => socket.send_to(&a, dest.peer).await,
        };
    }
}

/// A receive buffer big enough for bursts while a commit is in flight
/// (set where the socket is bound: a cluster replica relays from it too).
pub fn enlarge_receive_buffer(socket: &tokio::net::UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain setsockopt on a socket this process owns; a failure
    // (a capped rmem_max) leaves the default in place.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Receives datagrams until shutdown, in bursts (everything waiting, up
/// to `UDP_BURST`), each stored by its own task so a slow commit never
/// stops the socket.
pub async fn serve_udp(
    socket: tokio::net::UdpSocket,
    deps: FrameDeps,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let deps = Arc::new(deps);
    let permits = Arc::new(tokio::sync::Semaphore::new(UDP_BURSTS_IN_FLIGHT));
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let mut burst = vec![(buf[..n].to_vec(), peer)];
        while burst.len() < UDP_BURST {
            match socket.try_recv_from(&mut buf) {
                Ok((n, peer)) => burst.push((buf[..n].to_vec(), peer)),
                Err(_) => break,
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (socket, deps) = (socket.clone(), deps.clone());
        tokio::spawn(async move {
            handle_burst(&deps, &socket, burst).await;
            drop(permit);
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
            let (mut peer, mut first) = (peer, true);
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
                // An empty first frame: a replica's relay, its header next.
                if std::mem::take(&mut first) && n == 0 {
                    if let Some(key) = &deps.forward_key {
                        let now = crate::forwarded::now_ms();
                        let header = crate::forwarded::read(&mut rd, key, now);
                        match tokio::time::timeout(Duration::from_secs(10), header).await {
                            Ok(Ok(who)) => {
                                peer = who.peer;
                                continue;
                            }
                            Ok(Err(e)) => return refuse_relay(&deps, "tcp", peer, &e),
                            Err(_) => return,
                        }
                    }
                }
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
