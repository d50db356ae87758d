//! The README's first command: `twinhub demo` starts a populated system
//! whose simulated reactors report over MQTT and whose yield soft sensor
//! writes predictions to every reactor twin, with rules watching them,
//! and a simulated PLC that a connector reads over OPC UA.

use crate::process::{get_json, login, post_json, unsafe_kill, PW};
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_reactors_and_the_yield_soft_sensor() {
    let (mut child, _root, out, base) = crate::process::demo(
        &["--interval", "0.05", "--plants", "1", "--reactors", "2"],
        &[("TWINHUB_HTTP_TLS_LISTEN", "127.0.0.1:0")],
    )
    .await;
    assert!(
        out.contains("HTTPS")
            && out.contains("MQTTS")
            && out.contains("ml/models/reactor-yield/predict"),
        "{out}"
    );
    let http = reqwest::Client::new();
    let token = login(&base, PW).await;
    let t = Instant::now();
    let twin = loop {
        let twin: Value = get_json(
            &http,
            &format!("{base}/api/v1/twins/plant1-reactor2"),
            &token,
        )
        .await;
        if twin.get("yield_pred").is_some() && twin.get("yield").is_some() {
            break twin;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no soft-sensor output: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The soft sensor's output is the model's own answer for the inputs
    // of the same moment: take its latest point, the inputs stored with
    // that timestamp, and ask the model directly.
    let history = |name: &'static str, from: String, to: String| {
        let url =
            format!("{base}/api/v1/twins/plant1-reactor2/telemetry/{name}?from={from}&to={to}");
        let (http, token) = (http.clone(), token.clone());
        async move {
            let v = get_json(&http, &url, &token).await;
            assert!(v["points"].is_array(), "{url}: {v}");
            v["points"].clone()
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let preds = history(
        "yield_pred",
        (now_ms - 10_000).to_string(),
        (now_ms + 60_000).to_string(),
    )
    .await;
    let last = preds.as_array().unwrap().last().unwrap().clone();
    let ts = last["ts"].as_f64().unwrap();
    let (from, to) = (
        (ts.floor() as i64).to_string(),
        (ts.floor() as i64 + 1).to_string(),
    );
    let mut inputs = serde_json::Map::new();
    for name in ["temperature", "pressure", "flow_rate"] {
        let pts = history(name, from.clone(), to.clone()).await;
        let p = pts
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["ts"].as_f64() == Some(ts))
            .unwrap_or_else(|| panic!("no {name} at {ts}: {pts}"));
        inputs.insert(name.into(), p["value"].clone());
    }
    let direct = post_json(
        &http,
        &format!("{base}/api/v1/ml/models/reactor-yield/predict"),
        &token,
        &Value::Object(inputs.clone()),
    )
    .await;
    let pred = last["value"].as_f64().unwrap();
    assert!(
        (pred - direct["prediction"].as_f64().unwrap()).abs() <= 1e-9 * pred.abs().max(1.0),
        "soft sensor {pred} vs model {direct} for {inputs:?}"
    );
    assert!(twin["yield_pred_lower"].as_f64().unwrap() <= twin["yield_pred"].as_f64().unwrap());
    assert!(
        twin["yield"].is_number(),
        "the simulated measurement arrives too"
    );
    // The simulated PLC's values arrive over OPC UA.
    assert!(out.contains("OPC UA"), "{out}");
    loop {
        let v = get_json(
            &http,
            &format!("{base}/api/v1/twins/plc-reactor1/telemetry/temperature?from=0"),
            &token,
        )
        .await;
        if v["points"].as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no OPC UA values: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The demo's rules run on every reactor's data, and are healthy. (A
    // PLC publishes changes only: its twin's first message may carry
    // pressure alone, and the overheat rule then fails on that twin —
    // "Undeclared reference to 'temperature'" — until its temperature
    // comes; the state clears with the twin's next evaluation.)
    loop {
        let rules = get_json(&http, &format!("{base}/api/v1/rules"), &token).await;
        let list = rules["value"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{rules}");
        let evaluated = list
            .iter()
            .all(|r| r["status"]["evaluations"].as_u64().unwrap_or(0) > 0);
        if evaluated && list.iter().all(|r| r["status"]["state"] == "ok") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "rules not running, or failing: {rules}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe_kill(child.0.id() as i32, 2);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "Ctrl-C stops the demo cleanly");
}
