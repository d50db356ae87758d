//! One task per route: read the route's durable consumer, keep what the
//! route selects, deliver it in batches, and record the position only
//! once the receiver has the batch (or the batch is parked in the dead
//! letters, in the same transaction). Retries back off with jitter; an
//! open circuit waits before one probe; the fallback sink takes over after
//! repeated failures; a full backlog blocks ingest or drops the oldest
//! events, as the route says.

use super::sink::Delivery;
use super::spec::{envelope, Selection};
use super::{Control, Route, RouteBook, State, Stats};
use crate::events::{Event, Kind};
use crate::rules::alarms::Intent;
use crate::store::outbox::Consumer;
use crate::store::routes as rows;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinhub_model::rules::alarm::Severity;

/// How often the backlog is measured (and the full policy applied).
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

enum Outcome {
    Delivered,
    Parked(String, u32),
    /// The backlog filled up during the outage and the route drops its
    /// oldest events: this batch was among them (counted).
    Dropped,
    Stopped,
}

fn stopped(control: &Control, book: &RouteBook) -> bool {
    control.stop.load(Ordering::SeqCst) || *book.deps.shutdown.borrow()
}

/// Sleeps `d`, or less if the route is stopped, paused or poked.
async fn nap(control: &Control, book: &RouteBook, d: Duration) {
    let mut shutdown = book.deps.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = control.wake.notified() => {}
        _ = shutdown.changed() => {}
    }
}

pub(super) async fn run(
    book: Arc<RouteBook>,
    route: Arc<Route>,
    stats: Arc<Stats>,
    control: Arc<Control>,
) {
    let name = Route::consumer_name(&route.tenant, &route.id);
    let mut consumer = loop {
        if stopped(&control, &book) {
            return;
        }
        match book.deps.store.consumer(&name).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(route = %route.id, error = %e, "route cannot open its queue; retrying");
                nap(&control, &book, Duration::from_secs(1)).await;
            }
        }
    };
    stats.position.store(consumer.position(), Ordering::Relaxed);
    let mut members: Option<HashSet<String>> = None;
    let mut members_stale = true;
    let mut last_backlog = Instant::now() - BACKLOG_EVERY;
    loop {
        if stopped(&control, &book) {
            return;
        }
        if last_backlog.elapsed() >= BACKLOG_EVERY {
            last_backlog = Instant::now();
            backlog(&book, &route, &stats, &mut consumer).await;
        }
        if control.paused.load(Ordering::SeqCst) {
            stats.set_state(State::Paused);
            nap(&control, &book, BACKLOG_EVERY).await;
            continue;
        }
        if control.replay.swap(false, Ordering::SeqCst) {
            replay(&book, &route, &stats, &control).await;
            continue;
        }
        let batch = tokio::select! {
            b = next_batch(&mut consumer, route.max, route.linger) => b,
            _ = control.wake.notified() => continue,
            _ = tokio::time::sleep(BACKLOG_EVERY) => continue,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(route = %route.id, error = %e, "route cannot read its queue; retrying");
                nap(&control, &book, Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(last_id) = batch.last().map(|e| e.id) else {
            continue;
        };
        if route
            .selection
            .twins
            .as_ref()
            .is_some_and(|s| s.query.is_some())
        {
            members_stale |= batch.iter().any(|e| {
                e.tenant == route.tenant && matches!(e.kind, Kind::Twin | Kind::Relationship)
            });
            if members_stale {
                members = refresh_members(&book, &route);
                members_stale = false;
            }
        }
        let selected = select(
            &book,
            &route.selection,
            &route.tenant,
            &batch,
            members.as_ref(),
        );
        if selected.is_empty() {
            commit(&book, &route, &stats, &mut consumer, last_id).await;
            continue;
        }
        match deliver(
            &book,
            &route,
            &stats,
            &control,
            &mut consumer,
            &selected,
            last_id,
        )
        .await
        {
            Outcome::Delivered => {
                stats
                    .delivered
                    .fetch_add(selected.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_delivered_at
                    .store(book.deps.clock.now_us().max(0) as u64, Ordering::Relaxed);
                commit(&book, &route, &stats, &mut consumer, last_id).await;
            }
            Outcome::Parked(error, attempts) => {
                park(
                    &book,
                    &route,
                    &stats,
                    &mut consumer,
                    &selected,
                    last_id,
                    &error,
                    attempts,
                )
                .await;
            }
            Outcome::Dropped => {}
            Outcome::Stopped => return,
        }
    }
}

/// Up to `max` events: what is there, then more until `linger` passes.
async fn next_batch(
    c: &mut Consumer,
    max: usize,
    linger: Duration,
) -> Result<Vec<Arc<Event>>, crate::store::StoreError> {
    let mut out = c.next(max).await?;
    if out.len() < max && !linger.is_zero() {
        let deadline = tokio::time::Instant::now() + linger;
        while out.len() < max {
            match tokio::time::timeout_at(deadline, c.next(max - out.len())).await {
                Ok(Ok(more)) => out.extend(more),
                Ok(Err(e)) if out.is_empty() => return Err(e),
                _ => break,
            }
        }
    }
    Ok(out)
}

fn refresh_members(book: &RouteBook, route: &Route) -> Option<HashSet<String>> {
    let q = route.selection.twins.as_ref()?.query.as_deref()?;
    crate::twins::select::query_members(&route.tenant, q, &book.deps.twins, &book.deps.store).ok()
}

/// The envelopes of the route's tenant's events it selects, with ids.
fn select(
    book: &RouteBook,
    sel: &Selection,
    tenant: &str,
    batch: &[Arc<Event>],
    members: Option<&HashSet<String>>,
) -> Vec<(u64, Value)> {
    batch
        .iter()
        .filter(|e| e.tenant == tenant && sel.admits(e, &book.deps.twins, members))
        .map(|e| (e.id, envelope(e)))
        .collect()
}

async fn commit(book: &RouteBook, route: &Route, stats: &Stats, consumer: &mut Consumer, pos: u64) {
    // A failed write only means the events come again after a restart
    // (at least once); the next commit records a later position.
    if let Err(e) = consumer.commit(pos).await {
        tracing::warn!(route = %route.id, error = %e, "route position not recorded");
        return;
    }
    stats.position.store(pos, Ordering::Relaxed);
    let _ = book;
}

fn note_error(book: &RouteBook, stats: &Stats, msg: &str) {
    *stats.last_error.lock().expect("error") = Some((book.deps.clock.now_us(), msg.to_string()));
}

/// The deliveries of envelopes: each with its template output, if the
/// route has a template.
fn deliveries(route: &Route, envs: impl Iterator<Item = Value>) -> Result<Vec<Delivery>, String> {
    envs.map(|env| {
        let body = match &route.template {
            Some(t) => Some(t.render(&env)?),
            None => None,
        };
        Ok(Delivery { env, body })
    })
    .collect()
}

/// Delivers one batch with the route's retry policy. While it waits, the
/// backlog is still measured, so a blocking route stops ingest and a
/// dropping route drops during an outage, when it matters.
async fn deliver(
    book: &RouteBook,
    route: &Route,
    stats: &Stats,
    control: &Control,
    consumer: &mut Consumer,
    selected: &[(u64, Value)],
    last_id: u64,
) -> Outcome {
    let mut last_backlog = Instant::now();
    let body = match deliveries(route, selected.iter().map(|(_, v)| v.clone())) {
        Ok(b) => b,
        // The template cannot make this batch: no retry will.
        Err(e) => {
            note_error(book, stats, &e);
            return Outcome::Parked(e, 0);
        }
    };
    let mut failures: u32 = 0;
    loop {
        if stopped(control, book) {
            return Outcome::Stopped;
        }
        let use_fallback = route.fallback.is_some() && failures >= route.retry.fallback_after;
        let sink = if use_fallback {
            route.fallback.as_ref().expect("fallback")
        } else {
            &route.sink
        };
        match sink.send(&body).await {
            Ok(()) => {
                if use_fallback {
                    stats
                        .to_fallback
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                }
                if stats.state() == State::Open {
                    alarm(book, route, "RouteCircuitOpen", None).await;
                }
                stats.set_state(State::Ok);
                return Outcome::Delivered;
            }
            Err(e) => {
                failures += 1;
                stats.retried.fetch_add(1, Ordering::Relaxed);
                note_error(book, stats, &e.message);
                tracing::info!(route = %route.id, failures, error = %e.message, "route delivery failed");
                if e.permanent
                    || (route.retry.max_attempts > 0 && failures >= route.retry.max_attempts)
                {
                    return Outcome::Parked(e.message, failures);
                }
                let wait = if failures >= route.retry.circuit_after {
                    if stats.state() != State::Open {
                        // The alarm first: a route shown open has raised it.
                        alarm(
                            book,
                            route,
                            "RouteCircuitOpen",
                            Some(json!({"error": e.message})),
                        )
                        .await;
                        stats.set_state(State::Open);
                    }
                    route.retry.open_for.min(
                        route
                            .retry
                            .backoff(failures, rand::random::<f64>())
                            .max(route.retry.initial),
                    )
                } else {
                    stats.set_state(State::Retrying);
                    route.retry.backoff(failures, rand::random::<f64>())
                };
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if stopped(control, book) || control.paused.load(Ordering::SeqCst) {
                        return Outcome::Stopped;
                    }
                    if last_backlog.elapsed() >= BACKLOG_EVERY {
                        last_backlog = Instant::now();
                        if backlog(book, route, stats, consumer).await >= last_id {
                            return Outcome::Dropped;
                        }
                    }
                    nap(control, book, (until - Instant::now()).min(BACKLOG_EVERY)).await;
                }
            }
        }
    }
}

/// Parks a batch in the dead letters and moves past it, atomically.
#[allow(clippy::too_many_arguments)]
async fn park(
    book: &RouteBook,
    route: &Route,
    stats: &Arc<Stats>,
    consumer: &mut Consumer,
    selected: &[(u64, Value)],
    last_id: u64,
    error: &str,
    attempts: u32,
) {
    let letters: Vec<(u64, String)> = selected
        .iter()
        .map(|(id, v)| (*id, v.to_string()))
        .collect();
    let n = letters.len() as u64;
    let (tenant, id, err) = (route.tenant.clone(), route.id.clone(), error.to_string());
    let name = Route::consumer_name(&route.tenant, &route.id);
    let now = book.deps.clock.now_us();
    let (alarms, counted) = (book.deps.alarms.clone(), stats.clone());
    let res = book
        .deps
        .store
        .write(move |ctx| {
            rows::add_dead_letters(ctx.tx, &tenant, &id, &letters, now, attempts, &err)?;
            count_eagerly(ctx, counted, |s| &s.dead_lettered, n);
            ctx.set_position(&name, last_id)?;
            alarms.apply(
                ctx,
                vec![raise(
                    &tenant,
                    &id,
                    "RouteDeadLetters",
                    json!({"error": err, "events": n}),
                    now,
                )],
            )?;
            Ok(())
        })
        .await;
    match res {
        Ok(()) => {
            consumer.committed(last_id);
            stats.position.store(last_id, Ordering::Relaxed);
            stats.set_state(State::Ok);
            tracing::warn!(route = %route.id, events = n, error, "route parked events in its dead letters");
        }
        Err(e) => {
            tracing::warn!(route = %route.id, error = %e, "dead letters not written; the batch comes again")
        }
    }
}

fn raise(tenant: &str, route: &str, kind: &str, value: Value, ts: i64) -> Intent {
    Intent::Raise {
        tenant: tenant.to_string(),
        originator: format!("route:{route}"),
        kind: kind.to_string(),
        severity: Severity::Major,
        rule: format!("route:{route}"),
        propagate: None,
        value,
        ts,
    }
}

/// Raises (`Some`) or clears (`None`) a route's alarm.
async fn alarm(book: &RouteBook, route: &Route, kind: &str, value: Option<Value>) {
    let now = book.deps.clock.now_us();
    let intent = match value {
        Some(v) => raise(&route.tenant, &route.id, kind, v, now),
        None => Intent::Clear {
            tenant: route.tenant.clone(),
            originator: format!("route:{}", route.id),
            kind: kind.to_string(),
            rule: format!("route:{}", route.id),
            value: Value::Null,
            ts: now,
        },
    };
    let alarms = book.deps.alarms.clone();
    if let Err(e) = book
        .deps
        .store
        .write(move |ctx| alarms.apply(ctx, vec![intent]).map(|_| ()))
        .await
    {
        tracing::warn!(route = %route.id, error = %e, "route alarm not written");
    }
}

/// Sends the dead letters again, oldest first, one try per batch; each
/// delivered batch leaves the dead letters.
async fn replay(book: &RouteBook, route: &Route, stats: &Arc<Stats>, control: &Control) {
    let mut after = 0i64;
    loop {
        if stopped(control, book) {
            return;
        }
        let (t, i) = (route.tenant.clone(), route.id.clone());
        let max = route.max;
        let letters = match book
            .deps
            .store
            .read(move |c| rows::dead_letters(c, &t, &i, after, max))
        {
            Ok(l) => l,
            Err(_) => return,
        };
        let Some(last) = letters.last() else {
            alarm(book, route, "RouteDeadLetters", None).await;
            return;
        };
        after = last.seq;
        let body = match deliveries(
            route,
            letters
                .iter()
                .filter_map(|l| serde_json::from_str(&l.body).ok()),
        ) {
            Ok(b) => b,
            Err(e) => {
                note_error(book, stats, &format!("replay: {e}"));
                return;
            }
        };
        if let Err(e) = route.sink.send(&body).await {
            note_error(book, stats, &format!("replay: {}", e.message));
            return;
        }
        let seqs: Vec<i64> = letters.iter().map(|l| l.seq).collect();
        let (t, i) = (route.tenant.clone(), route.id.clone());
        let (replayed, n) = (stats.clone(), body.len() as u64);
        if book
            .deps
            .store
            .write(move |ctx| {
                rows::remove_dead_letters(ctx.tx, &t, &i, &seqs)?;
                count_eagerly(ctx, replayed, |s| &s.replayed, n);
                Ok(())
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Adds `n` to a route's counter of what a write stores, in the write: a
/// reader sees the rows from the commit on, before any after-commit hook
/// has run, so a count added after the commit could lag the list it
/// counts (a replayed letter gone from the list, `replayed` still 0). Taken
/// back if the commit fails.
fn count_eagerly(
    ctx: &mut crate::store::WriteCtx<'_>,
    stats: Arc<Stats>,
    counter: fn(&Stats) -> &AtomicU64,
    n: u64,
) {
    counter(&stats).fetch_add(n, Ordering::Relaxed);
    ctx.on_rollback(move |_| {
        counter(&stats).fetch_sub(n, Ordering::Relaxed);
    });
}

/// Measures the backlog and applies the route's full policy; the
/// position the route has skipped to (0 if it skipped nothing).
async fn backlog(book: &RouteBook, route: &Route, stats: &Stats, consumer: &mut Consumer) -> u64 {
    let pos = consumer.position();
    let Ok((events, bytes)) = book.deps.store.read(move |c| rows::backlog(c, pos)) else {
        return 0;
    };
    *stats.backlog.lock().expect("backlog") = (events, bytes);
    let reason = format!("route {}", route.id);
    if events < route.max_backlog {
        if events < route.max_backlog / 10 * 9 {
            book.deps.backpressure.set(&route.tenant, &reason, false);
        }
        return 0;
    }
    if !route.drops_oldest {
        if book.deps.backpressure.set(&route.tenant, &reason, true) {
            tracing::warn!(route = %route.id, events, "route backlog is full: telemetry of the tenant is refused until it drains");
        }
        return 0;
    }
    let keep = route.max_backlog / 10 * 9;
    let Ok(Some(skip_to)) = book
        .deps
        .store
        .read(move |c| rows::skip_to_keep(c, pos, keep))
    else {
        return 0;
    };
    let dropped = events.saturating_sub(keep);
    if consumer.skip_to(skip_to).await.is_ok() {
        // The alarm is written before the count shows the drop (as the
        // circuit's is before its state shows open): whoever sees
        // `dropped` grow finds the alarm too.
        alarm(
            book,
            route,
            "RouteEventsDropped",
            Some(json!({"dropped": dropped, "max_backlog": route.max_backlog})),
        )
        .await;
        stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        stats.position.store(skip_to, Ordering::Relaxed);
        note_error(
            book,
            stats,
            &format!("backlog full: dropped the oldest {dropped} events"),
        );
        tracing::warn!(route = %route.id, dropped, "route backlog full: oldest events dropped");
        return skip_to;
    }
    0
}
