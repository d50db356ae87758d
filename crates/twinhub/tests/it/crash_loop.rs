//! The crash loop: the real binary under steady MQTT (QoS 1) and HTTP
//! ingest from several devices, killed with SIGKILL at random moments and
//! restarted, again and again. Afterwards every acknowledged point is in
//! history with its value, and `twinhub check` finds the store sound.
//!
//! CI runs a few kills; the long run is
//! `TWINHUB_CRASH_LOOP_KILLS=25 cargo test -p twinhub --test it crash_loop -- --nocapture`.

use crate::mqtt::{open5, pub5, Got5};
use crate::process::{
    all_points, cmd, device_key, kill9, layout, login, start_env, unsafe_kill, PW,
};
use rumqttc::v5::mqttbytes::v5;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Small flushes so chunk installs and merges happen inside the run.
const ENV: &[(&str, &str)] = &[
    ("TWINHUB_STORE_FLUSH_POINTS", "1000"),
    ("TWINHUB_STORE_FLUSH_INTERVAL", "1s"),
];

/// What each device had acknowledged: ts → value.
pub type Acked = Arc<Mutex<BTreeMap<String, BTreeMap<i64, i64>>>>;

/// A tiny deterministic generator (the seed is printed on failure).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

pub fn value_of(ts: i64) -> i64 {
    ts % 9973
}

/// A device keeps sending until told to stop or refused; records what
/// was acknowledged. `next_ts` carries on from the last run.
pub async fn http_writer(
    base: String,
    id: String,
    key: String,
    mut ts: i64,
    acked: Acked,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::SeqCst) {
        let batch: Vec<i64> = (ts..ts + 20).collect();
        ts += 20;
        let body: Vec<Value> = batch
            .iter()
            .map(|t| json!({"ts": t, "v": value_of(*t)}))
            .collect();
        match http
            .post(format!("{base}/api/v1/devices/{id}/telemetry"))
            .basic_auth(&id, Some(&key))
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let mut a = acked.lock().unwrap();
                let m = a.entry(id.clone()).or_default();
                for t in batch {
                    m.insert(t, value_of(t));
                }
            }
            _ => return,
        }
    }
}

pub async fn mqtt_writer(
    addr: std::net::SocketAddr,
    id: String,
    key: String,
    mut ts: i64,
    acked: Acked,
    stop: Arc<AtomicBool>,
) {
    let (mut c, ack) = open5(addr, &id, Some((&id, &key)), true, None).await;
    assert_eq!(ack.code, v5::ConnectReturnCode::Success);
    let topic = format!("devices/{id}/telemetry");
    let mut pkid = 0u16;
    while !stop.load(Ordering::SeqCst) {
        pkid = pkid % 60_000 + 1;
        let body = json!({"ts": ts, "v": value_of(ts)}).to_string();
        c.send5(pub5(&topic, 1, pkid, body.as_bytes(), None)).await;
        match c.recv5_within(Duration::from_secs(10)).await {
            Got5::P(v5::Packet::PubAck(a)) if a.pkid == pkid => {
                assert_eq!(a.reason, v5::PubAckReason::Success, "{id} at {ts}");
                acked
                    .lock()
                    .unwrap()
                    .entry(id.clone())
                    .or_default()
                    .insert(ts, value_of(ts));
            }
            _ => return,
        }
        ts += 1;
    }
}

fn check_store(dir: &std::path::Path) {
    let out = cmd(dir).args(["check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "twinhub check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().any(|l| l == "ok"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let kills: usize = std::env::var("TWINHUB_CRASH_LOOP_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Lcg(seed);
    let (_root, dir) = layout();
    let mut s = start_env(&dir, true, ENV);
    let token = login(&s.base, PW).await;
    let http = reqwest::Client::new();
    let mut devices = Vec::new();
    for (id, mqtt) in [("h1", false), ("h2", false), ("m1", true), ("m2", true)] {
        let key = device_key(&http, &s.base, &token, id).await;
        devices.push((id.to_string(), key, mqtt));
    }
    let acked: Acked = Arc::default();
    // Timestamps 1 ms apart that never repeat: each device has its own
    // day (inside raw retention), each run its own hour of it, so windows
    // close, merge and roll up while the loop runs.
    let start_ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 20 * 86_400_000;
    let mut next: BTreeMap<String, i64> = devices
        .iter()
        .enumerate()
        .map(|(i, (id, ..))| (id.clone(), start_ts + i as i64 * 86_400_000))
        .collect();
    let t = Instant::now();
    for round in 0..kills {
        if round > 0 {
            s = start_env(&dir, false, ENV);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (id, key, mqtt) in &devices {
            let from = next[id];
            let (id, key, acked, stop) = (id.clone(), key.clone(), acked.clone(), stop.clone());
            tasks.push(if *mqtt {
                tokio::spawn(mqtt_writer(s.mqtt, id, key, from, acked, stop))
            } else {
                tokio::spawn(http_writer(s.base.clone(), id, key, from, acked, stop))
            });
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.next(1200))).await;
        kill9(&mut s);
        for task in tasks {
            task.await.unwrap();
        }
        // The next run starts past anything a writer may have sent.
        for ts in next.values_mut() {
            *ts += 3_600_000;
        }
        if round % 4 == 3 {
            check_store(&dir);
        }
    }
    check_store(&dir);

    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(|m| m.len()).sum();
    eprintln!(
        "crash loop: {kills} kills in {:.1} s, {total} points acknowledged (seed {seed})",
        t.elapsed().as_secs_f64()
    );
    assert!(
        total > 500 * kills.min(3),
        "the stream ran ({total} points, seed {seed})"
    );
    let s = start_env(&dir, false, ENV);
    let token = login(&s.base, PW).await;
    for (id, want) in &acked {
        let (from, to) = (want.keys().next().unwrap(), want.keys().last().unwrap() + 1);
        let stored: BTreeMap<i64, i64> = all_points(
            &http,
            &s.base,
            &token,
            &format!("{id}/telemetry/v"),
            *from,
            to,
        )
        .await
        .iter()
        .map(|p| (p["ts"].as_i64().unwrap(), p["value"].as_i64().unwrap()))
        .collect();
        let lost: Vec<(&i64, &i64)> = want
            .iter()
            .filter(|(t, v)| stored.get(t) != Some(v))
            .collect();
        assert!(
            lost.is_empty(),
            "{id}: {} of {} acknowledged points lost or wrong, e.g. {:?} (seed {seed})",
            lost.len(),
            want.len(),
            &lost[..lost.len().min(5)]
        );
    }
    unsafe_kill(s.child.id() as i32, 15);
    let mut s = s;
    assert!(s.child.wait().unwrap().success());
    check_store(&dir);
}
