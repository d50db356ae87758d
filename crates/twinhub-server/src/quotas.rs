//! Per-tenant quotas a system admin sets: devices, twins, points per UTC
//! day, stored bytes and API requests per second. Owns the limits (cached
//! from the `tenants.quotas` column) and the usage counters; callers ask
//! before they accept work, so nothing already acknowledged is ever lost.
//!
//! May call: `store` (rows, sizes), `clock`.

use crate::clock::SharedClock;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

const DAY_US: i64 = 86_400_000_000;

/// Limits of one tenant; absent means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantQuotas {
    pub devices: Option<u64>,
    pub twins: Option<u64>,
    pub points_per_day: Option<u64>,
    /// Compressed history bytes (measured every 30 s).
    pub storage_bytes: Option<u64>,
    pub requests_per_second: Option<f64>,
    /// MQTT connections open at once (devices, users and API keys).
    pub mqtt_connections: Option<u64>,
}

/// Which quota refused, with its limit: the API answers
/// `quota_exceeded` naming it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("quota {name} of tenant {tenant} is exhausted (limit {limit})")]
pub struct QuotaExceeded {
    pub tenant: String,
    pub name: &'static str,
    pub limit: String,
    /// Seconds until the quota has room again, for rate-like quotas.
    pub retry_after: Option<u64>,
}

/// The meta key under which today's point counts survive restarts.
const POINTS_KEY: &str = "quota_points";

#[derive(Default, Clone, Copy, Serialize, Deserialize)]
struct DayCount {
    day: i64,
    points: u64,
}

pub struct Quotas {
    store: Store,
    clock: SharedClock,
    limits: RwLock<HashMap<String, TenantQuotas>>,
    points: Mutex<HashMap<String, DayCount>>,
    /// Counts changed since they were last saved.
    points_dirty: std::sync::atomic::AtomicBool,
    storage: RwLock<HashMap<String, u64>>,
    connections: Mutex<HashMap<String, u64>>,
}

/// An open MQTT connection of a tenant; gives its place back when dropped.
pub struct ConnectionSlot {
    quotas: Arc<Quotas>,
    tenant: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.quotas.connections.lock().expect("connections");
        if let Some(n) = c.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.tenant);
            }
        }
    }
}

impl Quotas {
    pub fn load(store: Store, clock: SharedClock) -> Result<Arc<Quotas>, StoreError> {
        let limits = store
            .read(|c| crate::store::registry::load_quotas(c))?
            .into_iter()
            .filter_map(|(t, q)| Some((t, serde_json::from_str(&q).ok()?)))
            .collect();
        let points = store
            .read(|c| crate::store::registry::meta_get(c, POINTS_KEY))?
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        let q = Arc::new(Quotas {
            store,
            clock,
            limits: RwLock::new(limits),
            points: Mutex::new(points),
            points_dirty: Default::default(),
            storage: RwLock::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
        });
        q.measure_storage();
        Ok(q)
    }

    pub fn of(&self, tenant: &str) -> TenantQuotas {
        self.limits
            .read()
            .expect("quotas")
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    pub async fn set(&self, tenant: &str, q: TenantQuotas) -> Result<(), StoreError> {
        let (t, json) = (
            tenant.to_string(),
            serde_json::to_string(&q).unwrap_or_else(|_| "{}".into()),
        );
        self.store
            .write(move |ctx| crate::store::registry::set_quotas(ctx.tx, &t, &json))
            .await?;
        self.limits
            .write()
            .expect("quotas")
            .insert(tenant.to_string(), q);
        Ok(())
    }

    fn exceeded(tenant: &str, name: &'static str, limit: impl ToString) -> QuotaExceeded {
        QuotaExceeded {
            tenant: tenant.to_string(),
            name,
            limit: limit.to_string(),
            retry_after: None,
        }
    }

    /// Ok when one more device fits beside `current`.
    pub fn check_devices(&self, tenant: &str, current: usize) -> Result<(), QuotaExceeded> {
        match self.of(tenant).devices {
            Some(max) if current as u64 >= max => Err(Self::exceeded(tenant, "devices", max)),
            _ => Ok(()),
        }
    }

    pub fn check_twins(&self, tenant: &str, current: usize) -> Result<(), QuotaExceeded> {
        match self.of(tenant).twins {
            Some(max) if current as u64 >= max => Err(Self::exceeded(tenant, "twins", max)),
            _ => Ok(()),
        }
    }

    /// Reserves `n` points of today's allowance (and checks storage); give
    /// them back with `release_points` when the write then fails.
    pub fn reserve_points(&self, tenant: &str, n: usize) -> Result<(), QuotaExceeded> {
        let q = self.of(tenant);
        if let Some(max) = q.storage_bytes {
            let used = self
                .storage
                .read()
                .expect("storage")
                .get(tenant)
                .copied()
                .unwrap_or(0);
            if used >= max {
                return Err(Self::exceeded(tenant, "storage_bytes", max));
            }
        }
        let Some(max) = q.points_per_day else {
            return Ok(());
        };
        let day = self.clock.now_us().div_euclid(DAY_US);
        let mut counts = self.points.lock().expect("points");
        let c = counts.entry(tenant.to_string()).or_default();
        if c.day != day {
            *c = DayCount { day, points: 0 };
        }
        if c.points + n as u64 > max {
            let now = self.clock.now_us();
            return Err(QuotaExceeded {
                retry_after: Some(((DAY_US - now.rem_euclid(DAY_US)) / 1_000_000).max(1) as u64),
                ..Self::exceeded(tenant, "points_per_day", max)
            });
        }
        c.points += n as u64;
        self.points_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub fn release_points(&self, tenant: &str, n: usize) {
        if let Some(c) = self.points.lock().expect("points").get_mut(tenant) {
            c.points = c.points.saturating_sub(n as u64);
        }
        self.points_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Saves today's point counts so a restart does not refill the daily
    /// allowance (a background job calls it every few seconds, and the
    /// server on shutdown; a crash forgets at most that window).
    pub async fn save_points(&self) -> Result<(), StoreError> {
        if !self
            .points_dirty
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        let day = self.clock.now_us().div_euclid(DAY_US);
        let today: HashMap<String, DayCount> = self
            .points
            .lock()
            .expect("points")
            .iter()
            .filter(|(_, c)| c.day == day)
            .map(|(t, c)| (t.clone(), *c))
            .collect();
        let json = serde_json::to_string(&today).unwrap_or_else(|_| "{}".into());
        let r = self
            .store
            .write(move |ctx| crate::store::registry::meta_set(ctx.tx, POINTS_KEY, &json))
            .await;
        if r.is_err() {
            self.points_dirty
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Points accepted today (UTC) for a tenant with a daily quota.
    pub fn points_today(&self, tenant: &str) -> u64 {
        let day = self.clock.now_us().div_euclid(DAY_US);
        self.points
            .lock()
            .expect("points")
            .get(tenant)
            .filter(|c| c.day == day)
            .map(|c| c.points)
            .unwrap_or(0)
    }

    /// Takes a connection slot of `tenant` (held for the connection's life).
    pub fn connect(self: &Arc<Self>, tenant: &str) -> Result<ConnectionSlot, QuotaExceeded> {
        let max = self.of(tenant).mqtt_connections;
        let mut c = self.connections.lock().expect("connections");
        let n = c.entry(tenant.to_string()).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            return Err(Self::exceeded(tenant, "mqtt_connections", max.unwrap_or(0)));
        }
        *n += 1;
        Ok(ConnectionSlot {
            quotas: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// MQTT connections of a tenant open now.
    pub fn connections_of(&self, tenant: &str) -> u64 {
        self.connections
            .lock()
            .expect("connections")
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    pub fn storage_of(&self, tenant: &str) -> u64 {
        self.storage
            .read()
            .expect("storage")
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    /// Re-measures stored bytes per tenant (a background job calls it).
    pub fn measure_storage(&self) {
        match self
            .store
            .read(|c| crate::store::registry::storage_by_tenant(c))
        {
            Ok(sizes) => *self.storage.write().expect("storage") = sizes.into_iter().collect(),
            Err(e) => tracing::warn!(error = %e, "could not measure storage per tenant"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_strictly() {
        let q: TenantQuotas = serde_json::from_str(r#"{"devices": 2}"#).unwrap();
        assert_eq!(q.devices, Some(2));
        assert!(serde_json::from_str::<TenantQuotas>(r#"{"device": 2}"#).is_err());
    }
}
