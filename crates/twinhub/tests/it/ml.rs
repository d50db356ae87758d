//! ML over HTTP: upload, predict with intervals and validation, batches,
//! versions, A/B, scenarios, the cache and drift.

use crate::common::*;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

pub fn fixture(name: &str) -> Vec<u8> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../twinhub-ml/tests/fixtures");
    std::fs::read(dir.join(name)).unwrap()
}

pub fn yield_manifest(version: &str) -> Value {
    let mut m: Value = serde_json::from_slice(&fixture("reactor_yield.manifest.json")).unwrap();
    m["version"] = json!(version);
    m
}

pub async fn upload(s: &TestServer, onnx: Vec<u8>, manifest: &Value) -> reqwest::Response {
    let form = Form::new()
        .part("model", Part::bytes(onnx).file_name("model.onnx"))
        .part("manifest", Part::text(manifest.to_string()));
    s.http
        .post(s.url("/api/v1/ml/models"))
        .bearer_auth(&s.token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

pub async fn upload_yield(s: &TestServer, version: &str) -> Value {
    let r = upload(s, fixture("reactor_yield.onnx"), &yield_manifest(version)).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// POST /api/v1/ml/bindings.
async fn post_binding(s: &TestServer, body: Value) -> reqwest::Response {
    s.post("/api/v1/ml/bindings", body).send().await.unwrap()
}

/// POST …/reactor-yield/predict/batch with these rows.
async fn predict_batch(s: &TestServer, rows: &[Value]) -> (reqwest::StatusCode, Value) {
    s.json(s.post(
        "/api/v1/ml/models/reactor-yield/predict/batch",
        json!({ "rows": rows }),
    ))
    .await
}

const ROW: &str = r#"{"temperature": 350, "pressure": 5.5, "flow_rate": 100}"#;

#[tokio::test]
async fn upload_and_predict_with_the_seed_interval() {
    let s = TestServer::start().await;
    let up = upload_yield(&s, "1.0.0").await;
    assert_eq!(up["active"], true);
    assert_eq!(up["trees"], 30);
    let (st, v) = s
        .json(s.post(
            "/api/v1/ml/models/reactor-yield/predict",
            serde_json::from_str(ROW).unwrap(),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    let y = v["prediction"].as_f64().unwrap();
    let (lo, hi) = (
        v["interval"]["lower"].as_f64().unwrap(),
        v["interval"]["upper"].as_f64().unwrap(),
    );
    assert!(lo <= y && y <= hi && hi - lo < 10.0, "{v}");
    assert_eq!(v["interval"]["level"], 0.9);
    assert_eq!(v["model_version"], "1.0.0");
    assert!(v["inference_time_ms"].as_f64().unwrap() >= 0.0);
    // Seed 000's /model/info, under the model.
    let (st, info) = s.json(s.get("/api/v1/ml/models/reactor-yield/info")).await;
    assert_eq!(st, 200);
    assert_eq!(
        (
            info["active"].as_str(),
            info["manifest"]["features"][0]["name"].as_str()
        ),
        (Some("1.0.0"), Some("temperature")),
        "{info}"
    );

    // Validation names the feature: missing 400, out of range 422,
    // unknown 400.
    let r = s
        .post(
            "/api/v1/ml/models/reactor-yield/predict",
            json!({"temperature": 350, "pressure": 5.5}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("flow_rate"));
    let r = s
        .post(
            "/api/v1/ml/models/reactor-yield/predict",
            json!({"temperature": 500, "pressure": 5.5, "flow_rate": 100}),
        )
        .send()
        .await
        .unwrap();
    let msg = error_of(r, 422, "unprocessable_entity").await;
    assert!(
        msg.contains("temperature") && msg.contains("[330, 390]"),
        "{msg}"
    );
    let r = s
        .post(
            "/api/v1/ml/models/reactor-yield/predict",
            json!({"temperature": 350, "pressure": 5.5, "flow_rate": 100, "colour": 1}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("colour"));
    let r = s
        .post("/api/v1/ml/models/nope/predict", json!({}))
        .send()
        .await
        .unwrap();
    error_of(r, 404, "not_found").await;

    // A batch answers in order; a bad row fails it whole, by index.
    let rows: Vec<Value> = (0..5)
        .map(|i| json!({"temperature": 345 + 5 * i, "pressure": 5.5, "flow_rate": 100}))
        .collect();
    let (st, b) = predict_batch(&s, &rows).await;
    assert_eq!(st, 200, "{b}");
    let preds = b["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 5);
    let (_, one) = s
        .json(s.post("/api/v1/ml/models/reactor-yield/predict", rows[3].clone()))
        .await;
    assert_eq!(preds[3]["prediction"], one["prediction"], "same order");
    let mut bad = rows.clone();
    bad[2] = json!({"temperature": 345, "pressure": 5.5});
    let r = s
        .post(
            "/api/v1/ml/models/reactor-yield/predict/batch",
            json!({"rows": bad}),
        )
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .contains("rows[2].flow_rate"));
    // A large batch (computed off the async workers, across cores) keeps
    // its order too (no cache, so every answer is computed).
    let s = {
        s.stop().await;
        let s = TestServer::start_with(|c| c.ml.cache_entries = 0).await;
        upload_yield(&s, "1.0.0").await;
        s
    };
    let rows: Vec<Value> = (0..1000)
        .map(|i| json!({"temperature": 340.0 + 0.04 * i as f64, "pressure": 5.5, "flow_rate": 100}))
        .collect();
    let (st, b) = predict_batch(&s, &rows).await;
    assert_eq!(st, 200);
    for i in [0, 377, 999] {
        let (_, one) = s
            .json(s.post("/api/v1/ml/models/reactor-yield/predict", rows[i].clone()))
            .await;
        assert_eq!(
            b["predictions"][i]["prediction"], one["prediction"],
            "row {i}"
        );
    }
    let info = s.json(s.get("/api/v1/ml/models/reactor-yield")).await.1;
    assert_eq!(info["cache"]["hits"], 0, "{info}");
    let many: Vec<Value> = (0..1001)
        .map(|_| serde_json::from_str(ROW).unwrap())
        .collect();
    let r = s
        .post(
            "/api/v1/ml/models/reactor-yield/predict/batch",
            json!({"rows": many}),
        )
        .send()
        .await
        .unwrap();
    error_of(r, 413, "payload_too_large").await;
    s.stop().await;
}

#[tokio::test]
async fn bad_uploads_are_refused_with_the_reason() {
    // Versions per model are capped; deleting one makes room.
    let s = TestServer::start_with(|c| c.ml.max_versions = 2).await;
    upload_yield(&s, "1").await;
    upload_yield(&s, "2").await;
    let r = upload(&s, fixture("reactor_yield.onnx"), &yield_manifest("3")).await;
    assert!(error_of(r, 409, "conflict")
        .await
        .contains("ml.max_versions"));
    let r = s
        .delete("/api/v1/ml/models/reactor-yield/versions/2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    upload_yield(&s, "3").await;
    s.stop().await;

    let s = TestServer::start_with(|c| c.ml.max_model_bytes = 300_000).await;
    // Too big for this server's limit.
    let r = upload(&s, fixture("reactor_yield.onnx"), &yield_manifest("1")).await;
    error_of(r, 413, "payload_too_large").await;
    // Not ONNX at all.
    let r = upload(&s, b"garbage".to_vec(), &yield_manifest("1")).await;
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("model"));
    // An operator we do not run is named; so is every other one missing.
    use prost::Message;
    let mut m = twinhub_ml::proto::ModelProto::decode(&fixture("gbr.onnx")[..]).unwrap();
    let g = m.graph.as_mut().unwrap();
    g.node[0].op_type = "SVMRegressor".into();
    g.node[0].domain = "ai.onnx.ml".into();
    g.node.push(twinhub_ml::proto::NodeProto {
        op_type: "Conv".into(),
        input: vec![g.node[0].output[0].clone()],
        output: vec!["conv_out".into()],
        ..Default::default()
    });
    let r = upload(&s, m.encode_to_vec(), &yield_manifest("1")).await;
    let msg = error_of(r, 422, "unprocessable_entity").await;
    assert!(
        msg.contains("ai.onnx.ml.SVMRegressor") && msg.contains("Conv"),
        "{msg}"
    );
    // A per-tree interval on boosted trees.
    let r = upload(&s, fixture("gbr.onnx"), &yield_manifest("1")).await;
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("interval"));
    // A manifest that is not one.
    let mut m = yield_manifest("1");
    m["features"] = json!([]);
    let r = upload(&s, fixture("gbr.onnx"), &m).await;
    assert!(error_of(r, 400, "bad_request")
        .await
        .contains("manifest.features"));
    // Missing part.
    let form = Form::new().part("manifest", Part::text(yield_manifest("1").to_string()));
    let r = s
        .http
        .post(s.url("/api/v1/ml/models"))
        .bearer_auth(&s.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request").await.contains("model"));
    // A viewer may predict nothing and upload nothing.
    let viewer = s.user("vi", &["viewer"]).await;
    let r = s
        .http
        .post(s.url("/api/v1/ml/models/x/predict"))
        .bearer_auth(&viewer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 403, "forbidden").await.contains("ml:predict"));
    s.stop().await;
}

#[tokio::test]
async fn versions_activation_rollback_and_ab() {
    let s = TestServer::start().await;
    upload_yield(&s, "1.0.0").await;
    // Version 2: the same forest with conformal intervals.
    let mut m2 = yield_manifest("2.0.0");
    m2["interval"] = json!({"method": "conformal", "level": 0.9});
    let r = upload(&s, fixture("reactor_yield.onnx"), &m2).await;
    let up: Value = r.json().await.unwrap();
    assert_eq!(up["active"], false, "{up}");
    let r = upload(&s, fixture("reactor_yield.onnx"), &m2).await;
    error_of(r, 409, "conflict").await;

    let predict = |q: &'static str| {
        let body: Value = serde_json::from_str(ROW).unwrap();
        let s = &s;
        async move {
            let (st, v) = s
                .json(s.post(&format!("/api/v1/ml/models/reactor-yield/predict{q}"), body))
                .await;
            assert_eq!(st, 200, "{v}");
            v
        }
    };
    assert_eq!(predict("").await["model_version"], "1.0.0");
    assert_eq!(predict("?version=2.0.0").await["model_version"], "2.0.0");
    let r = s
        .post(
            "/api/v1/ml/models/reactor-yield/versions/2.0.0/activate",
            json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = predict("").await;
    assert_eq!(v["model_version"], "2.0.0");
    let y = v["prediction"].as_f64().unwrap();
    let half = (v["interval"]["upper"].as_f64().unwrap() - y).abs();
    assert!(
        (half - m2["conformal"]["quantile"].as_f64().unwrap()).abs() < 1e-9,
        "conformal: {v}"
    );
    // Roll back in one call.
    s.post(
        "/api/v1/ml/models/reactor-yield/versions/1.0.0/activate",
        json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(predict("").await["model_version"], "1.0.0");

    // A/B: a stable share of keys goes to the candidate.
    let r = s
        .http
        .put(s.url("/api/v1/ml/models/reactor-yield/ab"))
        .bearer_auth(&s.token)
        .json(&json!({"candidate": "2.0.0", "share": 0.3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut to_candidate = 0;
    for i in 0..200 {
        let (_, v) = s
            .json(s.post(
                &format!("/api/v1/ml/models/reactor-yield/predict?key=reactor-{i}"),
                serde_json::from_str(ROW).unwrap(),
            ))
            .await;
        let (_, again) = s
            .json(s.post(
                &format!("/api/v1/ml/models/reactor-yield/predict?key=reactor-{i}"),
                serde_json::from_str(ROW).unwrap(),
            ))
            .await;
        assert_eq!(
            v["model_version"], again["model_version"],
            "a key sticks to its version"
        );
        if v["model_version"] == "2.0.0" {
            to_candidate += 1;
        }
    }
    assert!(
        (35..=85).contains(&to_candidate),
        "{to_candidate} of 200 at 30 %"
    );
    let (_, info) = s.json(s.get("/api/v1/ml/models/reactor-yield")).await;
    let stats = &info["version_details"]["2.0.0"]["stats"];
    assert!(stats["calls"].as_u64().unwrap() >= 70, "{info}");
    assert!(stats["latency_p99_ms"].as_f64().is_some());
    assert!(
        info["cache"]["hits"].as_u64().unwrap() > 0,
        "repeated rows hit the cache: {info}"
    );
    // Versions in use cannot be deleted; others can.
    let r = s
        .delete("/api/v1/ml/models/reactor-yield/versions/2.0.0")
        .send()
        .await
        .unwrap();
    error_of(r, 409, "conflict").await;
    s.http
        .delete(s.url("/api/v1/ml/models/reactor-yield/ab"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let r = s
        .delete("/api/v1/ml/models/reactor-yield/versions/2.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Everything survives a restart.
    let s = s.restart().await;
    let (_, list) = s.json(s.get("/api/v1/ml/models")).await;
    assert_eq!(list["value"][0]["versions"], json!(["1.0.0"]));
    assert_eq!(list["value"][0]["active"], "1.0.0");
    s.stop().await;
}

#[tokio::test]
async fn scenarios_and_drift() {
    let s = TestServer::start().await;
    upload_yield(&s, "1.0.0").await;
    let (st, t) = s
        .json(s.post(
            "/api/v1/ml/models/reactor-yield/scenarios",
            json!({"base": {"flow_rate": 100}, "grid": {"temperature": {"from": 340, "to": 380, "steps": 5}, "pressure": [5, 6, 7]}}),
        ))
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(
        t["columns"],
        json!([
            "temperature",
            "pressure",
            "flow_rate",
            "prediction",
            "lower",
            "upper"
        ])
    );
    let rows = t["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 15);
    assert_eq!(rows[0][0], 340.0);
    assert_eq!(rows[14][0], 380.0);
    let r = s
        .post(
            "/api/v1/ml/models/reactor-yield/scenarios",
            json!({"grid": {"temperature": {"from": 340, "to": 380, "steps": 10000}, "pressure": [5, 6]}, "base": {"flow_rate": 100}}),
        )
        .send()
        .await
        .unwrap();
    error_of(r, 413, "payload_too_large").await;

    // Hot inputs drift away from the training distribution.
    let rows: Vec<Value> = (0..200)
        .map(|i| json!({"temperature": 375 + (i % 10), "pressure": 4 + (i % 5), "flow_rate": 80 + (i % 40)}))
        .collect();
    s.post(
        "/api/v1/ml/models/reactor-yield/predict/batch",
        json!({"rows": rows}),
    )
    .send()
    .await
    .unwrap();
    let (_, info) = s.json(s.get("/api/v1/ml/models/reactor-yield")).await;
    let psi = info["version_details"]["1.0.0"]["drift"]["temperature"]["psi"]
        .as_f64()
        .unwrap();
    assert!(psi > 0.25, "{info}");
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("twinhub_ml_drift_psi{tenant=\"default\",model=\"reactor-yield\",feature=\"temperature\"}"),
        "{metrics}"
    );
    s.stop().await;
}

async fn poll<F, Fut>(mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}

/// A DTDL reactor model with the yield model's inputs and outputs, one
/// twin per `(id, line)` and a device `d-{id}` feeding it; returns the
/// devices' keys.
pub async fn yield_reactors(s: &TestServer, twins: &[(&str, &str)]) -> Vec<String> {
    let telemetry = |n: &str| json!({"@type": "Telemetry", "name": n, "schema": "double"});
    let mut contents: Vec<Value> = [
        "temperature",
        "pressure",
        "flow_rate",
        "yield",
        "yield_pred",
        "yield_pred_lower",
        "yield_pred_upper",
        "grade",
        "grade_p",
        "anomaly",
        "anomaly_score",
        "p_class2",
    ]
    .iter()
    .map(|n| telemetry(n))
    .collect();
    contents
        .push(json!({"@type": "Property", "name": "line", "schema": "string", "writable": true}));
    let model = json!([{"@context": "dtmi:dtdl:context;3", "@id": "dtmi:test:YieldReactor;1",
        "@type": "Interface", "contents": contents}]);
    assert_eq!(
        s.post("/api/v1/models", model)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let mut keys = Vec::new();
    for (id, line) in twins {
        let r = s
            .http
            .put(s.url(&format!("/api/v1/twins/{id}")))
            .bearer_auth(&s.token)
            .json(&json!({"$metadata": {"$model": "dtmi:test:YieldReactor;1"}, "line": line}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let (_, d) = s
            .json(s.post(
                "/api/v1/devices",
                json!({"id": format!("d-{id}"), "twin_id": id}),
            ))
            .await;
        keys.push(d["key"].as_str().unwrap().to_string());
    }
    keys
}

/// A soft sensor: the yield model bound to reactors writes its prediction
/// and interval to the twin and its history whenever inputs change; the
/// measured yield, arriving later, is scored against it.
#[tokio::test]
async fn soft_sensors_write_predictions_to_twins_and_history() {
    let s = TestServer::start().await;
    let keys = yield_reactors(&s, &[("r1", "A"), ("r2", "A")]).await;
    let key = keys[0].clone();
    upload_yield(&s, "1.0.0").await;

    // Outputs must be telemetry of the twins' model.
    let r = post_binding(&s, json!({"id": "bad", "model": "reactor-yield", "select": {"model": "dtmi:test:YieldReactor;1"},
            "outputs": {"prediction": "nonsense"}})).await;
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("nonsense"));
    let r = post_binding(
        &s,
        json!({"id": "bad", "model": "no-such-model", "select": {"twin": "r1"},
            "outputs": {"prediction": "yield_pred"}}),
    )
    .await;
    error_of(r, 422, "unprocessable_entity").await;
    let (st, _) = s
        .json(s.post("/api/v1/ml/bindings", json!({"id": "yield", "model": "reactor-yield",
            "select": {"model": "dtmi:test:YieldReactor;1"},
            "outputs": {"prediction": "yield_pred", "lower": "yield_pred_lower", "upper": "yield_pred_upper"}})))
        .await;
    assert_eq!(st, 201);

    let ts = 1_700_000_000_000i64;
    let r = s
        .send(
            "d-r1",
            &key,
            json!({"ts": ts, "temperature": 350, "pressure": 5.5, "flow_rate": 100}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let twin = poll(|| async {
        let (_, t) = s.json(s.get("/api/v1/twins/r1")).await;
        t.get("yield_pred").is_some().then_some(t)
    })
    .await;
    let (_, direct) = s
        .json(s.post(
            "/api/v1/ml/models/reactor-yield/predict",
            serde_json::from_str(ROW).unwrap(),
        ))
        .await;
    let y = twin["yield_pred"].as_f64().unwrap();
    assert!(
        (y - direct["prediction"].as_f64().unwrap()).abs() < 1e-9,
        "{twin} vs {direct}"
    );
    assert!(
        twin["yield_pred_lower"].as_f64().unwrap() <= y
            && y <= twin["yield_pred_upper"].as_f64().unwrap()
    );
    let (_, h) = s
        .json(s.get("/api/v1/twins/r1/telemetry/yield_pred?from=0"))
        .await;
    assert_eq!(
        h["points"][0]["ts"], ts,
        "the prediction carries the inputs' time: {h}"
    );
    // r2 has no inputs yet, so nothing was written there.
    let (_, t2) = s.json(s.get("/api/v1/twins/r2")).await;
    assert!(t2.get("yield_pred").is_none());

    // New inputs arrive, then the yield measured between the two input
    // times (a lab value, late): it is scored against the prediction made
    // from the inputs of its time, not the newest one.
    s.send("d-r1", &key, json!({"ts": ts + 2000, "temperature": 375}))
        .await;
    poll(|| async {
        let (_, t) = s.json(s.get("/api/v1/twins/r1")).await;
        (t["yield_pred"].as_f64() != Some(y)).then_some(t)
    })
    .await;
    s.send("d-r1", &key, json!({"ts": ts + 1000, "yield": y - 2.0}))
        .await;
    let info = poll(|| async {
        let (_, i) = s.json(s.get("/api/v1/ml/models/reactor-yield")).await;
        (i["version_details"]["1.0.0"]["stats"]["ground_truth"] == 1).then_some(i)
    })
    .await;
    let mae = info["version_details"]["1.0.0"]["stats"]["mae"]
        .as_f64()
        .unwrap();
    assert!((mae - 2.0).abs() < 1e-6, "{info}");
    // The same figures per version in /metrics, for dashboards and alerts.
    let metrics = s.metrics().await;
    let value = |name: &str| -> f64 {
        let series =
            format!("{name}{{tenant=\"default\",model=\"reactor-yield\",version=\"1.0.0\"}} ");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("{series} missing in:\n{metrics}"));
        line[series.len()..].parse().unwrap()
    };
    assert!((value("twinhub_ml_mae") - 2.0).abs() < 1e-6);
    assert!(value("twinhub_ml_predictions_total") >= 2.0);
    assert!(value("twinhub_ml_latency_p99_seconds") > 0.0);
    assert!(
        metrics.contains("twinhub_ml_soft_sensor_outputs_total 2"),
        "two input changes, two outputs"
    );

    // Bindings survive a restart and can be removed.
    let s = s.restart().await;
    let (_, list) = s.json(s.get("/api/v1/ml/bindings")).await;
    assert_eq!(list["value"][0]["id"], "yield");
    assert_eq!(
        s.delete("/api/v1/ml/bindings/yield")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    s.stop().await;
}

/// A binding selected by a twin query follows the graph: a twin that
/// starts matching is served from its next input on.
#[tokio::test]
async fn soft_sensors_bound_by_query_follow_the_graph() {
    let s = TestServer::start().await;
    let keys = yield_reactors(&s, &[("r1", "A"), ("r2", "B")]).await;
    upload_yield(&s, "1.0.0").await;
    let outputs = json!({"prediction": "yield_pred"});
    for (query, rule) in [
        ("SELECT T FROM", "select.query"),
        ("SELECT COUNT() FROM DIGITALTWINS", "must return twins"),
    ] {
        let r = post_binding(
            &s,
            json!({"id": "q", "model": "reactor-yield",
                "select": {"query": query}, "outputs": outputs}),
        )
        .await;
        let msg = error_of(r, 400, "bad_request").await;
        assert!(msg.contains(rule), "{query}: {msg}");
    }
    let r = post_binding(
        &s,
        json!({"id": "q", "model": "reactor-yield",
            "select": {"twin": "r1", "query": "SELECT T FROM DIGITALTWINS T"}, "outputs": outputs}),
    )
    .await;
    assert!(error_of(r, 400, "bad_request")
        .await
        .contains("exactly one"));
    let (st, b) = s
        .json(s.post("/api/v1/ml/bindings", json!({"id": "line-a", "model": "reactor-yield",
            "select": {"query": "SELECT T FROM DIGITALTWINS T WHERE T.line = 'A'"}, "outputs": outputs})))
        .await;
    assert_eq!(st, 201, "{b}");

    let row =
        json!({"ts": 1_700_000_000_000i64, "temperature": 350, "pressure": 5.5, "flow_rate": 100});
    let has_pred = |id: &'static str| {
        let s = &s;
        async move {
            let (_, t) = s.json(s.get(&format!("/api/v1/twins/{id}"))).await;
            t.get("yield_pred").is_some().then_some(t)
        }
    };
    // r2 first: once r1 is served, r2's event has been handled too.
    assert_eq!(s.send("d-r2", &keys[1], row.clone()).await.status(), 200);
    assert_eq!(s.send("d-r1", &keys[0], row.clone()).await.status(), 200);
    poll(|| has_pred("r1")).await;
    assert!(has_pred("r2").await.is_none(), "r2 is on line B");

    // r2 moves to line A: its next input is served.
    let r = s
        .http
        .patch(s.url("/api/v1/twins/r2"))
        .bearer_auth(&s.token)
        .json(&json!([{"op": "replace", "path": "/line", "value": "A"}]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(s.send("d-r2", &keys[1], row).await.status(), 200);
    poll(|| has_pred("r2")).await;
    s.stop().await;
}

/// Classifiers answer the label with class probabilities and a null
/// interval; outlier models answer a score (the contract's shapes).
#[tokio::test]
async fn classifier_and_outlier_answers() {
    let s = TestServer::start().await;
    for (name, file) in [("grade", "classifier.onnx"), ("outlier", "isolation.onnx")] {
        let mut m = yield_manifest("1.0.0");
        m["name"] = json!(name);
        m.as_object_mut().unwrap().remove("interval");
        let r = upload(&s, fixture(file), &m).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let (st, v) = s
        .json(s.post(
            "/api/v1/ml/models/grade/predict",
            serde_json::from_str(ROW).unwrap(),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    let probs: Vec<f64> = v["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), 3, "{v}");
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{v}");
    let label = v["prediction"].as_i64().unwrap();
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(
        label as usize, best,
        "the label is the likeliest class: {v}"
    );
    assert!(v.get("interval").is_some_and(|i| i.is_null()), "{v}");
    assert_eq!(v["model_version"], "1.0.0");

    let (st, v) = s
        .json(s.post(
            "/api/v1/ml/models/outlier/predict",
            serde_json::from_str(ROW).unwrap(),
        ))
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["score"].is_f64(), "{v}");
    s.stop().await;
}

/// Soft sensors from a classifier (label and its probability) and an
/// outlier model (label and score).
#[tokio::test]
async fn classifier_and_outlier_bindings() {
    let s = TestServer::start().await;
    let keys = yield_reactors(&s, &[("r1", "A")]).await;
    upload_yield(&s, "1.0.0").await;
    for (name, file) in [("grade", "classifier.onnx"), ("outlier", "isolation.onnx")] {
        let mut m = yield_manifest("1.0.0");
        m["name"] = json!(name);
        m.as_object_mut().unwrap().remove("interval");
        assert_eq!(upload(&s, fixture(file), &m).await.status(), 201);
    }
    // Per-class outputs name classes the model has.
    let (_, info) = s.json(s.get("/api/v1/ml/models/grade")).await;
    assert_eq!(info["classes"], json!([0, 1, 2]), "{info}");
    let r = post_binding(
        &s,
        json!({"id": "x", "model": "grade", "select": {"twin": "r1"},
            "outputs": {"prediction": "grade", "probabilities": {"7": "p_class2"}}}),
    )
    .await;
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("outputs.probabilities.7"));
    // Outputs must suit the model's kind.
    let r = post_binding(
        &s,
        json!({"id": "x", "model": "reactor-yield", "select": {"twin": "r1"},
            "outputs": {"prediction": "yield_pred", "probability": "grade_p"}}),
    )
    .await;
    assert!(error_of(r, 422, "unprocessable_entity")
        .await
        .contains("outputs.probability"));
    for body in [
        json!({"id": "grade", "model": "grade", "select": {"twin": "r1"},
            "outputs": {"prediction": "grade", "probability": "grade_p", "probabilities": {"2": "p_class2"}}}),
        json!({"id": "outlier", "model": "outlier", "select": {"twin": "r1"},
            "outputs": {"prediction": "anomaly", "score": "anomaly_score"}}),
    ] {
        let (st, b) = s.json(s.post("/api/v1/ml/bindings", body)).await;
        assert_eq!(st, 201, "{b}");
    }
    let row = json!({"temperature": 350, "pressure": 5.5, "flow_rate": 100});
    assert_eq!(s.send("d-r1", &keys[0], row.clone()).await.status(), 200);
    let twin = poll(|| async {
        let (_, t) = s.json(s.get("/api/v1/twins/r1")).await;
        (t.get("grade_p").is_some()
            && t.get("anomaly_score").is_some()
            && t.get("p_class2").is_some())
        .then_some(t)
    })
    .await;
    let (_, direct) = s
        .json(s.post("/api/v1/ml/models/grade/predict", row.clone()))
        .await;
    assert_eq!(twin["grade"], direct["prediction"], "{twin}");
    let best = direct["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        (twin["grade_p"].as_f64().unwrap() - best).abs() < 1e-9,
        "{twin}"
    );
    let p2 = direct["probabilities"][2].as_f64().unwrap();
    assert!(
        (twin["p_class2"].as_f64().unwrap() - p2).abs() < 1e-9,
        "{twin}"
    );
    let (_, direct) = s
        .json(s.post("/api/v1/ml/models/outlier/predict", row))
        .await;
    assert_eq!(twin["anomaly"], direct["prediction"], "{twin}");
    assert!(
        (twin["anomaly_score"].as_f64().unwrap() - direct["score"].as_f64().unwrap()).abs() < 1e-9
    );
    s.stop().await;
}
