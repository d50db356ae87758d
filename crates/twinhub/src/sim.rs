//! The reactor simulation of seed 000: temperature (340–380 K), pressure
//! (4–8 bar), flow rate (80–120 L/min) and the yield that follows from
//! them, with sensor noise, slow drift and occasional excursions.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Reactor {
    temp: f64,
    pressure: f64,
    flow: f64,
    setpoint: f64,
    excursion: u32,
    rng: StdRng,
}

pub struct Reading {
    pub temperature: f64,
    pub pressure: f64,
    pub flow_rate: f64,
    pub yield_pct: f64,
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl Reactor {
    pub fn new(seed: u64) -> Reactor {
        let mut rng = StdRng::seed_from_u64(seed);
        Reactor {
            temp: rng.random_range(352.0..368.0),
            pressure: rng.random_range(5.0..7.0),
            flow: rng.random_range(90.0..110.0),
            setpoint: 360.0,
            excursion: 0,
            rng,
        }
    }

    fn gauss(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.rng.random_range(1e-12..1.0);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn step(&mut self) -> Reading {
        // The setpoint wanders slowly (catalyst ageing, ambient).
        self.setpoint = (self.setpoint + 0.02 * self.gauss()).clamp(350.0, 370.0);
        if self.excursion == 0 && self.rng.random_bool(0.002) {
            self.excursion = self.rng.random_range(20..60);
        }
        let target = if self.excursion > 0 {
            self.excursion -= 1;
            self.setpoint + 14.0
        } else {
            self.setpoint
        };
        self.temp += 0.1 * (target - self.temp) + 0.4 * self.gauss();
        self.pressure += 0.05 * (6.0 - self.pressure) + 0.05 * self.gauss();
        self.flow += 0.05 * (100.0 - self.flow) + 0.8 * self.gauss();
        self.temp = self.temp.clamp(340.0, 380.0);
        self.pressure = self.pressure.clamp(4.0, 8.0);
        self.flow = self.flow.clamp(80.0, 120.0);
        let y = 85.0 - 0.05 * (self.temp - 360.0).powi(2) - 2.0 * (self.pressure - 6.0).powi(2)
            + 0.02 * (self.flow - 100.0)
            + 0.3 * self.gauss();
        Reading {
            temperature: round2(self.temp),
            pressure: round2(self.pressure),
            flow_rate: round2(self.flow),
            yield_pct: round2(y.clamp(0.0, 100.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_stay_in_the_seed_ranges() {
        let mut r = Reactor::new(7);
        for _ in 0..10_000 {
            let x = r.step();
            assert!((340.0..=380.0).contains(&x.temperature));
            assert!((4.0..=8.0).contains(&x.pressure));
            assert!((80.0..=120.0).contains(&x.flow_rate));
            assert!((0.0..=100.0).contains(&x.yield_pct));
        }
    }
}
