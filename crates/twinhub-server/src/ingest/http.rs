//! The HTTP device endpoint's hand-off: the body (one JSON object or an
//! array) is decoded and stored; the answer comes once it is durable. The
//! API handler authenticates (HTTP Basic) and maps failures to statuses.
//! In a cluster a replica may have decoded the body already: it then
//! arrives in twinhub's binary form (`Encoding::Wire`), signed by the
//! replica, and is read without parsing JSON again.

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

/// How a request's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// What devices send.
    Json,
    /// Decoded by a cluster replica (whose signature the handler checked).
    Wire,
}

/// Decodes and stores one request's body; `wait` bounds the wait for room
/// in the store's queue (503 + Retry-After beyond it).
pub async fn store(
    pipeline: &Pipeline,
    metrics: &ServerMetrics,
    limits: &Limits,
    device: &Device,
    (body, encoding): (&[u8], Encoding),
    wait: Duration,
) -> Result<Receipt, Refused> {
    let msgs = match encoding {
        Encoding::Json => twinhub_codec::decode_telemetry(body, limits),
        Encoding::Wire => twinhub_codec::decode_wire(body, limits),
    }
    .inspect_err(|_| {
        metrics.refused("http", "invalid");
    })?;
    let messages = msgs.len();
    let points = pipeline.ingest(device, "http", msgs, Some(wait)).await?;
    Ok(Receipt { messages, points })
}
