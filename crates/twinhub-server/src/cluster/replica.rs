//! A replica: a cluster member that is not the primary. It follows the
//! primary's announcements on NATS and forwards to it — HTTP requests
//! (streamed both ways, so SSE works), MQTT connections (bytes, both
//! ways) and MQTT over WebSocket (`/mqtt`: the frames' bytes to the
//! primary's MQTT listener and back), over plain TCP or TLS (the replica
//! terminates TLS with the node's own certificate), and raw frames
//! (`frames.rs`) — so a load balancer may send anything to any node.
//! HTTP telemetry (devices' JSON, line protocol) is decoded here and
//! handed on in binary (`decode.rs`): the protocol work of the busiest
//! path spreads over the nodes. `/health` and `/ready` are its own: ready
//! while it knows a live primary.

use super::announce::{subscribed, PrimaryInfo};
use super::{Membership, ANNOUNCE, STALE};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::json;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// What the replica heard of the primary.
struct Heard {
    /// The last announcement of the greatest term, and when.
    last: Option<(PrimaryInfo, Instant)>,
    /// Since when the replica listens (silence counts from here until the
    /// first announcement).
    since: Instant,
}

pub(super) struct Primary(RwLock<Heard>);

impl Default for Primary {
    fn default() -> Self {
        Primary(RwLock::new(Heard {
            last: None,
            since: Instant::now(),
        }))
    }
}

impl Primary {
    /// The primary to forward to: heard lately and serving.
    pub(super) fn current(&self) -> Option<PrimaryInfo> {
        let held = self.0.read().expect("primary");
        held.last
            .as_ref()
            .filter(|(p, at)| at.elapsed() < STALE && !p.opening)
            .map(|(p, _)| p.clone())
    }

    /// How long no holder of the writer lock has said anything.
    fn silent_for(&self) -> Duration {
        let held = self.0.read().expect("primary");
        let heard = held.last.as_ref().map_or(held.since, |(_, at)| *at);
        heard.max(held.since).elapsed()
    }

    /// Counts the silence afresh (after ending a silent holder's session).
    fn restart_silence(&self) {
        let mut held = self.0.write().expect("primary");
        held.since = Instant::now();
        if let Some((_, at)) = held.last.as_mut() {
            *at = Instant::now() - STALE;
        }
    }

    fn heard(&self, p: PrimaryInfo) {
        let mut held = self.0.write().expect("primary");
        if let Some((h, _)) = &held.last {
            if p.term < h.term {
                tracing::debug!(node = %p.node, term = p.term, "ignoring an older primary");
                return;
            }
            if h.node != p.node || h.opening != p.opening {
                tracing::info!(primary = %p.node, term = p.term, opening = p.opening, "following the primary");
            }
        } else {
            tracing::info!(primary = %p.node, term = p.term, opening = p.opening, "following the primary");
        }
        held.last = Some((p, Instant::now()));
    }
}

/// A running replica's tasks; `stop` ends them (the node's listeners
/// stay open: the primary's server takes them over).
pub(super) struct Replica {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    primary: Arc<Primary>,
    bus_up: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone)]
pub(super) struct Forward {
    node: Arc<str>,
    pub(super) primary: Arc<Primary>,
    client: reqwest::Client,
    /// True once the replica stops (it became the primary): forwarded
    /// connections close and their clients reconnect.
    pub(super) stopped: tokio::sync::watch::Receiver<bool>,
    /// Signs the header of relayed MQTT connections and frames (the
    /// primary takes them with the same `Config::forward_key`).
    pub(super) key: Option<crate::forwarded::Key>,
    /// How telemetry is decoded here (with `key` to sign it; without a
    /// key it is relayed as sent).
    pub(super) decoding: super::decode::Decoding,
}

impl Replica {
    pub(super) fn start(m: &Membership<'_>) -> std::io::Result<Replica> {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let fwd = Forward {
            node: m.node.into(),
            primary: Arc::default(),
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(std::io::Error::other)?,
            stopped: stopped.clone(),
            key: m.forward_key.clone(),
            decoding: m.decoding,
        };
        let bus_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = vec![follow(
            m.nats.to_string(),
            format!("{}.primary", m.subject),
            fwd.primary.clone(),
            m.node.to_string(),
            bus_up.clone(),
        )];
        let app = axum::Router::new()
            .route("/health", axum::routing::get(health))
            .route("/ready", axum::routing::get(ready))
            .route("/mqtt", axum::routing::get(forward_mqtt_websocket))
            .fallback(forward)
            .with_state(fwd.clone());
        let app = app.into_make_service_with_connect_info::<crate::tls::PeerAddr>();
        let http = crate::tls::plain(second_handle(m.http)?);
        tasks.push(serve_until(http, app.clone(), stopped.clone()));
        if let Some((l, acceptor)) = m.https {
            let l = crate::tls::TlsListener::new(second_handle(l)?, acceptor.clone(), HANDSHAKE)?;
            tasks.push(serve_until(l, app, stopped.clone()));
        }
        let mqtt = |p: &PrimaryInfo| p.mqtt.clone();
        if let Some(l) = m.mqtt {
            let relay = forward_connections(second_handle(l)?, None, fwd.clone(), mqtt, b"");
            tasks.push(tokio::spawn(relay));
        }
        if let Some((l, acceptor)) = m.mqtts {
            let tls = Some(acceptor.clone());
            let relay = forward_connections(second_handle(l)?, tls, fwd.clone(), mqtt, b"");
            tasks.push(tokio::spawn(relay));
        }
        if let Some(l) = m.tcp {
            // Raw frames over TCP: an empty frame first, then the header.
            let frames = |p: &PrimaryInfo| p.tcp.clone();
            let prefix = &crate::forwarded::TCP_FRAMES_PREFIX;
            let relay = forward_connections(second_handle(l)?, None, fwd.clone(), frames, prefix);
            tasks.push(tokio::spawn(relay));
        }
        if let Some(u) = m.udp {
            tasks.push(tokio::spawn(super::frames::relay_udp(
                super::frames::second_udp_handle(u)?,
                fwd.clone(),
            )));
        }
        Ok(Replica {
            stop,
            tasks,
            primary: fwd.primary,
            bus_up,
        })
    }

    /// The holder of the writer lock has said nothing for `silence` while
    /// this replica heard NATS fine: it is stopped, hung or cut off, and
    /// keeps the lock (its PostgreSQL session is open) without serving.
    pub(super) fn holder_silent(&self, silence: Duration) -> bool {
        self.bus_up.load(std::sync::atomic::Ordering::SeqCst)
            && self.primary.silent_for() >= silence
    }

    pub(super) fn restart_silence(&self) {
        self.primary.restart_silence();
    }

    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Serves the replica's routes on `listener` until the replica stops.
fn serve_until<L>(
    listener: L,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<
        axum::Router,
        crate::tls::PeerAddr,
    >,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    crate::tls::PeerAddr:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|v| *v).await;
            })
            .await;
    })
}

/// Keeps `primary` at the last announcement (reconnecting as needed);
/// `bus_up` while NATS answers.
fn follow(
    url: String,
    subject: String,
    primary: Arc<Primary>,
    node: String,
    bus_up: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        loop {
            bus_up.store(false, Ordering::SeqCst);
            let (client, mut sub) =
                subscribed(&url, &format!("twinhub replica {node}"), &subject).await;
            let mut check = tokio::time::interval(ANNOUNCE);
            loop {
                tokio::select! {
                    msg = sub.next() => {
                        let Some(msg) = msg else { break };
                        if let Ok(p) = serde_json::from_slice::<PrimaryInfo>(&msg.payload) {
                            primary.heard(p);
                        }
                    }
                    _ = check.tick() => {
                        // A round trip to the server, so a replica cut
                        // off from NATS never takes the primary's silence
                        // for its death.
                        let ok = tokio::time::timeout(ANNOUNCE * 4, client.flush())
                            .await
                            .is_ok_and(|r| r.is_ok());
                        bus_up.store(ok, Ordering::SeqCst);
                    }
                }
            }
        }
    })
}

async fn health(State(f): State<Forward>) -> impl IntoResponse {
    let primary = f.primary.current().map(|p| p.node);
    Json(json!({"status": "ok", "role": "replica", "node": &*f.node, "primary": primary}))
}

async fn ready(State(f): State<Forward>) -> impl IntoResponse {
    match f.primary.current() {
        Some(p) => (
            StatusCode::OK,
            Json(
                json!({"status": "ready", "role": "replica", "node": &*f.node, "primary": p.node}),
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no primary", "role": "replica", "node": &*f.node})),
        ),
    }
}

/// The API's error shape and code, with `Retry-After: 1`.
fn unavailable(message: &str) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": "service_unavailable", "message": message}})),
    )
        .into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    r
}

/// Headers that belong to one connection, not to the request.
fn end_to_end(h: &HeaderMap) -> HeaderMap {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    let mut out = h.clone();
    for name in HOP {
        out.remove(name);
    }
    out
}

/// Sends the request on to the primary and streams its answer back;
/// telemetry bodies are decoded here first (`decode.rs`).
async fn forward(State(f): State<Forward>, req: Request) -> Response {
    let Some(p) = f.primary.current() else {
        return unavailable("no primary is known to this node yet; retry shortly");
    };
    if let (Some(key), Some(what)) = (&f.key, super::decode::decodable(&req)) {
        return super::decode::forward_decoded(&f, &p, key, what, req).await;
    }
    let (parts, body) = req.into_parts();
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    relay_request(&f, &p, parts, body).await
}

/// Sends a request (its head from the client, `body` as given) to the
/// primary and streams the answer back.
pub(super) async fn relay_request(
    f: &Forward,
    p: &PrimaryInfo,
    parts: axum::http::request::Parts,
    body: reqwest::Body,
) -> Response {
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut headers = end_to_end(&parts.headers);
    headers.insert(
        "x-twinhub-forwarded-by",
        HeaderValue::from_str(&f.node).unwrap_or(HeaderValue::from_static("replica")),
    );
    let sent = f
        .client
        .request(parts.method, format!("http://{}{path}", p.http))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status());
            if let Some(h) = out.headers_mut() {
                *h = end_to_end(resp.headers());
            }
            out.body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|_| unavailable("the primary's answer could not be relayed"))
        }
        Err(e) => {
            tracing::warn!(error = %e, primary = %p.node, "forwarding to the primary failed");
            unavailable("the primary did not answer; retry shortly")
        }
    }
}

/// How long a client may take over its TLS handshake with a replica.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Each connection is relayed to the primary's listener that `to` picks
/// from its announcement (MQTT, or raw TCP frames), bytes both ways, until
/// either side closes (a takeover closes them all: the clients reconnect
/// and land on the new primary). The relay starts with `prefix` and a
/// signed header (`forwarded`) giving the primary the client's address
/// and, over MQTTS, the device id of its certificate: the primary serves
/// it as if the client had come straight to it. With `tls`, the replica
/// ends TLS first (verifying client certificates as the primary would).
async fn forward_connections(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    f: Forward,
    to: fn(&PrimaryInfo) -> Option<String>,
    prefix: &'static [u8],
) {
    let mut stopped = f.stopped.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.wait_for(|v| *v) => return,
        };
        let Ok((client, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let target = f.primary.current().and_then(|p| to(&p));
        let mut stop = stopped.clone();
        let (tls, key) = (tls.clone(), f.key.clone());
        tokio::spawn(async move {
            // No primary (or one without that listener): the client is
            // closed and reconnects, through the load balancer, somewhere
            // that works.
            let Some(target) = target else { return };
            let _ = client.set_nodelay(true);
            let relay = async {
                let who = |cert_device| crate::forwarded::Forwarded { peer, cert_device };
                match tls {
                    None => relay_to(client, &target, prefix, key.as_ref(), who(None)).await,
                    Some(acceptor) => {
                        if let Ok(Ok(tls)) =
                            tokio::time::timeout(HANDSHAKE, acceptor.accept(client)).await
                        {
                            let cn = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| crate::tls::subject_cn(c.as_ref()));
                            relay_to(tls, &target, prefix, key.as_ref(), who(cn)).await
                        }
                    }
                }
            };
            tokio::select! {
                _ = relay => {}
                _ = stop.wait_for(|v| *v) => {}
            }
        });
    }
}

/// Relays `client` to a new connection to `target`, after `prefix` and
/// the header saying who it is, until either side closes.
async fn relay_to<S>(
    mut client: S,
    target: &str,
    prefix: &[u8],
    key: Option<&crate::forwarded::Key>,
    who: crate::forwarded::Forwarded,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Some(mut upstream) = upstream(target, prefix, key, &who).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

/// A connection to the primary's `target` listener, `prefix` and the
/// header saying who the relayed client is already sent.
async fn upstream(
    target: &str,
    prefix: &[u8],
    key: Option<&crate::forwarded::Key>,
    who: &crate::forwarded::Forwarded,
) -> Option<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut upstream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target))
        .await
        .ok()?
        .ok()?;
    let _ = upstream.set_nodelay(true);
    if let Some(key) = key {
        let mut header = prefix.to_vec();
        header.extend(crate::forwarded::header(
            key,
            who,
            crate::forwarded::now_ms(),
        ));
        upstream.write_all(&header).await.ok()?;
    }
    Some(upstream)
}

/// MQTT over WebSocket: the replica takes the upgrade and relays the
/// frames' bytes to the primary's MQTT listener (MQTT's CONNECT
/// authenticates there, as for a forwarded TCP connection), and what
/// comes back as binary frames.
async fn forward_mqtt_websocket(
    State(f): State<Forward>,
    axum::extract::ConnectInfo(crate::tls::PeerAddr(peer)): axum::extract::ConnectInfo<
        crate::tls::PeerAddr,
    >,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let Some(target) = f.primary.current().and_then(|p| p.mqtt) else {
        return unavailable("no primary with MQTT is known to this node yet; retry shortly");
    };
    let mut stopped = f.stopped.clone();
    let who = crate::forwarded::Forwarded {
        peer,
        cert_device: None,
    };
    ws.protocols(["mqtt"])
        .on_upgrade(move |socket| async move {
            tokio::select! {
                _ = relay_websocket(socket, &target, f.key.as_ref(), who) => {}
                _ = stopped.wait_for(|v| *v) => {}
            }
        })
        .into_response()
}

async fn relay_websocket(
    socket: axum::extract::ws::WebSocket,
    target: &str,
    key: Option<&crate::forwarded::Key>,
    who: crate::forwarded::Forwarded,
) {
    use axum::extract::ws::Message;
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(upstream) = upstream(target, b"", key, &who).await else {
        return;
    };
    let (mut from_primary, mut to_primary) = upstream.into_split();
    let (mut to_client, mut from_client) = socket.split();
    let up = async {
        while let Some(Ok(msg)) = from_client.next().await {
            match msg {
                Message::Binary(b) => {
                    if to_primary.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                // MQTT travels in binary frames; pings are answered by
                // the WebSocket layer.
                _ => {}
            }
        }
        let _ = to_primary.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_primary.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                    if to_client.send(frame).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_client.close().await;
    };
    // Either side closing ends the relay.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// A second handle of a listening socket (both accept from one queue).
pub(super) fn second_handle(l: &TcpListener) -> std::io::Result<TcpListener> {
    use std::os::fd::AsFd;
    let fd = l.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(node: &str, term: i64, opening: bool) -> PrimaryInfo {
        PrimaryInfo {
            node: node.into(),
            http: format!("{node}:80"),
            mqtt: None,
            udp: None,
            tcp: None,
            term,
            opening,
        }
    }

    /// The replica follows the greatest term it heard: a former primary
    /// that wakes and announces again is not followed back; a node still
    /// opening the store counts as alive but gets no requests.
    #[test]
    fn a_replica_follows_the_greatest_term_and_counts_silence() {
        let p = Primary::default();
        assert!(p.current().is_none());
        p.heard(info("a", 3, false));
        assert_eq!(p.current().unwrap().node, "a");
        p.heard(info("b", 4, true));
        assert!(p.current().is_none(), "b is opening: nothing to forward to");
        assert!(p.silent_for() < STALE, "but it is alive");
        p.heard(info("a", 3, false));
        assert!(p.current().is_none(), "the older term is ignored");
        p.heard(info("b", 4, false));
        assert_eq!(p.current().unwrap().node, "b");
        p.restart_silence();
        assert!(
            p.current().is_none(),
            "after fencing, wait for the next holder"
        );
        assert!(p.silent_for() < STALE);
    }
}
