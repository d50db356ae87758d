//! `twinhub bench opcua`: one OPC UA server (the simulator, in this
//! process) with 1,000 reactors of 10 changing values each, one connector
//! in a `twinhub serve` child subscribed to all 10,000 nodes at 1 s
//! sampling: values stored per second and the server's CPU, per 5-s
//! window, in steady state.

use crate::bench::row;
use crate::bench_ingest::Child;
use anyhow::Context;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct OpcUaArgs {
    pub reactors: usize,
    pub seconds: u64,
}

/// Tags per reactor besides Temperature, Pressure and Probe.
const EXTRA_TAGS: usize = 7;

pub async fn run(args: OpcUaArgs) -> anyhow::Result<()> {
    let items = args.reactors * (3 + EXTRA_TAGS);
    println!(
        "\nopcua: one OPC UA server, {items} monitored items changing every second, one connector"
    );
    let pki = tempfile::tempdir()?;
    let (info, sim) = crate::opcua_sim::start(crate::opcua_sim::SimArgs {
        listen: "127.0.0.1:0".into(),
        reactors: args.reactors,
        tags: EXTRA_TAGS,
        interval_ms: 1000,
        time_offset_s: 0,
        user: None,
        password: None,
        pki_dir: Some(pki.path().to_path_buf()),
        strict_clients: false,
    })
    .await?;
    let ns = info["namespace"].as_u64().context("namespace")?;
    let child = Child::spawn(&[])?;
    let http = reqwest::Client::new();
    let token = crate::bench::admin_token(&http, &child.base).await?;
    let mut nodes = Vec::with_capacity(items);
    for r in 1..=args.reactors {
        let twin = format!("reactor-{r}");
        crate::bench::create_device(&http, &child.base, &token, &twin).await?;
        let mut map = |tag: &str, property: &str| {
            nodes.push(json!({"node": format!("ns={ns};s=R{r}.{tag}"), "twin": twin, "property": property}));
        };
        map("Temperature", "temperature");
        map("Pressure", "pressure");
        map("Probe", "probe");
        for k in 0..EXTRA_TAGS {
            map(&format!("Tag{k}"), &format!("tag{k}"));
        }
    }
    let r = http
        .post(format!("{}/api/v1/connectors", child.base))
        .bearer_auth(&token)
        .json(
            &json!({"id": "plc", "kind": "opcua", "endpoint": info["endpoint"],
            "publishing_interval": "1s", "sampling_interval": "1s", "nodes": nodes}),
        )
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "connector: {}", r.text().await?);
    let status = || async {
        let v: Value = http
            .get(format!("{}/api/v1/connectors/plc", child.base))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(v["status"].clone())
    };
    let t = Instant::now();
    loop {
        let s = status().await?;
        if s["state"] == "connected" && s["monitored_items"].as_u64() == Some(items as u64) {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "the connector did not subscribe: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    row(
        "subscribe to every node (connect + create items) (s)",
        format!("{:.1}", t.elapsed().as_secs_f64()),
        "",
    );
    // Warm up: the first publish carries every initial value.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(5);
    let windows = (args.seconds / 5).max(2);
    let mut cpu = Vec::new();
    let (p0, c0, t0) = (
        status().await?["points_in"].as_u64().unwrap_or(0),
        child.cpu_seconds()?,
        Instant::now(),
    );
    let (mut c_prev, mut t_prev) = (c0, t0);
    let mut rss_max = 0u64;
    for _ in 0..windows {
        tokio::time::sleep(window).await;
        let c = child.cpu_seconds()?;
        cpu.push((c - c_prev) / t_prev.elapsed().as_secs_f64() * 100.0);
        (c_prev, t_prev) = (c, Instant::now());
        rss_max = rss_max.max(crate::bench::rss_kb(child.pid()));
    }
    let s = status().await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let stored = s["points_in"].as_u64().unwrap_or(0) - p0;
    let min = cpu.iter().cloned().fold(f64::MAX, f64::min);
    let max = cpu.iter().cloned().fold(0.0, f64::max);
    row(
        "values stored per second (steady state)",
        format!("{:.0}", stored as f64 / elapsed),
        &format!("{items} items changing at 1 Hz"),
    );
    row(
        "server CPU, % of one core (mean; 5-s windows min–max)",
        format!(
            "{:.1} ({:.1}–{:.1})",
            (c_prev - c0) / elapsed * 100.0,
            min,
            max
        ),
        "stable",
    );
    row(
        "server RSS, max of the windows (MB)",
        format!("{:.1}", rss_max as f64 / 1024.0),
        "",
    );
    row(
        "values dropped or rejected",
        format!(
            "{}",
            s["dropped"].as_u64().unwrap_or(0) + s["rejected"].as_u64().unwrap_or(0)
        ),
        "0",
    );
    drop(child);
    sim.abort();
    Ok(())
}
