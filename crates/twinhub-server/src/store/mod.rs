//! The store: the embedded time-series engine and the registry tables, in
//! one SQLite database file (`<data-dir>/twinhub.db`, WAL mode).
//!
//! Owns all storage code; nothing outside this module touches SQL. Callers
//! hand it typed batches and registry closures and read back points,
//! aggregates and rows. See docs/design/history-engine.md for the design:
//! batch log with group commit → in-memory head → compacted chunks with
//! statistics → rollups, with retention.
//!
//! The writer is also where the fan-out starts: it publishes the events
//! of each commit on the bus (`events`), in commit order, and keeps them
//! in the outbox for durable consumers (`outbox.rs`).
//!
//! May call: `twinhub-model` types, the `clock`, `metrics` (counters) and
//! `events` (the bus it publishes on); nothing above it.

pub mod audit;
pub mod backend;
pub mod batch;
pub mod check;
mod checkpoint;
pub mod chunk;
pub mod columns;
mod compactor;
pub mod connectors;
mod control;
pub mod db;
pub mod export;
mod head;
pub mod health;
mod install;
pub mod ml;
pub mod mqtt;
mod numcol;
mod open;
pub mod outbox;
mod outbox_rows;
pub mod partitions;
pub mod pg;
mod query;
mod query_many;
pub mod registry;
mod retire;
mod rollup;
pub mod routes;
pub mod rules;
pub mod secrets;
mod settings;
pub use settings::redact_url;
pub mod sql;
pub mod twins;
pub mod varint;
mod wal;
mod writer;

#[cfg(test)]
mod install_tests;
#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod partitions_tests;
#[cfg(test)]
mod retire_tests;
#[cfg(test)]
mod rows_tests;
#[cfg(test)]
mod sql_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod writer_tests;

use crate::clock::SharedClock;
use crate::metrics::{Counter, Histogram, LATENCY_BOUNDS};
use columns::Columns;
use head::Head;
use rusqlite::params;
pub use settings::StoreConfig;
use sql::Sql;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use twinhub_model::time::{US_PER_DAY, US_PER_HOUR};
use twinhub_model::{Point, Stats};

pub use compactor::RetentionPolicy;
pub use writer::{Also, AlsoFn, WriteCtx};

/// Chunks never cross a window boundary; windows are aligned to the UTC
/// epoch. Rollups are computed per closed window.
pub const WINDOW: i64 = US_PER_HOUR;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Corrupt(#[from] varint::Corrupt),
    #[error("the data directory has format version {found}, newer than this binary supports ({supported}); run a newer twinhub or restore a backup")]
    TooNew { found: i64, supported: i64 },
    #[error("the data directory {0} is in use by another twinhub process")]
    Locked(PathBuf),
    #[error("another twinhub node is writing this PostgreSQL store (schema {0}); several nodes on one store form a cluster (cluster.nats)")]
    StoreInUse(String),
    #[error("the store is unavailable")]
    Unavailable,
    #[error("the store is busy; retry shortly")]
    Busy,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    #[error("free disk space is under the reserve (store.min_free); new telemetry is refused until space is freed")]
    NoSpace,
}

/// A write to make in another operation's transaction (an audit entry
/// with the change it records).
pub type AlsoWrite = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<i64, StoreError> + Send + 'static>;

/// Which series a point belongs to: a property (or dotted component path)
/// of a twin of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub tenant: String,
    pub twin: String,
    pub name: String,
}

impl SeriesKey {
    pub fn new(tenant: &str, twin: &str, name: &str) -> SeriesKey {
        SeriesKey {
            tenant: tenant.into(),
            twin: twin.into(),
            name: name.into(),
        }
    }
}

/// Points to append, grouped by series, each group in write order.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub entries: Vec<(SeriesKey, Vec<Point>)>,
}

impl WriteBatch {
    pub fn points(&self) -> usize {
        self.entries.iter().map(|(_, p)| p.len()).sum()
    }
}

#[derive(Clone)]
pub struct StoreOptions {
    /// Flush the head to chunks once it holds this many points…
    pub flush_points: usize,
    /// …or once its batch-log records take this many bytes (long strings
    /// fill a log long before they are many points)…
    pub flush_log_bytes: usize,
    /// …or once its oldest point is this old.
    pub flush_interval: Duration,
    /// Appends waiting for the writer; beyond it producers wait.
    pub queue: usize,
    /// A window is closed (merged and rolled up) this long after its end.
    pub close_grace_us: i64,
    pub retention: RetentionPolicy,
    /// A PostgreSQL server to keep everything in (`store.url`); None is
    /// the embedded file in the data directory.
    pub url: Option<String>,
    /// The PostgreSQL schema (created if missing): tests and several
    /// installations share one database this way.
    pub schema: Option<String>,
    /// How often the compactor looks for work.
    pub tick: Duration,
    /// Free bytes kept in reserve: below it, appends are refused.
    pub min_free: u64,
    /// Called with the writer's term each time it takes the store's writer
    /// lock: at open, before the batch log is replayed (a cluster member
    /// announces that it is opening the store, so the others do not take it
    /// for dead), and when it reconnects (PostgreSQL hands out a greater
    /// term each time; 0 on the embedded store).
    pub on_writer_lock: Option<OnWriterLock>,
}

/// See `StoreOptions::on_writer_lock`.
pub type OnWriterLock = std::sync::Arc<dyn Fn(i64) + Send + Sync>;

/// By hand: `url` may hold a password.
impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("flush_points", &self.flush_points)
            .field("flush_log_bytes", &self.flush_log_bytes)
            .field("flush_interval", &self.flush_interval)
            .field("queue", &self.queue)
            .field("close_grace_us", &self.close_grace_us)
            .field("retention", &self.retention)
            .field("url", &self.url.as_deref().map(settings::redact_url))
            .field("schema", &self.schema)
            .field("tick", &self.tick)
            .field("min_free", &self.min_free)
            .field("on_writer_lock", &self.on_writer_lock.is_some())
            .finish()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            flush_points: 2_000_000,
            flush_log_bytes: 64 << 20,
            flush_interval: Duration::from_secs(600),
            queue: 8192,
            close_grace_us: 60_000_000,
            retention: RetentionPolicy::default(),
            url: None,
            schema: None,
            tick: Duration::from_millis(500),
            min_free: 0,
            on_writer_lock: None,
        }
    }
}

/// A chunk about to be written: one series, one window, already encoded
/// (by whoever makes it: the compactor's thread, so the writer only
/// inserts rows).
pub struct NewChunk {
    pub sid: u32,
    pub win: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub stats: Stats,
    pub data: Vec<u8>,
}

impl NewChunk {
    pub fn new(sid: u32, cols: Columns) -> NewChunk {
        let min_ts = cols.ts[0];
        let max_ts = *cols.ts.last().expect("non-empty chunk");
        NewChunk {
            sid,
            win: min_ts.div_euclid(WINDOW),
            min_ts,
            max_ts,
            stats: chunk::stats(&cols),
            data: chunk::encode(&cols),
        }
    }
}

#[derive(Default)]
pub(crate) struct Index {
    by_key: HashMap<SeriesKey, u32>,
    keys: HashMap<u32, SeriesKey>,
    by_twin: HashMap<(String, String), Vec<u32>>,
    /// Raw points before this time were removed by retention.
    raw_from: HashMap<u32, i64>,
    /// 1-minute rollups before this time were removed by retention.
    rollup_from: HashMap<u32, i64>,
}

impl Index {
    pub fn sid(&self, k: &SeriesKey) -> Option<u32> {
        self.by_key.get(k).copied()
    }

    fn add(&mut self, m: HashMap<SeriesKey, u32>) {
        for (k, sid) in m {
            self.by_twin
                .entry((k.tenant.clone(), k.twin.clone()))
                .or_default()
                .push(sid);
            self.keys.insert(sid, k.clone());
            self.by_key.insert(k, sid);
        }
    }
}

#[derive(Default)]
pub struct StoreMetrics {
    pub points_committed: Counter,
    pub commits: Counter,
    pub flushes: Counter,
    pub merges: Counter,
    /// Windows whose raw points retention retired.
    pub windows_retired: Counter,
    /// Of those, windows whose rollups the writer made itself (the window
    /// changed after the compactor planned it, or had no plan).
    pub retire_rollups_in_writer: Counter,
    pub durable_latency: HistogramCell,
}

pub struct HistogramCell(pub Histogram);

impl Default for HistogramCell {
    fn default() -> Self {
        HistogramCell(Histogram::new(LATENCY_BOUNDS))
    }
}

impl std::ops::Deref for HistogramCell {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// State shared by the writer, the compactor and readers.
pub struct Engine {
    pub(crate) index: RwLock<Index>,
    pub(crate) active: RwLock<Head>,
    pub(crate) frozen: RwLock<Option<Head>>,
    pub(crate) latest: RwLock<HashMap<u32, Point>>,
    /// Windows changed since their rollup was computed.
    pub(crate) dirty: Mutex<BTreeSet<(u32, i64)>>,
    pub(crate) deletes_since_freeze: Mutex<Vec<(u32, i64, i64)>>,
    pub(crate) last_seq: AtomicU64,
    /// The id of the last event committed (written by the writer only).
    pub(crate) event_seq: AtomicU64,
    /// Durable consumers exist: events are kept in the outbox.
    pub(crate) outbox_on: AtomicBool,
    pub(crate) bus: Arc<crate::events::EventBus>,
    pub metrics: StoreMetrics,
    pub clock: SharedClock,
    pub health: health::Health,
    pub faults: health::Faults,
    /// What the checkpointer last did to the write-ahead log (`wal.rs`).
    pub(crate) wal: wal::WalWatch,
}

/// An exclusive claim on a data directory for the life of the process.
pub struct DirLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        DirLock::acquire_within(dir, std::time::Duration::ZERO)
    }

    /// `acquire`, trying for up to `wait` while the directory is locked:
    /// a lock just released can still be held for a moment by a process
    /// another thread is starting (its copy of the descriptor lives until
    /// it execs), so a restarting server gives it a second.
    pub fn acquire_within(dir: &Path, wait: std::time::Duration) -> Result<DirLock, StoreError> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("twinhub.lock"))?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    return Ok(DirLock {
                        _file: file,
                        path: dir.to_path_buf(),
                    })
                }
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked(dir.to_path_buf()))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
    }
}

/// Sends `f` to the writer through `queue` and waits for its commit.
async fn exec_via<R: Send + 'static>(
    queue: &mpsc::Sender<writer::Op>,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    let (ack, rx) = oneshot::channel();
    let f: writer::ExecFn = Box::new(move |ctx| f(ctx).map(|r| Box::new(r) as writer::AnyBox));
    queue
        .send(writer::Op::Exec { f, ack })
        .await
        .map_err(|_| StoreError::Unavailable)?;
    let out = rx.await.map_err(|_| StoreError::Unavailable)??;
    Ok(*out.downcast::<R>().expect("write result type"))
}

struct Inner {
    engine: Arc<Engine>,
    reads: db::ReadPool,
    data_tx: mpsc::Sender<writer::Op>,
    urgent_tx: mpsc::Sender<writer::Op>,
    ctrl_tx: mpsc::UnboundedSender<writer::Ctrl>,
    opts: StoreOptions,
    path: PathBuf,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    compactor: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    /// One flush at a time: a retried install re-encodes the frozen head.
    flush_lock: Mutex<()>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Injected failures (tests).
    #[doc(hidden)]
    pub fn faults(&self) -> &health::Faults {
        &self.inner.engine.faults
    }

    pub fn health(&self) -> &health::Health {
        &self.inner.engine.health
    }

    /// Whether new telemetry is taken: chunks are being installed and
    /// free space is over the reserve. Reads are served either way.
    pub fn ingest_ready(&self) -> bool {
        let h = self.health();
        !h.check_space(&self.inner.dir, self.faults(), false) && h.flushing_ok()
    }

    /// Queues a batch; resolves once it is durable. Waits while the
    /// writer's queue is full (back-pressure).
    pub async fn append(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.append_with(batch, Vec::new(), None, None).await
    }

    /// Like `append`, but gives up with `Busy` if the queue stays full for
    /// `wait` (HTTP answers 503 + Retry-After then).
    pub async fn append_within(&self, batch: WriteBatch, wait: Duration) -> Result<(), StoreError> {
        self.append_with(batch, Vec::new(), None, Some(wait)).await
    }

    /// Appends a batch and, in the same commit, the events that describe
    /// it: they are published (and kept for durable consumers) only if the
    /// batch is committed; `also` writes other rows in the same
    /// transaction. `wait` bounds the wait for room in the queue (None: as
    /// long as it takes).
    pub async fn append_with(
        &self,
        batch: WriteBatch,
        events: Vec<crate::events::Draft>,
        also: Option<Also>,
        wait: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (ack, rx) = oneshot::channel();
        let op = writer::Op::Append {
            batch,
            events,
            also,
            enqueued: Instant::now(),
            ack,
        };
        let sent = match wait {
            Some(w) => match tokio::time::timeout(w, self.inner.data_tx.send(op)).await {
                Err(_) => return Err(StoreError::Busy),
                Ok(r) => r,
            },
            None => self.inner.data_tx.send(op).await,
        };
        sent.map_err(|_| StoreError::Unavailable)?;
        rx.await.map_err(|_| StoreError::Unavailable)?.map(|_| ())
    }

    /// Runs `f` in the writer's transaction (group-committed with other
    /// writes) and returns its result once committed.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        exec_via(&self.inner.data_tx, f).await
    }

    /// `write` for a small change on a latency path (a rule batch's alarm
    /// changes): committed in a group of its own ahead of the data queued
    /// for the writer — not behind a full queue of ingest. Nothing else
    /// is ordered with it: a caller that needs an order between its
    /// urgent and its other writes waits for the one before sending the
    /// other.
    pub async fn write_urgent<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        exec_via(&self.inner.urgent_tx, f).await
    }

    /// The shape of every cached table: `write` runs in the writer's
    /// transaction and, only once that commits, `apply` updates the
    /// in-memory copy under its lock (so the cache never shows a change
    /// that was not stored, and readers see it as soon as it is durable).
    pub async fn write_cached<C, R>(
        &self,
        cache: &Arc<RwLock<C>>,
        write: impl FnOnce(&dyn Sql) -> Result<R, StoreError> + Send + 'static,
        apply: impl FnOnce(&mut C) + Send + 'static,
    ) -> Result<R, StoreError>
    where
        C: Send + Sync + 'static,
        R: Send + 'static,
    {
        let cache = cache.clone();
        self.write(move |ctx| {
            let r = write(ctx.tx)?;
            ctx.after_commit(move |_| apply(&mut cache.write().expect("cache")));
            Ok(r)
        })
        .await
    }

    /// Blocking form of `write` for threads outside the runtime (CLI).
    pub fn write_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (ack, rx) = oneshot::channel();
        let f: writer::ExecFn = Box::new(move |ctx| f(ctx).map(|r| Box::new(r) as writer::AnyBox));
        self.inner
            .data_tx
            .blocking_send(writer::Op::Exec { f, ack })
            .map_err(|_| StoreError::Unavailable)?;
        let out = rx.blocking_recv().map_err(|_| StoreError::Unavailable)??;
        Ok(*out.downcast::<R>().expect("write result type"))
    }

    /// Runs `f` on a read connection inside one snapshot. Callers see
    /// the SQL layer only, so they read the same on either backend.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let run = || self.inner.reads.read(|c| f(c.sql()));
        // On PostgreSQL a read is network round trips: on an async worker
        // it would hold every task queued there meanwhile, so the worker
        // hands them to another thread first. (The embedded file answers
        // in microseconds; a current-thread runtime — the rule engine's
        // own thread — has nobody to hand them to.)
        let on_worker = self.inner.reads.is_remote()
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    /// A read on the embedded file itself (tests of SQLite's own state:
    /// pages, pragmas).
    #[cfg(test)]
    pub(crate) fn read_sqlite<R>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.inner
            .reads
            .read(|c| f(c.sqlite().expect("an embedded store")))
    }

    /// Latest value of every series of a twin: (name, point).
    pub fn latest_of_twin(&self, tenant: &str, twin: &str) -> Vec<(String, Point)> {
        let index = self.inner.engine.index.read().expect("index");
        let latest = self.inner.engine.latest.read().expect("latest");
        let Some(sids) = index.by_twin.get(&(tenant.to_string(), twin.to_string())) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Point)> = sids
            .iter()
            .filter_map(|sid| Some((index.keys.get(sid)?.name.clone(), latest.get(sid)?.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Names of the series a twin has history for.
    pub fn series_of_twin(&self, tenant: &str, twin: &str) -> Vec<String> {
        let index = self.inner.engine.index.read().expect("index");
        let mut names: Vec<String> = index
            .by_twin
            .get(&(tenant.to_string(), twin.to_string()))
            .map(|sids| {
                sids.iter()
                    .filter_map(|s| index.keys.get(s).map(|k| k.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Forces the head into chunks now (tests, shutdown, backup of a quiet
    /// store). Returns once the chunks are installed.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one = self
            .inner
            .flush_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let res = compactor::flush(self);
        let h = self.health();
        match &res {
            Ok(()) => h.flush_ok(self.inner.engine.clock.now_us()),
            Err(e) => h.flush_failed(&e.to_string()),
        }
        res
    }

    /// Runs one round of window merging, rollups and retention now.
    pub fn compact_now(&self) -> Result<(), StoreError> {
        compactor::Compactor::new(self.clone()).round(true)
    }

    /// A consistent copy of the whole database into `dest` (one file),
    /// safe while the server runs.
    pub fn backup(&self, dest: &Path) -> Result<(), StoreError> {
        if self.inner.opts.url.is_some() {
            return Err(StoreError::Invalid {
                field: "store.url".into(),
                rule: "a PostgreSQL store is backed up with PostgreSQL's tools (pg_dump)".into(),
            });
        }
        backup_file(&self.inner.path, dest)
    }

    /// Bytes the store takes: the file and its write-ahead log, or the
    /// tables of its PostgreSQL schema.
    pub fn db_size(&self) -> u64 {
        if self.inner.opts.url.is_some() {
            return self
                .read(|c| {
                    c.one::<i64>(
                        "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT)
                         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                        sql::args![],
                    )
                })
                .map(|b| b.max(0) as u64)
                .unwrap_or(0);
        }
        let wal = self.inner.path.with_extension("db-wal");
        std::fs::metadata(&self.inner.path)
            .map(|m| m.len())
            .unwrap_or(0)
            + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    pub fn stats(&self) -> EngineStats {
        let e = &self.inner.engine;
        let active = e.active.read().expect("head");
        let frozen = e.frozen.read().expect("frozen");
        EngineStats {
            head_points: active.points + frozen.as_ref().map(|h| h.points).unwrap_or(0),
            head_age_s: active
                .since
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(0.0),
            dirty_windows: e.dirty.lock().expect("dirty").len(),
            queue_depth: self.inner.opts.queue - self.inner.data_tx.capacity(),
            series: e.index.read().expect("index").keys.len(),
        }
    }

    /// Stops background work, waits for queued writes to commit and
    /// flushes the head so the next start has nothing to replay.
    pub fn close(&self) {
        if self.inner.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(t) = self.inner.compactor.lock().expect("threads").take() {
            let _ = t.join();
        }
        if let Some(t) = self.inner.checkpointer.lock().expect("threads").take() {
            t.thread().unpark();
            let _ = t.join();
        }
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "final flush failed; the batch log will be replayed at next start");
        }
        // Queued appends are committed before the writer sees the shutdown:
        // it drains the data queue first.
        let _ = self.inner.ctrl_tx.send(writer::Ctrl::Shutdown);
        if let Some(t) = self.inner.writer.lock().expect("threads").take() {
            let _ = t.join();
        }
    }

    /// Holds the writer until the returned sender is dropped (tests of
    /// back-pressure).
    #[doc(hidden)]
    pub fn pause_writer(&self) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.inner.ctrl_tx.send(writer::Ctrl::Pause(rx));
        tx
    }

    pub(crate) fn stopping(&self) -> bool {
        self.inner.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn opts(&self) -> &StoreOptions {
        &self.inner.opts
    }

    pub(crate) fn ctrl(&self, c: writer::Ctrl) -> Result<(), StoreError> {
        self.inner
            .ctrl_tx
            .send(c)
            .map_err(|_| StoreError::Unavailable)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineStats {
    pub head_points: usize,
    pub head_age_s: f64,
    pub dirty_windows: usize,
    pub queue_depth: usize,
    pub series: usize,
}

/// `VACUUM INTO` takes a read snapshot: consistent while writes go on.
pub fn backup_file(db: &Path, dest: &Path) -> Result<(), StoreError> {
    if dest.exists() {
        return Err(StoreError::Conflict(format!(
            "{} already exists",
            dest.display()
        )));
    }
    let conn = db::open_reader(db)?;
    conn.execute("VACUUM INTO ?1", params![dest.to_string_lossy()])?;
    Ok(())
}

/// Replaces the database of a data directory (held locked by the caller)
/// with a backup, after checking that the backup is readable and not of a
/// newer format.
pub fn restore_file(lock: &DirLock, src: &Path) -> Result<(), StoreError> {
    let conn = db::open_reader(src)?;
    let v = db::format_version(&conn)?;
    if v == 0 {
        return Err(StoreError::Invalid {
            field: "file".into(),
            rule: "is not a twinhub backup".into(),
        });
    }
    if v > db::FORMAT_VERSION {
        return Err(StoreError::TooNew {
            found: v,
            supported: db::FORMAT_VERSION,
        });
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StoreError::Invalid {
            field: "file".into(),
            rule: format!("failed its integrity check: {check}"),
        });
    }
    drop(conn);
    let target = db::db_path(&lock.path);
    let tmp = target.with_extension("db.restoring");
    std::fs::copy(src, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(target.with_extension(ext));
    }
    std::fs::rename(&tmp, &target)?;
    Ok(())
}

pub const DAY: i64 = US_PER_DAY;

#[cfg(test)]
impl Store {
    /// Stops the threads without flushing: what a crash leaves behind,
    /// except that the lock is released so the test can reopen.
    pub(crate) fn close_writer_only(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.inner.compactor.lock().expect("threads").take() {
            let _ = t.join();
        }
        if let Some(t) = self.inner.checkpointer.lock().expect("threads").take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.inner.ctrl_tx.send(writer::Ctrl::Shutdown);
        if let Some(t) = self.inner.writer.lock().expect("threads").take() {
            let _ = t.join();
        }
    }
}
