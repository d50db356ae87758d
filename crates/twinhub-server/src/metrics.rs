//! Process metrics in the Prometheus text format: counters, gauges and
//! histograms on atomics, labelled by a small fixed set of label values
//! (never per device, so cardinality stays bounded).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters keyed by one label value (protocol, reason, …).
#[derive(Default)]
pub struct CounterVec(Mutex<BTreeMap<&'static str, u64>>);

impl CounterVec {
    pub fn add(&self, label: &'static str, n: u64) {
        *self
            .0
            .lock()
            .expect("metrics lock")
            .entry(label)
            .or_default() += n;
    }
    pub fn get(&self, label: &str) -> u64 {
        self.0
            .lock()
            .expect("metrics lock")
            .get(label)
            .copied()
            .unwrap_or(0)
    }
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// A histogram of seconds with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

pub const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The smallest bucket bound at or above quantile `q` (an upper bound
    /// of the true quantile).
    pub fn quantile_upper(&self, q: f64) -> f64 {
        let total = self.count();
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            if acc as f64 >= q * total as f64 {
                return self.bounds[i];
            }
        }
        f64::INFINITY
    }
}

/// Builds the exposition text.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}"
        );
    }

    pub fn counter_vec(&mut self, name: &str, help: &str, label: &str, cv: &CounterVec) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} counter");
        for (k, v) in cv.snapshot() {
            let _ = writeln!(self.0, "{name}{{{label}=\"{k}\"}} {v}");
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            acc += c.load(Ordering::Relaxed);
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            self.0,
            "{name}_sum {}\n{name}_count {count}",
            h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }

    /// A gauge with several labelled series (values escaped).
    pub fn gauge_series(&mut self, name: &str, help: &str, series: &[(Vec<(&str, String)>, f64)]) {
        self.series("gauge", name, help, series);
    }

    /// A counter with several labelled series (values escaped).
    pub fn counter_series(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Vec<(&str, String)>, f64)],
    ) {
        self.series("counter", name, help, series);
    }

    fn series(
        &mut self,
        kind: &str,
        name: &str,
        help: &str,
        series: &[(Vec<(&str, String)>, f64)],
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in series {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// Counters of the server as a whole, shared by adapters and the API.
#[derive(Default)]
pub struct ServerMetrics {
    pub messages_in: CounterVec,
    pub points_in: CounterVec,
    /// Refused telemetry by reason, all protocols together.
    pub ingest_rejected: CounterVec,
    /// Refused telemetry by (protocol, reason): every adapter counts under
    /// the same names.
    pub ingest_refused: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub http_responses: CounterVec,
    pub auth_failures: CounterVec,
    /// Raw frames refused, by (device, reason); `unknown` where the frame
    /// named no device that could be read.
    pub frames_refused: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// HTTP telemetry bodies a cluster replica decoded (this node took
    /// them in binary, `twinhub_codec::wire`).
    pub http_bodies_decoded_by_replica: Counter,
}

impl ServerMetrics {
    /// Counts a refused raw frame of `device`.
    pub fn frame_refused(&self, device: &str, reason: &'static str) {
        let device = if device.is_empty() { "unknown" } else { device };
        let mut m = self.frames_refused.lock().expect("metrics lock");
        // Bounded: frames that name no registered device share one series.
        if m.len() >= 10_000 && !m.contains_key(&(device.to_string(), reason)) {
            *m.entry(("unknown".into(), reason)).or_default() += 1;
            return;
        }
        *m.entry((device.to_string(), reason)).or_default() += 1;
    }

    /// Counts refused telemetry (`reason`: invalid, model, quota, busy,
    /// no_space, store) from `protocol`.
    pub fn refused(&self, protocol: &'static str, reason: &'static str) {
        self.ingest_rejected.add(reason, 1);
        *self
            .ingest_refused
            .lock()
            .expect("metrics lock")
            .entry((protocol, reason))
            .or_default() += 1;
    }
}

/// CPU time of the calling thread (ms): a slow step with little of it
/// waited (I/O, a lock, or the scheduler).
pub fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec, a clock every Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}
