//! `twinhub bench rules`: 10,000 twins watched by 5 rules each (a
//! condition with hysteresis, a condition with a minimum duration, a
//! z-score, a no-data timer and a calculated property), fed over HTTP.
//! Reports the sustained evaluation rate (from the server's own counter,
//! until the rule engine has caught up with everything ingested), the
//! latency from a POST sent to the alarm's event at 50k events/s (open loop),
//! and the memory per rule × twin.
//!
//! The server is a `twinhub serve` child process and the load comes from
//! the lean client of `bench_load` (request heads encoded once per device,
//! no per-request task): the figures are the server's, with as little of
//! the two cores as possible spent making the load.

use crate::bench::{create_device, hours_before_start, row};
use crate::bench_ingest::Child;
use crate::bench_load::{self as load, Conn};
use crate::bench_twins::fan_out;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages per request of the paced load (a gateway's batch).
const BATCH: u64 = 10;

pub struct RulesArgs {
    pub twins: usize,
    pub seconds: u64,
}

pub async fn run(a: RulesArgs) -> anyhow::Result<()> {
    let server = Child::spawn(&[])?;
    let base = server.base.clone();
    let addr = load::addr(&base)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let token = crate::bench::admin_token(&http, &base).await?;
    let rss_mb = || crate::bench::rss_kb(server.pid()) as f64 / 1024.0;
    println!(
        "\nrules: {} twins × 5 rules (condition, condition for 10 s, z-score, no-data, calculated), telemetry over HTTP",
        a.twins
    );
    let model = json!([{"@context": "dtmi:dtdl:context;3", "@id": "dtmi:bench:Unit;1", "@type": "Interface",
        "contents": [
            {"@type": "Telemetry", "name": "temperature", "schema": "double"},
            {"@type": "Telemetry", "name": "pressure", "schema": "double"},
            {"@type": "Telemetry", "name": "temperature_f", "schema": "double"},
            {"@type": "Property", "name": "status", "schema": "string", "writable": true}]}]);
    let r = http
        .post(format!("{base}/api/v1/models"))
        .bearer_auth(&token)
        .json(&model)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "model upload failed");
    let (base, token): (Arc<str>, Arc<str>) = (base.into(), token.into());
    let keys = Arc::new(std::sync::Mutex::new(vec![String::new(); a.twins]));
    let t = Instant::now();
    {
        let (http, base, token, keys) = (http.clone(), base.clone(), token.clone(), keys.clone());
        fan_out(a.twins, 32, move |i| {
            let (http, base, token, keys) =
                (http.clone(), base.clone(), token.clone(), keys.clone());
            async move {
                let id = format!("u{i}");
                let r = http
                    .put(format!("{base}/api/v1/twins/{id}"))
                    .bearer_auth(&*token)
                    .json(
                        &json!({"$metadata": {"$model": "dtmi:bench:Unit;1"}, "status": "running"}),
                    )
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "twin {id}: {}", r.status());
                let key = create_device(&http, &base, &token, &id).await?;
                keys.lock().expect("keys")[i] = key;
                Ok(())
            }
        })
        .await?;
    }
    println!(
        "  (set-up: {} twins and devices in {:.1} s)",
        a.twins,
        t.elapsed().as_secs_f64()
    );
    let rules = [
        json!({"id": "hot", "name": "hot", "select": {"model": "dtmi:bench:Unit;1"},
            "condition": "temperature > 390 && status == 'running'", "clear": "temperature < 380",
            "alarm": {"type": "Hot", "severity": "major"}}),
        json!({"id": "pressure", "name": "pressure high for 10 s", "select": {"model": "dtmi:bench:Unit;1"},
            "condition": "pressure > 9.0", "for": "10s", "alarm": {"type": "Pressure", "severity": "minor"}}),
        json!({"id": "zscore", "name": "temperature anomaly", "kind": "statistical", "select": {"model": "dtmi:bench:Unit;1"},
            "statistic": {"property": "temperature", "method": "zscore", "threshold": 6, "window": 100, "warmup": 30},
            "alarm": {"type": "Anomaly", "severity": "warning"}}),
        json!({"id": "silent", "name": "no data", "kind": "no_data", "select": {"model": "dtmi:bench:Unit;1"},
            "timeout": "1h", "alarm": {"type": "NoData", "severity": "warning"}}),
        json!({"id": "fahrenheit", "name": "°F", "kind": "calculated", "select": {"model": "dtmi:bench:Unit;1"},
            "expression": "temperature * 1.8 - 459.67", "output": "temperature_f"}),
    ];
    for r in rules {
        let resp = http
            .post(format!("{base}/api/v1/rules"))
            .bearer_auth(&*token)
            .json(&r)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "rule: {}", resp.text().await?);
    }
    let rss0 = rss_mb();
    let evals0 = crate::bench::metric(&http, &base, "twinhub_rule_evaluations_total").await?;
    let busy0 =
        crate::bench::metric(&http, &base, "twinhub_rule_engine_busy_seconds_total").await?;
    let lag = "twinhub_outbox_consumer_lag{consumer=\"rules\"}";

    // Sustained: 64 connections, each over its share of the twins, 10
    // messages a request, as fast as the server answers; the measurement
    // ends when the engine has caught up.
    let heads: Arc<Vec<Vec<u8>>> = {
        let keys = keys.lock().expect("keys");
        let body_len = body_len();
        Arc::new(
            (0..a.twins)
                .map(|i| {
                    let id = format!("u{i}");
                    load::post_head(
                        &format!("/api/v1/devices/{id}/telemetry"),
                        &load::basic(&id, &keys[i]),
                        body_len,
                    )
                })
                .collect(),
        )
    };
    let writers = 64;
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (heads, n) = (heads.clone(), a.twins);
        set.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let (mut sent, mut ts, mut i, mut body) = (0u64, hours_before_start(12), w, Vec::new());
            while Instant::now() < deadline {
                load::readings(&mut body, BATCH, &mut ts, 100, |j| {
                    (
                        350.0 + ((i as u64 + j) % 7) as f64 * 0.5,
                        6.0 + (j % 3) as f64 * 0.1,
                    )
                });
                if conn.send(&heads[i], &body).await? == 200 {
                    sent += BATCH;
                }
                i = (i + writers) % n;
            }
            anyhow::Ok(sent)
        });
    }
    let mut events = 0u64;
    while let Some(r) = set.join_next().await {
        events += r??;
    }
    let ingest_s = t.elapsed().as_secs_f64();
    let caught_up = Instant::now() + Duration::from_secs(300);
    loop {
        let l = crate::bench::metric(&http, &base, lag).await?;
        if l <= 0.0 || Instant::now() > caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_s = t.elapsed().as_secs_f64();
    let evals =
        crate::bench::metric(&http, &base, "twinhub_rule_evaluations_total").await? - evals0;
    let busy =
        crate::bench::metric(&http, &base, "twinhub_rule_engine_busy_seconds_total").await? - busy0;
    let rss1 = rss_mb();
    row(
        "telemetry events ingested (events/s, while the rules ran)",
        format!("{:.0}", events as f64 / ingest_s),
        &format!("{events} events in {ingest_s:.1} s"),
    );
    row(
        "rule evaluations, sustained until caught up (/s)",
        format!("{:.0}", evals / total_s),
        &format!("{evals:.0} in {total_s:.1} s (bounded by ingest here)"),
    );
    row(
        "rule evaluations per second of engine time (capacity)",
        format!("{:.0}", evals / busy.max(1e-9)),
        &format!("{busy:.2} s busy; target ≥ 200,000"),
    );
    let pairs = (a.twins * 5) as f64;
    row(
        "memory per rule × twin (KB, RSS growth / pairs)",
        format!("{:.2}", (rss1 - rss0) * 1024.0 / pairs),
        "upper bound: includes the store's head of the ingested points",
    );

    let key0 = keys.lock().expect("keys")[0].clone();
    let probe = Probe {
        addr,
        token: &token,
        head: load::post_head(
            "/api/v1/devices/u0/telemetry",
            &load::basic("u0", &key0),
            probe_body(0, 400.0).len(),
        ),
    };
    for rate in [50_000.0, 10_000.0] {
        latency(&http, &base, &probe, &heads, a.seconds, rate).await?;
    }
    drop(server);
    Ok(())
}

/// The length of a load request's body (fixed: see `load::readings`).
fn body_len() -> usize {
    let mut b = Vec::new();
    load::readings(&mut b, BATCH, &mut hours_before_start(12), 100, |_| {
        (350.0, 6.0)
    });
    b.len()
}

/// Twin u0's spike or recovery (fixed width).
fn probe_body(ts: i64, temperature: f64) -> Vec<u8> {
    format!(
        "{{\"ts\":{},\"temperature\":{temperature:.1}}}",
        hours_before_start(2) + ts
    )
    .into_bytes()
}

/// What the latency phases need to post to twin u0 and watch its alarms.
struct Probe<'a> {
    addr: SocketAddr,
    token: &'a str,
    head: Vec<u8>,
}

/// Times a spike (from its POST sent) → alarm event on twin u0 while the other twins
/// get `rate` events/s.
async fn latency(
    http: &reqwest::Client,
    base: &str,
    probe: &Probe<'_>,
    heads: &Arc<Vec<Vec<u8>>>,
    seconds: u64,
    rate: f64,
) -> anyhow::Result<()> {
    // Latency at a paced rate: probes on twin u0 alternate a
    // spike and a recovery; each spike's alarm event is timed from the
    // sending of its POST.
    // Start from a caught-up engine, so one phase's backlog does not
    // count in the next.
    let caught_up = Instant::now() + Duration::from_secs(300);
    while crate::bench::metric(
        http,
        base,
        "twinhub_outbox_consumer_lag{consumer=\"rules\"}",
    )
    .await?
        > 0.0
        && Instant::now() < caught_up
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The probe is an API client of its own (as a dashboard or an
    // integration would be): its own thread and runtime, so the figure
    // does not include waiting behind the load generator's tasks for a
    // turn on the same two async workers.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let (addr, token, head) = (probe.addr, probe.token.to_string(), probe.head.clone());
    let prober = std::thread::Builder::new()
        .name("bench-probe".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut stream =
                    load::EventStream::open(addr, "/api/v1/events?types=alarm&twin=u0", &token)
                        .await?;
                let mut conn = Conn::connect(addr).await?;
                let _ = ready_tx.send(());
                let stop = go_rx.recv()?;
                probe_until(&mut conn, &mut stream, &head, stop).await
            })
        })?;
    if ready_rx.await.is_err() {
        return match prober.join() {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(anyhow::anyhow!("the probe's thread panicked")),
        };
    }
    let started = Instant::now();
    let ticks = crate::bench::cpu_ticks();
    let stop = started + Duration::from_secs(seconds.max(5));
    go_tx.send(stop)?;
    // Open loop: each connection sends its share on a schedule, whatever
    // the answers' times (a late answer makes the next requests go out
    // back to back until the schedule is met again), so the offered rate
    // holds; 64 connections bound what is in flight.
    let conns = 64;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..conns {
        let (heads, addr) = (heads.clone(), probe.addr);
        set.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let per_conn = rate / BATCH as f64 / conns as f64;
            let n = heads.len();
            let (mut sent, mut i, mut ts) = (0u64, c, hours_before_start(5));
            let mut refused = std::collections::BTreeMap::<u16, u64>::new();
            let mut body = Vec::new();
            while Instant::now() < stop {
                let due = started + Duration::from_secs_f64(sent as f64 / per_conn);
                tokio::time::sleep_until(due.into()).await;
                load::readings(&mut body, BATCH, &mut ts, 100, |_| (351.0, 6.0));
                match conn.send(&heads[1 + i % (n - 1)], &body).await? {
                    200 => {}
                    status => *refused.entry(status).or_default() += 1,
                }
                sent += 1;
                i += conns;
            }
            let refused_n: u64 = refused.values().sum();
            anyhow::Ok(((sent - refused_n) * BATCH, refused))
        });
    }
    // Where the alarm path waits: the engine's backlog behind the outbox
    // and the writer's queue, sampled each second through the phase.
    let sampler = {
        let (http, base) = (http.clone(), base.to_string());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < stop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let lag = crate::bench::metric(
                    &http,
                    &base,
                    "twinhub_outbox_consumer_lag{consumer=\"rules\"}",
                )
                .await
                .unwrap_or(0.0);
                let queue = crate::bench::metric(&http, &base, "twinhub_store_queue_depth")
                    .await
                    .unwrap_or(0.0);
                samples.push((lag, queue));
            }
            samples
        })
    };
    let Probed {
        mut lat,
        mut acks,
        mut legs,
        slow_acks,
    } = tokio::task::spawn_blocking(move || prober.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the probe's thread panicked"))??;
    let (mut acked_events, mut refused) = (0u64, std::collections::BTreeMap::<u16, u64>::new());
    while let Some(r) = set.join_next().await {
        let (events, by_status) = r??;
        acked_events += events;
        for (status, n) in by_status {
            *refused.entry(status).or_default() += n;
        }
    }
    let samples = sampler.await.unwrap_or_default();
    let max = |f: fn(&(f64, f64)) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    let (lag_max, queue_max) = (max(|s| s.0), max(|s| s.1));
    for v in [&mut lat, &mut acks, &mut legs] {
        v.sort_by(f64::total_cmp);
    }
    let quantile = |v: &[f64], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let q = |p: f64| quantile(&lat, p);
    let achieved = acked_events as f64 / started.elapsed().as_secs_f64();
    let steal = crate::bench::steal_pct(ticks);
    row(
        &format!(
            "POST sent → alarm event, {:.0}k events/s offered (ms)",
            rate / 1000.0
        ),
        format!("p50 {:.2} / p99 {:.2}", q(0.5), q(0.99)),
        &format!(
            "host took {steal:.0} % of the CPU; legs: POST → 200 p50 {:.2} / p99 {:.2}, 200 → alarm p50 {:.2} / p99 {:.2}; {} alarms ({} over 10 ms, worst {:.0}; acked/alarm ms of those: {}); {achieved:.0} events/s acknowledged; engine backlog ≤ {lag_max:.0} events, writer queue ≤ {queue_max:.0} (1-s samples); target p99 ≤ 10 ms at 50k{}",
            quantile(&acks, 0.5),
            quantile(&acks, 0.99),
            quantile(&legs, 0.5),
            quantile(&legs, 0.99),
            lat.len(),
            lat.iter().filter(|l| **l > 10.0).count(),
            lat.last().copied().unwrap_or(0.0),
            slow_acks.join(" "),
            match &refused {
                r if r.is_empty() => String::new(),
                r => format!("; requests not acknowledged (status: count): {r:?}"),
            }
        ),
    );
    Ok(())
}

/// What the probe measured: each spike's POST → alarm event, each POST's
/// acknowledgement, each 200 → alarm, and the slow samples' shares.
struct Probed {
    lat: Vec<f64>,
    acks: Vec<f64>,
    legs: Vec<f64>,
    slow_acks: Vec<String>,
}

/// Probes twin u0 until `stop`: a spike, timed to its alarm event, then a
/// recovery, every 20 ms.
async fn probe_until(
    conn: &mut Conn,
    stream: &mut load::EventStream,
    head: &[u8],
    stop: Instant,
) -> anyhow::Result<Probed> {
    let mut lat = Vec::new();
    // The acknowledgement's share of each slow sample: a stall before the
    // 200 is ingest's (writer, HTTP), after it the alarm path's.
    let mut slow_acks = Vec::new();
    // Each leg's own distribution: the probe's POST to its 200 (every
    // probe), and its 200 to the alarm event (every raise).
    let (mut acks, mut legs) = (Vec::new(), Vec::new());
    let trace = std::env::var_os("RUST_LOG").is_some();
    let mut ts = 0;
    while Instant::now() < stop {
        for t in [400.0, 300.0] {
            ts += 1000;
            let sent = Instant::now();
            let status = conn.send(head, &probe_body(ts, t)).await?;
            anyhow::ensure!(status == 200, "probe refused: {status}");
            let acked = sent.elapsed().as_secs_f64() * 1e3;
            acks.push(acked);
            if t < 390.0 {
                continue;
            }
            // Wait for this raise.
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(10), stream.next_frame())
                    .await
                    .map_err(|_| anyhow::anyhow!("no alarm event in 10 s"))??;
                if frame.contains("\"op\":\"raise\"") {
                    let l = sent.elapsed().as_secs_f64() * 1e3;
                    if l > 10.0 {
                        slow_acks.push(format!("{acked:.0}/{l:.0}"));
                        // On the server's log timeline (with RUST_LOG), so a
                        // slow sample can be matched with what ran then.
                        if trace {
                            eprintln!(
                                "{} SLOW sample sent, acked {acked:.1} ms, alarm {l:.1} ms",
                                twinhub_model::time::format_rfc3339(
                                    twinhub_server::clock::Clock::now_us(
                                        &twinhub_server::clock::SystemClock
                                    ) - (l * 1e3) as i64
                                )
                            );
                        }
                    }
                    lat.push(l);
                    legs.push(l - acked);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Probed {
        lat,
        acks,
        legs,
        slow_acks,
    })
}
