//! The in-process event bus: telemetry as it is stored, twin and device
//! changes. Each event has an increasing id; a ring of recent events lets a
//! client resume a stream with `Last-Event-ID`. Slow subscribers lag and
//! are told so; they never slow publishers.
//!
//! Every consumer of committed changes attaches here (the SSE stream, ML
//! bindings, MQTT delivery of telemetry from other protocols); what each
//! one missed by lagging is counted per subscriber in `dropped`.
//!
//! May call: `metrics` (a leaf the pipeline and API use).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    #[serde(skip)]
    pub tenant: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub data: serde_json::Value,
}

pub struct EventBus {
    /// Events a subscriber missed because it fell behind, by subscriber.
    pub dropped: crate::metrics::CounterVec,
    tx: broadcast::Sender<Arc<Event>>,
    state: Mutex<(u64, VecDeque<Arc<Event>>)>,
    ring: usize,
}

impl EventBus {
    /// Ids start from the current time in µs so they keep increasing
    /// across restarts.
    pub fn new(start_id: u64, ring: usize) -> EventBus {
        let (tx, _) = broadcast::channel(4096);
        EventBus {
            dropped: Default::default(),
            tx,
            state: Mutex::new((start_id, VecDeque::with_capacity(ring.min(1 << 16)))),
            ring,
        }
    }

    pub fn publish(
        &self,
        tenant: &str,
        kind: &'static str,
        twin: Option<&str>,
        model: Option<&str>,
        data: serde_json::Value,
    ) {
        let mut st = self.state.lock().expect("events");
        st.0 += 1;
        let ev = Arc::new(Event {
            id: st.0,
            tenant: tenant.to_string(),
            kind,
            twin: twin.map(str::to_string),
            model: model.map(str::to_string),
            data,
        });
        if st.1.len() >= self.ring {
            st.1.pop_front();
        }
        st.1.push_back(ev.clone());
        // Sent under the lock so every subscriber sees ids in order.
        let _ = self.tx.send(ev);
    }

    /// A live receiver plus the retained events after `after` (for
    /// `Last-Event-ID`). Events in both are told apart by id.
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let st = self.state.lock().expect("events");
        let rx = self.tx.subscribe();
        let backlog = match after {
            Some(a) => st.1.iter().filter(|e| e.id > a).cloned().collect(),
            None => Vec::new(),
        };
        (backlog, rx)
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resume_replays_only_newer_events() {
        let bus = EventBus::new(100, 3);
        for i in 0..5 {
            bus.publish(
                "default",
                "telemetry",
                Some("t"),
                None,
                serde_json::json!(i),
            );
        }
        let (backlog, mut rx) = bus.subscribe(Some(102));
        assert_eq!(
            backlog.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![103, 104, 105]
        );
        bus.publish("default", "twin", None, None, serde_json::json!({}));
        assert_eq!(rx.recv().await.unwrap().id, 106);
    }
}
