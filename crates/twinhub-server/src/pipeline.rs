//! The one ingest pipeline every protocol feeds: validate → twin → store →
//! fan-out. Adapters decode and authenticate, then call `ingest` with the
//! device and its decoded messages; the call returns once the points are
//! durable, so the adapter may acknowledge. The telemetry events go to the
//! store with the batch, which publishes them once it is committed.
//!
//! May call: `store`, `registry`, `events`, `metrics`, `clock`, `quotas`
//! (points per day), `twins` (validation against the model, live values).

use crate::clock::SharedClock;
use crate::events::{Draft, Kind, TelemetryData};
use crate::metrics::ServerMetrics;
use crate::registry::Device;
pub use crate::store::{Also, AlsoFn};
use crate::store::{SeriesKey, Store, StoreError, WriteBatch};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use twinhub_codec::Telemetry;
use twinhub_model::time::to_epoch_ms_json;
use twinhub_model::Point;

#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    #[error("the store is behind; retry shortly")]
    Busy,
    #[error("the store is unavailable")]
    Unavailable,
    /// Free disk space is under `store.min_free`.
    #[error("free disk space is under the reserve; telemetry is refused until space is freed")]
    NoSpace,
    #[error(transparent)]
    Quota(#[from] crate::quotas::QuotaExceeded),
}

/// Tenants whose telemetry is refused for now because something
/// downstream cannot keep up and must not lose data (a route whose backlog
/// is full and whose policy is to block): the refusal is a 503, never an
/// acknowledgement of data that would then be dropped.
#[derive(Default)]
pub struct Backpressure {
    blocked: std::sync::RwLock<HashMap<String, Vec<String>>>,
    any: std::sync::atomic::AtomicBool,
}

impl Backpressure {
    /// Sets or lifts one reason for a tenant; true when this changed it.
    pub fn set(&self, tenant: &str, reason: &str, on: bool) -> bool {
        let mut b = self.blocked.write().expect("backpressure");
        let reasons = b.entry(tenant.to_string()).or_default();
        let had = reasons.iter().any(|r| r == reason);
        match (on, had) {
            (true, false) => reasons.push(reason.to_string()),
            (false, true) => reasons.retain(|r| r != reason),
            _ => {}
        }
        if reasons.is_empty() {
            b.remove(tenant);
        }
        self.any
            .store(!b.is_empty(), std::sync::atomic::Ordering::SeqCst);
        on != had
    }

    /// Why the tenant's telemetry is refused now, if it is.
    pub fn blocked(&self, tenant: &str) -> Option<String> {
        if !self.any.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.blocked
            .read()
            .expect("backpressure")
            .get(tenant)
            .map(|r| r.join(", "))
    }
}

/// Where telemetry comes from: a device, or twinhub itself.
struct Source<'a> {
    tenant: &'a str,
    twin: &'a str,
    unknown: &'a str,
    device: Option<&'a Device>,
}

impl<'a> Source<'a> {
    fn of(device: &'a Device) -> Source<'a> {
        Source {
            tenant: &device.row.tenant,
            twin: device.twin(),
            unknown: &device.row.unknown_telemetry,
            device: Some(device),
        }
    }

    /// twinhub itself, for a twin: names outside the model are refused.
    fn derived(tenant: &'a str, twin: &'a str) -> Source<'a> {
        Source {
            tenant,
            twin,
            unknown: "reject",
            device: None,
        }
    }
}

/// One source's accepted groups, ready for the store (`prepare`), and
/// what `finish` needs once the store answered.
struct Prepared {
    protocol: &'static str,
    batch: WriteBatch,
    events: Vec<Draft>,
    outcomes: Vec<Result<usize, IngestError>>,
    reserved: usize,
    messages: usize,
}

/// `StoreError` is not `Clone` (it wraps I/O errors): the reasons the
/// pipeline tells apart survive, the rest become `Unavailable`.
fn clone_store_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Busy => StoreError::Busy,
        StoreError::NoSpace => StoreError::NoSpace,
        _ => StoreError::Unavailable,
    }
}

pub struct Pipeline {
    store: Store,
    twins: Arc<crate::twins::TwinGraphs>,
    metrics: Arc<ServerMetrics>,
    clock: SharedClock,
    quotas: Arc<crate::quotas::Quotas>,
    pub backpressure: Arc<Backpressure>,
    /// Last server-assigned timestamp per twin, so points without `ts`
    /// never collapse onto one another.
    last_server_ts: Mutex<HashMap<(String, String), i64>>,
}

impl Pipeline {
    pub fn new(
        store: Store,
        metrics: Arc<ServerMetrics>,
        clock: SharedClock,
        twins: Arc<crate::twins::TwinGraphs>,
        quotas: Arc<crate::quotas::Quotas>,
    ) -> Pipeline {
        Pipeline {
            store,
            twins,
            metrics,
            clock,
            quotas,
            backpressure: Default::default(),
            last_server_ts: Mutex::new(HashMap::new()),
        }
    }

    /// Stores the messages of one device. `wait` bounds the time spent
    /// waiting for room in the store's queue (None waits as long as it
    /// takes: MQTT stops reading the socket meanwhile).
    pub async fn ingest(
        &self,
        device: &Device,
        protocol: &'static str,
        msgs: Telemetry,
        wait: Option<Duration>,
    ) -> Result<usize, IngestError> {
        let mut out = self.ingest_each(device, protocol, vec![msgs], wait).await;
        out.pop().expect("one outcome per group")
    }

    /// Stores several independent groups of one device's messages (one
    /// group per MQTT PUBLISH) in one commit, with an outcome per group:
    /// a group that breaks a rule or the quota is refused alone, the rest
    /// are stored together.
    pub async fn ingest_each(
        &self,
        device: &Device,
        protocol: &'static str,
        groups: Vec<Telemetry>,
        wait: Option<Duration>,
    ) -> Vec<Result<usize, IngestError>> {
        self.ingest_each_with(device, protocol, groups, wait, |_| None)
            .await
    }

    /// `ingest_each`, where `also` is told which groups were accepted
    /// (before they are stored) and may return rows to write in the same
    /// commit: the MQTT server queues the copies of accepted messages for
    /// persistent sessions this way, so one commit makes both durable. If
    /// those rows cannot be written, every group is refused.
    pub async fn ingest_each_with(
        &self,
        device: &Device,
        protocol: &'static str,
        groups: Vec<Telemetry>,
        wait: Option<Duration>,
        also: impl FnOnce(&[bool]) -> Option<Also>,
    ) -> Vec<Result<usize, IngestError>> {
        self.ingest_groups(Source::of(device), protocol, groups, wait, also, false)
            .await
    }

    /// Values a twin gets from inside twinhub (soft sensors): validated
    /// and stored like device telemetry, with `protocol` naming the source.
    pub async fn ingest_derived(
        &self,
        tenant: &str,
        twin: &str,
        protocol: &'static str,
        msgs: Telemetry,
    ) -> Result<usize, IngestError> {
        self.ingest_twin(tenant, twin, protocol, msgs, None).await
    }

    /// Telemetry for a twin from a client that is not its device (line
    /// protocol with an API key): validated and stored like device
    /// telemetry; `wait` as for `ingest`.
    pub async fn ingest_twin(
        &self,
        tenant: &str,
        twin: &str,
        protocol: &'static str,
        msgs: Telemetry,
        wait: Option<Duration>,
    ) -> Result<usize, IngestError> {
        let src = Source::derived(tenant, twin);
        let mut out = self
            .ingest_groups(src, protocol, vec![msgs], wait, |_| None, false)
            .await;
        out.pop().expect("one outcome per group")
    }

    /// A modelled twin takes only its model's telemetry (and properties),
    /// each of the right type; the whole group or nothing.
    fn validate(
        &self,
        src: &Source<'_>,
        protocol: &'static str,
        msgs: &Telemetry,
    ) -> Result<(), IngestError> {
        let record = src.unknown == "record";
        self.twins
            .check_batch(src.tenant, src.twin, msgs, record)
            .map_err(|(field, rule)| {
                self.metrics.refused(protocol, "model");
                IngestError::Invalid { field, rule }
            })
    }

    /// `ingest_each` for many tiny groups (raw frames read in a burst):
    /// one telemetry event for all accepted groups, not one per group, so
    /// live subscribers keep up at a hundred thousand frames a second.
    pub async fn ingest_frames(
        &self,
        device: &Device,
        protocol: &'static str,
        groups: Vec<Telemetry>,
        wait: Option<Duration>,
    ) -> Vec<Result<usize, IngestError>> {
        self.ingest_groups(Source::of(device), protocol, groups, wait, |_| None, true)
            .await
    }

    async fn ingest_groups(
        &self,
        src: Source<'_>,
        protocol: &'static str,
        groups: Vec<Telemetry>,
        wait: Option<Duration>,
        also: impl FnOnce(&[bool]) -> Option<Also>,
        one_event: bool,
    ) -> Vec<Result<usize, IngestError>> {
        let mut p = self.prepare(&src, protocol, groups, one_event);
        if p.batch.entries.is_empty() && p.events.is_empty() {
            return p.outcomes;
        }
        let accepted: Vec<bool> = p.outcomes.iter().map(Result::is_ok).collect();
        let also = also(&accepted);
        let (batch, events) = (std::mem::take(&mut p.batch), std::mem::take(&mut p.events));
        let res = self.store.append_with(batch, events, also, wait).await;
        self.finish(&src, p, res)
    }

    /// Values twinhub derived for several twins (the rule engine's
    /// calculated properties), stored in one commit together with `also`
    /// (the engine's own rows), so both are durable or neither. Each twin's
    /// values are validated alone: a refused twin gets its error and the
    /// rest are stored. `Err` is the store's: nothing was written, `also`
    /// included.
    pub async fn ingest_derived_with(
        &self,
        source: &'static str,
        items: Vec<(String, String, Telemetry)>,
        also: AlsoFn,
    ) -> Result<Vec<Result<usize, IngestError>>, StoreError> {
        let mut batch = WriteBatch::default();
        let mut events = Vec::new();
        let mut prepared = Vec::with_capacity(items.len());
        for (tenant, twin, msgs) in items {
            let mut p = self.prepare(&Source::derived(&tenant, &twin), source, vec![msgs], false);
            batch.entries.append(&mut p.batch.entries);
            events.append(&mut p.events);
            prepared.push((tenant, twin, p));
        }
        let res = self
            .store
            .append_with(batch, events, Some(Also::Write(also)), None)
            .await;
        let outcomes = prepared
            .into_iter()
            .map(|(tenant, twin, p)| {
                let res = res.as_ref().map(|_| ()).map_err(clone_store_error);
                self.finish(&Source::derived(&tenant, &twin), p, res)
                    .pop()
                    .expect("one outcome per group")
            })
            .collect();
        res.map(|_| outcomes)
    }

    /// Validates, charges the quota, stamps and builds the columnar batch
    /// and the telemetry events of one source's groups (nothing written).
    fn prepare(
        &self,
        src: &Source<'_>,
        protocol: &'static str,
        groups: Vec<Telemetry>,
        one_event: bool,
    ) -> Prepared {
        let (tenant, twin) = (src.tenant, src.twin);
        let mut p = Prepared {
            protocol,
            batch: WriteBatch::default(),
            events: Vec::new(),
            outcomes: Vec::with_capacity(groups.len()),
            reserved: 0,
            messages: 0,
        };
        if let Some(why) = self.backpressure.blocked(tenant) {
            tracing::debug!(tenant, reason = %why, "telemetry refused: a blocking route is full");
            self.metrics.refused(protocol, "backpressure");
            p.outcomes = groups.iter().map(|_| Err(IngestError::Busy)).collect();
            return p;
        }
        let modelled = self.twins.twin_exists(tenant, twin);
        let now = self.clock.now_us();
        let mut accepted: Vec<Telemetry> = Vec::new();
        for mut msgs in groups {
            if modelled {
                if let Err(e) = self.validate(src, protocol, &msgs) {
                    p.outcomes.push(Err(e));
                    continue;
                }
            }
            let points = msgs.points();
            if let Err(q) = self.quotas.reserve_points(tenant, points) {
                self.metrics.refused(protocol, "quota");
                p.outcomes.push(Err(q.into()));
                continue;
            }
            p.reserved += points;
            p.outcomes.push(Ok(points));
            self.stamp(tenant, twin, &mut msgs, now);
            accepted.push(msgs);
        }
        if accepted.is_empty() {
            return p;
        }
        // One columnar batch of every accepted group, a series per name.
        let batch = &mut p.batch;
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for msgs in &accepted {
            let slots: Vec<usize> = msgs
                .names()
                .iter()
                .map(|name| {
                    *by_name.entry(name).or_insert_with(|| {
                        batch
                            .entries
                            .push((SeriesKey::new(tenant, twin, name), Vec::new()));
                        batch.entries.len() - 1
                    })
                })
                .collect();
            for m in msgs.messages() {
                let ts = m.ts.unwrap_or(now);
                for r in m.readings {
                    batch.entries[slots[r.name as usize]].1.push(Point {
                        ts,
                        value: r.value.clone(),
                        quality: r.quality,
                    });
                }
            }
        }
        let model = self
            .twins
            .read(tenant, |g| g.twins.get(twin).map(|t| t.model.to_string()));
        let device_id = src.device.map(|d| d.row.id.clone());
        p.events.reserve(accepted.len() + 1);
        if let Some(d) = src.device.filter(|d| !d.active.load(Ordering::Relaxed)) {
            p.events.push(Self::activity(d, true, None));
        }
        p.messages = accepted.iter().map(Telemetry::len).sum();
        let accepted = if one_event && accepted.len() > 1 {
            let mut all = Telemetry::default();
            for t in &accepted {
                all.extend_from(t);
            }
            vec![all]
        } else {
            accepted
        };
        for msgs in accepted {
            let data = TelemetryData {
                device: device_id.clone(),
                source: protocol.to_string(),
                batch: msgs,
            };
            p.events.push(Draft::telemetry(
                tenant,
                twin,
                model.as_deref(),
                Arc::new(data),
            ));
        }
        p
    }

    /// What the store said about a prepared write: counted and the device
    /// marked active, or the quota given back and every accepted group
    /// refused with the store's reason.
    fn finish(
        &self,
        src: &Source<'_>,
        p: Prepared,
        res: Result<(), StoreError>,
    ) -> Vec<Result<usize, IngestError>> {
        let protocol = p.protocol;
        let failed = match res {
            Ok(()) => None,
            Err(StoreError::Busy) => {
                self.metrics.refused(protocol, "busy");
                Some(IngestError::Busy)
            }
            Err(StoreError::NoSpace) => {
                self.metrics.refused(protocol, "no_space");
                Some(IngestError::NoSpace)
            }
            Err(e) => {
                tracing::error!(error = %e, "ingest failed in the store");
                self.metrics.refused(protocol, "store");
                Some(IngestError::Unavailable)
            }
        };
        if let Some(e) = failed {
            self.quotas.release_points(src.tenant, p.reserved);
            return p
                .outcomes
                .into_iter()
                .map(|o| match o {
                    Ok(_) => Err(e.clone()),
                    refused => refused,
                })
                .collect();
        }
        self.metrics.messages_in.add(protocol, p.messages as u64);
        self.metrics.points_in.add(protocol, p.reserved as u64);
        if let Some(device) = src.device {
            device
                .last_seen
                .store(self.clock.now_us(), Ordering::Relaxed);
            device.active.store(true, Ordering::Relaxed);
        }
        p.outcomes
    }

    /// Gives messages without `ts` the server's time, strictly increasing
    /// per twin so they never collapse onto one another.
    fn stamp(&self, tenant: &str, twin: &str, msgs: &mut Telemetry, now: i64) {
        if msgs.messages().all(|m| m.ts.is_some()) {
            return;
        }
        let mut last = self.last_server_ts.lock().expect("ts map");
        let slot = last
            .entry((tenant.to_string(), twin.to_string()))
            .or_insert(0);
        for ts in msgs.timestamps_mut() {
            if ts.is_none() {
                *slot = (*slot + 1).max(now);
                *ts = Some(*slot);
            }
        }
    }

    /// A device's activity changed (it reported again, or went quiet).
    fn activity(d: &Device, active: bool, last_seen: Option<i64>) -> Draft {
        let mut data = serde_json::json!({"device": d.row.id, "active": active});
        if let Some(seen) = last_seen {
            data["last_seen"] = to_epoch_ms_json(seen);
        }
        Draft::new(&d.row.tenant, Kind::Device, Some(d.twin()), None, data)
    }

    /// Marks devices silent for longer than `timeout` inactive; returns how
    /// many changed.
    pub fn sweep_inactive(&self, devices: &[Arc<Device>], timeout_us: i64) -> usize {
        let now = self.clock.now_us();
        let mut changed = Vec::new();
        for d in devices {
            let seen = d.last_seen.load(Ordering::Relaxed);
            if d.active.load(Ordering::Relaxed)
                && now - seen >= timeout_us
                && d.active.swap(false, Ordering::Relaxed)
            {
                changed.push(Self::activity(d, false, Some(seen)));
            }
        }
        let n = changed.len();
        self.store.emit_detached(changed);
        n
    }
}
