//! The header a cluster replica writes before the bytes of an MQTT
//! connection it relays to the primary: the client's own address and, when
//! it logged in over MQTTS with a certificate, that certificate's device
//! id — what the primary would have seen had the client reached it
//! directly. It is signed with a key derived from the cluster's shared
//! secrets key and dated, so only a cluster member can claim an identity,
//! and a header overheard on the network is worthless after a minute.
//!
//! `TWINHUB-FWD1 <peer> <device id in hex, or -> <unix ms> <HMAC-SHA256 hex>\n`
//!
//! No MQTT connection starts with a `T` (a CONNECT's first byte is 0x10),
//! so the primary tells the two apart by the first byte.
//!
//! Raw frames use the same header. A relayed TCP frame connection starts
//! with an empty frame (a zero length, `TCP_FRAMES_PREFIX`) and then the
//! header; a device never sends an empty frame first — it carries
//! nothing. A relayed UDP datagram is the header followed by the device's
//! datagram, and the primary's answer comes back to the replica the same
//! way (the header naming the device to send it to): a frame starts with
//! `TH` and a device known by its address sends a packed payload, so
//! neither begins with the header's magic.
//!
//! May call: nothing of twinhub (a leaf).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt};

const MAGIC: &str = "TWINHUB-FWD1";
/// The first byte of a header (never the first byte of an MQTT packet).
pub const FIRST: u8 = b'T';
const MAX_LEN: usize = 512;
/// How far a header's date may be from the reader's clock.
const MAX_SKEW_MS: i64 = 60_000;

/// The signing key of a cluster's headers.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// Derived from the secrets key every cluster member shares.
    pub fn from_secret(secret: &str) -> Key {
        let mut h = Sha256::new();
        h.update(b"twinhub forwarded connection\0");
        h.update(secret.as_bytes());
        Key(h.finalize().into())
    }

    fn mac(&self, text: &str) -> Hmac<Sha256> {
        self.mac_bytes(text.as_bytes())
    }

    fn mac_bytes(&self, text: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        m.update(text);
        m
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// Who a relayed connection is.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    pub peer: SocketAddr,
    /// The device id of the client certificate it logged in with.
    pub cert_device: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeaderError {
    #[error("not a forwarded-connection header")]
    Malformed,
    #[error("the forwarded-connection header's signature is wrong")]
    BadSignature,
    #[error("the forwarded-connection header is too old or from the future")]
    Stale,
    #[error("the connection ended inside the forwarded-connection header")]
    Closed,
}

/// What a replica sends before the header on a relayed TCP frame
/// connection: the length of an empty frame.
pub const TCP_FRAMES_PREFIX: [u8; 2] = [0, 0];

/// A datagram of a relay: the header's `Forwarded` and the datagram it
/// carries. `None` when `data` does not start with a header at all.
pub fn split_datagram<'a>(
    key: &Key,
    data: &'a [u8],
    now_ms: i64,
) -> Option<Result<(Forwarded, &'a [u8]), HeaderError>> {
    if !data.starts_with(MAGIC.as_bytes()) || data.get(MAGIC.len()) != Some(&b' ') {
        return None;
    }
    let Some(nl) = data.iter().take(MAX_LEN + 1).position(|b| *b == b'\n') else {
        return Some(Err(HeaderError::Malformed));
    };
    Some(parse(key, &data[..nl], now_ms).map(|f| (f, &data[nl + 1..])))
}

/// `header` followed by `payload`: one relayed datagram.
pub fn datagram(key: &Key, peer: SocketAddr, payload: &[u8], now_ms: i64) -> Vec<u8> {
    let mut d = header(
        key,
        &Forwarded {
            peer,
            cert_device: None,
        },
        now_ms,
    );
    d.extend_from_slice(payload);
    d
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The header for `f`, dated `now_ms`.
pub fn header(key: &Key, f: &Forwarded, now_ms: i64) -> Vec<u8> {
    let device = f.cert_device.as_deref().map_or("-".to_string(), |d| {
        d.bytes().map(|b| format!("{b:02x}")).collect()
    });
    let text = format!("{MAGIC} {} {device} {now_ms}", f.peer);
    let sig = hex_of(key.mac(&text));
    format!("{text} {sig}\n").into_bytes()
}

/// Checks a header line (without its newline).
pub fn parse(key: &Key, line: &[u8], now_ms: i64) -> Result<Forwarded, HeaderError> {
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::Malformed)?;
    let (text, sig) = line.rsplit_once(' ').ok_or(HeaderError::Malformed)?;
    let fields: Vec<&str> = text.split(' ').collect();
    let [magic, peer, device, at] = fields[..] else {
        return Err(HeaderError::Malformed);
    };
    if magic != MAGIC {
        return Err(HeaderError::Malformed);
    }
    let sig = unhex(sig).ok_or(HeaderError::Malformed)?;
    key.mac(text)
        .verify_slice(&sig)
        .map_err(|_| HeaderError::BadSignature)?;
    let at: i64 = at.parse().map_err(|_| HeaderError::Malformed)?;
    if (now_ms - at).abs() > MAX_SKEW_MS {
        return Err(HeaderError::Stale);
    }
    let peer = peer.parse().map_err(|_| HeaderError::Malformed)?;
    let cert_device = match device {
        "-" => None,
        hex => Some(
            String::from_utf8(unhex(hex).ok_or(HeaderError::Malformed)?)
                .map_err(|_| HeaderError::Malformed)?,
        ),
    };
    Ok(Forwarded { peer, cert_device })
}

/// The signature of a request body a replica decoded for the primary
/// (`DECODED_HEADER`): `<unix ms> <HMAC-SHA256 hex of the date and the
/// body>`.
pub fn sign_body(key: &Key, body: &[u8], now_ms: i64) -> String {
    let mut m = key.mac_bytes(format!("{MAGIC} body {now_ms}\n").as_bytes());
    m.update(body);
    format!("{now_ms} {}", hex_of(m))
}

fn hex_of(m: Hmac<Sha256>) -> String {
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks `sign_body`'s signature of `body`.
pub fn check_body(key: &Key, signature: &str, body: &[u8], now_ms: i64) -> Result<(), HeaderError> {
    let (at, sig) = signature.split_once(' ').ok_or(HeaderError::Malformed)?;
    let sig = unhex(sig).ok_or(HeaderError::Malformed)?;
    let at: i64 = at.parse().map_err(|_| HeaderError::Malformed)?;
    let mut m = key.mac_bytes(format!("{MAGIC} body {at}\n").as_bytes());
    m.update(body);
    m.verify_slice(&sig)
        .map_err(|_| HeaderError::BadSignature)?;
    if (now_ms - at).abs() > MAX_SKEW_MS {
        return Err(HeaderError::Stale);
    }
    Ok(())
}

/// The HTTP header of a body a replica decoded (its `sign_body`), and the
/// body's content types: `twinhub_codec::wire`, of a device's telemetry
/// or of line protocol's batches.
pub const DECODED_HEADER: &str = "x-twinhub-decoded";
pub const DECODED_TYPE: &str = "application/vnd.twinhub.telemetry";
pub const DECODED_LINES_TYPE: &str = "application/vnd.twinhub.lines";

/// The size limit of a decoded body from the JSON body limit: the binary
/// form may be a little larger than the JSON it came from
/// (`twinhub_codec::wire::MAX_GROWTH`).
pub fn decoded_body_limit(json_limit: usize) -> usize {
    let (num, den) = twinhub_codec::wire::MAX_GROWTH;
    json_limit.saturating_mul(num) / den + 64
}

/// Reads and checks a header from the start of `io`, nothing past its
/// newline (the MQTT bytes that follow stay unread).
pub async fn read(
    io: &mut (impl AsyncRead + Unpin),
    key: &Key,
    now_ms: i64,
) -> Result<Forwarded, HeaderError> {
    let mut line = Vec::with_capacity(160);
    loop {
        let b = io.read_u8().await.map_err(|_| HeaderError::Closed)?;
        if b == b'\n' {
            return parse(key, &line, now_ms);
        }
        if line.len() == MAX_LEN {
            return Err(HeaderError::Malformed);
        }
        line.push(b);
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(device: Option<&str>) -> Forwarded {
        Forwarded {
            peer: "10.1.2.3:50123".parse().unwrap(),
            cert_device: device.map(String::from),
        }
    }

    #[tokio::test]
    async fn a_header_reads_back_and_leaves_what_follows() {
        let key = Key::from_secret("cluster-secret");
        for device in [None, Some("pump-7"), Some("reactor 1/ä")] {
            let mut bytes = header(&key, &f(device), 1_000_000);
            assert_eq!(bytes[0], FIRST);
            bytes.extend_from_slice(&[0x10, 0x0c]);
            let mut io = &bytes[..];
            assert_eq!(read(&mut io, &key, 1_030_000).await, Ok(f(device)));
            assert_eq!(io, &[0x10, 0x0c], "the MQTT bytes stay unread");
        }
    }

    #[test]
    fn a_decoded_body_is_taken_only_as_signed_by_a_member_and_unchanged() {
        let key = Key::from_secret("cluster-secret");
        let body = b"THW1\x01\x01t";
        let sig = sign_body(&key, body, 1_000_000);
        assert_eq!(check_body(&key, &sig, body, 1_030_000), Ok(()));
        assert_eq!(
            check_body(&key, &sig, b"THW1\x01\x01u", 1_030_000),
            Err(HeaderError::BadSignature)
        );
        let other = Key::from_secret("another-secret");
        assert_eq!(
            check_body(&other, &sig, body, 1_030_000),
            Err(HeaderError::BadSignature)
        );
        assert_eq!(
            check_body(&key, &sig, body, 1_061_000),
            Err(HeaderError::Stale)
        );
        let (at, mac) = sig.split_once(' ').unwrap();
        let moved = format!("{} {mac}", at.parse::<i64>().unwrap() + 1);
        assert_eq!(
            check_body(&key, &moved, body, 1_030_000),
            Err(HeaderError::BadSignature),
            "the date is signed too"
        );
        assert_eq!(
            check_body(&key, "nonsense", body, 0),
            Err(HeaderError::Malformed)
        );
    }

    #[test]
    fn only_a_member_with_the_key_can_claim_an_identity_and_only_for_a_minute() {
        let key = Key::from_secret("cluster-secret");
        let h = header(&key, &f(Some("pump-7")), 1_000_000);
        let line = &h[..h.len() - 1];
        let other = Key::from_secret("another-secret");
        assert_eq!(
            parse(&other, line, 1_000_000),
            Err(HeaderError::BadSignature)
        );
        assert_eq!(parse(&key, line, 1_061_000), Err(HeaderError::Stale));
        assert_eq!(parse(&key, line, 939_000), Err(HeaderError::Stale));
        // Another device id in a header signed for pump-7.
        let forged = String::from_utf8(line.to_vec())
            .unwrap()
            .replace(&hexs("pump-7"), &hexs("pump-8"));
        assert_eq!(
            parse(&key, forged.as_bytes(), 1_000_000),
            Err(HeaderError::BadSignature)
        );
        assert_eq!(
            parse(&key, b"TWINHUB-FWD1 x", 1_000_000),
            Err(HeaderError::Malformed)
        );
    }

    /// A relayed datagram carries the device's bytes untouched (a frame,
    /// or any binary payload — newlines included); a datagram of the
    /// device's own is not taken for one, and a forged one is refused.
    #[test]
    fn a_datagram_splits_into_its_sender_and_its_bytes() {
        let key = Key::from_secret("cluster-secret");
        let peer: SocketAddr = "10.1.2.3:50123".parse().unwrap();
        let payload = b"TH\x81\x00\x07\nbinary\n\x00";
        let d = datagram(&key, peer, payload, 1_000_000);
        let (who, bytes) = split_datagram(&key, &d, 1_000_500).unwrap().unwrap();
        assert_eq!(
            (who.peer, who.cert_device, bytes),
            (peer, None, &payload[..])
        );
        assert!(split_datagram(&key, payload, 1_000_000).is_none());
        assert!(split_datagram(&key, b"TWINHUB-FWD1x", 1_000_000).is_none());
        let other = Key::from_secret("another-secret");
        assert_eq!(
            split_datagram(&other, &d, 1_000_000).unwrap().unwrap_err(),
            HeaderError::BadSignature
        );
        assert_eq!(
            split_datagram(&key, b"TWINHUB-FWD1 no newline", 1_000_000)
                .unwrap()
                .unwrap_err(),
            HeaderError::Malformed
        );
    }

    fn hexs(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }
}
