//! The access CLI (`tenant`, `user`, `apikey`) as a real child process:
//! directly on a stopped data directory and through a running server.

use crate::process::{cmd, layout, start, unsafe_kill, PW};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

/// Runs the CLI and returns its last stdout line as JSON.
fn run(dir: &Path, args: &[&str], stdin: Option<&str>, pw_env: &str) -> Value {
    let mut c = cmd(dir);
    c.args(args)
        .env(pw_env, PW)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{s}\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    serde_json::from_str(text.lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = cmd(dir)
        .args(args)
        .env("TWINHUB_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

async fn login(base: &str, user: &str, pw: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": user, "password": pw}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_users_and_keys_from_the_cli() {
    let (_root, dir) = layout();
    let direct = "TWINHUB_ADMIN_PASSWORD";
    // Directly on the data directory (no server running).
    let t = run(
        &dir,
        &["tenant", "add", "acme", "--name", "Acme"],
        None,
        direct,
    );
    assert_eq!(t["id"], "acme");
    let u = run(
        &dir,
        &[
            "user",
            "add",
            "ann",
            "--role",
            "operator",
            "--tenant",
            "acme",
            "--password-stdin",
        ],
        Some("Ann-pass-123"),
        direct,
    );
    assert_eq!(u["tenant"], "acme");
    assert!(
        u.get("password").is_none(),
        "a given password is not echoed"
    );
    let k = run(
        &dir,
        &["apikey", "create", "ci", "--role", "viewer"],
        None,
        direct,
    );
    let key = k["key"].as_str().unwrap().to_string();
    let id = k["id"].as_str().unwrap().to_string();
    // Bad input is refused with the API's message, nothing half-done.
    let err = fails(&dir, &["user", "add", "bob", "--role", "wizard"]);
    assert!(err.contains("roles") && err.contains("wizard"), "{err}");

    let mut s = start(&dir, false);
    let http = reqwest::Client::new();
    assert_eq!(login(&s.base, "ann", "Ann-pass-123").await.status(), 200);
    let with_key = || {
        http.get(format!("{}/api/v1/devices", s.base))
            .bearer_auth(&key)
            .send()
    };
    assert_eq!(with_key().await.unwrap().status(), 200);

    // Through the running server's API.
    let listed = run(
        &dir,
        &["user", "list", "--tenant", "acme"],
        None,
        "TWINHUB_PASSWORD",
    );
    assert_eq!(listed["username"], "ann");
    let p = run(&dir, &["user", "passwd", "ann"], None, "TWINHUB_PASSWORD");
    let new_pw = p["password"].as_str().unwrap().to_string();
    assert_eq!(login(&s.base, "ann", "Ann-pass-123").await.status(), 401);
    assert_eq!(login(&s.base, "ann", &new_pw).await.status(), 200);
    run(&dir, &["apikey", "revoke", &id], None, "TWINHUB_PASSWORD");
    assert_eq!(with_key().await.unwrap().status(), 401, "revoked at once");

    // Both paths are in the audit chain, the direct one as the local CLI.
    let token: Value = login(&s.base, "admin", PW).await.json().await.unwrap();
    let audit: Value = http
        .get(format!("{}/api/v1/audit?limit=1000", s.base))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["value"].as_array().unwrap();
    let by = |action: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action)
            .map(|e| e["actor"].clone())
    };
    assert_eq!(by("apikey.create"), Some(json!("cli:local")), "{audit}");
    assert_eq!(by("apikey.revoke"), Some(json!("user:admin")), "{audit}");
    unsafe_kill(s.child.id() as i32, 15);
    s.child.wait().unwrap();
}

/// `twinhub model package` makes a checksummed bundle; `model upload`
/// takes it (or the ONNX file and manifest) and refuses a damaged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_package_upload_and_list() {
    let (root, dir) = layout();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../twinhub-ml/tests/fixtures");
    let onnx = fixtures.join("reactor_yield.onnx");
    let manifest = fixtures.join("reactor_yield.manifest.json");
    let bundle = root.path().join("yield.thm.json");
    let direct = "TWINHUB_ADMIN_PASSWORD";
    let b = run(
        &dir,
        &[
            "model",
            "package",
            onnx.to_str().unwrap(),
            manifest.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
        None,
        direct,
    );
    assert_eq!(b["name"], "reactor-yield");
    let up = run(
        &dir,
        &["model", "upload", bundle.to_str().unwrap()],
        None,
        direct,
    );
    assert_eq!(
        (up["version"].as_str(), up["active"].as_bool()),
        (Some("1.0.0"), Some(true))
    );

    // A damaged bundle is refused, naming the checksum.
    let mut v: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    v["manifest"]["version"] = json!("1.0.1");
    v["sha256"] = json!("00");
    std::fs::write(&bundle, v.to_string()).unwrap();
    let err = fails(&dir, &["model", "upload", bundle.to_str().unwrap()]);
    assert!(err.contains("sha256"), "{err}");

    // ONNX + manifest, through a running server.
    let mut s = start(&dir, false);
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["version"] = json!("2.0.0");
    let m2 = root.path().join("m2.json");
    std::fs::write(&m2, m.to_string()).unwrap();
    let up = run(
        &dir,
        &[
            "model",
            "upload",
            onnx.to_str().unwrap(),
            m2.to_str().unwrap(),
        ],
        None,
        "TWINHUB_PASSWORD",
    );
    assert_eq!(up["active"], false);
    run(
        &dir,
        &["model", "activate", "reactor-yield", "2.0.0"],
        None,
        "TWINHUB_PASSWORD",
    );
    let listed = run(&dir, &["model", "list"], None, "TWINHUB_PASSWORD");
    assert_eq!(listed["active"], "2.0.0");
    assert_eq!(listed["versions"], json!(["1.0.0", "2.0.0"]));
    // A/B from the command line; a version in use cannot be deleted.
    let ab = run(
        &dir,
        &["model", "ab", "reactor-yield", "1.0.0", "--share", "0.3"],
        None,
        "TWINHUB_PASSWORD",
    );
    assert_eq!(ab["candidate"], json!({"version": "1.0.0", "share": 0.3}));
    let exported = root.path().join("exported.thm.json");
    let e = run(
        &dir,
        &[
            "model",
            "export",
            "reactor-yield",
            "1.0.0",
            "-o",
            exported.to_str().unwrap(),
        ],
        None,
        "TWINHUB_PASSWORD",
    );
    assert_eq!(e["version"], "1.0.0");
    let err = fails(&dir, &["model", "rm", "reactor-yield", "1.0.0"]);
    assert!(err.contains("1.0.0"), "{err}");
    run(
        &dir,
        &["model", "ab", "reactor-yield", "--stop"],
        None,
        "TWINHUB_PASSWORD",
    );
    run(
        &dir,
        &["model", "rm", "reactor-yield", "1.0.0"],
        None,
        "TWINHUB_PASSWORD",
    );
    let listed = run(&dir, &["model", "list"], None, "TWINHUB_PASSWORD");
    assert_eq!(listed["versions"], json!(["2.0.0"]));
    // The exported bundle brings the deleted version back, checksum intact.
    run(
        &dir,
        &["model", "upload", exported.to_str().unwrap()],
        None,
        "TWINHUB_PASSWORD",
    );
    let listed = run(&dir, &["model", "list"], None, "TWINHUB_PASSWORD");
    assert_eq!(
        listed["versions"],
        json!(["2.0.0", "1.0.0"]),
        "in upload order"
    );
    unsafe_kill(s.child.id() as i32, 15);
    s.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_alarms_from_the_cli() {
    let (root, dir) = layout();
    let file = root.path().join("hot.json");
    std::fs::write(
        &file,
        json!({"id": "hot", "name": "hot", "select": {"twin": "r1"},
            "condition": "temperature > 375", "alarm": {"type": "Hot", "severity": "major"}})
        .to_string(),
    )
    .unwrap();
    let direct = "TWINHUB_ADMIN_PASSWORD";
    let created = run(
        &dir,
        &["rule", "create", file.to_str().unwrap()],
        None,
        direct,
    );
    assert_eq!(
        (created["id"].as_str(), created["version"].as_i64()),
        (Some("hot"), Some(1))
    );
    let off = run(&dir, &["rule", "disable", "hot"], None, direct);
    assert_eq!(
        (off["enabled"].as_bool(), off["version"].as_i64()),
        (Some(false), Some(2))
    );
    let listed = run(&dir, &["rule", "list"], None, direct);
    assert_eq!(listed["id"], "hot");
    // A bad expression is refused with its position.
    std::fs::write(
        &file,
        json!({"name": "bad", "select": {"twin": "r1"}, "condition": "temperature >",
            "alarm": {"type": "Hot", "severity": "major"}})
        .to_string(),
    )
    .unwrap();
    let err = fails(&dir, &["rule", "create", file.to_str().unwrap()]);
    assert!(err.contains("condition") && err.contains("line 1"), "{err}");
    let err = fails(&dir, &["alarm", "ack", "12345"]);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_cli() {
    let (root, dir) = layout();
    let file = root.path().join("route.json");
    std::fs::write(
        &file,
        json!({"id": "erp", "select": {"types": ["alarm"]},
            "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/hook"}})
        .to_string(),
    )
    .unwrap();
    let direct = "TWINHUB_ADMIN_PASSWORD";
    let created = run(
        &dir,
        &["route", "create", file.to_str().unwrap()],
        None,
        direct,
    );
    assert_eq!(
        (created["id"].as_str(), created["version"].as_i64()),
        (Some("erp"), Some(1))
    );
    let paused = run(&dir, &["route", "pause", "erp"], None, direct);
    assert_eq!(
        (paused["status"].as_str(), paused["version"].as_i64()),
        (Some("paused"), Some(2))
    );
    let listed = run(&dir, &["route", "list"], None, direct);
    assert_eq!(listed["id"], "erp");
    let tested = run(&dir, &["route", "test", "erp"], None, direct);
    assert_eq!(
        tested["delivered"], false,
        "nothing listens on port 9: {tested}"
    );
    std::fs::write(&file, json!({"sink": {"kind": "pigeon"}}).to_string()).unwrap();
    let err = fails(&dir, &["route", "create", file.to_str().unwrap()]);
    assert!(err.contains("sink.kind"), "{err}");
    let err = fails(&dir, &["route", "replay", "nope"]);
    assert!(err.contains("not found"), "{err}");
}
