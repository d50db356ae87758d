//! Real nodes on one PostgreSQL store (`cluster.nats`): one primary, the
//! others replicas that forward HTTP and MQTT to it. Any node serves any
//! call (read-your-writes across nodes), MQTT messages cross nodes both
//! ways, a rule raises one alarm whichever nodes the events came through,
//! and SIGKILL of a replica and then of the primary under HTTP and MQTT
//! (QoS 1) ingest loses nothing acknowledged: a replica takes the store
//! over and the devices carry on through the nodes left. A primary that
//! lost the store to another node stops.

use crate::crash_loop::{http_writer, mqtt_writer, Acked};
use crate::mqtt::{open5, sub5, Got5};
use crate::postgres::{end_writer_session, pg_url};
use crate::process::{all_points, cmd, device_key, get_json, kill9, login, post_json, Server, PW};
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node of the cluster: its own data directory, the shared store and
/// keys.
fn node(dir: &Path, schema: &str, name: &str, extra: &[String]) -> std::process::Child {
    let _ = std::fs::remove_file(dir.join("ports.json"));
    std::fs::create_dir_all(dir).unwrap();
    let log = |f: &str| std::fs::File::create(dir.parent().unwrap().join(f)).unwrap();
    cmd(dir)
        .args(["serve", "--http-listen", "127.0.0.1:0"])
        .args(extra)
        .env("TWINHUB_ADMIN_PASSWORD", PW)
        .env("TWINHUB_STORE_URL", pg_url())
        .env("TWINHUB_STORE_SCHEMA", schema)
        .env("TWINHUB_CLUSTER_NATS", "nats://127.0.0.1:4222")
        .env("TWINHUB_CLUSTER_NODE_ID", name)
        .env("TWINHUB_SECRETS_KEY", "cluster-test-secrets-key-0123456789")
        .env("TWINHUB_AUDIT_KEY", "cluster-test-audit-key-0123456789")
        .stdout(log(&format!("{name}.out")))
        .stderr(log(&format!("{name}.err")))
        .spawn()
        .unwrap()
}

/// The node's ports.json once `want` holds (a replica's has `role`).
fn ports(dir: &Path, want: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(dir.join("ports.json")) {
            if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                if want(&v) {
                    return v;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no ports.json in {dir:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node started as a replica (its own ports; it forwards to the
/// primary).
fn replica(child: std::process::Child, dir: &Path) -> Server {
    let v = ports(dir, |v| v["role"] == "replica");
    Server {
        child,
        base: format!("http://{}", v["http"].as_str().unwrap()),
        mqtt: v["mqtt"].as_str().unwrap().parse().unwrap(),
    }
}

/// Waits until the node is the primary (its own ports.json, no role), and
/// points `s` at its listeners.
fn promoted(s: &mut Server, dir: &Path) {
    let v = ports(dir, |v| v.get("role").is_none() && v.get("mqtt").is_some());
    s.base = format!("http://{}", v["http"].as_str().unwrap());
    s.mqtt = v["mqtt"].as_str().unwrap().parse().unwrap();
}

/// Waits until `/ready` answers 200 (a replica: once it heard the primary).
pub(crate) async fn until_ready(http: &reqwest::Client, base: &str) {
    let t = Instant::now();
    while status(http, &format!("{base}/ready")).await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(30), "{base} never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster under test: a PostgreSQL schema of its own (dropped with it)
/// and a data directory per node.
pub(crate) struct Cluster {
    schema: String,
    pub(crate) roots: Vec<tempfile::TempDir>,
    dirs: Vec<std::path::PathBuf>,
    /// Flags every node gets.
    pub(crate) args: Vec<String>,
    _drop: DropSchema,
}

impl Cluster {
    pub(crate) fn new(nodes: usize) -> Cluster {
        let schema = format!(
            "cluster_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let roots: Vec<tempfile::TempDir> =
            (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect();
        let dirs = roots.iter().map(|r| r.path().join("data")).collect();
        Cluster {
            _drop: DropSchema(schema.clone()),
            schema,
            roots,
            dirs,
            args: Vec::new(),
        }
    }

    fn start(&self, i: usize, name: &str) -> std::process::Child {
        node(&self.dirs[i], &self.schema, name, &self.args)
    }

    /// Starts node `i` and waits until it is the primary.
    pub(crate) fn primary(&self, i: usize, name: &str) -> Server {
        let mut s = Server {
            child: self.start(i, name),
            base: String::new(),
            mqtt: "127.0.0.1:1".parse().unwrap(),
        };
        promoted(&mut s, &self.dirs[i]);
        s
    }

    /// Starts node `i` while another is the primary.
    pub(crate) fn replica(&self, i: usize, name: &str) -> Server {
        replica(self.start(i, name), &self.dirs[i])
    }
}

async fn status(http: &reqwest::Client, url: &str) -> (u16, Value, Option<String>) {
    let r = http.get(url).send().await.unwrap();
    let st = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|h| h.to_str().unwrap().to_string());
    (st, r.json().await.unwrap_or(Value::Null), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_when_the_primary_dies_and_nothing_acknowledged_is_lost() {
    let cluster = Cluster::new(2);
    let (dir_a, dir_b) = (&cluster.dirs[0], &cluster.dirs[1]);
    let mut a = cluster.primary(0, "node-a");
    let mut b = cluster.replica(1, "node-b");
    let http = reqwest::Client::new();
    until_ready(&http, &b.base).await;
    let (st, v, _) = status(&http, &format!("{}/health", b.base)).await;
    assert_eq!((st, v["role"].as_str()), (200, Some("replica")), "{v}");
    assert_eq!(
        (v["node"].as_str(), v["primary"].as_str()),
        (Some("node-b"), Some("node-a"))
    );
    // Requests through the replica are the primary's answers.
    let (st, v, _) = status(&http, &format!("{}/api/v1/devices", b.base)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );

    let token = login(&a.base, PW).await;
    let mut devices = Vec::new();
    for (id, mqtt) in [("h1", false), ("m1", true)] {
        let key = device_key(&http, &a.base, &token, id).await;
        devices.push((id.to_string(), key, mqtt));
    }
    let acked: Acked = Arc::default();
    let t0 = 1_764_500_000_000i64;
    let run = |s: &Server, from: i64| {
        let mut tasks = Vec::new();
        for (id, key, mqtt) in &devices {
            let (id, key, acked) = (id.clone(), key.clone(), acked.clone());
            let stop = Arc::new(AtomicBool::new(false));
            tasks.push(if *mqtt {
                tokio::spawn(mqtt_writer(s.mqtt, id, key, from, acked, stop))
            } else {
                tokio::spawn(http_writer(s.base.clone(), id, key, from, acked, stop))
            });
        }
        tasks
    };
    // A persistent session (through the replica) subscribes to m1 and goes
    // away; its copies are stored while it is gone.
    {
        let (mut ps, ack) = open5(b.mqtt, "ps1", Some(("admin", PW)), false, Some(3600)).await;
        assert_eq!(ack.code, v5::ConnectReturnCode::Success);
        ps.send5(sub5(1, "devices/m1/telemetry", 1, |_| {}, None))
            .await;
        assert!(matches!(ps.recv5().await, v5::Packet::SubAck(_)));
        ps.send5(v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )))
        .await;
    }
    // Ingest on the primary, then SIGKILL it mid-stream.
    let tasks = run(&a, t0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = Instant::now();
    kill9(&mut a);
    for t in tasks {
        t.await.unwrap();
    }
    let before: usize = acked.lock().unwrap().values().map(|m| m.len()).sum();
    assert!(
        before > 50,
        "the stream ran on the primary ({before} points)"
    );

    // The replica takes over (the test plays the load balancer: /ready).
    promoted(&mut b, dir_b);
    loop {
        if status(&http, &format!("{}/ready", b.base)).await.0 == 200 {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("takeover: ready {:?} after the SIGKILL", killed.elapsed());
    // The persistent session resumes on the new primary with every copy
    // of what m1 had acknowledged.
    let want: Vec<i64> = acked.lock().unwrap()["m1"].keys().copied().collect();
    assert!(want.len() > 10, "m1 published through the old primary");
    let (mut ps, ack) = open5(b.mqtt, "ps1", Some(("admin", PW)), false, Some(3600)).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    assert!(ack.session_present, "the session outlived its node");
    let mut got = std::collections::BTreeSet::new();
    while got.len() < want.len() {
        match ps.recv5_within(Duration::from_secs(10)).await {
            Got5::P(v5::Packet::Publish(m)) => {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                got.insert(v["ts"].as_i64().unwrap());
                ps.send5(v5::Packet::PubAck(v5::PubAck::new(m.pkid, None)))
                    .await;
            }
            Got5::P(_) => {}
            _ => break,
        }
    }
    let missing = want.iter().filter(|t| !got.contains(t)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged m1 messages never reached ps1",
        want.len()
    );
    drop(ps);
    let tasks = run(&b, t0 + 3_600_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The old primary comes back as a replica.
    let mut a = cluster.replica(0, "node-a");
    let (_, v, _) = status(&http, &format!("{}/health", a.base)).await;
    assert_eq!(v["role"], "replica", "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9(&mut b);
    for t in tasks {
        t.await.unwrap();
    }
    let after: usize = acked.lock().unwrap().values().map(|m| m.len()).sum();
    assert!(
        after > before + 20,
        "the devices carried on ({before} → {after})"
    );

    // node-a takes over again; every acknowledged point is there.
    promoted(&mut a, dir_a);
    all_acknowledged_stored(&http, &a.base, &acked).await;
    drop(a);
}

/// Every point a writer had acknowledged is in history with its value.
async fn all_acknowledged_stored(http: &reqwest::Client, base: &str, acked: &Acked) {
    let token = login(base, PW).await;
    for (id, want) in acked.lock().unwrap().clone() {
        let (from, to) = (
            *want.keys().next().unwrap(),
            want.keys().last().unwrap() + 1,
        );
        let stored: BTreeMap<i64, i64> =
            all_points(http, base, &token, &format!("{id}/telemetry/v"), from, to)
                .await
                .iter()
                .map(|p| (p["ts"].as_i64().unwrap(), p["value"].as_i64().unwrap()))
                .collect();
        let lost = want
            .iter()
            .filter(|(t, v)| stored.get(t) != Some(v))
            .count();
        assert_eq!(
            lost,
            0,
            "{id}: {lost} of {} acknowledged points lost",
            want.len()
        );
    }
}

/// Waits (up to 20 s) for a node to exit with an error; its stderr.
async fn stops_with_an_error(node: &mut Server, log: &Path) -> String {
    let t = Instant::now();
    let exit = loop {
        if let Some(st) = node.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the node kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!exit.success(), "the node stopped with an error");
    std::fs::read_to_string(log).unwrap()
}

/// The test's schema goes with it.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let _ = twinhub_server::store::pg::drop_schema(&pg_url(), &self.0);
    }
}

/// A primary cut off from PostgreSQL long enough for a replica to take
/// the store over stops at its next write instead of carrying on beside
/// the new primary: one writer, always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_lost_the_store_to_another_node_stops() {
    let cluster = Cluster::new(2);
    let dir_b = &cluster.dirs[1];
    let mut a = cluster.primary(0, "node-a");
    let token = login(&a.base, PW).await;
    let http = reqwest::Client::new();
    let mut b = cluster.replica(1, "node-b");
    // PostgreSQL ends node-a's writer session (a network cut looks the
    // same); node-b, trying every 500 ms, takes the lock. Should node-a
    // win the race back first, it is still the only writer: cut again.
    let cut = Instant::now();
    loop {
        end_writer_session(&cluster.schema);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let v = std::fs::read(dir_b.join("ports.json")).unwrap_or_default();
        if !String::from_utf8_lossy(&v).contains("replica") {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "node-b never took over"
        );
    }
    promoted(&mut b, dir_b);
    // node-a's next write finds the lock taken: refused, and node-a stops.
    let r = http
        .post(format!("{}/api/v1/devices", a.base))
        .bearer_auth(&token)
        .json(&json!({"id": "late"}))
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| !r.status().is_success()),
        "a write acknowledged by a node that is no longer the primary"
    );
    let err = stops_with_an_error(&mut a, &cluster.roots[0].path().join("node-a.err")).await;
    assert!(err.contains("another node is the primary now"), "{err}");
    // node-b serves, with node-a's writes before the cut.
    let token_b = login(&b.base, PW).await;
    let r = http
        .get(format!("{}/api/v1/devices", b.base))
        .bearer_auth(&token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// MQTT over WebSocket through a replica (`/mqtt` on its HTTP port): a
/// Paho device's telemetry reaches the twin, read through the primary,
/// and a command sent through the replica's API reaches the device and
/// its reply comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_works_through_a_replica() {
    let cluster = Cluster::new(2);
    let a = cluster.primary(0, "node-a");
    let b = cluster.replica(1, "node-b");
    let http = reqwest::Client::new();
    until_ready(&http, &b.base).await;
    let token = login(&b.base, PW).await;
    let replica_port = b.base.rsplit(':').next().unwrap().to_string();
    for version in ["4", "5"] {
        let id = format!("ws{version}");
        let key = device_key(&http, &b.base, &token, &id).await;
        let child = crate::common::PahoDevice::start(&replica_port, &id, &key, version, "ws").await;
        let t = Instant::now();
        loop {
            let twin = get_json(&http, &format!("{}/api/v1/twins/{id}", a.base), &token).await;
            if twin["temperature"] == 350.25 {
                assert_eq!(twin["source"], "paho");
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the telemetry sent over WebSocket through the replica never reached the twin: {twin}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let reply = post_json(
            &http,
            &format!("{}/api/v1/devices/{id}/commands/echo?timeout=10s", b.base),
            &token,
            &json!({"x": version}),
        )
        .await;
        assert_eq!(reply, json!({"status": 200, "payload": {"x": version}}));
        child.finished().await;
    }
}

/// HTTPS and MQTTS through a replica: it ends TLS with the node's own
/// certificate and forwards as over plain TCP — curl reads the API, and
/// mosquitto_pub's QoS 1 telemetry is in the twin once acknowledged, with
/// a password or with a device certificate and none (the replica passes
/// the certificate's device id on in a signed header); another device's
/// certificate is refused there as at the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_mqtts_work_through_a_replica() {
    let (certs, g) = crate::common::tls_certs();
    for id in ["certdev", "otherdev"] {
        let (cert, key) = twinhub_server::tls::issue_client(&g.ca_key, id).unwrap();
        std::fs::write(certs.path().join(format!("{id}.pem")), cert).unwrap();
        std::fs::write(certs.path().join(format!("{id}-key.pem")), key).unwrap();
    }
    let mut cluster = Cluster::new(2);
    let pem = |f: &str| certs.path().join(f).to_str().unwrap().to_string();
    cluster.args = [
        "--tls-client-ca",
        &pem("ca.pem"),
        "--tls-cert",
        &pem("server.pem"),
        "--tls-key",
        &pem("server-key.pem"),
        "--http-tls-listen",
        "127.0.0.1:0",
        "--mqtt-tls-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    let a = cluster.primary(0, "node-a");
    let b = cluster.replica(1, "node-b");
    let http = reqwest::Client::new();
    until_ready(&http, &b.base).await;
    let v = ports(&cluster.dirs[1], |v| v["role"] == "replica");
    let port = |k: &str| {
        v[k].as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    let (https, mqtts) = (port("https"), port("mqtts"));
    let token = login(&b.base, PW).await;
    let key = device_key(&http, &b.base, &token, "tlsdev").await;

    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &pem("ca.pem"), "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://localhost:{https}/api/v1/devices/tlsdev"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dev["id"], "tlsdev",
        "the API over HTTPS through the replica"
    );

    let st = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &mqtts, "--cafile", &pem("ca.pem")])
        .args(["-i", "tlsdev", "-u", "tlsdev", "-P", &key, "-q", "1"])
        .args(["-t", "devices/tlsdev/telemetry", "-m", r#"{"v": 7}"#])
        .status()
        .await
        .unwrap();
    assert!(st.success(), "MQTTS through the replica");
    let twin = get_json(&http, &format!("{}/api/v1/twins/tlsdev", a.base), &token).await;
    assert_eq!(twin["v"], 7, "acknowledged over MQTTS, in the twin: {twin}");

    device_key(&http, &b.base, &token, "certdev").await;
    let with_cert = |cert: &str| {
        let mut c = tokio::process::Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &mqtts, "--cafile", &pem("ca.pem")])
            .args(["--cert", &pem(&format!("{cert}.pem"))])
            .args(["--key", &pem(&format!("{cert}-key.pem"))])
            .args([
                "-i",
                "certdev",
                "-q",
                "1",
                "-t",
                "devices/certdev/telemetry",
            ])
            .args(["-m", r#"{"v": 11}"#]);
        c.output()
    };
    let out = with_cert("certdev").await.unwrap();
    assert!(
        out.status.success(),
        "a device certificate through the replica: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let twin = get_json(&http, &format!("{}/api/v1/twins/certdev", a.base), &token).await;
    assert_eq!(twin["v"], 11, "{twin}");
    let out = with_cert("otherdev").await.unwrap();
    assert!(!out.status.success(), "another device's certificate");
}

/// A primary that stops answering but keeps its PostgreSQL session (and
/// so the writer lock) — SIGSTOP here; a hung process or one cut off from
/// NATS looks the same — is fenced: the replica ends its session after
/// `cluster::FENCE` of silence and takes over; woken, the old primary
/// finds another node in its place and stops.
/// Raw frames through a replica: a UDP frame and a TCP frame are
/// acknowledged by the replica's own sockets once the primary stored them
/// (a wrong key is refused there), and a device known by its address
/// (`ingest.frame_sources`, 127.0.0.2 here) is recognised through the
/// relay — the primary sees the device's address, not the replica's
/// (127.0.0.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_work_through_a_replica() {
    use crate::frames::{frame, packed, LAYOUT};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use twinhub_codec::layout::{ack, AckStatus};
    let mut cluster = Cluster::new(2);
    let config = cluster.roots[0].path().join("frames.toml");
    std::fs::write(
        &config,
        "[ingest]\nudp_listen = \"127.0.0.1:0\"\ntcp_listen = \"127.0.0.1:0\"\nframe_sources = { \"127.0.0.2\" = \"bare-1\" }\n",
    )
    .unwrap();
    cluster.args = vec!["--config".into(), config.display().to_string()];
    let a = cluster.primary(0, "node-a");
    let b = cluster.replica(1, "node-b");
    let b_ports = ports(&cluster.dirs[1], |v| v["role"] == "replica");
    let (udp, tcp) = (
        b_ports["udp"]
            .as_str()
            .expect("the replica's UDP socket")
            .to_string(),
        b_ports["tcp"]
            .as_str()
            .expect("the replica's TCP listener")
            .to_string(),
    );
    let http = reqwest::Client::new();
    until_ready(&http, &b.base).await;
    let token = login(&b.base, PW).await;
    let key = device_key(&http, &b.base, &token, "frm-1").await;
    device_key(&http, &b.base, &token, "bare-1").await;
    for id in ["frm-1", "bare-1"] {
        let r = http
            .put(format!("{}/api/v1/devices/{id}/layout", b.base))
            .bearer_auth(&token)
            .body(LAYOUT)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let temperatures = |twin: &'static str| {
        let (http, base, token) = (http.clone(), a.base.clone(), token.clone());
        async move {
            let url = format!("{base}/api/v1/twins/{twin}/telemetry/temperature?from=0");
            let v = get_json(&http, &url, &token).await;
            v["points"]
                .as_array()
                .map(|p| p.iter().map(|p| p["value"].as_f64().unwrap()).collect())
                .unwrap_or_else(Vec::<f64>::new)
        }
    };

    // UDP: acknowledged from the replica's address once stored.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(&udp).await.unwrap();
    let exchange = |f: Vec<u8>| {
        let sock = &sock;
        async move {
            let mut buf = [0u8; 64];
            for _ in 0..20 {
                sock.send(&f).await.unwrap();
                let got = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await;
                if let Ok(Ok(n)) = got {
                    return buf[..n].to_vec();
                }
            }
            panic!("no acknowledgement through the replica");
        }
    };
    let got = exchange(frame(
        "frm-1",
        &key,
        1,
        &packed(2150, 600, false, 1_700_000_000),
    ))
    .await;
    assert_eq!(got, ack(1, AckStatus::Stored));
    assert_eq!(
        temperatures("frm-1").await,
        vec![21.5],
        "stored when acknowledged"
    );
    let got = exchange(frame(
        "frm-1",
        "wrong-key",
        2,
        &packed(1, 1, false, 1_700_000_001),
    ))
    .await;
    assert_eq!(got, ack(2, AckStatus::Unauthorized));

    // TCP: the same, on a relayed connection.
    let mut conn = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    let f = frame("frm-1", &key, 7, &packed(2275, 600, false, 1_700_000_060));
    let mut framed = (f.len() as u16).to_be_bytes().to_vec();
    framed.extend(f);
    conn.write_all(&framed).await.unwrap();
    let mut answer = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut answer))
        .await
        .expect("an acknowledgement over TCP through the replica")
        .unwrap();
    assert_eq!(answer, ack(7, AckStatus::Stored));
    assert_eq!(temperatures("frm-1").await, vec![21.5, 22.75]);

    // A device known by its address: the primary sees 127.0.0.2.
    let bare = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let t = Instant::now();
    while temperatures("bare-1").await.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the bare payload relayed from 127.0.0.2 was never stored"
        );
        bare.send_to(&packed(1999, 600, false, 1_700_000_000), &udp)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!((temperatures("bare-1").await[0] - 19.99).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_primary_is_fenced_and_replaced() {
    let cluster = Cluster::new(2);
    let dir_b = &cluster.dirs[1];
    let mut a = cluster.primary(0, "node-a");
    let http = reqwest::Client::new();
    let mut b = cluster.replica(1, "node-b");
    until_ready(&http, &b.base).await;
    let token = login(&b.base, PW).await;
    let device = |base: &str, token: &str, id: &str| {
        http.post(format!("{base}/api/v1/devices"))
            .bearer_auth(token)
            .json(&json!({ "id": id }))
            .send()
    };
    assert_eq!(
        device(&b.base, &token, "before").await.unwrap().status(),
        201
    );
    let signal = |sig: &str, pid: u32| {
        let st = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    signal("-STOP", a.child.id());
    let stopped = Instant::now();
    promoted(&mut b, dir_b);
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "took over after {took:?} (fence after 5 s of silence)"
    );
    let token_b = login(&b.base, PW).await;
    let v = get_json(
        &http,
        &format!("{}/api/v1/devices/before", b.base),
        &token_b,
    )
    .await;
    assert_eq!(v["id"], "before", "{v}");
    assert_eq!(
        device(&b.base, &token_b, "after").await.unwrap().status(),
        201
    );
    let err_b = std::fs::read_to_string(cluster.roots[1].path().join("node-b.err")).unwrap();
    assert!(err_b.contains("ended its PostgreSQL session"), "{err_b}");
    // Woken, node-a writes nothing and stops.
    signal("-CONT", a.child.id());
    let err = stops_with_an_error(&mut a, &cluster.roots[0].path().join("node-a.err")).await;
    assert!(err.contains("another node"), "{err}");
    // node-b carries on as the only primary.
    let v = get_json(&http, &format!("{}/api/v1/devices/after", b.base), &token_b).await;
    assert_eq!(v["id"], "after", "{v}");
    let (st, health, _) = status(&http, &format!("{}/health", b.base)).await;
    assert_eq!(st, 200);
    assert_ne!(health["role"], "replica", "{health}");
}

/// Three nodes: any node serves any call, MQTT crosses nodes both ways, a
/// rule raises one alarm for events that came through all of them, and
/// SIGKILL of a replica, then of the primary, under HTTP and MQTT ingest
/// through every node loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_any_call_and_survive_losing_two() {
    use crate::mqtt::pub5;
    let cluster = Cluster::new(3);
    let dirs = &cluster.dirs;
    let mut a = cluster.primary(0, "node-a");
    let mut b = cluster.replica(1, "node-b");
    let mut c = cluster.replica(2, "node-c");
    let http = reqwest::Client::new();
    until_ready(&http, &b.base).await;
    until_ready(&http, &c.base).await;

    // Read-your-writes across nodes: created through one, read through
    // the others at once.
    let token = login(&b.base, PW).await;
    let mut keys = BTreeMap::new();
    for (id, via) in [("d1", &b), ("d2", &c), ("h1", &a), ("h2", &b), ("m1", &c)] {
        keys.insert(id, device_key(&http, &via.base, &token, id).await);
        for other in [&a, &b, &c] {
            let r = http
                .get(format!("{}/api/v1/devices/{id}", other.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "{id} created through one node, read through another"
            );
        }
    }

    // The event stream through a replica shows what came in through
    // another node.
    let mut sse = http
        .get(format!("{}/api/v1/events?types=telemetry&twin=h1", c.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let r = http
        .post(format!("{}/api/v1/devices/h1/telemetry", a.base))
        .basic_auth("h1", Some(&keys["h1"]))
        .json(&json!({"ts": 1_764_400_000_000i64, "v": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    while !seen.contains("\"v\":42") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
            .await
            .expect("the event reached the stream through the replica")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(sse);

    // MQTT across nodes, both ways: a subscriber on one node gets what a
    // device publishes through another.
    for (sub_via, pub_via, dev) in [(&c, &b, "d1"), (&b, &c, "d2")] {
        let (mut sub, ack) = open5(
            sub_via.mqtt,
            &format!("watch-{dev}"),
            Some(("admin", PW)),
            true,
            None,
        )
        .await;
        assert_eq!(ack.code, v5::ConnectReturnCode::Success);
        sub.send5(sub5(
            1,
            &format!("devices/{dev}/telemetry"),
            1,
            |_| {},
            None,
        ))
        .await;
        assert!(matches!(sub.recv5().await, v5::Packet::SubAck(_)));
        let key = &keys[dev];
        let (mut p, ack) = open5(pub_via.mqtt, dev, Some((dev, key)), true, None).await;
        assert_eq!(ack.code, v5::ConnectReturnCode::Success);
        p.send5(pub5(
            &format!("devices/{dev}/telemetry"),
            1,
            1,
            br#"{"temperature": 300}"#,
            None,
        ))
        .await;
        assert!(matches!(p.recv5().await, v5::Packet::PubAck(_)));
        let got = loop {
            match sub.recv5_within(Duration::from_secs(10)).await {
                Got5::P(v5::Packet::Publish(m)) => break m,
                Got5::P(_) => continue,
                _ => panic!("{dev}: nothing crossed from one node to the other"),
            }
        };
        assert_eq!(got.topic, format!("devices/{dev}/telemetry").as_bytes());
    }

    // A device disabled through one node is refused through every other
    // at once (there is one registry: the primary's).
    let r = http
        .patch(format!("{}/api/v1/devices/d2", a.base))
        .bearer_auth(&token)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{}/api/v1/devices/d2/telemetry", b.base))
        .basic_auth("d2", Some(&keys["d2"]))
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 401 || r.status() == 403, "{}", r.status());
    let (_, ack) = open5(c.mqtt, "d2", Some(("d2", &keys["d2"])), true, None).await;
    assert_ne!(
        ack.code,
        v5::ConnectReturnCode::Success,
        "a disabled device connected"
    );

    // One alarm for events that came through every node.
    let r = http
        .post(format!("{}/api/v1/rules", c.base))
        .bearer_auth(&token)
        .json(
            &json!({"id": "hot", "name": "Too hot", "select": {"twin": "d1"},
                      "condition": "temperature > 375",
                      "alarm": {"type": "HighTemperature", "severity": "major"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut sends = Vec::new();
    for i in 0..30i64 {
        let via = [&a, &b, &c][i as usize % 3].base.clone();
        let (http, key) = (http.clone(), keys["d1"].clone());
        sends.push(tokio::spawn(async move {
            let r = http
                .post(format!("{via}/api/v1/devices/d1/telemetry"))
                .basic_auth("d1", Some(key))
                .json(&json!({"ts": 1_764_500_000_000i64 + i, "temperature": 380}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    let t = Instant::now();
    loop {
        let v = get_json(
            &http,
            &format!("{}/api/v1/alarms?originator=d1", b.base),
            &token,
        )
        .await;
        let alarms = v["value"].as_array().unwrap();
        assert!(alarms.len() <= 1, "one alarm, not one per node: {v}");
        if alarms.len() == 1 && alarms[0]["count"] == 30 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGKILL of a replica, then of the primary, under ingest through all
    // three; the devices move to the nodes left.
    let acked: Acked = Arc::default();
    let t0 = 1_764_600_000_000i64;
    let stop = Arc::new(AtomicBool::new(false));
    let spawn_writers = |nodes: &[&Server], from: i64| {
        let mut tasks = Vec::new();
        for (i, (id, mqtt)) in [("h1", false), ("h2", false), ("m1", true)]
            .iter()
            .enumerate()
        {
            let s = nodes[i % nodes.len()];
            let (id, key, acked, stop) = (
                id.to_string(),
                keys[id].clone(),
                acked.clone(),
                stop.clone(),
            );
            tasks.push(if *mqtt {
                tokio::spawn(mqtt_writer(s.mqtt, id, key, from, acked, stop))
            } else {
                tokio::spawn(http_writer(s.base.clone(), id, key, from, acked, stop))
            });
        }
        tasks
    };
    let total = |acked: &Acked| -> usize { acked.lock().unwrap().values().map(|m| m.len()).sum() };
    // Writers through b (a replica) stop when it dies; the one through c
    // goes on until the primary dies.
    let tasks = spawn_writers(&[&b, &c, &b], t0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    kill9(&mut b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_primary = total(&acked);
    assert!(
        before_primary > 30,
        "ingest ran through the replicas ({before_primary})"
    );
    kill9(&mut a);
    for t in tasks {
        t.await.unwrap();
    }
    promoted(&mut c, &dirs[2]);
    until_ready(&http, &c.base).await;
    let tasks = spawn_writers(&[&c], t0 + 3_600_000);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let after = total(&acked);
    assert!(
        after > before_primary + 30,
        "the devices carried on through node-c"
    );

    // Every acknowledged point is in the store.
    all_acknowledged_stored(&http, &c.base, &acked).await;
    kill9(&mut c);
}
