//! The store's row modules behave alike on SQLite and PostgreSQL: each
//! suite runs the same calls against a migrated store of each backend
//! (`sql_tests::each_backend`; the real PostgreSQL, a schema per run).

use super::sql::args;
use super::sql_tests::each_backend;
use super::StoreError;

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
            enqueue(db, &[&queued(id)]).unwrap();
        }
        enqueue(
            db,
            &[&QueuedRow {
                retain: true,
                ..queued(2)
            }],
        )
        .unwrap();
        set_inflight(db, 1, 65535, true).unwrap();
        dequeue(db, &[3]).unwrap();
        // Many at once go several per statement (64 + 16 + 16 + 4 + 1 rows,
        // then 64 + 16 + 4 + 1 ids): every row and every column arrives,
        // and exactly the named ids go.
        let many: Vec<QueuedRow> = (100..201)
            .map(|id| QueuedRow {
                topic: format!("t/{id}"),
                expires_at: Some(id * 10),
                props: Some(format!("{{\"n\":{id}}}")),
                ..queued(id)
            })
            .collect();
        enqueue(db, &many.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(load_queue(db).unwrap()[2..], many[..]);
        let gone: Vec<i64> = (100..185).collect();
        dequeue(db, &gone).unwrap();
        assert_eq!(load_queue(db).unwrap()[2..], many[85..]);
        dequeue(db, &(185..201).collect::<Vec<_>>()).unwrap();
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
fn registry_rows_behave_alike_on_both_backends() {
    use super::registry::*;
    each_backend(|db| {
        let tenant = TenantRow {
            id: "t1".into(),
            name: "Plant".into(),
            created_at: 1,
        };
        insert_tenant(db, &tenant).unwrap();
        let dup = insert_tenant(db, &tenant).unwrap_err();
        assert!(
            matches!(&dup, StoreError::Conflict(m) if m == "tenant t1 already exists"),
            "{dup}"
        );
        assert_eq!(load_tenants(db).unwrap(), vec![tenant]);
        assert!(set_quotas(db, "t1", "{\"devices\":10}").unwrap());
        assert_eq!(
            load_quotas(db).unwrap(),
            vec![("t1".into(), "{\"devices\":10}".into())]
        );

        let device = DeviceRow {
            id: "d1".into(),
            tenant: "t1".into(),
            twin_id: None,
            key_hash: vec![1; 32],
            enabled: true,
            created_at: 1,
            last_seen: None,
            unknown_telemetry: "reject".into(),
            previous_key_hash: None,
            previous_key_until: None,
        };
        insert_device(db, &device).unwrap();
        assert!(matches!(
            insert_device(db, &device),
            Err(StoreError::Conflict(_))
        ));
        let rotated = DeviceRow {
            key_hash: vec![2; 32],
            previous_key_hash: Some(vec![1; 32]),
            previous_key_until: Some(99),
            twin_id: Some("r1".into()),
            ..device.clone()
        };
        update_device(db, &rotated).unwrap();
        set_last_seen(db, &[("d1".into(), 42)]).unwrap();
        assert_eq!(
            load_devices(db).unwrap(),
            vec![DeviceRow {
                last_seen: Some(42),
                ..rotated
            }]
        );
        let missing = update_device(
            db,
            &DeviceRow {
                id: "nope".into(),
                ..device
            },
        );
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
        assert!(delete_device(db, "d1").unwrap());

        let user = UserRow {
            username: "ana".into(),
            tenant: "t1".into(),
            password_hash: "$argon2id$…".into(),
            roles: vec!["operator".into()],
            created_at: 1,
        };
        insert_user(db, &user).unwrap();
        assert!(set_password(db, "ana", "h2").unwrap());
        assert!(set_roles(db, "ana", &["admin".into()]).unwrap());
        let loaded = &load_users(db).unwrap()[0];
        assert_eq!(
            (loaded.password_hash.as_str(), loaded.roles.clone()),
            ("h2", vec!["admin".to_string()])
        );
        insert_refresh(db, &[9; 32], "ana", "s1", 100).unwrap();
        insert_refresh(db, &[8; 32], "ana", "s2", 5).unwrap();
        assert_eq!(sessions_of(db, "ana").unwrap().len(), 2);
        assert_eq!(
            take_refresh(db, &[9; 32]).unwrap(),
            Some(("ana".into(), "s1".into(), 100))
        );
        assert_eq!(take_refresh(db, &[9; 32]).unwrap(), None, "used once");
        revoke_session(db, "s1", 200).unwrap();
        revoke_session(db, "s1", 200).unwrap();
        purge_expired(db, 10).unwrap();
        assert_eq!(load_revoked(db, 10).unwrap(), vec![("s1".into(), 200)]);
        assert!(sessions_of(db, "ana").unwrap().is_empty(), "s2 expired");
        set_login_failures(db, "ana", 3, Some(77)).unwrap();
        assert_eq!(
            load_login_failures(db).unwrap(),
            vec![("ana".into(), 3, Some(77))]
        );
        assert!(delete_user(db, "ana").unwrap());
        assert!(load_login_failures(db).unwrap().is_empty());

        let key = ApiKeyRow {
            id: "k1".into(),
            tenant: "t1".into(),
            name: "erp".into(),
            key_hash: vec![3; 32],
            roles: vec![],
            permissions: Some(vec!["twins:read".into()]),
            created_by: "ana".into(),
            created_at: 1,
            expires_at: None,
            revoked_at: None,
            last_used: None,
        };
        put_apikey(db, &key).unwrap();
        put_apikey(
            db,
            &ApiKeyRow {
                revoked_at: Some(5),
                ..key.clone()
            },
        )
        .unwrap();
        assert_eq!(
            load_apikeys(db).unwrap(),
            vec![ApiKeyRow {
                revoked_at: Some(5),
                ..key
            }]
        );
        let role = RoleRow {
            tenant: "t1".into(),
            name: "line-1".into(),
            permissions: vec!["twins:read".into()],
            scope: Some(serde_json::json!({"twin": "line1"})),
            created_at: 1,
        };
        put_role(db, &role).unwrap();
        assert_eq!(load_roles(db).unwrap(), vec![role]);
        assert!(delete_role(db, "t1", "line-1").unwrap());
        put_layout(db, "t1", "d1", Some("{}")).unwrap();
        assert!(put_named_layout(db, "t1", "l1", Some("{}")).unwrap());
        assert_eq!(
            load_layouts(db).unwrap().len() + load_named_layouts(db).unwrap().len(),
            2
        );
        put_layout(db, "t1", "d1", None).unwrap();
        assert!(put_named_layout(db, "t1", "l1", None).unwrap());
        assert!(storage_by_tenant(db).unwrap().is_empty());
    });
}

#[test]
fn secret_rows_behave_alike_on_both_backends() {
    use super::secrets::*;
    each_backend(|db| {
        put_secret(db, "t1", "erp-token", &[1; 12], &[0, 255, 7], 5).unwrap();
        put_secret(db, "t1", "erp-token", &[2; 12], &[9], 6).unwrap();
        put_secret(db, "t1", "a-hook", &[3; 12], &[1], 7).unwrap();
        assert_eq!(
            sealed(db, "t1", "erp-token").unwrap(),
            Some((vec![2; 12], vec![9]))
        );
        assert_eq!(
            sealed(db, "t2", "erp-token").unwrap(),
            None,
            "another tenant's"
        );
        assert_eq!(
            names(db, "t1").unwrap(),
            vec![("a-hook".to_string(), 7), ("erp-token".to_string(), 6)]
        );
        assert!(delete_secret(db, "t1", "a-hook").unwrap());
        assert!(!delete_secret(db, "t1", "a-hook").unwrap());
    });
}
