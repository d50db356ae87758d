//! One batch's commit, apart from the engine so that it runs while the
//! engine evaluates the next batch: alarm changes, rule states, calculated
//! values and the durable position in one transaction, batches committed
//! in order (the next is sent only once the previous one committed).
//! Owns nothing; calls the store (through the pipeline for calculated
//! values) and the alarms.

use super::alarms::{Alarms, Intent};
use super::engine::{Dirty, Engine, StateKey, CONSUMER};
use super::RuleBook;
use crate::clock::SharedClock;
use crate::store::rules as rows;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// One batch's commit, running while the engine evaluates the next batch.
pub(super) struct InFlight {
    pub(super) task: tokio::task::JoinHandle<Option<Vec<super::alarms::Change>>>,
    last: Option<u64>,
    states: usize,
    started: std::time::Instant,
}

impl InFlight {
    /// Starts a batch's commit (the previous one has committed).
    pub(super) fn start(
        c: Committer,
        intents: Vec<Intent>,
        states: Vec<(StateKey, Option<String>)>,
        last: Option<u64>,
        derived: Vec<super::actions::DerivedGroup>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> InFlight {
        InFlight {
            states: states.len(),
            started: std::time::Instant::now(),
            last,
            task: tokio::spawn(c.commit(intents, states, last, derived, shutdown)),
        }
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

impl Committer {
    /// Writes one batch's effects — alarm changes, rule states, calculated
    /// values — with the position, in one commit (so none is applied twice
    /// or lost); retried until it commits (or shutdown: the batch is then
    /// replayed after restart). Calculated values the store refuses for
    /// lack of room are dropped (the rules say why) rather than holding up
    /// the alarms.
    pub(super) async fn commit(
        self,
        intents: Vec<Intent>,
        states: Vec<(StateKey, Option<String>)>,
        last: Option<u64>,
        mut derived: Vec<super::actions::DerivedGroup>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<Vec<super::alarms::Change>> {
        let states = Arc::new(states);
        let mut backoff = Duration::from_millis(50);
        loop {
            let (alarms, intents, states) = (self.alarms.clone(), intents.clone(), states.clone());
            let out = Arc::new(std::sync::Mutex::new(None));
            let slot = out.clone();
            let apply = move |ctx: &mut crate::store::WriteCtx<'_>| {
                let changes = alarms.apply(ctx, intents)?;
                for ((tenant, rule, twin), body) in states.iter() {
                    rows::put_state(ctx.tx, tenant, rule, twin, body.as_deref())?;
                }
                if let Some(id) = last {
                    ctx.set_position(CONSUMER, id)?;
                }
                *slot.lock().expect("changes") = Some(changes);
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
                                for r in &g.rules {
                                    self.book.record(
                                        r,
                                        &g.twin,
                                        Err(e.to_string()),
                                        self.clock.now_us(),
                                    );
                                }
                            }
                        }
                        Ok(())
                    }
                    Err(
                        e @ (crate::store::StoreError::NoSpace | crate::store::StoreError::Busy),
                    ) => {
                        for g in std::mem::take(&mut derived) {
                            for r in &g.rules {
                                self.book.record(
                                    r,
                                    &g.twin,
                                    Err(e.to_string()),
                                    self.clock.now_us(),
                                );
                            }
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(()) => return out.lock().expect("changes").take(),
                Err(e) => {
                    tracing::warn!(error = %e, "rule results could not be stored; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return None,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl Engine {
    /// The rule states of `dirty` as they are now (their rows' bodies;
    /// None deletes the row).
    pub(super) fn snapshot(&self, dirty: Dirty) -> Vec<(StateKey, Option<String>)> {
        dirty
            .into_iter()
            .map(|k| {
                let body = self
                    .states
                    .get(&k)
                    .and_then(|s| serde_json::to_string(s).ok());
                (k, body)
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

    /// Waits for the batch in flight to commit, then records its position
    /// and runs its actions. False once shutdown stopped it.
    pub(super) async fn finish(
        &mut self,
        pending: &mut Option<InFlight>,
        consumer: &mut Option<crate::store::outbox::Consumer>,
    ) -> bool {
        let Some(mut p) = pending.take() else {
            return true;
        };
        let done = (&mut p.task).await;
        self.committed(p, done, consumer).await
    }

    /// After a batch's commit: its position, its actions.
    pub(super) async fn committed(
        &mut self,
        p: InFlight,
        done: Result<Option<Vec<super::alarms::Change>>, tokio::task::JoinError>,
        consumer: &mut Option<crate::store::outbox::Consumer>,
    ) -> bool {
        let Ok(Some(changes)) = done else {
            return false;
        };
        if p.started.elapsed() > Duration::from_millis(8) {
            tracing::debug!(
                states = p.states,
                ms = p.started.elapsed().as_secs_f64() * 1e3,
                "slow rule commit"
            );
        }
        if let (Some(id), Some(c)) = (p.last, consumer.as_mut()) {
            c.committed(id);
        }
        self.act(changes).await;
        self.retire_alarms().await;
        true
    }
}
