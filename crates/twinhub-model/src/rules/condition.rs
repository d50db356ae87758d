//! When a condition rule raises and clears, per (rule × twin): the raise
//! expression must hold continuously for `for_us` (by event time) before
//! the alarm is raised; once raised, only the clear expression clears it
//! (hysteresis: raise above 375, clear below 370 — a value in between
//! changes nothing). Without a clear expression, "raise no longer holds"
//! clears.

use serde::{Deserialize, Serialize};

/// The state kept (and persisted) per rule × twin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionState {
    /// Event time since which the raise expression has held, while it is
    /// not yet raised.
    pub since: Option<i64>,
    pub raised: bool,
}

/// What one evaluation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Raise,
    /// Raised already and the raise expression holds again: the open
    /// alarm counts one more event.
    Repeat,
    Clear,
}

/// One evaluation's inputs: whether the raise and the clear expressions
/// hold for the event at `ts` (µs).
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub ts: i64,
    pub raise: bool,
    /// None: the rule has no clear expression (clears when `raise` stops
    /// holding).
    pub clear: Option<bool>,
}

impl ConditionState {
    pub fn step(&mut self, o: Observation, for_us: i64) -> Transition {
        if self.raised {
            let clear = o.clear.unwrap_or(!o.raise);
            if clear {
                *self = ConditionState::default();
                return Transition::Clear;
            }
            return if o.raise {
                Transition::Repeat
            } else {
                Transition::None
            };
        }
        if !o.raise {
            self.since = None;
            return Transition::None;
        }
        // A late event older than the start of the run does not extend it
        // backwards.
        let since = *self.since.get_or_insert(o.ts);
        if o.ts - since >= for_us {
            *self = ConditionState {
                since: None,
                raised: true,
            };
            return Transition::Raise;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: i64 = 1_000_000;

    fn run(values: &[(i64, f64)], for_us: i64, hysteresis: bool) -> Vec<(i64, Transition)> {
        let mut st = ConditionState::default();
        values
            .iter()
            .map(|&(ts, v)| {
                let o = Observation {
                    ts,
                    raise: v > 375.0,
                    clear: hysteresis.then_some(v < 370.0),
                };
                (ts, st.step(o, for_us))
            })
            .filter(|(_, t)| !matches!(t, Transition::None | Transition::Repeat))
            .collect()
    }

    #[test]
    fn above_375_for_30_s_raises_once_and_clears_below_370() {
        let mut vals: Vec<(i64, f64)> = (0..40).map(|i| (i * S, 380.0)).collect();
        vals.push((40 * S, 372.0)); // inside the band: still raised
        vals.push((41 * S, 369.0)); // below 370: cleared
        vals.push((42 * S, 380.0)); // a new excursion starts a new run
        assert_eq!(
            run(&vals, 30 * S, true),
            vec![(30 * S, Transition::Raise), (41 * S, Transition::Clear)]
        );
    }

    #[test]
    fn a_dip_restarts_the_for_duration() {
        let mut vals: Vec<(i64, f64)> = (0..20).map(|i| (i * S, 380.0)).collect();
        vals.push((20 * S, 360.0));
        vals.extend((21..60).map(|i| (i * S, 380.0)));
        assert_eq!(run(&vals, 30 * S, true), vec![(51 * S, Transition::Raise)]);
    }

    #[test]
    fn every_event_over_the_threshold_after_the_raise_repeats() {
        let mut st = ConditionState::default();
        let o = |ts, v: f64| Observation {
            ts,
            raise: v > 375.0,
            clear: Some(v < 370.0),
        };
        assert_eq!(st.step(o(0, 380.0), 0), Transition::Raise);
        assert_eq!(st.step(o(1, 381.0), 0), Transition::Repeat);
        assert_eq!(st.step(o(2, 372.0), 0), Transition::None);
        assert_eq!(st.step(o(3, 376.0), 0), Transition::Repeat);
        assert_eq!(st.step(o(4, 360.0), 0), Transition::Clear);
    }

    proptest! {
        /// Raises and clears alternate, starting with a raise; with
        /// hysteresis, no transition happens on a value inside the band;
        /// a raise comes only after the raise held for the whole `for`.
        #[test]
        fn transitions_alternate_and_respect_band_and_duration(
            vals in proptest::collection::vec(360.0f64..390.0, 1..200),
            for_s in 0i64..20,
        ) {
            let series: Vec<(i64, f64)> =
                vals.iter().enumerate().map(|(i, v)| (i as i64 * S, *v)).collect();
            let out = run(&series, for_s * S, true);
            for (i, (_, t)) in out.iter().enumerate() {
                let want = if i % 2 == 0 { Transition::Raise } else { Transition::Clear };
                prop_assert_eq!(*t, want);
            }
            for (ts, t) in &out {
                let i = (*ts / S) as usize;
                let v = vals[i];
                prop_assert!(!(370.0..=375.0).contains(&v), "{:?} at {}", t, v);
                if *t == Transition::Raise {
                    let start = i as i64 - for_s;
                    prop_assert!(start >= 0);
                    prop_assert!(vals[start as usize..=i].iter().all(|v| *v > 375.0));
                }
            }
        }
    }
}
