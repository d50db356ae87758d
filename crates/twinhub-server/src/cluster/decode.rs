//! Protocol work a replica does itself: a device's HTTP telemetry body
//! (`POST /api/v1/devices/{id}/telemetry`) and InfluxDB line protocol
//! (`POST /api/v2/write`, `/write`) are decoded here — the parse is most
//! of an ingest's CPU on the primary — and handed to the primary in
//! twinhub's binary form (`twinhub_codec::wire`), signed with the
//! cluster's key (`forwarded::sign_body`). The primary still
//! authenticates the device, validates against its model and stores the
//! points: the answer, relayed back, is the primary's, given once the
//! points are durable, as when the device talks to the primary directly.
//!
//! Whatever this node cannot decode (bad JSON, a body over the limit) goes
//! on as the device sent it, so the primary answers it exactly as it
//! would have — 401 before 400, its field names and rules.

use super::announce::PrimaryInfo;
use super::replica::{relay_request, Forward};
use crate::forwarded::{DECODED_LINES_TYPE, DECODED_TYPE};
use axum::extract::{Query, Request};
use axum::http::{header, HeaderValue, Method};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;

/// What a replica decodes device telemetry with: the same settings as the
/// primary's endpoint (the cluster's nodes share one configuration).
#[derive(Debug, Clone, Copy)]
pub struct Decoding {
    pub limits: twinhub_codec::Limits,
    /// `http.max_ingest_body`.
    pub max_body: usize,
}

/// A request whose body a replica decodes.
#[derive(Debug, PartialEq)]
pub(super) enum Decodable {
    /// `POST /api/v1/devices/{id}/telemetry` (JSON).
    Device,
    /// `POST /api/v2/write` or `/write` (InfluxDB line protocol), with the
    /// query's precision and twin tag.
    Lines {
        precision: twinhub_codec::Precision,
        twin_tag: String,
    },
}

/// What of `req` this node decodes; `None` goes on as sent — including
/// what the primary would refuse before reading the body (a compressed
/// body, an unknown precision), so the refusal is the primary's.
pub(super) fn decodable(req: &Request) -> Option<Decodable> {
    let h = req.headers();
    let claimed = h.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == DECODED_TYPE.as_bytes() || v == DECODED_LINES_TYPE.as_bytes()
    });
    let compressed = h
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if req.method() != Method::POST || claimed || compressed {
        return None;
    }
    let path = req.uri().path();
    let device = path
        .strip_prefix("/api/v1/devices/")
        .and_then(|rest| rest.strip_suffix("/telemetry"));
    if device.is_some_and(|id| !id.is_empty() && !id.contains('/')) {
        return Some(Decodable::Device);
    }
    if path != "/api/v2/write" && path != "/write" {
        return None;
    }
    let q: Query<HashMap<String, String>> = Query::try_from_uri(req.uri()).ok()?;
    let precision = twinhub_codec::Precision::of_query(q.get("precision").map(String::as_str))?;
    let twin_tag = q
        .get("twin_tag")
        .map_or(twinhub_codec::lineproto::DEFAULT_TWIN_TAG, String::as_str)
        .to_string();
    Some(Decodable::Lines {
        precision,
        twin_tag,
    })
}

/// Decodes `req`'s body and sends it on in binary, signed with `key`.
pub(super) async fn forward_decoded(
    f: &Forward,
    p: &PrimaryInfo,
    key: &crate::forwarded::Key,
    what: Decodable,
    req: Request,
) -> Response {
    let d = f.decoding;
    let (mut parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            // The client went away mid-body: whatever it sent goes on,
            // cut short, and the primary answers it as such.
            let body = reqwest::Body::from(buf.freeze());
            return relay_request(f, p, parts, body).await;
        };
        buf.extend_from_slice(&chunk);
        if buf.len() > d.max_body {
            // Too large to decode here; the primary refuses it (after
            // authenticating), as it would a body sent to it directly.
            let head = futures_util::stream::once(async move { Ok(buf.freeze()) });
            let body = reqwest::Body::wrap_stream(head.chain(stream));
            return relay_request(f, p, parts, body).await;
        }
    }
    let sent = buf.freeze();
    let (wire, content_type) = match what {
        Decodable::Device => (
            twinhub_codec::decode_telemetry(&sent, &d.limits)
                .map(|t| twinhub_codec::encode_wire(&t)),
            DECODED_TYPE,
        ),
        Decodable::Lines {
            precision,
            twin_tag,
        } => (
            twinhub_codec::decode_line_protocol(&sent, precision, &twin_tag, &d.limits)
                .map(|b| twinhub_codec::encode_wire_batches(&b)),
            DECODED_LINES_TYPE,
        ),
    };
    let wire = match wire {
        Ok(w) if w.len() <= crate::forwarded::decoded_body_limit(d.max_body) => w,
        _ => return relay_request(f, p, parts, sent.into()).await,
    };
    let signature = crate::forwarded::sign_body(key, &wire, crate::forwarded::now_ms());
    let Ok(signature) = HeaderValue::from_str(&signature) else {
        return relay_request(f, p, parts, sent.into()).await;
    };
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(crate::forwarded::DECODED_HEADER, signature);
    relay_request(f, p, parts, Bytes::from(wire).into()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, content_type: Option<&str>) -> Request {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn only_telemetry_posts_are_decoded_here() {
        let json = Some("application/json");
        let device = Some(Decodable::Device);
        let d = |m, path, ct| decodable(&req(m, path, ct));
        assert_eq!(
            d(Method::POST, "/api/v1/devices/d1/telemetry", json),
            device
        );
        assert_eq!(
            d(Method::POST, "/api/v1/devices/d1/telemetry?x=1", None),
            device
        );
        for (m, path) in [
            (Method::GET, "/api/v1/devices/d1/telemetry"),
            (Method::POST, "/api/v1/devices//telemetry"),
            (Method::POST, "/api/v1/devices/a/b/telemetry"),
            (Method::POST, "/api/v1/devices/d1/commands/x"),
            (Method::POST, "/api/v1/twins/t1/telemetry"),
            (Method::POST, "/api/v2/write?precision=fortnights"),
            (Method::GET, "/api/v2/write"),
        ] {
            assert_eq!(d(m, path, json), None, "{path}");
        }
        let lines = |precision, tag: &str| {
            Some(Decodable::Lines {
                precision,
                twin_tag: tag.into(),
            })
        };
        use twinhub_codec::Precision;
        assert_eq!(
            d(Method::POST, "/api/v2/write?bucket=b", None),
            lines(Precision::Ns, "twin")
        );
        assert_eq!(
            d(
                Method::POST,
                "/write?db=x&precision=ms&twin_tag=asset",
                None
            ),
            lines(Precision::Ms, "asset")
        );
        for claimed in [DECODED_TYPE, DECODED_LINES_TYPE] {
            assert_eq!(
                d(Method::POST, "/api/v1/devices/d1/telemetry", Some(claimed)),
                None,
                "a body that claims the binary form goes on as sent (the primary refuses it)"
            );
        }
        let mut gz = req(Method::POST, "/api/v2/write", None);
        gz.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decodable(&gz), None);
    }
}
