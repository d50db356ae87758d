//! The single writer thread and its group commit. Every change to the
//! database goes through here: appends from all producers, registry
//! changes (as closures) and the compactor's operations (`control.rs`;
//! its installs run in steps, `install.rs`). One transaction and one
//! fsync serve every operation that arrived while the previous commit was
//! running, which is what makes acknowledgements cheap.
//!
//! An acknowledgement is sent only after the commit returned and the
//! points were applied to the head, so an acknowledged point is durable and
//! immediately queryable.

use super::backend::{Db, Source};
pub use super::control::{insert_chunk, Ctrl};
use super::head::Head;
use super::health::Faults;
use super::sql::{args, Sql};
use super::{batch, outbox, Engine, SeriesKey, StoreError, WriteBatch};
use crate::events::{Draft, Event};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use twinhub_model::Point;

pub type AnyBox = Box<dyn Any + Send>;
pub type Hook = Box<dyn FnOnce(&Engine) + Send>;
pub type ExecFn = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<AnyBox, StoreError> + Send>;
/// Rows an append writes in its own transaction besides the points (the
/// MQTT copies queued for persistent sessions); if it fails, the append is
/// refused alone.
pub type AlsoFn = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<(), StoreError> + Send>;

/// What an append writes besides its points, in the same transaction.
pub enum Also {
    /// Rows a closure writes, in a savepoint of its own: if it fails, the
    /// append is refused alone.
    Write(AlsoFn),
    /// Copies queued for persistent MQTT sessions (fresh ids, so nothing
    /// to refuse): the whole group's go in together, many rows per
    /// statement and no savepoint — on PostgreSQL a closure per append
    /// cost three round trips per published message. A failure fails the
    /// group, like its batch-log record.
    Copies(Vec<super::mqtt::QueuedRow>),
}

/// What a registry closure sees: the open transaction, the engine and a
/// place to register work that must happen only once the commit succeeded
/// (cache updates), in commit order.
pub struct WriteCtx<'a> {
    pub tx: &'a dyn Sql,
    pub engine: &'a Engine,
    hooks: Vec<Hook>,
    undo: Vec<Hook>,
    /// Events to publish once committed (`emit`).
    pub(super) events: Vec<Draft>,
}

impl WriteCtx<'_> {
    pub fn after_commit(&mut self, f: impl FnOnce(&Engine) + Send + 'static) {
        self.hooks.push(Box::new(f));
    }

    /// Undoes in-memory changes a closure made eagerly (so later writes
    /// of the same group see them) if the group's commit fails.
    pub fn on_rollback(&mut self, f: impl FnOnce(&Engine) + Send + 'static) {
        self.undo.push(Box::new(f));
    }
}

pub enum Op {
    Append {
        batch: WriteBatch,
        /// What the fan-out publishes once the batch is committed.
        events: Vec<Draft>,
        also: Option<Also>,
        enqueued: Instant,
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
    Exec {
        f: ExecFn,
        ack: oneshot::Sender<Result<AnyBox, StoreError>>,
    },
}

const MAX_GROUP: usize = 2048;

/// How long an unsynced commit waits for a synced one to carry it to the
/// disk before the writer syncs the log itself: a data group arriving
/// meanwhile then pays one fsync, not the sync's and its own in a row (at
/// 10k events/s, 40 % of the alarm commits found no data group queued).
const SYNC_GRACE: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether a group commit waits for the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Durable {
    /// Every acknowledged write: the commit returns once its log is on
    /// the disk.
    Now,
    /// A rule batch's alarm changes: visible at once, on the disk with
    /// the next synced commit (under load the data group right after it)
    /// or the writer's own sync of the log if none came within
    /// `SYNC_GRACE`. They are derived: a power cut that loses them loses
    /// everything after them in the log too (the rules' position with
    /// it), so the replay raises them again from the acknowledged
    /// telemetry, under the same ids. A process crash loses nothing (the
    /// log is in the page cache).
    Later,
}

pub struct Writer {
    pub conn: Db,
    /// Where `conn` came from: a PostgreSQL connection that broke is
    /// replaced from here (`reconnect`).
    pub source: super::backend::Source,
    pub last_reconnect: Option<Instant>,
    pub engine: Arc<Engine>,
    pub data: mpsc::Receiver<Op>,
    /// Small writes on a latency path (a rule batch's alarm changes):
    /// committed in a group of their own ahead of whatever data is
    /// queued, so an alarm never waits behind a full queue of ingest.
    pub urgent: mpsc::Receiver<Op>,
    pub ctrl: mpsc::UnboundedReceiver<Ctrl>,
    /// Above this many head points (while a flush is still running) the
    /// writer stops taking appends: back-pressure instead of unbounded
    /// memory.
    pub head_limit: usize,
    /// The data directory: free space is measured there.
    pub dir: std::path::PathBuf,
    /// Background work done in steps between group commits (`install`).
    pub(super) installing: Option<super::install::Installing>,
    pub(super) reclaiming: Option<super::install::Reclaiming>,
    /// Free pages kept in the file under heavy ingest: what the batch log
    /// freed at the last cut, which it takes again before the next one.
    /// All are given back once the writer is idle.
    pub(super) log_reserve: i64,
    pub(super) last_cut: Option<std::time::Instant>,
    /// Starting the write-ahead log over (`wal.rs`).
    pub(super) restarts: super::wal::Restarts,
    /// PostgreSQL's partitions of `chunks` and `batch_log` (`partitions`).
    pub(super) parts: super::partitions::Known,
    /// Told the term each time the writer retakes the lock (`StoreOptions`).
    pub(super) on_writer_lock: Option<super::OnWriterLock>,
    /// Something was written since the disk was last given back: done
    /// once the writer has been idle a moment.
    pub written: bool,
    /// An urgent group committed without waiting for the disk and no
    /// synced commit has carried it there yet: when the writer syncs the
    /// log itself (`sync_log`) if none has by then.
    pub unsynced: Option<Instant>,
    /// The embedded store's write-ahead log, opened again here to sync it
    /// when no synced commit follows an unsynced one at once.
    pub log_file: Option<std::fs::File>,
    /// Held until the connection is closed, so a new process (or a new
    /// in-process server) can open the directory only after this writer is
    /// gone.
    pub _lock: super::DirLock,
}

/// Writer work longer than this is logged at debug level (where a stall
/// of the acknowledgements comes from).
const SLOW: std::time::Duration = std::time::Duration::from_millis(8);

/// Ends a turn of the writer's other than a group commit (a compactor
/// control, a background step): traced like every turn, logged when slow.
pub(super) fn slow(what: &str, ops: usize, t: Instant, cpu0: f64) {
    turn(what, ops, t);
    if t.elapsed() > SLOW {
        tracing::debug!(
            what,
            ops,
            ms = t.elapsed().as_secs_f64() * 1e3,
            cpu_ms = (thread_cpu_ms() - cpu0),
            "slow writer turn"
        );
    }
}

pub(super) use crate::metrics::thread_cpu_ms;

/// One writer turn, for a timeline of what ingest waits behind
/// (`RUST_LOG=twinhub_server::store::turns=trace`, `benches/writer_turns.py`).
fn turn(kind: &str, ops: usize, t: Instant) {
    tracing::trace!(target: "twinhub_server::store::turns", kind, ops, us = t.elapsed().as_micros() as u64, "turn");
}

/// `first` and whatever else is queued behind it (at most `MAX_GROUP`):
/// one group commit.
fn group_from(first: Op, queue: &mut mpsc::Receiver<Op>) -> Vec<Op> {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(op) => group.push(op),
            Err(_) => break,
        }
    }
    group
}

impl Writer {
    pub fn run(mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("writer runtime");
        rt.block_on(async {
            let mut urgent_open = true;
            loop {
                let stalled = self.engine.active.read().expect("head").points >= self.head_limit
                    && self.engine.frozen.read().expect("frozen").is_some();
                self.wal_tick();
                let pacing = self.wal_pacing() && !self.has_steps();
                tokio::select! {
                    biased;
                    // Urgent first: an alarm commit is small and
                    // every alarm waits for it.
                    u = self.urgent.recv(), if urgent_open => match u {
                        Some(op) => self.commit_queued(op, true),
                        // Its senders gone: not asked again (a closed
                        // queue is always ready and would starve the rest).
                        None => urgent_open = false,
                    },
                    c = self.ctrl.recv() => match c {
                        Some(Ctrl::Shutdown) | None => {
                            self.finish_steps();
                            self.urgent.close();
                            self.data.close();
                            while let Ok(op) = self.urgent.try_recv() {
                                self.commit_group(vec![op], Durable::Now);
                            }
                            while let Ok(op) = self.data.try_recv() {
                                self.commit_group(vec![op], Durable::Now);
                            }
                            break;
                        }
                        Some(Ctrl::Pause(until)) => {
                            let _ = until.await;
                        }
                        Some(c) => {
                            let (t, cpu) = (Instant::now(), thread_cpu_ms());
                            self.control(c);
                            slow("control", 0, t, cpu);
                            self.written = true;
                        }
                    },
                    d = self.data.recv(), if !stalled => match d {
                        Some(op) => {
                            self.commit_queued(op, false);
                            // Under steady load data is always queued:
                            // background work gets a step after each group
                            // (after an urgent group waiting, not before it).
                            if self.has_steps() && self.urgent.is_empty() {
                                self.step();
                            }
                        }
                        None => break,
                    },
                    // An unsynced alarm commit and no data group came to
                    // carry it to the disk within `SYNC_GRACE`: synced on
                    // its own.
                    _ = tokio::time::sleep_until(self.unsynced.unwrap_or_else(Instant::now).into()), if self.unsynced.is_some() => self.sync_log(),
                    _ = std::future::ready(()), if self.has_steps() => self.step(),
                    // An install waiting for the checkpointer (`wal.rs`).
                    _ = tokio::time::sleep(std::time::Duration::from_millis(5)), if pacing => self.step(),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(20)), if stalled => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)), if self.written && !stalled => {
                        self.written = false;
                        self.reclaim(super::install::Reclaim::Idle);
                    }
                }
            }
        });
        match &self.conn {
            Db::Sqlite(c) => {
                let _ = c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            }
            // The writer lock goes with the session, but PostgreSQL ends a
            // closed session on its own time: a server restarted at once
            // (or another node) would find the lock still held. Given back
            // here, it is free when `close` returns.
            Db::Pg(c) => {
                let _ = c.batch("SELECT pg_advisory_unlock_all()");
            }
        }
    }

    /// Replaces a PostgreSQL connection the server ended (a restart, a
    /// failover, a terminated backend), at most twice a second. Nothing is
    /// lost meanwhile: groups that failed were answered with errors, and
    /// the head holds only what committed. The new connection takes the
    /// store's writer lock again, so if another node took it meanwhile
    /// this one keeps failing instead of writing beside it.
    pub(super) fn reconnect(&mut self) {
        if !self.conn.is_broken()
            || self
                .last_reconnect
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(500))
        {
            return;
        }
        self.last_reconnect = Some(Instant::now());
        match self.source.open_writer() {
            Ok(db) => match Source::take_term(&db) {
                Ok(term) => {
                    tracing::warn!("the store's connection to PostgreSQL was lost and is back");
                    if let Some(f) = &self.on_writer_lock {
                        f(term);
                    }
                    self.conn = db;
                }
                Err(e) => tracing::warn!(error = %e, "PostgreSQL is still unreachable"),
            },
            Err(StoreError::StoreInUse(_)) => {
                tracing::error!("another node took the store's writer lock while this one was cut off from PostgreSQL");
                self.engine
                    .health
                    .writer_lock_lost
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(error = %e, "PostgreSQL is still unreachable"),
        }
    }

    /// Commits `first` with whatever else waits in its queue (the urgent
    /// one or the data one) as one group. An urgent group does not wait
    /// for the disk (see `Durable::Later`).
    fn commit_queued(&mut self, first: Op, urgent: bool) {
        let (queue, sync) = if urgent {
            (&mut self.urgent, Durable::Later)
        } else {
            (&mut self.data, Durable::Now)
        };
        let group = group_from(first, queue);
        let (t, n) = (Instant::now(), group.len());
        self.commit_group(group, sync);
        turn(if urgent { "urgent" } else { "data" }, n, t);
        self.written = true;
    }

    /// Makes an unsynced commit durable when no synced one came to do it:
    /// a sync of the embedded store's log (both engines write their logs
    /// in order, so this carries every commit before it).
    fn sync_log(&mut self) {
        self.unsynced = None;
        let t = Instant::now();
        // PostgreSQL's WAL writer flushes an asynchronous commit on its
        // own within three `wal_writer_delay`s.
        let Db::Sqlite(c) = &self.conn else {
            return;
        };
        if self.log_file.is_none() {
            // The log lives as long as the writer's connection: SQLite
            // truncates it (`journal_size_limit`) but removes it only when
            // the last connection closes.
            self.log_file = c
                .path()
                .and_then(|p| std::fs::File::open(format!("{p}-wal")).ok());
        }
        let synced = match &self.log_file {
            Some(f) => f.sync_data(),
            None => Err(std::io::Error::other("the write-ahead log is not there")),
        };
        if let Err(e) = synced {
            // Opened again next time; meanwhile the next synced commit
            // carries it.
            self.log_file = None;
            tracing::warn!(error = %e, "the write-ahead log could not be synced");
        }
        turn("sync", 0, t);
    }

    fn commit_group(&mut self, group: Vec<Op>, sync: Durable) {
        let (t0, cpu0) = (Instant::now(), thread_cpu_ms());
        self.reconnect();
        let engine = self.engine.clone();
        // Under the free-space reserve, telemetry is refused before it is
        // written, so compaction, the final flush and the next start keep
        // the room they need. Registry changes still go through.
        let group = if group.iter().any(|op| matches!(op, Op::Append { .. }))
            && engine.health.check_space(&self.dir, &engine.faults, false)
        {
            let (appends, rest): (Vec<Op>, Vec<Op>) = group
                .into_iter()
                .partition(|op| matches!(op, Op::Append { .. }));
            engine
                .health
                .refused_low_space
                .fetch_add(appends.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for op in appends {
                if let Op::Append { ack, .. } = op {
                    let _ = ack.send(Err(StoreError::NoSpace));
                }
            }
            if rest.is_empty() {
                return;
            }
            rest
        } else {
            group
        };
        let mut new_series: HashMap<SeriesKey, u32> = HashMap::new();
        let mut appended: Vec<(u32, Vec<Point>)> = Vec::new();
        let (mut log_bytes, mut seq) = (0usize, 0u64);
        let mut results: Vec<Result<Option<AnyBox>, StoreError>> = Vec::with_capacity(group.len());
        let mut hooks: Vec<Hook> = Vec::new();
        let mut undo: Vec<Hook> = Vec::new();
        let now = engine.clock.now_us();
        let mut drafts: Vec<Vec<Draft>> = Vec::with_capacity(group.len());
        let mut group = group;
        for op in group.iter_mut() {
            drafts.push(match op {
                Op::Append { events, .. } => std::mem::take(events),
                Op::Exec { .. } => Vec::new(),
            });
        }

        let mut copies: Vec<super::mqtt::QueuedRow> = Vec::new();
        // The writer numbers the log's records itself (the next after the
        // last committed), so it knows the partition a record goes to.
        let next_seq = engine.last_seq.load(std::sync::atomic::Ordering::SeqCst) + 1;
        let has_appends = group.iter().any(|op| matches!(op, Op::Append { .. }));
        let sql = self.conn.sql();
        let outcome = (|| -> Result<(), StoreError> {
            if has_appends {
                super::partitions::ensure(
                    sql,
                    &mut self.parts,
                    super::partitions::Table::BatchLog,
                    [next_seq as i64],
                )?;
            }
            match sync {
                Durable::Later => self.conn.begin_unsynced()?,
                Durable::Now => self.conn.begin()?,
            }
            for (i, op) in group.iter_mut().enumerate() {
                match op {
                    Op::Append { batch, also, .. } => {
                        match also.take() {
                            Some(Also::Write(f)) => {
                                match in_savepoint(sql, &engine, f, &mut hooks, &mut undo) {
                                    Ok(((), events)) => drafts[i].extend(events),
                                    Err(e) => {
                                        results.push(Err(e));
                                        continue;
                                    }
                                }
                            }
                            Some(Also::Copies(rows)) => copies.extend(rows),
                            None => {}
                        }
                        appended.extend(resolve(sql, &engine, &mut new_series, batch)?);
                        results.push(Ok(None));
                    }
                    Op::Exec { .. } => results.push(Ok(None)),
                }
            }
            if !copies.is_empty() {
                super::mqtt::enqueue(sql, &copies.iter().collect::<Vec<_>>())?;
            }
            // One record for the group: a row per append cost ~30 bytes
            // of row and page overhead per request, which for one point
            // per series per body was most of the log.
            if !appended.is_empty() {
                let data = batch::encode(appended.iter().map(|(s, p)| (*s, p.as_slice())));
                log_bytes = data.len();
                // Sent with the group's next statement or its COMMIT.
                sql.exec_later(
                    "INSERT INTO batch_log(seq, received, data) VALUES (?1, ?2, ?3)",
                    args![next_seq as i64, now, &data],
                )?;
                seq = next_seq;
            }
            Ok(())
        })();
        // What the appends held back (`exec_later`) is sent before the
        // first savepoint: an error of theirs must fail the group here, not
        // be taken for a registry change's own (PostgreSQL would then
        // answer the COMMIT of the aborted transaction with a rollback,
        // which is no error to the client).
        let outcome = outcome.and_then(|_| {
            if group.iter().any(|op| matches!(op, Op::Exec { .. })) {
                sql.flush()?;
            }
            Ok(())
        });

        // Registry closures run each in a savepoint so one refused change
        // (a conflict) does not fail its neighbours.
        if outcome.is_ok() {
            for (i, op) in group.iter_mut().enumerate() {
                if let Op::Exec { f, .. } = op {
                    let f = std::mem::replace(f, Box::new(|_| Ok(Box::new(()))));
                    match in_savepoint(sql, &engine, f, &mut hooks, &mut undo) {
                        Ok((v, events)) => {
                            drafts[i] = events;
                            results[i] = Ok(Some(v));
                        }
                        Err(e) => results[i] = Err(e),
                    }
                }
            }
        }
        // Events get their ids in operation order; with durable consumers
        // they are stored in this same transaction.
        let mut last_id = engine.last_event_id();
        let first_id = last_id;
        let at = engine.clock.now_us();
        let durable = engine.outbox_on.load(std::sync::atomic::Ordering::SeqCst);
        let mut committed_events: Vec<Event> = Vec::new();
        let outcome = outcome.and_then(|_| {
            for (i, ds) in drafts.into_iter().enumerate() {
                if ds.is_empty() || matches!(results[i], Err(_)) {
                    continue;
                }
                let from = committed_events.len();
                for d in ds {
                    last_id += 1;
                    committed_events.push(d.with_id(last_id, at));
                }
                if durable {
                    outbox::insert(sql, &committed_events[from..])?;
                }
            }
            Ok(())
        });
        let t_statements = t0.elapsed();
        let committed = outcome.and_then(|_| {
            if Faults::on(&engine.faults.commit) {
                return Err(Faults::injected("group commit"));
            }
            // A group that did not commit is never acknowledged.
            sql.commit()
        });
        let t_commit = t0.elapsed();
        tracing::trace!(target: "twinhub_server::store::turns", stmt_us = t_statements.as_micros() as u64, commit_us = (t_commit - t_statements).as_micros() as u64, "group");
        if sync == Durable::Later {
            // Acknowledgements rest on this: no data group may commit
            // unsynced.
            self.conn
                .sync_commits(true)
                .expect("synchronous back to FULL");
        }
        if let Err(e) = committed {
            let _ = sql.batch("ROLLBACK");
            tracing::error!(error = %e, "group commit failed");
            undo_all(undo, &engine);
            for op in group {
                match op {
                    Op::Append { ack, .. } => {
                        let _ = ack.send(Err(StoreError::Unavailable));
                    }
                    Op::Exec { ack, .. } => {
                        let _ = ack.send(Err(StoreError::Unavailable));
                    }
                }
            }
            return;
        }

        // Durable (or, unsynced, carried to the disk by the next synced
        // commit or `sync_log`): make it visible, then acknowledge.
        if sync == Durable::Now {
            self.unsynced = None;
        } else if self.unsynced.is_none() {
            self.unsynced = Some(Instant::now() + SYNC_GRACE);
        }
        if !new_series.is_empty() {
            engine.index.write().expect("index").add(new_series);
        }
        if !appended.is_empty() {
            let mut head = engine.active.write().expect("head");
            head.log_bytes += log_bytes;
            let mut latest = engine.latest.write().expect("latest");
            let mut points = 0u64;
            for (sid, pts) in &appended {
                head.append(*sid, pts, seq);
                points += pts.len() as u64;
                if let Some(newest) = pts.iter().max_by_key(|p| p.ts) {
                    match latest.get(sid) {
                        Some(cur) if cur.ts > newest.ts => {}
                        _ => {
                            latest.insert(*sid, newest.clone());
                        }
                    }
                }
            }
            engine
                .last_seq
                .store(seq, std::sync::atomic::Ordering::SeqCst);
            engine.metrics.points_committed.add(points);
        }
        let t_head = t0.elapsed();
        for h in hooks {
            h(&engine);
        }
        let t_hooks = t0.elapsed();
        engine
            .event_seq
            .store(last_id, std::sync::atomic::Ordering::SeqCst);
        engine.bus.publish_committed(committed_events);
        let t_published = t0.elapsed();
        engine.metrics.commits.inc();
        if t0.elapsed() > SLOW {
            let appends = group
                .iter()
                .filter(|op| matches!(op, Op::Append { .. }))
                .count();
            tracing::debug!(
                ops = group.len(),
                appends,
                points = appended.iter().map(|(_, p)| p.len()).sum::<usize>(),
                series = appended.len(),
                events = last_id - first_id,
                statements_ms = t_statements.as_secs_f64() * 1e3,
                commit_ms = (t_commit - t_statements).as_secs_f64() * 1e3,
                head_ms = (t_head - t_commit).as_secs_f64() * 1e3,
                hooks_ms = (t_hooks - t_head).as_secs_f64() * 1e3,
                publish_ms = (t_published - t_hooks).as_secs_f64() * 1e3,
                total_ms = t0.elapsed().as_secs_f64() * 1e3,
                cpu_ms = thread_cpu_ms() - cpu0,
                "slow group"
            );
        }
        for (op, res) in group.into_iter().zip(results) {
            match op {
                Op::Append { enqueued, ack, .. } => {
                    engine.metrics.durable_latency.observe(enqueued.elapsed());
                    let _ = ack.send(res.map(|_| 0));
                }
                Op::Exec { ack, .. } => {
                    let _ = ack.send(res.map(|v| v.unwrap_or_else(|| Box::new(()))));
                }
            }
        }
    }
}

/// Undoes in-memory changes whose rows were rolled back, latest first.
fn undo_all(undo: Vec<Hook>, engine: &Engine) {
    for u in undo.into_iter().rev() {
        u(engine);
    }
}

/// Runs `f` in a savepoint of the open transaction: kept, with its hooks
/// and events, if it succeeds; undone alone (its neighbours go on) if not.
fn in_savepoint<R>(
    conn: &dyn Sql,
    engine: &Engine,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError>,
    hooks: &mut Vec<Hook>,
    undo: &mut Vec<Hook>,
) -> Result<(R, Vec<Draft>), StoreError> {
    // On PostgreSQL the savepoint and its release travel with the next
    // statements (a round trip each otherwise: half of a PATCH's).
    conn.batch_later("SAVEPOINT op")?;
    let mut ctx = WriteCtx {
        tx: conn,
        engine,
        hooks: Vec::new(),
        undo: Vec::new(),
        events: Vec::new(),
    };
    // What the closure held back (`exec_later`) is sent before it counts
    // as done, so its errors undo it alone.
    match f(&mut ctx).and_then(|v| conn.flush().map(|_| v)) {
        Ok(v) => {
            conn.batch_later("RELEASE op")?;
            hooks.append(&mut ctx.hooks);
            undo.append(&mut ctx.undo);
            Ok((v, ctx.events))
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK TO op; RELEASE op");
            // What it changed in memory before it failed goes with its
            // rows (its neighbours' commit would otherwise keep it).
            undo_all(ctx.undo, engine);
            Err(e)
        }
    }
}

fn resolve(
    conn: &dyn Sql,
    engine: &Engine,
    new_series: &mut HashMap<SeriesKey, u32>,
    batch: &WriteBatch,
) -> Result<Vec<(u32, Vec<Point>)>, StoreError> {
    let index = engine.index.read().expect("index");
    let mut out = Vec::with_capacity(batch.entries.len());
    for (key, points) in &batch.entries {
        let sid = match index.sid(key).or_else(|| new_series.get(key).copied()) {
            Some(s) => s,
            None => {
                let sid: u32 = conn.one(
                    "INSERT INTO series(tenant, twin, name) VALUES (?1, ?2, ?3) RETURNING id",
                    args![&key.tenant, &key.twin, &key.name],
                )?;
                new_series.insert(key.clone(), sid);
                sid
            }
        };
        out.push((sid, points.clone()));
    }
    Ok(out)
}

/// Replays the batch log into a head at start-up, skipping points that a
/// recorded history deletion removed after they were written.
pub fn replay(conn: &dyn Sql, head: &mut Head) -> Result<(u64, usize), StoreError> {
    let tombs: Vec<(u32, i64, i64, u64)> = conn.rows(
        "SELECT series_id, from_ts, to_ts, seq FROM tombstones",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<i64>(3)? as u64)),
    )?;
    let (mut last, mut n) = (0u64, 0usize);
    conn.each(
        "SELECT seq, data FROM batch_log ORDER BY seq",
        args![],
        &mut |row| {
            let seq = row.get::<i64>(0)? as u64;
            let data: Vec<u8> = row.get(1)?;
            for (sid, mut pts) in batch::decode(&data)? {
                for (tsid, from, to, tseq) in &tombs {
                    if *tsid == sid && seq <= *tseq {
                        pts.retain(|p| p.ts < *from || p.ts >= *to);
                    }
                }
                n += pts.len();
                head.append(sid, &pts, seq);
            }
            last = seq;
            Ok(())
        },
    )?;
    Ok((last, n))
}
