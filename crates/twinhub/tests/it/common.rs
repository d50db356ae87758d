//! `TestServer`: a whole twinhub in this process, plus helpers that speak
//! its HTTP API the way clients do.

use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use tempfile::TempDir;
use twinhub_server::clock::{OffsetClock, SharedClock};
use twinhub_server::config::Config;
use twinhub_server::server::ServerHandle;

pub const ADMIN_PASSWORD: &str = "test-admin-pass-1";

pub struct TestServer {
    pub base: String,
    pub http: Client,
    pub dir: Arc<TempDir>,
    pub clock: Arc<OffsetClock>,
    pub token: String,
    pub config: Config,
    handle: Option<ServerHandle>,
    /// The PostgreSQL schema of a run on PostgreSQL, shared by restarts
    /// and dropped with the last of them.
    schema: Option<Arc<PgSchema>>,
}

/// The suite runs on PostgreSQL (`TWINHUB_TEST_STORE_URL`).
pub fn on_postgres() -> bool {
    std::env::var("TWINHUB_TEST_STORE_URL").is_ok_and(|u| !u.is_empty())
}

struct PgSchema {
    url: String,
    name: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = twinhub_server::store::pg::drop_schema(&self.url, &self.name);
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.data_dir = dir.to_path_buf();
    c.http.listen = "127.0.0.1:0".into();
    c.mqtt.listen = "127.0.0.1:0".into();
    c.admin_password = Some(ADMIN_PASSWORD.into());
    // The cheapest argon2 cost: tests log in a lot.
    c.auth.argon2_memory_kib = 8;
    c.auth.argon2_iterations = 1;
    c.log.level = "warn".into();
    // `TWINHUB_TEST_STORE_URL=postgres://…` runs the suite's servers on
    // PostgreSQL, each in a schema named after its data directory.
    if let Ok(url) = std::env::var("TWINHUB_TEST_STORE_URL") {
        c.store.url = url;
        c.store.schema = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default()
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect();
    }
    c
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_in(Arc::new(tempfile::tempdir().unwrap()), f).await
    }

    /// A server on an existing data directory (one a CLI command
    /// prepared), configured by `f`.
    pub async fn start_in(dir: Arc<TempDir>, f: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config(dir.path());
        f(&mut config);
        let schema = (!config.store.url.is_empty()).then(|| {
            Arc::new(PgSchema {
                url: config.store.url.clone(),
                name: config.store.schema.clone(),
            })
        });
        TestServer::boot(dir, config, Arc::new(OffsetClock::default()), schema).await
    }

    async fn boot(
        dir: Arc<TempDir>,
        config: Config,
        clock: Arc<OffsetClock>,
        schema: Option<Arc<PgSchema>>,
    ) -> TestServer {
        let shared: SharedClock = clock.clone();
        let handle = ServerHandle::start(config.clone(), shared)
            .await
            .expect("server starts");
        let base = format!("http://{}", handle.ready.http);
        let http = Client::new();
        let mut s = TestServer {
            base,
            http,
            dir,
            clock,
            token: String::new(),
            config,
            handle: Some(handle),
            schema,
        };
        s.token = s.login("admin", ADMIN_PASSWORD).await;
        s
    }

    /// Graceful stop and a new server on the same data directory.
    pub async fn restart(self) -> TestServer {
        self.restart_with(|_| {}).await
    }

    /// Restart with a changed configuration.
    pub async fn restart_with(self, f: impl FnOnce(&mut Config)) -> TestServer {
        self.offline_with(f, || {}).await
    }

    /// Stops the server, runs `f` on its store (offline maintenance: the
    /// CLI), and starts it again on the same store.
    pub async fn offline(self, f: impl FnOnce()) -> TestServer {
        self.offline_with(|_| {}, f).await
    }

    async fn offline_with(
        mut self,
        tweak: impl FnOnce(&mut Config),
        f: impl FnOnce(),
    ) -> TestServer {
        self.stop_server().await;
        f();
        let (dir, mut config, clock) = (self.dir.clone(), self.config.clone(), self.clock.clone());
        tweak(&mut config);
        TestServer::boot(dir, config, clock, self.schema.clone()).await
    }

    async fn stop_server(&mut self) {
        self.handle
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
    }

    pub async fn stop(mut self) {
        self.stop_server().await;
    }

    pub fn handle_ready(&self) -> &twinhub_server::server::Ready {
        &self.handle.as_ref().unwrap().ready
    }

    pub fn mqtt(&self) -> std::net::SocketAddr {
        self.handle
            .as_ref()
            .unwrap()
            .ready
            .mqtt
            .expect("MQTT is enabled in tests")
    }

    pub fn store(&self) -> &twinhub_server::store::Store {
        &self.handle.as_ref().unwrap().ready.store
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn login(&self, user: &str, pw: &str) -> String {
        let r = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"username": user, "password": pw}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login of {user}");
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str, body: Value) -> RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.http.delete(self.url(path)).bearer_auth(&self.token)
    }

    pub fn patch(&self, path: &str, body: Value) -> RequestBuilder {
        self.http
            .patch(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
    }

    /// Creates a device and returns its key.
    pub async fn device(&self, id: &str) -> String {
        let r = self
            .post("/api/v1/devices", json!({"id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn send(&self, id: &str, key: &str, body: Value) -> Response {
        self.http
            .post(self.url(&format!("/api/v1/devices/{id}/telemetry")))
            .basic_auth(id, Some(key))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a user with roles and returns a token for them.
    pub async fn user(&self, name: &str, roles: &[&str]) -> String {
        let pw = "User-pass-123";
        let r = self
            .post(
                "/api/v1/users",
                json!({"username": name, "password": pw, "roles": roles}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        self.login(name, pw).await
    }

    pub async fn json(&self, r: RequestBuilder) -> (StatusCode, Value) {
        let r = r.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

/// Asserts the contract's error shape and returns the message.
pub async fn error_of(r: Response, status: u16, code: &str) -> String {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

/// A local CA and server certificate for localhost in a temporary
/// directory, with the config pointing at them.
pub fn tls_certs() -> (tempfile::TempDir, twinhub_server::tls::Generated) {
    let certs = tempfile::tempdir().unwrap();
    let g = twinhub_server::tls::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    twinhub_server::tls::write_generated(certs.path(), &g).unwrap();
    (certs, g)
}

pub fn use_certs(c: &mut Config, dir: &std::path::Path) {
    c.tls.cert = Some(dir.join("server.pem"));
    c.tls.key = Some(dir.join("server-key.pem"));
}

/// `tests/clients/paho_device.py` (Eclipse Paho, unchanged) as a child:
/// it connects over `transport` (`tcp`, or `ws` with `port` the HTTP
/// port), publishes telemetry and answers one `echo` command.
pub struct PahoDevice(tokio::process::Child);

impl PahoDevice {
    pub async fn start(port: &str, id: &str, key: &str, version: &str, transport: &str) -> Self {
        let python = python_with(
            "import paho.mqtt.client as m; m.CallbackAPIVersion.VERSION2",
            &["paho-mqtt>=2,<3"],
        )
        .await;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_device.py");
        let child = tokio::process::Command::new(&python)
            .args([script, port, id, key, version, transport])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python is installed");
        PahoDevice(child)
    }

    /// Waits for the script to end; it fails unless everything went well.
    pub async fn finished(self) {
        let out = self.0.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A Python interpreter on which `check` (a Python statement) succeeds,
/// installing `packages` from PyPI when it does not: the one named by
/// `TWINHUB_TEST_PYTHON` (`.ci/run` prepares it), else `python3` if it
/// already passes, else a virtual environment under the target directory,
/// made the first time (a venv works where PEP 668 forbids a system-wide
/// `pip install`). One install at a time: tests run in parallel.
pub async fn python_with(check: &str, packages: &[&str]) -> String {
    static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let passes = |python: String| {
        let check = check.to_string();
        async move {
            tokio::process::Command::new(&python)
                .args(["-c", &check])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success())
        }
    };
    let _one = INSTALL.lock().await;
    let python = match std::env::var("TWINHUB_TEST_PYTHON") {
        Ok(p) => p,
        Err(_) if passes("python3".into()).await => return "python3".into(),
        Err(_) => {
            let venv = concat!(env!("CARGO_TARGET_TMPDIR"), "/pyenv");
            let python = format!("{venv}/bin/python");
            if !std::path::Path::new(&python).exists() {
                let st = tokio::process::Command::new("python3")
                    .args(["-m", "venv", venv])
                    .status()
                    .await
                    .expect("python3 is installed");
                assert!(st.success(), "python3 -m venv {venv}");
            }
            python
        }
    };
    if !passes(python.clone()).await {
        let st = tokio::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages)
            .status()
            .await
            .unwrap_or_else(|e| panic!("{python}: {e}"));
        assert!(st.success(), "pip install {packages:?} into {python}");
        assert!(passes(python.clone()).await, "{python}: {check}");
    }
    python
}

/// One series of a Prometheus text (`name` or `name{labels}` as printed).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `f` until it is true, for background work (compactor ticks,
/// delivery tasks); fails after 30 s naming `what`.
pub async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What a recorder subscribed on the machine's Mosquitto received:
/// (topic, JSON payload, or null when it is not JSON).
pub type Recorded = Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// A client of the machine's Mosquitto (127.0.0.1:1883) subscribed to
/// `filter` (at QoS 1), recording what arrives; returns once subscribed.
pub async fn mosquitto_recorder(filter: &str) -> (rumqttc::AsyncClient, Recorded) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let id = format!(
        "rec-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    let mut opts = MqttOptions::new(id, "127.0.0.1", 1883);
    opts.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 64);
    let got: Recorded = Default::default();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    sink.lock().unwrap().push((p.topic.clone(), v));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    });
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), ready_rx)
        .await
        .expect("Mosquitto on 127.0.0.1:1883 answers")
        .unwrap();
    (client, got)
}

/// What `flood_until_pushed_back` saw.
pub struct Flood {
    /// Requests acknowledged (200), and of them before `release` ran.
    pub ok: i64,
    pub ok_before_release: i64,
    /// Requests pushed back (503 + Retry-After: 1).
    pub busy: i64,
}

/// 40 concurrent requests of 10 points each from `device` while the store
/// is held; `release` lets it go at the first 503. Every answer is a 200
/// or a well-formed 503.
pub async fn flood_until_pushed_back(
    s: &TestServer,
    device: &str,
    key: &str,
    release: impl FnOnce(),
) -> Flood {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40i64 {
        let (http, url, device, key) = (
            s.http.clone(),
            s.url(&format!("/api/v1/devices/{device}/telemetry")),
            device.to_string(),
            key.to_string(),
        );
        tasks.spawn(async move {
            let body: Vec<Value> = (0..10)
                .map(|j| json!({"ts": 1_700_000_000_000i64 + i * 10 + j, "v": 1}))
                .collect();
            let r = http
                .post(url)
                .basic_auth(&device, Some(&key))
                .json(&body)
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry, r.text().await.unwrap())
        });
    }
    let mut release = Some(release);
    let mut f = Flood {
        ok: 0,
        ok_before_release: 0,
        busy: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let (status, retry, body) = r.unwrap();
        match status {
            200 => {
                f.ok += 1;
                if release.is_some() {
                    f.ok_before_release += 1;
                }
            }
            503 => {
                f.busy += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert!(body.contains("service_unavailable"), "{body}");
                if let Some(r) = release.take() {
                    r();
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    f
}
