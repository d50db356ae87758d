//! `twinhub bench store`, the figures a user gets in steady state: the
//! production store options (compactor ticking every 500 ms, flushes at
//! 2M points), a stream long enough that several flushes, chunk installs,
//! window merges and rollups happen inside the measurement, then RSS and
//! disk bytes per point at the end. And acknowledged → queryable measured
//! the way a client sees it: an HTTP POST, then a GET.

use crate::bench::{bench_server, create_device, row, BenchServer};
use serde_json::json;
use std::time::{Duration, Instant};
use twinhub_model::time::{US_PER_HOUR, US_PER_SEC};
use twinhub_model::Point;
use twinhub_server::clock::{self, Clock};
use twinhub_server::store::{DirLock, SeriesKey, Store, StoreOptions, WriteBatch};

pub(crate) fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `series` sensors at 1 Hz for `seconds`, values generated as they go (a
/// random walk rounded to 0.01, so nothing precomputed inflates RSS).
pub async fn sustained(series: usize, seconds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = {
        let p = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Store> {
            Ok(Store::open(
                DirLock::acquire(&p)?,
                crate::bench::on_postgres_if_asked(&p, StoreOptions::default()),
                clock::system(),
            )?)
        })
        .await??
    };
    let now = clock::SystemClock.now_us();
    let start =
        (now - US_PER_HOUR - seconds as i64 * US_PER_SEC).div_euclid(US_PER_HOUR) * US_PER_HOUR;
    let n = series * seconds;
    println!(
        "store, sustained: {series} series × {seconds} s at 1 Hz = {n} points, production options (flush at {} points, compactor every 500 ms)",
        StoreOptions::default().flush_points
    );
    let keys: Vec<SeriesKey> = (0..series)
        .map(|s| SeriesKey::new("default", &format!("s{s}"), "value"))
        .collect();
    let mut state: Vec<(u64, f64)> = (0..series as u64)
        .map(|s| {
            (
                s.wrapping_mul(0x9E3779B97F4A7C15) | 1,
                300.0 + (s % 100) as f64,
            )
        })
        .collect();
    let per_batch = 10;
    let metrics = &store.engine().metrics;
    let (flushes0, merges0) = (metrics.flushes.get(), metrics.merges.get());
    let t = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    let mut peak_rss = 0f64;
    for step in (0..seconds).step_by(per_batch) {
        let mut b = WriteBatch::default();
        for (key, (x, v)) in keys.iter().zip(state.iter_mut()) {
            let pts = (step..(step + per_batch).min(seconds))
                .map(|i| {
                    *x ^= *x << 13;
                    *x ^= *x >> 7;
                    *x ^= *x << 17;
                    let d = ((*x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2;
                    *v = ((*v + d) * 100.0).round() / 100.0;
                    Point::number(start + i as i64 * US_PER_SEC, *v)
                })
                .collect();
            b.entries.push((key.clone(), pts));
        }
        let st = store.clone();
        inflight.spawn(async move { st.append(b).await.expect("append") });
        while inflight.len() >= 8 {
            inflight.join_next().await;
        }
        if step % 600 == 0 {
            peak_rss = peak_rss.max(rss_mb());
        }
    }
    while inflight.join_next().await.is_some() {}
    let secs = t.elapsed().as_secs_f64();
    let flushes = metrics.flushes.get() - flushes0;
    let merges = metrics.merges.get() - merges0;
    row(
        "sustained durable ingest, compaction running (points/s)",
        format!("{:.0}", n as f64 / secs),
        &format!("{flushes} flushes, {merges} merges inside"),
    );
    row(
        "peak RSS while ingesting (MB)",
        format!("{peak_rss:.0}"),
        "",
    );
    // The head left below the flush size waits for flush_interval (10 min)
    // in service; flush it now so the disk figure covers every point, then
    // let the background merge and roll up what is left, as in service.
    let settle = Instant::now();
    {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.flush()).await??;
    }
    while store.stats().dirty_windows > 0 && settle.elapsed() < Duration::from_secs(900) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    row(
        "background catch-up after the stream (s)",
        format!("{:.1}", settle.elapsed().as_secs_f64()),
        "merges + rollups of closed windows",
    );
    row("RSS at the end (MB)", format!("{:.0}", rss_mb()), "");
    if std::env::var("TWINHUB_STORE_URL").is_ok_and(|u| !u.is_empty()) {
        row(
            "PostgreSQL bytes/point at the end (the schema's tables, indexes, TOAST)",
            format!("{:.2}", store.db_size() as f64 / n as f64),
            "pg_total_relation_size",
        );
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.close()).await?;
        return Ok(());
    }
    let bytes = dir_bytes(dir.path());
    row(
        "disk bytes/point at the end (database + WAL, all files)",
        format!("{:.2}", bytes as f64 / n as f64),
        "what `du` sees",
    );
    {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.close()).await?;
    }
    row(
        "disk bytes/point after a clean stop (WAL checkpointed)",
        format!("{:.2}", dir_bytes(dir.path()) as f64 / n as f64),
        "",
    );
    Ok(())
}

/// Acknowledged → queryable through the API: POST one point, then GET it.
pub async fn http_ack_to_query(samples: usize) -> anyhow::Result<()> {
    let BenchServer {
        server,
        base,
        token,
        _schema,
        _dir,
    } = bench_server(|_| {}).await?;
    let http = reqwest::Client::new();
    let key = create_device(&http, &base, &token, "ack").await?;
    let ts0 = clock::SystemClock.now_us() / 1000 - 60_000;
    let (mut post, mut get) = (Vec::new(), Vec::new());
    let mut misses = 0;
    for i in 0..samples as i64 {
        let ts = ts0 + i;
        let t = Instant::now();
        let r = http
            .post(format!("{base}/api/v1/devices/ack/telemetry"))
            .basic_auth("ack", Some(&key))
            .json(&json!({"ts": ts, "v": i}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "POST answered {}", r.status());
        post.push(t.elapsed());
        let t = Instant::now();
        let v: serde_json::Value = http
            .get(format!(
                "{base}/api/v1/twins/ack/telemetry/v?from={ts}&to={}",
                ts + 1
            ))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        get.push(t.elapsed());
        if v["points"].as_array().is_none_or(|p| p.is_empty()) {
            misses += 1;
        }
    }
    post.sort();
    get.sort();
    let p = |v: &[Duration], q: f64| {
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
    };
    row(
        "HTTP POST one point → 200 (durable), p50 / p99 (ms)",
        format!("{:.2} / {:.2}", p(&post, 0.5), p(&post, 0.99)),
        "",
    );
    row(
        "then GET finds it: misses, GET p99 (ms)",
        format!("{misses} / {:.2}", p(&get, 0.99)),
        "target: 0 misses, ≤ 50",
    );
    server.stop().await?;
    Ok(())
}
