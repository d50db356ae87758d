//! The writer lock's holder says so on NATS (`<subject>.primary`, every
//! `ANNOUNCE`): first while it opens the store (replaying the batch log
//! can take a while — the replicas must not take it for dead), then with
//! where it serves. Each announcement carries the holder's *term*, which
//! PostgreSQL makes greater for every new holder of the lock: a replica
//! follows the greatest it heard, and a holder that hears a greater term
//! than its own knows it has been replaced.

use super::ANNOUNCE;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the primary announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryInfo {
    pub node: String,
    /// `host:port` of its HTTP listener ("" while opening).
    pub http: String,
    /// `host:port` of its MQTT listener, if it has one.
    pub mqtt: Option<String>,
    /// `host:port` of its raw-frame sockets, if it has them.
    #[serde(default)]
    pub udp: Option<String>,
    #[serde(default)]
    pub tcp: Option<String>,
    /// The writer lock's term (see the module's doc).
    #[serde(default)]
    pub term: i64,
    /// It holds the lock and is opening the store: alive, not serving yet.
    #[serde(default)]
    pub opening: bool,
}

/// Where a primary serves, as other nodes reach it.
pub struct Serving {
    pub http: String,
    pub mqtt: Option<String>,
    pub udp: Option<String>,
    pub tcp: Option<String>,
}

async fn nats(url: &str, name: &str) -> Option<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .name(name)
        .connect(url)
        .await
        .map_err(|e| tracing::warn!(error = %e, "NATS is unreachable; retrying"))
        .ok()
}

/// A connection to NATS subscribed to `subject`, retried every second
/// until both work.
pub(super) async fn subscribed(
    url: &str,
    name: &str,
    subject: &str,
) -> (async_nats::Client, async_nats::Subscriber) {
    loop {
        if let Some(client) = nats(url, name).await {
            if let Ok(sub) = client.subscribe(subject.to_string()).await {
                return (client, sub);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The announcing task of a node that holds, or is taking, the writer
/// lock. Silent until `locked`; stops with the value.
pub struct Announcer {
    me: Arc<Mutex<PrimaryInfo>>,
    superseded: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    pub fn start(nats_url: &str, subject: &str, node: &str) -> Announcer {
        let me = Arc::new(Mutex::new(PrimaryInfo {
            node: node.to_string(),
            http: String::new(),
            mqtt: None,
            udp: None,
            tcp: None,
            term: -1,
            opening: true,
        }));
        let superseded = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            nats_url.to_string(),
            format!("{subject}.primary"),
            me.clone(),
            superseded.clone(),
        ));
        Announcer {
            me,
            superseded,
            task,
        }
    }

    /// Called by the store each time its writer takes the lock: the first
    /// time starts the "opening" announcements, a reconnect's new term
    /// replaces the old.
    pub fn on_locked(&self) -> crate::store::OnWriterLock {
        let me = self.me.clone();
        Arc::new(move |term| me.lock().expect("announcement").term = term)
    }

    /// The store is open and the node serves at these addresses.
    pub fn serving(&self, at: Serving) {
        let mut me = self.me.lock().expect("announcement");
        me.http = at.http;
        me.mqtt = at.mqtt;
        me.udp = at.udp;
        me.tcp = at.tcp;
        me.opening = false;
    }

    /// Another node announced a greater term: it holds the lock now.
    pub fn superseded(&self) -> bool {
        self.superseded.load(Ordering::SeqCst)
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    nats_url: String,
    subject: String,
    me: Arc<Mutex<PrimaryInfo>>,
    superseded: Arc<AtomicBool>,
) {
    let node = me.lock().expect("announcement").node.clone();
    loop {
        let (client, mut others) =
            subscribed(&nats_url, &format!("twinhub primary {node}"), &subject).await;
        let mut tick = tokio::time::interval(ANNOUNCE);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = me.lock().expect("announcement").clone();
                    if now.term < 0 {
                        continue;
                    }
                    let body = serde_json::to_vec(&now).expect("announcement");
                    if client.publish(subject.clone(), body.into()).await.is_err() {
                        break;
                    }
                    let _ = client.flush().await;
                }
                msg = futures_util::StreamExt::next(&mut others) => {
                    let Some(msg) = msg else { break };
                    let Ok(p) = serde_json::from_slice::<PrimaryInfo>(&msg.payload) else {
                        continue;
                    };
                    let mine = me.lock().expect("announcement").term;
                    if p.node != node && mine >= 0 && p.term > mine
                        && !superseded.swap(true, Ordering::SeqCst)
                    {
                        tracing::error!(
                            primary = %p.node, term = p.term, mine,
                            "another node holds the store's writer lock now"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes announcing on one cluster's subject (the real NATS on
    /// 127.0.0.1:4222): the one with the smaller term learns it was
    /// replaced; the other does not, and neither hears itself as another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_holder_of_an_older_term_learns_it_was_replaced() {
        let nats = std::env::var("TWINHUB_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let subject = format!(
            "twinhub.test_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let old = Announcer::start(&nats, &subject, "old");
        (old.on_locked())(7);
        old.serving(Serving {
            http: "127.0.0.1:1".into(),
            mqtt: None,
            udp: None,
            tcp: None,
        });
        // Alone, it is not replaced (it hears its own announcements).
        tokio::time::sleep(ANNOUNCE * 4).await;
        assert!(!old.superseded());
        let new = Announcer::start(&nats, &subject, "new");
        // Opening (before it serves) already counts: it holds the lock.
        (new.on_locked())(8);
        let t = std::time::Instant::now();
        while !old.superseded() {
            assert!(t.elapsed() < Duration::from_secs(5), "never told");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!new.superseded(), "the greater term stays");
    }
}
