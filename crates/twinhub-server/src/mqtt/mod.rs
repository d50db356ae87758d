//! The MQTT server: the plant's broker and twinhub's device front door.
//!
//! Layers: `codec` (wire ↔ version-neutral packets) → `connection` (one
//! task per client: read, ACL, hand-off, write) → `session` (pure delivery
//! state) and `router` (pure subscription trie) → the ingest `pipeline` for
//! device telemetry. The broker gets handles (`BrokerDeps`), never the
//! application state.
//!
//! May call: `ingest` (the telemetry hand-off), `pipeline`, `registry`,
//! `events`, `store` (persistence of
//! retained messages and sessions), `metrics`, `quotas` (connections),
//! `auth` (principals), `clock`, `tls` (MQTTS), `forwarded` (connections a
//! cluster replica relays). Its settings are its own
//! (`settings`), which the configuration assembles.

pub mod acl;
pub mod broker;
pub mod codec;
pub mod connection;
pub mod fanout;
pub mod persist;
pub mod reason;
pub mod router;
pub mod session;
pub mod settings;
pub mod sparkplug;
pub mod topic;

pub use broker::{Broker, BrokerDeps};
pub use settings::MqttConfig;

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts clients until shutdown and hands each socket to `start`
/// (which runs the connection, after a TLS handshake where there is one).
async fn accept_loop<F>(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    what: &str,
    start: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr),
{
    let mut stop = shutdown.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = stop.changed() => continue,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    start(sock, peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Accepts MQTT clients until shutdown.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    accept_loop(listener, shutdown, "MQTT", move |sock, peer| {
        match broker.settings.forward_key.clone() {
            None => {
                tokio::spawn(connection::run(broker.clone(), sock, peer, None));
            }
            Some(key) => {
                tokio::spawn(serve_maybe_forwarded(broker.clone(), sock, peer, key));
            }
        }
    })
    .await
}

/// A cluster member's connection: relayed by a replica (a signed header
/// first, with the client's address and certificate identity), or a
/// client's own.
async fn serve_maybe_forwarded(
    broker: Arc<Broker>,
    mut sock: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    key: crate::forwarded::Key,
) {
    let timeout = broker.settings.connect_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, sock.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == crate::forwarded::FIRST => {
            let read = crate::forwarded::read(&mut sock, &key, crate::forwarded::now_ms());
            match tokio::time::timeout(timeout, read).await {
                Ok(Ok(f)) => connection::run(broker, sock, f.peer, f.cert_device).await,
                // A wrong key or a skewed clock on a member: worth a warning.
                Ok(Err(
                    e @ (crate::forwarded::HeaderError::BadSignature
                    | crate::forwarded::HeaderError::Stale),
                )) => tracing::warn!(%peer, error = %e, "a relayed MQTT connection refused"),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "an MQTT connection refused"),
                Err(_) => tracing::debug!(%peer, "a relayed MQTT connection's header timed out"),
            }
        }
        Ok(Ok(_)) => connection::run(broker, sock, peer, None).await,
        _ => {}
    }
}

/// Accepts MQTT-over-TLS clients until shutdown; the handshake runs in the
/// connection's own task so a slow one never holds up accepting.
pub async fn serve_tls(
    broker: Arc<Broker>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: watch::Receiver<bool>,
) {
    accept_loop(listener, shutdown, "MQTTS", move |sock, peer| {
        let (b, a) = (broker.clone(), acceptor.clone());
        tokio::spawn(async move {
            let timeout = b.settings.connect_timeout;
            match tokio::time::timeout(timeout, a.accept(sock)).await {
                Ok(Ok(tls)) => {
                    // Verified by the TLS layer against tls.client_ca.
                    let cn = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::tls::subject_cn(c.as_ref()));
                    connection::run(b, tls, peer, cn).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    })
    .await
}

/// MQTT over WebSocket (`/mqtt` on the HTTP port, subprotocol `mqtt`):
/// binary frames carry the same byte stream a TCP connection would, so the
/// same connection task serves it through an in-memory pipe.
pub async fn serve_websocket(
    broker: Arc<Broker>,
    ws: axum::extract::ws::WebSocket,
    peer: std::net::SocketAddr,
) {
    use axum::extract::ws::Message;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let conn = tokio::spawn(connection::run(broker, theirs, peer, None));
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut stream) = ws.split();
    let inbound = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => {
                    break;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
    let _ = conn.await;
}
