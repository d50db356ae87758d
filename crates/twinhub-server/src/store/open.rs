//! Opening a store: connecting to its database (the embedded file or
//! PostgreSQL), loading the series index and the latest values, replaying
//! the batch log into the head, and starting the writer, the compactor and
//! (on SQLite) the checkpointer.
//!
//! May call: nothing outside `store`.

use super::backend::Source;
use super::head::Head;
use super::sql::{args, Dialect, Sql};
use super::{
    checkpoint, chunk, compactor, db, health, outbox, writer, DirLock, Engine, Index, Inner,
    SeriesKey, Store, StoreError, StoreMetrics, StoreOptions,
};
use crate::clock::SharedClock;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;
use twinhub_model::Point;

impl Store {
    /// Opens the store of a data directory: its embedded file, or the
    /// PostgreSQL database `opts.url` names (the directory then keeps
    /// only the lock and the server's own files).
    pub fn open(
        lock: DirLock,
        opts: StoreOptions,
        clock: SharedClock,
    ) -> Result<Store, StoreError> {
        let dir = lock.path.clone();
        let path = db::db_path(&dir);
        let source = Source::of(&opts, &dir);
        let conn = source.open_writer()?;
        let term = Source::take_term(&conn)?;
        if let Some(f) = &opts.on_writer_lock {
            f(term);
        }
        let sql = conn.sql();
        let index = load_index(sql)?;
        let mut latest = load_latest(sql)?;
        let mut head = Head::default();
        let started = Instant::now();
        let (last_seq, replayed) = writer::replay(sql, &mut head)?;
        for (sid, buf) in &head.series {
            if let Some(p) = buf.last() {
                if latest.get(sid).is_none_or(|c: &Point| c.ts <= p.ts) {
                    latest.insert(*sid, p);
                }
            }
        }
        if replayed > 0 {
            tracing::info!(
                points = replayed,
                ms = started.elapsed().as_millis() as u64,
                "replayed the batch log"
            );
        }
        let dirty: BTreeSet<(u32, i64)> = sql
            .rows(
                "SELECT series_id, win FROM chunks GROUP BY series_id, win HAVING COUNT(*) > 1",
                args![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .into_iter()
            .collect();

        // Event ids start from the boot time in µs (so a client resuming
        // a stream after a restart does not see old ids again), and never
        // below what the outbox and the consumers have seen.
        let (high, outbox_on) = outbox::high_water(sql)?;
        let event_seq = high.max(clock.now_us().max(0) as u64);
        let engine = Arc::new(Engine {
            index: RwLock::new(index),
            active: RwLock::new(head),
            frozen: RwLock::new(None),
            latest: RwLock::new(latest),
            dirty: Mutex::new(dirty),
            deletes_since_freeze: Mutex::new(Vec::new()),
            last_seq: AtomicU64::new(last_seq),
            event_seq: AtomicU64::new(event_seq),
            outbox_on: AtomicBool::new(outbox_on),
            bus: Arc::new(crate::events::EventBus::new(10_000)),
            metrics: StoreMetrics::default(),
            clock,
            health: health::Health::new(),
            faults: health::Faults::default(),
            wal: Default::default(),
        });
        engine
            .health
            .reserve_bytes
            .store(opts.min_free, std::sync::atomic::Ordering::Relaxed);
        engine.health.check_space(&dir, &engine.faults, true);
        let (data_tx, data_rx) = mpsc::channel(opts.queue);
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        let (urgent_tx, urgent_rx) = mpsc::channel(16);
        let embedded = conn.sqlite().is_some();
        let w = writer::Writer {
            conn,
            source: source.clone(),
            last_reconnect: None,
            engine: engine.clone(),
            data: data_rx,
            urgent: urgent_rx,
            ctrl: ctrl_rx,
            head_limit: opts.flush_points.saturating_mul(2),
            dir: dir.clone(),
            written: false,
            installing: None,
            reclaiming: None,
            log_reserve: 0,
            last_cut: None,
            restarts: Default::default(),
            parts: Default::default(),
            on_writer_lock: opts.on_writer_lock.clone(),
            unsynced: None,
            log_file: None,
            _lock: lock,
        };
        let writer = std::thread::Builder::new()
            .name("twinhub-writer".into())
            .spawn(move || w.run())?;
        let stop = Arc::new(AtomicBool::new(false));
        // PostgreSQL checkpoints by itself.
        let checkpointer = if embedded {
            Some(checkpoint::spawn(&path, stop.clone(), engine.clone())?)
        } else {
            None
        };
        let store = Store {
            inner: Arc::new(Inner {
                engine,
                reads: db::ReadPool::new(source),
                data_tx,
                urgent_tx,
                ctrl_tx,
                opts,
                path,
                dir,
                stop: stop.clone(),
                writer: Mutex::new(Some(writer)),
                compactor: Mutex::new(None),
                checkpointer: Mutex::new(checkpointer),
                flush_lock: Mutex::new(()),
            }),
        };
        let c = compactor::Compactor::new(store.clone());
        let handle = std::thread::Builder::new()
            .name("twinhub-compactor".into())
            .spawn(move || c.run())?;
        *store.inner.compactor.lock().expect("threads") = Some(handle);
        Ok(store)
    }
}

/// Every series with its id and the bounds retention has moved.
fn load_index(sql: &dyn Sql) -> Result<Index, StoreError> {
    let mut index = Index::default();
    let mut m = HashMap::new();
    sql.each(
        "SELECT id, tenant, twin, name, raw_from, rollup_from FROM series",
        args![],
        &mut |r| {
            let sid: u32 = r.get(0)?;
            m.insert(
                SeriesKey::new(
                    &r.get::<String>(1)?,
                    &r.get::<String>(2)?,
                    &r.get::<String>(3)?,
                ),
                sid,
            );
            let (raw_from, rollup_from): (i64, i64) = (r.get(4)?, r.get(5)?);
            if raw_from > 0 {
                index.raw_from.insert(sid, raw_from);
            }
            if rollup_from > 0 {
                index.rollup_from.insert(sid, rollup_from);
            }
            Ok(())
        },
    )?;
    index.add(m);
    Ok(index)
}

/// The newest point in chunks of every series.
fn load_latest(sql: &dyn Sql) -> Result<HashMap<u32, Point>, StoreError> {
    let text = match sql.dialect() {
        // SQLite returns the bare column `last` from the row holding
        // MAX(max_ts).
        Dialect::Sqlite => "SELECT series_id, MAX(max_ts), last FROM chunks GROUP BY series_id",
        Dialect::Postgres => {
            "SELECT DISTINCT ON (series_id) series_id, max_ts, last FROM chunks
             ORDER BY series_id, max_ts DESC"
        }
    };
    let mut latest = HashMap::new();
    sql.each(text, args![], &mut |r| {
        let blob: Vec<u8> = r.get(2)?;
        if let Some(v) = chunk::value_from_blob(&blob) {
            latest.insert(
                r.get::<u32>(0)?,
                Point {
                    ts: r.get(1)?,
                    value: v,
                    quality: Default::default(),
                },
            );
        }
        Ok(())
    })?;
    Ok(latest)
}
