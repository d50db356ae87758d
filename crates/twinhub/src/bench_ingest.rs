//! `twinhub bench ingest`: HTTP JSON ingest as a user measures it against
//! another database — a `twinhub serve` child process on a free port, the
//! bodies generated before the clock starts (1,000 series × 2,000 sensor
//! points at 1 s by default, one series per device, one request per
//! series), a few concurrent keep-alive clients. Reports points/s, the
//! server's CPU per point (from /proc, the client excluded), and after
//! compaction and a settle the data directory's `du` per point beside the
//! compressed chunk bytes per point.

use crate::bench::{row, BENCH_PASSWORD};
use anyhow::{anyhow, Context};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct IngestArgs {
    pub series: usize,
    pub points: usize,
    pub clients: usize,
    /// Seconds to wait after compaction before `du` (the disk settles).
    pub settle: u64,
}

/// A `twinhub serve` child on free ports in a temporary directory (the
/// benchmarks that measure the server's own CPU or memory use one).
pub struct Child {
    pub child: std::process::Child,
    pub base: String,
    /// The addresses it bound (`ports.json`).
    pub ports: serde_json::Value,
    pub dir: tempfile::TempDir,
    /// Dropped after the server is killed (`Drop for Child`).
    schema: Option<crate::bench::PgSchema>,
}

impl Child {
    pub fn spawn(env: &[(&str, &str)]) -> anyhow::Result<Child> {
        let dir = tempfile::tempdir()?;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["serve", "--data-dir"])
            .arg(dir.path())
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-level", "warn"])
            .env("TWINHUB_ADMIN_PASSWORD", BENCH_PASSWORD)
            // Thousands of registrations from one admin: no API limit.
            .env("TWINHUB_RATE_LIMITS_REQUESTS_PER_SECOND", "0.0")
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // A schema of its own, unless the caller shares one (a cluster).
        let schema = if env.iter().any(|(k, _)| *k == "TWINHUB_STORE_SCHEMA") {
            None
        } else {
            crate::bench::PgSchema::for_dir(dir.path())
        };
        if let Some(pg) = &schema {
            cmd.env("TWINHUB_STORE_SCHEMA", &pg.name);
        }
        let mut child = cmd.spawn()?;
        let ports = dir.path().join("ports.json");
        let t = Instant::now();
        while !ports.exists() {
            if let Some(status) = child.try_wait()? {
                return Err(anyhow!("the server exited before it was ready ({status})"));
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return Err(anyhow!("the server did not start in 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(&ports)?)?;
        let http = ports["http"].as_str().context("ports.json has no http")?;
        Ok(Child {
            child,
            base: format!("http://{http}"),
            ports,
            dir,
            schema,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU the server has used, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces) in ')'.
        let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks / hz)
    }
}

impl Child {
    /// Kills the server and hands back its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::TempDir::new().expect("a temporary directory");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.schema.take();
    }
}

/// Bytes under `dir`, as `du` counts them (allocated blocks).
pub fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du(&e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// A sensor-like series: a level, a slow sine and noise, 3 decimals.
fn sensor(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let level = 20.0 + (seed % 50) as f64;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((x >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.2;
            let v = level + (i as f64 / 600.0).sin() * 2.0 + noise;
            (v * 1000.0).round() / 1000.0
        })
        .collect()
}

/// Where each series' readings start: a day back, at the start of an
/// hour, so a series' 2,000 s of readings fill one store window (1 h) as
/// the figures since stop 8 were measured; starting mid-hour splits them
/// over two partial windows, about 0.1 more chunk bytes and 0.25 more
/// disk bytes per point.
fn window_start() -> i64 {
    crate::bench::hours_before_start(24).div_euclid(3_600_000) * 3_600_000
}

/// One request body per series: a JSON array of `{"ts", "value"}`.
fn bodies(series: usize, points: usize) -> Vec<bytes::Bytes> {
    let t0 = window_start();
    (0..series)
        .map(|s| {
            let mut b = String::with_capacity(points * 34);
            b.push('[');
            for (i, v) in sensor(s as u64, points).iter().enumerate() {
                if i > 0 {
                    b.push(',');
                }
                b.push_str(&format!(
                    "{{\"ts\":{},\"value\":{v}}}",
                    t0 + i as i64 * 1000
                ));
            }
            b.push(']');
            bytes::Bytes::from(b)
        })
        .collect()
}

/// The same points as InfluxDB line protocol, `ms` precision, in bodies
/// of 5,000 lines (as Influx clients batch them).
fn line_bodies(series: usize, points: usize) -> Vec<bytes::Bytes> {
    let t0 = window_start();
    let mut out = Vec::new();
    let mut b = String::with_capacity(5000 * 40);
    let mut lines = 0;
    for s in 0..series {
        for (i, v) in sensor(s as u64, points).iter().enumerate() {
            b.push_str(&format!("m,twin=s{s} value={v} {}\n", t0 + i as i64 * 1000));
            lines += 1;
            if lines == 5000 {
                out.push(bytes::Bytes::from(std::mem::take(&mut b)));
                lines = 0;
            }
        }
    }
    if !b.is_empty() {
        out.push(bytes::Bytes::from(b));
    }
    out
}

/// The line-protocol endpoint with the same points and clients.
async fn line_protocol(args: &IngestArgs) -> anyhow::Result<()> {
    let server = Child::spawn(&[])?;
    let http = reqwest::Client::new();
    let token = crate::bench::admin_token(&http, &server.base).await?;
    for s in 0..args.series {
        crate::bench::create_device(&http, &server.base, &token, &format!("s{s}")).await?;
    }
    let key: serde_json::Value = http
        .post(format!("{}/api/v1/apikeys", server.base))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "bench", "permissions": ["telemetry:write"]}))
        .send()
        .await?
        .json()
        .await?;
    let key = key["key"].as_str().context("an API key")?.to_string();
    let work = std::sync::Arc::new(std::sync::Mutex::new(line_bodies(args.series, args.points)));
    let cpu0 = server.cpu_seconds()?;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (work, base, key) = (work.clone(), server.base.clone(), key.clone());
        let client = reqwest::Client::new();
        tasks.spawn(async move {
            loop {
                let Some(body) = work.lock().expect("work").pop() else {
                    return Ok::<_, anyhow::Error>(());
                };
                let r = client
                    .post(format!("{base}/api/v2/write?bucket=b&precision=ms"))
                    .header("authorization", format!("Token {key}"))
                    .body(body)
                    .send()
                    .await?;
                if r.status() != 204 {
                    return Err(anyhow!("line protocol: {}", r.status()));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu0;
    let total = (args.series * args.points) as f64;
    row(
        "HTTP line protocol ingest, durable (points/s)",
        format!("{:.0}", total / secs),
        "target ≥ 500,000",
    );
    row(
        "server CPU per point, line protocol (µs)",
        format!("{:.2}", cpu * 1e6 / total),
        "",
    );
    Ok(())
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    line_protocol(&args).await?;
    let server = Child::spawn(&[])?;
    let http = reqwest::Client::new();
    let token = crate::bench::admin_token(&http, &server.base).await?;
    let mut devices = Vec::with_capacity(args.series);
    for s in 0..args.series {
        let id = format!("s{s}");
        let key = crate::bench::create_device(&http, &server.base, &token, &id).await?;
        devices.push((id, key));
    }
    let bodies = bodies(args.series, args.points);
    let body_bytes: usize = bodies.iter().map(|b| b.len()).sum();
    let work: Vec<_> = devices.into_iter().zip(bodies).collect();
    let work = std::sync::Arc::new(std::sync::Mutex::new(work));
    let cpu0 = server.cpu_seconds()?;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (work, base) = (work.clone(), server.base.clone());
        let client = reqwest::Client::new();
        tasks.spawn(async move {
            loop {
                let Some(((id, key), body)) = work.lock().expect("work").pop() else {
                    return Ok::<_, anyhow::Error>(());
                };
                let r = client
                    .post(format!("{base}/api/v1/devices/{id}/telemetry"))
                    .basic_auth(&id, Some(&key))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    return Err(anyhow!("{id}: {}", r.status()));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu0;
    let total = (args.series * args.points) as f64;
    println!(
        "  {} series × {} points, {} clients, {:.1} MB of JSON",
        args.series,
        args.points,
        args.clients,
        body_bytes as f64 / 1e6
    );
    row(
        "HTTP JSON ingest, durable (points/s)",
        format!("{:.0}", total / secs),
        "target ≥ 1,000,000",
    );
    row(
        "server CPU per point (µs)",
        format!("{:.2}", cpu * 1e6 / total),
        "target ≤ 1",
    );

    // Compaction runs once the head holds flush_points (2M by default) or
    // on the interval; wait for it, then let the disk settle.
    let t = Instant::now();
    loop {
        let head = crate::bench::metric(&http, &server.base, "twinhub_store_head_points").await?;
        if head == 0.0 || t.elapsed() > Duration::from_secs(900) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  compaction done {:.1} s after the last acknowledgement",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let disk = du(server.dir.path());
    // The chunk bytes are read from the store once the server is gone.
    let dir = server.stop();
    let store = crate::bench::open_store(dir.path())?;
    let (chunks, _) = crate::bench::chunk_bytes(&store, "s");
    drop(store);
    row(
        "compressed chunk bytes per point",
        format!("{:.2}", chunks as f64 / total),
        "",
    );
    row(
        &format!(
            "`du` of the data directory per point, {} s after compaction",
            args.settle
        ),
        format!("{:.2}", disk as f64 / total),
        "target ≤ 1.65, ≤ 1.5× chunks",
    );
    Ok(())
}
