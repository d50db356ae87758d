//! PostgreSQL keeps the history's two big tables in range partitions:
//! `chunks` by window (`win`, hours since the epoch; a partition is a week,
//! TimescaleDB's default chunk interval) and `batch_log` by record number
//! (`seq`, `LOG_SPAN` records a partition). Queries over a time range read
//! the partitions of that range only; the batch log's cut after a flush
//! drops whole partitions instead of leaving millions of dead rows for
//! vacuum; a week of chunks emptied by retention is dropped as a table.
//! The embedded store has no partitions: every function here is a no-op
//! on SQLite.
//!
//! A partition is created as a table of its own and then attached, which
//! takes a lock that readers and writers of the parent do not wait for
//! (`CREATE TABLE … PARTITION OF` would block every query of `chunks` for
//! its duration). Only the store's writer creates and drops partitions, so
//! the set of those that exist is kept here, loaded from the catalog once.
//!
//! May call: `sql`.

use super::sql::{args, Dialect, Sql};
use super::StoreError;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The partitioned tables (part of the schema, `pg_schema.sql`). The log
/// is numbered by the writer; PostgreSQL 15 has no identity columns on
/// partitioned tables, so chunk ids come from a sequence.
pub const TABLES: &str = "
CREATE TABLE batch_log(
    seq INT8 NOT NULL PRIMARY KEY,
    received INT8 NOT NULL, data BYTEA NOT NULL) PARTITION BY RANGE (seq);
CREATE SEQUENCE chunk_ids;
CREATE TABLE chunks(
    id INT8 NOT NULL DEFAULT nextval('chunk_ids'),
    series_id INT8 NOT NULL, win INT8 NOT NULL,
    min_ts INT8 NOT NULL, max_ts INT8 NOT NULL,
    count INT8 NOT NULL, num_count INT8 NOT NULL,
    sum DOUBLE PRECISION NOT NULL, min DOUBLE PRECISION, max DOUBLE PRECISION,
    first BYTEA NOT NULL, last BYTEA NOT NULL, data BYTEA NOT NULL,
    PRIMARY KEY (id, win)) PARTITION BY RANGE (win);
ALTER SEQUENCE chunk_ids OWNED BY chunks.id;
CREATE INDEX chunks_by_series ON chunks(series_id, win);
";

/// Format 14 → 15: the unpartitioned tables of format 14 become the
/// partitioned ones, rows and chunk ids kept (in the caller's
/// transaction).
pub fn partition_format_14(sql: &dyn Sql) -> Result<(), StoreError> {
    sql.batch(
        "ALTER TABLE batch_log RENAME TO batch_log_14;
         ALTER INDEX batch_log_pkey RENAME TO batch_log_14_pkey;
         ALTER TABLE chunks RENAME TO chunks_14;
         ALTER INDEX chunks_pkey RENAME TO chunks_14_pkey;
         ALTER INDEX chunks_by_series RENAME TO chunks_14_by_series",
    )?;
    sql.batch(TABLES)?;
    let mut have = BTreeSet::new();
    let wins: Vec<i64> = sql.rows("SELECT DISTINCT win FROM chunks_14", args![], |r| r.get(0))?;
    ensure_in_tx(sql, &mut have, Table::Chunks, wins)?;
    let seqs: Vec<i64> = sql.rows(
        // Records are numbered from 1: integer division is the floor.
        &format!("SELECT DISTINCT seq / {LOG_SPAN} * {LOG_SPAN} FROM batch_log_14"),
        args![],
        |r| r.get(0),
    )?;
    ensure_in_tx(sql, &mut have, Table::BatchLog, seqs)?;
    sql.batch(
        "INSERT INTO chunks SELECT id, series_id, win, min_ts, max_ts, count, num_count, sum, min, max, first, last, data FROM chunks_14;
         INSERT INTO batch_log SELECT seq, received, data FROM batch_log_14;
         SELECT setval('chunk_ids', COALESCE((SELECT MAX(id) FROM chunks), 0) + 1, false);
         DROP TABLE chunks_14; DROP TABLE batch_log_14",
    )
}

/// Windows (hours) per `chunks` partition: a week.
pub const CHUNK_SPAN: i64 = 24 * 7;
/// Records per `batch_log` partition.
pub const LOG_SPAN: i64 = 1 << 16;
/// How often the writer looks for emptied `chunks` partitions.
const DROP_EVERY: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Chunks,
    BatchLog,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Chunks => "chunks",
            Table::BatchLog => "batch_log",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Table::Chunks => "win",
            Table::BatchLog => "seq",
        }
    }

    fn span(self) -> i64 {
        match self {
            Table::Chunks => CHUNK_SPAN,
            Table::BatchLog => LOG_SPAN,
        }
    }

    /// The partition holding `key`.
    pub fn part_of(self, key: i64) -> i64 {
        key.div_euclid(self.span())
    }

    /// `chunks_p2930`, `chunks_pm1` for windows before 1970.
    fn part_name(self, n: i64) -> String {
        if n < 0 {
            format!("{}_pm{}", self.name(), -n)
        } else {
            format!("{}_p{n}", self.name())
        }
    }

    fn parse(name: &str) -> Option<(Table, i64)> {
        for t in [Table::Chunks, Table::BatchLog] {
            if let Some(rest) = name.strip_prefix(&format!("{}_p", t.name())) {
                return match rest.strip_prefix('m') {
                    Some(neg) => neg.parse::<i64>().ok().map(|n| (t, -n)),
                    None => rest.parse().ok().map(|n| (t, n)),
                };
            }
        }
        None
    }
}

/// The partitions that exist, as the writer knows them.
#[derive(Default)]
pub struct Known {
    parts: Option<BTreeSet<(Table, i64)>>,
    last_drop: Option<Instant>,
}

impl Known {
    /// The list, read from the catalog the first time.
    fn loaded(&mut self, sql: &dyn Sql) -> Result<&mut BTreeSet<(Table, i64)>, StoreError> {
        if self.parts.is_none() {
            self.parts = Some(existing(sql)?);
        }
        Ok(self.parts.as_mut().expect("loaded"))
    }
}

/// Batch-log partition `n` holds no record after `upto`: a cut up to it
/// takes the whole partition.
fn log_part_within(n: i64, upto: i64) -> bool {
    (n + 1) * LOG_SPAN - 1 <= upto
}

/// The partitions of the current schema's history tables.
pub fn existing(sql: &dyn Sql) -> Result<BTreeSet<(Table, i64)>, StoreError> {
    if sql.dialect() != Dialect::Postgres {
        return Ok(BTreeSet::new());
    }
    let names: Vec<String> = sql.rows(
        "SELECT c.relname::TEXT FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent
         JOIN pg_namespace ns ON ns.oid = p.relnamespace
         WHERE ns.nspname = current_schema() AND p.relname IN ('chunks', 'batch_log')",
        args![],
        |r| r.get(0),
    )?;
    Ok(names.iter().filter_map(|n| Table::parse(n)).collect())
}

/// Creates partition `n` of `table` (in the caller's transaction).
fn create(sql: &dyn Sql, table: Table, n: i64) -> Result<(), StoreError> {
    let (name, parent, key) = (table.part_name(n), table.name(), table.key());
    let (lo, hi) = (n * table.span(), (n + 1) * table.span());
    sql.batch(&format!(
        "CREATE TABLE \"{name}\" (LIKE {parent} INCLUDING DEFAULTS);
         ALTER TABLE \"{name}\" ADD CONSTRAINT \"{name}_range\" CHECK ({key} >= {lo} AND {key} < {hi});
         ALTER TABLE {parent} ATTACH PARTITION \"{name}\" FOR VALUES FROM ({lo}) TO ({hi});
         ALTER TABLE \"{name}\" DROP CONSTRAINT \"{name}_range\""
    ))
}

/// Makes sure the partitions holding `keys` exist, each created in a
/// transaction of its own (`sql` must not be in one): the writer calls
/// this before the transaction that inserts the rows.
pub fn ensure(
    sql: &dyn Sql,
    known: &mut Known,
    table: Table,
    keys: impl IntoIterator<Item = i64>,
) -> Result<(), StoreError> {
    if sql.dialect() != Dialect::Postgres {
        return Ok(());
    }
    let parts = known.loaded(sql)?;
    let wanted: BTreeSet<i64> = keys.into_iter().map(|k| table.part_of(k)).collect();
    for n in wanted {
        if parts.contains(&(table, n)) {
            continue;
        }
        if let Err(e) = sql.in_transaction(|| create(sql, table, n)) {
            // Made meanwhile by someone else (an import, a migration)?
            known.parts = None;
            return Err(e);
        }
        parts.insert((table, n));
    }
    Ok(())
}

/// Like `ensure`, inside the caller's transaction and without the
/// writer's list (an import or a migration, before any writer runs).
pub fn ensure_in_tx(
    sql: &dyn Sql,
    have: &mut BTreeSet<(Table, i64)>,
    table: Table,
    keys: impl IntoIterator<Item = i64>,
) -> Result<(), StoreError> {
    if sql.dialect() != Dialect::Postgres {
        return Ok(());
    }
    let wanted: BTreeSet<i64> = keys.into_iter().map(|k| table.part_of(k)).collect();
    for n in wanted {
        if have.insert((table, n)) {
            create(sql, table, n)?;
        }
    }
    Ok(())
}

/// Drops the batch log's partitions wholly at or below `upto` (the cut
/// after a flush), in the caller's transaction; answers how many.
pub fn drop_log_upto(sql: &dyn Sql, known: &mut Known, upto: i64) -> Result<usize, StoreError> {
    if sql.dialect() != Dialect::Postgres {
        return Ok(0);
    }
    let whole: Vec<i64> = known
        .loaded(sql)?
        .iter()
        .filter(|(t, n)| *t == Table::BatchLog && log_part_within(*n, upto))
        .map(|(_, n)| *n)
        .collect();
    for n in &whole {
        detach_and_drop(sql, Table::BatchLog, *n)?;
    }
    // Forgotten only once the transaction commits: the caller does
    // `forget` then.
    Ok(whole.len())
}

/// The batch-log partitions `drop_log_upto(upto)` dropped, once committed.
pub fn forget_log_upto(known: &mut Known, upto: i64) {
    if let Some(parts) = known.parts.as_mut() {
        parts.retain(|(t, n)| !(*t == Table::BatchLog && log_part_within(*n, upto)));
    }
}

fn detach_and_drop(sql: &dyn Sql, table: Table, n: i64) -> Result<(), StoreError> {
    let name = table.part_name(n);
    sql.batch(&format!(
        "ALTER TABLE {} DETACH PARTITION \"{name}\"; DROP TABLE \"{name}\"",
        table.name()
    ))
}

/// Drops `chunks` partitions older than `before_win` that retention has
/// emptied, each in a transaction of its own with a short lock wait (a
/// long reader — an export — is not waited for: next time). At most every
/// `DROP_EVERY`; answers how many were dropped.
pub fn drop_empty_chunks(
    sql: &dyn Sql,
    known: &mut Known,
    before_win: i64,
) -> Result<usize, StoreError> {
    if sql.dialect() != Dialect::Postgres
        || known.last_drop.is_some_and(|t| t.elapsed() < DROP_EVERY)
    {
        return Ok(0);
    }
    known.last_drop = Some(Instant::now());
    let old: Vec<i64> = known
        .loaded(sql)?
        .iter()
        .filter(|(t, n)| *t == Table::Chunks && (n + 1) * CHUNK_SPAN <= before_win)
        .map(|(_, n)| *n)
        .collect();
    let mut dropped = 0;
    for n in old {
        let res = sql.in_transaction(|| {
            sql.batch("SET LOCAL lock_timeout = '200ms'")?;
            let name = Table::Chunks.part_name(n);
            let empty: bool = sql.one(
                &format!("SELECT NOT EXISTS (SELECT 1 FROM \"{name}\")"),
                &[],
            )?;
            if empty {
                detach_and_drop(sql, Table::Chunks, n)?;
            }
            Ok(empty)
        });
        match res {
            Ok(true) => {
                dropped += 1;
                if let Some(p) = known.parts.as_mut() {
                    p.remove(&(Table::Chunks, n));
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, partition = n, "emptied chunks partition not dropped yet");
            }
        }
    }
    Ok(dropped)
}
