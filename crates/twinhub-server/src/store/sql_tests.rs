//! The SQL layer's conformance suite: the same statements, written once,
//! behave alike on SQLite and on PostgreSQL (the real server on
//! 127.0.0.1:5432, a schema of its own per run; `TWINHUB_TEST_PG_URL`
//! points elsewhere).

use super::pg::PgConn;
use super::sql::{args, Dialect, Sql};
use super::StoreError;

fn pg_url() -> String {
    std::env::var("TWINHUB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A schema no other run uses, dropped when the test ends.
struct Schema {
    name: String,
}

impl Schema {
    fn new() -> Schema {
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
        if let Ok(c) = PgConn::connect(&pg_url(), None) {
            let _ = c.batch(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
        }
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
fn each_backend(f: impl Fn(&dyn Sql)) {
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
fn rule_and_alarm_rows_behave_alike_on_both_backends() {
    use super::rules::*;
    each_backend(|db| {
        let rule = |id: &str, version: i64| RuleRow {
            tenant: "t1".into(),
            id: id.into(),
            version,
            enabled: version % 2 == 1,
            body: format!("{{\"v\":{version}}}"),
            created_at: 1,
            updated_at: version,
        };
        put_rule(db, &rule("hot", 1)).unwrap();
        put_rule(db, &rule("hot", 2)).unwrap();
        put_rule(db, &rule("cold", 1)).unwrap();
        assert_eq!(count_rules(db).unwrap(), 2);
        let mut rules = load_rules(db).unwrap();
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            rules
                .iter()
                .map(|r| (r.id.as_str(), r.version, r.enabled))
                .collect::<Vec<_>>(),
            vec![("cold", 1, true), ("hot", 2, false)]
        );
        put_state(db, "t1", "hot", "r1", Some("{\"a\":1}")).unwrap();
        put_state(db, "t1", "hot", "r1", Some("{\"a\":2}")).unwrap();
        put_state(db, "t1", "hot", "r2", Some("{}")).unwrap();
        put_state(db, "t1", "hot", "r2", None).unwrap();
        assert_eq!(
            load_states(db).unwrap(),
            vec![("t1".into(), "hot".into(), "r1".into(), "{\"a\":2}".into())]
        );
        assert!(delete_rule(db, "t1", "hot").unwrap());
        assert!(!delete_rule(db, "t1", "hot").unwrap());
        assert!(
            load_states(db).unwrap().is_empty(),
            "a rule's state goes with it"
        );

        let alarm = |id: i64, originator: &str, status: &str, at: i64| AlarmRow {
            id,
            tenant: "t1".into(),
            originator: originator.into(),
            kind: "Hot".into(),
            severity: "major".into(),
            status: status.into(),
            start_ts: at,
            updated_at: at,
            body: "{}".into(),
        };
        assert_eq!(max_alarm_id(db).unwrap(), 0);
        put_alarm(db, &alarm(1, "r1", "ACTIVE_UNACK", 10)).unwrap();
        // One open alarm per (tenant, originator, type), whatever writes it.
        let dup = put_alarm(db, &alarm(2, "r1", "ACTIVE_UNACK", 11)).unwrap_err();
        assert!(
            matches!(&dup, StoreError::Conflict(m) if m.contains("r1 already has an open Hot alarm")),
            "{dup}"
        );
        put_alarm(db, &alarm(1, "r1", "CLEARED_ACK", 12)).unwrap();
        put_alarm(db, &alarm(2, "r1", "ACTIVE_UNACK", 13)).unwrap();
        put_alarm(db, &alarm(3, "r2", "ACTIVE_ACK", 14)).unwrap();
        assert_eq!(max_alarm_id(db).unwrap(), 3);
        let mut open: Vec<i64> = open_alarms(db).unwrap().iter().map(|a| a.id).collect();
        open.sort();
        assert_eq!(open, vec![2, 3]);
        assert_eq!(
            get_alarm(db, "t1", 1).unwrap().unwrap().status,
            "CLEARED_ACK"
        );
        assert_eq!(
            get_alarm(db, "t2", 1).unwrap(),
            None,
            "another tenant's alarm"
        );
        let ids = |f: AlarmFilter| -> Vec<i64> {
            list_alarms(db, "t1", &AlarmFilter { limit: 10, ..f })
                .unwrap()
                .iter()
                .map(|a| a.id)
                .collect()
        };
        assert_eq!(ids(AlarmFilter::default()), vec![3, 2, 1]);
        assert_eq!(
            ids(AlarmFilter {
                statuses: vec!["ACTIVE_UNACK".into(), "ACTIVE_ACK".into()],
                originators: Some(vec!["r1".into()]),
                ..Default::default()
            }),
            vec![2]
        );
        assert_eq!(
            ids(AlarmFilter {
                from: Some(11),
                to: Some(14),
                ..Default::default()
            }),
            vec![2]
        );
        assert_eq!(
            ids(AlarmFilter {
                before: Some(3),
                kind: Some("Hot".into()),
                ..Default::default()
            }),
            vec![2, 1]
        );
        assert_eq!(
            list_alarms(
                db,
                "t1",
                &AlarmFilter {
                    limit: 1,
                    ..Default::default()
                }
            )
            .unwrap()
            .len(),
            1
        );
        assert!(ids(AlarmFilter {
            originators: Some(vec![]),
            ..Default::default()
        })
        .is_empty());
        assert_eq!(delete_closed_alarms(db, 13).unwrap(), 1);
        assert_eq!(delete_closed_alarms(db, 13).unwrap(), 0);
    });
}

#[test]
fn route_and_connector_rows_behave_alike_on_both_backends() {
    use super::connectors::*;
    use super::routes::*;
    each_backend(|db| {
        let route = |id: &str, version: i64, paused: bool| RouteRow {
            tenant: "t1".into(),
            id: id.into(),
            version,
            paused,
            body: "{}".into(),
            created_at: 1,
            updated_at: version,
        };
        put_route(db, &route("erp", 1, false)).unwrap();
        put_route(db, &route("erp", 2, true)).unwrap();
        let routes = load_routes(db).unwrap();
        assert_eq!(
            routes
                .iter()
                .map(|r| (r.id.as_str(), r.version, r.paused))
                .collect::<Vec<_>>(),
            vec![("erp", 2, true)]
        );
        let letters: Vec<(u64, String)> = (1..=5).map(|i| (i, format!("{{\"id\":{i}}}"))).collect();
        add_dead_letters(db, "t1", "erp", &letters, 100, 3, "HTTP 500").unwrap();
        add_dead_letters(db, "t2", "erp", &letters[..1], 100, 1, "other tenant").unwrap();
        assert_eq!(count_dead_letters(db, "t1", "erp").unwrap(), 5);
        let page = dead_letters(db, "t1", "erp", 0, 2).unwrap();
        assert_eq!(
            page.iter()
                .map(|d| (d.event_id, d.attempts))
                .collect::<Vec<_>>(),
            vec![(1, 3), (2, 3)]
        );
        let rest = dead_letters(db, "t1", "erp", page[1].seq, 10).unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].error, "HTTP 500");
        remove_dead_letters(db, "t1", "erp", &[page[0].seq, rest[2].seq]).unwrap();
        assert_eq!(count_dead_letters(db, "t1", "erp").unwrap(), 3);
        assert!(delete_route(db, "t1", "erp").unwrap());
        assert_eq!(
            count_dead_letters(db, "t1", "erp").unwrap(),
            0,
            "letters go with it"
        );
        assert_eq!(count_dead_letters(db, "t2", "erp").unwrap(), 1);

        // The backlog counts whole operations' events after a position.
        for (first, last) in [(1i64, 3i64), (4, 4), (5, 9)] {
            db.exec(
                "INSERT INTO outbox(last_id, first_id, data) VALUES (?1, ?2, ?3)",
                args![last, first, &b"0123456789"[..]],
            )
            .unwrap();
        }
        assert_eq!(backlog(db, 0).unwrap(), (9, 30));
        assert_eq!(
            backlog(db, 2).unwrap(),
            (7, 30),
            "part of the first operation"
        );
        assert_eq!(backlog(db, 9).unwrap(), (0, 0));
        assert_eq!(skip_to_keep(db, 0, 6).unwrap(), Some(3));
        assert_eq!(skip_to_keep(db, 0, 9).unwrap(), None);

        let connector = |kind: &str, at: i64| ConnectorRow {
            tenant: "t1".into(),
            id: "plc".into(),
            kind: kind.into(),
            body: "{}".into(),
            created_at: 1,
            updated_at: at,
        };
        put_connector(db, &connector("opcua", 1)).unwrap();
        put_connector(db, &connector("lorawan", 2)).unwrap();
        let all = load_connectors(db).unwrap();
        assert_eq!(
            (all.len(), all[0].kind.as_str(), all[0].updated_at),
            (1, "lorawan", 2)
        );
        assert!(delete_connector(db, "t1", "plc").unwrap());
        assert!(load_connectors(db).unwrap().is_empty());
    });
}

#[test]
fn graph_audit_and_ml_rows_behave_alike_on_both_backends() {
    each_backend(|db| {
        use super::twins::*;
        let model = ModelRow {
            tenant: "t1".into(),
            id: "dtmi:x:Reactor;1".into(),
            body: "{}".into(),
            decommissioned: false,
            uploaded_at: 5,
        };
        put_model(db, &model).unwrap();
        put_model(
            db,
            &ModelRow {
                decommissioned: true,
                ..model.clone()
            },
        )
        .unwrap();
        assert_eq!(
            load_models(db).unwrap(),
            vec![ModelRow {
                decommissioned: true,
                ..model
            }]
        );
        let twin = TwinRow {
            tenant: "t1".into(),
            id: "r1".into(),
            model: "dtmi:x:Reactor;1".into(),
            etag: "W/\"1\"".into(),
            body: "{\"temperature\":350.5}".into(),
        };
        put_twin(db, &twin).unwrap();
        put_twin(
            db,
            &TwinRow {
                etag: "W/\"2\"".into(),
                ..twin.clone()
            },
        )
        .unwrap();
        assert_eq!(load_twins(db).unwrap()[0].etag, "W/\"2\"");
        let rel = RelationshipRow {
            tenant: "t1".into(),
            source: "r1".into(),
            id: "p".into(),
            name: "isPartOf".into(),
            target: "line1".into(),
            etag: "e".into(),
            body: "{}".into(),
        };
        put_relationship(db, &rel).unwrap();
        assert_eq!(load_relationships(db).unwrap(), vec![rel]);
        delete_relationship(db, "t1", "r1", "p").unwrap();
        delete_twin(db, "t1", "r1").unwrap();
        delete_model(db, "t1", "dtmi:x:Reactor;1").unwrap();
        assert!(load_twins(db).unwrap().is_empty() && load_relationships(db).unwrap().is_empty());

        use super::audit::{self, AuditRow};
        assert_eq!(audit::last_seq(db, "t1").unwrap(), None);
        for (chain, seq) in [("t1", 1), ("t1", 2), ("system", 1)] {
            let row = AuditRow {
                chain: chain.into(),
                seq,
                ts: seq * 10,
                actor: "admin".into(),
                action: "twin.patch".into(),
                target: "r1".into(),
                detail: "{}".into(),
                mac: vec![seq as u8; 32],
            };
            audit::append(db, &row).unwrap();
        }
        assert_eq!(audit::last_seq(db, "t1").unwrap(), Some(2));
        assert_eq!(audit::count(db, "t1").unwrap(), 2);
        assert_eq!(
            audit::chains(db).unwrap(),
            vec!["system".to_string(), "t1".to_string()]
        );
        let mut heads = audit::heads(db).unwrap();
        heads.sort();
        assert_eq!(
            heads,
            vec![
                ("system".into(), 1, vec![1; 32]),
                ("t1".into(), 2, vec![2; 32])
            ]
        );
        assert_eq!(audit::page(db, "t1", 1, 10).unwrap()[0].seq, 2);

        use super::ml;
        let version = ml::ModelRow {
            tenant: "t1".into(),
            name: "yield".into(),
            version: "1".into(),
            manifest: "{}".into(),
            onnx: vec![8, 1, 0, 255],
            sha256: "ab".into(),
            created_at: 1,
        };
        ml::insert_model(db, &version).unwrap();
        let again = ml::insert_model(db, &version).unwrap_err();
        assert!(
            matches!(&again, StoreError::Conflict(m) if m.contains("version 1 already exists")),
            "{again}"
        );
        assert_eq!(
            ml::model_files(db, "t1", "yield", "1").unwrap(),
            Some(("{}".to_string(), vec![8, 1, 0, 255]))
        );
        let routing = ml::RoutingRow {
            tenant: "t1".into(),
            name: "yield".into(),
            active: "1".into(),
            candidate: None,
            share: 0.0,
        };
        ml::put_routing(db, &routing).unwrap();
        let ab = ml::RoutingRow {
            candidate: Some("2".into()),
            share: 0.25,
            ..routing
        };
        ml::put_routing(db, &ab).unwrap();
        assert_eq!(ml::load_routing(db).unwrap(), vec![ab]);
        ml::put_binding(db, "t1", "b1", "{}", 1).unwrap();
        assert_eq!(ml::load_bindings(db).unwrap().len(), 1);
        assert!(ml::delete_binding(db, "t1", "b1").unwrap());
        assert!(ml::delete_model_version(db, "t1", "yield", "1").unwrap());
        assert!(ml::load_models(db).unwrap().is_empty());
    });
}

#[test]
fn mqtt_state_rows_behave_alike_on_both_backends() {
    use super::mqtt::*;
    each_backend(|db| {
        let retained = RetainedRow {
            tenant: "t1".into(),
            topic: "devices/d1/state".into(),
            payload: b"{\"on\":true}".to_vec(),
            qos: 1,
            props: None,
            expires_at: Some(99),
        };
        put_retained(db, &retained).unwrap();
        let newer = RetainedRow {
            payload: vec![],
            qos: 0,
            props: Some("{}".into()),
            ..retained
        };
        put_retained(db, &newer).unwrap();
        assert_eq!(load_retained(db).unwrap(), vec![newer]);
        delete_retained(db, "t1", "devices/d1/state").unwrap();
        assert!(load_retained(db).unwrap().is_empty());

        let session = SessionRow {
            client_id: "c1".into(),
            tenant: "t1".into(),
            owner: "d1".into(),
            expiry_s: 3600,
            disconnected_at: None,
            subs: "[]".into(),
        };
        put_session(db, &session).unwrap();
        let queued = |id: i64| QueuedRow {
            id,
            client_id: "c1".into(),
            topic: "t".into(),
            payload: vec![id as u8],
            qos: 2,
            retain: false,
            props: None,
            expires_at: None,
            sub_ids: "[1]".into(),
            pkid: None,
            released: false,
        };
        for id in 1..=3 {
            enqueue(db, &queued(id)).unwrap();
        }
        enqueue(
            db,
            &QueuedRow {
                retain: true,
                ..queued(2)
            },
        )
        .unwrap();
        set_inflight(db, 1, 65535, true).unwrap();
        dequeue(db, &[3]).unwrap();
        let q = load_queue(db).unwrap();
        assert_eq!(
            q.iter()
                .map(|m| (m.id, m.pkid, m.released, m.retain))
                .collect::<Vec<_>>(),
            vec![(1, Some(65535), true, false), (2, None, false, true)]
        );
        qos2_in(db, "c1", 7, true).unwrap();
        qos2_in(db, "c1", 7, true).unwrap();
        qos2_in(db, "c1", 8, true).unwrap();
        qos2_in(db, "c1", 8, false).unwrap();
        assert_eq!(load_qos2_in(db).unwrap(), vec![("c1".to_string(), 7)]);
        assert_eq!(load_sessions(db).unwrap(), vec![session]);
        delete_session(db, "c1").unwrap();
        assert!(load_sessions(db).unwrap().is_empty());
        assert!(load_queue(db).unwrap().is_empty() && load_qos2_in(db).unwrap().is_empty());
    });
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
