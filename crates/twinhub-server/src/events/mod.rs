//! The post-commit fan-out: every committed change (telemetry as stored,
//! twin and relationship changes, device presence) as an `Event`, in
//! commit order, to every subscriber. The store's writer is the only
//! publisher: it gives each event its id (increasing, also across
//! restarts) and publishes it once the commit that carried it is durable.
//!
//! Live subscribers (the SSE stream, ML bindings, MQTT delivery of
//! telemetry from other protocols) get a bounded queue: one that falls
//! behind loses the oldest events, is told how many, and never slows
//! ingest; what each missed is counted in `dropped` and how far behind it
//! is in `lags`. A ring of recent events lets a client resume a stream
//! with `Last-Event-ID`. Changes other than telemetry (twins,
//! relationships, alarms, presence, rule events) also go on a channel and
//! a ring of their own: a subscriber that does not want telemetry (the
//! dashboard's alarm list) never falls behind because of a telemetry
//! flood (at 50k points/s the shared queue holds 80 ms). Consumers that
//! must not miss anything (rules, routes) read the store's outbox from a
//! durable position instead (`store::outbox`), and use this bus only to be
//! woken.
//!
//! May call: `metrics` (a leaf the pipeline and API use).

mod data;

pub use data::{Data, TelemetryData, ValueJson};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast;
pub use tokio::sync::broadcast::error::RecvError;

/// What changed. The SSE stream's event names and `types=` filter use
/// `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Telemetry,
    Twin,
    Relationship,
    Device,
    Alarm,
    /// A rule's `event` action (for routes).
    Rule,
}

impl Kind {
    /// Every kind; the outbox stores a kind as its place here, so a new
    /// kind goes at the end.
    pub const ALL: [Kind; 6] = [
        Kind::Telemetry,
        Kind::Twin,
        Kind::Relationship,
        Kind::Device,
        Kind::Alarm,
        Kind::Rule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Twin => "twin",
            Kind::Relationship => "relationship",
            Kind::Device => "device",
            Kind::Alarm => "alarm",
            Kind::Rule => "rule",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A change about to be committed: an event without its id.
#[derive(Debug, Clone)]
pub struct Draft {
    pub tenant: String,
    pub kind: Kind,
    pub twin: Option<String>,
    pub model: Option<String>,
    pub data: Data,
}

impl Draft {
    pub fn new(
        tenant: &str,
        kind: Kind,
        twin: Option<&str>,
        model: Option<&str>,
        data: serde_json::Value,
    ) -> Draft {
        Draft {
            tenant: tenant.to_string(),
            kind,
            twin: twin.map(str::to_string),
            model: model.map(str::to_string),
            data: Data::Json(data),
        }
    }

    /// Committed telemetry of one ingest group.
    pub fn telemetry(
        tenant: &str,
        twin: &str,
        model: Option<&str>,
        data: Arc<TelemetryData>,
    ) -> Draft {
        Draft {
            tenant: tenant.to_string(),
            kind: Kind::Telemetry,
            twin: Some(twin.to_string()),
            model: model.map(str::to_string),
            data: Data::Telemetry(data),
        }
    }

    /// The committed event: its id in commit order and its commit time.
    pub fn with_id(self, id: u64, at: i64) -> Event {
        Event {
            id,
            at,
            tenant: self.tenant,
            kind: self.kind,
            twin: self.twin,
            model: self.model,
            data: self.data,
        }
    }
}

/// A committed change. Serialised as the SSE stream shows it (the tenant
/// is implied by the caller).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    /// When the change committed (µs; the envelope's `ts` for routes).
    #[serde(skip)]
    pub at: i64,
    #[serde(skip)]
    pub tenant: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub data: Data,
}

pub struct EventBus {
    /// Events a subscriber missed because it fell behind, by subscriber.
    pub dropped: crate::metrics::CounterVec,
    tx: broadcast::Sender<Arc<Event>>,
    ring: Mutex<VecDeque<Arc<Event>>>,
    /// Everything but telemetry.
    changes_tx: broadcast::Sender<Arc<Event>>,
    changes_ring: Mutex<VecDeque<Arc<Event>>>,
    ring_len: usize,
    last_id: AtomicU64,
    /// The last id each named subscriber took, for its lag.
    seen: Mutex<Vec<(&'static str, Weak<AtomicU64>)>>,
}

impl EventBus {
    pub fn new(ring: usize) -> EventBus {
        let (tx, _) = broadcast::channel(4096);
        let (changes_tx, _) = broadcast::channel(4096);
        EventBus {
            dropped: Default::default(),
            tx,
            ring: Mutex::new(VecDeque::with_capacity(ring.min(1 << 16))),
            changes_tx,
            changes_ring: Mutex::new(VecDeque::new()),
            ring_len: ring,
            last_id: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Publishes committed events; ids must increase. Only the store's
    /// writer calls it, after the commit that carried them.
    pub fn publish_committed(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut ring = self.ring.lock().expect("events");
        let mut changes = self.changes_ring.lock().expect("events");
        for ev in events {
            let ev = Arc::new(ev);
            self.last_id.store(ev.id, Ordering::Relaxed);
            if ev.kind != Kind::Telemetry {
                push_bounded(&mut changes, ev.clone(), self.ring_len);
                let _ = self.changes_tx.send(ev.clone());
            }
            push_bounded(&mut ring, ev.clone(), self.ring_len);
            // Sent under the lock so a subscriber that joins with a
            // backlog sees each id once, in order.
            let _ = self.tx.send(ev);
        }
    }

    /// The id of the last event published (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.last_id.load(Ordering::Relaxed)
    }

    /// A live receiver plus the retained events after `after` (for
    /// `Last-Event-ID`). Events in both are told apart by id.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let ring = self.ring.lock().expect("events");
        (retained_after(&ring, after), self.tx.subscribe())
    }

    /// Like `subscribe`, without telemetry: its own queue and ring, so
    /// telemetry never pushes a change out of either.
    pub fn subscribe_changes(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        // Both locks, in `publish_committed`'s order.
        let _all = self.ring.lock().expect("events");
        let ring = self.changes_ring.lock().expect("events");
        (retained_after(&ring, after), self.changes_tx.subscribe())
    }

    /// A named live subscriber: its misses are counted in `dropped` and
    /// its lag is reported under its name.
    pub fn subscribe_as(self: &Arc<Self>, name: &'static str) -> Subscription {
        let (_, rx) = self.subscribe(None);
        let seen = Arc::new(AtomicU64::new(self.last_id()));
        let mut all = self.seen.lock().expect("seen");
        all.retain(|(_, w)| w.strong_count() > 0);
        all.push((name, Arc::downgrade(&seen)));
        Subscription {
            name,
            warned: None,
            rx,
            seen,
            bus: self.clone(),
        }
    }

    /// How many published events each named subscriber has not taken yet
    /// (the largest per name).
    pub fn lags(&self) -> Vec<(&'static str, u64)> {
        let last = self.last_id();
        let mut out: Vec<(&'static str, u64)> = Vec::new();
        for (name, w) in self.seen.lock().expect("seen").iter() {
            let Some(seen) = w.upgrade() else { continue };
            let lag = last.saturating_sub(seen.load(Ordering::Relaxed));
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, l)) => *l = (*l).max(lag),
                None => out.push((name, lag)),
            }
        }
        out
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

fn push_bounded(ring: &mut VecDeque<Arc<Event>>, ev: Arc<Event>, len: usize) {
    if ring.len() >= len {
        ring.pop_front();
    }
    ring.push_back(ev);
}

fn retained_after(ring: &VecDeque<Arc<Event>>, after: Option<u64>) -> Vec<Arc<Event>> {
    match after {
        Some(a) => ring.iter().filter(|e| e.id > a).cloned().collect(),
        None => Vec::new(),
    }
}

/// A named subscriber's receiver.
pub struct Subscription {
    name: &'static str,
    /// When a fall behind was last logged (at most one line a minute;
    /// the counter has every drop).
    warned: Option<std::time::Instant>,
    rx: broadcast::Receiver<Arc<Event>>,
    seen: Arc<AtomicU64>,
    bus: Arc<EventBus>,
}

impl Subscription {
    /// The next event; a `Lagged(n)` has already been counted.
    pub async fn recv(&mut self) -> Result<Arc<Event>, RecvError> {
        match self.rx.recv().await {
            Ok(e) => {
                self.seen.store(e.id, Ordering::Relaxed);
                Ok(e)
            }
            Err(RecvError::Lagged(n)) => {
                if self
                    .warned
                    .is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60))
                {
                    self.warned = Some(std::time::Instant::now());
                    tracing::warn!(
                        subscriber = self.name,
                        missed = n,
                        "fell behind the event stream (logged at most once a minute; \
                         twinhub_fanout_dropped_total counts every event)"
                    );
                }
                self.bus.dropped.add(self.name, n);
                Err(RecvError::Lagged(n))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64) -> Event {
        Draft::new(
            "default",
            Kind::Telemetry,
            Some("t"),
            None,
            serde_json::json!(id),
        )
        .with_id(id, 0)
    }

    #[tokio::test]
    async fn resume_replays_only_newer_events() {
        let bus = EventBus::new(3);
        bus.publish_committed((101..=105).map(ev).collect());
        let (backlog, mut rx) = bus.subscribe(Some(102));
        assert_eq!(
            backlog.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![103, 104, 105]
        );
        bus.publish_committed(vec![ev(106)]);
        assert_eq!(rx.recv().await.unwrap().id, 106);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_counted_and_its_lag_reported() {
        let bus = Arc::new(EventBus::new(16));
        let mut sub = bus.subscribe_as("slow");
        bus.publish_committed((1..=5000).map(ev).collect());
        assert_eq!(bus.lags(), vec![("slow", 5000)]);
        assert!(matches!(sub.recv().await, Err(RecvError::Lagged(904))));
        assert_eq!(sub.recv().await.unwrap().id, 905);
        assert_eq!(bus.lags(), vec![("slow", 4095)]);
        assert_eq!(bus.dropped.get("slow"), 904);
    }

    #[tokio::test]
    async fn a_flood_of_telemetry_pushes_no_change_out() {
        let bus = EventBus::new(100);
        let (_, mut all) = bus.subscribe(None);
        let (_, mut changes) = bus.subscribe_changes(None);
        let alarm = |id: u64| {
            Draft::new(
                "default",
                Kind::Alarm,
                Some("t"),
                None,
                serde_json::json!(id),
            )
            .with_id(id, 0)
        };
        bus.publish_committed(vec![alarm(1)]);
        bus.publish_committed((2..=20_000).map(ev).collect());
        bus.publish_committed(vec![alarm(20_001)]);
        assert!(matches!(all.recv().await, Err(RecvError::Lagged(_))));
        assert_eq!(changes.recv().await.unwrap().id, 1);
        assert_eq!(changes.recv().await.unwrap().id, 20_001);
        // Resuming after the first alarm still finds the second.
        let (backlog, _) = bus.subscribe_changes(Some(1));
        assert_eq!(
            backlog.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![20_001]
        );
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
