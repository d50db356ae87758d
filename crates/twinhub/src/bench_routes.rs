//! `twinhub bench routes`: what routes cost and deliver, against a
//! `twinhub serve` child. (1) Ingest acknowledgement latency with no route
//! and with a live webhook route. (2) A backlog of N events queued while
//! the route is paused, then drained at full speed into each sink: a
//! webhook receiver in this process, and NATS JetStream and PostgreSQL on
//! this machine when they answer — events/s and the server's peak RSS
//! while draining.

use crate::bench_ingest::Child;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct RoutesArgs {
    pub events: usize,
    pub seconds: u64,
}

/// A webhook receiver that counts the events it is sent.
async fn receiver() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    use axum::routing::post;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let c = c.clone();
            async move {
                let n = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body)
                    .map(|v| v.len())
                    .unwrap_or(0);
                c.fetch_add(n as u64, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", l.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok((url, count))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Ctx {
    http: reqwest::Client,
    base: String,
    token: String,
    keys: Vec<(String, String)>,
}

/// Sends `n` single-message requests from the devices, 8 at a time;
/// the latency of each (ms), sorted.
async fn ingest(ctx: &Arc<Ctx>, n: usize, pace: Option<Duration>) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (ctx, next) = (ctx.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let (id, key) = &ctx.keys[(i + w) % ctx.keys.len()];
                let t = Instant::now();
                let r = ctx
                    .http
                    .post(format!("{}/api/v1/devices/{id}/telemetry", ctx.base))
                    .basic_auth(id, Some(key))
                    .header("content-type", "application/json")
                    .body(format!("{{\"temperature\":{}}}", 300 + i % 100))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "ingest answered {}", r.status());
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                if let Some(p) = pace {
                    tokio::time::sleep(p).await;
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by(|a, b| a.total_cmp(b));
    Ok(all)
}

async fn route_status(ctx: &Ctx, id: &str) -> anyhow::Result<Value> {
    Ok(ctx
        .http
        .get(format!("{}/api/v1/routes/{id}", ctx.base))
        .bearer_auth(&ctx.token)
        .send()
        .await?
        .json()
        .await?)
}

async fn put_route(ctx: &Ctx, id: &str, body: Value) -> anyhow::Result<()> {
    let r = ctx
        .http
        .put(format!("{}/api/v1/routes/{id}", ctx.base))
        .bearer_auth(&ctx.token)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "route {id}: {}", r.text().await?);
    Ok(())
}

/// Queues `n` events behind a paused route, resumes it and times the
/// drain; (events/s, peak server RSS in MB while draining).
async fn drain(
    ctx: &Arc<Ctx>,
    child: &Child,
    id: &str,
    sink: Value,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let route = json!({"select": {"types": ["telemetry"]}, "sink": sink,
        "batch": {"max": 1000, "linger": "5ms"}, "paused": true});
    put_route(ctx, id, route.clone()).await?;
    ingest(ctx, n, None).await?;
    let mut resume = route;
    resume["paused"] = json!(false);
    let t = Instant::now();
    put_route(ctx, id, resume).await?;
    let mut peak = 0;
    loop {
        peak = peak.max(crate::bench::rss_kb(child.pid()));
        let st = route_status(ctx, id).await?;
        if st["delivered"].as_u64().unwrap_or(0) >= n as u64 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "route {id} did not drain in 10 minutes: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    // Stop this route from taking the next sink's events.
    ctx.http
        .delete(format!("{}/api/v1/routes/{id}", ctx.base))
        .bearer_auth(&ctx.token)
        .send()
        .await?;
    Ok((rate, peak as f64 / 1024.0))
}

async fn reachable(addr: &str) -> bool {
    tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
        .await
        .is_ok_and(|r| r.is_ok())
}

pub async fn run(a: RoutesArgs) -> anyhow::Result<()> {
    println!(
        "\nroutes: a `twinhub serve` child; single-message HTTP telemetry from 8 clients; {} events per backlog",
        a.events
    );
    let child = Child::spawn(&[("TWINHUB_RATE_LIMITS_DEVICE_REQUESTS_PER_SECOND", "0.0")])?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()?;
    let token = crate::bench::admin_token(&http, &child.base).await?;
    let mut keys = Vec::new();
    for i in 0..50 {
        let id = format!("rt-dev-{i}");
        keys.push((
            id.clone(),
            crate::bench::create_device(&http, &child.base, &token, &id).await?,
        ));
    }
    let ctx = Arc::new(Ctx {
        http,
        base: child.base.clone(),
        token,
        keys,
    });
    let (url, received) = receiver().await?;

    // (1) Acknowledgement latency, paced to a steady ~2k requests/s.
    let n = (a.seconds as usize * 2000).max(2000);
    let pace = Some(Duration::from_millis(4));
    let base = ingest(&ctx, n, pace).await?;
    put_route(
        &ctx,
        "live",
        json!({"select": {"types": ["telemetry"]},
        "sink": {"kind": "webhook", "url": url}, "batch": {"max": 500, "linger": "5ms"}}),
    )
    .await?;
    let before = received.load(Ordering::Relaxed);
    let with = ingest(&ctx, n, pace).await?;
    let t = Instant::now();
    while received.load(Ordering::Relaxed) - before < n as u64
        && t.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "  ingest ack, no route:        p50 {:.2} ms  p99 {:.2} ms  ({n} requests at ~2k/s)",
        percentile(&base, 0.5),
        percentile(&base, 0.99)
    );
    println!(
        "  ingest ack, webhook route:   p50 {:.2} ms  p99 {:.2} ms  (+{:.2} ms at p99; all {} delivered)",
        percentile(&with, 0.5),
        percentile(&with, 0.99),
        percentile(&with, 0.99) - percentile(&base, 0.99),
        received.load(Ordering::Relaxed) - before
    );
    ctx.http
        .delete(format!("{}/api/v1/routes/live", ctx.base))
        .bearer_auth(&ctx.token)
        .send()
        .await?;

    // (2) Backlog drains.
    let idle = crate::bench::rss_kb(child.pid()) as f64 / 1024.0;
    let (rate, peak) = drain(
        &ctx,
        &child,
        "bench-webhook",
        json!({"kind": "webhook", "url": url}),
        a.events,
    )
    .await?;
    println!("  webhook backlog drain:       {rate:>9.0} events/s  (peak RSS {peak:.0} MB; {idle:.0} MB before)");
    if reachable("127.0.0.1:4222").await {
        let stream = format!("TWINHUB_BENCH_{}", std::process::id());
        let sink = json!({"kind": "nats", "url": "nats://127.0.0.1:4222",
            "subject": format!("twinhubbench.{}.{{type}}.{{twin}}", std::process::id()),
            "jetstream": true, "stream": stream});
        let (rate, peak) = drain(&ctx, &child, "bench-nats", sink, a.events).await?;
        println!("  NATS JetStream backlog drain: {rate:>8.0} events/s  (peak RSS {peak:.0} MB)");
        if let Ok(c) = async_nats::connect("nats://127.0.0.1:4222").await {
            let _ = async_nats::jetstream::new(c).delete_stream(&stream).await;
        }
    } else {
        println!("  NATS: nothing answers on 127.0.0.1:4222, skipped");
    }
    if reachable("127.0.0.1:5432").await {
        let table = format!("twinhub_bench_{}", std::process::id());
        let url = "postgres://root@127.0.0.1:5432/test";
        let sink = json!({"kind": "postgres", "url": url, "table": table});
        let (rate, peak) = drain(&ctx, &child, "bench-pg", sink, a.events).await?;
        println!("  PostgreSQL backlog drain:    {rate:>9.0} events/s  (peak RSS {peak:.0} MB)");
        if let Ok((c, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            let _ = c
                .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
                .await;
        }
    } else {
        println!("  PostgreSQL: nothing answers on 127.0.0.1:5432, skipped");
    }
    drop(child);
    Ok(())
}
