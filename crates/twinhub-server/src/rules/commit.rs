//! One batch's commits, apart from the engine so that they run while the
//! engine evaluates the next batch. A batch commits in two steps:
//!
//! 1. its alarm changes, with the id of its last event as the alarms'
//!    watermark — an urgent write, committed ahead of the ingest queued
//!    for the writer, so an alarm is visible one small commit after its
//!    event (not behind the batch's calculated values and states);
//! 2. once that committed, by one task for all batches: its rule states,
//!    calculated values and the durable position — merged with those of
//!    every batch that queued while the previous step 2 ran (`Rest`).
//!
//! Alarm changes are committed in batch order, and so are the rest. After
//! a crash between the two steps the batch is replayed from the position
//! onto the states as they were, and the intents of events up to the
//! watermark are dropped (`Engine::applied`): no alarm change is applied
//! twice or lost, and the states come out as they were.
//! Owns nothing; calls the store (through the pipeline for calculated
//! values) and the alarms.

use super::alarms::{Alarms, Change, Intent};
use super::engine::{Dirty, Engine, State, StateKey, CONSUMER};
use super::RuleBook;
use crate::clock::SharedClock;
use crate::store::rules as rows;
use crate::store::{Store, StoreError, WriteCtx};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// The rule-state row holding the alarms' watermark: the id of the last
/// event whose alarm changes are committed. No tenant or rule has an
/// empty id, so it is no rule's state.
pub(super) const APPLIED: (&str, &str, &str) = ("", "", "alarms-applied");

/// Writes the alarms' watermark (or removes it: `None`).
pub(super) fn put_applied(ctx: &mut WriteCtx<'_>, id: Option<u64>) -> Result<(), StoreError> {
    let (t, r, w) = APPLIED;
    rows::put_state(ctx.tx, t, r, w, id.map(|i| i.to_string()).as_deref())
}

/// A batch whose alarm changes are being committed.
pub(super) struct InFlight {
    /// The batch's alarm changes once committed; closed without a value
    /// once shutdown stopped the commit.
    pub(super) alarms: oneshot::Receiver<Vec<Change>>,
}

/// How many batches may wait for their second step before the engine
/// waits: their states and calculated values are what is held in memory.
const REST_DEPTH: u64 = 8;

/// Rows one merged rest commit takes at most (whole batches; a bigger
/// batch goes alone). Every acknowledgement queued behind the writer waits
/// for it: eight batches merged at 50k events/s were ~2,400 state rows,
/// 6–8 ms of the writer's time in one group.
const MERGED_ROWS: usize = 512;

/// A batch's second step, waiting for the rest committer.
struct RestPart {
    seq: u64,
    states: Vec<(StateKey, Option<State>)>,
    last: Option<u64>,
    derived: Vec<super::actions::DerivedGroup>,
}

impl RestPart {
    /// The rows it writes: its states and its calculated values.
    fn rows(&self) -> usize {
        self.states.len() + self.derived.iter().map(|g| g.msgs.len()).sum::<usize>()
    }
}

/// The batches' second steps, committed by one task in batch order: the
/// batches that queued while one commit ran go in the next as one (a
/// key's latest state wins, calculated values in order, the latest
/// position), so a slow commit makes the next one bigger rather than
/// holding up the engine. `done` is the sequence number of the last batch
/// whose rest is committed.
#[derive(Clone)]
pub(super) struct Rest {
    done: Arc<watch::Sender<u64>>,
    parts: mpsc::UnboundedSender<RestPart>,
    /// The sequence number the next batch gets.
    next: u64,
}

impl Rest {
    /// Starts the rest committer (on the engine's runtime).
    pub(super) fn start(c: Committer, shutdown: watch::Receiver<bool>) -> Rest {
        let done = Arc::new(watch::channel(0).0);
        let (parts, rx) = mpsc::unbounded_channel();
        tokio::spawn(commit_rests(c, rx, done.clone(), shutdown));
        Rest {
            done,
            parts,
            next: 1,
        }
    }

    /// Waits until at most `REST_DEPTH` batches wait for their rest to be
    /// committed. False once shutdown.
    pub(super) async fn bounded(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        self.upto(self.next.saturating_sub(REST_DEPTH), shutdown)
            .await
    }

    /// The sequence number the next batch gets (names a batch in traces).
    pub(super) fn peek_next(&self) -> u64 {
        self.next
    }

    /// Waits until every batch started has its rest committed.
    pub(super) async fn drained(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        self.upto(self.next - 1, shutdown).await
    }

    async fn upto(&self, upto: u64, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut rx = self.done.subscribe();
        tokio::select! {
            r = rx.wait_for(|d| *d >= upto) => r.is_ok(),
            _ = shutdown.changed() => false,
        }
    }
}

async fn commit_rests(
    c: Committer,
    mut rx: mpsc::UnboundedReceiver<RestPart>,
    done: Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A part taken that did not fit in the last merge.
    let mut held: Option<RestPart> = None;
    loop {
        let first = match held.take() {
            Some(p) => p,
            None => tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = shutdown.changed() => return,
            },
        };
        let mut rows = first.rows();
        let mut parts = vec![first];
        while let Ok(p) = rx.try_recv() {
            if rows + p.rows() > MERGED_ROWS {
                held = Some(p);
                break;
            }
            rows += p.rows();
            parts.push(p);
        }
        let merged = merge(parts);
        let seq = merged.seq;
        if !c
            .commit_rest(merged.states, merged.last, merged.derived, &mut shutdown)
            .await
        {
            return;
        }
        done.send_modify(|d| *d = (*d).max(seq));
    }
}

/// Several batches' second steps as one: each key's latest state (in the
/// order the keys were first dirtied), calculated values in batch order,
/// the latest position.
fn merge(parts: Vec<RestPart>) -> RestPart {
    let mut parts = parts.into_iter();
    let mut out = parts.next().expect("at least one part");
    let mut at: Option<std::collections::HashMap<StateKey, usize>> = None;
    for p in parts {
        let at = at.get_or_insert_with(|| {
            out.states
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect()
        });
        for (k, body) in p.states {
            match at.get(&k) {
                Some(&i) => out.states[i].1 = body,
                None => {
                    at.insert(k.clone(), out.states.len());
                    out.states.push((k, body));
                }
            }
        }
        out.seq = p.seq;
        out.last = p.last.or(out.last);
        out.derived.extend(p.derived);
    }
    out
}

/// One batch's effects, to be committed.
pub(super) struct Batch {
    pub(super) intents: Vec<Intent>,
    pub(super) states: Vec<(StateKey, Option<State>)>,
    /// The id of the batch's last event (None for a batch of timers).
    pub(super) last: Option<u64>,
    pub(super) derived: Vec<super::actions::DerivedGroup>,
}

impl InFlight {
    /// Starts a batch's commits (the previous batch's alarm changes have
    /// committed).
    pub(super) fn start(
        c: Committer,
        b: Batch,
        rest: &mut Rest,
        shutdown: watch::Receiver<bool>,
    ) -> InFlight {
        let (tx, rx) = oneshot::channel();
        let seq = rest.next;
        rest.next += 1;
        let parts = rest.parts.clone();
        tokio::spawn(async move {
            let mut shutdown = shutdown;
            let (started, intents) = (Instant::now(), b.intents.len());
            let Some(changes) = c.commit_alarms(b.intents, b.last, &mut shutdown).await else {
                return;
            };
            let took = started.elapsed();
            if intents > 0 {
                tracing::trace!(target: "twinhub_server::rules::timing", seq, commit_us = took.as_micros() as u64, "alarms");
            }
            if took > Duration::from_millis(8) {
                tracing::debug!(intents, ms = took.as_secs_f64() * 1e3, "slow alarm commit");
            }
            // Queued before the engine hears of the commit (and starts the
            // next batch's), so the rests queue in batch order.
            let _ = parts.send(RestPart {
                seq,
                states: b.states,
                last: b.last,
                derived: b.derived,
            });
            let _ = tx.send(changes);
        });
        InFlight { alarms: rx }
    }
}

/// What a batch's commit needs, apart from the engine (so it runs beside
/// the evaluation of the next batch).
pub(super) struct Committer {
    alarms: Arc<Alarms>,
    store: Store,
    pipeline: Arc<crate::pipeline::Pipeline>,
    book: Arc<RuleBook>,
    clock: SharedClock,
}

/// Waits `backoff` before a retry and doubles it (to 5 s); false once
/// shutdown (the batch is then replayed after the restart).
async fn back_off(backoff: &mut Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.changed() => return false,
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    true
}

impl Committer {
    /// Step 1: the alarm changes and the watermark, ahead of queued
    /// ingest. A batch with neither is not written.
    async fn commit_alarms(
        &self,
        intents: Vec<Intent>,
        last: Option<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Vec<Change>> {
        if intents.is_empty() {
            return Some(Vec::new());
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            let (alarms, intents) = (self.alarms.clone(), intents.clone());
            let res = self
                .store
                .write_urgent(move |ctx| {
                    let changes = alarms.apply(ctx, intents)?;
                    if let Some(id) = last {
                        put_applied(ctx, Some(id))?;
                    }
                    Ok(changes)
                })
                .await;
            match res {
                Ok(changes) => return Some(changes),
                Err(e) => {
                    tracing::warn!(error = %e, "alarm changes could not be stored; retrying");
                    if !back_off(&mut backoff, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Step 2: rule states, calculated values and the position, in one
    /// commit (so none is applied twice or lost). Calculated values the
    /// store refuses for lack of room are dropped (the rules say why)
    /// rather than holding up the position. False once shutdown.
    async fn commit_rest(
        &self,
        states: Vec<(StateKey, Option<State>)>,
        last: Option<u64>,
        mut derived: Vec<super::actions::DerivedGroup>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if states.is_empty() && last.is_none() && derived.is_empty() {
            return true;
        }
        // Serialized here rather than when the batch was sealed: hundreds
        // of states took the engine a fraction of a millisecond that the
        // batch's alarm commit waited for.
        let states: Vec<(StateKey, Option<String>)> = states
            .into_iter()
            .map(|(k, s)| (k, s.and_then(|s| serde_json::to_string(&s).ok())))
            .collect();
        let states = Arc::new(states);
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let states_ = states.clone();
            let apply = move |ctx: &mut WriteCtx<'_>| {
                for ((tenant, rule, twin), body) in states_.iter() {
                    rows::put_state(ctx.tx, tenant, rule, twin, body.as_deref())?;
                }
                if let Some(id) = last {
                    ctx.set_position(CONSUMER, id)?;
                }
                Ok(())
            };
            let res = if derived.is_empty() {
                self.store.write(apply).await
            } else {
                let items = derived
                    .iter()
                    .map(|g| (g.tenant.clone(), g.twin.clone(), g.msgs.clone()))
                    .collect();
                match self
                    .pipeline
                    .ingest_derived_with("rule", items, Box::new(apply))
                    .await
                {
                    Ok(outcomes) => {
                        for (g, o) in derived.iter().zip(outcomes) {
                            if let Err(e) = o {
                                self.failed(&g.rules, &g.twin, e.to_string());
                            }
                        }
                        Ok(())
                    }
                    Err(e @ (StoreError::NoSpace | StoreError::Busy)) => {
                        for g in std::mem::take(&mut derived) {
                            self.failed(&g.rules, &g.twin, e.to_string());
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(()) => {
                    if started.elapsed() > Duration::from_millis(8) {
                        tracing::debug!(
                            states = states.len(),
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "slow rule commit (states, calculated values)"
                        );
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rule results could not be stored; retrying");
                    if !back_off(&mut backoff, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    fn failed(&self, rules: &[Arc<super::Rule>], twin: &str, e: String) {
        for r in rules {
            self.book
                .record(r, twin, Err(e.clone()), self.clock.now_us());
        }
    }
}

impl Engine {
    /// The rule states of `dirty` as they are now (None deletes the row),
    /// serialized by the rest committer.
    pub(super) fn snapshot(&self, dirty: Dirty) -> Vec<(StateKey, Option<State>)> {
        dirty
            .into_iter()
            .map(|k| {
                let s = self.states.get(&k).copied();
                (k, s)
            })
            .collect()
    }

    pub(super) fn committer(&self) -> Committer {
        Committer {
            alarms: self.alarms.clone(),
            store: self.store.clone(),
            pipeline: self.deps.pipeline.clone(),
            book: self.deps.book.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Waits for the batch in flight's alarm changes to commit, then runs
    /// its actions. False once shutdown stopped it.
    pub(super) async fn finish(&mut self, pending: &mut Option<InFlight>) -> bool {
        let Some(mut p) = pending.take() else {
            return true;
        };
        let done = (&mut p.alarms).await;
        self.committed(done).await
    }

    /// After a batch's alarm changes committed: its actions.
    pub(super) async fn committed(
        &mut self,
        done: Result<Vec<Change>, oneshot::error::RecvError>,
    ) -> bool {
        let Ok(changes) = done else {
            return false;
        };
        self.act(changes).await;
        self.retire_alarms().await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(twin: &str) -> StateKey {
        ("t".into(), "r".into(), twin.into())
    }

    /// A state told apart by `n`.
    fn st(n: i64) -> State {
        State::NoData {
            last_seen: n,
            raised: false,
            saved: 0,
        }
    }

    fn part(seq: u64, last: Option<u64>, states: &[(&str, Option<i64>)]) -> RestPart {
        RestPart {
            seq,
            states: states.iter().map(|(t, b)| (key(t), b.map(st))).collect(),
            last,
            derived: Vec::new(),
        }
    }

    #[test]
    fn merged_rests_keep_each_keys_latest_state_and_the_latest_position() {
        let m = merge(vec![
            part(1, Some(10), &[("a", Some(11)), ("b", Some(21))]),
            // A timer batch: no events, so no position of its own.
            part(2, None, &[("c", Some(32)), ("a", None)]),
            part(3, Some(30), &[("b", Some(23))]),
        ]);
        assert_eq!(m.seq, 3);
        assert_eq!(m.last, Some(30));
        assert_eq!(
            m.states,
            vec![
                (key("a"), None),
                (key("b"), Some(st(23))),
                (key("c"), Some(st(32)))
            ]
        );
        let m = merge(vec![part(4, Some(40), &[]), part(5, None, &[])]);
        assert_eq!(
            (m.seq, m.last),
            (5, Some(40)),
            "a timer batch keeps the position"
        );
    }
}
