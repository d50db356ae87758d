//! The OpenAPI document, checked with tools nobody here wrote: it is valid
//! OpenAPI 3.1 (openapi-spec-validator), an API fuzzer driven by it
//! (Schemathesis) finds no server error and no undocumented answer, and a
//! client generated from it (openapi-python-client) works unchanged.
//!
//! The longer fuzzing run:
//! `TWINHUB_SCHEMATHESIS_EXAMPLES=50 cargo test -p twinhub --test it schemathesis -- --nocapture`.

use crate::common::*;
use serde_json::Value;

async fn document(s: &TestServer) -> (Value, std::path::PathBuf) {
    let r = s
        .http
        .get(s.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let path = s.dir.path().join("openapi.json");
    std::fs::write(&path, &text).unwrap();
    (serde_json::from_str(&text).unwrap(), path)
}

const TOOLS: &[&str] = &[
    "openapi-spec-validator",
    "schemathesis>=4,<5",
    "openapi-python-client",
];

/// Runs a command to success; its output otherwise.
async fn run_ok(cmd: &mut tokio::process::Command) -> std::process::Output {
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn tools_python() -> String {
    python_with(
        "import openapi_spec_validator, schemathesis, openapi_python_client",
        TOOLS,
    )
    .await
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_with_query_parameters_in_the_query() {
    let s = TestServer::start().await;
    let (doc, path) = document(&s).await;
    // The defect this guards against: query parameters declared as path
    // parameters of paths that have no such segment.
    let mut checked = 0;
    for (p, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap();
                if param["in"] == "path" {
                    assert!(
                        p.contains(&format!("{{{name}}}")),
                        "{method} {p}: `{name}` is declared in the path but the path has no such segment"
                    );
                }
                checked += 1;
            }
            // Every error answer carries the error schema.
            for (code, r) in op["responses"].as_object().unwrap() {
                if p.starts_with("/api/") && (code.starts_with('4') || code.starts_with('5')) {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {p} {code}"
                    );
                }
            }
        }
    }
    assert!(checked > 100, "{checked} parameters");
    let q = &doc["paths"]["/api/v1/twins/{id}/telemetry/{name}"]["get"]["parameters"];
    assert!(
        q.as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "bucket" && p["in"] == "query"),
        "{q}"
    );
    let python = tools_python().await;
    run_ok(
        tokio::process::Command::new(&python)
            .args(["-m", "openapi_spec_validator"])
            .arg(&path),
    )
    .await;
    s.stop().await;
}

/// Schemathesis against a live server with an admin's token: no 5xx,
/// every status documented, every response matches its schema. Logout,
/// user changes and API-key revocation are left out: they would end the
/// run's own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_every_answer_is_documented() {
    let python = tools_python().await;
    let s = TestServer::start_with(|c| c.rate_limits.requests_per_second = 0.0).await;
    let examples = std::env::var("TWINHUB_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "4".into());
    let out = tokio::process::Command::new(&python)
        .args(["-m", "schemathesis.cli", "run"])
        .arg(s.url("/api/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {}", s.token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            &examples,
            "--exclude-path-regex",
            "/auth/|/users/\\{username\\}|/apikeys/",
            "--seed",
            "20261201",
            "-w",
            "2",
        ])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    s.stop().await;
}

/// A client generated by openapi-python-client, unchanged, logs in,
/// creates a device, posts telemetry and reads history.
#[tokio::test]
async fn a_client_generated_from_the_document_works() {
    let python = tools_python().await;
    let s = TestServer::start().await;
    let (_, path) = document(&s).await;
    let gen = s.dir.path().join("generated");
    std::fs::create_dir_all(&gen).unwrap();
    let generator = std::path::Path::new(&python).with_file_name("openapi-python-client");
    let generator = if generator.exists() {
        generator.into_os_string()
    } else {
        "openapi-python-client".into()
    };
    let out = tokio::process::Command::new(&generator)
        .args(["generate", "--meta", "none", "--path"])
        .arg(&path)
        .current_dir(&gen)
        .output()
        .await
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("will not be generated"),
        "every endpoint is generated: {log}"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/generated_client_smoke.py"
    );
    let out = run_ok(
        tokio::process::Command::new(&python)
            .arg(script)
            .arg(&gen)
            .arg(&s.base)
            .arg(ADMIN_PASSWORD),
    )
    .await;
    let history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        history["points"],
        serde_json::json!([
            {"ts": 1764500000000i64, "value": 351.5},
            {"ts": 1764500001000i64, "value": 352}
        ])
    );
    s.stop().await;
}
