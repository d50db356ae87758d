//! Pure domain types of twinhub: telemetry values and points, time parsing
//! and bucketing, aggregate accumulators and identifier rules.
//!
//! This crate owns no I/O and no async code; everything here is synchronous,
//! deterministic and property-tested. Every other crate may depend on it; it
//! depends on none of them.

pub mod aggregate;
pub mod dtdl;
pub mod ids;
pub mod patch;
pub mod query;
pub mod rules;
pub mod time;
pub mod value;

pub use aggregate::{Agg, AggSet, Bucketer, Stats};
pub use value::{Point, Quality, Value};
