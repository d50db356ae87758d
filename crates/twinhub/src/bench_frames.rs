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
    let mut tasks = tokio::task::JoinSet::new();
    for (id, key) in devices {
        let acked = acked.clone();
        tasks.spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(udp).await?;
            let sock = Arc::new(sock);
            // Acknowledgements are read while frames go out, a window of
            // frames in flight so UDP buffers never overflow.
            let reader = {
                let (sock, acked) = (sock.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    let mut got = 0usize;
                    while got < per {
                        match tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                            .await
                        {
                            Ok(Ok(6)) if buf[5] == 0 => {
                                got += 1;
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                })
            };
            for i in 0..per {
                let payload = [(i >> 8) as u8, i as u8, 0x10, 0x20, (i & 1) as u8];
                let f = Frame {
                    ack: true,
                    cbor: false,
                    seq: i as u16,
                    device: &id,
                    key: &key,
                    payload: &payload,
                }
                .encode();
                sock.send(&f).await?;
                // Keep about 256 frames in flight per sender.
                while (i as u64 + 1).saturating_sub(acked.load(Ordering::Relaxed) / senders as u64)
                    > 256
                {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            let _ = reader.await;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = t.elapsed().as_secs_f64();
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
        "",
    );
    row(
        "server CPU per frame (µs)",
        format!("{:.1}", cpu * 1e6 / n.max(1) as f64),
        "",
    );
    drop(child);
    Ok(())
}
