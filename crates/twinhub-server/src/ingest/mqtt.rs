//! The MQTT server's telemetry hand-off: a PUBLISH on the device's own
//! `devices/{id}/telemetry` is decoded as it is read, and the telemetry
//! PUBLISHes of one read pass are stored together, each with its own
//! answer. The connection maps the answers to PUBACK/PUBREC reason codes
//! (MQTT 5) or to an acknowledgement, a drop or a closed connection (3.1.1).

use super::Answer;
use crate::metrics::ServerMetrics;
use crate::pipeline::Pipeline;
use crate::registry::Device;
use twinhub_codec::{DecodeError, Limits, Telemetry};

/// Decodes one PUBLISH payload; a refusal is counted.
pub fn decode(
    metrics: &ServerMetrics,
    limits: &Limits,
    payload: &[u8],
) -> Result<Telemetry, DecodeError> {
    twinhub_codec::decode_telemetry(payload, limits).inspect_err(|_| {
        metrics.refused("mqtt", "invalid");
    })
}

/// Stores the telemetry of several PUBLISHes in one commit (waiting as
/// long as it takes: the connection stops reading meanwhile), one answer
/// per PUBLISH in order.
/// `also` sees which PUBLISHes were accepted and may add rows to the same
/// commit (their copies for persistent sessions).
pub async fn store(
    pipeline: &Pipeline,
    device: &Device,
    groups: Vec<Telemetry>,
    also: impl FnOnce(&[bool]) -> Option<crate::pipeline::Also>,
) -> Vec<Answer> {
    pipeline
        .ingest_each_with(device, "mqtt", groups, None, also)
        .await
        .iter()
        .map(Answer::of)
        .collect()
}
