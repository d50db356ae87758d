//! The writer's background work, done in short steps between group
//! commits: installing a flush's chunks and cutting the batch log, then
//! giving freed pages back to the file system. Done in one go, a flush of
//! 60,000 chunks held every queued commit (acknowledgements, the rules
//! engine's alarms) for 1.6 s.
//!
//! A crash between steps needs no marker: the batch log is cut only once
//! every chunk is in, so replay brings the points back into the head, and
//! queries and merges already read a point found both in the head and in
//! a chunk, or in two chunks of one window, once (the head's copy, or the
//! later chunk's, wins). The next flush writes them again and the window's
//! merge folds the copies.
//!
//! Called only from the writer thread (`Writer::step`); it may call the
//! writer's `insert_chunk` and nothing above `store`.

use super::chunk;
use super::health::Faults;
use super::sql::args;
use super::writer::{insert_chunk, Writer};
use super::{NewChunk, StoreError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Writer time one step may take before queued groups get their turn.
const STEP_BUDGET: Duration = Duration::from_millis(2);
/// Batch-log rows deleted per statement while cutting the log (a row is
/// one group commit's points, up to a few hundred kilobytes).
const LOG_ROWS_PER_DELETE: i64 = 8;
/// Flushes closer together than this keep the batch log's freed pages
/// for the next fill (`Writer::log_reserve`).
const LOG_REFILLS_SOON: Duration = Duration::from_secs(60);
/// Pages released per `incremental_vacuum` call.
const VACUUM_PAGES: i64 = 64;

/// A flush being installed.
pub(super) struct Installing {
    chunks: std::vec::IntoIter<NewChunk>,
    upto_seq: u64,
    ack: oneshot::Sender<Result<(), StoreError>>,
    /// All chunks are in; the batch log is being cut.
    cutting: bool,
    /// Free pages when the cut began.
    free_before: Option<i64>,
    n: usize,
    slices: u32,
    busy: Duration,
    started: Instant,
    /// What the last slice's commit took (writing its pages to the
    /// write-ahead log, no fsync): as long again as its inserts if not
    /// counted, so the next slice inserts for the budget less that.
    last_commit: Duration,
}

/// What freed the pages being given back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Reclaim {
    /// A flush installed (the batch log's rows cut: the most pages).
    Flush,
    /// A merge of windows (small: left to accumulate).
    Merge,
    /// The writer is idle: everything goes back, and the write-ahead log
    /// is truncated — only then: under load, truncating stalled every
    /// commit queued behind it (30–68 ms).
    Idle,
}

/// Freed pages being given back, then the write-ahead log truncated.
pub(super) struct Reclaiming {
    /// Truncate the write-ahead log at the end.
    wal: bool,
    /// Start only above this many free pages (a compaction frees the most;
    /// small merges are left to accumulate).
    min_free: i64,
    /// Free pages left in the file (see `Writer::log_reserve`).
    keep: i64,
    started: bool,
    pages: i64,
    busy: Duration,
    /// Flushes answered once their pages are back: a flush that returned
    /// has given the disk back (what `du` shows a user).
    then_ack: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

impl Writer {
    /// Takes a flush's chunks; they go in over the next steps and `ack`
    /// answers once the batch log is cut.
    pub(super) fn begin_install(
        &mut self,
        chunks: Vec<NewChunk>,
        upto_seq: u64,
        ack: oneshot::Sender<Result<(), StoreError>>,
    ) {
        debug_assert!(self.installing.is_none(), "flushes are serialised");
        if Faults::on(&self.engine.faults.install) {
            let _ = ack.send(Err(Faults::injected("chunk install")));
            return;
        }
        self.installing = Some(Installing {
            n: chunks.len(),
            chunks: chunks.into_iter(),
            upto_seq,
            ack,
            cutting: false,
            free_before: None,
            slices: 0,
            busy: Duration::ZERO,
            started: Instant::now(),
            last_commit: Duration::ZERO,
        });
    }

    /// Asks for free pages to be given back (merged with a pending ask):
    /// after a flush or a merge down to the batch log's reserve; all of
    /// them, and the write-ahead log truncated, when the writer is idle.
    pub(super) fn reclaim(&mut self, after: Reclaim) {
        let wal = after == Reclaim::Idle;
        let min_free = if after == Reclaim::Merge { 256 } else { 16 };
        let keep = if wal { 0 } else { self.log_reserve };
        match &mut self.reclaiming {
            Some(r) => {
                r.wal |= wal;
                r.min_free = r.min_free.min(min_free);
                r.keep = r.keep.min(keep);
            }
            None => {
                self.reclaiming = Some(Reclaiming {
                    wal,
                    min_free,
                    keep,
                    started: false,
                    pages: 0,
                    busy: Duration::ZERO,
                    then_ack: Vec::new(),
                })
            }
        }
    }

    pub(super) fn has_steps(&self) -> bool {
        self.wal_restart_due() || self.install_may_step() || self.reclaim_may_step()
    }

    /// Pages are given back once an install is over (its log cut frees
    /// the most).
    fn reclaim_may_step(&self) -> bool {
        self.installing.is_none() && self.reclaiming.is_some()
    }

    fn install_may_step(&self) -> bool {
        self.installing
            .as_ref()
            .is_some_and(|job| job.slices == 0 || !Faults::on(&self.engine.faults.install_hold))
            && !self.wal_holds_install()
    }

    /// One step of background work, about `STEP_BUDGET` long.
    pub(super) fn step(&mut self) {
        let (t, cpu) = (Instant::now(), super::writer::thread_cpu_ms());
        self.reconnect();
        if self.wal_restart_due() {
            self.wal_restart();
            super::writer::slow("wal", 0, t, cpu);
        } else if self.install_may_step() {
            let cutting = self.installing.as_ref().is_some_and(|j| j.cutting);
            self.install_step();
            super::writer::slow(if cutting { "cut" } else { "install" }, 0, t, cpu);
        } else if self.reclaim_may_step() {
            self.reclaim_step();
            super::writer::slow("reclaim", 0, t, cpu);
        }
    }

    /// Runs every pending step (at shutdown; a held install is left to
    /// the next start's replay, as after a crash).
    pub(super) fn finish_steps(&mut self) {
        // No more pacing: what is left goes in now (the log is cut short
        // once the writer stops).
        self.restarts.closing = true;
        while self.has_steps() {
            self.step();
        }
    }

    fn install_step(&mut self) {
        let Some(mut job) = self.installing.take() else {
            return;
        };
        let t = Instant::now();
        // Steps commit without an fsync of their own (`unsynced`): what
        // they write can be redone from the batch log, and the next group
        // commit's fsync makes them durable with it (the write-ahead log is
        // replayed in order, so a step is never kept without what came
        // before it). Synced, each step cost an fsync beside each group's.
        let res = if job.cutting {
            self.cut_log(&mut job, t)
        } else {
            self.insert_slice(&mut job, t)
        };
        job.busy += t.elapsed();
        job.slices += 1;
        match res {
            Err(e) => {
                // The frozen head stays (or, if the chunks are in, the log
                // rows do): the next flush does it again, and copies of
                // points already installed are folded by the merge.
                let _ = job.ack.send(Err(e));
            }
            Ok(true) => {
                self.engine.metrics.flushes.inc();
                // Weeks of chunks that retention emptied go as tables (on
                // PostgreSQL; at most every few minutes).
                let week_ago =
                    self.engine.clock.now_us() / super::WINDOW - super::partitions::CHUNK_SPAN;
                match super::partitions::drop_empty_chunks(
                    self.conn.sql(),
                    &mut self.parts,
                    week_ago,
                ) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        partitions = n,
                        "dropped chunk partitions emptied by retention"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not drop emptied chunk partitions"),
                }
                // Everything queued behind the writer waited at most one
                // step at a time, `busy` in all.
                tracing::debug!(
                    chunks = job.n,
                    slices = job.slices,
                    busy_ms = job.busy.as_secs_f64() * 1e3,
                    took_ms = job.started.elapsed().as_secs_f64() * 1e3,
                    "flush installed"
                );
                self.reclaim(Reclaim::Flush);
                if let Some(r) = self.reclaiming.as_mut() {
                    r.then_ack.push(job.ack);
                }
            }
            Ok(false) => self.installing = Some(job),
        }
    }

    /// Inserts chunks for one step in one transaction. Once the last is
    /// in, the frozen head is dropped (the chunks hold its points).
    fn insert_slice(&mut self, job: &mut Installing, t: Instant) -> Result<bool, StoreError> {
        // Ranges deleted while the flush was encoding, or between slices,
        // must not come back.
        let deletes = self
            .engine
            .deletes_since_freeze
            .lock()
            .expect("deletes")
            .clone();
        if job.slices == 0 {
            super::partitions::ensure(
                self.conn.sql(),
                &mut self.parts,
                super::partitions::Table::Chunks,
                job.chunks.as_slice().iter().map(|c| c.win),
            )?;
        }
        let mut ti = Duration::ZERO;
        // The whole step (inserts and commit) within the budget: every
        // group queued behind it waits for all of it.
        let inserts = STEP_BUDGET
            .saturating_sub(job.last_commit)
            .max(STEP_BUDGET / 8);
        let touched = self.conn.transaction(true, |tx| {
            let mut touched = Vec::new();
            // At least one chunk per step, whatever the step spent before
            // (making partitions): every step makes progress.
            while touched.is_empty() || t.elapsed() < inserts {
                let Some(c) = job.chunks.next() else {
                    break;
                };
                let Some(c) = without_deleted(c, &deletes)? else {
                    continue;
                };
                insert_chunk(tx, &c)?;
                touched.push((c.sid, c.win));
            }
            ti = t.elapsed();
            Ok(touched)
        })?;
        job.last_commit = t.elapsed().saturating_sub(ti);
        tracing::trace!(
            n = touched.len(),
            insert_us = ti.as_micros() as u64,
            total_us = t.elapsed().as_micros() as u64,
            "slice"
        );
        self.engine.dirty.lock().expect("dirty").extend(touched);
        if job.chunks.len() == 0 {
            let installed = self.engine.frozen.write().expect("frozen").take();
            // Freeing a flushed head (a million points in tens of thousands
            // of buffers) took 10–40 ms: not on the writer's thread.
            let _ = std::thread::Builder::new()
                .name("twinhub-free".into())
                .spawn(move || drop(installed));
            job.cutting = true;
        }
        Ok(false)
    }

    /// Deletes the flushed batch-log rows for one step; the tombstones
    /// they needed go with the last of them.
    fn cut_log(&mut self, job: &mut Installing, t: Instant) -> Result<bool, StoreError> {
        if job.free_before.is_none() {
            job.free_before = Some(free_pages(&self.conn)?);
        }
        let upto = job.upto_seq as i64;
        let parts = &mut self.parts;
        let mut dropped = 0;
        let done = self.conn.transaction(true, |tx| {
            // Whole partitions go as tables; the rest row by row.
            dropped = super::partitions::drop_log_upto(tx, parts, upto)?;
            while t.elapsed() < STEP_BUDGET {
                let n = tx.exec(
                    "DELETE FROM batch_log WHERE seq IN
                     (SELECT seq FROM batch_log WHERE seq <= ?1 ORDER BY seq LIMIT ?2)",
                    args![upto, LOG_ROWS_PER_DELETE],
                )?;
                if (n as i64) < LOG_ROWS_PER_DELETE {
                    tx.exec("DELETE FROM tombstones WHERE seq <= ?1", args![upto])?;
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if dropped > 0 {
            super::partitions::forget_log_upto(parts, upto);
        }
        if done {
            // The log refills its pages before the next flush when that
            // comes soon (ingest fills the head, not the timer): moving
            // them to the end of the file and back each time was a second
            // of the writer's time per flush under heavy ingest.
            let freed = free_pages(&self.conn)? - job.free_before.unwrap_or(0);
            let soon = self
                .last_cut
                .is_some_and(|t| t.elapsed() < LOG_REFILLS_SOON);
            self.log_reserve = if soon { freed.max(0) } else { 0 };
            self.last_cut = Some(Instant::now());
        }
        Ok(done)
    }

    /// Releases free pages for one step; once none are left, truncates
    /// the write-ahead log if asked (never waiting for a reader: ingest
    /// must not stall).
    fn reclaim_step(&mut self) {
        let Some(mut r) = self.reclaiming.take() else {
            return;
        };
        let t = Instant::now();
        // PostgreSQL gives space back by itself (autovacuum).
        let Some(conn) = self.conn.sqlite() else {
            for ack in r.then_ack {
                let _ = ack.send(Ok(()));
            }
            return;
        };
        loop {
            let free = free_pages(&self.conn).unwrap_or(0);
            if free <= r.keep || (!r.started && free < r.keep + r.min_free) {
                break;
            }
            if !r.started {
                r.started = true;
                r.pages = free;
            }
            if t.elapsed() >= STEP_BUDGET {
                r.busy += t.elapsed();
                self.reclaiming = Some(r);
                return;
            }
            let released = conn
                .prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))
                .and_then(|mut stmt| {
                    let mut rows = stmt.query([])?;
                    while rows.next()?.is_some() {}
                    Ok(())
                });
            if let Err(e) = released {
                tracing::warn!(error = %e, "free pages could not be released");
                break;
            }
        }
        // Truncating copies the whole log and fsyncs on this thread: only
        // when nothing waits for it. Under load the checkpointer copies
        // the log and it restarts within `journal_size_limit`; the idle
        // writer truncates it later.
        if r.wal && self.data.is_empty() {
            let t = Instant::now();
            let _ = conn.busy_timeout(Duration::ZERO);
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            let _ = conn.busy_timeout(super::db::BUSY_TIMEOUT);
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "wal truncated");
        }
        r.busy += t.elapsed();
        if r.started {
            tracing::debug!(
                pages = r.pages,
                busy_ms = r.busy.as_secs_f64() * 1e3,
                "free pages released"
            );
        }
        for ack in r.then_ack {
            let _ = ack.send(Ok(()));
        }
    }
}

/// Free pages in the file (none to give back on PostgreSQL).
fn free_pages(conn: &super::backend::Db) -> Result<i64, StoreError> {
    match conn.sqlite() {
        Some(c) => Ok(c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?),
        None => Ok(0),
    }
}

/// The chunk without the points deleted since the flush froze its head
/// (None if nothing is left).
fn without_deleted(
    c: NewChunk,
    deletes: &[(u32, i64, i64)],
) -> Result<Option<NewChunk>, StoreError> {
    let hit = deletes
        .iter()
        .any(|(sid, from, to)| *sid == c.sid && *from <= c.max_ts && *to > c.min_ts);
    if !hit {
        return Ok(Some(c));
    }
    let mut cols = chunk::decode(&c.data)?;
    for (sid, from, to) in deletes {
        if *sid == c.sid {
            cols.remove_range(*from, *to);
        }
    }
    Ok((!cols.is_empty()).then(|| NewChunk::new(c.sid, cols)))
}
