//! Batch log records: the durable form of an acknowledged write until the
//! compactor has moved its points into chunks. Points keep write order so
//! replay reproduces "the later write wins". The writer logs one record
//! per group commit (all the group's appends, in order).
//!
//! Version 3 (written): `3, entries varint, {sid zig-zag delta from the
//! previous entry's, n varint, flags u8, ts: n × zig-zag delta of deltas
//! continuing from the previous entry's last timestamp, values,
//! qualities?}*`. Values are a `numcol` column when every value of the
//! entry is a number on a decimal grid (sensor values usually are: 2–3
//! bytes a point instead of 9), else `n` tagged values. Qualities are
//! present only when one is not good. A group of one point per series at
//! one timestamp (a line-protocol body, a gateway's scan) costs ~6 bytes a
//! point: the sid and timestamp deltas are a byte each.
//!
//! Read for logs written before: version 2 (each entry's sid in full and
//! its timestamps from 0), version 1 (`1, entries varint, {sid varint,
//! n varint, {ts zig-zag delta, tag u8 (value tag | quality << 2),
//! payload}*}*`).

use super::chunk::{put_value, read_value, read_value_tagged};
use super::varint::{put_i64, put_u64, Corrupt, Reader};
use twinhub_model::{Point, Quality, Value};

const V1: u8 = 1;
const V2: u8 = 2;
const V3: u8 = 3;
const SCALED: u8 = 1;
const QUALITIES: u8 = 2;

fn numbers(points: &[Point]) -> Option<impl Iterator<Item = f64> + Clone + '_> {
    points
        .iter()
        .all(|p| matches!(p.value, Value::Number(_)))
        .then(|| points.iter().map(|p| p.value.as_f64().unwrap_or(0.0)))
}

pub fn encode<'a>(entries: impl ExactSizeIterator<Item = (u32, &'a [Point])>) -> Vec<u8> {
    encode_as(V3, entries)
}

fn encode_as<'a>(
    version: u8,
    entries: impl ExactSizeIterator<Item = (u32, &'a [Point])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 16);
    out.push(version);
    put_u64(&mut out, entries.len() as u64);
    let (mut prev_sid, mut prev) = (0i64, 0i64);
    for (sid, points) in entries {
        if version == V3 {
            put_i64(&mut out, (sid as i64).wrapping_sub(prev_sid));
            prev_sid = sid as i64;
        } else {
            put_u64(&mut out, sid as u64);
            prev = 0;
        }
        put_u64(&mut out, points.len() as u64);
        let nums = numbers(points).filter(|n| super::numcol::scale_of(n.clone()).is_some());
        let qualities = points.iter().any(|p| p.quality != Quality::Good);
        out.push(if nums.is_some() { SCALED } else { 0 } | if qualities { QUALITIES } else { 0 });
        let mut delta = 0i64;
        for p in points {
            let d = p.ts.wrapping_sub(prev);
            put_i64(&mut out, d.wrapping_sub(delta));
            (prev, delta) = (p.ts, d);
        }
        match nums {
            Some(n) => super::numcol::put(&mut out, n),
            None => points.iter().for_each(|p| put_value(&mut out, &p.value)),
        }
        if qualities {
            out.extend(points.iter().map(|p| p.quality.as_u8()));
        }
    }
    out
}

pub fn decode(data: &[u8]) -> Result<Vec<(u32, Vec<Point>)>, Corrupt> {
    let mut r = Reader::new(data);
    let version = r.u8()?;
    if !matches!(version, V1 | V2 | V3) {
        return Err(Corrupt(0));
    }
    let n = r.usize()?;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    let (mut prev_sid, mut prev) = (0i64, 0i64);
    for _ in 0..n {
        let sid = if version == V3 {
            prev_sid = prev_sid.wrapping_add(r.i64()?);
            prev_sid
        } else {
            prev = 0;
            r.u64()? as i64
        };
        let sid = u32::try_from(sid).map_err(|_| Corrupt(0))?;
        let count = r.usize()?;
        let points = if version == V1 {
            decode_v1(&mut r, count)?
        } else {
            decode_v2(&mut r, count, &mut prev)?
        };
        out.push((sid, points));
    }
    Ok(out)
}

/// An entry of versions 2 and 3; `prev` is the timestamp its deltas start
/// from (0 in version 2) and ends as its last.
fn decode_v2(r: &mut Reader<'_>, count: usize, prev: &mut i64) -> Result<Vec<Point>, Corrupt> {
    let flags = r.u8()?;
    let mut points = Vec::with_capacity(count.min(1 << 16));
    let mut delta = 0i64;
    for _ in 0..count {
        delta = delta.wrapping_add(r.i64()?);
        *prev = prev.wrapping_add(delta);
        points.push(Point {
            ts: *prev,
            value: Value::Number(0.0),
            quality: Quality::Good,
        });
    }
    if flags & SCALED != 0 {
        for (p, v) in points.iter_mut().zip(super::numcol::read(r, count)?) {
            p.value = Value::Number(v);
        }
    } else {
        for p in &mut points {
            p.value = read_value(r)?;
        }
    }
    if flags & QUALITIES != 0 {
        for p in &mut points {
            p.quality = Quality::from_u8(r.u8()?);
        }
    }
    Ok(points)
}

fn decode_v1(r: &mut Reader<'_>, count: usize) -> Result<Vec<Point>, Corrupt> {
    let mut points = Vec::with_capacity(count.min(1 << 16));
    let mut prev = 0i64;
    for _ in 0..count {
        let ts = prev.wrapping_add(r.i64()?);
        prev = ts;
        let tag = r.u8()?;
        let value: Value = read_value_tagged(r, tag)?;
        points.push(Point {
            ts,
            value,
            quality: Quality::from_u8(tag >> 2),
        });
    }
    Ok(points)
}

/// Version 1, as earlier binaries wrote it (for the replay tests).
#[cfg(test)]
fn encode_v1<'a>(entries: impl ExactSizeIterator<Item = (u32, &'a [Point])>) -> Vec<u8> {
    let mut out = vec![V1];
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sensor_points_take_about_three_bytes() {
        let pts: Vec<Point> = (0..2000)
            .map(|i| {
                let v = 20.0 + (i as f64 / 600.0).sin() * 2.0 + ((i * 7919) % 200) as f64 / 1000.0;
                Point::number(
                    1_700_000_000_000_000 + i * 1_000_000,
                    (v * 1000.0).round() / 1000.0,
                )
            })
            .collect();
        let enc = encode(std::iter::once((1u32, pts.as_slice())));
        assert!(enc.len() < 2000 * 4, "{} bytes", enc.len());
        assert_eq!(decode(&enc).unwrap()[0].1, pts);
    }

    /// A group commit of line-protocol bodies: one point for each of
    /// many series at one timestamp.
    #[test]
    fn one_point_per_series_takes_a_few_bytes() {
        let pts: Vec<Vec<Point>> = (0..1000)
            .map(|s| {
                vec![Point::number(
                    1_700_000_000_000_000,
                    20.0 + s as f64 / 1000.0,
                )]
            })
            .collect();
        let entries = || {
            pts.iter()
                .enumerate()
                .map(|(s, p)| (s as u32 + 1, p.as_slice()))
        };
        let enc = encode(entries());
        assert!(enc.len() < 1000 * 8, "{} bytes", enc.len());
        let dec = decode(&enc).unwrap();
        assert_eq!(dec.len(), 1000);
        assert!(dec
            .iter()
            .zip(entries())
            .all(|(a, (s, p))| a.0 == s && a.1 == p));
    }

    proptest! {
        #[test]
        fn round_trip(entries in proptest::collection::vec(
            (any::<u32>(), proptest::collection::vec((any::<i64>(), -1e9f64..1e9, 0u8..3), 0..30)), 0..10)) {
            let entries: Vec<(u32, Vec<Point>)> = entries.into_iter().map(|(sid, pts)| {
                (sid, pts.into_iter().map(|(t, v, q)| Point { ts: t, value: if q == 1 { Value::String(v.to_string()) } else { Value::Number(v) }, quality: Quality::from_u8(q) }).collect())
            }).collect();
            let enc = encode(entries.iter().map(|(s, p)| (*s, p.as_slice())));
            prop_assert_eq!(decode(&enc).unwrap(), entries.clone());
            let v2 = encode_as(V2, entries.iter().map(|(s, p)| (*s, p.as_slice())));
            prop_assert_eq!(decode(&v2).unwrap(), entries.clone());
            let old = encode_v1(entries.iter().map(|(s, p)| (*s, p.as_slice())));
            prop_assert_eq!(decode(&old).unwrap(), entries);
        }

        /// Decimal sensor values take the scaled path and come back bit
        /// for bit (negative zero, large and tiny values included).
        #[test]
        fn decimals_round_trip_exactly(vals in proptest::collection::vec(
            prop_oneof![
                (-1_000_000i64..1_000_000, 0u32..7).prop_map(|(m, k)| m as f64 / 10f64.powi(k as i32)),
                Just(-0.0f64), Just(1e300), Just(5e-324), any::<f64>().prop_filter("finite", |v| v.is_finite()),
            ], 1..100)) {
            let pts: Vec<Point> = vals.iter().enumerate()
                .map(|(i, v)| Point::number(1_700_000_000_000_000 + i as i64 * 1_000_000, *v)).collect();
            let enc = encode(std::iter::once((7u32, pts.as_slice())));
            let dec = decode(&enc).unwrap();
            for (a, b) in dec[0].1.iter().zip(&pts) {
                prop_assert_eq!(a.value.as_f64().unwrap().to_bits(), b.value.as_f64().unwrap().to_bits());
                prop_assert_eq!(a.ts, b.ts);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
