//! Values twinhub derives itself (soft-sensor outputs today, calculated
//! properties later) enter like device telemetry: validated against the
//! twin's model, stored, fanned out (`twins/{twinId}/derived` on MQTT).

use crate::pipeline::{IngestError, Pipeline};
use twinhub_codec::TelemetryMessage;

/// Stores derived values for a twin; `source` names the producer (`ml`).
pub async fn store(
    pipeline: &Pipeline,
    tenant: &str,
    twin: &str,
    source: &'static str,
    msgs: Vec<TelemetryMessage>,
) -> Result<usize, IngestError> {
    pipeline
        .ingest_derived(tenant, twin, source, msgs.into())
        .await
}
