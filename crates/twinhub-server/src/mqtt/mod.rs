//! The MQTT server: the plant's broker and twinhub's device front door.
//!
//! Layers: `codec` (wire ↔ version-neutral packets) → `connection` (one
//! task per client: read, ACL, hand-off, write) → `session` (pure delivery
//! state) and `router` (pure subscription trie) → the ingest `pipeline` for
//! device telemetry. May call: `pipeline`, `registry`, `events`, `store`
//! (persistence of retained messages and sessions), `metrics`.

pub mod acl;
pub mod broker;
pub mod codec;
pub mod connection;
pub mod persist;
pub mod router;
pub mod session;
pub mod topic;

pub use broker::Broker;

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Accepts MQTT clients until shutdown.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
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
                    tokio::spawn(connection::run(broker.clone(), sock, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
