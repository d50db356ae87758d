//! InfluxDB line protocol: `/api/v2/write` and `/write` with an API key,
//! as the official `influxdb-client` library and Telegraf send it.

use crate::common::*;
use serde_json::{json, Value};
use twinhub_server::store::health::Faults;

/// An API key with exactly `perms`.
async fn key(s: &TestServer, perms: &[&str]) -> String {
    let (st, v) = s
        .json(s.post(
            "/api/v1/apikeys",
            json!({"name": "influx", "permissions": perms}),
        ))
        .await;
    assert_eq!(st, 201, "{v}");
    v["key"].as_str().unwrap().to_string()
}

async fn points(s: &TestServer, twin: &str, name: &str) -> Vec<Value> {
    let (_, v) = s
        .json(s.get(&format!("/api/v1/twins/{twin}/telemetry/{name}?from=0")))
        .await;
    v["points"].as_array().cloned().unwrap_or_default()
}

async fn write(s: &TestServer, path: &str, auth: Option<&str>, body: &str) -> reqwest::Response {
    let mut r = s.http.post(s.url(path)).body(body.to_string());
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

#[tokio::test]
async fn line_protocol_writes_twins_fields_and_timestamps() {
    let s = TestServer::start().await;
    s.device("press-1").await;
    s.device("oven").await;
    let k = key(&s, &["telemetry:write"]).await;
    let token = format!("Token {k}");
    let r = write(
        &s,
        "/api/v2/write?org=plant&bucket=line&precision=ms",
        Some(&token),
        "# two twins\n\
         press,twin=press-1,site=north temperature=351.25,running=t,mode=\"auto\" 1700000000000\n\
         oven temperature=180i 1700000000500\n\
         press,twin=press-1 temperature=352.5 1700000001000\n",
    )
    .await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let t = points(&s, "press-1", "temperature").await;
    assert_eq!(
        t,
        vec![
            json!({"ts": 1_700_000_000_000i64, "value": 351.25}),
            json!({"ts": 1_700_000_001_000i64, "value": 352.5})
        ]
    );
    assert_eq!(points(&s, "press-1", "mode").await[0]["value"], "auto");
    assert_eq!(points(&s, "press-1", "running").await[0]["value"], true);
    assert_eq!(points(&s, "oven", "temperature").await[0]["value"], 180.0);
    // The 1.x endpoint, with the key as ?p= or as the Basic password.
    let r = write(
        &s,
        &format!("/write?db=x&precision=s&u=any&p={k}"),
        None,
        "oven temperature=181 1700000002",
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = s
        .http
        .post(s.url("/write?db=x&precision=s"))
        .basic_auth("telegraf", Some(&k))
        .body("oven temperature=182 1700000003")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(points(&s, "oven", "temperature").await.len(), 3);
    let m = s.metrics().await;
    assert!(
        metric_value(&m, r#"twinhub_points_in_total{protocol="line"}"#).unwrap_or(0.0) >= 7.0,
        "{m}"
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_writes_name_the_line_or_twin_and_store_nothing() {
    let s = TestServer::start().await;
    s.device("d1").await;
    let k = format!("Token {}", key(&s, &["telemetry:write"]).await);
    let r = write(
        &s,
        "/api/v2/write?bucket=b",
        Some(&k),
        "d1 v=1 1000\nd1 v=oops 2000",
    )
    .await;
    let msg = error_of(r, 400, "bad_request").await;
    assert!(msg.starts_with("line 2: field v"), "{msg}");
    let r = write(
        &s,
        "/api/v2/write?bucket=b",
        Some(&k),
        "d1 v=1 1000\nghost v=2 2000",
    )
    .await;
    let msg = error_of(r, 422, "unprocessable_entity").await;
    assert!(msg.contains("ghost does not exist"), "{msg}");
    assert!(
        points(&s, "d1", "v").await.is_empty(),
        "nothing of a refused request is kept"
    );
    let r = write(
        &s,
        "/api/v2/write?bucket=b&precision=fortnight",
        Some(&k),
        "d1 v=1",
    )
    .await;
    assert!(error_of(r, 400, "bad_request")
        .await
        .starts_with("precision:"));
    let r = s
        .http
        .post(s.url("/api/v2/write?bucket=b"))
        .header("authorization", &k)
        .header("content-encoding", "gzip")
        .body("d1 v=1")
        .send()
        .await
        .unwrap();
    assert!(error_of(r, 400, "bad_request")
        .await
        .starts_with("Content-Encoding:"));
    let r = write(&s, "/api/v2/write?bucket=b", None, "d1 v=1").await;
    error_of(r, 401, "unauthorized").await;
    let reader = format!("Token {}", key(&s, &["telemetry:read"]).await);
    let r = write(&s, "/api/v2/write?bucket=b", Some(&reader), "d1 v=1").await;
    error_of(r, 403, "forbidden").await;
    assert!(points(&s, "d1", "v").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn line_protocol_answers_503_and_keeps_nothing_when_storing_fails() {
    let s = TestServer::start().await;
    s.device("d1").await;
    let k = format!("Token {}", key(&s, &["telemetry:write"]).await);
    Faults::set(&s.store().faults().commit, true);
    let r = write(
        &s,
        "/api/v2/write?bucket=b&precision=ms",
        Some(&k),
        "d1 v=1 1000",
    )
    .await;
    error_of(r, 503, "service_unavailable").await;
    Faults::set(&s.store().faults().commit, false);
    assert!(points(&s, "d1", "v").await.is_empty());
    let r = write(
        &s,
        "/api/v2/write?bucket=b&precision=ms",
        Some(&k),
        "d1 v=1 1000",
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(points(&s, "d1", "v").await.len(), 1);
    s.stop().await;
}

/// The official InfluxDB 2.x Python client, unchanged, writes to twinhub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_influxdb_client_writes_to_twinhub() {
    let python = python_with("import influxdb_client", &["influxdb-client"]).await;
    let s = TestServer::start().await;
    s.device("line-7").await;
    let k = key(&s, &["telemetry:write"]).await;
    let script = r#"
import sys
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
url, token = sys.argv[1], sys.argv[2]
with InfluxDBClient(url=url, token=token, org="plant") as client:
    w = client.write_api(write_options=SYNCHRONOUS)
    w.write(bucket="twinhub", record=[
        Point("line").tag("twin", "line-7").field("speed", 1.5).field("state", "run").time(1700000000000, WritePrecision.MS),
        Point("line").tag("twin", "line-7").field("speed", 2.5).field("count", 3).time(1700000001000, WritePrecision.MS),
    ], write_precision=WritePrecision.MS)
    w.write(bucket="twinhub", record="line,twin=line-7 speed=3.5 1700000002000000000")
    try:
        w.write(bucket="twinhub", record="line,twin=nowhere speed=1")
        print("no error for an unknown twin")
        sys.exit(1)
    except Exception as e:
        if "nowhere does not exist" not in str(e):
            print("unexpected error:", e)
            sys.exit(1)
print("ok")
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script, &s.base, &k])
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("ok"), "{text}");
    let speeds: Vec<f64> = points(&s, "line-7", "speed")
        .await
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(speeds, vec![1.5, 2.5, 3.5]);
    assert_eq!(points(&s, "line-7", "count").await[0]["value"], 3.0);
    s.stop().await;
}
