//! Token buckets per principal and per device: requests over the rate get
//! 429 with Retry-After instead of starving everyone else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, i64)>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl RateLimiter {
    /// Takes one token from `key`'s bucket (refilled at `rate` per second,
    /// holding at most `burst`) at time `now_us` (the injected clock);
    /// Err(wait) when empty. A rate of 0 never limits.
    pub fn check(&self, key: &str, rate: f64, burst: f64, now_us: i64) -> Result<(), Duration> {
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = burst.max(1.0);
        let now = now_us;
        let mut b = self.buckets.lock().expect("rate limiter");
        if b.len() > 200_000 {
            b.retain(|_, (t, at)| *t < burst || now - *at < 60_000_000);
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + (now - *at).max(0) as f64 / 1e6 * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_key() {
        let r = RateLimiter::default();
        for _ in 0..5 {
            assert!(r.check("a", 1.0, 5.0, 0).is_ok());
        }
        let wait = r.check("a", 1.0, 5.0, 0).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(
            r.check("b", 1.0, 5.0, 0).is_ok(),
            "another principal is not affected"
        );
        assert!(r.check("a", 0.0, 0.0, 0).is_ok(), "0 disables");
        assert!(
            r.check("a", 1.0, 5.0, 1_000_000).is_ok(),
            "a second refills one"
        );
        assert!(r.check("a", 1.0, 5.0, 1_000_000).is_err());
    }
}
