//! The recent predictions of each (tenant, twin, model), by the time of
//! their inputs, so a measured output that arrives later is scored against
//! the prediction made from the inputs of its own time. Pure; kept in
//! `Bindings` and used by the soft-sensor loop.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Predictions kept per (tenant, twin, model) for pairing with ground
/// truth: about half a minute at one input change a second (≈1 KB each).
const KEEP: usize = 32;

/// Recent predictions of one twin and model, by the time of their inputs.
#[derive(Debug, Default)]
pub struct PredictionLog(VecDeque<(i64, Arc<str>, f64)>);

impl PredictionLog {
    pub fn record(&mut self, ts_us: i64, version: Arc<str>, y: f64) {
        let at = self
            .0
            .iter()
            .rposition(|(t, ..)| *t <= ts_us)
            .map_or(0, |i| i + 1);
        self.0.insert(at, (ts_us, version, y));
        if self.0.len() > KEEP {
            self.0.pop_front();
        }
    }

    /// The prediction made from the newest inputs at or before `ts_us`.
    pub fn at(&self, ts_us: i64) -> Option<(&str, f64)> {
        self.0
            .iter()
            .rev()
            .find(|(t, ..)| *t <= ts_us)
            .map(|(_, v, y)| (&**v, *y))
    }
}

pub type Recent = HashMap<(String, String, String), PredictionLog>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_pairs_with_the_prediction_of_its_time() {
        let mut log = PredictionLog::default();
        log.record(1_000, "1".into(), 10.0);
        log.record(3_000, "1".into(), 30.0);
        log.record(2_000, "2".into(), 20.0); // late, sorted in
        assert_eq!(log.at(500), None, "nothing predicted yet then");
        assert_eq!(log.at(1_000), Some(("1", 10.0)));
        assert_eq!(log.at(2_500), Some(("2", 20.0)));
        assert_eq!(log.at(9_000), Some(("1", 30.0)));
        for t in 0..100 {
            log.record(10_000 + t, "1".into(), t as f64);
        }
        assert_eq!(log.0.len(), KEEP, "bounded");
        assert_eq!(log.at(10_099), Some(("1", 99.0)));
    }
}
