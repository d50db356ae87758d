//! Telemetry that did not arrive over MQTT reaches MQTT subscribers too:
//! a subscriber of the event bus (the post-commit fan-out) that publishes
//! each committed HTTP (or connector) request on `devices/{id}/telemetry`
//! and each derived batch (soft sensors, calculated properties) on
//! `twins/{twinId}/derived`: a message as a JSON object of property →
//! value with `ts` (epoch ms), several as an array of them. Telemetry that
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
/// it (not already routed by an MQTT connection): the group's messages as
/// a device would send them, one object, or an array for several.
pub fn message_for(e: &Event) -> Option<Message> {
    let topic = topic_for(e)?;
    message_on(e, topic)
}

/// Where an event's telemetry goes: None for events that are not
/// telemetry, or came over MQTT (routed by the broker already).
pub fn topic_for(e: &Event) -> Option<String> {
    let t = e.data.telemetry().filter(|_| e.kind == Kind::Telemetry)?;
    if t.source == "mqtt" {
        return None;
    }
    Some(match &t.device {
        Some(device) => format!("devices/{device}/telemetry"),
        None => format!("twins/{}/derived", e.twin.as_deref()?),
    })
}

fn message_on(e: &Event, topic: String) -> Option<Message> {
    let t = e.data.telemetry()?;
    let payload = if t.batch.len() == 1 {
        serde_json::to_vec(&Flat(t.batch.messages().next()?))
    } else {
        serde_json::to_vec(&t.batch.messages().map(Flat).collect::<Vec<_>>())
    }
    .ok()?;
    Some(Message {
        topic: topic.into(),
        payload: Bytes::from(payload),
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

/// `{"ts": epoch ms, name: value, …}`: a message as a device sends it
/// (a reading that is not good as `{"value", "quality"}`).
struct Flat<'a>(twinhub_codec::Message<'a>);

impl serde::Serialize for Flat<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.readings.len() + 1))?;
        m.serialize_entry(
            "ts",
            &twinhub_model::time::to_epoch_ms_json(self.0.ts.unwrap_or(0)),
        )?;
        for (name, value, quality) in self.0.values() {
            let value = crate::events::ValueJson(value);
            if quality == twinhub_model::Quality::Good {
                m.serialize_entry(name, &value)?;
            } else {
                m.serialize_entry(name, &Flagged(value, quality.as_str()))?;
            }
        }
        m.end()
    }
}

/// `{"value": …, "quality": "bad"}`: a flagged reading as devices send it.
struct Flagged<'a>(crate::events::ValueJson<'a>, &'static str);

impl serde::Serialize for Flagged<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("value", &self.0)?;
        m.serialize_entry("quality", self.1)?;
        m.end()
    }
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
                // JSON is made only for a topic somebody may read.
                let Some(topic) = topic_for(&e) else { continue };
                if !broker.has_readers(&e.tenant, &topic) {
                    continue;
                }
                if let Some(m) = message_on(&e, topic) {
                    let ops = broker.route(&e.tenant, Arc::new(m));
                    broker.persist.send(ops);
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}
