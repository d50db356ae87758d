//! `twinhub bench cluster` (needs `TWINHUB_STORE_URL`, and NATS at
//! `TWINHUB_CLUSTER_NATS` or nats://127.0.0.1:4222): two `twinhub serve`
//! children on one PostgreSQL schema — the primary and a replica that
//! forwards to it. What the hop through a replica costs: durable HTTP
//! ingest and MQTT QoS 1 latency (p50/p99) and throughput, straight to the
//! primary and through the replica, from the same run, with each node's
//! CPU per point of the HTTP ingest (the replica decodes; the primary
//! stores); then how long the replica takes to serve as the primary after
//! a SIGKILL of the primary.
//! On one 2-core box the nodes, PostgreSQL, NATS and the load generator
//! share the cores: these are about the hop, not about a cluster's size.

use crate::bench::{admin_token, create_device, row};
use crate::bench_ingest::Child;
use anyhow::{anyhow, Context};
use rumqttc::QoS;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

async fn ready(http: &reqwest::Client, base: &str, within: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                return Ok(t.elapsed());
            }
        }
        if t.elapsed() > within {
            return Err(anyhow!("{base} not ready in {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One durable point per request, one request at a time.
async fn http_latency(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    n: usize,
    t0: i64,
) -> anyhow::Result<(f64, f64)> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/api/v1/devices/d1/telemetry"))
            .basic_auth("d1", Some(key))
            .json(&serde_json::json!({"ts": t0 + i as i64, "v": i}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "POST answered {}", r.status());
        lat.push(t.elapsed());
    }
    Ok((pct(&mut lat, 0.5), pct(&mut lat, 0.99)))
}

/// CPU time (user + system, all threads) a process has used so far, from
/// `/proc/<pid>/stat` (in USER_HZ ticks, 100 per second on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(14) + ticks(15)) / 100.0
}

/// Eight clients sending 100-point bodies for `secs`: points/s.
async fn http_rate(base: &str, key: &str, secs: u64, t0: i64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..8i64 {
        let (base, key) = (base.to_string(), key.to_string());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut sent = 0u64;
            let mut ts = t0 + c * 1_000_000;
            while start.elapsed() < Duration::from_secs(secs) {
                let body: Vec<serde_json::Value> = (0..100)
                    .map(|i| serde_json::json!({"ts": ts + i, "v": i}))
                    .collect();
                ts += 100;
                let r = http
                    .post(format!("{base}/api/v1/devices/d1/telemetry"))
                    .basic_auth("d1", Some(&key))
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "POST answered {}", r.status());
                sent += 100;
            }
            Ok(sent)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// One publisher per device × `n` QoS 1 messages, 100 in flight each:
/// messages/s (`run` keeps the timestamps of two runs apart).
async fn mqtt_rate(
    addr: std::net::SocketAddr,
    devices: &[(String, String)],
    n: usize,
    run: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, (id, key)) in devices.iter().enumerate() {
        tasks.push(tokio::spawn(crate::bench_mqtt::publisher(
            addr,
            id.clone(),
            Some((id.clone(), key.clone())),
            format!("devices/{id}/telemetry"),
            n,
            QoS::AtLeastOnce,
            100,
            run * devices.len() + i,
        )));
    }
    for t in tasks {
        t.await??;
    }
    Ok((devices.len() * n) as f64 / t.elapsed().as_secs_f64())
}

/// Raw UDP frames sent one at a time, each waiting for its
/// acknowledgement (stored durably): round trip p50 / p99 (ms).
async fn udp_latency(
    addr: std::net::SocketAddr,
    device: &str,
    key: &str,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(addr).await?;
    let mut took = Vec::with_capacity(n);
    let mut buf = [0u8; 16];
    for i in 0..n {
        let body = format!("{{\"temperature\": {}}}", i % 100);
        let frame = twinhub_codec::layout::Frame {
            ack: true,
            cbor: false,
            json: true,
            seq: i as u16,
            device,
            key,
            payload: body.as_bytes(),
        }
        .encode();
        let t = Instant::now();
        sock.send(&frame).await?;
        let got = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await;
        anyhow::ensure!(
            matches!(got, Ok(Ok(6))) && buf[5] == 0,
            "frame {i} was not acknowledged as stored"
        );
        took.push(t.elapsed());
    }
    Ok((pct(&mut took, 0.5), pct(&mut took, 0.99)))
}

pub async fn run(secs: u64) -> anyhow::Result<()> {
    let Some(url) = std::env::var("TWINHUB_STORE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("cluster: skipped (needs TWINHUB_STORE_URL=postgres://… and NATS)");
        return Ok(());
    };
    let nats =
        std::env::var("TWINHUB_CLUSTER_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let schema = crate::bench::PgSchema {
        url,
        name: format!("benchcluster{}", std::process::id()),
    };
    let env = |node: &'static str| {
        vec![
            ("TWINHUB_STORE_SCHEMA", schema.name.clone()),
            ("TWINHUB_CLUSTER_NATS", nats.clone()),
            ("TWINHUB_CLUSTER_NODE_ID", node.to_string()),
            (
                "TWINHUB_SECRETS_KEY",
                "bench-cluster-secrets-key-0123456789".into(),
            ),
            (
                "TWINHUB_AUDIT_KEY",
                "bench-cluster-audit-key-0123456789".into(),
            ),
            ("TWINHUB_INGEST_UDP_LISTEN", "127.0.0.1:0".into()),
        ]
    };
    let spawn = |node: &'static str| {
        let e = env(node);
        let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Child::spawn(&pairs)
    };
    println!("cluster: a primary and a replica on one PostgreSQL schema, NATS at {nats}; the hop through the replica");
    let primary = spawn("primary")?;
    let mut replica = spawn("replica")?;
    let http = reqwest::Client::new();
    ready(&http, &replica.base, Duration::from_secs(30)).await?;
    let token = admin_token(&http, &primary.base).await?;
    let key = create_device(&http, &primary.base, &token, "d1").await?;
    let mut publishers = Vec::new();
    for i in 0..10 {
        let id = format!("m{i}");
        let k = create_device(&http, &primary.base, &token, &id).await?;
        publishers.push((id, k));
    }
    let port_of = |c: &Child, what: &str| -> anyhow::Result<std::net::SocketAddr> {
        Ok(c.ports[what]
            .as_str()
            .with_context(|| format!("no {what} port"))?
            .parse()?)
    };
    // Each connection of a rate phase takes its own range of readings
    // (1,000 s apart): recent, inside the default raw retention.
    let t0 = crate::bench::hours_before_start(20 * 24);
    for (name, node, k) in [
        ("straight to the primary", &primary, 0),
        ("through the replica", &replica, 1),
    ] {
        let (base, mqtt, udp) = (
            node.base.clone(),
            port_of(node, "mqtt")?,
            port_of(node, "udp")?,
        );
        let (p50, p99) = http_latency(&http, &base, &key, 1000, t0 + k * 10_000).await?;
        row(
            &format!("HTTP POST one point → 200 (durable) {name}, p50 / p99 (ms)"),
            format!("{p50:.2} / {p99:.2}"),
            "",
        );
        let pids = (primary.child.id(), replica.child.id());
        let cpu0 = (cpu_seconds(pids.0), cpu_seconds(pids.1));
        let started = Instant::now();
        let rate = http_rate(&base, &key, secs, t0 + (k + 1) * 50_000_000).await?;
        let points = rate * started.elapsed().as_secs_f64();
        let per_point = |pid: u32, before: f64| (cpu_seconds(pid) - before) / points * 1e6;
        row(
            &format!("HTTP ingest {name}, 8 clients × 100-point bodies (points/s)"),
            format!("{rate:.0}"),
            "",
        );
        row(
            &format!("  CPU per point of that ingest {name}: primary / replica (µs)"),
            format!(
                "{:.2} / {:.2}",
                per_point(pids.0, cpu0.0),
                per_point(pids.1, cpu0.1)
            ),
            "the replica decodes the JSON; the primary stores",
        );
        let rate = mqtt_rate(mqtt, &publishers, 5000, k as usize).await?;
        row(
            &format!("MQTT QoS 1 {name}, 10 publishers, into history (msg/s)"),
            format!("{rate:.0}"),
            "",
        );
        let (p50, p99) = udp_latency(udp, "d1", &key, 1000).await?;
        row(
            &format!("UDP frame → acknowledgement (durable) {name}, p50 / p99 (ms)"),
            format!("{p50:.2} / {p99:.2}"),
            "",
        );
    }
    let killed = Instant::now();
    drop(primary);
    let took = loop {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(replica.dir.path().join("ports.json"))?)
                .unwrap_or_default();
        if v.get("role").is_none() && v.get("mqtt").is_some() {
            ready(&http, &replica.base, Duration::from_secs(30)).await?;
            break killed.elapsed();
        }
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(30), "no takeover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    row(
        "replica serving as the primary after a SIGKILL of the primary (ms)",
        format!("{:.0}", took.as_secs_f64() * 1e3),
        "store reopened, batch log replayed",
    );
    replica.child.kill().ok();
    drop(replica);
    drop(schema);
    Ok(())
}
