//! InfluxDB line protocol (`POST /api/v2/write`, `POST /write`): the body
//! is decoded into one batch per twin (`twinhub-codec`) and each twin's
//! batch goes through the pipeline like a device's request; the answer
//! (204) comes once every batch is durable. The API handler authenticates
//! (an API key or token, as Influx clients send it) and checks that each
//! twin exists and may be written by the caller.

use crate::pipeline::{IngestError, Pipeline};
use std::time::Duration;
use twinhub_codec::TwinBatch;

/// Stores every twin's batch (concurrently, so the store commits them
/// together); the points stored, or the first failure. Batches of other
/// twins may be stored when one fails: a client resends the request, and
/// points with timestamps overwrite themselves.
pub async fn store(
    pipeline: &Pipeline,
    tenant: &str,
    batches: Vec<TwinBatch>,
    wait: Duration,
) -> Result<usize, IngestError> {
    let calls = batches.into_iter().map(|b| async move {
        pipeline
            .ingest_twin(tenant, &b.twin, "line", b.telemetry, Some(wait))
            .await
    });
    let mut points = 0;
    let mut first_err = None;
    for r in futures_util::future::join_all(calls).await {
        match r {
            Ok(n) => points += n,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(points),
    }
}
