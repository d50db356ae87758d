//! Telemetry that did not arrive over MQTT reaches MQTT subscribers too:
//! a subscriber of the event bus (the post-commit fan-out) that publishes
//! each committed HTTP (or connector) message on `devices/{id}/telemetry`
//! and each derived value (soft sensors) on `twins/{twinId}/derived`, as a
//! JSON object of property → value with `ts` (epoch ms). Telemetry that
//! came over MQTT is routed by its connection, with its own payload and
//! properties, inside its acknowledgement.
//!
//! Delivery is at most once from the bus: a lagging delivery task skips
//! what it missed (counted in `twinhub_fanout_dropped_total{subscriber="mqtt"}`)
//! and never slows ingest.
//!
//! May call: `events` (subscribe), the broker's router and persister.

use super::broker::Broker;
use super::session::{Message, MsgProps};
use crate::events::RecvError;
use crate::events::{Event, EventBus, Kind};
use bytes::Bytes;
use std::sync::Arc;

/// The MQTT message for a committed telemetry event, if MQTT should carry
/// it (not already routed by an MQTT connection).
pub fn message_for(e: &Event) -> Option<Message> {
    if e.kind != Kind::Telemetry || e.data.get("source").and_then(|s| s.as_str()) == Some("mqtt") {
        return None;
    }
    let values = e.data.get("values")?.as_object()?;
    let topic = match e.data.get("device").and_then(|d| d.as_str()) {
        Some(device) => format!("devices/{device}/telemetry"),
        None => format!("twins/{}/derived", e.twin.as_deref()?),
    };
    let mut body = serde_json::Map::with_capacity(values.len() + 1);
    if let Some(ts) = e.data.get("ts") {
        body.insert("ts".into(), ts.clone());
    }
    for (k, v) in values {
        body.insert(k.clone(), v.clone());
    }
    Some(Message {
        topic: topic.into(),
        payload: Bytes::from(serde_json::Value::Object(body).to_string()),
        qos: 1,
        retain: false,
        props: Some(Arc::new(MsgProps {
            payload_format: Some(1),
            content_type: Some("application/json".into()),
            ..Default::default()
        })),
        expires_at: None,
        from: None,
    })
}

/// Runs until shutdown.
pub async fn deliver_telemetry(
    broker: Arc<Broker>,
    events: Arc<EventBus>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut sub = events.subscribe_as("mqtt");
    loop {
        let e = tokio::select! {
            r = sub.recv() => r,
            _ = shutdown.changed() => return,
        };
        match e {
            Ok(e) => {
                if let Some(m) = message_for(&e) {
                    let ops = broker.route(&e.tenant, Arc::new(m));
                    broker.persist.send(ops);
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
