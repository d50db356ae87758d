//! Batch log records: the durable form of an acknowledged write until the
//! compactor has moved its points into chunks. Points keep write order so
//! replay reproduces "the later write wins".
//!
//! Layout: `version u8, entries varint, {sid varint, n varint,
//! {ts zig-zag delta, tag u8 (value tag | quality << 2), payload}*}*`.

use super::chunk::{put_value, read_value_tagged};
use super::varint::{put_i64, put_u64, Corrupt, Reader};
use twinhub_model::{Point, Quality, Value};

const VERSION: u8 = 1;

pub fn encode<'a>(entries: impl ExactSizeIterator<Item = (u32, &'a [Point])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 16);
    out.push(VERSION);
    put_u64(&mut out, entries.len() as u64);
    for (sid, points) in entries {
        put_u64(&mut out, sid as u64);
        put_u64(&mut out, points.len() as u64);
        let mut prev = 0i64;
        for p in points {
            put_i64(&mut out, p.ts.wrapping_sub(prev));
            prev = p.ts;
            let at = out.len();
            put_value(&mut out, &p.value);
            out[at] |= p.quality.as_u8() << 2;
        }
    }
    out
}

pub fn decode(data: &[u8]) -> Result<Vec<(u32, Vec<Point>)>, Corrupt> {
    let mut r = Reader::new(data);
    if r.u8()? != VERSION {
        return Err(Corrupt(0));
    }
    let n = r.usize()?;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let sid = u32::try_from(r.u64()?).map_err(|_| Corrupt(0))?;
        let count = r.usize()?;
        let mut points = Vec::with_capacity(count.min(1 << 16));
        let mut prev = 0i64;
        for _ in 0..count {
            let ts = prev.wrapping_add(r.i64()?);
            prev = ts;
            let tag = r.u8()?;
            let value: Value = read_value_tagged(&mut r, tag)?;
            points.push(Point {
                ts,
                value,
                quality: Quality::from_u8(tag >> 2),
            });
        }
        out.push((sid, points));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(entries in proptest::collection::vec(
            (any::<u32>(), proptest::collection::vec((any::<i64>(), -1e9f64..1e9, 0u8..3), 0..30)), 0..10)) {
            let entries: Vec<(u32, Vec<Point>)> = entries.into_iter().map(|(sid, pts)| {
                (sid, pts.into_iter().map(|(t, v, q)| Point { ts: t, value: if q == 1 { Value::String(v.to_string()) } else { Value::Number(v) }, quality: Quality::from_u8(q) }).collect())
            }).collect();
            let enc = encode(entries.iter().map(|(s, p)| (*s, p.as_slice())));
            prop_assert_eq!(decode(&enc).unwrap(), entries);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
