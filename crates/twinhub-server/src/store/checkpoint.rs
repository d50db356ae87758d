//! The checkpointer thread: copies the write-ahead log into the database
//! file beside the writer instead of inside its commits. SQLite's own
//! automatic checkpoint runs in the commit that crosses its threshold, so
//! one group commit in every few megabytes written waited for the copy and
//! two fsyncs (15–38 ms measured under `twinhub bench rules`, the tail of
//! its latency). A passive checkpoint on another connection runs while the
//! writer goes on appending; the log restarts from its start once it has
//! all been copied — which under steady writes only the writer can see,
//! so it finishes the copy itself and keeps the backstop (`wal.rs`); it
//! also truncates the log once idle.
//!
//! Owns its own connection and nothing else; tells the writer what each
//! run copied (`wal.rs`); stops when `stop` is set.

use super::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the log is copied: a few hundred kilobytes to a few
/// megabytes each time under heavy ingest.
const INTERVAL: Duration = Duration::from_millis(100);

pub fn spawn(
    path: &Path,
    stop: Arc<AtomicBool>,
    engine: Arc<super::Engine>,
) -> Result<JoinHandle<()>, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Never wait for a lock: a checkpoint that cannot run now runs at the
    // next tick.
    conn.busy_timeout(Duration::ZERO)?;
    let watch = engine.clone();
    let handle = std::thread::Builder::new()
        .name("twinhub-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // `Store::close` unparks it to stop at once.
                std::thread::park_timeout(INTERVAL);
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let t = std::time::Instant::now();
                match super::wal::checkpoint_passive(&conn) {
                    Ok((_, frames, copied)) => {
                        engine.wal.ran(frames, copied);
                        tracing::trace!(
                            frames,
                            copied,
                            ms = t.elapsed().as_secs_f64() * 1e3,
                            "checkpoint"
                        )
                    }
                    Err(e) => tracing::debug!(error = %e, "checkpoint skipped"),
                }
            }
        })?;
    // The writer wakes it when it wants the log copied (`wal.rs`).
    watch.wal.checkpointer_is(handle.thread().clone());
    Ok(handle)
}
