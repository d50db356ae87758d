//! Injected time. Everything whose behaviour depends on "now" (server
//! timestamps, chunk windows closing, retention, inactivity, token expiry)
//! reads it from a `Clock`, so tests move time instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> i64;
}

pub type SharedClock = Arc<dyn Clock>;

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that starts at the system time plus an offset that tests
/// advance; it never goes backwards.
#[derive(Default)]
pub struct OffsetClock {
    offset: AtomicI64,
}

impl OffsetClock {
    pub fn advance_us(&self, us: i64) {
        self.offset.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_us(&self) -> i64 {
        SystemClock.now_us() + self.offset.load(Ordering::SeqCst)
    }
}
