//! A replica's relay of raw frames over UDP to the primary
//! (`ingest::frames` there; TCP frame connections are relayed like MQTT
//! connections, `replica::forward_connections`, after an empty frame and
//! the signed header of `forwarded` naming the device's address). Each UDP
//! datagram goes on with such a header, from one socket of the replica's
//! connected to the primary; the primary's acknowledgements come back on
//! it under a header naming the device, and leave from the socket the
//! device sent to — so the device hears from the address it wrote to.
//! Without a primary, datagrams are dropped: a device resends what was
//! not acknowledged.

use super::replica::Forward;
use crate::forwarded::{self, Key};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// The replica's socket to the primary's frame socket, and the task
/// sending what comes back on it to the devices.
struct Link {
    target: String,
    to_primary: Arc<UdpSocket>,
    back: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.back.abort();
    }
}

impl Link {
    async fn open(target: &str, devices: Arc<UdpSocket>, key: Key) -> Option<Link> {
        let addr: SocketAddr = tokio::net::lookup_host(target).await.ok()?.next()?;
        let local: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let to_primary = Arc::new(UdpSocket::bind(local).await.ok()?);
        // Connected: only the primary's datagrams are received on it.
        to_primary.connect(addr).await.ok()?;
        let from_primary = to_primary.clone();
        let back = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = match from_primary.recv(&mut buf).await {
                    Ok(n) => n,
                    // An ICMP error from an earlier send (the primary
                    // went away): reported once, carry on.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                match forwarded::split_datagram(&key, &buf[..n], forwarded::now_ms()) {
                    Some(Ok((who, answer))) => {
                        let _ = devices.send_to(answer, who.peer).await;
                    }
                    _ => tracing::debug!(
                        "a datagram from the primary without a valid header dropped"
                    ),
                }
            }
        });
        Some(Link {
            target: target.to_string(),
            to_primary,
            back,
        })
    }
}

/// Relays each datagram to the current primary's frame socket.
pub(super) async fn relay_udp(socket: UdpSocket, f: Forward) {
    let Some(key) = f.key.clone() else {
        // `ClusterConfig::validate` makes a member have the shared key.
        tracing::warn!("no cluster key: raw frames over UDP are not relayed");
        return;
    };
    let socket = Arc::new(socket);
    let mut stopped = f.stopped.clone();
    let mut link: Option<Link> = None;
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = stopped.wait_for(|v| *v) => return,
        };
        let Some(target) = f.primary.current().and_then(|p| p.udp) else {
            continue;
        };
        if link.as_ref().is_none_or(|l| l.target != target) {
            link = Link::open(&target, socket.clone(), key.clone()).await;
        }
        if let Some(l) = &link {
            let d = forwarded::datagram(&key, peer, &buf[..n], forwarded::now_ms());
            let _ = l.to_primary.send(&d).await;
        }
    }
}

/// The replica's handle of the node's frame socket (the same socket: the
/// primary's server takes it over when this node becomes the primary).
pub(super) fn second_udp_handle(u: &UdpSocket) -> std::io::Result<UdpSocket> {
    use std::os::fd::AsFd;
    let std = std::net::UdpSocket::from(u.as_fd().try_clone_to_owned()?);
    std.set_nonblocking(true)?;
    UdpSocket::from_std(std)
}
