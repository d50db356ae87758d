//! `twinhub bench frames`: raw binary frames over UDP against a `twinhub
//! serve` child — frames decoded with a layout, stored durably, each
//! acknowledged; frames/s counted by acknowledgements received.

use crate::bench::row;
use crate::bench_ingest::Child;
use anyhow::Context;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinhub_codec::layout::Frame;

const LAYOUT: &str = r#"{"fields": [
  {"name": "temperature", "type": "i16", "offset": 0, "scale": 0.01},
  {"name": "pressure", "type": "u16", "offset": 2, "scale": 0.1},
  {"name": "running", "type": "bool", "offset": 4, "bit": 0}]}"#;

pub async fn run(frames: usize) -> anyhow::Result<()> {
    println!("\nframes: raw binary frames over UDP, 3 fields each, every frame acknowledged once durable");
    let child = Child::spawn(&[("TWINHUB_INGEST_UDP_LISTEN", "127.0.0.1:0")])?;
    let udp: std::net::SocketAddr = child.ports["udp"].as_str().context("a UDP port")?.parse()?;
    let http = reqwest::Client::new();
    let token = crate::bench::admin_token(&http, &child.base).await?;
    let senders = 8usize;
    let mut devices = Vec::new();
    for i in 0..senders {
        let id = format!("udp-{i}");
        let key = crate::bench::create_device(&http, &child.base, &token, &id).await?;
        let r = http
            .put(format!("{}/api/v1/devices/{id}/layout", child.base))
            .bearer_auth(&token)
            .body(LAYOUT)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "layout: {}", r.status());
        devices.push((id, key));
    }
    let acked = Arc::new(AtomicU64::new(0));
    let per = frames / senders;
    let t = Instant::now();
    let cpu0 = child.cpu_seconds()?;
    let lost = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    // When the last acknowledgement came (ns after `t`): the rate's end.
    let last_ack = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (id, key) in devices {
        let (acked, lost, last_ack) = (acked.clone(), lost.clone(), last_ack.clone());
        let refused = refused.clone();
        tasks.spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(udp).await?;
            // Room for a window of acknowledgements (the default buffer
            // holds fewer than 300 datagrams).
            {
                use std::os::fd::AsRawFd;
                let bytes: i32 = 4 << 20;
                // SAFETY: setsockopt on this task's own socket.
                unsafe {
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        &bytes as *const i32 as *const libc::c_void,
                        std::mem::size_of::<i32>() as libc::socklen_t,
                    );
                }
            }
            let sock = Arc::new(sock);
            // This sender's acknowledgements, read while frames go out; a
            // window of WINDOW frames in flight, so the buffers hold them.
            let mine = Arc::new(AtomicU64::new(0));
            let done = Arc::new(tokio::sync::Notify::new());
            let reader = {
                let (sock, acked, mine, done) =
                    (sock.clone(), acked.clone(), mine.clone(), done.clone());
                let (last_ack, refused) = (last_ack.clone(), refused.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    loop {
                        match tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
                            .await
                        {
                            Ok(Ok(6)) if buf[5] != 0 => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Ok(6)) if buf[5] == 0 => {
                                acked.fetch_add(1, Ordering::Relaxed);
                                mine.fetch_add(1, Ordering::Relaxed);
                                last_ack
                                    .fetch_max(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                                done.notify_one();
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                })
            };
            const WINDOW: u64 = 256;
            let mut given_up = 0u64;
            for i in 0..per {
                let payload = [(i >> 8) as u8, i as u8, 0x10, 0x20, (i & 1) as u8];
                let f = Frame {
                    ack: true,
                    cbor: false,
                    json: false,
                    seq: i as u16,
                    device: &id,
                    key: &key,
                    payload: &payload,
                }
                .encode();
                sock.send(&f).await?;
                let sent = i as u64 + 1;
                let in_flight =
                    |given_up: u64| sent.saturating_sub(mine.load(Ordering::Relaxed) + given_up);
                while in_flight(given_up) >= WINDOW {
                    // A frame lost in a full buffer never answers: after a
                    // quiet 250 ms, what is in flight counts as lost.
                    if tokio::time::timeout(Duration::from_millis(250), done.notified())
                        .await
                        .is_err()
                    {
                        let gone = in_flight(given_up);
                        given_up += gone;
                        lost.fetch_add(gone, Ordering::Relaxed);
                    }
                }
            }
            // The last acknowledgements.
            let end = Instant::now();
            while (mine.load(Ordering::Relaxed) + given_up) < per as u64
                && end.elapsed() < Duration::from_secs(2)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reader.abort();
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = (last_ack.load(Ordering::Relaxed) as f64 / 1e9).max(1e-3);
    let cpu = child.cpu_seconds()? - cpu0;
    let n = acked.load(Ordering::Relaxed);
    row(
        "UDP frames decoded, durable and acknowledged (frames/s)",
        format!("{:.0}", n as f64 / secs),
        "target ≥ 100,000",
    );
    row(
        "frames acknowledged as stored",
        format!("{n} of {}", per * senders),
        &format!(
            "{} refused (retry later or invalid), {} given up as lost",
            refused.load(Ordering::Relaxed),
            lost.load(Ordering::Relaxed)
        ),
    );
    row(
        "server CPU per frame (µs)",
        format!("{:.1}", cpu * 1e6 / n.max(1) as f64),
        "",
    );
    drop(child);
    Ok(())
}
