//! Statistical anomaly checks for one property of one twin, incremental
//! (constant memory per rule × twin): rolling z-score and EWMA control
//! limits over exponentially weighted mean and variance, rate of change,
//! and flatline (a stuck sensor). Each observation answers whether the
//! value is anomalous — or `None` while the baseline is still warming up.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// |x − mean| > threshold · σ, against the baseline before x.
    Zscore,
    /// The EWMA statistic outside mean ± threshold · σ · √(λ / (2 − λ)).
    Ewma,
    /// |Δx / Δt| in units per second above threshold.
    Rate,
    /// The value has not changed for `flat_us`.
    Flatline,
}

/// The parameters of a statistical rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub method: Method,
    pub threshold: f64,
    /// Effective number of samples of the baseline (λ = 2 / (window + 1)).
    pub window: u32,
    /// Samples before the check may fire.
    pub warmup: u32,
    pub flat_us: i64,
}

/// The rolling state (persisted as JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rolling {
    pub n: u64,
    pub mean: f64,
    pub var: f64,
    /// The EWMA control statistic.
    pub ewma: f64,
    pub last: Option<(i64, f64)>,
    /// Since when the value has been the same.
    pub flat_since: Option<i64>,
}

impl Rolling {
    /// Takes the value `x` at `ts` (µs): whether it is anomalous.
    pub fn observe(&mut self, p: &Params, ts: i64, x: f64) -> Option<bool> {
        if !x.is_finite() {
            return None;
        }
        let lambda = 2.0 / (p.window.max(1) as f64 + 1.0);
        let warm = self.n >= p.warmup as u64;
        let sd = self.var.sqrt();
        let verdict = match p.method {
            Method::Zscore => {
                (warm && self.n > 0).then(|| sd > 0.0 && (x - self.mean).abs() > p.threshold * sd)
            }
            Method::Ewma => {
                let stat = lambda * x + (1.0 - lambda) * if self.n == 0 { x } else { self.ewma };
                let limit = p.threshold * sd * (lambda / (2.0 - lambda)).sqrt();
                self.ewma = stat;
                (warm && self.n > 0).then(|| sd > 0.0 && (stat - self.mean).abs() > limit)
            }
            Method::Rate => match self.last {
                Some((t0, x0)) if ts > t0 => {
                    Some(((x - x0) / ((ts - t0) as f64 / 1e6)).abs() > p.threshold)
                }
                _ => None,
            },
            Method::Flatline => {
                let same = self.last.is_some_and(|(_, x0)| x0 == x);
                if !same || self.flat_since.is_none() {
                    self.flat_since = Some(ts);
                }
                self.flat_since.map(|s| ts - s >= p.flat_us)
            }
        };
        // The baseline learns after judging, so a spike is measured
        // against what came before it.
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
            self.ewma = x;
        } else {
            let d = x - self.mean;
            self.mean += lambda * d;
            self.var = (1.0 - lambda) * (self.var + lambda * d * d);
        }
        self.n += 1;
        self.last = Some((ts, x));
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000;

    fn params(method: Method, threshold: f64) -> Params {
        Params {
            method,
            threshold,
            window: 50,
            warmup: 20,
            flat_us: 60 * S,
        }
    }

    /// A wobbly but stable baseline, then a spike.
    fn series(spike: f64) -> Vec<f64> {
        let mut v: Vec<f64> = (0..100)
            .map(|i| 350.0 + ((i * 7) % 5) as f64 * 0.2)
            .collect();
        v.push(spike);
        v
    }

    fn verdicts(p: &Params, xs: &[f64]) -> Vec<Option<bool>> {
        let mut r = Rolling::default();
        xs.iter()
            .enumerate()
            .map(|(i, x)| r.observe(p, i as i64 * S, *x))
            .collect()
    }

    #[test]
    fn a_spike_fires_zscore_and_ewma_the_baseline_does_not() {
        for m in [Method::Zscore, Method::Ewma] {
            let v = verdicts(&params(m, 4.0), &series(380.0));
            assert!(v[..20].iter().all(Option::is_none), "{m:?} warms up");
            assert!(v[20..100].iter().all(|x| *x == Some(false)), "{m:?}: {v:?}");
            assert_eq!(v[100], Some(true), "{m:?}");
            let calm = verdicts(&params(m, 4.0), &series(350.4));
            assert_eq!(calm[100], Some(false), "{m:?}");
        }
    }

    #[test]
    fn rate_of_change_is_per_second() {
        let p = params(Method::Rate, 5.0);
        let mut r = Rolling::default();
        assert_eq!(r.observe(&p, 0, 10.0), None);
        assert_eq!(r.observe(&p, 2 * S, 18.0), Some(false)); // 4/s
        assert_eq!(r.observe(&p, 3 * S, 30.0), Some(true)); // 12/s
        assert_eq!(r.observe(&p, 4 * S, 20.0), Some(true)); // −10/s
    }

    proptest! {
        /// A stuck value fires exactly once it has been the same for the
        /// whole duration; any change restarts the count.
        #[test]
        fn flatline_fires_after_the_duration_of_sameness(
            steps in proptest::collection::vec((1i64..30, any::<bool>()), 1..60),
        ) {
            let p = params(Method::Flatline, 0.0);
            let mut r = Rolling::default();
            let (mut ts, mut x, mut since) = (0i64, 0.0f64, 0i64);
            r.observe(&p, ts, x);
            for (dt, change) in steps {
                ts += dt * S;
                if change {
                    x += 1.0;
                    since = ts;
                }
                let v = r.observe(&p, ts, x);
                prop_assert_eq!(v, Some(ts - since >= 60 * S));
            }
        }

        /// Constant values never fire a z-score or EWMA check.
        #[test]
        fn a_constant_series_is_never_anomalous(x in -1e6f64..1e6, n in 1usize..200) {
            for m in [Method::Zscore, Method::Ewma] {
                let v = verdicts(&params(m, 3.0), &vec![x; n]);
                prop_assert!(v.iter().all(|v| *v != Some(true)));
            }
        }
    }
}
