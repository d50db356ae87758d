//! The SQL layer's conformance suite: the same statements, written once,
//! behave alike on SQLite and on PostgreSQL (the real server on
//! 127.0.0.1:5432, a schema of its own per run; `TWINHUB_TEST_PG_URL`
//! points elsewhere).

use super::pg::PgConn;
use super::sql::{args, Dialect, Sql};
use super::StoreError;

pub(super) fn pg_url() -> String {
    std::env::var("TWINHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema no other run uses, dropped when the test ends.
pub(super) struct Schema {
    pub(super) name: String,
}

impl Schema {
    pub(super) fn new() -> Schema {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Schema {
            name: format!("twinhub_test_{}_{nanos}", std::process::id()),
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = super::pg::drop_schema(&pg_url(), &self.name);
    }
}

fn ddl(db: &dyn Sql) -> &'static str {
    match db.dialect() {
        Dialect::Sqlite => {
            "CREATE TABLE things(id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT NOT NULL UNIQUE,
               n INTEGER, r REAL, b BLOB, flag INTEGER NOT NULL DEFAULT 0)"
        }
        Dialect::Postgres => {
            "CREATE TABLE things(id BIGSERIAL PRIMARY KEY, k TEXT COLLATE \"C\" NOT NULL UNIQUE,
               n INT8, r DOUBLE PRECISION, b BYTEA, flag INT8 NOT NULL DEFAULT 0)"
        }
    }
}

/// Everything the store's modules rely on, on one backend.
fn conformance(db: &dyn Sql) {
    db.batch(ddl(db)).unwrap();
    let insert = "INSERT INTO things(k, n, r, b, flag) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id";
    let a: i64 = db
        .one(insert, args!["a", 1i64, 0.5, &b"\x00\xff"[..], true])
        .unwrap();
    let b: i64 = db
        .one(
            insert,
            args!["B", None::<i64>, None::<f64>, None::<&[u8]>, false],
        )
        .unwrap();
    assert_eq!((a, b), (1, 2), "ids count from 1 in insertion order");

    // Upserts: the same text on both.
    let upsert = "INSERT INTO things(k, n) VALUES (?1, ?2)
                  ON CONFLICT(k) DO UPDATE SET n = excluded.n";
    assert_eq!(db.exec(upsert, args!["a", 7i64]).unwrap(), 1);
    let ignore = "INSERT INTO things(k, n) VALUES (?1, ?2) ON CONFLICT(k) DO NOTHING";
    assert_eq!(db.exec(ignore, args!["a", 9i64]).unwrap(), 0);

    // A plain duplicate is a conflict, not an outage.
    let dup = db.exec("INSERT INTO things(k) VALUES (?1)", args!["a"]);
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");

    // Typed reads, NULLs, bytes, booleans, and byte-order sorting.
    let rows = db
        .rows(
            "SELECT id, k, n, r, b, flag FROM things ORDER BY k",
            args![],
            |r| {
                Ok((
                    r.get::<i64>(0)?,
                    r.get::<String>(1)?,
                    r.get::<Option<i64>>(2)?,
                    r.get::<Option<f64>>(3)?,
                    r.get::<Option<Vec<u8>>>(4)?,
                    r.get::<bool>(5)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (2, "B".to_string(), None, None, None, false),
            (
                1,
                "a".to_string(),
                Some(7),
                Some(0.5),
                Some(vec![0, 255]),
                true
            ),
        ]
    );
    let err = db
        .row("SELECT n FROM things WHERE k = ?1", args!["B"], |r| {
            r.get::<i64>(0)
        })
        .unwrap_err();
    assert!(err.to_string().contains("column 0"), "{err}");

    // Text survives as written; the argument is text, not SQL.
    let odd = "it's \"quoted\" ?1 — 温度";
    db.exec("INSERT INTO things(k) VALUES (?1)", args![odd])
        .unwrap();
    let back: Option<String> = db
        .row("SELECT k FROM things WHERE k = ?1", args![odd], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(back.as_deref(), Some(odd));
    let count: i64 = db.one("SELECT COUNT(*) FROM things", args![]).unwrap();
    assert_eq!(count, 3);
    let none = db
        .row("SELECT k FROM things WHERE k = ?1", args!["nope"], |r| {
            r.get::<String>(0)
        })
        .unwrap();
    assert_eq!(none, None);

    // Transactions: a rollback leaves nothing, a commit keeps it.
    db.batch("BEGIN").unwrap();
    db.exec("INSERT INTO things(k) VALUES (?1)", args!["gone"])
        .unwrap();
    db.batch("ROLLBACK").unwrap();
    db.batch("BEGIN").unwrap();
    db.exec("DELETE FROM things WHERE k = ?1", args!["B"])
        .unwrap();
    db.batch("COMMIT").unwrap();
    let keys = db
        .rows("SELECT k FROM things ORDER BY id", args![], |r| {
            r.get::<String>(0)
        })
        .unwrap();
    assert_eq!(keys, vec!["a".to_string(), odd.to_string()]);

    // LIMIT takes an argument on both.
    let first = db
        .rows(
            "SELECT k FROM things ORDER BY id LIMIT ?1",
            args![1i64],
            |r| r.get::<String>(0),
        )
        .unwrap();
    assert_eq!(first, vec!["a".to_string()]);
}

#[test]
fn sqlite_passes_the_sql_conformance_suite() {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    conformance(&c);
}

#[test]
fn postgres_passes_the_sql_conformance_suite() {
    let schema = Schema::new();
    let c = PgConn::connect(&pg_url(), Some(&schema.name))
        .expect("PostgreSQL on 127.0.0.1:5432 (database test); .ci/run starts it");
    conformance(&c);
}

#[test]
fn a_schema_name_is_an_identifier_only() {
    let err = PgConn::connect(&pg_url(), Some("x\"; DROP TABLE y; --"))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("store.schema"), "{err}");
}

#[test]
fn postgres_answers_from_inside_an_async_runtime_too() {
    // The writer thread calls the store inside its own runtime.
    let schema = Schema::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let n: i64 = rt.block_on(async {
        let c = PgConn::connect(&pg_url(), Some(&schema.name)).unwrap();
        (&c as &dyn Sql)
            .one("SELECT ?1::INT8 + 1", args![41i64])
            .unwrap()
    });
    assert_eq!(n, 42);
}

/// A migrated store of each backend: SQLite in a temp dir, PostgreSQL in
/// a schema of its own.
pub(super) fn each_backend(f: impl Fn(&dyn Sql)) {
    let dir = tempfile::tempdir().unwrap();
    let lite = super::db::open_writer(&dir.path().join("twinhub.db")).unwrap();
    f(&lite);
    let schema = Schema::new();
    let pg = PgConn::connect(&pg_url(), Some(&schema.name)).unwrap();
    assert_eq!(super::pg::migrate(&pg).unwrap(), super::db::FORMAT_VERSION);
    f(&pg);
}

#[test]
fn nodes_starting_together_create_the_postgres_schema_once() {
    let schema = Schema::new();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let name = schema.name.clone();
            std::thread::spawn(move || {
                let c = PgConn::connect(&pg_url(), Some(&name)).unwrap();
                super::pg::migrate(&c)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), super::db::FORMAT_VERSION);
    }
    let c = PgConn::connect(&pg_url(), Some(&schema.name)).unwrap();
    let db: &dyn Sql = &c;
    let formats: i64 = db
        .one(
            "SELECT COUNT(*) FROM meta WHERE key = 'format_version'",
            args![],
        )
        .unwrap();
    assert_eq!(formats, 1);
    // A format newer than this binary is refused, as on SQLite.
    db.exec(
        "UPDATE meta SET value = '999' WHERE key = 'format_version'",
        args![],
    )
    .unwrap();
    let err = super::pg::migrate(&c).unwrap_err();
    assert!(
        matches!(err, StoreError::TooNew { found: 999, .. }),
        "{err}"
    );
}

#[test]
fn the_outbox_behaves_alike_on_both_backends() {
    use super::outbox;
    use crate::events::{Draft, Kind};
    each_backend(|db| {
        for (first, last) in [(1u64, 3u64), (4, 4), (5, 9)] {
            let events: Vec<_> = (first..=last)
                .map(|id| {
                    Draft::new(
                        "t1",
                        Kind::Device,
                        Some("d1"),
                        None,
                        serde_json::json!({"n": id}),
                    )
                    .with_id(id, id as i64 * 10)
                })
                .collect();
            outbox::insert(db, &events).unwrap();
        }
        assert_eq!(outbox::high_water(db).unwrap(), (9, false));
        db.exec(
            "INSERT INTO consumers(name, position) VALUES (?1, ?2)",
            args!["rules", 0i64],
        )
        .unwrap();
        assert_eq!(outbox::high_water(db).unwrap(), (9, true));
        let ids = |after: u64, max: usize| -> Vec<u64> {
            outbox::read_after(db, after, max)
                .unwrap()
                .iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(ids(0, 2), vec![1, 2, 3], "whole operations");
        assert_eq!(ids(2, 100), vec![3, 4, 5, 6, 7, 8, 9]);
        let e = &outbox::read_after(db, 8, 1).unwrap()[0];
        assert_eq!(
            (e.id, e.at, e.tenant.as_str(), e.twin.as_deref()),
            (9, 90, "t1", Some("d1"))
        );
        outbox::set_position(db, "rules", 4).unwrap();
        outbox::set_position(db, "rules", 2).unwrap();
        let pos: i64 = db
            .one(
                "SELECT position FROM consumers WHERE name = ?1",
                args!["rules"],
            )
            .unwrap();
        assert_eq!(pos, 4, "a position never moves back");
        let rows: i64 = db.one("SELECT COUNT(*) FROM outbox", args![]).unwrap();
        assert_eq!(rows, 1, "rows every consumer passed are deleted");
        assert!(matches!(
            outbox::set_position(db, "nobody", 1),
            Err(StoreError::NotFound(_))
        ));
    });
}
