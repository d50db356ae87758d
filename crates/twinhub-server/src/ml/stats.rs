//! Per-version statistics for A/B comparisons: calls, errors, latency
//! percentiles, mean output and the error against ground truth that
//! arrives later as telemetry.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency buckets grow by 10 %: percentiles are within 10 %.
const BUCKETS: usize = 180;

fn bucket_of(us: f64) -> usize {
    if us <= 1.0 {
        return 0;
    }
    ((us.ln() / 1.1f64.ln()) as usize + 1).min(BUCKETS - 1)
}

fn bucket_upper(b: usize) -> f64 {
    1.1f64.powi(b as i32)
}

pub struct VersionStats {
    pub calls: AtomicU64,
    pub rows: AtomicU64,
    pub errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    sums: Mutex<Sums>,
}

#[derive(Default)]
struct Sums {
    output: f64,
    outputs: u64,
    abs_error: f64,
    sq_error: f64,
    truths: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct StatsView {
    pub calls: u64,
    pub rows: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub mean_output: Option<f64>,
    /// Against ground truth that arrived as telemetry.
    pub ground_truth: u64,
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
}

impl Default for VersionStats {
    fn default() -> Self {
        VersionStats {
            calls: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            sums: Mutex::new(Sums::default()),
        }
    }
}

impl VersionStats {
    pub fn record(&self, rows: usize, elapsed_us: f64, outputs: impl Iterator<Item = f64>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.latency[bucket_of(elapsed_us)].fetch_add(1, Ordering::Relaxed);
        let mut s = self.sums.lock().expect("stats");
        for y in outputs.filter(|y| y.is_finite()) {
            s.output += y;
            s.outputs += 1;
        }
    }

    pub fn record_truth(&self, predicted: f64, actual: f64) {
        let e = predicted - actual;
        let mut s = self.sums.lock().expect("stats");
        s.abs_error += e.abs();
        s.sq_error += e * e;
        s.truths += 1;
    }

    fn percentile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (b, c) in counts.iter().enumerate() {
            acc += c;
            if acc >= want {
                return Some(bucket_upper(b) / 1000.0);
            }
        }
        None
    }

    pub fn view(&self) -> StatsView {
        let s = self.sums.lock().expect("stats");
        StatsView {
            calls: self.calls.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_p50_ms: self.percentile_ms(0.5),
            latency_p99_ms: self.percentile_ms(0.99),
            mean_output: (s.outputs > 0).then(|| s.output / s.outputs as f64),
            ground_truth: s.truths,
            mae: (s.truths > 0).then(|| s.abs_error / s.truths as f64),
            rmse: (s.truths > 0).then(|| (s.sq_error / s.truths as f64).sqrt()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_errors() {
        let s = VersionStats::default();
        for i in 0..100 {
            s.record(1, if i < 99 { 10.0 } else { 1000.0 }, [2.0].into_iter());
        }
        let v = s.view();
        assert!((v.latency_p50_ms.unwrap() - 0.010).abs() < 0.0015, "{v:?}");
        assert!(v.latency_p99_ms.unwrap() < 0.012);
        assert_eq!(v.mean_output, Some(2.0));
        s.record_truth(3.0, 1.0);
        s.record_truth(1.0, 1.0);
        let v = s.view();
        assert_eq!((v.mae, v.ground_truth), (Some(1.0), 2));
    }
}
