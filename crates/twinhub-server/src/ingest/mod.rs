//! Ingest adapters: every way telemetry enters twinhub, one contract.
//! An adapter authenticates its client (its protocol's credentials),
//! decodes the payload (`twinhub-codec`), hands a typed batch to the
//! pipeline and maps the pipeline's answer — one `Answer` for every
//! protocol — to its protocol's acknowledgement. The MQTT server stays its
//! own module (it is also a broker); its telemetry hand-off is `mqtt` here.
//! New protocols (OPC UA, Sparkplug, line protocol, raw TCP/UDP) go in
//! this folder and into the compliance test
//! (`crates/twinhub/tests/it/ingest_compliance.rs`).
//!
//! May call: `pipeline`, `registry` (the device), `metrics`, `store` (device
//! layouts), `twins` (the model a layout applies to), `forwarded` (frames
//! a cluster replica relays).

pub mod derived;
pub mod frames;
pub mod http;
pub mod layouts;
pub mod lineproto;
pub mod mqtt;

use crate::pipeline::IngestError;

/// What an adapter tells its client, whatever the protocol: each maps
/// these to its own acknowledgement (HTTP status, MQTT 5 reason code, or
/// for MQTT 3.1.1 an acknowledgement, a drop, or a closed connection).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Durable: acknowledge (the points stored).
    Stored(usize),
    /// Breaks a rule (the message or the model): final, not stored.
    Invalid,
    /// The tenant's quota is used up: not stored; may succeed later.
    OverQuota,
    /// Not stored (store failure, busy, disk reserve): the client must
    /// not be told it was, and should send it again.
    RetryLater,
}

impl Answer {
    pub fn of(r: &Result<usize, IngestError>) -> Answer {
        match r {
            Ok(n) => Answer::Stored(*n),
            Err(IngestError::Invalid { .. }) => Answer::Invalid,
            Err(IngestError::Quota(_)) => Answer::OverQuota,
            Err(IngestError::Busy | IngestError::Unavailable | IngestError::NoSpace) => {
                Answer::RetryLater
            }
        }
    }
}
