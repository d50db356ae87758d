//! A lean HTTP/1.1 load client for the benchmarks that time the server
//! under load: keep-alive connections, request heads encoded once per
//! device, bodies written into a reused buffer, answers read for their
//! status and skipped. A general client (reqwest: a URL parsed, a header
//! map, JSON built as a tree, a task per request) spends more CPU per
//! request than the server's ingest path, and on a 2-core box that CPU
//! is taken from the server being measured.

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use std::io::Write;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The address of a `http://host:port` base.
pub fn addr(base: &str) -> anyhow::Result<SocketAddr> {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("{base} is not http://ip:port"))
}

/// The head of a JSON POST to `path` with a fixed body length (the
/// benchmarks' bodies have fixed-width numbers, so one head per target).
pub fn post_head(path: &str, authorization: &str, body_len: usize) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: twinhub\r\nauthorization: {authorization}\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n\r\n"
    )
    .into_bytes()
}

/// `Basic …` for a device's id and key.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One keep-alive connection, one request in flight.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            out: Vec::with_capacity(4096),
        })
    }

    /// Sends `head` + `body` in one write and answers the status (the
    /// answer's body is read and dropped).
    pub async fn send(&mut self, head: &[u8], body: &[u8]) -> anyhow::Result<u16> {
        self.out.clear();
        self.out.extend_from_slice(head);
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out).await?;
        let (status, head_len, framing) = read_head(&mut self.stream, &mut self.buf).await?;
        self.buf.drain(..head_len);
        match framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    read_more(&mut self.stream, &mut self.buf).await?;
                }
                self.buf.drain(..n);
            }
            Framing::Chunked => {
                let mut chunks = Chunked::default();
                while !chunks.done {
                    chunks.feed(&mut self.buf, &mut Vec::new())?;
                    if !chunks.done {
                        read_more(&mut self.stream, &mut self.buf).await?;
                    }
                }
            }
        }
        Ok(status)
    }
}

/// A server-sent event stream read frame by frame.
pub struct EventStream {
    stream: TcpStream,
    raw: Vec<u8>,
    chunks: Chunked,
    text: Vec<u8>,
}

impl EventStream {
    /// Opens `GET path` with a bearer token; fails unless the answer is 200.
    pub async fn open(addr: SocketAddr, path: &str, token: &str) -> anyhow::Result<EventStream> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: twinhub\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::with_capacity(8192);
        let (status, head_len, framing) = read_head(&mut stream, &mut raw).await?;
        if status != 200 {
            bail!("{path}: {status}");
        }
        if !matches!(framing, Framing::Chunked) {
            bail!("{path}: the event stream is not chunked");
        }
        raw.drain(..head_len);
        Ok(EventStream {
            stream,
            raw,
            chunks: Chunked::default(),
            text: Vec::with_capacity(8192),
        })
    }

    /// The next event's text (the lines up to the blank line).
    pub async fn next_frame(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(i) = find(&self.text, b"\n\n") {
                let frame = String::from_utf8_lossy(&self.text[..i]).into_owned();
                self.text.drain(..i + 2);
                return Ok(frame);
            }
            self.chunks.feed(&mut self.raw, &mut self.text)?;
            if self.chunks.done {
                bail!("the event stream ended");
            }
            if find(&self.text, b"\n\n").is_none() {
                read_more(&mut self.stream, &mut self.raw).await?;
            }
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        bail!("the server closed the connection");
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads until a whole response head is in `buf`: its status, its length
/// and how the body is framed.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(u16, usize, Framing)> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("a response head over 64 KB");
        }
        read_more(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..end]).context("a response head that is not UTF-8")?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("a response without a status: {head:?}"))?;
    let mut framing = Framing::Length(0);
    for line in head.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(v.parse()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            framing = Framing::Chunked;
        }
    }
    Ok((status, end, framing))
}

/// A chunked body decoded as bytes arrive.
#[derive(Default)]
struct Chunked {
    /// Bytes of the current chunk still to come (its data, then its CRLF).
    left: usize,
    done: bool,
}

impl Chunked {
    /// Moves the data of whole or partial chunks from `raw` to `out`.
    fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut at = 0;
        while at < raw.len() && !self.done {
            if self.left > 0 {
                let take = self.left.min(raw.len() - at);
                // The last two bytes of `left` are the chunk's CRLF.
                let data = take.min(self.left.saturating_sub(2));
                out.extend_from_slice(&raw[at..at + data]);
                self.left -= take;
                at += take;
                continue;
            }
            let Some(i) = find(&raw[at..], b"\r\n") else {
                break;
            };
            let line = std::str::from_utf8(&raw[at..at + i])?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("a chunk size {line:?}"))?;
            at += i + 2;
            if size == 0 {
                self.done = true;
                break;
            }
            self.left = size + 2;
        }
        raw.drain(..at);
        Ok(())
    }
}

/// Writes `[{"ts":…,"temperature":…,"pressure":…}, …]` for `n` messages
/// from `ts` in steps of `step` ms into `out`, the values of message `j`
/// from `value(j)` (fixed width while the timestamps keep 13 digits and
/// the values one decimal and as many integer digits).
pub fn readings(
    out: &mut Vec<u8>,
    n: u64,
    ts: &mut i64,
    step: i64,
    value: impl Fn(u64) -> (f64, f64),
) {
    out.clear();
    out.push(b'[');
    for j in 0..n {
        *ts += step;
        if j > 0 {
            out.push(b',');
        }
        let (temperature, pressure) = value(j);
        let _ = write!(
            out,
            "{{\"ts\":{ts},\"temperature\":{temperature:.1},\"pressure\":{pressure:.1}}}"
        );
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let (mut raw, mut out) = (body[..split].to_vec(), Vec::new());
            c.feed(&mut raw, &mut out).expect("first part");
            raw.extend_from_slice(&body[split..]);
            c.feed(&mut raw, &mut out).expect("second part");
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(c.done);
        }
    }

    #[test]
    fn readings_have_a_fixed_width() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut ts = 1_764_600_000_000;
        readings(&mut a, 10, &mut ts, 100, |_| (351.0, 6.0));
        readings(&mut b, 10, &mut ts, 100, |j| (350.0 + j as f64 * 0.5, 9.5));
        assert_eq!(a.len(), b.len());
        let v: serde_json::Value = serde_json::from_slice(&a).expect("JSON");
        assert_eq!(v[9]["ts"], 1_764_600_001_000i64);
        assert_eq!(v[0]["temperature"], 351.0);
    }
}
