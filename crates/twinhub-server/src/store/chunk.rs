//! Compressed chunks: the long-term form of a series' points. Timestamps
//! and numeric values are compressed with pco (delta encoding picks up the
//! regular sampling of timestamps; its float-multiplier mode finds the
//! decimal grid sensor values are rounded to); other values are tagged.
//!
//! Layout: `version u8, flags u8, count varint, ts_len varint, ts bytes,
//! values…, quality runs…`.

use super::columns::{Columns, Vals};
use super::varint::{put_u64, Corrupt, Reader};
use twinhub_model::{Stats, Value};

const VERSION: u8 = 1;
const NUMERIC: u8 = 1;
const HAS_QUALITY: u8 = 2;
pub const PCO_LEVEL: usize = 8;

pub fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Number(n) => {
            out.push(0);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Value::Bool(false) => out.push(1),
        Value::Bool(true) => out.push(2),
        Value::String(s) => {
            out.push(3);
            put_u64(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

pub fn read_value(r: &mut Reader<'_>) -> Result<Value, Corrupt> {
    let tag = r.u8()?;
    read_value_tagged(r, tag)
}

/// Reads a value whose tag (low two bits of `tag`) was already read.
pub fn read_value_tagged(r: &mut Reader<'_>, tag: u8) -> Result<Value, Corrupt> {
    Ok(match tag & 3 {
        0 => Value::Number(r.f64()?),
        1 => Value::Bool(false),
        2 => Value::Bool(true),
        _ => {
            let n = r.usize()?;
            let b = r.bytes(n)?;
            Value::String(String::from_utf8_lossy(b).into_owned())
        }
    })
}

pub fn value_blob(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    put_value(&mut out, v);
    out
}

pub fn value_from_blob(b: &[u8]) -> Option<Value> {
    read_value(&mut Reader::new(b)).ok()
}

pub fn encode(cols: &Columns) -> Vec<u8> {
    let mut out = Vec::with_capacity(cols.len() * 2 + 64);
    out.push(VERSION);
    let mut flags = 0;
    if matches!(cols.vals, Vals::Num(_)) {
        flags |= NUMERIC;
    }
    if cols
        .quality
        .as_ref()
        .is_some_and(|q| q.iter().any(|x| *x != 0))
    {
        flags |= HAS_QUALITY;
    }
    out.push(flags);
    put_u64(&mut out, cols.len() as u64);
    let ts = pco::standalone::simpler_compress(&cols.ts, PCO_LEVEL).expect("pco compresses i64");
    put_u64(&mut out, ts.len() as u64);
    out.extend_from_slice(&ts);
    match &cols.vals {
        Vals::Num(ns) => {
            let vs = pco::standalone::simpler_compress(ns, PCO_LEVEL).expect("pco compresses f64");
            put_u64(&mut out, vs.len() as u64);
            out.extend_from_slice(&vs);
        }
        Vals::Any(vs) => {
            for v in vs {
                put_value(&mut out, v);
            }
        }
    }
    if flags & HAS_QUALITY != 0 {
        let q = cols.quality.as_ref().expect("flag says present");
        let mut i = 0;
        while i < q.len() {
            let mut j = i;
            while j < q.len() && q[j] == q[i] {
                j += 1;
            }
            put_u64(&mut out, (j - i) as u64);
            out.push(q[i]);
            i = j;
        }
    }
    out
}

/// Most points a chunk may claim; a larger count is corruption (chunks are
/// cut at 65,536 points).
const MAX_POINTS: usize = 1 << 20;

/// Decompresses exactly `n` numbers into a buffer we size ourselves, so a
/// corrupted header cannot make pco allocate without bound.
fn pco_exact<T: pco::data_types::Number>(
    src: &[u8],
    n: usize,
    at: usize,
) -> Result<Vec<T>, Corrupt> {
    let mut out = vec![T::default(); n];
    let p = pco::standalone::simple_decompress_into(src, &mut out).map_err(|_| Corrupt(at))?;
    if p.n_processed != n || !p.finished {
        return Err(Corrupt(at));
    }
    Ok(out)
}

pub fn decode(data: &[u8]) -> Result<Columns, Corrupt> {
    let mut r = Reader::new(data);
    if r.u8()? != VERSION {
        return Err(Corrupt(0));
    }
    let flags = r.u8()?;
    let n = r.usize()?;
    if n > MAX_POINTS {
        return Err(Corrupt(2));
    }
    let ts_len = r.usize()?;
    let ts: Vec<i64> = pco_exact(r.bytes(ts_len)?, n, 2)?;
    let vals = if flags & NUMERIC != 0 {
        let len = r.usize()?;
        let ns: Vec<f64> = pco_exact(r.bytes(len)?, n, 3)?;
        Vals::Num(ns)
    } else {
        let mut vs = Vec::with_capacity(n);
        for _ in 0..n {
            vs.push(read_value(&mut r)?);
        }
        Vals::Any(vs)
    };
    let quality = if flags & HAS_QUALITY != 0 {
        let mut q = Vec::with_capacity(n);
        while q.len() < n {
            let run = r.usize()?;
            let v = r.u8()?;
            if run == 0 || q.len() + run > n {
                return Err(Corrupt(4));
            }
            q.extend(std::iter::repeat_n(v, run));
        }
        Some(q)
    } else {
        None
    };
    Ok(Columns { ts, vals, quality })
}

/// Statistics of a whole chunk, kept beside it so long-range aggregates
/// read them instead of decoding.
pub fn stats(cols: &Columns) -> Stats {
    let mut st = Stats::default();
    match &cols.vals {
        Vals::Num(ns) => {
            for (t, n) in cols.ts.iter().zip(ns) {
                st.push_number(*t, *n);
            }
        }
        Vals::Any(vs) => {
            for (t, v) in cols.ts.iter().zip(vs) {
                st.push(*t, v);
            }
        }
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use twinhub_model::Quality;

    #[test]
    fn sensor_like_series_compress_well() {
        // A 1 Hz random walk rounded to 0.01, as the demo reports.
        let mut c = Columns::default();
        let mut v = 350.0f64;
        let mut seed = 42u64;
        for i in 0..3600 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let step = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.2;
            v = ((v + step) * 100.0).round() / 100.0;
            c.push(
                1_700_000_000_000_000 + i * 1_000_000,
                &Value::Number(v),
                Quality::Good,
            );
        }
        let enc = encode(&c);
        let per_point = enc.len() as f64 / 3600.0;
        assert!(per_point < 3.0, "bytes/point {per_point}");
        assert_eq!(decode(&enc).unwrap(), c);
    }

    /// Found by `cargo fuzz run chunk_decode`: a corrupted header made pco
    /// try to allocate terabytes. It must fail cleanly instead.
    #[test]
    fn a_corrupted_count_cannot_force_a_huge_allocation() {
        let hex = "0127412770636f21030070636f2103001600ff060100ffffffffffffffff01b99701057063ffffffffffff07010101971f39f8ffffffff1600ff060100ffffffffffffffff01b99701057063ffffffffffff07010101971f39f8ffffffffffff020602316f21ff22";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert!(decode(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(pts in proptest::collection::btree_map(0i64..1_000_000_000, (0u8..5, -1e9f64..1e9, 0u8..3), 1..200)) {
            let mut c = Columns::default();
            for (t, (kind, n, q)) in &pts {
                let v = match kind {
                    0..=2 => Value::Number(*n),
                    3 => Value::Bool(*n > 0.0),
                    _ => Value::String(format!("s{n}")),
                };
                c.push(*t, &v, Quality::from_u8(*q % 3));
            }
            let dec = decode(&encode(&c)).unwrap();
            prop_assert_eq!(dec.to_points(), c.to_points());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode(&bytes);
        }
    }
}
