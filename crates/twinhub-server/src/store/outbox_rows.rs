//! How the outbox stores one operation's events (one row's `data`).
//!
//! Binary since store format 16: `0x01`, the event count, then each event
//! — id (varint), commit time (zig-zag varint), tenant, kind, twin and
//! model (length-prefixed text, the optional ones behind a 0/1 byte),
//! then its data: `0` + the JSON of a JSON event, or `1` + device
//! (optional), source and the batch in `twinhub_codec::wire` form. Rows
//! written before were a JSON array (`[`), and are still read.
//!
//! Telemetry is most of what the outbox holds: as JSON it was built on the
//! writer thread inside every group commit (a tenth of the writer's time
//! under ingest) and was more than half the bytes the write-ahead log took
//! and fsynced; the binary form copies the decoded batch's columns and is
//! about half the size. It also keeps timestamps to the microsecond (the
//! JSON form carried epoch milliseconds).

use super::varint::{put_i64, put_u64, Reader};
use super::StoreError;
use crate::events::{Data, Event, Kind, TelemetryData};
use std::sync::Arc;

/// The first byte of a binary row (a JSON row starts with `[`).
const BINARY: u8 = 1;

/// The events of one operation as one row's bytes.
pub(super) fn encode(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + events.len() * 256);
    out.push(BINARY);
    put_u64(&mut out, events.len() as u64);
    for e in events {
        put_u64(&mut out, e.id);
        put_i64(&mut out, e.at);
        put_text(&mut out, &e.tenant);
        out.push(kind_code(e.kind));
        put_opt(&mut out, e.twin.as_deref());
        put_opt(&mut out, e.model.as_deref());
        match &e.data {
            Data::Json(v) => {
                out.push(0);
                put_bytes(&mut out, &serde_json::to_vec(v).expect("JSON serialises"));
            }
            Data::Telemetry(t) => {
                out.push(1);
                put_opt(&mut out, t.device.as_deref());
                put_text(&mut out, &t.source);
                put_bytes(&mut out, &twinhub_codec::encode_wire(&t.batch));
            }
        }
    }
    out
}

/// A row's events, in either form.
pub(super) fn decode(blob: &[u8]) -> Result<Vec<Event>, StoreError> {
    match blob.first() {
        Some(&BINARY) => decode_binary(&blob[1..]).ok_or_else(|| corrupt("an unreadable row")),
        _ => decode_json(blob),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("outbox: {what}"),
    ))
}

fn decode_binary(b: &[u8]) -> Option<Vec<Event>> {
    let mut r = Reader::new(b);
    let n = r.usize().ok()?;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let id = r.u64().ok()?;
        let at = r.i64().ok()?;
        let tenant = text(&mut r)?;
        let kind = *Kind::ALL.get(r.u8().ok()? as usize)?;
        let twin = opt(&mut r)?;
        let model = opt(&mut r)?;
        let data = match r.u8().ok()? {
            0 => Data::Json(serde_json::from_slice(bytes(&mut r)?).ok()?),
            1 => {
                let device = opt(&mut r)?;
                let source = text(&mut r)?;
                let batch = twinhub_codec::decode_wire_trusted(bytes(&mut r)?).ok()?;
                Data::Telemetry(Arc::new(TelemetryData {
                    device,
                    source,
                    batch,
                }))
            }
            _ => return None,
        };
        out.push(Event {
            id,
            at,
            tenant,
            kind,
            twin,
            model,
            data,
        });
    }
    r.is_empty().then_some(out)
}

/// One stored event as rows before format 16 held it: `[id, tenant,
/// kind, twin, model, data, at]`; rows written before format 11 have no
/// commit time (`at` reads 0).
#[derive(serde::Deserialize)]
struct JsonRow(
    u64,
    String,
    Kind,
    Option<String>,
    Option<String>,
    serde_json::Value,
    #[serde(default)] i64,
);

fn decode_json(blob: &[u8]) -> Result<Vec<Event>, StoreError> {
    let rows: Vec<JsonRow> = serde_json::from_slice(blob)
        .map_err(|e| StoreError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok(rows
        .into_iter()
        .map(|JsonRow(id, tenant, kind, twin, model, data, at)| Event {
            id,
            at,
            tenant,
            kind,
            twin,
            model,
            data: Data::from_stored(kind, data),
        })
        .collect())
}

fn kind_code(k: Kind) -> u8 {
    Kind::ALL
        .iter()
        .position(|x| *x == k)
        .expect("every kind is listed") as u8
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u64(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_text(out, s);
        }
    }
}

fn bytes<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let n = r.usize().ok()?;
    r.bytes(n).ok()
}

fn text(r: &mut Reader<'_>) -> Option<String> {
    std::str::from_utf8(bytes(r)?).ok().map(str::to_string)
}

fn opt(r: &mut Reader<'_>) -> Option<Option<String>> {
    match r.u8().ok()? {
        0 => Some(None),
        1 => Some(Some(text(r)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use twinhub_codec::Telemetry;
    use twinhub_model::{Quality, Value};

    fn telemetry(readings: &[(i64, &str, Value, Quality)]) -> Telemetry {
        let mut t = Telemetry::default();
        let mut last = None;
        for (ts, name, v, q) in readings {
            if last != Some(*ts) {
                t.begin(Some(*ts));
                last = Some(*ts);
            }
            let i = t.intern(name);
            t.push(i, v.clone(), *q);
        }
        t
    }

    fn same(a: &[Event], b: &[Event]) -> Result<(), TestCaseError> {
        prop_assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            prop_assert_eq!(
                (x.id, x.at, &x.tenant, x.kind),
                (y.id, y.at, &y.tenant, y.kind)
            );
            prop_assert_eq!((&x.twin, &x.model), (&y.twin, &y.model));
            match (&x.data, &y.data) {
                (Data::Json(p), Data::Json(q)) => prop_assert_eq!(p, q),
                (Data::Telemetry(p), Data::Telemetry(q)) => {
                    prop_assert_eq!((&p.device, &p.source), (&q.device, &q.source));
                    prop_assert_eq!(p.batch.to_messages(), q.batch.to_messages());
                }
                _ => prop_assert!(false, "the data changed form"),
            }
        }
        Ok(())
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Number),
            (-1i64 << 53..1i64 << 53).prop_map(|i| Value::Number(i as f64)),
            any::<bool>().prop_map(Value::Bool),
            ".{0,12}".prop_map(Value::String),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        let quality = prop_oneof![
            Just(Quality::Good),
            Just(Quality::Uncertain),
            Just(Quality::Bad)
        ];
        let readings = proptest::collection::vec((0i64..3, "[a-c]{1,3}", value(), quality), 0..12);
        let data = prop_oneof![
            (any::<i64>(), ".{0,8}")
                .prop_map(|(n, s)| Data::Json(serde_json::json!({"n": n, "s": s}))),
            (
                proptest::option::of("[a-z0-9-]{1,8}"),
                "[a-z]{2,6}",
                readings
            )
                .prop_map(|(device, source, r)| {
                    let r: Vec<_> = r
                        .into_iter()
                        .map(|(ts, n, v, q)| (1_700_000_000_000_000 + ts * 1_000_001, n, v, q))
                        .collect();
                    let r: Vec<(i64, &str, Value, Quality)> = r
                        .iter()
                        .map(|(t, n, v, q)| (*t, n.as_str(), v.clone(), *q))
                        .collect();
                    Data::Telemetry(Arc::new(TelemetryData {
                        device,
                        source,
                        batch: telemetry(&r),
                    }))
                }),
        ];
        (
            any::<u64>(),
            any::<i64>(),
            ".{0,10}",
            0..Kind::ALL.len(),
            proptest::option::of(".{0,10}"),
            proptest::option::of(".{0,10}"),
            data,
        )
            .prop_map(|(id, at, tenant, k, twin, model, data)| Event {
                id,
                at,
                tenant,
                kind: Kind::ALL[k],
                twin,
                model,
                data,
            })
    }

    proptest! {
        /// Whatever an operation's events are, its row reads back as them.
        #[test]
        fn a_row_reads_back_as_the_events_written(events in proptest::collection::vec(event(), 1..6)) {
            same(&decode(&encode(&events)).unwrap(), &events)?;
        }

        /// A damaged row is an error, never a panic or a wrong event.
        #[test]
        fn a_cut_row_is_refused(events in proptest::collection::vec(event(), 1..4), cut in any::<prop::sample::Index>()) {
            let b = encode(&events);
            let n = cut.index(b.len() - 1) + 1;
            prop_assert!(decode(&b[..n]).is_err());
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(mut b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(first) = b.first_mut() {
                *first = BINARY;
            }
            let _ = decode(&b);
        }
    }

    /// Rows written before format 16 (JSON, telemetry with epoch-ms times
    /// and a quality map) still read back.
    #[test]
    fn rows_written_as_json_still_read() {
        let row = br#"[[7,"default","telemetry","r1","dtmi:x;1",{"device":"d1","source":"http","messages":[{"ts":1700000000000.5,"values":{"t":21.5,"on":true},"quality":{"t":"bad"}}]},1700000000001000],
            [8,"default","twin","r1",null,{"op":"update"}]]"#;
        let evs = decode(row).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(
            (evs[0].id, evs[0].at, evs[0].kind),
            (7, 1_700_000_000_001_000, Kind::Telemetry)
        );
        let t = evs[0].data.telemetry().expect("typed telemetry");
        assert_eq!(t.device.as_deref(), Some("d1"));
        let m = t.batch.to_messages();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].ts, Some(1_700_000_000_000_500));
        assert_eq!((evs[1].id, evs[1].at, evs[1].kind), (8, 0, Kind::Twin));
        assert_eq!(evs[1].data["op"], "update");
        assert!(decode(b"[not json").is_err());
    }
}
