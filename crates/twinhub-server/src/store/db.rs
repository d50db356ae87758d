//! The SQLite database file: opening with the right pragmas, the schema and
//! its migrations (guarded by the data directory's lock), and the pool of
//! read connections. Writes go through the single writer thread
//! (`writer.rs`), never through this module's connections.

use super::backend::{Db, Source};
use super::sql::{args, Sql};
use super::StoreError;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The data format this binary writes. Bump it with a new entry in
/// `MIGRATIONS`.
pub const FORMAT_VERSION: i64 = 16;

/// `MIGRATIONS[i]` takes a database from format `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE series(
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL, twin TEXT NOT NULL, name TEXT NOT NULL,
    raw_from INTEGER NOT NULL DEFAULT 0,
    rollup_from INTEGER NOT NULL DEFAULT 0,
    UNIQUE(tenant, twin, name));
CREATE TABLE batch_log(seq INTEGER PRIMARY KEY, received INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE chunks(
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL, win INTEGER NOT NULL,
    min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL,
    count INTEGER NOT NULL, num_count INTEGER NOT NULL,
    sum REAL NOT NULL, min REAL, max REAL,
    first BLOB NOT NULL, last BLOB NOT NULL, data BLOB NOT NULL);
CREATE INDEX chunks_by_series ON chunks(series_id, win);
CREATE TABLE rollups(
    series_id INTEGER NOT NULL, res INTEGER NOT NULL, win INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY(series_id, res, win)) WITHOUT ROWID;
CREATE TABLE tombstones(
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL,
    from_ts INTEGER NOT NULL, to_ts INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE tenants(id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE devices(
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, twin_id TEXT,
    key_hash BLOB NOT NULL, enabled INTEGER NOT NULL,
    created_at INTEGER NOT NULL, last_seen INTEGER);
CREATE INDEX devices_by_tenant ON devices(tenant, id);
CREATE TABLE users(
    username TEXT PRIMARY KEY, tenant TEXT NOT NULL, password_hash TEXT NOT NULL,
    roles TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE refresh_tokens(
    hash BLOB PRIMARY KEY, username TEXT NOT NULL, session TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE revoked_sessions(session TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
"#,
    r#"
CREATE TABLE mqtt_retained(
    tenant TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    props TEXT, expires_at INTEGER, PRIMARY KEY(tenant, topic)) WITHOUT ROWID;
CREATE TABLE mqtt_sessions(
    client_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, owner TEXT NOT NULL,
    expiry_s INTEGER NOT NULL, disconnected_at INTEGER, subs TEXT NOT NULL);
CREATE TABLE mqtt_queue(
    id INTEGER PRIMARY KEY, client_id TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, props TEXT, expires_at INTEGER, sub_ids TEXT NOT NULL);
CREATE INDEX mqtt_queue_by_client ON mqtt_queue(client_id, id);
"#,
    r#"
CREATE TABLE dt_models(
    tenant TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    decommissioned INTEGER NOT NULL DEFAULT 0, uploaded_at INTEGER NOT NULL,
    PRIMARY KEY(tenant, id)) WITHOUT ROWID;
CREATE TABLE dt_twins(
    tenant TEXT NOT NULL, id TEXT NOT NULL, model TEXT NOT NULL, etag TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY(tenant, id)) WITHOUT ROWID;
CREATE TABLE dt_relationships(
    tenant TEXT NOT NULL, source TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    target TEXT NOT NULL, etag TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY(tenant, source, id)) WITHOUT ROWID;
CREATE INDEX dt_relationships_by_target ON dt_relationships(tenant, target);
ALTER TABLE devices ADD COLUMN unknown_telemetry TEXT NOT NULL DEFAULT 'reject';
"#,
    r#"
CREATE TABLE audit(
    chain TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL,
    mac BLOB NOT NULL, PRIMARY KEY(chain, seq)) WITHOUT ROWID;
CREATE TABLE apikeys(
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, key_hash BLOB NOT NULL,
    roles TEXT NOT NULL, permissions TEXT, created_by TEXT NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER, revoked_at INTEGER, last_used INTEGER);
CREATE TABLE login_failures(username TEXT PRIMARY KEY, count INTEGER NOT NULL, locked_until INTEGER);
"#,
    r#"
CREATE TABLE roles(
    tenant TEXT NOT NULL, name TEXT NOT NULL, permissions TEXT NOT NULL,
    scope TEXT, created_at INTEGER NOT NULL, PRIMARY KEY(tenant, name)) WITHOUT ROWID;
ALTER TABLE tenants ADD COLUMN quotas TEXT NOT NULL DEFAULT '{}';
CREATE TABLE secrets(
    tenant TEXT NOT NULL, name TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,
    created_at INTEGER NOT NULL, PRIMARY KEY(tenant, name)) WITHOUT ROWID;
ALTER TABLE devices ADD COLUMN previous_key_hash BLOB;
ALTER TABLE devices ADD COLUMN previous_key_until INTEGER;
"#,
    r#"
CREATE TABLE ml_models(
    tenant TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
    manifest TEXT NOT NULL, onnx BLOB NOT NULL, sha256 TEXT NOT NULL, created_at INTEGER NOT NULL,
    PRIMARY KEY(tenant, name, version)) WITHOUT ROWID;
CREATE TABLE ml_routing(
    tenant TEXT NOT NULL, name TEXT NOT NULL, active TEXT NOT NULL,
    candidate TEXT, share REAL NOT NULL DEFAULT 0, PRIMARY KEY(tenant, name)) WITHOUT ROWID;
CREATE TABLE ml_bindings(
    tenant TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL,
    PRIMARY KEY(tenant, id)) WITHOUT ROWID;
"#,
    // 7: QoS 2 exchanges in flight survive restarts (packet id and PUBREC
    // state of messages sent, packet ids received and not yet released).
    r#"
ALTER TABLE mqtt_queue ADD COLUMN pkid INTEGER;
ALTER TABLE mqtt_queue ADD COLUMN released INTEGER NOT NULL DEFAULT 0;
CREATE TABLE mqtt_qos2_in(client_id TEXT NOT NULL, pkid INTEGER NOT NULL,
    PRIMARY KEY(client_id, pkid)) WITHOUT ROWID;
"#,
    // 8: the durable fan-out: events of committed changes, kept while a
    // durable consumer (rules, routes) has not applied them.
    r#"
CREATE TABLE outbox(last_id INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE consumers(name TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID;
"#,
    // 9: rules (versioned JSON bodies), their rolling state per twin, and
    // alarms; one open alarm per (tenant, originator, type) at most.
    r#"
CREATE TABLE rules(tenant TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    enabled INTEGER NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, PRIMARY KEY(tenant, id)) WITHOUT ROWID;
CREATE TABLE rule_state(tenant TEXT NOT NULL, rule TEXT NOT NULL, twin TEXT NOT NULL,
    state TEXT NOT NULL, PRIMARY KEY(tenant, rule, twin)) WITHOUT ROWID;
CREATE TABLE alarms(id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, originator TEXT NOT NULL,
    type TEXT NOT NULL, severity TEXT NOT NULL, status TEXT NOT NULL, start_ts INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE UNIQUE INDEX alarms_open ON alarms(tenant, originator, type)
    WHERE status IN ('ACTIVE_UNACK', 'ACTIVE_ACK');
CREATE INDEX alarms_by_tenant ON alarms(tenant, id);
"#,
    // 10: rollups in a rowid table: a rollup (a few hundred bytes) is kept
    // in its b-tree page, where a WITHOUT ROWID row that size spilled into
    // a mostly empty overflow page. Batch-log records (v2) and rollups
    // (columnar) are written in smaller encodings from this format on, which
    // earlier binaries cannot read; they read what those wrote.
    r#"
CREATE TABLE rollups_by_rowid(
    id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL, res INTEGER NOT NULL,
    win INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE(series_id, res, win));
INSERT INTO rollups_by_rowid(series_id, res, win, data) SELECT series_id, res, win, data FROM rollups;
DROP TABLE rollups;
ALTER TABLE rollups_by_rowid RENAME TO rollups;
"#,
    // 11: routes (versioned JSON bodies) and their dead letters. Outbox
    // rows written from this format on carry each event's commit time.
    r#"
CREATE TABLE routes(tenant TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    paused INTEGER NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, PRIMARY KEY(tenant, id)) WITHOUT ROWID;
CREATE TABLE route_deadletters(seq INTEGER PRIMARY KEY, tenant TEXT NOT NULL, route TEXT NOT NULL,
    event_id INTEGER NOT NULL, at INTEGER NOT NULL, attempts INTEGER NOT NULL,
    error TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX route_deadletters_by_route ON route_deadletters(tenant, route, seq);
"#,
    // 12: binary layouts of devices that send raw frames.
    r#"
CREATE TABLE device_layouts(device TEXT PRIMARY KEY, tenant TEXT NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
"#,
    // 13: inbound connectors (OPC UA clients, …): JSON definitions; named
    // binary layouts (for listed devices or every device of a model).
    r#"
CREATE TABLE layouts(tenant TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY(tenant, id)) WITHOUT ROWID;
CREATE TABLE connectors(tenant TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY(tenant, id)) WITHOUT ROWID;
"#,
    // 14: no schema change. Batch-log records are written as version 3
    // (one per group commit, sids and timestamps continuing from the
    // previous entry), which earlier binaries cannot read: the bump makes
    // them refuse this file rather than fail at replay.
    "SELECT 1;",
    // 15: no change here. On PostgreSQL, chunks and batch_log become
    // range-partitioned (`partitions.rs`), and the writer numbers
    // batch-log records itself.
    "SELECT 1;",
    // 16: no schema change. Outbox rows are written in a binary form
    // (`outbox_rows`), which earlier binaries cannot read.
    "SELECT 1;",
];

pub const DB_FILE: &str = "twinhub.db";

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

/// Pages of a new file. Chunks (a few KB each) are the bulk of the file;
/// with 4 KB pages each sits alone in a page and a third of the file is
/// slack, with 1 KB pages their overflow pages are full and the slack is
/// a few percent.
const PAGE_SIZE: i64 = 1024;

pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    Ok(())
}

/// Opens the write connection, creating or migrating the schema. The
/// caller holds the data directory lock.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    // WAL with FULL sync: a commit is on disk before it returns, which is
    // what an acknowledgement promises; readers never block the writer.
    incremental_vacuum(&conn, path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The checkpointer thread copies the log beside the writer
    // (`checkpoint.rs`) and the writer starts it over (`wal.rs`, which
    // keeps a backstop in place of SQLite's automatic checkpoint).
    super::wal::watch_commits(&conn);
    // The log restarts from its start once the checkpointer has copied
    // it, and is overwritten in place. Shrinking it at each restart (a
    // smaller limit) freed and reallocated tens of megabytes of blocks
    // every few seconds under steady ingest, and the commit that did it
    // waited 25–35 ms (measured under `twinhub bench rules`): the limit
    // is above what the backstop lets it grow to, and the writer
    // truncates it once idle instead.
    conn.pragma_update(None, "journal_size_limit", 96 << 20)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Freed pages must be given back to the file system (the batch log frees
/// as much as it holds at every compaction), which needs the file in
/// incremental auto-vacuum mode: set before the first table of a new
/// file; an older file is rewritten once (`VACUUM`) if it is small enough
/// to do so at start, else it keeps its mode and says so.
fn incremental_vacuum(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    const REWRITE_UP_TO: u64 = 1 << 30;
    // Only a file not yet written takes it (first, before any read).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    if tables == 0 {
        return Ok(());
    }
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if size > REWRITE_UP_TO {
        tracing::info!(
            bytes = size,
            "the database file keeps freed pages (run VACUUM offline to change that)"
        );
        return Ok(());
    }
    let t = std::time::Instant::now();
    conn.execute_batch("VACUUM")?;
    tracing::info!(
        bytes = size,
        ms = t.elapsed().as_millis() as u64,
        "the database file now gives freed pages back"
    );
    Ok(())
}

pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

/// The format version recorded in a database, 0 for an empty file.
pub fn format_version(conn: &Connection) -> Result<i64, StoreError> {
    let has_meta: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_meta {
        return Ok(0);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key='format_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found = format_version(conn)?;
    if found > FORMAT_VERSION {
        return Err(StoreError::TooNew {
            found,
            supported: FORMAT_VERSION,
        });
    }
    if found == FORMAT_VERSION {
        return Ok(());
    }
    // One transaction from the found format to the current one: a fresh
    // directory is created at the current format in one step, and an old
    // one is migrated whole or not at all.
    let tx = conn.transaction()?;
    for v in found..FORMAT_VERSION {
        tx.execute_batch(MIGRATIONS[v as usize])?;
    }
    tx.execute(
        "INSERT INTO meta(key, value) VALUES('format_version', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [FORMAT_VERSION.to_string()],
    )?;
    tx.commit()?;
    if found > 0 {
        tracing::info!(
            from = found,
            to = FORMAT_VERSION,
            "migrated the data directory"
        );
    }
    Ok(())
}

/// Read connections, opened on demand and reused.
pub struct ReadPool {
    source: Source,
    idle: Mutex<Vec<Db>>,
}

impl ReadPool {
    pub fn new(source: Source) -> ReadPool {
        ReadPool {
            source,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether reads leave the process (PostgreSQL).
    pub fn is_remote(&self) -> bool {
        matches!(self.source, Source::Pg { .. })
    }

    /// Runs `f` inside one read transaction, so everything it reads is one
    /// consistent snapshot.
    pub fn read<R>(&self, f: impl FnOnce(&Db) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let conn = self.idle.lock().expect("pool lock").pop();
        let conn = match conn {
            Some(c) => c,
            None => self.source.open_reader()?,
        };
        Source::begin_read(&conn)?;
        let out = f(&conn);
        let ended = conn.sql().batch("COMMIT");
        // A connection that failed (PostgreSQL went away) is not reused.
        if ended.is_ok() && !matches!(out, Err(StoreError::Unavailable)) {
            let mut idle = self.idle.lock().expect("pool lock");
            if idle.len() < 16 {
                idle.push(conn);
            }
        }
        out
    }
}

pub fn meta_get(conn: &dyn Sql, key: &str) -> Result<Option<String>, StoreError> {
    conn.row("SELECT value FROM meta WHERE key = ?1", args![key], |r| {
        r.get(0)
    })
}

pub fn meta_set(conn: &dyn Sql, key: &str, value: &str) -> Result<(), StoreError> {
    conn.exec(
        "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        args![key, value],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory written by an older binary is migrated in place;
    /// one written by a newer binary is refused.
    #[test]
    fn migrates_forward_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(dir.path());
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            meta_set(&conn, "format_version", "1").unwrap();
            conn.execute("INSERT INTO tenants VALUES ('default', 'Default', 0)", [])
                .unwrap();
        }
        let conn = open_writer(&path).unwrap();
        assert_eq!(format_version(&conn).unwrap(), FORMAT_VERSION);
        let kept: String = conn
            .query_row("SELECT name FROM tenants", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "Default", "data survives the migration");
        conn.query_row("SELECT COUNT(*) FROM mqtt_sessions", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
        meta_set(&conn, "format_version", "99").unwrap();
        drop(conn);
        match open_writer(&path) {
            Err(StoreError::TooNew {
                found: 99,
                supported,
            }) => assert_eq!(supported, FORMAT_VERSION),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a newer format was opened"),
        }
    }
}
