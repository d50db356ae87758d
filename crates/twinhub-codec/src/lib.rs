//! Pure payload decoders: bytes a device sent → typed telemetry messages.
//!
//! Owns the wire formats of device payloads (JSON today; binary layouts for
//! raw TCP/UDP devices later). No I/O; every decoder is total (never
//! panics) and names the offending field in its errors.

pub mod cbor;
pub mod json;
pub mod layout;
pub mod lineproto;
pub mod lorawan;
pub mod sparkplug;
pub mod telemetry;
pub mod wire;

pub use cbor::decode_cbor_telemetry;
pub use json::{decode_telemetry, DecodeError, Limits};
pub use lineproto::{decode_line_protocol, Precision, TwinBatch};
pub use telemetry::{Message, Reading, Telemetry, TelemetryMessage};
pub use wire::{
    decode_wire, decode_wire_batches, decode_wire_trusted, encode_wire, encode_wire_batches,
};
