//! Protocol work on a replica: a device's HTTP telemetry is decoded by
//! the replica it reached and handed to the primary in binary, signed; the
//! device sees the primary's answer as if it had posted straight to it —
//! the same statuses, the same errors, 200 only once the points are
//! stored.

use crate::cluster::{until_ready, Cluster};
use crate::process::{device_key, get_json, login, post_json};
use serde_json::{json, Value};
use twinhub_server::forwarded::{sign_body, Key, DECODED_HEADER, DECODED_TYPE};

async fn decoded_by_replica(http: &reqwest::Client, primary: &str) -> u64 {
    let text = http
        .get(format!("{primary}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("twinhub_http_bodies_decoded_by_replica_total "))
        .expect("the metric")
        .trim()
        .parse()
        .unwrap()
}

/// Status and body of a device's POST.
async fn post(
    http: &reqwest::Client,
    base: &str,
    (device, key): (&str, &str),
    req: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let r = req(http
        .post(format!("{base}/api/v1/devices/{device}/telemetry"))
        .basic_auth(device, Some(key)))
    .send()
    .await
    .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_decodes_device_telemetry_and_the_primary_answers() {
    let mut cluster = Cluster::new(2);
    let config = cluster.roots[0].path().join("small-bodies.toml");
    std::fs::write(&config, "[http]\nmax_ingest_body = 2000\n").unwrap();
    cluster.args = vec!["--config".into(), config.display().to_string()];
    let a = cluster.primary(0, "node-a");
    let b = cluster.replica(1, "node-b");
    let http = reqwest::Client::new();
    until_ready(&http, &b.base).await;
    let token = login(&b.base, crate::process::PW).await;
    let key = device_key(&http, &b.base, &token, "dec-1").await;
    let dev = ("dec-1", key.as_str());
    let points = |name: &'static str| {
        let (http, base, token) = (http.clone(), a.base.clone(), token.clone());
        async move {
            let url = format!("{base}/api/v1/twins/dec-1/telemetry/{name}?from=0");
            get_json(&http, &url, &token).await["points"].clone()
        }
    };

    // Decoded by the replica, stored by the primary, read back exactly.
    let body = json!([
        {"ts": 1_700_000_000_000i64, "t": 21.5, "on": true, "mode": "run"},
        {"ts": 1_700_000_001_000i64, "t": {"value": -0.1, "quality": "uncertain"}, "n": 9007199254740993.0}
    ]);
    let before = decoded_by_replica(&http, &a.base).await;
    let (status, receipt) = post(&http, &b.base, dev, |r| r.json(&body)).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt, json!({"messages": 2, "points": 5}));
    assert_eq!(decoded_by_replica(&http, &a.base).await, before + 1);
    let t = points("t").await;
    assert_eq!(t[0]["value"].as_f64(), Some(21.5));
    assert_eq!(t[1]["value"].as_f64(), Some(-0.1));
    assert_eq!(t[1]["quality"], "uncertain");
    assert_eq!(points("mode").await[0]["value"], "run");
    assert_eq!(points("on").await[0]["value"], true);
    assert_eq!(
        points("n").await[0]["value"].as_f64(),
        Some(9007199254740992.0)
    );

    // A body near the limit whose binary form is larger than its JSON.
    let near = serde_json::to_vec(&vec![json!({"x": 0.1}); 195]).unwrap();
    assert!(near.len() <= 2000 && near.len() > 1900, "{}", near.len());
    assert!(
        twinhub_codec::encode_wire(
            &twinhub_codec::decode_telemetry(&near, &Default::default()).unwrap()
        )
        .len()
            > 2000
    );
    let (status, receipt) = post(&http, &b.base, dev, |r| r.body(near.clone())).await;
    assert_eq!((status, receipt["messages"].clone()), (200, json!(195)));
    assert_eq!(decoded_by_replica(&http, &a.base).await, before + 2);

    // Refusals are the primary's, as if the device had posted to it.
    let cases: Vec<(&str, (&str, &str), Vec<u8>)> = vec![
        (
            "wrong key",
            ("dec-1", "not-the-key"),
            br#"{"t":1}"#.to_vec(),
        ),
        ("bad JSON", dev, br#"{"t": }"#.to_vec()),
        ("a bad name", dev, br#"{"$t": 1}"#.to_vec()),
        ("too large", dev, vec![b' '; 2500]),
        (
            "another device's id",
            ("dec-1", key.as_str()),
            br#"{"t":1}"#.to_vec(),
        ),
    ];
    for (what, (device, key), body) in cases {
        let path_device = if what == "another device's id" {
            "dec-2"
        } else {
            device
        };
        let send = |base: String| {
            let (http, body) = (http.clone(), body.clone());
            async move {
                let r = http
                    .post(format!("{base}/api/v1/devices/{path_device}/telemetry"))
                    .basic_auth(device, Some(key))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        };
        let straight = send(a.base.clone()).await;
        let relayed = send(b.base.clone()).await;
        assert!(straight.0 >= 400, "{what}: {straight:?}");
        assert_eq!(
            relayed, straight,
            "{what}: the same answer through the replica"
        );
    }
    assert_eq!(decoded_by_replica(&http, &a.base).await, before + 2);

    // The binary form is taken only as a replica signed it: not unsigned,
    // not signed with another key, and not from a device through a replica.
    let mut t = twinhub_codec::Telemetry::default();
    t.begin(Some(1_800_000_000_000_000));
    let i = t.intern("forged");
    t.push(
        i,
        twinhub_model::Value::Number(1.0),
        twinhub_model::Quality::Good,
    );
    let wire = twinhub_codec::encode_wire(&t);
    let now = twinhub_server::forwarded::now_ms();
    let other = sign_body(&Key::from_secret("another-secret"), &wire, now);
    for (base, signature) in [
        (&a.base, None),
        (&a.base, Some(other.clone())),
        (&b.base, None),
    ] {
        let (status, answer) = post(&http, base, dev, |r| {
            let r = r.header("content-type", DECODED_TYPE).body(wire.clone());
            match &signature {
                Some(s) => r.header(DECODED_HEADER, s),
                None => r,
            }
        })
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
        assert!(answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains(DECODED_TYPE));
    }
    assert_eq!(
        points("forged").await,
        json!([]),
        "nothing forged was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_decodes_line_protocol_and_the_primary_answers() {
    let cluster = Cluster::new(2);
    let a = cluster.primary(0, "node-a");
    let b = cluster.replica(1, "node-b");
    let http = reqwest::Client::new();
    until_ready(&http, &b.base).await;
    let token = login(&b.base, crate::process::PW).await;
    device_key(&http, &b.base, &token, "press-1").await;
    device_key(&http, &b.base, &token, "oven").await;
    let created = post_json(
        &http,
        &format!("{}/api/v1/apikeys", b.base),
        &token,
        &json!({"name": "influx", "permissions": ["telemetry:write"]}),
    )
    .await;
    let auth = format!("Token {}", created["key"].as_str().unwrap());
    let write = |base: &str, path: &str, auth: &str, body: &str| {
        let r = http
            .post(format!("{base}{path}"))
            .header("authorization", auth)
            .body(body.to_string());
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let before = decoded_by_replica(&http, &a.base).await;
    let body = "press,twin=press-1 temperature=351.25,running=t,mode=\"auto\" 1700000000000\n\
                oven temperature=180i 1700000000500\n\
                press,twin=press-1 temperature=352.5 1700000001000\n";
    let (status, _) = write(&b.base, "/api/v2/write?bucket=x&precision=ms", &auth, body).await;
    assert_eq!(status, 204);
    assert_eq!(decoded_by_replica(&http, &a.base).await, before + 1);
    let url =
        |twin: &str, name: &str| format!("{}/api/v1/twins/{twin}/telemetry/{name}?from=0", a.base);
    assert_eq!(
        get_json(&http, &url("press-1", "temperature"), &token).await["points"],
        json!([
            {"ts": 1_700_000_000_000i64, "value": 351.25},
            {"ts": 1_700_000_001_000i64, "value": 352.5}
        ])
    );
    assert_eq!(
        get_json(&http, &url("press-1", "mode"), &token).await["points"][0]["value"],
        "auto"
    );
    assert_eq!(
        get_json(&http, &url("oven", "temperature"), &token).await["points"][0]["value"].as_f64(),
        Some(180.0)
    );

    // Refusals are the primary's, straight or through the replica.
    let cases = [
        ("a wrong key", "/api/v2/write", "Token nope", "oven t=1 1\n"),
        (
            "an unknown twin",
            "/api/v2/write",
            auth.as_str(),
            "ghost t=1 1\n",
        ),
        ("a bad line", "/api/v2/write", auth.as_str(), "oven t=\n"),
        (
            "a bad precision",
            "/write?precision=fortnights",
            auth.as_str(),
            "oven t=1 1\n",
        ),
    ];
    for (what, path, auth, body) in cases {
        let straight = write(&a.base, path, auth, body).await;
        let relayed = write(&b.base, path, auth, body).await;
        assert!(straight.0 >= 400, "{what}: {straight:?}");
        assert_eq!(
            relayed, straight,
            "{what}: the same answer through the replica"
        );
    }
    assert_eq!(
        decoded_by_replica(&http, &a.base).await,
        before + 2,
        "the unknown twin was decoded by the replica and refused by the primary; the rest went on as sent"
    );
}
