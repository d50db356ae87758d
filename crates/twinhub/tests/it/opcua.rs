//! The OPC UA connector against a real OPC UA server: `twinhub
//! opcua-sim` (the `async-opcua` server with a simulated reactor address
//! space) as a child process, so it can be killed and started again.

use crate::common::*;
use crate::process::{KillOnDrop, BIN};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;

/// A running simulator: its endpoint, namespace and certificate.
struct Sim {
    _child: KillOnDrop,
    info: Value,
}

impl Sim {
    fn endpoint(&self) -> String {
        self.info["endpoint"].as_str().unwrap().to_string()
    }

    fn port(&self) -> u16 {
        let e = self.endpoint();
        e.trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn sim(pki: &Path, listen: &str, extra: &[&str]) -> Sim {
    let mut c = std::process::Command::new(BIN);
    c.args(["opcua-sim", "--listen", listen, "--interval-ms", "200"])
        .args(["--time-offset-s", "-3600", "--pki-dir"])
        .arg(pki)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    Sim {
        _child: KillOnDrop(child),
        info,
    }
}

const MODEL: &str = "dtmi:test:opcua:Reactor;1";

async fn reactor_twin(s: &TestServer, id: &str) {
    let model = json!([{"@context": "dtmi:dtdl:context;3", "@id": MODEL, "@type": "Interface",
        "contents": [
            {"@type": "Telemetry", "name": "temperature", "schema": "double"},
            {"@type": "Telemetry", "name": "probe", "schema": "double"},
            {"@type": "Telemetry", "name": "running", "schema": "boolean"},
            {"@type": "Telemetry", "name": "mode", "schema": "string"},
            {"@type": "Property", "name": "setpoint", "schema": "double", "writable": true},
            {"@type": "Property", "name": "level", "schema": "integer", "writable": true}]}]);
    let (st, v) = s.json(s.post("/api/v1/models", model)).await;
    assert!(st == 201 || st == 409, "{v}");
    let r = s
        .http
        .put(s.url(&format!("/api/v1/twins/{id}")))
        .bearer_auth(&s.token)
        .json(&json!({"$metadata": {"$model": MODEL}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

fn nodes(ns: u64, twin: &str) -> Value {
    let n = |tag: &str| format!("ns={ns};s=R1.{tag}");
    json!([
        {"node": n("Temperature"), "twin": twin, "property": "temperature"},
        {"node": n("Probe"), "twin": twin, "property": "probe"},
        {"node": n("Running"), "twin": twin, "property": "running"},
        {"node": n("Mode"), "twin": twin, "property": "mode"},
        {"node": n("Setpoint"), "twin": twin, "property": "setpoint", "mode": "read_write"},
        {"node": n("Level"), "twin": twin, "property": "level", "mode": "read_write"},
    ])
}

async fn status(s: &TestServer, id: &str) -> Value {
    let (st, v) = s.json(s.get(&format!("/api/v1/connectors/{id}"))).await;
    assert_eq!(st, 200, "{v}");
    v["status"].clone()
}

async fn points(s: &TestServer, twin: &str, name: &str) -> Vec<Value> {
    let (_, v) = s
        .json(s.get(&format!(
            "/api/v1/twins/{twin}/telemetry/{name}?from=0&limit=10000"
        )))
        .await;
    v["points"].as_array().cloned().unwrap_or_default()
}

async fn connected(s: &TestServer, id: &str) {
    until(&format!("connector {id} connected with values"), || async {
        let st = status(s, id).await;
        st["state"] == "connected" && st["points_in"].as_u64().unwrap_or(0) > 0
    })
    .await;
}

#[tokio::test]
async fn opcua_values_become_telemetry_and_property_writes_reach_the_plc() {
    let pki = tempfile::tempdir().unwrap();
    let plc = sim(pki.path(), "127.0.0.1:0", &[]);
    let ns = plc.info["namespace"].as_u64().unwrap();
    let s = TestServer::start().await;
    reactor_twin(&s, "r1").await;

    // Refusals name the field.
    let bad = |nodes: Value| json!({"id": "plc", "kind": "opcua", "endpoint": plc.endpoint(), "nodes": nodes});
    let r = s
        .post(
            "/api/v1/connectors",
            bad(json!([{"node": "ns=2;s=X", "twin": "ghost", "property": "t"}])),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("nodes[0].twin"));
    let r = s
        .post(
            "/api/v1/connectors",
            bad(json!([{"node": "R1.Temperature", "twin": "r1", "property": "t"}])),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .contains("nodes[0].node"));
    let r = s
        .post(
            "/api/v1/connectors",
            json!({"id": "x", "kind": "modbus", "endpoint": "tcp://x"}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("kind"));

    let (st, v) = s
        .json(s.post(
            "/api/v1/connectors",
            json!({"id": "plc", "kind": "opcua", "endpoint": plc.endpoint(),
                   "publishing_interval": "200ms", "nodes": nodes(ns, "r1")}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    connected(&s, "plc").await;
    assert_eq!(status(&s, "plc").await["monitored_items"], 6);

    // Values with the source timestamp (the simulator's clock is an hour
    // behind) and the status code as quality.
    until("probe values of every quality", || async {
        let p = points(&s, "r1", "probe").await;
        let q = |x: &str| {
            p.iter()
                .any(|v| v["quality"].as_str().unwrap_or("good") == x)
        };
        q("good") && q("uncertain") && q("bad")
    })
    .await;
    let t = points(&s, "r1", "temperature").await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = t.last().unwrap()["ts"].as_f64().unwrap() as i64;
    assert!(
        (ts - (now_ms - 3_600_000)).abs() < 60_000,
        "ts {ts}, now {now_ms}"
    );
    let v = t.last().unwrap()["value"].as_f64().unwrap();
    assert!((360.0..380.0).contains(&v), "{v}");
    assert_eq!(points(&s, "r1", "mode").await[0]["value"], "auto");
    assert_eq!(points(&s, "r1", "running").await[0]["value"], true);

    // Browse: Objects → Plant → Reactor1 → its variables.
    let (st, top) = s.json(s.get("/api/v1/connectors/plc/browse")).await;
    assert_eq!(st, 200, "{top}");
    let child = |v: &Value, name: &str| -> Value {
        v["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["display_name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {v}"))
    };
    let plant = child(&top, "Plant");
    let browse = |node: &Value| {
        s.json(
            s.get("/api/v1/connectors/plc/browse")
                .query(&[("node", node.as_str().unwrap())]),
        )
    };
    let (_, level1) = browse(&plant["node"]).await;
    let r1 = child(&level1, "Reactor1");
    let (_, vars) = browse(&r1["node"]).await;
    let sp = child(&vars, "Setpoint");
    assert_eq!(sp["node"], format!("ns={ns};s=R1.Setpoint"));
    assert_eq!(sp["class"], "Variable");
    let r = s
        .get("/api/v1/connectors/plc/browse?node=nonsense")
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("node"));

    // A twin property write goes to the PLC (Double and Int32 nodes); the
    // PLC's new value comes back as telemetry.
    let r = s
        .patch(
            "/api/v1/twins/r1",
            json!([{"op": "add", "path": "/setpoint", "value": 372.5},
                   {"op": "add", "path": "/level", "value": 75}]),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    until("the written setpoint read back", || async {
        let p = points(&s, "r1", "setpoint").await;
        p.last().is_some_and(|v| v["value"] == 372.5)
    })
    .await;
    until("the written level read back", || async {
        let p = points(&s, "r1", "level").await;
        p.last().is_some_and(|v| v["value"] == 75.0)
    })
    .await;
    assert_eq!(status(&s, "plc").await["writes"], 2);

    // The PLC goes away: the connector says so, and carries on when the
    // PLC is back on the same address.
    let port = plc.port();
    drop(plc);
    until("the connector notices", || async {
        status(&s, "plc").await["state"] != "connected"
    })
    .await;
    let before = status(&s, "plc").await["points_in"].as_u64().unwrap();
    let plc = sim(pki.path(), &format!("127.0.0.1:{port}"), &[]);
    until("values again after the PLC restarted", || async {
        let st = status(&s, "plc").await;
        st["state"] == "connected" && st["points_in"].as_u64().unwrap() > before + 10
    })
    .await;
    let m = s.metrics().await;
    let pts = metric_value(
        &m,
        "twinhub_connector_points_total{tenant=\"default\",connector=\"plc\"}",
    )
    .unwrap_or_else(|| panic!("{m}"));
    assert!(pts > before as f64);
    assert_eq!(
        metric_value(
            &m,
            "twinhub_connector_connected{tenant=\"default\",connector=\"plc\"}"
        ),
        Some(1.0)
    );

    // The definition survives a restart of twinhub, and runs again.
    let s = s.restart().await;
    connected(&s, "plc").await;
    let (_, list) = s.json(s.get("/api/v1/connectors")).await;
    assert_eq!(list["value"][0]["id"], "plc");
    assert_eq!(list["value"][0]["nodes"].as_array().unwrap().len(), 6);

    // Disabled: it lets go of the server; deleted: gone.
    let mut def = list["value"][0].clone();
    for k in ["status", "client_certificate", "created_at", "updated_at"] {
        def.as_object_mut().unwrap().remove(k);
    }
    def["enabled"] = json!(false);
    let r = s
        .http
        .put(s.url("/api/v1/connectors/plc"))
        .bearer_auth(&s.token)
        .json(&def)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(status(&s, "plc").await["state"], "disabled");
    let r = s.delete("/api/v1/connectors/plc").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.get("/api/v1/connectors/plc").send().await.unwrap();
    assert_eq!(r.status(), 404);
    drop(plc);
    s.stop().await;
}

/// Basic256Sha256 SignAndEncrypt with a user and password: the server's
/// certificate must be in the trust list, the connector's in the
/// server's, and the password comes from the secret box.
#[tokio::test]
async fn opcua_secure_sessions_need_trust_both_ways_and_the_right_password() {
    let pki = tempfile::tempdir().unwrap();
    let plc = sim(
        pki.path(),
        "127.0.0.1:0",
        &[
            "--user",
            "operator",
            "--password",
            "plc-pass-1",
            "--strict-clients",
        ],
    );
    let ns = plc.info["namespace"].as_u64().unwrap();
    let s = TestServer::start().await;
    reactor_twin(&s, "r1").await;
    let secret = |v: &str| {
        s.http
            .put(s.url("/api/v1/secrets/plc-pw"))
            .bearer_auth(&s.token)
            .json(&json!({"value": v}))
            .send()
    };
    assert!(secret("wrong-pass").await.unwrap().status().is_success());
    let def = |certs: Vec<Value>| {
        json!({"kind": "opcua", "endpoint": plc.endpoint(),
            "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"},
            "auth": {"user": "operator", "password_secret": "plc-pw"},
            "trust": {"certificates": certs},
            "publishing_interval": "200ms",
            "nodes": [{"node": format!("ns={ns};s=R1.Temperature"), "twin": "r1", "property": "temperature"}]})
    };
    let put = |v: Value| {
        s.http
            .put(s.url("/api/v1/connectors/secure"))
            .bearer_auth(&s.token)
            .json(&v)
            .send()
    };
    // A secret that does not exist is named.
    let mut missing = def(vec![]);
    missing["auth"]["password_secret"] = json!("nope");
    let r = put(missing).await.unwrap();
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("auth.password_secret"));

    // Not trusting the server: refused, and said so.
    assert_eq!(put(def(vec![])).await.unwrap().status(), 201);
    until("the untrusted server named", || async {
        let st = status(&s, "secure").await;
        st["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("trust"))
    })
    .await;
    assert_ne!(status(&s, "secure").await["state"], "connected");

    // Trust the server; the server trusts the connector's certificate
    // (shown by the API); the password is still wrong.
    assert_eq!(
        put(def(vec![plc.info["certificate"].clone()]))
            .await
            .unwrap()
            .status(),
        200
    );
    let cert = until_cert(&s).await;
    let der = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(cert)
            .unwrap()
    };
    let x = opcua::crypto::X509::from_der(&der).unwrap();
    // As an operator does on the PLC: move it from rejected to trusted.
    let name = opcua::crypto::CertificateStore::cert_file_name(&x);
    let trusted = pki.path().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    let _ = std::fs::remove_file(pki.path().join("rejected").join(&name));
    std::fs::write(trusted.join(&name), &der).unwrap();
    until("the wrong password named", || async {
        let st = status(&s, "secure").await;
        st["last_error"]["message"].as_str().is_some_and(|m| {
            m.contains("auth.user") || m.contains("Identity") || m.contains("UserAccess")
        })
    })
    .await;
    assert_ne!(status(&s, "secure").await["state"], "connected");

    // The right password (a rotated secret applies when the connector is
    // saved again).
    assert!(secret("plc-pass-1").await.unwrap().status().is_success());
    assert_eq!(
        put(def(vec![plc.info["certificate"].clone()]))
            .await
            .unwrap()
            .status(),
        200
    );
    connected(&s, "secure").await;
    assert!(!points(&s, "r1", "temperature").await.is_empty());
    // The password never appears in the definition or status.
    let (_, v) = s.json(s.get("/api/v1/connectors/secure")).await;
    assert!(!v.to_string().contains("plc-pass-1"));
    s.stop().await;
}

async fn until_cert(s: &TestServer) -> String {
    for _ in 0..600 {
        let (_, v) = s.json(s.get("/api/v1/connectors/secure")).await;
        if let Some(c) = v["client_certificate"]["der_base64"].as_str() {
            return c.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no client certificate shown");
}

#[tokio::test]
async fn connectors_need_their_permissions() {
    let s = TestServer::start().await;
    let viewer = s.user("watcher", &["viewer"]).await;
    let r = s
        .http
        .get(s.url("/api/v1/connectors"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .post(s.url("/api/v1/connectors"))
        .bearer_auth(&viewer)
        .json(&json!({"kind": "opcua"}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden")
        .await
        .contains("connectors:write"));
    s.stop().await;
}

/// OPC UA has no acknowledgement to withhold: values the store cannot
/// take yet are kept and retried, so a store outage loses none. The
/// simulator's probe counts up by one at every update, so a gap would
/// show.
#[tokio::test]
async fn opcua_values_wait_out_a_store_failure() {
    use twinhub_server::store::health::Faults;
    let pki = tempfile::tempdir().unwrap();
    let plc = sim(pki.path(), "127.0.0.1:0", &[]);
    let ns = plc.info["namespace"].as_u64().unwrap();
    let s = TestServer::start().await;
    reactor_twin(&s, "r1").await;
    let (st, v) = s
        .json(s.post(
            "/api/v1/connectors",
            json!({"id": "plc", "kind": "opcua", "endpoint": plc.endpoint(),
                   "publishing_interval": "200ms",
                   "nodes": [{"node": format!("ns={ns};s=R1.Probe"), "twin": "r1", "property": "probe"}]}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    connected(&s, "plc").await;
    Faults::set(&s.store().faults().commit, true);
    until("the connector retrying", || async {
        status(&s, "plc").await["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("retrying"))
    })
    .await;
    let during = points(&s, "r1", "probe").await.len();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(points(&s, "r1", "probe").await.len(), during);
    Faults::set(&s.store().faults().commit, false);
    until("values after the outage", || async {
        points(&s, "r1", "probe").await.len() > during + 8
    })
    .await;
    let mut seen: Vec<i64> = points(&s, "r1", "probe")
        .await
        .iter()
        .map(|p| p["value"].as_f64().unwrap() as i64)
        .collect();
    seen.sort();
    seen.dedup();
    let (first, last) = (seen[0], *seen.last().unwrap());
    assert_eq!(
        seen.len() as i64,
        last - first + 1,
        "a value went missing: {seen:?}"
    );
    assert_eq!(status(&s, "plc").await["dropped"], 0);
    s.stop().await;
}
