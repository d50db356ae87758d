//! A webhook receiver in the test process: records every batch with its
//! headers, answers what the test tells it to (2xx, an error status, or
//! nothing at all: it can go away and come back on the same port).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

#[derive(Default)]
pub struct Inbox {
    /// Every request the receiver accepted: (headers, raw body).
    pub requests: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Status to answer (0: 200).
    pub status: AtomicU16,
    /// Requests answered with an error status.
    pub refused: Mutex<u64>,
}

impl Inbox {
    /// Every event accepted, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| serde_json::from_slice::<Vec<Value>>(b).unwrap())
            .collect()
    }

    /// Distinct event ids accepted (what a deduplicating receiver keeps).
    pub fn ids(&self) -> HashSet<String> {
        self.events()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn batches(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub inbox: Arc<Inbox>,
    task: Option<JoinHandle<()>>,
}

/// Every answer closes its connection, so once the receiver stops, the
/// next delivery meets a refused connection (no pooled one lingers).
async fn accept(
    State(inbox): State<Arc<Inbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1]) {
    let close = [("connection", "close")];
    let status = inbox.status.load(Ordering::SeqCst);
    if status != 0 && status != 200 {
        *inbox.refused.lock().unwrap() += 1;
        return (StatusCode::from_u16(status).unwrap(), close);
    }
    inbox.requests.lock().unwrap().push((headers, body));
    (StatusCode::OK, close)
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::on("127.0.0.1:0".parse().unwrap(), Arc::new(Inbox::default())).await
    }

    async fn on(addr: SocketAddr, inbox: Arc<Inbox>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/hook", post(accept))
            .with_state(inbox.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            inbox,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Goes away: the port refuses connections.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Comes back on the same port with the same inbox.
    pub async fn resume(&mut self) {
        self.stop().await;
        let again = Receiver::on(self.addr, self.inbox.clone()).await;
        *self = again;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
