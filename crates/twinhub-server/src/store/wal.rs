//! Keeping the write-ahead log short under steady writes.
//!
//! SQLite starts the log over only when a write transaction begins with
//! every frame already copied into the database. The checkpointer thread
//! (`checkpoint.rs`) copies beside the writer, which commits again while
//! it copies, so under steady ingest the log never looked fully copied:
//! it grew to the backstop (64,000 frames, 67 MB, within seconds under
//! `twinhub bench rules`), and from then on the commit that crossed it
//! copied the rest inside itself, 30–43 ms with every acknowledgement
//! waiting — mostly a flush's install steps, which write tens of
//! megabytes in a few hundred milliseconds.
//!
//! So the writer finishes the copy itself, between group commits, once
//! the log is past `RESTART_FRAMES` and a run of the checkpointer has just
//! left little to copy (it wakes the checkpointer again until a run does);
//! its next transaction starts the log over. Installing a flush waits while
//! the log is past that mark and not yet copied, so it goes at the pace
//! the checkpointer copies; after `PACE_AT_MOST` it goes on anyway (a
//! long reader can hold the log) and the backstop still holds.
//!
//! Owns the frame count the writer's connection reports after each
//! commit (a `wal_hook`, run on the writer's thread) and what the
//! checkpointer reports after each run. Called from the writer and the
//! checkpointer threads; calls nothing above `store`.

use super::writer::Writer;
use rusqlite::Connection;
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Past this many frames (32 MB at 1-KB pages) the log is started over
/// once the checkpointer has left little to copy and nothing is queued
/// for the writer: each restart costs the writer two or three fsyncs
/// (1–25 ms here), so not too often.
pub(super) const RESTART_FRAMES: i64 = 53_248;
/// Past this many an install waits for the restart.
const INSTALL_HOLD_FRAMES: i64 = 57_344;
/// Past this many the restart does not wait for an empty queue.
const FORCE_FRAMES: i64 = 60_000;
/// What the writer copies itself at most when it finishes a copy (unless
/// an install has waited `PACE_AT_MOST`): 256 KB. The copy ends with an
/// fsync of the database file while every commit waits: with 2 MB left it
/// took 8–21 ms.
const SMALL_RESIDUE: i64 = 256;
/// As SQLite's own automatic checkpoint, in the commit that crosses it:
/// only if the restarts above cannot happen (a reader holds the log).
const BACKSTOP_FRAMES: i64 = 64_000;
/// An install waits at most this long for the log to start over.
const PACE_AT_MOST: Duration = Duration::from_millis(500);

thread_local! {
    /// Frames in the log after the last commit on this thread's
    /// connection (the writer's: only it commits).
    static FRAMES: Cell<i64> = const { Cell::new(0) };
}

fn on_commit(wal: &rusqlite::hooks::Wal, frames: std::os::raw::c_int) -> rusqlite::Result<()> {
    let frames = i64::from(frames);
    FRAMES.with(|f| f.set(frames));
    if frames >= BACKSTOP_FRAMES {
        // An error here would report a commit that happened as failed
        // (and its acknowledgements as refusals): ignored, as SQLite's own
        // hook does.
        let _ = wal.checkpoint();
    }
    Ok(())
}

/// Counts the writer connection's frames and keeps the backstop (this
/// replaces SQLite's automatic checkpoint on it).
pub(super) fn watch_commits(conn: &Connection) {
    conn.wal_hook(Some(on_commit));
}

/// A passive checkpoint on `conn` (never waits for a reader, a writer or
/// another checkpoint): whether it found the log busy, the frames in the
/// log, and how many of them are copied.
pub(super) fn checkpoint_passive(conn: &Connection) -> rusqlite::Result<(bool, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)? != 0, r.get(1)?, r.get(2)?))
    })
}

/// Frames in the log after the writer's last commit.
fn frames() -> i64 {
    FRAMES.with(Cell::get)
}

/// What the checkpointer saw at its last run, for the writer.
#[derive(Default)]
pub struct WalWatch {
    runs: AtomicU64,
    /// Frames in the log when the last run began, and how many of them it
    /// had copied when it ended.
    log: AtomicI64,
    copied: AtomicI64,
    checkpointer: OnceLock<std::thread::Thread>,
}

impl WalWatch {
    pub(super) fn ran(&self, log: i64, copied: i64) {
        self.log.store(log, Ordering::SeqCst);
        self.copied.store(copied, Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn checkpointer_is(&self, t: std::thread::Thread) {
        let _ = self.checkpointer.set(t);
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// Frames of a log of `frames` not copied yet. A log shorter than the
    /// last run saw has started over since: none of it is copied.
    fn uncopied(&self, frames: i64) -> i64 {
        if frames < self.log.load(Ordering::SeqCst) {
            frames
        } else {
            frames - self.copied.load(Ordering::SeqCst)
        }
    }
}

/// The writer's side: what it asked of the checkpointer and did itself.
#[derive(Default)]
pub(super) struct Restarts {
    /// The checkpointer's run after which the writer last copied (or woke
    /// it): once per run.
    tried_run: Option<u64>,
    woke_run: Option<u64>,
    /// The frame count at which the writer copied everything: the log
    /// starts over with the next transaction.
    copied_at: Option<i64>,
    /// Since when an install has waited for the log to start over, and
    /// whether the writer has copied everything itself once it waited too
    /// long (then the install goes on whatever came of it).
    waiting: Option<Instant>,
    forced: bool,
    /// The writer is stopping: installs no longer wait.
    pub(super) closing: bool,
}

impl Writer {
    fn watch(&self) -> &WalWatch {
        &self.engine.wal
    }

    /// The log is long and not yet copied to its end.
    fn wal_long(&self) -> bool {
        self.conn.sqlite().is_some()
            && frames() >= RESTART_FRAMES
            && self.restarts.copied_at != Some(frames())
    }

    fn waited_enough(&self) -> bool {
        self.restarts
            .waiting
            .is_some_and(|t| t.elapsed() >= PACE_AT_MOST)
    }

    /// Before each turn of the writer: while the log is long, the
    /// checkpointer is woken after each of its runs until one leaves
    /// little to copy (each run copies what came during the one before,
    /// so a few runs get there under steady writes); an install waiting
    /// for it starts its clock.
    pub(super) fn wal_tick(&mut self) {
        if !self.wal_long() {
            self.restarts.waiting = None;
            self.restarts.forced = false;
            return;
        }
        if self.installing.is_some() && frames() >= INSTALL_HOLD_FRAMES {
            self.restarts.waiting.get_or_insert_with(Instant::now);
        }
        let run = self.watch().runs();
        if self.restarts.woke_run != Some(run) {
            self.restarts.woke_run = Some(run);
            if let Some(t) = self.watch().checkpointer.get() {
                t.unpark();
            }
        }
    }

    /// The writer should finish the copy now: the checkpointer has just
    /// left little and nothing waits for the writer (or the log is near
    /// the backstop), or an install has waited long enough.
    pub(super) fn wal_restart_due(&self) -> bool {
        if !self.wal_long() {
            return false;
        }
        let fresh_run = self.restarts.tried_run != Some(self.watch().runs());
        (self.waited_enough() && !self.restarts.forced)
            || (fresh_run && frames() >= FORCE_FRAMES)
            || (fresh_run
                && self.watch().uncopied(frames()) < SMALL_RESIDUE
                && self.data.is_empty()
                && self.urgent.is_empty())
    }

    /// An install step must wait (see the module note).
    pub(super) fn wal_holds_install(&self) -> bool {
        !self.restarts.closing
            && self.wal_long()
            && frames() >= INSTALL_HOLD_FRAMES
            && !(self.waited_enough() && self.restarts.forced)
    }

    /// An install waits for the log and nothing else is to be done: the
    /// writer looks again shortly (the checkpointer does not wake it).
    pub(super) fn wal_pacing(&self) -> bool {
        self.installing.is_some() && self.restarts.waiting.is_some()
    }

    /// Copies what the checkpointer left (never waiting for a reader or
    /// for the checkpointer itself).
    pub(super) fn wal_restart(&mut self) {
        let Some(conn) = self.conn.sqlite() else {
            return;
        };
        let before = frames();
        self.restarts.tried_run = Some(self.watch().runs());
        if self.waited_enough() {
            self.restarts.forced = true;
        }
        let t = Instant::now();
        let complete = match checkpoint_passive(conn) {
            Ok((false, log, copied)) if log == copied => {
                self.restarts.copied_at = Some(before);
                self.restarts.waiting = None;
                self.restarts.forced = false;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "write-ahead log copy skipped");
                false
            }
        };
        tracing::trace!(
            frames = before,
            complete,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "write-ahead log copy by the writer"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "page_size", 1024).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c
    }

    fn write(c: &Connection, rows: usize) {
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        for i in 0..rows {
            c.execute("INSERT INTO t(v) VALUES (?1)", [vec![i as u8; 900]])
                .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
    }

    /// What the writer's pacing rests on: the hook counts the log's frames
    /// after each commit, and once another connection copied all of them
    /// the next transaction starts the log over.
    #[test]
    fn frames_are_counted_and_the_log_starts_over_once_copied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = open(&path);
        watch_commits(&w);
        w.execute_batch("CREATE TABLE t(v BLOB)").unwrap();
        write(&w, 200);
        let long = frames();
        assert!(long >= 200, "{long} frames");
        write(&w, 10);
        assert!(frames() > long, "frames grow with commits");

        let checkpointer = open(&path);
        let (busy, log, copied) = checkpoint_passive(&checkpointer).unwrap();
        assert!(!busy);
        assert_eq!((log, copied), (frames(), frames()));
        let watch = WalWatch::default();
        watch.ran(log, copied);
        assert_eq!(watch.uncopied(frames()), 0);

        write(&w, 1);
        assert!(frames() < 20, "the log started over: {} frames", frames());
        // A log shorter than the last run saw has started over: none of
        // it is copied.
        assert_eq!(watch.uncopied(frames()), frames());
        let n: i64 = w
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 211);
    }
}
