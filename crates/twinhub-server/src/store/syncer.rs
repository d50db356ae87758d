//! The syncer thread (embedded store): makes the writer's commits durable
//! beside it, then publishes their events and sends their
//! acknowledgements, in commit order.
//!
//! The writer commits without waiting for the disk (SQLite's `NORMAL`
//! sync in WAL mode: the log is written, not flushed) and goes on with the
//! next group while this thread flushes the log (`fdatasync`) once for
//! every commit made since its last flush. The log is only ever appended
//! to between checkpoints, and a checkpoint flushes it first, so a flush
//! that returns covers every commit made before it started: only then is a
//! group acknowledged and its events published. Before, the writer
//! waited out each flush itself (a quarter of its time under heavy
//! ingest) and every write queued behind it waited too — an alarm's
//! commit behind a slow flush of telemetry.
//!
//! What a commit changed in memory (the head, caches) is visible from its
//! commit on, a moment before it is durable; a process crash loses none of
//! it (the log is in the kernel's hands), a power cut can lose what was
//! never acknowledged. A failed flush is not retried: the kernel may have
//! dropped the pages it could not write, so nothing committed since the
//! last good flush can be acknowledged any more. Everything waiting is
//! refused, the store refuses every later write (`Health::sync_failed`)
//! and the server stops; the next start recovers what is on disk.
//!
//! Owns its own handle on the log file; calls the event bus.

use super::health::Faults;
use super::writer::AnyBox;
use super::{Engine, StoreError};
use crate::events::Event;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

/// An operation's answer, sent once its commit is durable.
pub(super) enum Reply {
    Append {
        ack: oneshot::Sender<Result<u64, StoreError>>,
        res: Result<u64, StoreError>,
        enqueued: Instant,
    },
    Exec {
        ack: oneshot::Sender<Result<AnyBox, StoreError>>,
        res: Result<AnyBox, StoreError>,
    },
}

impl Reply {
    pub(super) fn send(self, engine: &Engine) {
        match self {
            Reply::Append { ack, res, enqueued } => {
                engine.metrics.durable_latency.observe(enqueued.elapsed());
                let _ = ack.send(res);
            }
            Reply::Exec { ack, res } => {
                let _ = ack.send(res);
            }
        }
    }

    fn refuse(self) {
        match self {
            Reply::Append { ack, .. } => {
                let _ = ack.send(Err(StoreError::Unavailable));
            }
            Reply::Exec { ack, .. } => {
                let _ = ack.send(Err(StoreError::Unavailable));
            }
        }
    }
}

/// One group commit waiting for its flush.
pub(super) struct Committed {
    pub(super) events: Vec<Event>,
    pub(super) replies: Vec<Reply>,
}

impl Committed {
    /// Publishes and answers (the commit is durable).
    pub(super) fn release(self, engine: &Engine) {
        engine.bus.publish_committed(self.events);
        for r in self.replies {
            r.send(engine);
        }
    }
}

pub(super) struct Syncer {
    tx: Option<mpsc::Sender<Committed>>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts flushing the log of the embedded database at `db` for the
    /// writer's connection `conn`, whose commits stop waiting for the disk.
    /// None (each commit flushes itself, as before) if the log cannot be
    /// opened.
    pub(super) fn start(
        conn: &rusqlite::Connection,
        db: &std::path::Path,
        engine: Arc<Engine>,
    ) -> Result<Option<Syncer>, StoreError> {
        // SQLite's name for the log; it exists once the database was read
        // in WAL mode, and lives as long as a connection is open.
        let mut log = db.as_os_str().to_owned();
        log.push("-wal");
        let syncer = match Syncer::spawn(std::path::Path::new(&log), engine) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the write-ahead log cannot be opened to flush it beside the writer: every commit flushes it itself");
                return Ok(None);
            }
        };
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Some(syncer))
    }

    fn spawn(log: &std::path::Path, engine: Arc<Engine>) -> std::io::Result<Syncer> {
        let file = std::fs::OpenOptions::new().write(true).open(log)?;
        let (tx, rx) = mpsc::channel::<Committed>();
        let handle = std::thread::Builder::new()
            .name("twinhub-syncer".into())
            .spawn(move || run(file, rx, &engine))?;
        Ok(Syncer {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    pub(super) fn submit(&self, c: Committed) {
        if let Some(tx) = &self.tx {
            // The thread only ends once this sender is dropped.
            let _ = tx.send(c);
        }
    }

    /// Flushes and answers everything submitted, then stops the thread.
    pub(super) fn finish(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(file: std::fs::File, rx: mpsc::Receiver<Committed>, engine: &Engine) {
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        if !failed {
            let t = Instant::now();
            let flushed = if Faults::on(&engine.faults.sync) {
                Err(std::io::Error::other("injected fault: log flush"))
            } else {
                file.sync_data()
            };
            engine.metrics.log_flushes.inc();
            if t.elapsed() > std::time::Duration::from_millis(8) {
                tracing::debug!(
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    commits = batch.len(),
                    "slow log flush"
                );
            }
            if let Err(e) = flushed {
                tracing::error!(
                    error = %e,
                    "the store could not flush its write-ahead log: nothing more is acknowledged; the server stops and its next start recovers what is on disk"
                );
                engine.health.sync_failed.store(true, Ordering::SeqCst);
                failed = true;
            }
        }
        for c in batch {
            if failed {
                c.replies.into_iter().for_each(Reply::refuse);
            } else {
                c.release(engine);
            }
        }
    }
}
