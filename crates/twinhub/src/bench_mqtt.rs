//! `twinhub bench mqtt`: publishers over real TCP (20 connections × 10,000
//! telemetry messages, QoS 0 and QoS 1 with 100 in flight), end to end
//! into history, with one subscriber; the same load generator against the
//! machine's Mosquitto for reference; and the memory of idle connected
//! devices.

use crate::bench::{admin_token, bench_server, create_device, BenchServer, BENCH_PASSWORD};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::QoS;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct MqttArgs {
    pub connections: usize,
    pub messages: usize,
    pub idle: usize,
}

pub(crate) async fn connect(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
) -> anyhow::Result<(TcpStream, BytesMut)> {
    connect_session(addr, id, login, true).await
}

/// `clean` false: a persistent session, whose QoS 1 copies the broker
/// stores until they are acknowledged.
async fn connect_session(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut c = v4::Connect::new(id);
    c.clean_session = clean;
    c.keep_alive = 60;
    c.login = login.map(|(u, p)| v4::Login::new(u, p));
    let mut out = BytesMut::new();
    v4::Packet::Connect(c).write(&mut out, usize::MAX)?;
    s.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match v4::Packet::read(&mut buf, 1 << 20) {
            Ok(v4::Packet::ConnAck(a)) if a.code == v4::ConnectReturnCode::Success => {
                return Ok((s, buf))
            }
            Ok(p) => anyhow::bail!("connect refused: {p:?}"),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                if s.read_buf(&mut buf).await? == 0 {
                    anyhow::bail!("closed during connect");
                }
            }
            Err(e) => anyhow::bail!("{e}"),
        }
    }
}

fn payload(i: usize, seq: usize) -> Vec<u8> {
    let ts = crate::bench::hours_before_start(24) + (seq as i64) * 1000 + i as i64;
    format!(
        r#"{{"ts":{ts},"temperature":{:.2},"pressure":{:.2},"flow_rate":{:.2}}}"#,
        350.0 + (seq % 300) as f64 / 10.0,
        5.0 + (seq % 30) as f64 / 10.0,
        90.0 + (seq % 200) as f64 / 10.0
    )
    .into_bytes()
}

/// Publishes `n` messages; with QoS 1 keeps `window` in flight and returns
/// when all are acknowledged; with QoS 0 ends with a PINGREQ round trip.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publisher(
    addr: SocketAddr,
    id: String,
    login: Option<(String, String)>,
    topic: String,
    n: usize,
    qos: QoS,
    window: usize,
    idx: usize,
) -> anyhow::Result<()> {
    let (mut s, mut buf) = connect(
        addr,
        &id,
        login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
    )
    .await?;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut pkid: u16 = 0;
    while acked < n || (qos == QoS::AtMostOnce && sent < n) {
        let room = if qos == QoS::AtMostOnce {
            200
        } else {
            window - (sent - acked)
        };
        for _ in 0..room.min(n - sent) {
            let mut p = v4::Publish::new(&topic, qos, payload(idx, sent));
            if qos != QoS::AtMostOnce {
                pkid = pkid.wrapping_add(1).max(1);
                p.pkid = pkid;
            }
            v4::Packet::Publish(p).write(&mut out, usize::MAX)?;
            sent += 1;
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if qos == QoS::AtMostOnce {
            if sent >= n {
                break;
            }
            continue;
        }
        if s.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("closed");
        }
        loop {
            match v4::Packet::read(&mut buf, 1 << 20) {
                Ok(v4::Packet::PubAck(_)) => acked += 1,
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => anyhow::bail!("{e}"),
            }
        }
    }
    if qos == QoS::AtMostOnce {
        v4::Packet::PingReq.write(&mut out, usize::MAX)?;
        s.write_all(&out).await?;
        loop {
            match v4::Packet::read(&mut buf, 1 << 20) {
                Ok(v4::Packet::PingResp) => break,
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    if s.read_buf(&mut buf).await? == 0 {
                        anyhow::bail!("closed");
                    }
                }
                Err(e) => anyhow::bail!("{e}"),
            }
        }
    }
    Ok(())
}

/// Counts PUBLISHes on `filter` (acknowledging QoS 1) until told to stop.
async fn subscriber(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
    filter: &str,
    qos: QoS,
    count: Arc<AtomicU64>,
    persistent: bool,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (mut s, mut buf) = connect_session(addr, id, login, !persistent).await?;
    let mut out = BytesMut::new();
    let mut sub = v4::Subscribe::new(filter, qos);
    sub.pkid = 1;
    v4::Packet::Subscribe(sub).write(&mut out, usize::MAX)?;
    s.write_all(&out).await?;
    Ok(tokio::spawn(async move {
        let mut out = BytesMut::new();
        loop {
            match v4::Packet::read(&mut buf, 1 << 20) {
                Ok(v4::Packet::Publish(p)) => {
                    count.fetch_add(1, Ordering::Relaxed);
                    if p.qos == QoS::AtLeastOnce {
                        let _ =
                            v4::Packet::PubAck(v4::PubAck::new(p.pkid)).write(&mut out, usize::MAX);
                    }
                }
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    if !out.is_empty() {
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                Err(_) => return,
            }
        }
    }))
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// (client id, login) per publisher.
    creds: Vec<(String, Option<(String, String)>)>,
    sub_login: Option<(String, String)>,
    /// Points stored so far (twinhub only).
    stored: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
}

async fn run_load(
    t: &Target,
    args: &MqttArgs,
    qos: QoS,
    persistent: bool,
) -> anyhow::Result<(f64, u64, Option<u64>)> {
    let delivered = Arc::new(AtomicU64::new(0));
    let sub = subscriber(
        t.addr,
        &format!(
            "bench-sub-{}{}",
            qos as u8,
            if persistent { "-p" } else { "" }
        ),
        t.sub_login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        "devices/+/telemetry",
        qos,
        delivered.clone(),
        persistent,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored_before = t.stored.as_ref().map(|f| f()).unwrap_or(0);
    let total = args.connections * args.messages;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (id, login)) in t.creds.iter().enumerate() {
        tasks.spawn(publisher(
            t.addr,
            id.clone(),
            login.clone(),
            format!("devices/{id}/telemetry"),
            args.messages,
            qos,
            100,
            i,
        ));
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    // End to end: QoS 0 counts once every point is durable in history.
    if let Some(stored) = &t.stored {
        let want = stored_before + total as u64 * 3;
        let deadline = Instant::now() + Duration::from_secs(120);
        while stored() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Let the subscriber drain, then stop it.
    let mut last = u64::MAX;
    while delivered.load(Ordering::Relaxed) != last {
        last = delivered.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sub.abort();
    let stored = t.stored.as_ref().map(|f| (f() - stored_before) / 3);
    Ok((
        total as f64 / elapsed,
        delivered.load(Ordering::Relaxed),
        stored,
    ))
}

fn row(name: &str, value: String, note: &str) {
    println!("{name:<64} {value:>12}   {note}");
}

pub async fn run(args: MqttArgs) -> anyhow::Result<()> {
    let BenchServer {
        server,
        base,
        token,
        _schema,
        _dir,
    } = bench_server(|c| {
        c.mqtt.listen = "127.0.0.1:0".into();
        c.mqtt.max_queued = 100_000;
    })
    .await?;
    let http = reqwest::Client::new();
    let mut creds = Vec::new();
    for i in 0..args.connections {
        let id = format!("bench-dev-{i}");
        let key = create_device(&http, &base, &token, &id).await?;
        creds.push((id.clone(), Some((id, key))));
    }
    let store = server.ready.store.clone();
    let twinhub = Target {
        name: "twinhub",
        addr: server.ready.mqtt.expect("mqtt enabled"),
        creds,
        sub_login: Some(("admin".into(), BENCH_PASSWORD.into())),
        stored: Some(Box::new(move || {
            store.engine().metrics.points_committed.get()
        })),
    };
    println!(
        "mqtt: {} publishers × {} messages (~100 bytes, 3 values + ts), QoS 1 with 100 in flight, one subscriber on devices/+/telemetry",
        args.connections, args.messages
    );
    for (qos, persistent) in [
        (QoS::AtMostOnce, false),
        (QoS::AtLeastOnce, false),
        (QoS::AtLeastOnce, true),
    ] {
        let (rate, delivered, stored) = run_load(&twinhub, &args, qos, persistent).await?;
        let what = if persistent {
            ", persistent subscriber (its copies stored before PUBACK)"
        } else {
            ""
        };
        row(
            &format!(
                "twinhub QoS {} end to end into history{what} (msg/s)",
                qos as u8
            ),
            format!("{rate:.0}"),
            &format!(
                "stored {} of {}, subscriber got {delivered}; target ≥ {}",
                stored.unwrap_or(0),
                args.connections * args.messages,
                if qos == QoS::AtMostOnce {
                    "150,000"
                } else {
                    "100,000"
                }
            ),
        );
    }
    let mosquitto: SocketAddr = "127.0.0.1:1883".parse()?;
    if TcpStream::connect(mosquitto).await.is_ok() {
        let m = Target {
            name: "mosquitto",
            addr: mosquitto,
            creds: (0..args.connections)
                .map(|i| (format!("bench-mosq-{i}"), None))
                .collect(),
            sub_login: None,
            stored: None,
        };
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            match run_load(&m, &args, qos, false).await {
                Ok((rate, delivered, _)) => row(
                    &format!(
                        "{} QoS {} acknowledged, routed only (msg/s)",
                        m.name, qos as u8
                    ),
                    format!("{rate:.0}"),
                    &format!("subscriber got {delivered}; stores nothing"),
                ),
                Err(e) => row(
                    &format!("mosquitto QoS {}", qos as u8),
                    "error".into(),
                    &e.to_string(),
                ),
            }
        }
    } else {
        row(
            "mosquitto (127.0.0.1:1883)",
            "absent".into(),
            "not measured",
        );
    }
    let _ = twinhub.name;
    server.stop().await?;
    if args.idle > 0 {
        idle_connections(args.idle).await?;
    }
    Ok(())
}

/// Connects `n` devices to a `twinhub serve` child process and reports its
/// RSS per idle connection (bounded by this machine's file-descriptor
/// limit, see the printed note).
async fn idle_connections(n: usize) -> anyhow::Result<()> {
    let limit = unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_max as usize
    };
    let n = n.min(limit.saturating_sub(500));
    let server = crate::bench_ingest::Child::spawn(&[("TWINHUB_MQTT_MAX_QUEUED", "100")])?;
    let base = server.base.clone();
    let mqtt: SocketAddr = server.ports["mqtt"].as_str().unwrap_or_default().parse()?;
    let http = reqwest::Client::new();
    let token = admin_token(&http, &base).await?;
    let mut keys = Vec::with_capacity(n);
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, base, token, sem) = (http.clone(), base.clone(), token.clone(), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire().await;
            let id = format!("idle-{i}");
            let key = create_device(&http, &base, &token, &id).await.ok()?;
            Some((id, key))
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(k)) = r {
            keys.push(k);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = crate::bench::rss_kb(server.pid());
    let mut conns = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let mut set = tokio::task::JoinSet::new();
        for (id, key) in chunk.iter().cloned() {
            set.spawn(async move { connect(mqtt, &id, Some((&id, &key))).await.map(|(s, _)| s) });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(s)) = r {
                conns.push(s);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = crate::bench::rss_kb(server.pid());
    let per = (after.saturating_sub(before)) as f64 / conns.len().max(1) as f64;
    row(
        &format!("idle connected devices (fd limit here: {limit})"),
        format!("{}", conns.len()),
        &format!("of {n} asked; {} registered", keys.len()),
    );
    row(
        "server RSS with them connected (MB)",
        format!("{:.1}", after as f64 / 1024.0),
        &format!("{:.1} MB before connecting", before as f64 / 1024.0),
    );
    row(
        "RSS per idle connected device (KB)",
        format!("{per:.2}"),
        &format!(
            "→ 100,000 devices ≈ {:.0} MB (target ≤ 4 KB each, 100k in ≤ 0.5 GB; the bounded event ring's 10k presence events are inside the figure)",
            (before as f64 + per * 100_000.0) / 1024.0
        ),
    );
    drop(conns);
    drop(server);
    Ok(())
}
