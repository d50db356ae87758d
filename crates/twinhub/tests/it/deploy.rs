//! `deploy/` checked without Docker (no engine on these machines): the
//! compose files and the Kubernetes sketch parse; every twinhub container's
//! environment is a configuration the real binary accepts
//! (`twinhub check-config`, which refuses unknown keys and a cluster
//! member without a shared store or keys); the load balancer sends HTTP
//! and MQTT to every node on the ports the nodes listen on, by `/ready`;
//! and the paths the probes use answer on a running server.

use crate::common::*;
use crate::process::cmd;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every YAML document of a file, as JSON (PyYAML resolves `<<` merges).
async fn yaml_docs(path: &Path) -> Vec<Value> {
    let python = python_with("import yaml", &["pyyaml"]).await;
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `${VAR:?message}` → a stand-in value, `${VAR:-default}` → the default.
fn interpolate(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("closing brace") + at;
        let inner = &rest[at + 2..end];
        out.push_str(match inner.split_once(":-") {
            Some((_, default)) => default,
            None => "stand-in-value-0123456789abcdef",
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Runs `twinhub check-config` with exactly this environment.
fn check_config(env: &BTreeMap<String, String>, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut c = cmd(&data);
    c.env_remove("TWINHUB_DATA_DIR")
        .env_remove("TWINHUB_MQTT_LISTEN")
        .arg("check-config")
        .envs(env);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: the binary refuses this environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), interpolate(v.as_str().expect("string values"))))
        .collect()
}

#[tokio::test]
async fn the_compose_files_describe_nodes_the_binary_runs() {
    let docs = yaml_docs(&deploy().join("compose.yaml")).await;
    let services = docs[0]["services"].as_object().unwrap();
    let nodes: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"] == "deploy/Dockerfile")
        .collect();
    assert_eq!(nodes.len(), 3, "three twinhub nodes");
    let haproxy = std::fs::read_to_string(deploy().join("haproxy.cfg")).unwrap();
    let mut node_ids = Vec::new();
    for (name, s) in &nodes {
        let env = env_of(s);
        check_config(&env, name);
        assert!(env["TWINHUB_STORE_URL"].starts_with("postgres://"));
        assert!(env["TWINHUB_CLUSTER_NATS"].starts_with("nats://nats:"));
        assert!(services.contains_key("postgres") && services.contains_key("nats"));
        node_ids.push(env["TWINHUB_CLUSTER_NODE_ID"].clone());
        let http = env["TWINHUB_HTTP_LISTEN"]
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        let mqtt = env["TWINHUB_MQTT_LISTEN"]
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        assert!(
            haproxy.contains(&format!("server {name} {name}:{http} check")),
            "HTTP reaches {name} on its port:\n{haproxy}"
        );
        assert!(
            haproxy.contains(&format!("server {name} {name}:{mqtt} check port {http}")),
            "MQTT reaches {name}, checked on its HTTP port:\n{haproxy}"
        );
        let frames = env["TWINHUB_INGEST_TCP_LISTEN"].rsplit(':').next().unwrap();
        assert!(
            haproxy.contains(&format!("server {name} {name}:{frames} check port {http}")),
            "raw TCP frames reach {name}, checked on its HTTP port:\n{haproxy}"
        );
    }
    node_ids.sort();
    node_ids.dedup();
    assert_eq!(node_ids.len(), 3, "each node has its own id");
    assert_eq!(
        haproxy.matches("option httpchk GET /ready").count(),
        3,
        "every backend routes by readiness"
    );
    let lb = &services["lb"];
    assert!(lb["volumes"][0]
        .as_str()
        .unwrap()
        .starts_with("./haproxy.cfg:"));

    let single = yaml_docs(&deploy().join("compose.single.yaml")).await;
    let (name, s) = single[0]["services"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    check_config(&env_of(s), name);

    let docker = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    assert!(docker.contains("\nUSER twinhub\n"), "runs as non-root");
    assert!(docker.contains("EXPOSE 8080 1883"));
    assert!(docker.contains("AS build"), "multi-stage");
    assert!(docker.contains("CMD curl -fsS http://127.0.0.1:8080/ready"));
    assert!(docker.contains("TWINHUB_HTTP_LISTEN=0.0.0.0:8080"));
    assert!(docker.contains("TWINHUB_MQTT_LISTEN=0.0.0.0:1883"));
}

#[tokio::test]
async fn the_kubernetes_sketch_configures_nodes_the_binary_runs() {
    let docs = yaml_docs(&deploy().join("k8s/twinhub.yaml")).await;
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap().clone();
    let secret = kind("Secret");
    let set = kind("StatefulSet");
    let c = &set["spec"]["template"]["spec"]["containers"][0];
    let mut env: BTreeMap<String, String> = secret["stringData"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    for e in c["env"].as_array().unwrap() {
        let v = e["value"].as_str().unwrap_or("pod-name-0");
        env.insert(e["name"].as_str().unwrap().to_string(), v.to_string());
    }
    check_config(&env, "the StatefulSet");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(set["spec"]["replicas"], 3);
}

/// The paths the probes and the load balancer use exist and answer.
#[tokio::test]
async fn the_probe_paths_answer() {
    let s = TestServer::start().await;
    for path in ["/health", "/ready"] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    s.stop().await;
}
