//! The rule engine: one task, a durable consumer of the fan-out
//! (`Store::consumer("rules")`). It takes committed events in commit
//! order, keeps each twin's live values as the events tell them, evaluates
//! the rules that select the twin, and commits — in one transaction — the
//! alarm changes, the rule states that changed and its position. A crash
//! before that commit replays the batch onto the state as it was: no
//! alarm is counted twice, none is lost. No-data rules run on the injected
//! clock with a deadline heap (not a scan of every twin).

use super::alarms::{Alarms, Intent};
use super::commit::InFlight;
use super::{Rule, RuleBook, RuleKind};
use crate::clock::SharedClock;
use crate::events::{Event, Kind};
use crate::store::rules as rows;
use crate::store::Store;
use crate::twins::TwinGraphs;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use twinhub_model::rules::condition::{ConditionState, Observation, Transition};
use twinhub_model::rules::expr::{with_scope, MAPS};
use twinhub_model::rules::stats::Rolling;

/// The alarm change a transition asks for (none for `None`): raises and
/// repeats count on the open alarm, a clear closes it.
/// The alarm change a transition asks for; `value` (the alarm's last
/// value) is made only when there is one.
fn intent(
    rule: &Rule,
    originator: &str,
    t: Transition,
    value: impl FnOnce() -> Value,
    ts: i64,
) -> Option<Intent> {
    if t == Transition::None {
        return None;
    }
    let value = value();
    let (tenant, originator, kind) = (
        rule.tenant.clone(),
        originator.to_string(),
        rule.alarm.kind.clone(),
    );
    match t {
        Transition::Raise | Transition::Repeat => Some(Intent::Raise {
            tenant,
            originator,
            kind,
            severity: rule.alarm.severity,
            rule: rule.id.clone(),
            propagate: rule.alarm.propagate.clone(),
            value,
            ts,
        }),
        Transition::Clear => Some(Intent::Clear {
            tenant,
            originator,
            kind,
            rule: rule.id.clone(),
            value,
            ts,
        }),
        Transition::None => None,
    }
}

/// The plain values among an evaluation's variables (not the maps): an
/// alarm's last value.
fn shown(vars: &[(&str, Value)]) -> Value {
    Value::Object(
        vars.iter()
            .filter(|(k, _)| !MAPS.contains(k))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

/// What a rule looks at: one telemetry message (with its source), or a
/// twin change (no values).
#[derive(Clone, Copy)]
pub(super) struct Seen<'a> {
    pub message: Option<twinhub_codec::Message<'a>>,
    pub source: &'a str,
}

/// Whether what was seen can change what a rule's expressions read: a
/// twin change always can; telemetry only when it carries one of the
/// names (or the rule reads the maps). Messages of other properties —
/// derived values among them — do not evaluate it.
pub(super) fn touches(rule: &Rule, seen: Seen<'_>) -> bool {
    let Some(m) = seen.message else {
        return true;
    };
    rule.names
        .iter()
        .any(|n| m.get(n).is_some() || MAPS.contains(&n.as_str()))
}

/// The durable consumer's name.
pub const CONSUMER: &str = "rules";

/// Runs the engine on a thread of its own until shutdown. Evaluating a
/// batch of a few thousand events is CPU work of tens of milliseconds: on
/// a shared async worker it would hold up every request queued behind it
/// (on two cores, half of them); on its own thread the OS shares the cores
/// at a fine grain.
pub fn spawn(
    engine: Engine,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let started = std::thread::Builder::new()
        .name("twinhub-rules".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rule engine runtime");
            rt.block_on(engine.run(shutdown));
            let _ = done_tx.send(());
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "the rule engine's thread could not start");
    }
    tokio::spawn(async move {
        let _ = done_rx.await;
    })
}

/// What is kept per rule × twin (persisted as JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum State {
    Condition(ConditionState),
    NoData {
        last_seen: i64,
        raised: bool,
    },
    Statistical {
        rolling: Rolling,
        cond: ConditionState,
    },
}

pub(super) type StateKey = (String, String, String);

/// A state's key borrowed from what is at hand (tenant, rule, twin): looks
/// states up without making three strings per rule per message. Hashes as
/// `StateKey` does (a tuple hashes its fields in order, a `String` as its
/// `str`).
#[derive(Hash, Clone, Copy)]
struct KeyRef<'a>(&'a str, &'a str, &'a str);

impl hashbrown::Equivalent<StateKey> for KeyRef<'_> {
    fn equivalent(&self, k: &StateKey) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

impl KeyRef<'_> {
    fn owned(self) -> StateKey {
        (self.0.to_string(), self.1.to_string(), self.2.to_string())
    }
}

/// The states a batch changed (written with its commit).
pub(super) type Dirty = hashbrown::HashSet<StateKey>;

fn mark(dirty: &mut Dirty, k: KeyRef<'_>) {
    if !dirty.contains(&k) {
        dirty.insert(k.owned());
    }
}

/// Each twin's live values, by tenant then twin (looked up by `&str`).
type LiveValues = HashMap<String, HashMap<String, Map<String, Value>>>;

/// What the engine works with (handles, given by the composition root).
pub struct EngineDeps {
    pub book: Arc<RuleBook>,
    pub alarms: Arc<Alarms>,
    pub twins: Arc<TwinGraphs>,
    pub store: Store,
    pub clock: SharedClock,
    /// Calculated properties enter through it, like any derived value.
    pub pipeline: Arc<crate::pipeline::Pipeline>,
    /// For command actions (None without an MQTT listener).
    pub broker: Option<Arc<crate::mqtt::Broker>>,
    pub settings: super::RulesConfig,
    /// (tenant, model, feature, psi) of the active model versions.
    pub drift: Arc<dyn Fn() -> Vec<(String, String, String, f64)> + Send + Sync>,
}

/// A calculated value to store: (tenant, twin, rule, property, value, ts).
pub(super) type Derived = (String, String, Arc<Rule>, String, Value, i64);

pub struct Engine {
    pub(super) deps: EngineDeps,
    book: Arc<RuleBook>,
    pub(super) alarms: Arc<Alarms>,
    pub(super) twins: Arc<TwinGraphs>,
    pub(super) store: Store,
    pub(super) clock: SharedClock,
    pub(super) states: hashbrown::HashMap<StateKey, State>,
    /// Each twin's live values, as the events told them.
    values: LiveValues,
    deadlines: BinaryHeap<Reverse<(i64, StateKey)>>,
    /// Enabled rules by tenant, rebuilt when the book changes.
    by_tenant: HashMap<String, Vec<Arc<Rule>>>,
    generation: u64,
    /// The enabled rules selecting each twin, by tenant (cleared when the
    /// rules or the tenant's graph change).
    twin_rules: HashMap<String, HashMap<String, Arc<[Arc<Rule>]>>>,
    /// When each rule last acted for a twin (throttling).
    pub(super) last_action: HashMap<StateKey, i64>,
    pub(super) last_retire: i64,
    last_drift: i64,
}

impl Engine {
    pub fn new(deps: EngineDeps) -> Engine {
        Engine {
            book: deps.book.clone(),
            alarms: deps.alarms.clone(),
            twins: deps.twins.clone(),
            store: deps.store.clone(),
            clock: deps.clock.clone(),
            deps,
            states: hashbrown::HashMap::new(),
            values: HashMap::new(),
            deadlines: BinaryHeap::new(),
            by_tenant: HashMap::new(),
            generation: u64::MAX,
            last_action: HashMap::new(),
            last_retire: 0,
            last_drift: 0,
            twin_rules: HashMap::new(),
        }
    }

    /// The enabled rules that select `twin` (cached).
    fn rules_of(&mut self, tenant: &str, twin: &str) -> Arc<[Arc<Rule>]> {
        if let Some(r) = self.twin_rules.get(tenant).and_then(|m| m.get(twin)) {
            return r.clone();
        }
        let rules: Arc<[Arc<Rule>]> = self
            .by_tenant
            .get(tenant)
            .map(|all| {
                all.iter()
                    .filter(|r| self.book.selects(r, twin, &self.twins))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        self.twin_rules
            .entry(tenant.to_string())
            .or_default()
            .insert(twin.to_string(), rules.clone());
        rules
    }

    pub(super) fn book(&self) -> &RuleBook {
        &self.book
    }

    /// Runs until shutdown.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        match self.store.read(|c| rows::load_states(c)) {
            Ok(rows) => {
                for (tenant, rule, twin, body) in rows {
                    if let Ok(s) = serde_json::from_str::<State>(&body) {
                        self.states.insert((tenant, rule, twin), s);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "rule states could not be read"),
        }
        // The engine follows the fan-out durably only while rules exist:
        // without any, nothing is kept in the outbox for it (ingest pays
        // nothing for rules nobody wrote).
        let mut consumer: Option<crate::store::outbox::Consumer> = None;
        let mut pending: Option<InFlight> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let wanted = !self.book.is_empty();
            if wanted && consumer.is_none() {
                match self.store.consumer(CONSUMER).await {
                    Ok(c) => consumer = Some(c),
                    Err(e) => {
                        tracing::error!(error = %e, "the rule engine cannot open its position; retrying")
                    }
                }
            } else if !wanted && consumer.is_some() {
                if !self.finish(&mut pending, &mut consumer).await {
                    return;
                }
                consumer = None;
                self.values.clear();
                // Only if no rule was written meanwhile (its write created
                // the position this would drop).
                let res = self
                    .store
                    .write(|ctx| match rows::count_rules(ctx.tx)? {
                        0 => ctx.drop_consumer(CONSUMER).map(|_| ()),
                        _ => Ok(()),
                    })
                    .await;
                if let Err(e) = res {
                    tracing::warn!(error = %e, "the rule engine's position could not be dropped");
                }
            }
            let mut intents = Vec::new();
            let mut dirty = Dirty::new();
            let mut derived: Vec<Derived> = Vec::new();
            let mut last = None;
            tokio::select! {
                r = async { consumer.as_mut().expect("consumer").next(2000).await }, if consumer.is_some() => match r {
                    Ok(evs) => {
                        let busy = std::time::Instant::now();
                        self.refresh_rules();
                        let mut stale = HashSet::new();
                        for e in &evs {
                            self.on_event(e, &mut intents, &mut dirty, &mut stale, &mut derived);
                        }
                        for t in stale {
                            self.book.refresh_queries(&self.twins, Some(&t));
                        }
                        last = evs.last().map(|e| e.id);
                        self.book.add_busy(busy.elapsed());
                        if busy.elapsed() > Duration::from_millis(8) {
                            tracing::debug!(events = evs.len(), ms = busy.elapsed().as_secs_f64() * 1e3, "slow rule evaluation");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the rule engine lost the event stream");
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.refresh_rules();
                    self.expire(&mut intents, &mut dirty);
                    self.check_drift(&mut intents, &mut dirty);
                }
                done = async { (&mut pending.as_mut().expect("in flight").task).await }, if pending.is_some() => {
                    let p = pending.take().expect("in flight");
                    if !self.committed(p, done, &mut consumer).await {
                        return;
                    }
                    continue;
                }
                _ = self.book.changed.notified() => {
                    self.refresh_rules();
                    continue;
                }
                _ = shutdown.changed() => return,
            }
            if intents.is_empty() && dirty.is_empty() && last.is_none() {
                continue;
            }
            let derived = self.derived_groups(derived);
            let states = self.snapshot(dirty);
            // In order: the previous batch's commit first (its effects
            // come before these), then this one's is sent and the engine
            // evaluates the next batch while the writer commits it.
            if !self.finish(&mut pending, &mut consumer).await {
                return;
            }
            pending = Some(InFlight::start(
                self.committer(),
                intents,
                states,
                last,
                derived,
                shutdown.clone(),
            ));
            // Lets the commit reach the writer's queue before evaluating.
            tokio::task::yield_now().await;
        }
    }

    fn refresh_rules(&mut self) {
        let generation = self
            .book
            .generation
            .load(std::sync::atomic::Ordering::SeqCst);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        self.twin_rules.clear();
        self.by_tenant.clear();
        // Deadlines are rebuilt from the states: one entry per armed twin
        // of an enabled no-data rule.
        self.deadlines.clear();
        let now = self.clock.now_us();
        for r in self.book.all() {
            if !r.spec.enabled {
                continue;
            }
            if r.spec.kind == RuleKind::NoData {
                // Every selected twin is watched from now (or from its
                // last point), so a twin silent from the start is caught.
                for twin in self.book.selected_now(&r, &self.twins) {
                    let key = (r.tenant.clone(), r.id.clone(), twin);
                    let st = self.states.entry(key.clone()).or_insert(State::NoData {
                        last_seen: now,
                        raised: false,
                    });
                    if let State::NoData {
                        last_seen,
                        raised: false,
                    } = st
                    {
                        self.deadlines
                            .push(Reverse((*last_seen + r.timeout_us, key)));
                    }
                }
            }
            self.by_tenant.entry(r.tenant.clone()).or_default().push(r);
        }
        // Live values are followed only for tenants with rules: those of
        // the others would go stale, so a tenant's first rule starts from
        // the store's latest values again.
        let by_tenant = &self.by_tenant;
        self.values.retain(|t, _| by_tenant.contains_key(t));
    }

    fn on_event(
        &mut self,
        e: &Event,
        intents: &mut Vec<Intent>,
        dirty: &mut Dirty,
        stale: &mut HashSet<String>,
        derived: &mut Vec<Derived>,
    ) {
        let Some(twin) = e.twin.as_deref() else {
            return;
        };
        match e.kind {
            Kind::Telemetry => {
                let Some(t) = e.data.telemetry() else {
                    return;
                };
                if !self.by_tenant.contains_key(&e.tenant) {
                    return;
                }
                // Message by message, in order: `for` and hysteresis see
                // each point at its own time.
                for (ts, m) in t.messages() {
                    let store = &self.store;
                    let of_tenant = match self.values.get_mut(e.tenant.as_str()) {
                        Some(m) => m,
                        None => self.values.entry(e.tenant.clone()).or_default(),
                    };
                    let live = match of_tenant.get_mut(twin) {
                        Some(l) => l,
                        // First sight of the twin: its latest stored
                        // values, so a rule reading two properties sent
                        // apart works from its first message.
                        None => of_tenant.entry(twin.to_string()).or_insert_with(|| {
                            store
                                .latest_of_twin(&e.tenant, twin)
                                .into_iter()
                                .map(|(k, p)| (k, p.value.to_json()))
                                .collect()
                        }),
                    };
                    for (k, v, _) in m.values() {
                        match live.get_mut(k) {
                            Some(slot) => *slot = v.to_json(),
                            None => {
                                live.insert(k.to_string(), v.to_json());
                            }
                        }
                    }
                    let seen = Seen {
                        message: Some(m),
                        source: &t.source,
                    };
                    self.evaluate(&e.tenant, twin, ts, seen, intents, dirty, derived);
                }
            }
            Kind::Twin | Kind::Relationship => {
                stale.insert(e.tenant.clone());
                // The graph changed: which rules select which twin may too.
                self.twin_rules.remove(&e.tenant);
                if e.data.get("op").and_then(Value::as_str) == Some("delete")
                    && e.kind == Kind::Twin
                {
                    if let Some(m) = self.values.get_mut(e.tenant.as_str()) {
                        m.remove(twin);
                    }
                    return;
                }
                if e.kind == Kind::Relationship {
                    return;
                }
                let seen = Seen {
                    message: None,
                    source: "",
                };
                let now = self.clock.now_us();
                self.evaluate(&e.tenant, twin, now, seen, intents, dirty, derived);
            }
            _ => {}
        }
    }

    /// Runs the rules of a twin over one thing seen at `ts`.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &mut self,
        tenant: &str,
        twin: &str,
        ts: i64,
        seen: Seen<'_>,
        intents: &mut Vec<Intent>,
        dirty: &mut Dirty,
        derived: &mut Vec<Derived>,
    ) {
        let telemetry = seen.message.is_some();
        let rules = self.rules_of(tenant, twin);
        for rule in rules.iter() {
            let key = KeyRef(tenant, &rule.id, twin);
            match rule.spec.kind {
                RuleKind::Condition | RuleKind::ModelOutput => {
                    // A rule not yet evaluated for this twin (or failing:
                    // no state) always runs, so a misspelt name shows up.
                    if touches(rule, seen) || !self.states.contains_key(&key) {
                        self.condition(rule, twin, ts, key, intents, dirty)
                    }
                }
                RuleKind::Calculated if telemetry => self.calculate(&rule, twin, ts, seen, derived),
                RuleKind::Calculated => {}
                RuleKind::NoData if telemetry => {
                    let now = self.clock.now_us();
                    self.book.record(rule, twin, Ok(()), 0);
                    let fresh = State::NoData {
                        last_seen: now,
                        raised: false,
                    };
                    let was = match self.states.get_mut(&key) {
                        Some(st) => Some(std::mem::replace(st, fresh)),
                        None => self.states.insert(key.owned(), fresh),
                    };
                    // One heap entry per armed twin: a point only moves
                    // `last_seen`; `expire` re-arms an entry the point
                    // made early. A new or cleared twin is armed here.
                    match was {
                        Some(State::NoData { raised: false, .. }) => {}
                        Some(State::NoData { raised: true, .. }) => {
                            intents.push(Intent::Clear {
                                tenant: tenant.to_string(),
                                originator: twin.to_string(),
                                kind: rule.alarm.kind.clone(),
                                rule: rule.id.clone(),
                                value: Value::Null,
                                ts,
                            });
                            self.deadlines
                                .push(Reverse((now + rule.timeout_us, key.owned())));
                        }
                        _ => self
                            .deadlines
                            .push(Reverse((now + rule.timeout_us, key.owned()))),
                    }
                    mark(dirty, key);
                }
                RuleKind::NoData => {}
                RuleKind::Statistical if telemetry => {
                    self.statistic(&rule, twin, ts, seen, key, intents, dirty)
                }
                RuleKind::Statistical => {}
            }
        }
    }

    fn condition(
        &mut self,
        rule: &Rule,
        twin: &str,
        ts: i64,
        key: KeyRef<'_>,
        intents: &mut Vec<Intent>,
        dirty: &mut Dirty,
    ) {
        let Some(cond) = &rule.condition else {
            return;
        };
        let vars = self.vars(&rule.tenant, twin, &rule.names);
        let refs: Vec<(&str, &Value)> = vars.iter().map(|(k, v)| (*k, v)).collect();
        // One binding for the condition and its clear.
        let (raise, clear) = with_scope(&refs, |scope| {
            (
                cond.eval_bool_in(scope),
                rule.clear
                    .as_ref()
                    .map(|c| c.eval_bool_in(scope))
                    .transpose(),
            )
        });
        let (raise, clear) = match (raise, clear) {
            (Ok(r), Ok(c)) => (r, c),
            (Err(e), _) | (_, Err(e)) => {
                self.book
                    .record(rule, twin, Err(e.message), self.clock.now_us());
                return;
            }
        };
        self.book.record(rule, twin, Ok(()), 0);
        if !self.states.contains_key(&key) {
            self.states
                .insert(key.owned(), State::Condition(ConditionState::default()));
        }
        let Some(st) = self.states.get_mut(&key) else {
            return;
        };
        let State::Condition(cs) = st else {
            *st = State::Condition(ConditionState::default());
            return;
        };
        let before = *cs;
        let t = cs.step(Observation { ts, raise, clear }, rule.for_us);
        if *cs != before {
            mark(dirty, key);
        }
        intents.extend(intent(rule, twin, t, || shown(&vars), ts));
    }

    #[allow(clippy::too_many_arguments)]
    fn statistic(
        &mut self,
        rule: &Rule,
        twin: &str,
        ts: i64,
        seen: Seen<'_>,
        key: KeyRef<'_>,
        intents: &mut Vec<Intent>,
        dirty: &mut Dirty,
    ) {
        let (Some(p), Some(spec)) = (&rule.stats, &rule.spec.statistic) else {
            return;
        };
        let Some(v) = seen.message.and_then(|m| m.get(&spec.property)) else {
            return;
        };
        let v = v.to_json();
        let Some(x) = v.as_f64() else {
            self.book.record(
                rule,
                twin,
                Err(format!("{} is not a number", spec.property)),
                self.clock.now_us(),
            );
            return;
        };
        self.book.record(rule, twin, Ok(()), 0);
        if !self.states.contains_key(&key) {
            self.states.insert(
                key.owned(),
                State::Statistical {
                    rolling: Rolling::default(),
                    cond: ConditionState::default(),
                },
            );
        }
        let Some(st) = self.states.get_mut(&key) else {
            return;
        };
        let State::Statistical { rolling, cond } = st else {
            *st = State::Statistical {
                rolling: Rolling::default(),
                cond: ConditionState::default(),
            };
            return;
        };
        mark(dirty, key);
        let Some(anomalous) = rolling.observe(p, ts, x) else {
            return;
        };
        let obs = Observation {
            ts,
            raise: anomalous,
            clear: Some(!anomalous),
        };
        let t = cond.step(obs, rule.for_us);
        let last = || serde_json::json!({ spec.property.as_str(): v });
        intents.extend(intent(rule, twin, t, last, ts));
    }

    /// The variables an expression reads (a name with no value is left
    /// out: the evaluation fails naming it).
    pub(super) fn vars<'n>(
        &self,
        tenant: &str,
        twin: &str,
        names: &'n [String],
    ) -> Vec<(&'n str, Value)> {
        let of_tenant = self.values.get(tenant);
        let live = of_tenant.and_then(|m| m.get(twin));
        let props_of = |id: &str| -> Map<String, Value> {
            let mut m = self
                .twins
                .read(tenant, |g| g.twins.get(id).map(|t| t.props.clone()))
                .unwrap_or_default();
            if let Some(l) = of_tenant.and_then(|m| m.get(id)) {
                for (k, v) in l {
                    m.insert(k.clone(), v.clone());
                }
            }
            m
        };
        let mut out: Vec<(&str, Value)> = Vec::with_capacity(names.len());
        for n in names {
            if out.iter().any(|(k, _)| *k == n) {
                continue;
            }
            let v = match n.as_str() {
                "props" => Value::Object(props_of(twin)),
                "twin" => {
                    let model = self
                        .twins
                        .read(tenant, |g| g.twins.get(twin).map(|t| t.model.to_string()));
                    serde_json::json!({"id": twin, "model": model})
                }
                "related" => {
                    let targets: Vec<(String, String)> = self.twins.read(tenant, |g| {
                        g.outgoing(twin)
                            .map(|r| (r.name.clone(), r.target.to_string()))
                            .collect()
                    });
                    let mut m = Map::new();
                    for (name, target) in targets {
                        m.entry(name)
                            .or_insert_with(|| Value::Object(props_of(&target)));
                    }
                    Value::Object(m)
                }
                name => {
                    let v = live.and_then(|l| l.get(name)).cloned().or_else(|| {
                        self.twins.read(tenant, |g| {
                            g.twins.get(twin).and_then(|t| t.props.get(name).cloned())
                        })
                    });
                    match v {
                        Some(v) => v,
                        None => continue,
                    }
                }
            };
            out.push((n.as_str(), v));
        }
        out
    }

    /// Drift checks, every 10 s: a model whose largest feature PSI is above
    /// the rule's raises (originator `ml:<model>`), and clears below it.
    fn check_drift(&mut self, intents: &mut Vec<Intent>, dirty: &mut Dirty) {
        let now = self.clock.now_us();
        if now - self.last_drift < 10_000_000 {
            return;
        }
        self.last_drift = now;
        let rules: Vec<Arc<Rule>> = self
            .by_tenant
            .values()
            .flatten()
            .filter(|r| r.drift_model.is_some())
            .cloned()
            .collect();
        if rules.is_empty() {
            return;
        }
        let gauges = (self.deps.drift)();
        for rule in rules {
            let (Some(model), Some(limit)) = (
                rule.drift_model.as_deref(),
                rule.spec.model_output.as_ref().and_then(|m| m.psi),
            ) else {
                continue;
            };
            let worst = gauges
                .iter()
                .filter(|(t, m, _, _)| *t == rule.tenant && m == model)
                .max_by(|a, b| a.3.total_cmp(&b.3));
            let Some((_, _, feature, psi)) = worst else {
                continue;
            };
            let originator = format!("ml:{model}");
            let key = (rule.tenant.clone(), rule.id.clone(), originator.clone());
            let st = self
                .states
                .entry(key.clone())
                .or_insert(State::Condition(ConditionState::default()));
            let State::Condition(cs) = st else {
                continue;
            };
            let over = *psi > limit;
            let before = *cs;
            let t = cs.step(
                Observation {
                    ts: now,
                    raise: over,
                    clear: Some(!over),
                },
                rule.for_us,
            );
            if *cs != before {
                dirty.insert(key);
            }
            let value = serde_json::json!({"feature": feature, "psi": psi});
            // A drift alarm counts checks, not repeats of each one.
            if t != Transition::Repeat {
                intents.extend(intent(&rule, &originator, t, || value, now));
            }
        }
    }

    /// No-data rules whose deadline passed raise.
    fn expire(&mut self, intents: &mut Vec<Intent>, dirty: &mut Dirty) {
        let now = self.clock.now_us();
        while let Some(Reverse((deadline, _))) = self.deadlines.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, key))) = self.deadlines.pop() else {
                break;
            };
            let Some(rule) = self.book.get(&key.0, &key.1).filter(|r| r.spec.enabled) else {
                continue;
            };
            let Some(State::NoData { last_seen, raised }) = self.states.get_mut(&key) else {
                continue;
            };
            // Raised: re-armed by the point that clears it.
            if *raised {
                continue;
            }
            // A later point moved the deadline: wait for the new one.
            let due = *last_seen + rule.timeout_us;
            if due > deadline {
                self.deadlines.push(Reverse((due, key)));
                continue;
            }
            *raised = true;
            dirty.insert(key.clone());
            intents.push(Intent::Raise {
                tenant: key.0.clone(),
                originator: key.2.clone(),
                kind: rule.alarm.kind.clone(),
                severity: rule.alarm.severity,
                rule: rule.id.clone(),
                propagate: rule.alarm.propagate.clone(),
                value: serde_json::json!({"last_seen": twinhub_model::time::to_epoch_ms_json(*last_seen)}),
                ts: now,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A state stored under its owned key is found by the borrowed
        /// one, and only by its own: a mismatch of hashing would lose rule
        /// states (a condition restarting, a duplicate no-data timer).
        #[test]
        fn borrowed_keys_find_their_states(
            keys in proptest::collection::hash_set(("[a-c]{0,3}", "[a-c]{0,3}", "[a-c]{0,3}"), 1..40),
            probe in ("[a-c]{0,3}", "[a-c]{0,3}", "[a-c]{0,3}"),
        ) {
            let mut states: hashbrown::HashMap<StateKey, usize> = hashbrown::HashMap::new();
            for (i, (a, b, c)) in keys.iter().enumerate() {
                states.insert((a.clone(), b.clone(), c.clone()), i);
            }
            for (i, (a, b, c)) in keys.iter().enumerate() {
                prop_assert_eq!(states.get(&KeyRef(a, b, c)), Some(&i));
            }
            let (a, b, c) = &probe;
            prop_assert_eq!(states.get(&KeyRef(a, b, c)).is_some(), keys.contains(&probe));
            let mut dirty = Dirty::new();
            mark(&mut dirty, KeyRef(a, b, c));
            mark(&mut dirty, KeyRef(a, b, c));
            prop_assert_eq!(dirty.len(), 1);
        }
    }
}
