//! The prediction cache: keyed by tenant, model, version and the exact
//! input bits, bounded in entries and age. Two generations approximate LRU
//! in O(1): lookups promote from the old generation; when the young one is
//! full it becomes the old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use twinhub_ml::Prediction;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub tenant: Arc<str>,
    pub model: Arc<str>,
    pub version: Arc<str>,
    pub inputs: Vec<u32>,
}

impl CacheKey {
    pub fn new(tenant: &str, model: &str, version: &str, row: &[f32]) -> CacheKey {
        CacheKey {
            tenant: tenant.into(),
            model: model.into(),
            version: version.into(),
            inputs: row.iter().map(|x| x.to_bits()).collect(),
        }
    }
}

type Gen = HashMap<CacheKey, (Prediction, i64)>;

pub struct PredictionCache {
    gens: Mutex<(Gen, Gen)>,
    capacity: usize,
    ttl_us: i64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl PredictionCache {
    /// `capacity` 0 disables the cache.
    pub fn new(capacity: usize, ttl_us: i64) -> PredictionCache {
        PredictionCache {
            gens: Mutex::new((HashMap::new(), HashMap::new())),
            capacity,
            ttl_us,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn get(&self, k: &CacheKey, now: i64) -> Option<Prediction> {
        if !self.enabled() {
            return None;
        }
        let mut g = self.gens.lock().expect("cache");
        let fresh = |at: i64| now - at < self.ttl_us;
        let hit = match g.0.get(k) {
            Some((p, at)) if fresh(*at) => Some(p.clone()),
            _ => match g.1.remove(k) {
                Some((p, at)) if fresh(at) => {
                    let out = p.clone();
                    g.0.insert(k.clone(), (p, at));
                    Some(out)
                }
                _ => None,
            },
        };
        drop(g);
        match &hit {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        hit
    }

    pub fn put(&self, k: CacheKey, p: Prediction, now: i64) {
        if !self.enabled() {
            return;
        }
        let mut g = self.gens.lock().expect("cache");
        if g.0.len() >= self.capacity.div_ceil(2) {
            let young = std::mem::take(&mut g.0);
            g.1 = young;
        }
        g.0.insert(k, (p, now));
    }

    /// Drops everything of one model (a version was removed or replaced).
    pub fn forget(&self, tenant: &str, model: &str) {
        let mut g = self.gens.lock().expect("cache");
        let keep = |k: &CacheKey| !(&*k.tenant == tenant && &*k.model == model);
        g.0.retain(|k, _| keep(k));
        g.1.retain(|k, _| keep(k));
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        let g = self.gens.lock().expect("cache");
        g.0.len() + g.1.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn p(x: f64) -> Prediction {
        Prediction {
            prediction: Value::from(x),
            interval: None,
            probabilities: None,
            score: None,
            warnings: vec![],
        }
    }

    #[test]
    fn bounded_by_size_and_age() {
        let c = PredictionCache::new(4, 1_000);
        let k = |x: f32| CacheKey::new("t", "m", "1", &[x]);
        c.put(k(1.0), p(1.0), 0);
        assert_eq!(c.get(&k(1.0), 10), Some(p(1.0)));
        assert_eq!(c.get(&k(1.0), 2_000), None, "expired");
        for i in 0..10 {
            c.put(k(i as f32), p(i as f64), 0);
        }
        assert!(c.len() <= 4);
        assert_eq!(c.get(&k(9.0), 1), Some(p(9.0)), "the newest stay");
        assert_eq!(c.get(&k(0.0), 1), None, "the oldest go");
        assert!(!(CacheKey::new("t", "m", "1", &[1.0]) == CacheKey::new("t", "m", "2", &[1.0])));
    }
}
