//! Routes: every committed event a route selects is delivered to one sink
//! (webhook, …), reliably. A route's queue is the outbox read from its own
//! durable consumer position (`route:<tenant>:<id>`), so an event is queued
//! exactly when its change commits, survives restarts, and is delivered in
//! commit order (so in order per twin), batched, retried with jittered
//! backoff behind a circuit breaker, sent to a fallback sink after repeated
//! failures, and after `retry.max_attempts` parked in dead letters that can
//! be listed and replayed. Delivery is at least once; every envelope has a
//! stable `id` for receivers to deduplicate. Design: docs/design/routes.md.
//!
//! May call: `store` (route rows, dead letters, durable consumers),
//! `events` (the envelopes), `twins` (selection), `secrets` (webhook keys),
//! `pipeline` (backpressure when a blocking route is full), `mqtt` (function
//! answers), `rules`
//! (alarms when delivery fails), `clock`, `auth` (random ids),
//! `twinhub-model` (CEL, durations).

pub mod function;
pub mod mqtt;
pub mod nats;
pub mod postgres;
pub mod sink;
pub mod spec;
pub mod webhook;
mod worker;

pub use spec::{envelope, RouteSpec};

use crate::clock::SharedClock;
use crate::store::routes::{self as rows, RouteRow};
use crate::store::{Store, StoreError};
use crate::twins::TwinGraphs;
use serde_json::{json, Value};
use sink::{Sink, SinkContext};
use spec::{refuse, Retry, Selection, SpecError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The default bound of a route's backlog, in events.
pub const DEFAULT_MAX_BACKLOG: u64 = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{}: {}", .0.field, .0.rule)]
    Spec(SpecError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SpecError> for RouteError {
    fn from(e: SpecError) -> RouteError {
        RouteError::Spec(e)
    }
}

/// A route, checked and compiled.
pub struct Route {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub spec: RouteSpec,
    pub selection: Selection,
    pub retry: Retry,
    pub max: usize,
    pub linger: Duration,
    pub drops_oldest: bool,
    pub max_backlog: u64,
    pub sink: Arc<dyn Sink>,
    pub fallback: Option<Arc<dyn Sink>>,
    pub template: Option<spec::Template>,
    /// Function routes answer device calls instead of taking events.
    pub function: Option<Arc<function::Endpoint>>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Route {
    pub fn consumer_name(tenant: &str, id: &str) -> String {
        format!("route:{tenant}:{id}")
    }
}

/// What a route is doing, as `GET /api/v1/routes/{id}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Ok = 0,
    Retrying = 1,
    Open = 2,
    Paused = 3,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Retrying => "retrying",
            State::Open => "open",
            State::Paused => "paused",
        }
    }
}

/// Counters and state of a route (kept across its versions).
#[derive(Default)]
pub struct Stats {
    pub state: AtomicU8,
    pub delivered: AtomicU64,
    pub batches: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub replayed: AtomicU64,
    pub to_fallback: AtomicU64,
    /// The consumer position (last event id applied).
    pub position: AtomicU64,
    /// Backlog (events, bytes) as last measured.
    pub backlog: Mutex<(u64, u64)>,
    pub last_error: Mutex<Option<(i64, String)>>,
    pub last_delivered_at: AtomicU64,
}

impl Stats {
    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Retrying,
            2 => State::Open,
            3 => State::Paused,
            _ => State::Ok,
        }
    }
}

/// Commands to a running route's worker.
#[derive(Default)]
pub struct Control {
    pub paused: AtomicBool,
    pub replay: AtomicBool,
    pub stop: AtomicBool,
    pub wake: tokio::sync::Notify,
}

impl Control {
    fn poke(&self) {
        self.wake.notify_one();
    }
}

struct Running {
    route: Arc<Route>,
    control: Arc<Control>,
}

pub struct RouteDeps {
    pub store: Store,
    pub twins: Arc<TwinGraphs>,
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub clock: SharedClock,
    pub backpressure: Arc<crate::pipeline::Backpressure>,
    pub alarms: Arc<crate::rules::alarms::Alarms>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub struct RouteBook {
    deps: RouteDeps,
    /// Where function answers are published (weak: the broker holds us).
    broker: std::sync::OnceLock<std::sync::Weak<crate::mqtt::Broker>>,
    routes: RwLock<HashMap<(String, String), Running>>,
    /// Stats survive a route's new versions (not its deletion).
    stats: Mutex<HashMap<(String, String), Arc<Stats>>>,
}

fn key(tenant: &str, id: &str) -> (String, String) {
    (tenant.to_string(), id.to_string())
}

impl RouteBook {
    /// Loads the stored routes and starts their workers.
    pub fn start(deps: RouteDeps) -> Result<Arc<RouteBook>, StoreError> {
        let stored = deps.store.read(|c| rows::load_routes(c))?;
        let book = Arc::new(RouteBook {
            deps,
            broker: Default::default(),
            routes: RwLock::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
        });
        for r in stored {
            let spec = match serde_json::from_str::<RouteSpec>(&r.body) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(route = %r.id, error = %e, "stored route no longer parses");
                    continue;
                }
            };
            match book.compile(&r.tenant, &r.id, spec) {
                Ok(mut route) => {
                    route.version = r.version;
                    route.created_at = r.created_at;
                    route.updated_at = r.updated_at;
                    route.spec.paused = r.paused;
                    book.launch(Arc::new(route));
                }
                Err(e) => {
                    tracing::error!(route = %r.id, error = %e, "stored route no longer compiles")
                }
            }
        }
        Ok(book)
    }

    fn context(&self, tenant: &str, id: &str) -> SinkContext {
        SinkContext {
            tenant: tenant.to_string(),
            route: id.to_string(),
            secrets: self.deps.secrets.clone(),
            clock: self.deps.clock.clone(),
        }
    }

    fn compile(&self, tenant: &str, id: &str, spec: RouteSpec) -> Result<Route, RouteError> {
        let selection = spec.selection()?;
        if let Some(sel) = &selection.twins {
            if let Some(dtmi) = &sel.model {
                twinhub_model::dtdl::Dtmi::parse(dtmi)
                    .map_err(|rule| refuse(400, "select.model", rule.to_string()))?;
            }
            if let Some(q) = &sel.query {
                twinhub_model::query::parse(q)
                    .map_err(|e| refuse(400, "select.query", e.to_string()))?;
            }
        }
        let retry = spec.retry()?;
        let (max, linger) = spec.batching()?;
        let drops_oldest = spec.drops_oldest()?;
        let max_backlog = spec.max_backlog.unwrap_or(DEFAULT_MAX_BACKLOG);
        if max_backlog < 100 {
            return Err(refuse(400, "max_backlog", "must be at least 100 events").into());
        }
        let template = spec
            .template
            .as_deref()
            .map(spec::Template::compile)
            .transpose()?;
        let function = if spec.sink.kind == "function" {
            if spec.fallback.is_some() || spec.template.is_some() {
                return Err(refuse(
                    400,
                    "sink.kind",
                    "a function route has no fallback or template",
                )
                .into());
            }
            Some(Arc::new(function::Endpoint::new(
                &spec.sink,
                "sink",
                self.context(tenant, id),
            )?))
        } else {
            if !spec.select.functions.is_empty() {
                return Err(refuse(400, "select.functions", "is for function routes only").into());
            }
            None
        };
        let sink: Arc<dyn Sink> = match &function {
            Some(f) => f.clone(),
            None => sink::build(&spec.sink, "sink", self.context(tenant, id))?,
        };
        let fallback = spec
            .fallback
            .as_ref()
            .map(|f| sink::build(f, "fallback", self.context(tenant, id)))
            .transpose()?;
        Ok(Route {
            tenant: tenant.to_string(),
            id: id.to_string(),
            version: 1,
            spec,
            selection,
            retry,
            max,
            linger,
            drops_oldest,
            max_backlog,
            sink,
            fallback,
            template,
            function,
            created_at: 0,
            updated_at: 0,
        })
    }

    fn launch(self: &Arc<Self>, route: Arc<Route>) {
        let k = key(&route.tenant, &route.id);
        let stats = self
            .stats
            .lock()
            .expect("stats")
            .entry(k.clone())
            .or_default()
            .clone();
        let control = Arc::new(Control::default());
        control.paused.store(route.spec.paused, Ordering::SeqCst);
        if let Some(old) = self.routes.write().expect("routes").insert(
            k,
            Running {
                route: route.clone(),
                control: control.clone(),
            },
        ) {
            old.control.stop.store(true, Ordering::SeqCst);
            old.control.poke();
        }
        if route.function.is_none() {
            tokio::spawn(worker::run(self.clone(), route, stats, control));
        }
    }

    /// Checks and stores a route: a new one (version 1) or a new version
    /// of an existing one (`replace`); its worker restarts from the same
    /// position.
    pub async fn put(
        self: &Arc<Self>,
        tenant: &str,
        mut spec: RouteSpec,
        replace: Option<&str>,
    ) -> Result<Arc<Route>, RouteError> {
        let id = match (replace, &spec.id) {
            (Some(id), Some(given)) if given != id => {
                return Err(refuse(400, "id", "differs from the id in the path").into())
            }
            (Some(id), _) => id.to_string(),
            (None, Some(given)) => given.clone(),
            (None, None) => format!("rt-{}", crate::auth::random_secret(6).to_lowercase()),
        };
        twinhub_model::ids::check_id("id", &id).map_err(|e| refuse(400, &e.field, e.rule))?;
        spec.id = None;
        let current = self.get(tenant, &id);
        match (replace, &current) {
            (None, Some(_)) => {
                return Err(RouteError::Conflict(format!("route {id} already exists")))
            }
            (Some(_), None) => return Err(RouteError::NotFound(format!("route {id} not found"))),
            _ => {}
        }
        let mut route = self.compile(tenant, &id, spec)?;
        let now = self.deps.clock.now_us();
        route.version = current.as_ref().map_or(1, |c| c.version + 1);
        route.created_at = current.as_ref().map_or(now, |c| c.created_at);
        route.updated_at = now;
        let row = RouteRow {
            tenant: tenant.into(),
            id: id.clone(),
            version: route.version,
            paused: route.spec.paused,
            body: serde_json::to_string(&route.spec).unwrap_or_default(),
            created_at: route.created_at,
            updated_at: now,
        };
        let name = Route::consumer_name(tenant, &id);
        let consumes = route.function.is_none();
        // The consumer is created with the route, in its transaction: the
        // route sees every event committed after it exists.
        self.deps
            .store
            .write(move |ctx| {
                rows::put_route(ctx.tx, &row)?;
                if consumes {
                    ctx.ensure_consumer(&name)?;
                }
                Ok(())
            })
            .await?;
        let route = Arc::new(route);
        self.launch(route.clone());
        Ok(route)
    }

    pub async fn set_paused(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        paused: bool,
    ) -> Result<Arc<Route>, RouteError> {
        let current = self
            .get(tenant, id)
            .ok_or_else(|| RouteError::NotFound(format!("route {id} not found")))?;
        let mut spec = current.spec.clone();
        spec.paused = paused;
        self.put(tenant, spec, Some(id)).await
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, RouteError> {
        let k = key(tenant, id);
        if let Some(old) = self.routes.write().expect("routes").remove(&k) {
            old.control.stop.store(true, Ordering::SeqCst);
            old.control.poke();
        }
        self.stats.lock().expect("stats").remove(&k);
        self.deps
            .backpressure
            .set(tenant, &format!("route {id}"), false);
        let (t, i) = (tenant.to_string(), id.to_string());
        let name = Route::consumer_name(tenant, id);
        Ok(self
            .deps
            .store
            .write(move |ctx| {
                let gone = rows::delete_route(ctx.tx, &t, &i)?;
                ctx.drop_consumer(&name)?;
                Ok(gone)
            })
            .await?)
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Route>> {
        self.routes
            .read()
            .expect("routes")
            .get(&key(tenant, id))
            .map(|r| r.route.clone())
    }

    pub fn list(&self, tenant: &str) -> Vec<Arc<Route>> {
        let mut v: Vec<Arc<Route>> = self
            .routes
            .read()
            .expect("routes")
            .values()
            .filter(|r| r.route.tenant == tenant)
            .map(|r| r.route.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Asks the route's worker to send its dead letters again.
    pub fn replay(&self, tenant: &str, id: &str) -> Result<(), RouteError> {
        let routes = self.routes.read().expect("routes");
        let r = routes
            .get(&key(tenant, id))
            .ok_or_else(|| RouteError::NotFound(format!("route {id} not found")))?;
        r.control.replay.store(true, Ordering::SeqCst);
        r.control.poke();
        Ok(())
    }

    /// Sends one synthetic event straight to the route's sink (not queued,
    /// not retried): what a receiver would get, to check the wiring.
    pub async fn test(&self, tenant: &str, id: &str) -> Result<Result<Value, String>, RouteError> {
        let route = self
            .get(tenant, id)
            .ok_or_else(|| RouteError::NotFound(format!("route {id} not found")))?;
        let now = self.deps.clock.now_us();
        let ev = json!({
            "id": format!("test-{}", crate::auth::random_secret(6).to_lowercase()),
            "type": "test", "tenant": tenant, "twin": null,
            "ts": twinhub_model::time::to_epoch_ms_json(now),
            "data": {"route": id, "message": "a test event from twinhub"},
        });
        let body = match &route.template {
            Some(t) => match t.render(&ev) {
                Ok(b) => Some(b),
                Err(e) => return Ok(Err(e)),
            },
            None => None,
        };
        let batch = [sink::Delivery {
            env: ev.clone(),
            body,
        }];
        Ok(match route.sink.send(&batch).await {
            Ok(()) => Ok(ev),
            Err(e) => Err(e.message),
        })
    }

    pub fn dead_letters(
        &self,
        tenant: &str,
        id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<rows::DeadLetter>, RouteError> {
        if self.get(tenant, id).is_none() {
            return Err(RouteError::NotFound(format!("route {id} not found")));
        }
        let (t, i) = (tenant.to_string(), id.to_string());
        Ok(self
            .deps
            .store
            .read(move |c| rows::dead_letters(c, &t, &i, after, limit))?)
    }

    /// The route as the API shows it: its spec, version and live status.
    pub fn doc(&self, route: &Route) -> Value {
        let stats = self
            .stats
            .lock()
            .expect("stats")
            .get(&key(&route.tenant, &route.id))
            .cloned()
            .unwrap_or_default();
        let mut v = serde_json::to_value(&route.spec).unwrap_or_default();
        let ms = twinhub_model::time::to_epoch_ms_json;
        let (t, i) = (route.tenant.clone(), route.id.clone());
        let parked = self
            .deps
            .store
            .read(move |c| rows::count_dead_letters(c, &t, &i))
            .unwrap_or(0);
        let backlog = *stats.backlog.lock().expect("backlog");
        let position = stats.position.load(Ordering::Relaxed);
        let head = self.deps.store.events().last_id();
        let last_error = stats.last_error.lock().expect("error").clone();
        let state = if route.spec.paused {
            State::Paused
        } else {
            stats.state()
        };
        v["id"] = json!(route.id);
        v["version"] = json!(route.version);
        v["created_at"] = ms(route.created_at);
        v["updated_at"] = ms(route.updated_at);
        v["status"] = json!(state.name());
        v["lag"] = json!({
            "events": backlog.0,
            "bytes": backlog.1,
            // Event ids follow the clock (µs) within a run.
            "seconds": (head.saturating_sub(position) as f64 / 1e6).min(backlog.0 as f64 * 1e9),
        });
        v["delivered"] = json!(stats.delivered.load(Ordering::Relaxed));
        v["batches"] = json!(stats.batches.load(Ordering::Relaxed));
        v["retried"] = json!(stats.retried.load(Ordering::Relaxed));
        v["dead_lettered"] = json!(stats.dead_lettered.load(Ordering::Relaxed));
        v["dead_letters"] = json!(parked);
        v["dropped"] = json!(stats.dropped.load(Ordering::Relaxed));
        v["replayed"] = json!(stats.replayed.load(Ordering::Relaxed));
        v["to_fallback"] = json!(stats.to_fallback.load(Ordering::Relaxed));
        v["last_error"] = match last_error {
            Some((at, msg)) => json!({"at": ms(at), "message": msg}),
            None => Value::Null,
        };
        v
    }

    /// Every route's counters, for /metrics: (tenant, id, stats).
    pub fn all_stats(&self) -> Vec<(String, String, Arc<Stats>)> {
        self.stats
            .lock()
            .expect("stats")
            .iter()
            .map(|((t, i), s)| (t.clone(), i.clone(), s.clone()))
            .collect()
    }
}

impl RouteBook {
    /// Connects function routes to the MQTT broker (both ways).
    pub fn attach_broker(self: &Arc<Self>, broker: &Arc<crate::mqtt::Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
        broker.set_functions(self.clone());
    }
}

impl crate::mqtt::broker::FunctionCalls for RouteBook {
    fn call(
        &self,
        tenant: &str,
        device: &str,
        name: &str,
        request_id: &str,
        payload: bytes::Bytes,
    ) {
        let Some(broker) = self.broker.get().and_then(|b| b.upgrade()) else {
            return;
        };
        let endpoint = self
            .list(tenant)
            .into_iter()
            .filter(|r| !r.spec.paused)
            .filter(|r| {
                r.spec.select.functions.is_empty()
                    || r.spec.select.functions.iter().any(|f| f == name)
            })
            .find_map(|r| r.function.clone());
        let topic = format!("devices/{device}/functions/replies/{request_id}");
        let (tenant, device, name, request_id) = (
            tenant.to_string(),
            device.to_string(),
            name.to_string(),
            request_id.to_string(),
        );
        tokio::spawn(async move {
            let reply = match endpoint {
                Some(e) => e.call(&device, &name, &request_id, &payload).await,
                None => {
                    json!({"status": 404, "error": format!("no route answers the function {name}")})
                }
            };
            broker.publish_from_server(&tenant, &topic, bytes::Bytes::from(reply.to_string()));
        });
    }
}
