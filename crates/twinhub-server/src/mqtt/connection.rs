//! One task per client connection: CONNECT and authentication, then a loop
//! that reads packets (checking ACLs and handing device telemetry to the
//! ingest pipeline), writes acknowledgements in order once what they
//! acknowledge is durable, delivers queued messages within the client's
//! window, and enforces keep-alive and rate limits.

use super::acl::{self, Identity};
use super::broker::{Broker, Kick, Kicker, RateAction, SessionHandle};
use super::codec::{
    self, CodecError, ConnAckProps, ConnectIn, In, Out, PublishIn, Refusal, Version, Will,
};
use super::persist::Op;
use super::reason::code;
use super::router::Sub;
use super::session::{Message, Outgoing, PubRec, Send as Next};
use super::topic;
use crate::events::{Draft, Kind};
use bytes::BytesMut;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use twinhub_codec::Telemetry;

/// Read passes whose acknowledgements may wait for durability at once;
/// beyond it the connection stops reading (back-pressure).
const MAX_PENDING: usize = 64;
const OUT_HIGH_WATER: usize = 256 * 1024;

#[derive(Debug, Clone, Copy)]
enum Ack {
    PubAck(u16, u8),
    PubRec(u16, u8),
}

/// Why the loop ended; decides the will and the DISCONNECT reason.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// DISCONNECT 0x00 from the client: no will.
    Normal,
    /// DISCONNECT 0x04: publish the will.
    WithWill,
    /// Network closed, protocol error, timeout…: publish the will.
    Abnormal,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Option<Bucket> {
        (rate > 0.0).then(|| Bucket {
            rate,
            tokens: rate,
            at: Instant::now(),
        })
    }

    /// Takes `n`; returns how long to wait if the bucket went negative.
    fn take(&mut self, n: f64) -> Option<Duration> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        self.tokens -= n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

struct Conn<S> {
    broker: Arc<Broker>,
    io: S,
    inbuf: BytesMut,
    out: BytesMut,
    version: Version,
    max_out: Option<usize>,
    read_hint: usize,
    /// Outbound topic aliases: at most the client's Topic Alias Maximum
    /// (v5), assigned as topics are first sent on this connection.
    alias_max: u16,
    aliases: HashMap<Arc<str>, u16>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn write(&mut self, o: Out<'_>) {
        if let Err(e) = codec::write(&mut self.out, self.version, o) {
            tracing::warn!(error = %e, "could not encode a packet");
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
            // A quiet client keeps no small buffer (a CONNACK's, a lone
            // message's); a buffer grown by a burst is kept up to 64 KB,
            // so a subscriber that only receives does not regrow it on
            // every drain.
            let quiet = self.read_hint == MIN_READ && self.out.capacity() <= 1024;
            if quiet || self.out.capacity() > 64 * 1024 {
                self.out = BytesMut::new();
            }
        }
        Ok(())
    }

    /// Makes room for the next read: small while the client is quiet,
    /// growing while it streams (fewer system calls), so 100k idle devices
    /// cost little memory and a busy publisher few syscalls.
    fn prepare_read(&mut self) {
        // Quiet again after a burst (the hint has shrunk): give the big
        // buffer back.
        if self.inbuf.is_empty() && self.inbuf.capacity() > 4 * self.read_hint {
            self.inbuf = BytesMut::new();
        }
        let spare = self.inbuf.capacity() - self.inbuf.len();
        if spare < self.read_hint {
            self.inbuf.reserve(self.read_hint);
        }
    }

    fn after_read(&mut self, n: usize) {
        if n >= self.read_hint * 3 / 4 {
            self.read_hint = (self.read_hint * 2).min(MAX_READ);
        } else if n < self.read_hint / 8 {
            self.read_hint = (self.read_hint / 2).max(MIN_READ);
        }
    }
}

const MIN_READ: usize = 128;
const MAX_READ: usize = 64 * 1024;

/// Serves one client until it leaves, misbehaves, or the server stops.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    broker: Arc<Broker>,
    io: S,
    peer: SocketAddr,
    cert_device: Option<String>,
) {
    let m = &broker.metrics;
    let mut inbuf = BytesMut::with_capacity(256);
    let mut io = io;
    let max = broker.settings.max_packet_size;
    // CONNECT first, within the connect timeout. Transient steps are boxed
    // so their state is not part of the task every idle client keeps.
    let first = Box::pin(tokio::time::timeout(
        broker.settings.connect_timeout,
        async {
            loop {
                match codec::read(&mut inbuf, None, max) {
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
                match io.read_buf(&mut inbuf).await {
                    Ok(0) | Err(_) => {
                        return Err(CodecError::Malformed("closed before CONNECT".into()))
                    }
                    Ok(_) => {}
                }
            }
        },
    ))
    .await;
    let connect = match first {
        Ok(Ok(In::Connect(c))) => c,
        Ok(Err(CodecError::ProtocolLevel(_))) => {
            // [MQTT-3.1.2-2]: CONNACK 0x01 and close.
            let mut out = BytesMut::new();
            let _ = codec::write(
                &mut out,
                Version::V4,
                Out::ConnAck {
                    session_present: false,
                    refusal: Some(Refusal::UnsupportedVersion),
                    props: ConnAckProps::default(),
                },
            );
            let _ = io.write_all(&out).await;
            m.refused.add("protocol_version", 1);
            return;
        }
        _ => {
            m.refused.add("malformed", 1);
            return;
        }
    };
    let mut conn = Conn {
        broker: broker.clone(),
        io,
        // The CONNECT's buffer is bigger than a quiet client needs.
        inbuf: if inbuf.is_empty() {
            BytesMut::new()
        } else {
            inbuf
        },
        out: BytesMut::new(),
        read_hint: MIN_READ,
        version: connect.version,
        max_out: connect.max_packet_size.map(|m| m as usize),
        alias_max: if connect.version == Version::V5 {
            connect.topic_alias_max
        } else {
            0
        },
        aliases: HashMap::new(),
    };
    let connected = m.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let outcome = session(&mut conn, connect, peer, cert_device.as_deref(), connected).await;
    m.connections.fetch_sub(1, Ordering::SeqCst);
    Box::pin(close(&mut conn)).await;
    if let Some((identity, tenant, h, gen, end, will)) = outcome {
        if matches!(end, End::Abnormal | End::WithWill) {
            if let Some(w) = will {
                publish_will(&broker, &tenant, &h, gen, *w);
            }
        }
        broker.detach(&h, gen);
        if let Identity::Device { id } = &identity {
            presence(&broker, id, false);
        }
    }
}

/// Flushes and shuts the socket down, then drains what the client still
/// sends for a moment: closing a socket with unread input makes the kernel
/// reset it, and the reset can overtake the DISCONNECT just written.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) {
    let _ = conn.flush().await;
    let _ = conn.io.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        loop {
            conn.inbuf.clear();
            conn.inbuf.reserve(4096);
            match conn.io.read_buf(&mut conn.inbuf).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    })
    .await;
}

fn presence(broker: &Broker, device: &str, connected: bool) {
    if let Some(d) = broker.deps.registry.device(device) {
        d.connected.store(connected, Ordering::Relaxed);
        broker.deps.store.emit_detached(vec![Draft::new(
            &d.row.tenant,
            Kind::Device,
            Some(d.twin()),
            None,
            serde_json::json!({"device": d.row.id, "connected": connected}),
        )]);
    }
}

fn publish_will(
    broker: &Arc<Broker>,
    tenant: &Arc<str>,
    h: &Arc<SessionHandle>,
    gen: u64,
    w: Will,
) {
    let now = broker.now_us();
    let msg = Arc::new(Message {
        topic: w.topic.as_str().into(),
        payload: w.payload,
        qos: w.qos,
        retain: w.retain,
        props: w.props.map(Arc::new),
        expires_at: w.expiry_s.map(|s| now + s as i64 * 1_000_000),
        from: Some(h.client_id.clone()),
    });
    let delay = w.delay_s.min(h.expiry_s.load(Ordering::SeqCst));
    let (b, t, h) = (broker.clone(), tenant.clone(), h.clone());
    let send = move || {
        let mut ops = Vec::new();
        if msg.retain {
            ops.push(b.retain(&t, &msg));
        }
        ops.extend(b.route(&t, msg));
        b.persist.send(ops);
    };
    if delay == 0 {
        send();
    } else {
        // [MQTT-3.1.3-9]: a reconnect within the delay cancels the will.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(delay as u64)).await;
            if !h.connected() || h.client_id.is_empty() {
                let _ = gen;
                send();
            }
        });
    }
}

type SessionOutcome = Option<(
    Identity,
    Arc<str>,
    Arc<SessionHandle>,
    u64,
    End,
    Option<Box<Will>>,
)>;

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    mut c: Box<ConnectIn>,
    peer: SocketAddr,
    cert_device: Option<&str>,
    connected: usize,
) -> SessionOutcome {
    let broker = conn.broker.clone();
    let m = &broker.metrics;
    let refuse = |conn: &mut Conn<S>, r: Refusal, reason: &'static str| {
        m.refused.add(reason, 1);
        conn.write(Out::ConnAck {
            session_present: false,
            refusal: Some(r),
            props: ConnAckProps::default(),
        });
    };
    if connected > broker.settings.max_connections {
        refuse(conn, Refusal::ServerBusy, "max_connections");
        return None;
    }
    // mqtt.max_keepalive: a v5 client uses the Server Keep Alive it is
    // given [MQTT-3.2.2-21]; a 3.1.1 client cannot be told, so it is
    // refused with "identifier rejected", as Mosquitto does.
    let max_ka = broker.settings.max_keepalive;
    let keep_alive = if max_ka > 0 && (c.keep_alive == 0 || c.keep_alive > max_ka) {
        if c.version != Version::V5 {
            tracing::info!(client = %c.client_id, keep_alive = c.keep_alive, max = max_ka, "MQTT 3.1.1 keep-alive over mqtt.max_keepalive refused");
            refuse(conn, Refusal::ClientIdInvalid, "keep_alive");
            return None;
        }
        max_ka
    } else {
        c.keep_alive
    };
    let (identity, tenant) = match Box::pin(broker.authenticate(
        &c.client_id,
        c.username.as_deref(),
        c.password.as_deref(),
        cert_device,
    ))
    .await
    {
        Ok(x) => x,
        Err(r) => {
            let reason = match r {
                Refusal::BadCredentials => "bad_credentials",
                Refusal::NotAuthorized => "not_authorized",
                Refusal::ClientIdInvalid => "client_id",
                _ => "other",
            };
            tracing::info!(client = %c.client_id, username = ?c.username, %peer, reason, "MQTT connection refused");
            refuse(conn, r, reason);
            return None;
        }
    };
    // Held until the connection ends.
    let _slot = match broker.deps.quotas.connect(&tenant) {
        Ok(slot) => slot,
        Err(e) => {
            tracing::info!(client = %c.client_id, %peer, tenant = %e.tenant, "MQTT connection over the tenant's quota");
            refuse(conn, Refusal::QuotaExceeded, "quota_exceeded");
            return None;
        }
    };
    // Client id: devices use their own; others may leave it empty with a
    // clean start and get one assigned [MQTT-3.1.3-6].
    let mut assigned = None;
    let client_id = if c.client_id.is_empty() {
        if !c.clean_start {
            refuse(conn, Refusal::ClientIdInvalid, "client_id");
            return None;
        }
        let id = format!("auto-{}", crate::auth::random_secret(12));
        if c.version == Version::V5 {
            assigned = Some(id.clone());
        }
        id
    } else {
        c.client_id.clone()
    };
    if !matches!(identity, Identity::Device { .. })
        && broker.deps.registry.device(&client_id).is_some()
    {
        refuse(conn, Refusal::ClientIdInvalid, "client_id");
        return None;
    }
    if let Some(w) = &c.will {
        if !topic::valid_topic(&w.topic) || !acl::may_publish(&identity, &w.topic) {
            refuse(conn, Refusal::NotAuthorized, "will_not_authorized");
            return None;
        }
    }
    let expiry = c.session_expiry_s.min(broker.settings.session_expiry_max_s);
    let window = c.receive_max.min(broker.settings.max_inflight);
    let (h, present, gen, kicker) = match Box::pin(broker.attach(
        &client_id,
        &tenant,
        &identity.owner(),
        c.clean_start,
        expiry,
        window,
    ))
    .await
    {
        Ok(x) => x,
        Err(r) => {
            refuse(conn, r, "session_owner");
            return None;
        }
    };
    let mut props = ConnAckProps {
        server_keep_alive: (c.version == Version::V5 && keep_alive != c.keep_alive)
            .then_some(keep_alive),
        receive_max: Some(broker.settings.max_inflight),
        topic_alias_max: Some(broker.settings.topic_alias_max),
        max_packet_size: Some(broker.settings.max_packet_size as u32),
        assigned_client_id: assigned,
        ..Default::default()
    };
    if c.version == Version::V5 && expiry != c.session_expiry_s {
        props.session_expiry_s = Some(expiry);
    }
    conn.write(Out::ConnAck {
        session_present: present,
        refusal: None,
        props,
    });
    if let Identity::Device { id } = &identity {
        presence(&broker, id, true);
    }
    tracing::debug!(client = %client_id, %peer, version = ?c.version, present, "MQTT client connected");
    for s in h.state.lock().expect("state").replay() {
        write_send(conn, &broker, s);
    }
    // Only the will outlives the handshake.
    let will = c.will.take().map(Box::new);
    drop(c);
    let end = main_loop(conn, &broker, &identity, &tenant, &h, keep_alive, &kicker).await;
    Some((identity, tenant, h, gen, end, will))
}

fn write_send<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>, broker: &Broker, s: Next) {
    match s {
        Next::PubRel(pkid) => conn.write(Out::PubRel { pkid, reason: 0 }),
        Next::Publish { pkid, out, dup } => {
            // A stored QoS 2 message keeps its packet id across restarts.
            if let (2, Some(id), false) = (out.qos, out.persist_id, dup) {
                broker.persist.send(vec![Op::InFlight {
                    id,
                    pkid,
                    released: false,
                }]);
            }
            let now = broker.now_us();
            let expiry_s = out
                .msg
                .expires_at
                .map(|e| ((e - now).max(0) / 1_000_000) as u32);
            let before = conn.out.len();
            // A topic the client already knows goes as its alias alone; a
            // new one gets the next free alias while there is one. Short
            // topics are not worth an alias.
            let (alias, known) = match conn.aliases.get(&out.msg.topic) {
                Some(a) => (Some(*a), true),
                None if out.msg.topic.len() > 2 && (conn.aliases.len() as u16) < conn.alias_max => {
                    let a = conn.aliases.len() as u16 + 1;
                    conn.aliases.insert(out.msg.topic.clone(), a);
                    (Some(a), false)
                }
                None => (None, false),
            };
            conn.write(Out::Publish {
                topic: if known { "" } else { &out.msg.topic },
                alias,
                payload: &out.msg.payload,
                qos: out.qos,
                retain: out.retain,
                dup,
                pkid,
                props: out.msg.props.as_deref(),
                expiry_s,
                sub_ids: &out.sub_ids,
            });
            broker.metrics.count_out(out.qos);
            // Larger than the client accepts: drop it [MQTT-3.1.2-25].
            if conn.max_out.is_some_and(|mx| conn.out.len() - before > mx) {
                conn.out.truncate(before);
                // The client never saw this alias being set.
                if alias.is_some() && !known {
                    conn.aliases.remove(&out.msg.topic);
                }
            }
        }
    }
}

/// Writes queued messages while the window and the buffer allow.
fn drain<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    broker: &Broker,
    h: &SessionHandle,
) -> bool {
    let now = broker.now_us();
    loop {
        if conn.out.len() >= OUT_HIGH_WATER {
            return true;
        }
        let next = h.state.lock().expect("state").next(now);
        match next {
            Some(s) => write_send(conn, broker, s),
            None => return false,
        }
    }
}

struct Pass {
    acks: Vec<Option<Ack>>,
    /// Telemetry per PUBLISH, by its slot in `acks`.
    telemetry: Vec<(usize, Telemetry)>,
    /// Telemetry PUBLISHes to route once stored, by slot.
    routed: Vec<(usize, Arc<Message>)>,
    /// Store operations (retained messages, queued copies for persistent
    /// sessions) that must be durable before the acknowledgements go out.
    ops: Vec<super::persist::Op>,
    /// Sparkplug B messages to apply before their acknowledgement, by slot.
    sparkplug: Vec<(usize, super::sparkplug::Work)>,
}

/// What the read loop carries between passes.
struct Reader<'a> {
    broker: &'a Arc<Broker>,
    identity: &'a Identity,
    tenant: &'a Arc<str>,
    h: &'a Arc<SessionHandle>,
    device: Option<Arc<crate::registry::Device>>,
    aliases: HashMap<u16, String>,
    msg_bucket: Option<Bucket>,
    byte_bucket: Option<Bucket>,
    /// Throttled: buffered packets wait until then.
    resume_at: Option<tokio::time::Instant>,
    pending: PendingAcks,
}

/// Acknowledgements waiting for durability, in order; made on first use
/// (an idle device that never publishes holds none).
#[derive(Default)]
struct PendingAcks(Option<FuturesOrdered<BoxFuture<'static, Vec<Ack>>>>);

impl PendingAcks {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, f: BoxFuture<'static, Vec<Ack>>) {
        self.0.get_or_insert_with(FuturesOrdered::new).push_back(f)
    }

    async fn next(&mut self) -> Option<Vec<Ack>> {
        match &mut self.0 {
            Some(p) => p.next().await,
            None => None,
        }
    }
}

impl Reader<'_> {
    /// Handles the complete packets in the input buffer (stopping early
    /// when throttled); Some(end) when the connection must close.
    fn process<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> Option<End> {
        let (broker, h) = (self.broker, self.h);
        let max = broker.settings.max_packet_size;
        let mut pass = Pass {
            acks: Vec::new(),
            telemetry: Vec::new(),
            routed: Vec::new(),
            ops: Vec::new(),
            sparkplug: Vec::new(),
        };
        let mut ended = None;
        let v5 = conn.version == Version::V5;
        while self.resume_at.is_none() {
            let packet = match codec::read(&mut conn.inbuf, Some(conn.version), max) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client = %h.client_id, error = %e, "closing a connection that sent a bad packet");
                    if v5 {
                        let reason = if matches!(e, CodecError::TooLarge(_)) {
                            code::PACKET_TOO_LARGE
                        } else {
                            code::MALFORMED_PACKET
                        };
                        conn.write(Out::Disconnect {
                            reason,
                            message: None,
                        });
                    }
                    ended = Some(End::Abnormal);
                    break;
                }
            };
            let protocol_error = |conn: &mut Conn<S>, reason: u8, message: Option<&str>| {
                if v5 {
                    conn.write(Out::Disconnect { reason, message });
                }
                Some(End::Abnormal)
            };
            match packet {
                In::Publish(p) => {
                    if let Some(wait) =
                        rate_check(&mut self.msg_bucket, &mut self.byte_bucket, p.payload.len())
                    {
                        broker.metrics.rate_limited.inc();
                        match broker.settings.rate_action {
                            // This one goes through; the rest of the buffer waits.
                            RateAction::Throttle => {
                                self.resume_at = Some(tokio::time::Instant::now() + wait)
                            }
                            RateAction::Reject | RateAction::Disconnect => {
                                ended = protocol_error(
                                    conn,
                                    code::MESSAGE_RATE_TOO_HIGH,
                                    Some("message rate too high"),
                                );
                                break;
                            }
                        }
                    }
                    let r = on_publish(
                        broker,
                        self.identity,
                        self.tenant,
                        h,
                        p,
                        &mut self.aliases,
                        self.device.as_ref().map(|d| d.row.id.as_str()),
                        &mut pass,
                    );
                    if let Err(reason) = r {
                        ended = protocol_error(conn, reason, None);
                        break;
                    }
                }
                In::PubAck(pkid) => {
                    let done = h.state.lock().expect("state").on_puback(pkid);
                    broker.delivered(done);
                }
                In::PubRec(pkid) => {
                    let rec = h.state.lock().expect("state").on_pubrec(pkid);
                    if let PubRec::First(Some(id)) = rec {
                        broker.persist.send(vec![Op::InFlight {
                            id,
                            pkid,
                            released: true,
                        }]);
                    }
                    conn.write(Out::PubRel {
                        pkid,
                        reason: if rec == PubRec::Unknown {
                            code::PACKET_ID_NOT_FOUND
                        } else {
                            0
                        },
                    });
                }
                In::PubComp(pkid) => {
                    let done = h.state.lock().expect("state").on_pubcomp(pkid);
                    broker.delivered(done);
                }
                In::PubRel(pkid) => {
                    let known = h.state.lock().expect("state").qos2_released(pkid);
                    if known && h.expiry_s.load(Ordering::SeqCst) > 0 {
                        broker.persist.send(vec![Op::Qos2In {
                            client_id: h.client_id.to_string(),
                            pkid,
                            held: false,
                        }]);
                    }
                    conn.write(Out::PubComp {
                        pkid,
                        reason: if known { 0 } else { code::PACKET_ID_NOT_FOUND },
                    });
                }
                In::Subscribe { pkid: 0, .. } | In::Unsubscribe { pkid: 0, .. } => {
                    // [MQTT-2.3.1-1]: these need a non-zero packet id.
                    ended = protocol_error(conn, code::PROTOCOL_ERROR, Some("packet identifier 0"));
                    break;
                }
                In::Subscribe {
                    pkid,
                    filters,
                    sub_id,
                } => on_subscribe(conn, broker, self.identity, h, pkid, filters, sub_id),
                In::Unsubscribe { pkid, filters } => {
                    let reasons = filters
                        .iter()
                        .map(|f| {
                            if broker.unsubscribe(h, f) {
                                code::SUCCESS
                            } else {
                                code::NO_SUBSCRIPTION_EXISTED
                            }
                        })
                        .collect();
                    conn.write(Out::UnsubAck { pkid, reasons });
                }
                In::PingReq => conn.write(Out::PingResp),
                In::Disconnect {
                    reason,
                    session_expiry_s,
                } => {
                    if let Some(s) = session_expiry_s {
                        // [MQTT-3.14.2-2]: not from 0 to non-zero.
                        if h.expiry_s.load(Ordering::SeqCst) == 0 && s > 0 {
                            ended = protocol_error(
                                conn,
                                code::PROTOCOL_ERROR,
                                Some("session expiry cannot be set at disconnect"),
                            );
                            break;
                        }
                        h.expiry_s.store(
                            s.min(broker.settings.session_expiry_max_s),
                            Ordering::SeqCst,
                        );
                    }
                    ended = Some(if reason == code::DISCONNECT_WITH_WILL {
                        End::WithWill
                    } else {
                        End::Normal
                    });
                    break;
                }
                In::Connect(_) => {
                    // [MQTT-3.1.0-2]: a second CONNECT is a protocol error.
                    ended = protocol_error(conn, code::PROTOCOL_ERROR, None);
                    break;
                }
                In::Unexpected(what) => {
                    tracing::debug!(client = %h.client_id, packet = what, "protocol error");
                    ended = protocol_error(conn, code::PROTOCOL_ERROR, None);
                    break;
                }
            }
        }
        finish_pass(
            broker,
            self.tenant,
            self.device.clone(),
            pass,
            &mut self.pending,
        );
        if drain(conn, broker, h) {
            h.notify.notify_one();
        }
        ended
    }
}

/// Reason codes that mean "not stored". MQTT 3.1.1 has no negative
/// PUBACK: for these the connection closes without acknowledging, so the
/// client sends the message again once it reconnects. Other refusals
/// (invalid telemetry 0x99, not authorised 0x87) are final: 3.1.1 gets a
/// plain acknowledgement and the message is dropped and counted.
fn retry_later(reason: u8) -> bool {
    matches!(reason, code::UNSPECIFIED_ERROR | code::QUOTA_EXCEEDED)
}

/// Writes a pass's acknowledgements in order; false when the connection
/// must close instead (3.1.1 and a message that was not stored).
fn write_acks<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    broker: &Broker,
    h: &SessionHandle,
    acks: Vec<Ack>,
) -> bool {
    for a in acks {
        let (pkid, reason, qos2) = match a {
            Ack::PubAck(p, r) => (p, r, false),
            Ack::PubRec(p, r) => (p, r, true),
        };
        if qos2 && code::is_failure(reason) {
            // A refused QoS 2 message ends its exchange: the id is free
            // again, and a resend after reconnect is taken anew.
            let held = h.state.lock().expect("state").qos2_released(pkid);
            if held && h.expiry_s.load(Ordering::SeqCst) > 0 {
                broker.persist.send(vec![Op::Qos2In {
                    client_id: h.client_id.to_string(),
                    pkid,
                    held: false,
                }]);
            }
        }
        if conn.version != Version::V5 && retry_later(reason) {
            broker.metrics.unacknowledged_closes.inc();
            tracing::warn!(client = %h.client_id, pkid, reason, "a message could not be stored; closing the MQTT 3.1.1 connection without PUBACK so the client resends it");
            return false;
        }
        match a {
            Ack::PubAck(..) => conn.write(Out::PubAck { pkid, reason }),
            Ack::PubRec(..) => conn.write(Out::PubRec { pkid, reason }),
        }
    }
    true
}

#[allow(clippy::too_many_arguments)]
async fn main_loop<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    broker: &Arc<Broker>,
    identity: &Identity,
    tenant: &Arc<str>,
    h: &Arc<SessionHandle>,
    keep_alive: u16,
    kicker: &Kicker,
) -> End {
    let keep = (keep_alive > 0).then(|| Duration::from_millis(keep_alive as u64 * 1500));
    let mut deadline = keep.map(|k| tokio::time::Instant::now() + k);
    let device = match identity {
        Identity::Device { id } => broker.deps.registry.device(id),
        _ => None,
    };
    let mut rd = Reader {
        broker,
        identity,
        tenant,
        h,
        device,
        aliases: HashMap::new(),
        msg_bucket: Bucket::new(broker.settings.rate_messages),
        byte_bucket: Bucket::new(broker.settings.rate_bytes),
        resume_at: None,
        pending: PendingAcks::default(),
    };
    if drain(conn, broker, h) {
        h.notify.notify_one();
    }
    let end = loop {
        if conn.flush().await.is_err() {
            break End::Abnormal;
        }
        let reading = rd.pending.len() < MAX_PENDING && rd.resume_at.is_none();
        if reading {
            conn.prepare_read();
        }
        // One timer for both the throttle and keep-alive: fewer bytes in
        // every idle connection's task.
        let wake_at = match (rd.resume_at, deadline) {
            (Some(r), Some(d)) => Some(r.min(d)),
            (r, d) => r.or(d),
        };
        tokio::select! {
            biased;
            k = kicker.kicked() => {
                let (reason, message) = match k {
                    Kick::SlowConsumer => (code::QUOTA_EXCEEDED, None),
                    Kick::TakenOver => (code::SESSION_TAKEN_OVER, None),
                    Kick::Shutdown => (code::SERVER_SHUTTING_DOWN, Some("server shutting down")),
                };
                if conn.version == Version::V5 {
                    conn.write(Out::Disconnect { reason, message });
                }
                break End::Abnormal;
            }
            Some(acks) = rd.pending.next(), if !rd.pending.is_empty() => {
                if !write_acks(conn, broker, h, acks) {
                    break End::Abnormal;
                }
            }
            r = conn.io.read_buf(&mut conn.inbuf), if reading => {
                match r {
                    Ok(0) | Err(_) => break End::Abnormal,
                    Ok(n) => conn.after_read(n),
                }
                deadline = keep.map(|k| tokio::time::Instant::now() + k);
                if let Some(e) = rd.process(conn) {
                    break e;
                }
            }
            _ = h.notify.notified() => {
                if drain(conn, broker, h) {
                    h.notify.notify_one();
                }
            }
            _ = async { tokio::time::sleep_until(wake_at.expect("guarded")).await }, if wake_at.is_some() => {
                let now = tokio::time::Instant::now();
                if rd.resume_at.is_some_and(|r| r <= now) {
                    rd.resume_at = None;
                    if let Some(e) = rd.process(conn) {
                        break e;
                    }
                }
                if deadline.is_some_and(|d| d <= now) {
                    // [MQTT-3.1.2-24]: 1.5 × keep-alive without a packet.
                    if conn.version == Version::V5 {
                        conn.write(Out::Disconnect { reason: code::KEEP_ALIVE_TIMEOUT, message: None });
                    }
                    break End::Abnormal;
                }
            }
        }
    };
    // Acknowledge what became durable before we stopped reading.
    while let Some(acks) = rd.pending.next().await {
        if !write_acks(conn, broker, h, acks) {
            break;
        }
    }
    end
}

fn rate_check(
    msgs: &mut Option<Bucket>,
    bytes: &mut Option<Bucket>,
    len: usize,
) -> Option<Duration> {
    let a = msgs.as_mut().and_then(|b| b.take(1.0));
    let b = bytes.as_mut().and_then(|b| b.take(len as f64));
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Handles one PUBLISH: alias, validation, ACL, QoS 2 duplicates, then
/// telemetry hand-off or routing. Err(v5 reason) closes the connection.
#[allow(clippy::too_many_arguments)]
fn on_publish(
    broker: &Arc<Broker>,
    identity: &Identity,
    tenant: &Arc<str>,
    h: &Arc<SessionHandle>,
    mut p: PublishIn,
    aliases: &mut HashMap<u16, String>,
    device: Option<&str>,
    pass: &mut Pass,
) -> Result<(), u8> {
    if let Some(a) = p.topic_alias {
        if a == 0 || a > broker.settings.topic_alias_max {
            return Err(code::TOPIC_ALIAS_INVALID);
        }
        if p.topic.is_empty() {
            p.topic = aliases.get(&a).cloned().ok_or(code::PROTOCOL_ERROR)?;
        } else {
            aliases.insert(a, p.topic.clone());
        }
    }
    if !topic::valid_topic(&p.topic) {
        return Err(code::TOPIC_NAME_INVALID);
    }
    if p.qos > 2 {
        return Err(code::MALFORMED_PACKET);
    }
    if p.qos > 0 && p.pkid == 0 {
        // [MQTT-2.3.1-1]
        return Err(code::PROTOCOL_ERROR);
    }
    broker.metrics.count_in(p.qos);
    let ack = |reason: u8| match p.qos {
        0 => None,
        1 => Some(Ack::PubAck(p.pkid, reason)),
        _ => Some(Ack::PubRec(p.pkid, reason)),
    };
    if p.qos == 2 {
        if !h.state.lock().expect("state").qos2_received(p.pkid) {
            // A retransmission of a QoS 2 message already taken: acknowledge
            // again, deliver nothing again [MQTT-4.3.3-…].
            pass.acks.push(ack(0));
            return Ok(());
        }
        // A persistent session remembers the id across restarts, durably
        // before the PUBREC goes out.
        if h.expiry_s.load(Ordering::SeqCst) > 0 {
            pass.ops.push(Op::Qos2In {
                client_id: h.client_id.to_string(),
                pkid: p.pkid,
                held: true,
            });
        }
    }
    if !acl::may_publish(identity, &p.topic) {
        broker.metrics.acl_denied.inc();
        tracing::debug!(client = %h.client_id, topic = %p.topic, "publish refused by ACL");
        if p.qos == 2 {
            h.state.lock().expect("state").qos2_released(p.pkid);
        }
        pass.acks.push(ack(code::NOT_AUTHORIZED));
        return Ok(());
    }
    let now = broker.now_us();
    let msg = Arc::new(Message {
        topic: p.topic.as_str().into(),
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        props: p.props.map(Arc::new),
        expires_at: p.expiry_s.map(|s| now + s as i64 * 1_000_000),
        from: Some(h.client_id.clone()),
    });
    // What follows `devices/{this device}/` in the topic, if anything.
    let own = device.and_then(|id| {
        msg.topic
            .strip_prefix("devices/")?
            .strip_prefix(id)?
            .strip_prefix('/')
    });
    if own == Some("telemetry") {
        match crate::ingest::mqtt::decode(
            &broker.deps.metrics,
            &broker.deps.decode_limits,
            &msg.payload,
        ) {
            Ok(msgs) => {
                let slot = pass.acks.len();
                pass.acks.push(ack(0));
                pass.telemetry.push((slot, msgs));
                pass.routed.push((slot, msg));
            }
            Err(e) => {
                broker.metrics.telemetry_rejected.inc();
                tracing::info!(client = %h.client_id, error = %e, "telemetry refused");
                // MQTT 5 says why; 3.1.1 can only acknowledge and drop.
                pass.acks.push(ack(code::PAYLOAD_FORMAT_INVALID));
            }
        }
        return Ok(());
    }
    if let Some(id) = own.and_then(|t| t.strip_prefix("replies/")) {
        broker.reply(id, msg.payload.clone());
    }
    // A device's function call: devices/{id}/functions/{name}/{requestId}.
    if let (Some(device), Some(rest)) = (device, own) {
        let call = rest
            .strip_prefix("functions/")
            .and_then(|t| t.split_once('/'))
            .filter(|(name, rid)| {
                *name != "replies" && !name.is_empty() && !rid.is_empty() && !rid.contains('/')
            });
        if let Some((name, rid)) = call {
            broker.function_call(tenant, device, name, rid, msg.payload.clone());
        }
    }
    // Sparkplug B births, data and deaths are stored (and routed).
    match super::sparkplug::work(&msg.topic, &msg.payload) {
        None => {}
        Some(Ok(w)) => pass.sparkplug.push((pass.acks.len(), w)),
        Some(Err(e)) => {
            broker.metrics.telemetry_rejected.inc();
            tracing::info!(client = %h.client_id, error = %e, "Sparkplug payload refused");
            pass.acks.push(ack(code::PAYLOAD_FORMAT_INVALID));
            return Ok(());
        }
    }
    if msg.retain {
        pass.ops.push(broker.retain(tenant, &msg));
    }
    let qos = msg.qos;
    let ops = broker.route(tenant, msg);
    if qos == 0 {
        broker.persist.send(ops);
    } else {
        pass.ops.extend(ops);
    }
    pass.acks.push(ack(0));
    Ok(())
}

/// Turns a read pass into one ordered acknowledgement future: immediate
/// acks and, when the pass held telemetry or state to store, the durable
/// writes they wait for. Each PUBLISH keeps its own outcome; the pass's
/// telemetry is still committed together.
fn finish_pass(
    broker: &Arc<Broker>,
    tenant: &Arc<str>,
    device: Option<Arc<crate::registry::Device>>,
    pass: Pass,
    pending: &mut PendingAcks,
) {
    if pass.acks.is_empty() {
        broker.persist.send(pass.ops);
        return;
    }
    if pass.telemetry.is_empty() && pass.ops.is_empty() && pass.sparkplug.is_empty() {
        pending.push_back(Box::pin(futures_util::future::ready(
            pass.acks.into_iter().flatten().collect(),
        )));
        return;
    }
    let (broker, tenant) = (broker.clone(), tenant.clone());
    pending.push_back(Box::pin(async move {
        let Pass {
            mut acks,
            telemetry,
            routed,
            ops,
            sparkplug,
        } = pass;
        // In order: a birth before the data that uses its aliases.
        for (slot, w) in sparkplug {
            use super::sparkplug::Refusal;
            match broker.sparkplug(&tenant, w).await {
                Ok(()) => {}
                Err(Refusal::Invalid) => refuse(&mut acks[slot], code::PAYLOAD_FORMAT_INVALID),
                Err(Refusal::NotStored(crate::pipeline::IngestError::Quota(_))) => {
                    refuse(&mut acks[slot], code::QUOTA_EXCEEDED)
                }
                Err(Refusal::NotStored(_)) => refuse(&mut acks[slot], code::UNSPECIFIED_ERROR),
            }
        }
        if !telemetry.is_empty() {
            let device = device.expect("telemetry comes from a device");
            let (slots, groups): (Vec<usize>, Vec<Telemetry>) = telemetry.into_iter().unzip();
            // The copies of accepted messages are queued for persistent
            // sessions in the telemetry's own commit, and delivered (here,
            // not in the writer) once it is durable: one commit per pass.
            let group_slots = slots.clone();
            let planned = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (b, t, p) = (broker.clone(), tenant.clone(), planned.clone());
            let copies = move |accepted: &[bool]| {
                let (mut plan, mut rows) = (Vec::new(), Vec::new());
                for (slot, m) in routed {
                    let taken = group_slots
                        .iter()
                        .position(|s| *s == slot)
                        .is_some_and(|g| accepted[g]);
                    if taken {
                        let (p, r) = b.plan(&t, m);
                        plan.extend(p);
                        rows.extend(r);
                    }
                }
                *p.lock().expect("plan") = plan;
                Broker::rows_in_commit(rows)
            };
            let answers =
                crate::ingest::mqtt::store(&broker.deps.pipeline, &device, groups, copies).await;
            if answers
                .iter()
                .any(|a| matches!(a, crate::ingest::Answer::Stored(_)))
            {
                let plan = std::mem::take(&mut *planned.lock().expect("plan"));
                broker.persist.send(broker.deliver(plan));
            }
            for (slot, answer) in slots.into_iter().zip(answers) {
                let reason = match answer {
                    crate::ingest::Answer::Stored(_) => continue,
                    crate::ingest::Answer::Invalid => code::PAYLOAD_FORMAT_INVALID,
                    crate::ingest::Answer::OverQuota => code::QUOTA_EXCEEDED,
                    crate::ingest::Answer::RetryLater => code::UNSPECIFIED_ERROR,
                };
                refuse(&mut acks[slot], reason);
            }
        }
        if !ops.is_empty() && broker.persist.durable(ops).await.is_err() {
            // Retained messages or queued copies were not stored: nothing
            // of this pass is acknowledged as taken.
            for a in acks.iter_mut() {
                refuse(a, code::UNSPECIFIED_ERROR);
            }
        }
        acks.into_iter().flatten().collect()
    }));
}

/// Turns a success acknowledgement into a refusal with `reason`.
fn refuse(a: &mut Option<Ack>, reason: u8) {
    if let Some(Ack::PubAck(_, r) | Ack::PubRec(_, r)) = a {
        if !code::is_failure(*r) {
            *r = reason;
        }
    }
}

fn on_subscribe<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    broker: &Arc<Broker>,
    identity: &Identity,
    h: &Arc<SessionHandle>,
    pkid: u16,
    filters: Vec<codec::SubReq>,
    sub_id: Option<usize>,
) {
    let mut codes = Vec::with_capacity(filters.len());
    let mut retained = Vec::new();
    for f in &filters {
        let Ok((share, filter)) = topic::parse_shared(&f.filter) else {
            codes.push(Err(code::TOPIC_FILTER_INVALID));
            continue;
        };
        if !topic::valid_filter(filter) || f.qos > 2 {
            codes.push(Err(code::TOPIC_FILTER_INVALID));
            continue;
        }
        if share.is_some() && f.no_local {
            // [MQTT-3.8.3-4]
            codes.push(Err(code::TOPIC_FILTER_INVALID));
            continue;
        }
        if !acl::may_subscribe(identity, filter) {
            broker.metrics.acl_denied.inc();
            codes.push(Err(code::NOT_AUTHORIZED));
            continue;
        }
        let sub = Sub {
            client: h.client_id.clone(),
            filter: filter.into(),
            qos: f.qos,
            no_local: f.no_local,
            retain_as_published: f.retain_as_published,
            sub_id,
            share: share.map(Into::into),
            reader: acl::Reader::of(identity),
        };
        let existed = broker.subscribe(h, &f.filter, sub);
        codes.push(Ok(f.qos));
        // Retained messages: never for shared subscriptions; per retain
        // handling otherwise [MQTT-3.3.1-9..11].
        if share.is_none() && (f.retain_handling == 0 || (f.retain_handling == 1 && !existed)) {
            for m in broker.retained_for(&h.tenant, filter, &acl::Reader::of(identity)) {
                retained.push(Outgoing {
                    qos: m.qos.min(f.qos),
                    msg: m,
                    retain: true,
                    sub_ids: sub_id.into_iter().collect(),
                    persist_id: None,
                });
            }
        }
    }
    conn.write(Out::SubAck { pkid, codes });
    if !retained.is_empty() {
        let mut st = h.state.lock().expect("state");
        for o in retained {
            st.push(o);
        }
        drop(st);
        h.notify.notify_one();
    }
}
