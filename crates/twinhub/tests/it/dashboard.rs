//! The dashboard: its files served from the binary (public, cached,
//! compressed), the API calls it relies on, and the whole UI driven in
//! Debian's Chromium by Playwright against `twinhub demo`
//! (`web/e2e/dashboard.mjs`).

use crate::common::*;
use crate::process::PW;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

#[tokio::test]
async fn the_page_and_its_assets_are_public_cached_and_compressed() {
    let s = TestServer::start().await;
    let http = reqwest::Client::new();
    let r = http.get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(h["x-frame-options"], "DENY");
    let etag = h["etag"].to_str().unwrap().to_string();
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<div id="app">"#), "{html}");
    let again = http
        .get(s.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // Every file the page references is served; scripts come gzipped to a
    // client that accepts it and are cached for a year (hashed names).
    let refs: Vec<&str> = html
        .split('"')
        .filter(|p| p.starts_with("/assets/") || *p == "/favicon.svg")
        .collect();
    assert!(refs.iter().any(|p| p.ends_with(".js")), "{html}");
    for p in &refs {
        let plain = http.get(s.url(p)).send().await.unwrap();
        assert_eq!(plain.status(), 200, "{p}");
        assert!(plain.headers().get("content-encoding").is_none());
        let plain_len = plain.bytes().await.unwrap().len();
        if p.starts_with("/assets/") {
            let gz = http
                .get(s.url(p))
                .header("accept-encoding", "gzip, br")
                .send()
                .await
                .unwrap();
            assert_eq!(gz.headers()["content-encoding"], "gzip", "{p}");
            assert_eq!(
                gz.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            let body = gz.bytes().await.unwrap();
            assert_eq!(&body[..2], &[0x1f, 0x8b], "{p} is gzip");
            assert!(body.len() < plain_len, "{p}: gzip is smaller");
        }
    }
    let missing = http.get(s.url("/assets/nope.js")).send().await.unwrap();
    assert_eq!(
        error_of(missing, 404, "not_found").await,
        "no file /assets/nope.js"
    );
    s.stop().await;
}

#[tokio::test]
async fn me_says_what_the_caller_may_do_and_server_info_gives_the_listeners() {
    let s = TestServer::start().await;
    let viewer = s.user("vera", &["viewer"]).await;
    let (st, me) = s
        .json(
            reqwest::Client::new()
                .get(s.url("/api/v1/auth/me"))
                .bearer_auth(&viewer),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(me["name"], "vera");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["roles"], json!(["viewer"]));
    let perms: Vec<&str> = me["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(perms.contains(&"alarms:read") && perms.contains(&"events:read"));
    assert!(!perms.contains(&"alarms:ack") && !perms.contains(&"devices:admin"));
    let anon = reqwest::Client::new()
        .get(s.url("/api/v1/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    let (st, info) = s.json(s.get("/api/v1/server")).await;
    assert_eq!(st, 200);
    assert_eq!(info["listeners"]["mqtt"], json!(s.mqtt().to_string()));
    assert!(info["version"].is_string());
    let anon = reqwest::Client::new()
        .get(s.url("/api/v1/server"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    s.stop().await;
}

#[tokio::test]
async fn a_model_answers_its_elements_with_inherited_ones_and_units() {
    let s = TestServer::start().await;
    let r = s
        .post(
            "/api/v1/models",
            json!([
                {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:t:Base;1", "@type": "Interface",
                 "contents": [{"@type": ["Telemetry", "Temperature"], "name": "temperature", "schema": "double", "unit": "kelvin", "displayName": "Temperature"}]},
                {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:t:Pump;1", "@type": "Interface", "extends": "dtmi:t:Base;1",
                 "contents": [
                    {"@type": "Property", "name": "speed", "schema": "integer", "writable": true},
                    {"@type": "Command", "name": "reset", "request": {"name": "mode", "schema": "string"}}
                 ]}
            ]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, m) = s.json(s.get("/api/v1/models/dtmi:t:Pump;1")).await;
    let els = m["elements"].as_array().unwrap();
    let by = |n: &str| els.iter().find(|e| e["name"] == n).unwrap().clone();
    assert_eq!(
        by("temperature"),
        json!({"name": "temperature", "kind": "Telemetry", "schema": "double", "unit": "kelvin",
               "displayName": "Temperature", "origin": "dtmi:t:Base;1"})
    );
    assert_eq!(by("speed")["writable"], true);
    assert_eq!(
        by("reset")["request"],
        json!({"name": "mode", "schema": "string"})
    );
    s.stop().await;
}

/// The tools the browser test needs: Node, playwright-core (`npm ci` in
/// web/) and Debian's Chromium. `.ci/run` installs them; on a machine
/// without them the test says so and passes, except under CI, where a
/// missing tool is a failure.
fn browser_tools() -> Option<PathBuf> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ok = std::path::Path::new(&chromium).exists()
        && web_dir().join("node_modules/playwright-core").exists()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Some(PathBuf::from(chromium));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the browser test: install chromium and run `npm ci` in web/"
    );
    eprintln!("SKIPPED the browser test: needs node, /usr/bin/chromium and `npm ci` in web/");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_end_to_end_in_chromium() {
    let Some(chromium) = browser_tools() else {
        return;
    };
    let (_demo, _root, out, base) = crate::process::demo(
        &["--interval", "0.5", "--plants", "2", "--reactors", "2"],
        &[],
    )
    .await;
    // The banner leads with the dashboard and its login.
    let first = out
        .lines()
        .find(|l| l.contains("http://"))
        .unwrap_or_default();
    assert!(
        first.contains("Dashboard") && first.contains(&format!("{base}/")) && first.contains(PW),
        "{out}"
    );
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e");
    let _ = std::fs::remove_dir_all(&shots);
    let run = tokio::process::Command::new("node")
        .arg("e2e/dashboard.mjs")
        .current_dir(web_dir())
        .env("TWINHUB_URL", &base)
        .env("TWINHUB_PASSWORD", PW)
        .env("E2E_SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finishes in 4 minutes")
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "dashboard e2e failed:\n{text}");
    assert!(text.contains("all dashboard checks passed"), "{text}");
    assert!(shots.join("01-fleet.png").exists());
}
