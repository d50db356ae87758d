//! `twinhub bench ml`: inference of a 100-tree, depth-10 random forest
//! over 3 features — in process (one row with the per-tree interval, and
//! batches) and over HTTP with keep-alive — and, when Python with Flask,
//! gunicorn and scikit-learn is installed, seed 000's Flask service on the
//! same machine with the same load, for the ratio.

use crate::bench::{bench_server, BenchServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinhub_ml::{Manifest, Model, Predictor};

fn row(name: &str, value: String, target: &str) {
    println!("{name:<58} {value:>16}   {target}");
}

fn manifest() -> Value {
    json!({
        "name": "bench-forest", "version": "1",
        "features": [{"name": "temp", "min": 0, "max": 1}, {"name": "pressure", "min": 0, "max": 1}, {"name": "flow", "min": 0, "max": 1}],
        "output": {"name": "y"},
        "interval": {"method": "trees", "level": 0.9}
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Load `conc` workers on `url` for `secs`: (requests/s, p99 ms, errors).
async fn http_load(
    url: String,
    token: Option<String>,
    body: Value,
    conc: usize,
    secs: u64,
) -> (f64, f64, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..conc {
        let (client, url, token, errors) =
            (client.clone(), url.clone(), token.clone(), errors.clone());
        let mut body = body.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut i = w as u64;
            while Instant::now() < deadline {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Vary the inputs so no cache helps.
                body["temp"] = json!((i >> 11) as f64 / (1u64 << 53) as f64);
                let t = Instant::now();
                let mut req = client.post(&url).json(&body);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap_or_default());
    }
    let n = all.len();
    let p99 = if n > 0 { pct(&mut all, 0.99) } else { f64::NAN };
    (n as f64 / secs as f64, p99, errors.load(Ordering::Relaxed))
}

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    println!("\n== ml (random forest: 100 trees, depth 10, 3 features)");
    let onnx = twinhub_ml::synthetic::random_forest(100, 10, 3, 42);
    let m = Manifest::parse(manifest().to_string().as_bytes())?;
    let p = Predictor::new(Model::load(&onnx)?, m)?;
    let mut seed = 7u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    for _ in 0..1000 {
        p.predict(&[vec![rnd(), rnd(), rnd()]])?;
    }
    let mut lat = Vec::with_capacity(50_000);
    for _ in 0..50_000 {
        let r = vec![rnd(), rnd(), rnd()];
        let t = Instant::now();
        let out = p.predict(&[r])?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(out);
    }
    let p50 = pct(&mut lat, 0.5);
    let p99 = pct(&mut lat, 0.99);
    row(
        "one row + per-tree 5–95 % interval, in process, p50",
        format!("{p50:.1} µs"),
        "",
    );
    row(
        "one row + per-tree 5–95 % interval, in process, p99",
        format!("{p99:.1} µs"),
        "target ≤ 50 µs",
    );
    let batch: Vec<Vec<f32>> = (0..1000).map(|_| vec![rnd(), rnd(), rnd()]).collect();
    let t = Instant::now();
    let mut rows = 0usize;
    while t.elapsed() < Duration::from_secs(2) {
        std::hint::black_box(p.predict(&batch)?);
        rows += batch.len();
    }
    row(
        "batch of 1000 rows with intervals, in process",
        format!("{:.0} rows/s", rows as f64 / t.elapsed().as_secs_f64()),
        "target ≥ 100k rows/s",
    );

    // Over HTTP: a server on this machine, cache off so every call runs the model.
    let BenchServer {
        server,
        base,
        token,
        _schema,
        _dir,
    } = bench_server(|c| {
        c.ml.cache_entries = 0;
    })
    .await?;
    let http = reqwest::Client::new();
    let form = reqwest::multipart::Form::new()
        .part("model", reqwest::multipart::Part::bytes(onnx.clone()))
        .part(
            "manifest",
            reqwest::multipart::Part::text(manifest().to_string()),
        );
    let r = http
        .post(format!("{base}/api/v1/ml/models"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "upload failed: {}",
        r.text().await?
    );
    let body = json!({"temp": 0.5, "pressure": 0.5, "flow": 0.5});
    let (rps, p99, errors) = http_load(
        format!("{base}/api/v1/ml/models/bench-forest/predict"),
        Some(token),
        body.clone(),
        32,
        seconds,
    )
    .await;
    row(
        "HTTP predict with interval, keep-alive, 32 clients",
        format!("{rps:.0} req/s"),
        "target ≥ 10k/s",
    );
    row(
        "HTTP predict p99 (client and server share 2 cores)",
        format!("{p99:.2} ms"),
        &format!("{errors} errors"),
    );
    server.stop().await?;

    // Seed 000's Flask service under gunicorn, same load.
    let app_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed-flask");
    let has_python = std::process::Command::new("python3")
        .args(["-c", "import flask, gunicorn, sklearn"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_python || !app_dir.join("app.py").exists() {
        row(
            "seed 000 Flask + gunicorn (2 workers)",
            "skipped".into(),
            "pip install flask gunicorn scikit-learn",
        );
        return Ok(());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new("python3")
        .args([
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "warning",
            "app:app",
        ])
        .current_dir(&app_dir)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}/predict");
    let ready = Instant::now();
    loop {
        if http
            .post(&url)
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if ready.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            anyhow::bail!("the Flask service did not start");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (frps, fp99, ferr) = http_load(url, None, body, 32, seconds).await;
    // gunicorn's master stops its workers on SIGTERM.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    row(
        "seed 000 Flask + gunicorn (2 workers), same load",
        format!("{frps:.0} req/s"),
        &format!("p99 {fp99:.0} ms, {ferr} errors"),
    );
    if frps > 0.0 {
        row(
            "twinhub / seed requests per second",
            format!("{:.0}×", rps / frps),
            "target ≥ 100×",
        );
    }
    Ok(())
}
