//! The real binary as a child process: crashes, signals, the CLI and the
//! data directory's guarantees.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_twinhub");
pub const PW: &str = "child-admin-pass-1";

pub struct Server {
    pub child: std::process::Child,
    pub base: String,
    pub mqtt: std::net::SocketAddr,
}

/// A failed assertion must not leave a server running behind the test.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped (the demo).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TWINHUB_AUTH_ARGON2_MEMORY_KIB", "8")
        .env("TWINHUB_AUTH_ARGON2_ITERATIONS", "1")
        .env("TWINHUB_DATA_DIR", dir)
        .env("TWINHUB_MQTT_LISTEN", "127.0.0.1:0")
        .env("TWINHUB_MQTT_LISTEN", "127.0.0.1:0")
        .current_dir(dir.parent().unwrap());
    c
}

pub fn start(dir: &Path, with_password: bool) -> Server {
    start_env(dir, with_password, &[])
}

/// `start` with extra environment variables (configuration).
pub fn start_env(dir: &Path, with_password: bool, env: &[(&str, &str)]) -> Server {
    let _ = std::fs::remove_file(dir.join("ports.json"));
    let mut c = cmd(dir);
    c.envs(env.iter().copied());
    c.args([
        "serve",
        "--http-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    if with_password {
        c.env("TWINHUB_ADMIN_PASSWORD", PW);
    }
    let child = c
        .stdout(std::fs::File::create(dir.parent().unwrap().join("stdout.log")).unwrap())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.parent().unwrap().join("stderr.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let t = Instant::now();
    let ports = dir.join("ports.json");
    while !ports.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: Value = serde_json::from_slice(&std::fs::read(ports).unwrap()).unwrap();
    Server {
        child,
        base: format!("http://{}", v["http"].as_str().unwrap()),
        mqtt: v["mqtt"].as_str().unwrap().parse().unwrap(),
    }
}

/// GET a JSON document with a bearer token.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Registers device `id` through the API at `base`; its key.
pub async fn device_key(http: &reqwest::Client, base: &str, token: &str, id: &str) -> String {
    let created = post_json(
        http,
        &format!("{base}/api/v1/devices"),
        token,
        &json!({"id": id}),
    )
    .await;
    created["key"]
        .as_str()
        .unwrap_or_else(|| panic!("device {id} registered: {created}"))
        .to_string()
}

/// POST a JSON body with a bearer token; the answer's JSON.
pub async fn post_json(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> Value {
    http.post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every raw point of a series in `[from, to)`, following `next` pages.
pub async fn all_points(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    series: &str,
    from: i64,
    to: i64,
) -> Vec<Value> {
    let first = format!("{base}/api/v1/twins/{series}?from={from}&to={to}&limit=1000");
    let mut url = first.clone();
    let mut out = Vec::new();
    loop {
        let page: Value = get_json(http, &url, token).await;
        out.extend(page["points"].as_array().expect("points").iter().cloned());
        match page["next"].as_str() {
            Some(n) => url = format!("{first}&next={n}"),
            None => return out,
        }
    }
}

pub async fn login(base: &str, pw: &str) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": pw}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("login failed: {r}"))
        .to_string()
}

pub fn kill9(s: &mut Server) {
    unsafe_kill(s.child.id() as i32, 9);
    let _ = s.child.wait();
}

pub fn unsafe_kill(pid: i32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn layout() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    (root, dir)
}

/// Acknowledged writes survive SIGKILL in the middle of a write stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    let (_root, dir) = layout();
    let mut s = start(&dir, true);
    let token = login(&s.base, PW).await;
    let http = reqwest::Client::new();
    let key = device_key(&http, &s.base, &token, "crash").await;
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (http, url, key, acked) = (
            http.clone(),
            format!("{}/api/v1/devices/crash/telemetry", s.base),
            key.clone(),
            acked.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let ts: Vec<i64> = (0..50)
                    .map(|j| 1_700_000_000_000 + (i * 4 + w) * 50 + j)
                    .collect();
                let body: Vec<Value> = ts.iter().map(|t| json!({"ts": t, "v": t % 1000})).collect();
                match http
                    .post(&url)
                    .basic_auth("crash", Some(&key))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().extend(ts),
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill9(&mut s);
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1000,
        "the stream ran before the crash ({} points)",
        acked.len()
    );

    let mut s = start(&dir, false);
    let token = login(&s.base, PW).await;
    let stored: std::collections::HashSet<i64> = all_points(
        &http,
        &s.base,
        &token,
        "crash/telemetry/v",
        0,
        7_000_000_000_000,
    )
    .await
    .iter()
    .map(|p| p["ts"].as_i64().unwrap())
    .collect();
    let missing: Vec<&i64> = acked.iter().filter(|t| !stored.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged points lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    unsafe_kill(s.child.id() as i32, 15);
    assert!(s.child.wait().unwrap().success());
}

/// SIGTERM: stop accepting, flush, exit 0; the first start printed a
/// generated admin password on stdout only, and saved it 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_graceful_and_the_bootstrap_password_is_shown_once() {
    let (root, dir) = layout();
    let mut s = start(&dir, false);
    let stdout_path = root.path().join("stdout.log");
    let t = Instant::now();
    let pw = loop {
        let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if let Some(line) = out
            .lines()
            .find(|l| l.starts_with("Created user 'admin' with password: "))
        {
            break line
                .trim_start_matches("Created user 'admin' with password: ")
                .to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no password on stdout: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let file = dir.join("initial-admin-password");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), pw);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = login(&s.base, &pw).await;
    let created: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/devices", s.base))
        .bearer_auth(&token)
        .json(&json!({"id": "d"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let apikey = post_json(
        &http,
        &format!("{}/api/v1/apikeys", s.base),
        &token,
        &json!({"name": "k", "roles": ["viewer"]}),
    )
    .await;
    let apikey = apikey["key"].as_str().unwrap().to_string();
    let secret_value = "whsec_never-log-this-0123456789".to_string();
    let r = http
        .put(format!("{}/api/v1/secrets/hook", s.base))
        .bearer_auth(&token)
        .json(&json!({"value": secret_value}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let wrong_pw = "Wrong-password-typed-9".to_string();
    http.post(format!("{}/api/v1/auth/login", s.base))
        .json(&json!({"username": "admin", "password": wrong_pw}))
        .send()
        .await
        .unwrap();
    unsafe_kill(s.child.id() as i32, 15);
    assert!(s.child.wait().unwrap().success(), "exit 0 on SIGTERM");
    assert!(!dir.join("ports.json").exists());
    let logs = std::fs::read_to_string(root.path().join("stderr.log")).unwrap();
    assert!(logs.contains("\"stopped cleanly\""), "json logs: {logs}");
    assert!(
        !logs.contains("migrated the data directory"),
        "a fresh data directory is created at the current format, not migrated: {logs}"
    );
    for secret in [&pw, &key, &token, &apikey, &secret_value, &wrong_pw] {
        assert!(!logs.contains(secret.as_str()), "a secret reached the log");
    }
    // Nor the database: secrets are encrypted at rest.
    for f in ["twinhub.db", "twinhub.db-wal"] {
        let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
        assert!(
            !bytes
                .windows(secret_value.len())
                .any(|w| w == secret_value.as_bytes()),
            "{f} holds the secret in clear"
        );
    }
}

#[test]
fn a_taken_port_names_the_flag() {
    let (_root, dir) = layout();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = cmd(&dir)
        .args([
            "serve",
            "--http-listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http-listen"), "{err}");
}

#[test]
fn a_newer_data_format_is_refused() {
    let (_root, dir) = layout();
    std::fs::create_dir_all(&dir).unwrap();
    let conn = rusqlite::Connection::open(dir.join("twinhub.db")).unwrap();
    conn.execute_batch("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES('format_version', '99');").unwrap();
    drop(conn);
    let out = cmd(&dir)
        .args(["serve", "--http-listen", "127.0.0.1:0"])
        .env("TWINHUB_ADMIN_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("format version 99") && err.contains("newer"),
        "{err}"
    );
}

/// The CLI works directly on a stopped data directory and through the API
/// of a running server; backup runs while the server does; restore brings
/// it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cli_backup_and_restore() {
    let (root, dir) = layout();
    let out = cmd(&dir)
        .args(["device", "add", "cli-dev"])
        .env("TWINHUB_ADMIN_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let created: Value = serde_json::from_str(&line).unwrap();
    let key = created["key"].as_str().unwrap().to_string();

    let mut s = start(&dir, false);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/devices/cli-dev/telemetry", s.base))
        .basic_auth("cli-dev", Some(&key))
        .json(&json!({"ts": 1_700_000_000_000i64, "v": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Through the running server's API.
    let out = cmd(&dir)
        .args(["device", "add", "api-dev"])
        .env("TWINHUB_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cmd(&dir)
        .args(["device", "list"])
        .env("TWINHUB_PASSWORD", PW)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("cli-dev") && listed.contains("api-dev"),
        "{listed}"
    );
    let token = login(&s.base, PW).await;
    let r = http
        .get(format!("{}/api/v1/devices/api-dev", s.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the running server saw the CLI's device");

    let backup = root.path().join("backup.db");
    let out = cmd(&dir).arg("backup").arg(&backup).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cmd(&dir).arg("restore").arg(&backup).output().unwrap();
    assert!(
        !out.status.success(),
        "restore refuses while the server runs"
    );
    let out = cmd(&dir)
        .args(["device", "rm", "cli-dev"])
        .env("TWINHUB_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(out.status.success());
    unsafe_kill(s.child.id() as i32, 15);
    s.child.wait().unwrap();

    let out = cmd(&dir).arg("restore").arg(&backup).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = start(&dir, false);
    let token = login(&s.base, PW).await;
    let v: Value = get_json(
        &http,
        &format!("{}/api/v1/twins/cli-dev/telemetry/v?from=0", s.base),
        &token,
    )
    .await;
    assert_eq!(
        v["points"],
        json!([{"ts": 1_700_000_000_000i64, "value": 42}]),
        "the backup had the point and the device"
    );
    let r = http
        .post(format!("{}/api/v1/devices/cli-dev/telemetry", s.base))
        .basic_auth("cli-dev", Some(&key))
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the deleted device is back with its key");
    let mut s = s;
    unsafe_kill(s.child.id() as i32, 15);
    s.child.wait().unwrap();
}

#[test]
fn a_taken_mqtt_port_names_its_flag() {
    let (_root, dir) = layout();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = cmd(&dir)
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--mqtt-listen") && err.matches("in use").count() == 1,
        "{err}"
    );
}

/// `twinhub demo` with `args` in a fresh layout, once its banner is out:
/// the child (killed on drop), the layout root, the banner and the base
/// URL.
pub async fn demo(
    args: &[&str],
    env: &[(&str, &str)],
) -> (KillOnDrop, tempfile::TempDir, String, String) {
    let (root, dir) = layout();
    let child = KillOnDrop(
        cmd(&dir)
            .arg("demo")
            .args(args)
            .env("TWINHUB_ADMIN_PASSWORD", PW)
            .env("TWINHUB_HTTP_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(root.path().join("demo.out")).unwrap())
            .stderr(std::fs::File::create(root.path().join("demo.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    let out = loop {
        let out = std::fs::read_to_string(root.path().join("demo.out")).unwrap_or_default();
        if out.contains("Ctrl-C stops the demo") {
            break out;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no banner: {out}\n{}",
            std::fs::read_to_string(root.path().join("demo.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ports: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ports.json")).unwrap()).unwrap();
    let base = format!("http://{}", ports["http"].as_str().unwrap());
    (child, root, out, base)
}
