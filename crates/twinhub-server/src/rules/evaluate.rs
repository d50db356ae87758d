//! What the engine does with one committed event: the rules selecting
//! its twin, run message by message in order — conditions (one CEL
//! binding for the condition and its clear, `for`, hysteresis),
//! statistics, no-data arming, calculated values — into alarm intents and
//! the states that changed, which `engine.rs` commits with its position;
//! and the periodic drift checks of model-output rules.

use super::alarms::Intent;
use super::engine::{
    mark, no_data_slack, Derived, Dirty, Engine, KeyRef, LiveTwin, LiveValues, State,
};
use super::{Rule, RuleKind};
use crate::events::{Event, Kind};
use serde_json::{Map, Value};
use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use twinhub_model::rules::condition::{ConditionState, Observation, Transition};
use twinhub_model::rules::expr::{with_lookup, Bound, Found, Lookup, MAPS};
use twinhub_model::rules::stats::Rolling;

/// The alarm change a transition asks for (none for `None`): raises and
/// repeats count on the open alarm, a clear closes it. `value` (the
/// alarm's last value) is made only when there is a change.
pub(super) fn intent(
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

impl Engine {
    pub(super) fn on_event(
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
                                .map(|(k, p)| (k, Bound::from_value(&p.value)))
                                .collect()
                        }),
                    };
                    for (k, v, _) in m.values() {
                        match live.get_mut(k) {
                            Some(slot) => slot.set(v),
                            None => {
                                live.insert(k.to_string(), Bound::from_value(v));
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
                    // The row waits until `last_seen` moved by the slack
                    // (read back late-biased: `State::restored`).
                    let unsaved_since = match self.states.get(&key) {
                        Some(State::NoData {
                            raised: false,
                            saved,
                            ..
                        }) if now.saturating_sub(*saved) < no_data_slack(rule.timeout_us) => {
                            Some(*saved)
                        }
                        _ => None,
                    };
                    let fresh = State::NoData {
                        last_seen: now,
                        raised: false,
                        saved: unsaved_since.unwrap_or(now),
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
                    if unsaved_since.is_none() {
                        mark(dirty, key);
                    }
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
        let view = TwinView::of(&self.values, &self.twins, &rule.tenant, twin);
        // One scope for the condition and its clear.
        let (raise, clear) = with_lookup(&view, |scope| {
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
        intents.extend(intent(rule, twin, t, || view.shown(&rule.names), ts));
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

    /// Drift checks, every 10 s: a model whose largest feature PSI is above
    /// the rule's raises (originator `ml:<model>`), and clears below it.
    pub(super) fn check_drift(&mut self, intents: &mut Vec<Intent>, dirty: &mut Dirty) {
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
            // A drift alarm counts checks, not repeats of each one; a
            // raise whose alarm is open is one replayed after a crash (the
            // alarm changes commit before the states).
            let reraised = t == Transition::Raise
                && self
                    .alarms
                    .is_open(&rule.tenant, &originator, &rule.alarm.kind);
            if t != Transition::Repeat && !reraised {
                intents.extend(intent(&rule, &originator, t, || value, now));
            }
        }
    }
}

/// What one evaluation of a twin's rules reads, found by name when the
/// expression reads it: a live value in place; else the twin's stored
/// property; `props`, `twin` and `related` made once per evaluation when
/// read. A name with neither is not found: the evaluation fails naming
/// it.
pub(super) struct TwinView<'a> {
    tenant: &'a str,
    twin: &'a str,
    live: Option<&'a LiveTwin>,
    of_tenant: Option<&'a hashbrown::HashMap<String, LiveTwin>>,
    twins: &'a crate::twins::TwinGraphs,
    props: OnceLock<Bound>,
    related: OnceLock<Bound>,
}

impl<'a> TwinView<'a> {
    pub(super) fn of(
        values: &'a LiveValues,
        twins: &'a crate::twins::TwinGraphs,
        tenant: &'a str,
        twin: &'a str,
    ) -> TwinView<'a> {
        let of_tenant = values.get(tenant);
        TwinView {
            tenant,
            twin,
            live: of_tenant.and_then(|m| m.get(twin)),
            of_tenant,
            twins,
            props: OnceLock::new(),
            related: OnceLock::new(),
        }
    }

    /// A twin's stored properties with its live values over them.
    fn props_of(&self, id: &str) -> Map<String, Value> {
        let mut m = self
            .twins
            .read(self.tenant, |g| g.twins.get(id).map(|t| t.props.clone()))
            .unwrap_or_default();
        if let Some(l) = self.of_tenant.and_then(|m| m.get(id)) {
            for (k, v) in l {
                m.insert(k.clone(), v.to_json());
            }
        }
        m
    }

    fn value(&self, name: &str) -> Option<Found<'_>> {
        if let Some(v) = self.live.and_then(|l| l.get(name)) {
            return Some(Found::Kept(v));
        }
        self.twins
            .read(self.tenant, |g| {
                g.twins
                    .get(self.twin)
                    .and_then(|t| t.props.get(name).map(Bound::from_json))
            })
            .map(Found::Made)
    }

    /// The plain values among `names` (not the maps): an alarm's last
    /// value.
    fn shown(&self, names: &[String]) -> Value {
        Value::Object(
            names
                .iter()
                .filter(|n| !MAPS.contains(&n.as_str()))
                .filter_map(|n| {
                    let v = match self.value(n)? {
                        Found::Kept(b) => b.to_json(),
                        Found::Made(b) => b.to_json(),
                    };
                    Some((n.clone(), v))
                })
                .collect(),
        )
    }
}

impl Lookup for TwinView<'_> {
    fn find(&self, name: &str) -> Option<Found<'_>> {
        match name {
            "props" => Some(Found::Kept(self.props.get_or_init(|| {
                Bound::from_json(&Value::Object(self.props_of(self.twin)))
            }))),
            "twin" => {
                let model = self.twins.read(self.tenant, |g| {
                    g.twins.get(self.twin).map(|t| t.model.to_string())
                });
                Some(Found::Made(Bound::from_json(
                    &serde_json::json!({"id": self.twin, "model": model}),
                )))
            }
            "related" => Some(Found::Kept(self.related.get_or_init(|| {
                let targets: Vec<(String, String)> = self.twins.read(self.tenant, |g| {
                    g.outgoing(self.twin)
                        .map(|r| (r.name.clone(), r.target.to_string()))
                        .collect()
                });
                let mut m = Map::new();
                for (name, target) in targets {
                    m.entry(name)
                        .or_insert_with(|| Value::Object(self.props_of(&target)));
                }
                Bound::from_json(&Value::Object(m))
            }))),
            // A qualified name (`related.isPartOf`) is asked whole first:
            // no property is named so, its first segment is.
            name if name.contains('.') => None,
            name => self.value(name),
        }
    }
}
