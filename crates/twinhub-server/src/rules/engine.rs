//! The rule engine: one task, a durable consumer of the fan-out
//! (`Store::consumer("rules")`). It takes committed events in commit
//! order, keeps each twin's live values as the events tell them, evaluates
//! the rules that select the twin, and commits each batch in two steps:
//! its alarm changes with a watermark (ahead of queued ingest), then the
//! rule states that changed, the calculated values and its position. A
//! crash replays the batch from the position onto the states as they
//! were, applying no alarm change of an event up to the watermark again:
//! no alarm is counted twice, none is lost. No-data rules run on the
//! injected clock with a deadline heap (not a scan of every twin). What
//! one event does to the states is in `evaluate.rs`; the commits in
//! `commit.rs`.

use super::alarms::{Alarms, Intent};
use super::commit::{Batch, InFlight, Rest, APPLIED};
use super::{Rule, RuleBook, RuleKind};
use crate::clock::SharedClock;
use crate::store::rules as rows;
use crate::store::Store;
use crate::twins::TwinGraphs;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use twinhub_model::rules::condition::ConditionState;
use twinhub_model::rules::expr::Bound;
use twinhub_model::rules::stats::Rolling;

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
        /// The `last_seen` its row holds (`i64::MIN`: none yet). A point
        /// rewrites the row only once `last_seen` moved `no_data_slack`
        /// past it, so a twin's every point is not a write; the row is
        /// read back late-biased by the slack (`restored`).
        #[serde(skip, default = "never")]
        saved: i64,
    },
    Statistical {
        rolling: Rolling,
        cond: ConditionState,
    },
}

fn never() -> i64 {
    i64::MIN
}

/// How far a no-data state's `last_seen` may run ahead of its row: a
/// tenth of the timeout, at most 10 s.
pub(super) fn no_data_slack(timeout_us: i64) -> i64 {
    (timeout_us / 10).min(10_000_000)
}

impl State {
    /// A state as read from its row at `now`. A no-data state's row may be
    /// up to the slack behind the last point seen (see `saved`), so its
    /// `last_seen` is taken that much later (never past `now`): after a
    /// restart a no-data alarm comes at most the slack late, never early.
    fn restored(mut self, rule: Option<&Rule>, now: i64) -> State {
        if let State::NoData {
            last_seen, saved, ..
        } = &mut self
        {
            *saved = *last_seen;
            if let Some(r) = rule {
                *last_seen = (*last_seen + no_data_slack(r.timeout_us))
                    .min(now)
                    .max(*last_seen);
            }
        }
        self
    }
}

pub(super) type StateKey = (String, String, String);

/// Events evaluated before their alarm changes go to the writer. A batch
/// ends earlier at an event with alarm changes when no alarm commit is in
/// flight (so an alarm does not wait for the events after it); the
/// batches' other writes are merged by the rest committer however small
/// they are.
const MAX_BATCH: usize = 128;

/// A state's key borrowed from what is at hand (tenant, rule, twin): looks
/// states up without making three strings per rule per message. Hashes as
/// `StateKey` does (a tuple hashes its fields in order, a `String` as its
/// `str`).
#[derive(Hash, Clone, Copy)]
pub(super) struct KeyRef<'a>(pub(super) &'a str, pub(super) &'a str, pub(super) &'a str);

impl hashbrown::Equivalent<StateKey> for KeyRef<'_> {
    fn equivalent(&self, k: &StateKey) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

impl KeyRef<'_> {
    pub(super) fn owned(self) -> StateKey {
        (self.0.to_string(), self.1.to_string(), self.2.to_string())
    }
}

/// The states a batch changed (written with its commit).
pub(super) type Dirty = hashbrown::HashSet<StateKey>;

pub(super) fn mark(dirty: &mut Dirty, k: KeyRef<'_>) {
    if !dirty.contains(&k) {
        dirty.insert(k.owned());
    }
}

/// One twin's live values, kept bound for CEL (read in place by every
/// evaluation).
pub(super) type LiveTwin = hashbrown::HashMap<String, Bound>;

/// Each twin's live values, by tenant then twin (looked up by `&str`).
pub(super) type LiveValues = hashbrown::HashMap<String, hashbrown::HashMap<String, LiveTwin>>;

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
    pub(super) book: Arc<RuleBook>,
    pub(super) alarms: Arc<Alarms>,
    pub(super) twins: Arc<TwinGraphs>,
    pub(super) store: Store,
    pub(super) clock: SharedClock,
    pub(super) states: hashbrown::HashMap<StateKey, State>,
    /// Each twin's live values, as the events told them.
    pub(super) values: LiveValues,
    pub(super) deadlines: BinaryHeap<Reverse<(i64, StateKey)>>,
    /// Enabled rules by tenant, rebuilt when the book changes.
    pub(super) by_tenant: hashbrown::HashMap<String, Vec<Arc<Rule>>>,
    generation: u64,
    /// The enabled rules selecting each twin, by tenant (cleared when the
    /// rules or the tenant's graph change).
    pub(super) twin_rules: hashbrown::HashMap<String, hashbrown::HashMap<String, Arc<[Arc<Rule>]>>>,
    /// When each rule last acted for a twin (throttling).
    pub(super) last_action: HashMap<StateKey, i64>,
    pub(super) last_retire: i64,
    pub(super) last_drift: i64,
    /// The alarms' watermark read at start: events up to it had their
    /// alarm changes committed before the crash or stop (`commit.rs`),
    /// so replaying them rebuilds states and calculated values only.
    applied: u64,
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
            values: Default::default(),
            deadlines: BinaryHeap::new(),
            by_tenant: Default::default(),
            generation: u64::MAX,
            last_action: HashMap::new(),
            last_retire: 0,
            last_drift: 0,
            twin_rules: Default::default(),
            applied: 0,
        }
    }

    /// The enabled rules that select `twin` (cached).
    pub(super) fn rules_of(&mut self, tenant: &str, twin: &str) -> Arc<[Arc<Rule>]> {
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
                let now = self.clock.now_us();
                for (tenant, rule, twin, body) in rows {
                    if (tenant.as_str(), rule.as_str(), twin.as_str()) == APPLIED {
                        self.applied = body.parse().unwrap_or(0);
                        continue;
                    }
                    if let Ok(s) = serde_json::from_str::<State>(&body) {
                        let s = s.restored(self.book.get(&tenant, &rule).as_deref(), now);
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
        // Events taken from the consumer and not yet evaluated (a batch
        // cut at an alarm change).
        let mut carry: VecDeque<Arc<crate::events::Event>> = VecDeque::new();
        let mut rest = Rest::start(self.committer(), shutdown.clone());
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
                if !self.finish(&mut pending).await || !rest.drained(&mut shutdown).await {
                    return;
                }
                consumer = None;
                carry.clear();
                self.values.clear();
                // Only if no rule was written meanwhile (its write created
                // the position this would drop).
                let res = self
                    .store
                    .write(|ctx| match rows::count_rules(ctx.tx)? {
                        0 => {
                            super::commit::put_applied(ctx, None)?;
                            ctx.drop_consumer(CONSUMER).map(|_| ())
                        }
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
            let mut age_us = 0i64;
            let mut eval_us = 0u64;
            tokio::select! {
                r = async {
                    if carry.is_empty() {
                        consumer.as_mut().expect("consumer").next(MAX_BATCH).await.map(VecDeque::from)
                    } else {
                        Ok(std::mem::take(&mut carry))
                    }
                }, if consumer.is_some() => match r {
                    Ok(mut evs) => {
                        let (busy, cpu) = (std::time::Instant::now(), crate::metrics::thread_cpu_ms());
                        self.refresh_rules();
                        let mut stale = HashSet::new();
                        // With no alarm commit in flight, a batch ends at
                        // its first event with alarm changes: the alarm
                        // goes to the writer now, not after the rest of
                        // the batch was evaluated (the rest is the next
                        // batch). With one in flight the batch would wait
                        // for it anyway, so it takes everything.
                        let cut = pending.is_none();
                        let (mut first_at, mut n) = (None, 0usize);
                        while let Some(e) = evs.pop_front() {
                            first_at.get_or_insert(e.at);
                            let before = intents.len();
                            self.on_event(&e, &mut intents, &mut dirty, &mut stale, &mut derived);
                            if e.id <= self.applied {
                                intents.truncate(before);
                            }
                            last = Some(e.id);
                            n += 1;
                            if cut && intents.len() > before {
                                break;
                            }
                        }
                        carry = evs;
                        for t in stale {
                            self.book.refresh_queries(&self.twins, Some(&t));
                        }
                        age_us = first_at.map(|at| self.clock.now_us() - at).unwrap_or(0);
                        eval_us = busy.elapsed().as_micros() as u64;
                        self.book.add_busy(busy.elapsed());
                        if busy.elapsed() > Duration::from_millis(8) {
                            tracing::debug!(events = n, ms = busy.elapsed().as_secs_f64() * 1e3, cpu_ms = crate::metrics::thread_cpu_ms() - cpu, "slow rule evaluation");
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
                done = async { (&mut pending.as_mut().expect("in flight").alarms).await }, if pending.is_some() => {
                    pending = None;
                    if !self.committed(done).await {
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
            // In order: the previous batch's alarm changes first (its
            // effects come before these), and a bounded number of batches'
            // rests still waiting for the writer; then this one's commits
            // are sent and the engine evaluates the next batch meanwhile.
            let waited = std::time::Instant::now();
            let has_intents = !intents.is_empty();
            if !self.finish(&mut pending).await || !rest.bounded(&mut shutdown).await {
                return;
            }
            // Where an alarm's latency goes, with the commit's own trace in
            // `commit.rs` (`RUST_LOG=twinhub_server::rules::timing=trace`):
            // events committed → taken, evaluation, the previous batch.
            if has_intents {
                tracing::trace!(target: "twinhub_server::rules::timing", seq = rest.peek_next(), age_us, eval_us, wait_prev_us = waited.elapsed().as_micros() as u64, "batch");
            }
            pending = Some(InFlight::start(
                self.committer(),
                Batch {
                    intents,
                    states,
                    last,
                    derived,
                },
                &mut rest,
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
                        saved: i64::MIN,
                    });
                    if let State::NoData {
                        last_seen,
                        raised: false,
                        ..
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
            let Some(State::NoData {
                last_seen, raised, ..
            }) = self.states.get_mut(&key)
            else {
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
            // Raised before a crash whose state did not commit (the alarm
            // changes commit first): the open alarm is it.
            if self.alarms.is_open(&key.0, &key.2, &rule.alarm.kind) {
                continue;
            }
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
