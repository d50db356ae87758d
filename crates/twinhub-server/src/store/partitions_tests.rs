//! PostgreSQL's partitioned history tables (`partitions.rs`) on the real
//! server: partitions made on demand without blocking readers, the batch
//! log's cut dropping whole partitions, emptied weeks of chunks dropped
//! and made again for late data, and a format-14 store partitioned with
//! every row and id kept.

use super::partitions::{self, Known, Table, CHUNK_SPAN, LOG_SPAN};
use super::pg::PgConn;
use super::sql::{args, Sql};
use super::sql_tests::{pg_url, Schema};
use std::time::{Duration, Instant};

fn store() -> (Schema, PgConn) {
    let schema = Schema::new();
    let c = PgConn::connect(&pg_url(), Some(&schema.name)).unwrap();
    super::pg::migrate(&c).unwrap();
    (schema, c)
}

fn chunk(db: &dyn Sql, win: i64) {
    db.exec(
        "INSERT INTO chunks(series_id, win, min_ts, max_ts, count, num_count, sum, first, last, data)
         VALUES (1, ?1, 0, 0, 1, 0, 0, '', '', '')",
        args![win],
    )
    .unwrap();
}

fn count(db: &dyn Sql, table: &str) -> i64 {
    db.one(&format!("SELECT COUNT(*) FROM {table}"), args![])
        .unwrap()
}

#[test]
fn partitions_are_made_on_demand_without_blocking_readers() {
    let (schema, c) = store();
    let db: &dyn Sql = &c;
    // A row without its partition is refused, not lost somewhere.
    assert!(db
        .exec(
            "INSERT INTO batch_log(seq, received, data) VALUES (1, 0, '')",
            args![]
        )
        .is_err());
    // A reader in a long transaction on both tables (an export, say).
    let reader = PgConn::connect(&pg_url(), Some(&schema.name)).unwrap();
    let r: &dyn Sql = &reader;
    r.batch("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap();
    assert_eq!(count(r, "chunks"), 0);
    assert_eq!(count(r, "batch_log"), 0);
    let mut known = Known::default();
    let t = Instant::now();
    let wins = [-1, 0, CHUNK_SPAN - 1, CHUNK_SPAN, 500_000];
    partitions::ensure(db, &mut known, Table::Chunks, wins).unwrap();
    partitions::ensure(db, &mut known, Table::BatchLog, [1, LOG_SPAN]).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "waited for the reader's transaction"
    );
    r.batch("COMMIT").unwrap();
    let have = partitions::existing(db).unwrap();
    let want = [
        (Table::Chunks, -1),
        (Table::Chunks, 0),
        (Table::Chunks, 1),
        (Table::Chunks, 500_000 / CHUNK_SPAN),
        (Table::BatchLog, 0),
        (Table::BatchLog, 1),
    ];
    assert_eq!(have, want.into_iter().collect());
    for w in wins {
        chunk(db, w);
    }
    db.exec(
        "INSERT INTO batch_log(seq, received, data) VALUES (1, 0, ''), (?1, 0, '')",
        args![LOG_SPAN],
    )
    .unwrap();
    // Each row is in its partition, and the parent reads them all.
    let in_first: i64 = db.one("SELECT COUNT(*) FROM chunks_p0", args![]).unwrap();
    assert_eq!(in_first, 2);
    assert_eq!(count(db, "chunks"), 5);
    let plan: Vec<String> = db
        .rows(
            "EXPLAIN SELECT * FROM chunks WHERE series_id = 1 AND win BETWEEN 0 AND 10",
            args![],
            |row| row.get(0),
        )
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("chunks_p0") && !plan.contains("chunks_p1"),
        "a time range reads its partitions only:\n{plan}"
    );
    // Known partitions cost nothing more: no statement is sent.
    partitions::ensure(db, &mut known, Table::Chunks, wins).unwrap();
}

#[test]
fn the_cut_drops_whole_log_partitions_and_emptied_weeks_go() {
    let (_schema, c) = store();
    let db: &dyn Sql = &c;
    let mut known = Known::default();
    let seqs = [1, LOG_SPAN - 1, LOG_SPAN, 2 * LOG_SPAN + 5];
    partitions::ensure(db, &mut known, Table::BatchLog, seqs).unwrap();
    for s in seqs {
        db.exec(
            "INSERT INTO batch_log(seq, received, data) VALUES (?1, 0, '')",
            args![s],
        )
        .unwrap();
    }
    // Flushed up to LOG_SPAN: the first partition goes whole, the rest of
    // the cut is the caller's DELETE.
    db.batch("BEGIN").unwrap();
    assert_eq!(
        partitions::drop_log_upto(db, &mut known, LOG_SPAN).unwrap(),
        1
    );
    db.batch("COMMIT").unwrap();
    partitions::forget_log_upto(&mut known, LOG_SPAN);
    assert_eq!(count(db, "batch_log"), 2);
    // The writer starts numbering at 1 again after a restart with an
    // empty log: the dropped partition is made again.
    partitions::ensure(db, &mut known, Table::BatchLog, [1]).unwrap();
    db.exec(
        "INSERT INTO batch_log(seq, received, data) VALUES (1, 0, '')",
        args![],
    )
    .unwrap();

    // Chunks: an old week emptied by retention is dropped; an old week
    // with rows and this week stay.
    let now_win = 100 * CHUNK_SPAN + 3;
    let wins = [CHUNK_SPAN, 2 * CHUNK_SPAN, now_win];
    partitions::ensure(db, &mut known, Table::Chunks, wins).unwrap();
    for w in wins {
        chunk(db, w);
    }
    db.exec("DELETE FROM chunks WHERE win = ?1", args![CHUNK_SPAN])
        .unwrap();
    let dropped = partitions::drop_empty_chunks(db, &mut known, now_win - CHUNK_SPAN).unwrap();
    assert_eq!(dropped, 1);
    let have = partitions::existing(db).unwrap();
    assert!(!have.contains(&(Table::Chunks, 1)));
    assert!(have.contains(&(Table::Chunks, 2)) && have.contains(&(Table::Chunks, 100)));
    assert_eq!(count(db, "chunks"), 2);
    // A late point for the dropped week: its partition comes back.
    partitions::ensure(db, &mut known, Table::Chunks, [CHUNK_SPAN + 1]).unwrap();
    chunk(db, CHUNK_SPAN + 1);
    assert_eq!(count(db, "chunks"), 3);
}

#[test]
fn a_format_14_store_is_partitioned_with_its_rows_and_ids() {
    let (_schema, c) = store();
    let db: &dyn Sql = &c;
    // The format-14 tables, as stores made before it have them.
    db.batch(
        "DROP TABLE chunks; DROP TABLE batch_log;
         CREATE TABLE batch_log(
             seq INT8 GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
             received INT8 NOT NULL, data BYTEA NOT NULL);
         CREATE TABLE chunks(
             id INT8 GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
             series_id INT8 NOT NULL, win INT8 NOT NULL,
             min_ts INT8 NOT NULL, max_ts INT8 NOT NULL,
             count INT8 NOT NULL, num_count INT8 NOT NULL,
             sum DOUBLE PRECISION NOT NULL, min DOUBLE PRECISION, max DOUBLE PRECISION,
             first BYTEA NOT NULL, last BYTEA NOT NULL, data BYTEA NOT NULL);
         CREATE INDEX chunks_by_series ON chunks(series_id, win);
         UPDATE meta SET value = '14' WHERE key = 'format_version'",
    )
    .unwrap();
    for w in [-5, 3, 3, 4000] {
        chunk(db, w);
    }
    for _ in 0..3 {
        db.exec(
            "INSERT INTO batch_log(received, data) VALUES (7, 'x')",
            args![],
        )
        .unwrap();
    }
    let ids: Vec<i64> = db
        .rows("SELECT id FROM chunks ORDER BY id", args![], |r| r.get(0))
        .unwrap();

    assert_eq!(super::pg::migrate(&c).unwrap(), super::db::FORMAT_VERSION);
    let kind: String = db
        .one(
            "SELECT relkind::TEXT FROM pg_class WHERE oid = 'chunks'::regclass",
            args![],
        )
        .unwrap();
    assert_eq!(kind, "p", "chunks is partitioned");
    let kept: Vec<i64> = db
        .rows("SELECT id FROM chunks ORDER BY id", args![], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, ids);
    let seqs: Vec<i64> = db
        .rows("SELECT seq FROM batch_log ORDER BY seq", args![], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(seqs, [1, 2, 3]);
    // New chunks continue the ids.
    chunk(db, 3);
    let newest: i64 = db.one("SELECT MAX(id) FROM chunks", args![]).unwrap();
    assert_eq!(newest, ids.last().unwrap() + 1);
    let format: String = db
        .one(
            "SELECT value FROM meta WHERE key = 'format_version'",
            args![],
        )
        .unwrap();
    assert_eq!(format, super::db::FORMAT_VERSION.to_string());
}
