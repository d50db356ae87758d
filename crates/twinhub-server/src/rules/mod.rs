//! Rules and alarms. A rule selects twins (by id, DTDL model or query),
//! watches every committed change of them and raises, repeats and clears
//! alarms. Definitions are checked and compiled when saved (`RuleBook`);
//! evaluation runs in one task that consumes the fan-out from a durable
//! position (`engine`), so alarm changes, rule state and the position
//! commit together; alarms have one lifecycle (`alarms`). Design:
//! docs/design/rules.md.
//!
//! May call: `store` (rule, state and alarm rows; the durable consumer),
//! `twins` (selection, properties, relationships, property actions),
//! `events` (alarm and rule events), `pipeline` and `ingest` (calculated
//! values), `mqtt` (command actions), `clock`, `metrics`, `auth` (random ids), `twinhub-model`
//! (CEL, state machines).

mod actions;
pub mod alarms;
mod commit;
pub mod engine;
mod evaluate;
mod settings;
mod spec;

pub use settings::RulesConfig;
pub use spec::*;

use crate::clock::SharedClock;
use crate::store::rules::{self as rows, RuleRow};
use crate::store::{Store, StoreError};
use crate::twins::TwinGraphs;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use twinhub_model::rules::alarm::Severity;
use twinhub_model::rules::expr::Expr;
use twinhub_model::time::parse_duration;

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A request field breaks a rule: (status 400 or 422).
    #[error("{field}: {rule}")]
    Field {
        status: u16,
        field: String,
        rule: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn field(status: u16, field: &str, rule: impl Into<String>) -> RuleError {
    RuleError::Field {
        status,
        field: field.into(),
        rule: rule.into(),
    }
}

/// The property names a soft-sensor binding writes.
#[derive(Debug, Clone)]
pub struct BindingOutputs {
    /// The ML model's name.
    pub model: String,
    pub prediction: String,
    pub lower: Option<String>,
    pub upper: Option<String>,
}

/// Looks up a binding's outputs (given by the composition root, so rules
/// need not know ML).
pub type BindingLookup = Arc<dyn Fn(&str, &str) -> Option<BindingOutputs> + Send + Sync>;

/// Evaluation counters of one rule version, bumped without a lock.
#[derive(Debug, Default)]
pub struct RuleCounters {
    pub evaluations: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    /// Some twin's last evaluation failed (the book has which and why).
    pub failing: std::sync::atomic::AtomicBool,
}

/// A saved rule, compiled.
#[derive(Debug)]
pub struct Rule {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub spec: RuleSpec,
    pub condition: Option<Expr>,
    pub clear: Option<Expr>,
    pub for_us: i64,
    pub timeout_us: i64,
    pub stats: Option<twinhub_model::rules::stats::Params>,
    /// The alarm it raises (for `calculated`, none is raised).
    pub alarm: AlarmSpec,
    /// calculated: the value's expression.
    pub expression: Option<Expr>,
    pub throttle_us: Option<i64>,
    /// The variables its expressions read.
    pub names: Vec<String>,
    pub counters: RuleCounters,
    /// A drift check's ML model.
    pub drift_model: Option<String>,
}

impl Rule {
    fn compile(
        tenant: &str,
        id: &str,
        spec: RuleSpec,
        binding: &dyn Fn(&str) -> Option<BindingOutputs>,
    ) -> Result<Rule, RuleError> {
        if spec.name.trim().is_empty() || spec.name.len() > 200 {
            return Err(field(400, "name", "must be 1 to 200 characters"));
        }
        let alarm = match (&spec.alarm, spec.kind) {
            (Some(a), _) => {
                twinhub_model::ids::check_id("alarm.type", &a.kind)
                    .map_err(|e| field(400, &e.field, e.rule))?;
                a.clone()
            }
            (None, RuleKind::Calculated) => AlarmSpec {
                kind: String::new(),
                severity: Severity::Indeterminate,
                propagate: None,
            },
            (None, _) => return Err(field(400, "alarm", "needs {type, severity}")),
        };
        let expr = |name: &str, src: &Option<String>| -> Result<Option<Expr>, RuleError> {
            src.as_deref()
                .map(|s| Expr::compile(s).map_err(|e| field(422, name, e.to_string())))
                .transpose()
        };
        let duration = |name: &str, src: &Option<String>| -> Result<i64, RuleError> {
            match src.as_deref() {
                None => Ok(0),
                Some(s) => parse_duration(s)
                    .ok()
                    .filter(|d| *d >= 0)
                    .ok_or_else(|| field(400, name, "must be a duration such as 30s, 5m or 1h")),
            }
        };
        let mut condition = expr("condition", &spec.condition)?;
        let clear = expr("clear", &spec.clear)?;
        let for_us = duration("for", &spec.for_)?;
        let timeout_us = duration("timeout", &spec.timeout)?;
        let throttle_us = spec
            .throttle
            .as_ref()
            .map(|_| duration("throttle", &spec.throttle))
            .transpose()?;
        let expression = expr("expression", &spec.expression)?;
        let mut drift_model = None;
        match spec.kind {
            RuleKind::Condition if condition.is_none() => {
                return Err(field(
                    400,
                    "condition",
                    "a condition rule needs an expression",
                ))
            }
            RuleKind::NoData if timeout_us < 1_000_000 => {
                return Err(field(
                    400,
                    "timeout",
                    "a no_data rule needs a timeout of 1s or more",
                ))
            }
            RuleKind::Calculated => {
                let (Some(e), Some(out)) = (&expression, &spec.output) else {
                    return Err(field(
                        400,
                        "expression",
                        "a calculated rule needs expression and output",
                    ));
                };
                twinhub_model::ids::check_id("output", out)
                    .map_err(|e| field(400, &e.field, e.rule))?;
                if e.variables().iter().any(|v| v == out) {
                    return Err(field(
                        422,
                        "expression",
                        format!("must not read its own output {out}"),
                    ));
                }
            }
            RuleKind::ModelOutput => {
                let Some(m) = &spec.model_output else {
                    return Err(field(
                        400,
                        "model_output",
                        "a model_output rule needs {binding, check}",
                    ));
                };
                let outs = binding(&m.binding).ok_or_else(|| {
                    field(
                        422,
                        "model_output.binding",
                        format!("no soft-sensor binding {}", m.binding),
                    )
                })?;
                let p = |name: &str| format!("props[{}]", serde_json::Value::from(name));
                let src = match m.check {
                    ModelCheck::Band => {
                        let mut parts = Vec::new();
                        if let Some(min) = m.min {
                            parts.push(format!("{} < {min:?}", p(&outs.prediction)));
                        }
                        if let Some(max) = m.max {
                            parts.push(format!("{} > {max:?}", p(&outs.prediction)));
                        }
                        if parts.is_empty() {
                            return Err(field(
                                400,
                                "model_output",
                                "a band needs min, max or both",
                            ));
                        }
                        parts.join(" || ")
                    }
                    ModelCheck::Interval => {
                        let (Some(lo), Some(hi)) = (&outs.lower, &outs.upper) else {
                            return Err(field(
                                422,
                                "model_output.binding",
                                "the binding writes no interval (outputs.lower/upper)",
                            ));
                        };
                        let Some(measured) = &m.measured else {
                            return Err(field(
                                400,
                                "model_output.measured",
                                "names the measured property",
                            ));
                        };
                        format!(
                            "{m} < {lo} || {m} > {hi}",
                            m = p(measured),
                            lo = p(lo),
                            hi = p(hi)
                        )
                    }
                    ModelCheck::Drift => {
                        if !m.psi.is_some_and(|p| p.is_finite() && p > 0.0) {
                            return Err(field(
                                400,
                                "model_output.psi",
                                "a drift check needs a positive psi",
                            ));
                        }
                        drift_model = Some(outs.model.clone());
                        String::new()
                    }
                };
                if !src.is_empty() {
                    condition = Some(
                        Expr::compile(&src)
                            .map_err(|e| field(422, "model_output", e.to_string()))?,
                    );
                }
            }
            _ => {}
        }
        for (i, a) in spec.actions.iter().enumerate() {
            let n = [
                a.set_property.is_some(),
                a.command.is_some(),
                a.event.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if n != 1 {
                return Err(field(
                    400,
                    &format!("actions[{i}]"),
                    "give exactly one of set_property, command or event",
                ));
            }
        }
        let stats = match (&spec.kind, &spec.statistic) {
            (RuleKind::Statistical, None) => {
                return Err(field(
                    400,
                    "statistic",
                    "a statistical rule needs {property, method}",
                ))
            }
            (RuleKind::Statistical, Some(st)) => {
                use twinhub_model::rules::stats::{Method, Params};
                let threshold = st.threshold.unwrap_or(3.0);
                if !(threshold.is_finite() && threshold > 0.0) {
                    return Err(field(
                        400,
                        "statistic.threshold",
                        "must be a positive number",
                    ));
                }
                let flat_us = duration("statistic.duration", &st.duration)?;
                if st.method == Method::Flatline && flat_us < 1_000_000 {
                    return Err(field(
                        400,
                        "statistic.duration",
                        "a flatline check needs a duration of 1s or more",
                    ));
                }
                Some(Params {
                    method: st.method,
                    threshold,
                    window: st.window.unwrap_or(100).clamp(2, 100_000),
                    warmup: st.warmup.unwrap_or(30).min(100_000),
                    flat_us,
                })
            }
            (_, Some(_)) => {
                return Err(field(400, "statistic", "only a statistical rule takes one"))
            }
            _ => None,
        };
        let mut names: Vec<String> = condition
            .iter()
            .chain(clear.iter())
            .chain(expression.iter())
            .flat_map(|e| e.variables())
            .collect();
        names.sort();
        names.dedup();
        Ok(Rule {
            tenant: tenant.into(),
            id: id.into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
            spec,
            condition,
            clear,
            for_us,
            timeout_us,
            stats,
            names,
            alarm,
            expression,
            throttle_us,
            counters: Default::default(),
            drift_model,
        })
    }

    /// The rule as the API shows it.
    pub fn doc(&self, status: &RuleStatus) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.spec).unwrap_or_default();
        v["id"] = self.id.clone().into();
        v["version"] = self.version.into();
        v["created_at"] = twinhub_model::time::to_epoch_ms_json(self.created_at);
        v["updated_at"] = twinhub_model::time::to_epoch_ms_json(self.updated_at);
        v["status"] = status.doc();
        v
    }
}

/// How a rule is doing, kept in memory (evaluations since start).
#[derive(Debug, Clone, Default)]
pub struct RuleStatus {
    pub evaluations: u64,
    pub errors: u64,
    /// Twins whose last evaluation failed, with the error.
    pub failing: HashMap<String, String>,
    pub last_error: Option<(String, String, i64)>,
}

impl RuleStatus {
    fn doc(&self) -> serde_json::Value {
        serde_json::json!({
            "state": if self.failing.is_empty() { "ok" } else { "failing" },
            "evaluations": self.evaluations,
            "errors": self.errors,
            "failing_twins": self.failing.len(),
            "last_error": self.last_error.as_ref().map(|(twin, message, at)| serde_json::json!({
                "twin": twin, "message": message, "at": twinhub_model::time::to_epoch_ms_json(*at),
            })),
        })
    }
}

type Key = (String, String);

/// The rules of every tenant, compiled, with their query members and
/// status; the engine reads it, the API writes it.
pub struct RuleBook {
    store: Store,
    bindings: BindingLookup,
    clock: SharedClock,
    rules: RwLock<HashMap<Key, Arc<Rule>>>,
    members: RwLock<HashMap<Key, Arc<HashSet<String>>>>,
    status: Mutex<HashMap<Key, RuleStatus>>,
    /// Bumped on every change, so the engine knows to re-read…
    pub generation: std::sync::atomic::AtomicU64,
    /// …and woken.
    pub changed: tokio::sync::Notify,
    evaluations: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
    /// Time the engine spent evaluating (µs), for its capacity.
    busy_us: std::sync::atomic::AtomicU64,
}

impl RuleBook {
    pub fn load(
        store: Store,
        clock: SharedClock,
        twins: &TwinGraphs,
        bindings: BindingLookup,
    ) -> Result<Arc<RuleBook>, StoreError> {
        let mut rules = HashMap::new();
        for r in store.read(|c| rows::load_rules(c))? {
            let spec = match serde_json::from_str::<RuleSpec>(&r.body) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(rule = %r.id, error = %e, "stored rule no longer parses");
                    continue;
                }
            };
            let tenant = r.tenant.clone();
            match Rule::compile(&r.tenant, &r.id, spec, &|b| bindings(&tenant, b)) {
                Ok(mut rule) => {
                    rule.version = r.version;
                    rule.created_at = r.created_at;
                    rule.updated_at = r.updated_at;
                    rule.spec.enabled = r.enabled;
                    rules.insert((r.tenant, r.id), Arc::new(rule));
                }
                Err(e) => {
                    tracing::error!(rule = %r.id, error = %e, "stored rule no longer compiles")
                }
            }
        }
        let book = Arc::new(RuleBook {
            store,
            bindings,
            clock,
            rules: RwLock::new(rules),
            members: RwLock::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            generation: Default::default(),
            changed: Default::default(),
            evaluations: Default::default(),
            errors: Default::default(),
            busy_us: Default::default(),
        });
        book.refresh_queries(twins, None);
        Ok(book)
    }

    /// Checks, compiles and stores a rule: a new one (version 1), or a new
    /// version of an existing one (`replace`).
    pub async fn put(
        &self,
        tenant: &str,
        mut spec: RuleSpec,
        replace: Option<&str>,
        twins: &TwinGraphs,
    ) -> Result<Arc<Rule>, RuleError> {
        let id = match (replace, &spec.id) {
            (Some(id), Some(given)) if given != id => {
                return Err(field(400, "id", "differs from the id in the path"))
            }
            (Some(id), _) => id.to_string(),
            (None, Some(given)) => given.clone(),
            (None, None) => format!("r-{}", crate::auth::random_secret(6).to_lowercase()),
        };
        twinhub_model::ids::check_id("id", &id).map_err(|e| field(400, &e.field, e.rule))?;
        spec.id = None;
        let members = spec
            .select
            .check(tenant, twins, &self.store)
            .map_err(|(f, rule)| field(400, f, rule))?;
        let lookup = self.bindings.clone();
        let mut rule = Rule::compile(tenant, &id, spec, &|b| lookup(tenant, b))?;
        let key = (tenant.to_string(), id.clone());
        let current = self.get(tenant, &id);
        match (replace, &current) {
            (None, Some(_)) => {
                return Err(RuleError::Conflict(format!("rule {id} already exists")))
            }
            (Some(_), None) => return Err(RuleError::NotFound(format!("rule {id} not found"))),
            _ => {}
        }
        let now = self.clock.now_us();
        rule.version = current.as_ref().map_or(1, |c| c.version + 1);
        rule.created_at = current.as_ref().map_or(now, |c| c.created_at);
        rule.updated_at = now;
        let row = RuleRow {
            tenant: tenant.into(),
            id: id.clone(),
            version: rule.version,
            enabled: rule.spec.enabled,
            body: serde_json::to_string(&rule.spec).unwrap_or_default(),
            created_at: rule.created_at,
            updated_at: now,
        };
        let rule = Arc::new(rule);
        // The engine's durable position is created with the rule, in its
        // transaction: every event committed after the rule exists is
        // evaluated, however late the engine's thread gets to run (opening
        // the position there, at the then end of the stream, lost the
        // events committed in between).
        self.store
            .write(move |ctx| {
                rows::put_rule(ctx.tx, &row)?;
                ctx.ensure_consumer(engine::CONSUMER).map(|_| ())
            })
            .await?;
        if let Some(m) = members {
            self.members
                .write()
                .expect("members")
                .insert(key.clone(), Arc::new(m));
        }
        self.rules
            .write()
            .expect("rules")
            .insert(key.clone(), rule.clone());
        self.status.lock().expect("status").remove(&key);
        self.bump();
        Ok(rule)
    }

    /// Enables or disables a rule (a new version).
    pub async fn set_enabled(
        &self,
        tenant: &str,
        id: &str,
        enabled: bool,
        twins: &TwinGraphs,
    ) -> Result<Arc<Rule>, RuleError> {
        let current = self
            .get(tenant, id)
            .ok_or_else(|| RuleError::NotFound(format!("rule {id} not found")))?;
        let mut spec = current.spec.clone();
        spec.enabled = enabled;
        self.put(tenant, spec, Some(id), twins).await
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, RuleError> {
        let (t, i) = (tenant.to_string(), id.to_string());
        let gone = self
            .store
            .write(move |ctx| rows::delete_rule(ctx.tx, &t, &i))
            .await?;
        let key = (tenant.to_string(), id.to_string());
        self.rules.write().expect("rules").remove(&key);
        self.members.write().expect("members").remove(&key);
        self.status.lock().expect("status").remove(&key);
        self.bump();
        Ok(gone)
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_one();
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Rule>> {
        self.rules
            .read()
            .expect("rules")
            .get(&(tenant.to_string(), id.to_string()))
            .cloned()
    }

    pub fn list(&self, tenant: &str) -> Vec<Arc<Rule>> {
        let mut v: Vec<Arc<Rule>> = self
            .rules
            .read()
            .expect("rules")
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, r)| r.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// No rule in any tenant.
    pub fn is_empty(&self) -> bool {
        self.rules.read().expect("rules").is_empty()
    }

    pub fn all(&self) -> Vec<Arc<Rule>> {
        self.rules
            .read()
            .expect("rules")
            .values()
            .cloned()
            .collect()
    }

    pub fn status(&self, tenant: &str, id: &str) -> RuleStatus {
        let mut st = self
            .status
            .lock()
            .expect("status")
            .get(&(tenant.to_string(), id.to_string()))
            .cloned()
            .unwrap_or_default();
        if let Some(r) = self.get(tenant, id) {
            use std::sync::atomic::Ordering::Relaxed;
            st.evaluations = r.counters.evaluations.load(Relaxed);
            st.errors = r.counters.errors.load(Relaxed);
        }
        st
    }

    /// Records one evaluation of a rule for a twin: two counters, and the
    /// lock only when something fails or stops failing.
    pub fn record(&self, rule: &Rule, twin: &str, outcome: Result<(), String>, at: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        rule.counters.evaluations.fetch_add(1, Relaxed);
        self.evaluations.fetch_add(1, Relaxed);
        match outcome {
            Ok(()) if !rule.counters.failing.load(Relaxed) => {}
            Ok(()) => {
                let mut all = self.status.lock().expect("status");
                let s = all
                    .entry((rule.tenant.clone(), rule.id.clone()))
                    .or_default();
                s.failing.remove(twin);
                if s.failing.is_empty() {
                    rule.counters.failing.store(false, Relaxed);
                }
            }
            Err(message) => {
                rule.counters.errors.fetch_add(1, Relaxed);
                self.errors.fetch_add(1, Relaxed);
                rule.counters.failing.store(true, Relaxed);
                let mut all = self.status.lock().expect("status");
                let s = all
                    .entry((rule.tenant.clone(), rule.id.clone()))
                    .or_default();
                s.failing.insert(twin.to_string(), message.clone());
                s.last_error = Some((twin.to_string(), message, at));
            }
        }
    }

    pub fn add_busy(&self, d: std::time::Duration) {
        self.busy_us
            .fetch_add(d.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Seconds the engine spent evaluating since start.
    pub fn busy_seconds(&self) -> f64 {
        self.busy_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6
    }

    /// Evaluations and errors of every rule since start (for /metrics).
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.evaluations.load(Relaxed), self.errors.load(Relaxed))
    }

    pub fn selects(&self, rule: &Rule, twin: &str, twins: &TwinGraphs) -> bool {
        let members = self.members.read().expect("members");
        let m = members.get(&(rule.tenant.clone(), rule.id.clone()));
        rule.spec
            .select
            .matches(&rule.tenant, twin, twins, m.map(|m| &**m))
    }

    pub fn selected_now(&self, rule: &Rule, twins: &TwinGraphs) -> Vec<String> {
        let members = self.members.read().expect("members");
        let m = members.get(&(rule.tenant.clone(), rule.id.clone()));
        rule.spec
            .select
            .twins_now(&rule.tenant, twins, m.map(|m| &**m))
    }

    /// Re-evaluates the queries of query rules (of one tenant, or all).
    pub fn refresh_queries(&self, twins: &TwinGraphs, tenant: Option<&str>) {
        let list: Vec<Arc<Rule>> = self
            .all()
            .into_iter()
            .filter(|r| r.spec.select.query.is_some() && tenant.is_none_or(|t| t == r.tenant))
            .collect();
        for r in list {
            let q = r.spec.select.query.as_deref().unwrap_or_default();
            if let Ok(m) = crate::twins::select::query_members(&r.tenant, q, twins, &self.store) {
                self.members
                    .write()
                    .expect("members")
                    .insert((r.tenant.clone(), r.id.clone()), Arc::new(m));
            }
        }
    }
}
