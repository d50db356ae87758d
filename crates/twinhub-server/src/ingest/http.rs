//! The HTTP device endpoint's hand-off: the body (one JSON object or an
//! array) is decoded and stored; the answer comes once it is durable. The
//! API handler authenticates (HTTP Basic) and maps failures to statuses.

use crate::metrics::ServerMetrics;
use crate::pipeline::{IngestError, Pipeline};
use crate::registry::Device;
use std::time::Duration;
use twinhub_codec::{DecodeError, Limits};

/// How many messages and points a request stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub messages: usize,
    pub points: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Decodes and stores one request's body; `wait` bounds the wait for room
/// in the store's queue (503 + Retry-After beyond it).
pub async fn store(
    pipeline: &Pipeline,
    metrics: &ServerMetrics,
    limits: &Limits,
    device: &Device,
    body: &[u8],
    wait: Duration,
) -> Result<Receipt, Refused> {
    let msgs = twinhub_codec::decode_telemetry(body, limits).inspect_err(|_| {
        metrics.refused("http", "invalid");
    })?;
    let messages = msgs.len();
    let points = pipeline.ingest(device, "http", msgs, Some(wait)).await?;
    Ok(Receipt { messages, points })
}
