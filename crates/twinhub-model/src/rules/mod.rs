//! The pure core of rules and alarms (#15, see docs/design/rules.md): the
//! alarm lifecycle and the per (rule × twin) state machines that decide
//! when a condition raises or clears an alarm. Time is the event's
//! timestamp in µs, passed in; nothing here reads a clock.

pub mod alarm;
pub mod condition;
pub mod expr;
pub mod stats;
