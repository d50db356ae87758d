//! `twinhub bench twins`: a graph of 100,000 twins and ~300,000
//! relationships in the embedded store, then twin GET and PATCH rates over
//! HTTP with keep-alive and the latency of a one-JOIN query returning 100
//! rows.

use crate::bench::{bench_server, BenchServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct TwinArgs {
    pub plants: usize,
    pub reactors_per_plant: usize,
    pub sensors: usize,
    pub seconds: u64,
}

fn row(name: &str, value: String, note: &str) {
    println!("{name:<64} {value:>12}   {note}");
}

/// Runs `n` requests built by `make` with `conc` in flight.
pub(crate) async fn fan_out<F, Fut>(n: usize, conc: usize, make: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(make(i));
        while set.len() >= conc {
            set.join_next().await.expect("task")??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

pub async fn run(a: TwinArgs) -> anyhow::Result<()> {
    let BenchServer {
        server,
        base,
        token,
        _schema,
        _dir,
    } = bench_server(|_| {}).await?;
    let base = Arc::new(base);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let token: Arc<str> = token.into();
    let r = http
        .post(format!("{base}/api/v1/models"))
        .bearer_auth(&*token)
        .header("content-type", "application/json")
        .body(twinhub_server::ontologies::PROCESS_PLANT)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "model upload failed");
    let reactors = a.plants * a.reactors_per_plant;
    let put = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        move |path: String, body: Value| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let r = http
                    .put(format!("{base}{path}"))
                    .bearer_auth(&*token)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
                Ok(())
            }
        }
    };
    let t = Instant::now();
    let p = put.clone();
    fan_out(a.plants, 64, move |i| p(format!("/api/v1/twins/plant-{i}"), json!({"$metadata": {"$model": "dtmi:twinhub:plant:Plant;1"}, "name": format!("Plant {i}")}))).await?;
    let p = put.clone();
    fan_out(reactors, 64, move |i| {
        p(format!("/api/v1/twins/reactor-{i}"), json!({"$metadata": {"$model": "dtmi:twinhub:plant:Reactor;1"}, "name": format!("R-{i}"), "status": if i % 10 == 9 { "maintenance" } else { "running" }, "volume": 10.0}))
    })
    .await?;
    let p = put.clone();
    fan_out(a.sensors, 64, move |i| p(format!("/api/v1/twins/sensor-{i}"), json!({"$metadata": {"$model": "dtmi:twinhub:plant:Sensor;1"}, "measures": "temperature"}))).await?;
    let twins = a.plants + reactors + a.sensors;
    let (rpp, sensors) = (a.reactors_per_plant, a.sensors);
    let p = put.clone();
    fan_out(reactors, 64, move |i| {
        p(
            format!("/api/v1/twins/plant-{}/relationships/c-{i}", i / rpp),
            json!({"$relationshipName": "contains", "$targetId": format!("reactor-{i}")}),
        )
    })
    .await?;
    let p = put.clone();
    fan_out(reactors, 64, move |i| {
        let next = if (i + 1) % rpp == 0 {
            i + 1 - rpp
        } else {
            i + 1
        };
        p(
            format!("/api/v1/twins/reactor-{i}/relationships/f"),
            json!({"$relationshipName": "feeds", "$targetId": format!("reactor-{next}")}),
        )
    })
    .await?;
    let p = put.clone();
    fan_out(reactors * 4, 64, move |k| {
        let (i, j) = (k / 4, k % 4);
        p(format!("/api/v1/twins/reactor-{i}/relationships/s{j}"), json!({"$relationshipName": "hasSensor", "$targetId": format!("sensor-{}", (i * 4 + j) % sensors)}))
    })
    .await?;
    let rels = reactors * 6;
    let load_s = t.elapsed().as_secs_f64();
    println!("twins: {twins} twins and {rels} relationships written over HTTP in {load_s:.1} s ({:.0} writes/s)", (twins + rels) as f64 / load_s);

    // GET and PATCH rates: 32 clients on keep-alive connections.
    for (label, patch) in [
        ("twin GET over HTTP (req/s)", false),
        ("twin PATCH over HTTP (req/s)", true),
    ] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(a.seconds);
        let mut set = tokio::task::JoinSet::new();
        for c in 0..32usize {
            let (http, base, token, done) =
                (http.clone(), base.clone(), token.clone(), done.clone());
            set.spawn(async move {
                let mut i = c * 7919;
                while Instant::now() < deadline {
                    i = (i * 31 + 17) % reactors;
                    let url = format!("{base}/api/v1/twins/reactor-{i}");
                    let r = if patch {
                        http.patch(url).bearer_auth(&*token).json(&json!([{"op": "replace", "path": "/volume", "value": (i % 100) as f64 / 10.0}])).send().await
                    } else {
                        http.get(url).bearer_auth(&*token).send().await
                    };
                    if let Ok(r) = r {
                        if r.status().is_success() {
                            let _ = r.bytes().await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        let rate = done.load(Ordering::Relaxed) as f64 / a.seconds as f64;
        row(
            label,
            format!("{rate:.0}"),
            if patch {
                "target ≥ 5,000"
            } else {
                "target ≥ 20,000"
            },
        );
    }

    // One JOIN, filtered, 100 rows.
    let q = json!({"query": "SELECT R FROM DIGITALTWINS P JOIN R RELATED P.contains WHERE P.name = 'Plant 7' AND R.volume >= 0", "pageSize": 100});
    let mut times = Vec::new();
    let mut rows_back = 0;
    for _ in 0..41 {
        let t = Instant::now();
        let v: Value = http
            .post(format!("{base}/api/v1/query"))
            .bearer_auth(&*token)
            .json(&q)
            .send()
            .await?
            .json()
            .await?;
        times.push(t.elapsed());
        rows_back = v["value"].as_array().map(Vec::len).unwrap_or(0);
    }
    times.sort();
    row(
        &format!("one-JOIN filtered query, {rows_back} rows, p50 over HTTP (ms)"),
        format!("{:.2}", times[20].as_secs_f64() * 1e3),
        "target ≤ 20",
    );
    server.stop().await?;
    Ok(())
}
