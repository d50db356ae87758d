//! `twinhub bench`: the performance figures of the history engine and the
//! HTTP ingest path on this machine, printed as a table. Nothing here is a
//! test; targets are checked by reading the numbers.

use clap::{Args, ValueEnum};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinhub_model::time::{US_PER_DAY, US_PER_HOUR, US_PER_MIN, US_PER_SEC};
use twinhub_model::{Bucketer, Point};
use twinhub_server::clock::{self, Clock};
use twinhub_server::config::Config;
use twinhub_server::server::ServerHandle;
use twinhub_server::store::{DirLock, SeriesKey, Store, StoreOptions, WriteBatch};

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Suite {
    All,
    Store,
    Http,
    Idle,
    Mqtt,
    Twins,
    Auth,
    Ml,
    Rules,
    Ingest,
    Routes,
    Frames,
    Opcua,
    Cluster,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Series for the store benchmark.
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// Seconds of 1 Hz data per series for the store benchmark.
    #[arg(long, default_value_t = 3600)]
    seconds: usize,
    /// Series for the sustained store benchmark.
    #[arg(long, default_value_t = 2000)]
    sustained_series: usize,
    /// Seconds of 1 Hz data per series for the sustained benchmark: three
    /// hours by default, so several flushes and window merges happen
    /// inside the measurement.
    #[arg(long, default_value_t = 10_800)]
    sustained_seconds: usize,
    /// Seconds to run the HTTP ingest benchmark.
    #[arg(long, default_value_t = 10)]
    http_seconds: u64,
    /// MQTT publisher connections.
    #[arg(long, default_value_t = 20)]
    mqtt_connections: usize,
    /// Messages per MQTT publisher.
    #[arg(long, default_value_t = 10_000)]
    mqtt_messages: usize,
    /// Plants in the twin-graph benchmark (each contains --reactors-per-plant reactors).
    #[arg(long, default_value_t = 490)]
    plants: usize,
    #[arg(long, default_value_t = 100)]
    reactors_per_plant: usize,
    /// Sensor twins (100,000 twins in all with the defaults).
    #[arg(long, default_value_t = 50_510)]
    sensors: usize,
    /// Twins in the rules benchmark (5 rules each).
    #[arg(long, default_value_t = 10_000)]
    rule_twins: usize,
    /// UDP frames the frames benchmark sends.
    #[arg(long, default_value_t = 400_000)]
    frames: usize,
    /// Reactors of the OPC UA benchmark (10 monitored items each).
    #[arg(long, default_value_t = 1000)]
    opcua_reactors: usize,
    /// Seconds the OPC UA benchmark measures.
    #[arg(long, default_value_t = 30)]
    opcua_seconds: u64,
    /// Events in each backlog the routes benchmark drains.
    #[arg(long, default_value_t = 200_000)]
    route_events: usize,
    /// Series (devices) in the ingest benchmark, one request each.
    #[arg(long, default_value_t = 1000)]
    ingest_series: usize,
    /// Points per series (per request) in the ingest benchmark.
    #[arg(long, default_value_t = 2000)]
    ingest_points: usize,
    /// Concurrent clients in the ingest benchmark.
    #[arg(long, default_value_t = 4)]
    ingest_clients: usize,
    /// Seconds the ingest benchmark lets the disk settle before `du`.
    #[arg(long, default_value_t = 30)]
    ingest_settle: u64,
    /// Idle MQTT devices to connect for the memory figure (0 skips).
    #[arg(long, default_value_t = 19_000)]
    mqtt_idle: usize,
    /// Dates every reading this many days further back. Past the default
    /// 30-day raw retention (e.g. 60), readings are a backfill — a gateway
    /// uploading weeks of buffered data — that the store retires as late
    /// data while it stores it.
    #[arg(long, default_value_t = 0)]
    reading_age_days: i64,
}

/// The machine's CPU time so far from `/proc/stat`: (stolen, total) in
/// ticks. On a virtual machine the host may run other guests on these
/// cores; the share it took during a measurement is printed beside a
/// latency figure, which it inflates.
pub(crate) fn cpu_ticks() -> (u64, u64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.strip_prefix("cpu ")?.to_string();
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time
            // is already inside user and nice).
            Some((*f.get(7)?, f.iter().take(8).sum()))
        })
        .unwrap_or((0, 0))
}

/// The share of CPU time stolen by the host since `since` (`cpu_ticks`), %.
pub(crate) fn steal_pct(since: (u64, u64)) -> f64 {
    let now = cpu_ticks();
    let total = now.1.saturating_sub(since.1);
    if total == 0 {
        return 0.0;
    }
    now.0.saturating_sub(since.0) as f64 * 100.0 / total as f64
}

/// Resident memory of a process (`/proc/{pid}/status`), in KB.
pub(crate) fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub(crate) fn row(name: &str, value: String, target: &str) {
    println!("{name:<58} {value:>16}   {target}");
}

/// A reading's timestamp `hours` before this run started (ms), for the
/// benchmarks that post to a server with the default retention. Readings
/// are recent, as a plant's are: with fixed dates (2023, 2025) every
/// point landed past the 30-day raw retention once the calendar had moved
/// on, and the store retired late data during the measurement, a path no
/// steady state takes. Senders advance their readings' clocks faster than
/// real time, so each benchmark starts far enough back to stay in the
/// past. `--reading-age-days` moves them all further back.
pub(crate) fn hours_before_start(hours: i64) -> i64 {
    static START_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let start = *START_MS.get_or_init(|| clock::SystemClock.now_us() / 1000);
    start - (hours + READING_AGE_HOURS.load(std::sync::atomic::Ordering::Relaxed)) * 3_600_000
}

/// `--reading-age-days`, in hours (set once, before any suite runs).
static READING_AGE_HOURS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn random_walk(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = 300.0 + (seed % 100) as f64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let step = ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2;
            v = ((v + step) * 100.0).round() / 100.0;
            v
        })
        .collect()
}

fn random_doubles(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x2545F4914F6CDD1D) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 1000.0
        })
        .collect()
}

pub(crate) fn open_store(dir: &std::path::Path) -> anyhow::Result<Store> {
    let opts = StoreOptions {
        tick: Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    Ok(Store::open(
        DirLock::acquire(dir)?,
        on_postgres_if_asked(dir, opts),
        clock::system(),
    )?)
}

/// Schemas of stores opened directly (not through a server), dropped when
/// the run ends.
static SCHEMAS: std::sync::Mutex<Vec<PgSchema>> = std::sync::Mutex::new(Vec::new());

/// The store options of a store opened directly, on PostgreSQL when
/// `TWINHUB_STORE_URL` asks for it.
pub(crate) fn on_postgres_if_asked(dir: &std::path::Path, opts: StoreOptions) -> StoreOptions {
    match PgSchema::for_dir(dir) {
        Some(pg) => {
            let opts = StoreOptions {
                url: Some(pg.url.clone()),
                schema: Some(pg.name.clone()),
                ..opts
            };
            SCHEMAS.lock().expect("schemas").push(pg);
            opts
        }
        None => opts,
    }
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Ingests `series` × `seconds` points at 1 Hz (batches of 10 timestamps ×
/// all series, 8 in flight) and returns points/s and the start time.
async fn ingest(
    store: &Store,
    prefix: &str,
    series: usize,
    seconds: usize,
    start: i64,
    values: impl Fn(u64, usize) -> Vec<f64>,
) -> f64 {
    let cols: Vec<Arc<Vec<f64>>> = (0..series)
        .map(|s| Arc::new(values(s as u64, seconds)))
        .collect();
    let per_batch = 10;
    let t = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    for chunk in (0..seconds).step_by(per_batch) {
        let mut b = WriteBatch::default();
        for (s, col) in cols.iter().enumerate() {
            let pts = (chunk..(chunk + per_batch).min(seconds))
                .map(|i| Point::number(start + i as i64 * US_PER_SEC, col[i]))
                .collect();
            b.entries.push((
                SeriesKey::new("default", &format!("{prefix}{s}"), "value"),
                pts,
            ));
        }
        let st = store.clone();
        inflight.spawn(async move { st.append(b).await.expect("append") });
        while inflight.len() >= 8 {
            inflight.join_next().await;
        }
    }
    while inflight.join_next().await.is_some() {}
    (series * seconds) as f64 / t.elapsed().as_secs_f64()
}

pub(crate) fn chunk_bytes(store: &Store, prefix: &str) -> (i64, i64) {
    store.chunk_bytes_of_twins(prefix).unwrap_or((0, 0))
}

async fn store_suite(args: &BenchArgs) -> anyhow::Result<()> {
    crate::bench_sustained::sustained(args.sustained_series, args.sustained_seconds).await?;
    crate::bench_sustained::http_ack_to_query(1000).await?;
    println!("store, burst (compactor idle, for comparison):");
    let dir = tempfile::tempdir()?;
    let store = blocking({
        let p = dir.path().to_path_buf();
        move || open_store(&p)
    })
    .await?;
    let now = clock::SystemClock.now_us();
    let start = (now - 2 * US_PER_HOUR - args.seconds as i64 * US_PER_SEC).div_euclid(US_PER_HOUR)
        * US_PER_HOUR;
    let n = args.series * args.seconds;
    println!(
        "store: {} series × {} s at 1 Hz = {} points",
        args.series, args.seconds, n
    );

    let rate = ingest(
        &store,
        "walk",
        args.series,
        args.seconds,
        start,
        random_walk,
    )
    .await;
    row(
        "burst: durable ingest, compactor idle (points/s)",
        format!("{rate:.0}"),
        "target ≥ 1,000,000",
    );
    let rate2 = ingest(&store, "rand", 100, args.seconds, start, random_doubles).await;
    row(
        "burst: durable ingest, full-precision doubles (points/s)",
        format!("{rate2:.0}"),
        "",
    );

    // Acknowledged → queryable: read each point right after its ack.
    let mut lat = Vec::with_capacity(1000);
    let key = SeriesKey::new("default", "ack", "value");
    for i in 0..1000i64 {
        let ts = now + i;
        store
            .append(WriteBatch {
                entries: vec![(key.clone(), vec![Point::number(ts, i as f64)])],
            })
            .await?;
        let t = Instant::now();
        loop {
            let got = store.raw(&key, ts, ts + 1, 1)?;
            if !got.is_empty() {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    row(
        "acknowledged → queryable in process, p99 (ms)",
        format!("{:.3}", lat[989].as_secs_f64() * 1e3),
        "target ≤ 50",
    );

    let t = Instant::now();
    blocking({
        let s = store.clone();
        move || {
            s.flush()?;
            s.compact_now()
        }
    })
    .await?;
    row(
        "flush + merge + rollups of everything (s)",
        format!("{:.2}", t.elapsed().as_secs_f64()),
        "background",
    );
    let (b, c) = chunk_bytes(&store, "walk");
    row(
        "bytes/point, random walk rounded to 0.01 (chunks)",
        format!("{:.3}", b as f64 / c.max(1) as f64),
        "target ≤ 3",
    );
    let (b2, c2) = chunk_bytes(&store, "rand");
    row(
        "bytes/point, full-precision random doubles (chunks)",
        format!("{:.3}", b2 as f64 / c2.max(1) as f64),
        "reported",
    );

    let minute = Bucketer::new(US_PER_MIN, None).unwrap();
    let t = Instant::now();
    let s2 = store.clone();
    let series = args.series;
    // One multi-series query, as a dashboard asks it (`POST
    // /history/query` reads all series in one snapshot).
    let q = blocking(move || {
        let keys: Vec<SeriesKey> = (0..series)
            .map(|s| SeriesKey::new("default", &format!("walk{s}"), "value"))
            .collect();
        s2.aggregate_many(&keys, start, start + US_PER_HOUR, &minute)
            .unwrap()
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
    })
    .await;
    row(
        &format!(
            "{} series × 1 h → 1-minute buckets (ms, {q} buckets, one query)",
            args.series
        ),
        format!("{:.1}", t.elapsed().as_secs_f64() * 1e3),
        "target ≤ 150",
    );

    // One series with a full day at 1 Hz.
    let day_start = (now - 2 * US_PER_HOUR - US_PER_DAY).div_euclid(US_PER_HOUR) * US_PER_HOUR;
    ingest(&store, "day", 1, 86_400, day_start, random_walk).await;
    blocking({
        let s = store.clone();
        move || {
            s.flush()?;
            s.compact_now()
        }
    })
    .await?;
    let s3 = store.clone();
    let times = blocking(move || {
        let minute = Bucketer::new(US_PER_MIN, None).unwrap();
        let mut v: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                let r = s3
                    .aggregate(
                        &SeriesKey::new("default", "day0", "value"),
                        day_start,
                        day_start + US_PER_DAY,
                        &minute,
                    )
                    .unwrap();
                assert_eq!(r.len(), 1440);
                t.elapsed()
            })
            .collect();
        v.sort();
        v[10]
    })
    .await;
    row(
        "1 series × 1 day → 1-minute buckets, median (ms)",
        format!("{:.2}", times.as_secs_f64() * 1e3),
        "target ≤ 5",
    );
    blocking(move || store.close()).await;
    Ok(())
}

/// The admin password of bench servers.
pub const BENCH_PASSWORD: &str = "bench-password-1";

/// A whole server on free ports in a temporary directory (HTTP only unless
/// `tweak` says otherwise), with an admin token.
pub struct BenchServer {
    pub server: ServerHandle,
    pub base: String,
    pub token: String,
    /// Dropped after the server stops.
    pub _schema: Option<PgSchema>,
    /// Removed when dropped, after the server stops.
    pub _dir: tempfile::TempDir,
}

/// With `TWINHUB_STORE_URL=postgres://…` set, benchmarked servers keep
/// their store in that PostgreSQL, each in a schema of its own, dropped
/// once the server is gone.
pub struct PgSchema {
    pub url: String,
    pub name: String,
}

impl PgSchema {
    pub fn for_dir(dir: &std::path::Path) -> Option<PgSchema> {
        let url = std::env::var("TWINHUB_STORE_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let name = dir
            .file_name()?
            .to_string_lossy()
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>();
        Some(PgSchema {
            url,
            name: format!("bench{name}"),
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = twinhub_server::store::pg::drop_schema(&self.url, &self.name);
    }
}

pub async fn bench_server(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<BenchServer> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.data_dir = dir.path().to_path_buf();
    config.http.listen = "127.0.0.1:0".into();
    config.mqtt.listen = String::new();
    config.admin_password = Some(BENCH_PASSWORD.into());
    config.log.level = "warn".into();
    // Benchmarks measure the server, not the per-user API limiter (set-ups
    // register thousands of things with one admin token).
    config.rate_limits.requests_per_second = 0.0;
    let schema = PgSchema::for_dir(dir.path());
    if let Some(pg) = &schema {
        config.store.url = pg.url.clone();
        config.store.schema = pg.name.clone();
    }
    tweak(&mut config);
    // The in-process server logs only when asked (`RUST_LOG=…`): the
    // figures are the output.
    if std::env::var_os("RUST_LOG").is_some() {
        crate::init_logging(&config);
    }
    let server = ServerHandle::start(config, clock::system()).await?;
    let base = format!("http://{}", server.ready.http);
    let token = admin_token(&reqwest::Client::new(), &base).await?;
    Ok(BenchServer {
        server,
        base,
        token,
        _schema: schema,
        _dir: dir,
    })
}

/// One Prometheus sample of a server's `/metrics` (0 when absent).
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

/// Logs in as the bench admin.
pub async fn admin_token(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    crate::admin::login(http, base, "admin", BENCH_PASSWORD)
        .await?
        .map_err(|why| anyhow::anyhow!("login refused: {why}"))
}

/// Registers a device through the API and returns its key.
pub async fn create_device(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
) -> anyhow::Result<String> {
    let v: serde_json::Value = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(token)
        .json(&json!({"id": id}))
        .send()
        .await?
        .json()
        .await?;
    v["key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("registering device {id} was refused: {v}"))
}

async fn http_suite(args: &BenchArgs) -> anyhow::Result<()> {
    let BenchServer {
        server,
        base,
        token,
        _schema,
        _dir,
    } = bench_server(|_| {}).await?;
    let client = reqwest::Client::new();
    let conns = 16;
    let msgs_per_req = 100;
    let mut tasks = tokio::task::JoinSet::new();
    let deadline = Instant::now() + Duration::from_secs(args.http_seconds);
    for c in 0..conns {
        let id = format!("bench{c}");
        let key = create_device(&client, &base, &token, &id).await?;
        let (client, base) = (reqwest::Client::new(), base.clone());
        tasks.spawn(async move {
            // One message a second of the readings' time: 10 s at 300k
            // points/s take each connection about two days on.
            let mut ts = hours_before_start(20 * 24);
            let mut points = 0u64;
            while Instant::now() < deadline {
                let body: Vec<serde_json::Value> = (0..msgs_per_req)
                    .map(|i| {
                        ts += 1000;
                        json!({"ts": ts, "temperature": 350.0 + (i % 10) as f64 * 0.1, "pressure": 6.01, "flow_rate": 100.5})
                    })
                    .collect();
                let r = client.post(format!("{base}/api/v1/devices/{id}/telemetry")).basic_auth(&id, Some(&key)).json(&body).send().await;
                if matches!(r, Ok(ref r) if r.status().is_success()) {
                    points += (msgs_per_req * 3) as u64;
                }
            }
            points
        });
    }
    let t = Instant::now();
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.unwrap_or(0);
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    row(
        &format!("HTTP batch ingest, {conns} devices × {msgs_per_req} msgs × 3 points (points/s)"),
        format!("{rate:.0}"),
        "target ≥ 300,000",
    );
    server.stop().await?;
    Ok(())
}

fn idle_suite() -> anyhow::Result<()> {
    let server = crate::bench_ingest::Child::spawn(&[])?;
    std::thread::sleep(Duration::from_secs(2));
    let kb = rss_kb(server.pid()) as f64;
    drop(server);
    row(
        "idle RSS of `twinhub serve`, empty data dir (MB)",
        format!("{:.1}", kb / 1024.0),
        "target ≤ 30",
    );
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.reading_age_days >= 0,
        "--reading-age-days must be 0 or more (got {})",
        args.reading_age_days
    );
    READING_AGE_HOURS.store(
        args.reading_age_days * 24,
        std::sync::atomic::Ordering::Relaxed,
    );
    println!(
        "twinhub bench on {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    if let Ok(url) = std::env::var("TWINHUB_STORE_URL") {
        let shown = twinhub_server::store::StoreConfig {
            url,
            ..Default::default()
        }
        .shown();
        println!("stores on {shown}, a schema per store (TWINHUB_STORE_URL)");
    }
    let res = run_suites(args).await;
    SCHEMAS.lock().expect("schemas").clear();
    res
}

async fn run_suites(args: BenchArgs) -> anyhow::Result<()> {
    if matches!(args.suite, Suite::All | Suite::Store) {
        store_suite(&args).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Http) {
        http_suite(&args).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Ingest) {
        crate::bench_ingest::run(crate::bench_ingest::IngestArgs {
            series: args.ingest_series,
            points: args.ingest_points,
            clients: args.ingest_clients,
            settle: args.ingest_settle,
        })
        .await?;
    }
    if matches!(args.suite, Suite::All | Suite::Idle) {
        blocking(idle_suite).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Ml) {
        crate::bench_ml::run(args.http_seconds).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Auth) {
        crate::bench_auth::run().await?;
    }
    if matches!(args.suite, Suite::All | Suite::Twins) {
        crate::bench_twins::run(crate::bench_twins::TwinArgs {
            plants: args.plants,
            reactors_per_plant: args.reactors_per_plant,
            sensors: args.sensors,
            seconds: 5,
        })
        .await?;
    }
    if matches!(args.suite, Suite::All | Suite::Rules) {
        crate::bench_rules::run(crate::bench_rules::RulesArgs {
            twins: args.rule_twins,
            seconds: args.http_seconds,
        })
        .await?;
    }
    if matches!(args.suite, Suite::All | Suite::Routes) {
        crate::bench_routes::run(crate::bench_routes::RoutesArgs {
            events: args.route_events,
            seconds: args.http_seconds,
        })
        .await?;
    }
    if matches!(args.suite, Suite::All | Suite::Frames) {
        crate::bench_frames::run(args.frames).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Opcua) {
        crate::bench_opcua::run(crate::bench_opcua::OpcUaArgs {
            reactors: args.opcua_reactors,
            seconds: args.opcua_seconds,
        })
        .await?;
    }
    if matches!(args.suite, Suite::All | Suite::Cluster) {
        crate::bench_cluster::run(args.http_seconds.min(5)).await?;
    }
    if matches!(args.suite, Suite::All | Suite::Mqtt) {
        crate::bench_mqtt::run(crate::bench_mqtt::MqttArgs {
            connections: args.mqtt_connections,
            messages: args.mqtt_messages,
            idle: args.mqtt_idle,
        })
        .await?;
    }
    Ok(())
}
