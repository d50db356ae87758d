//! Security: the tamper-evident audit log, API keys, lockout, rate limits,
//! and what each role may do.

use crate::common::*;
use serde_json::{json, Value};

fn db(s: &TestServer) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(s.dir.path().join("twinhub.db")).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

async fn audit_entries(s: &TestServer) -> Vec<Value> {
    let (st, v) = s.json(s.get("/api/v1/audit?limit=1000")).await;
    assert_eq!(st, 200, "{v}");
    v["value"].as_array().unwrap().clone()
}

async fn verify(s: &TestServer) -> Value {
    let (st, v) = s.json(s.post("/api/v1/audit/verify", json!({}))).await;
    assert_eq!(st, 200);
    v
}

#[tokio::test]
async fn actions_are_audited_in_a_verifiable_chain() {
    let s = TestServer::start().await;
    s.device("a1").await;
    crate::graph::load_plant(&s).await;
    crate::graph::reactor(&s, "r1").await;
    s.delete("/api/v1/devices/a1").send().await.unwrap();
    let entries = audit_entries(&s).await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "auth.login",
            "device.create",
            "model.upload",
            "twin.put",
            "device.delete"
        ]
    );
    assert!(entries
        .iter()
        .enumerate()
        .all(|(i, e)| e["seq"] == i as i64 + 1));
    assert_eq!(entries[1]["actor"], "user:admin");
    assert_eq!(entries[1]["target"], "a1");
    // Telemetry is not audited.
    let k = s.device("t1").await;
    s.send("t1", &k, json!({"v": 1})).await;
    assert_eq!(audit_entries(&s).await.len(), 6);
    let v = verify(&s).await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["entries"].as_i64().unwrap() >= 6);
    // The chain continues across a restart.
    let s = s.restart().await;
    s.device("after").await;
    let entries = audit_entries(&s).await;
    assert_eq!(entries.last().unwrap()["action"], "device.create");
    assert_eq!(verify(&s).await["ok"], true);
    s.stop().await;
}

#[tokio::test]
async fn an_altered_entry_is_found() {
    if on_postgres() {
        // Tampers with the embedded file; PostgreSQL's own tests are its.
        eprintln!("skipped on PostgreSQL: reads the embedded store's file");
        return;
    }
    let s = TestServer::start().await;
    for i in 0..4 {
        s.device(&format!("d{i}")).await;
    }
    db(&s)
        .execute(
            "UPDATE audit SET target = 'somebody-else' WHERE chain = 'default' AND seq = 3",
            [],
        )
        .unwrap();
    let v = verify(&s).await;
    assert_eq!(
        (v["ok"].clone(), v["first_bad"].clone()),
        (json!(false), json!(3)),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_removed_entry_and_a_truncated_tail_are_found() {
    if on_postgres() {
        // Tampers with the embedded file; PostgreSQL's own tests are its.
        eprintln!("skipped on PostgreSQL: reads the embedded store's file");
        return;
    }
    let s = TestServer::start().await;
    for i in 0..5 {
        s.device(&format!("d{i}")).await;
    }
    db(&s)
        .execute("DELETE FROM audit WHERE chain = 'default' AND seq = 2", [])
        .unwrap();
    let v = verify(&s).await;
    assert_eq!(v["first_bad"], 2, "{v}");
    s.stop().await;

    let s = TestServer::start().await;
    for i in 0..5 {
        s.device(&format!("d{i}")).await;
    }
    // Cutting the tail leaves a consistent chain; the checkpoint kept
    // outside the database still tells.
    db(&s)
        .execute("DELETE FROM audit WHERE chain = 'default' AND seq >= 5", [])
        .unwrap();
    let v = verify(&s).await;
    assert_eq!(
        (v["ok"].clone(), v["first_bad"].clone()),
        (json!(false), json!(5)),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_chain_rebuilt_without_the_key_is_found() {
    if on_postgres() {
        // Tampers with the embedded file; PostgreSQL's own tests are its.
        eprintln!("skipped on PostgreSQL: reads the embedded store's file");
        return;
    }
    use hmac::{Hmac, Mac};
    let s = TestServer::start().await;
    for i in 0..3 {
        s.device(&format!("d{i}")).await;
    }
    // Someone with write access to the database rewrites entry 2 and
    // recomputes every MAC after it with a key of their own.
    let c = db(&s);
    c.execute(
        "UPDATE audit SET target = 'forged' WHERE chain = 'default' AND seq = 2",
        [],
    )
    .unwrap();
    let rows: Vec<(i64, i64, String, String, String, String, Vec<u8>)> = c
        .prepare("SELECT seq, ts, actor, action, target, detail, mac FROM audit WHERE chain = 'default' ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = rows[0].6.clone();
    for (seq, ts, actor, action, target, detail, _) in rows.iter().skip(1) {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"attacker").unwrap();
        m.update(&prev);
        for part in [
            "default".as_bytes(),
            &seq.to_be_bytes(),
            &ts.to_be_bytes(),
            actor.as_bytes(),
            action.as_bytes(),
            target.as_bytes(),
            detail.as_bytes(),
        ] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        let mac = m.finalize().into_bytes().to_vec();
        c.execute(
            "UPDATE audit SET mac = ?1 WHERE chain = 'default' AND seq = ?2",
            rusqlite::params![mac, seq],
        )
        .unwrap();
        prev = mac;
    }
    let v = verify(&s).await;
    assert_eq!(v["first_bad"], 2, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn audit_is_per_tenant_and_needs_its_permission() {
    let s = TestServer::start().await;
    s.post("/api/v1/tenants", json!({"id": "t2", "name": "T2"}))
        .send()
        .await
        .unwrap();
    s.post("/api/v1/users", json!({"username": "t2admin", "password": "T2-admin-pass", "tenant": "t2", "roles": ["tenant_admin"]})).send().await.unwrap();
    let t2 = s.login("t2admin", "T2-admin-pass").await;
    s.http
        .post(s.url("/api/v1/devices"))
        .bearer_auth(&t2)
        .json(&json!({"id": "t2-dev"}))
        .send()
        .await
        .unwrap();
    let (_, mine) = s
        .json(
            s.http
                .get(s.url("/api/v1/audit?chain=default"))
                .bearer_auth(&t2),
        )
        .await;
    assert_eq!(
        mine["chain"], "t2",
        "a tenant admin reads only their own chain"
    );
    assert!(mine["value"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["target"] != "admin"));
    assert!(mine["value"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["target"] == "t2-dev"));
    let (_, sys) = s.json(s.get("/api/v1/audit?chain=system")).await;
    assert!(sys["value"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "tenant.create"));
    // A tenant may not take the name of the system chain (its admin would
    // read every tenant's creation and the system's own actions).
    for id in ["system", "SYSTEM"] {
        let r = s
            .post("/api/v1/tenants", json!({"id": id, "name": "Sneaky"}))
            .send()
            .await
            .unwrap();
        let msg = error_of(r, 400, "bad_request").await;
        assert!(msg.contains("id") && msg.contains("reserved"), "{msg}");
    }
    let viewer = s.user("viewer-a", &["viewer"]).await;
    let r = s
        .http
        .get(s.url("/api/v1/audit"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden").await.contains("audit:read"));
    s.stop().await;
}

/// HTTPS with a generated CA: curl verifies the server against the CA and
/// uses the API; a client that does not trust the CA, or speaks plain HTTP
/// to the TLS port, gets nothing.
#[tokio::test]
async fn https_serves_the_api_with_a_generated_certificate() {
    let (certs, _) = tls_certs();
    let dir = certs.path().to_path_buf();
    let s = TestServer::start_with(move |c| {
        c.http.tls_listen = "127.0.0.1:0".into();
        use_certs(c, &dir);
    })
    .await;
    let port = s.handle_ready().https.expect("HTTPS listener").port();
    let ports: Value =
        serde_json::from_slice(&std::fs::read(s.dir.path().join("ports.json")).unwrap()).unwrap();
    assert_eq!(ports["https"], format!("127.0.0.1:{port}"));
    s.device("tls-dev").await;
    // Async: a blocking child would stall the in-process server.
    let curl = |extra: &[&str]| {
        let mut c = tokio::process::Command::new("curl");
        c.args(["-sS", "--max-time", "10"]).args(extra);
        async move { c.output().await.unwrap() }
    };
    let url = format!("https://localhost:{port}/api/v1/devices/tls-dev");
    let ca = certs.path().join("ca.pem");
    let auth = format!("Authorization: Bearer {}", s.token);
    let out = curl(&["--cacert", ca.to_str().unwrap(), "-H", &auth, &url]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "tls-dev");

    // Without the CA the certificate is refused by the client: curl's
    // exit code 60 is "peer certificate cannot be authenticated".
    let out = curl(&["-H", &auth, &url]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(60), "{err}");
    assert!(err.contains("certificate"), "{err}");
    // A certificate for another name is refused too (exit 60, the name
    // does not match), even with the CA trusted.
    let other = format!("https://127.0.0.2:{port}/api/v1/devices/tls-dev");
    let out = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("wrong.example:{port}:127.0.0.1"),
        "-H",
        &auth,
        &other.replace("127.0.0.2", "wrong.example"),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the TLS port gets no HTTP answer: the TLS alert the
    // server sends is no HTTP response (curl: 1 "HTTP/0.9 when not
    // allowed"), or the connection just ends (52 / 56).
    let out = curl(&[
        "-H",
        &auth,
        &format!("http://127.0.0.1:{port}/api/v1/devices/tls-dev"),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1) | Some(52) | Some(56))
            && (err.contains("HTTP/0.9")
                || err.contains("Empty reply")
                || err.contains("Recv failure")),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{:?}", out);
    s.stop().await;
}

/// The secret box: write-only values with masked previews, per tenant,
/// encrypted with a key outside the database (a wrong key cannot read).
#[tokio::test]
async fn secrets_are_write_only_and_encrypted_at_rest() {
    if on_postgres() {
        // Tampers with the embedded file; PostgreSQL's own tests are its.
        eprintln!("skipped on PostgreSQL: reads the embedded store's file");
        return;
    }
    let s = TestServer::start().await;
    let value = "whsec_abcdefghijklmnop-42";
    let r = s
        .http
        .put(s.url("/api/v1/secrets/webhook"))
        .bearer_auth(&s.token)
        .json(&json!({"value": value}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["preview"], "wh…42", "{v}");
    let (_, list) = s.json(s.get("/api/v1/secrets")).await;
    assert_eq!(list["value"][0]["name"], "webhook");
    assert!(!list.to_string().contains(value));
    let (_, audit) = s.json(s.get("/api/v1/audit?limit=1000")).await;
    assert!(!audit.to_string().contains(value));
    assert!(audit.to_string().contains("secret.put"));

    // Another tenant sees nothing; a viewer may not touch secrets.
    s.post("/api/v1/tenants", json!({"id": "t2", "name": "T2"}))
        .send()
        .await
        .unwrap();
    let (_, other) = s.json(s.get("/api/v1/secrets?tenant=t2")).await;
    assert_eq!(other["value"], json!([]));
    let viewer = s.user("vic", &["viewer"]).await;
    let r = s
        .http
        .get(s.url("/api/v1/secrets"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden")
        .await
        .contains("secrets:admin"));
    let r = s
        .http
        .put(s.url("/api/v1/secrets/empty"))
        .bearer_auth(&s.token)
        .json(&json!({"value": ""}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("value"));

    // The key lives beside the database, not in it; the same data read
    // with another key is refused, not garbled.
    assert!(s.dir.path().join("secrets.key").exists());
    let s = s.restart().await;
    let (_, list) = s.json(s.get("/api/v1/secrets")).await;
    assert_eq!(
        list["value"][0]["preview"], "wh…42",
        "the key file persists"
    );
    let db = std::fs::read(s.dir.path().join("twinhub.db")).unwrap();
    assert!(!db.windows(value.len()).any(|w| w == value.as_bytes()));
    let s = s
        .restart_with(|c| c.secrets.key = Some("a-different-key".into()))
        .await;
    let (_, list) = s.json(s.get("/api/v1/secrets")).await;
    assert_eq!(list["value"][0]["preview"], "(undecryptable)");
    s.stop().await;
}

/// A PATCH and its audit entry are one commit: a failed commit leaves
/// neither the change nor the entry, and the chain still verifies.
#[tokio::test]
async fn a_patch_and_its_audit_entry_commit_together() {
    use twinhub_server::store::health::Faults;
    let s = TestServer::start().await;
    crate::graph::load_plant(&s).await;
    crate::graph::reactor(&s, "r1").await;
    let patch = json!([{"op": "add", "path": "/setpoint", "value": 360.5}]);
    let (st, v) = s.json(s.patch("/api/v1/twins/r1", patch.clone())).await;
    assert_eq!(st, 200, "{v}");
    let entries = audit_entries(&s).await;
    let last = entries
        .iter()
        .rfind(|e| e["action"] == "twin.patch")
        .unwrap();
    assert_eq!(last["target"], "r1");
    assert_eq!(last["detail"]["patch"], patch, "{last}");
    let before = entries.len();
    Faults::set(&s.store().faults().commit, true);
    let r = s
        .patch(
            "/api/v1/twins/r1",
            json!([{"op": "replace", "path": "/setpoint", "value": 999.0}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    Faults::set(&s.store().faults().commit, false);
    let (_, twin) = s.json(s.get("/api/v1/twins/r1")).await;
    assert_eq!(twin["setpoint"], 360.5, "the failed change is not applied");
    assert_eq!(audit_entries(&s).await.len(), before, "and not audited");
    assert_eq!(verify(&s).await["ok"], true);
    let (st, _) = s
        .json(s.patch(
            "/api/v1/twins/r1",
            json!([{"op": "replace", "path": "/setpoint", "value": 361.0}]),
        ))
        .await;
    assert_eq!(st, 200);
    assert_eq!(audit_entries(&s).await.len(), before + 1);
    assert_eq!(verify(&s).await["ok"], true);
    s.stop().await;
}
