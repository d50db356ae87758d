//! A column of finite f64 values, small when the values lie on a decimal
//! grid (sensor values usually do): `k` and zig-zag varint deltas of
//! `v × 10^k`, checked to come back bit for bit; else the raw 8 bytes of
//! each. Used by batch-log records and rollups.
//!
//! Layout: `k u8 (0..=6), n × zig-zag delta` or `RAW u8, n × f64 LE`.

use super::varint::{put_i64, Corrupt, Reader};

const RAW: u8 = 0xFF;
/// Near a grid: `NEAR | k`, then per value the zig-zag delta of
/// `round(v × 10^k)` and the zig-zag distance in units in the last place
/// from that grid point to `v` (sums of grid values land a few ulps off
/// it).
const NEAR: u8 = 0x80;
const MAX_SCALE: u8 = 6;

fn pow10(k: u8) -> f64 {
    10f64.powi(k as i32)
}

fn fits(v: f64, k: u8) -> bool {
    let p = pow10(k);
    let s = (v * p).round();
    s.abs() < 4.5e15 && ((s as i64) as f64 / p).to_bits() == v.to_bits()
}

/// The smallest decimal scale on which every value is an exact integer.
pub fn scale_of(vals: impl Iterator<Item = f64> + Clone) -> Option<u8> {
    let mut k = 0u8;
    for v in vals.clone() {
        while !fits(v, k) {
            k += 1;
            if k > MAX_SCALE {
                return None;
            }
        }
    }
    // A value that fitted a smaller scale almost always fits the larger
    // one too; "almost" is not enough for a durable record.
    vals.into_iter().all(|v| fits(v, k)).then_some(k)
}

pub fn put(out: &mut Vec<u8>, vals: impl Iterator<Item = f64> + Clone) {
    match scale_of(vals.clone()) {
        Some(k) => {
            out.push(k);
            let f = pow10(k);
            let mut prev = 0i64;
            for v in vals {
                let s = (v * f).round() as i64;
                put_i64(out, s.wrapping_sub(prev));
                prev = s;
            }
        }
        None => {
            out.push(RAW);
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.leading_zeros() as usize).max(1).div_ceil(7)
}

/// The grid point and the ulp distance of `v` on scale `k`.
fn near(v: f64, k: u8) -> Option<(i64, i64)> {
    let s = (v * pow10(k)).round();
    if !v.is_finite() || s.abs() >= 4.5e15 {
        return None;
    }
    let base = (s as i64) as f64 / pow10(k);
    if base.is_sign_negative() != v.is_sign_negative() {
        return None;
    }
    let d = v.to_bits() as i64 - base.to_bits() as i64;
    (d.abs() < 1 << 20).then_some((s as i64, d))
}

/// `put`, also trying grids with ulp corrections (for sums), whichever
/// is smallest.
pub fn put_near(out: &mut Vec<u8>, vals: &[f64]) {
    if scale_of(vals.iter().copied()).is_some() {
        return put(out, vals.iter().copied());
    }
    let mut best: Option<(usize, u8)> = None;
    for k in 0..=MAX_SCALE {
        let mut size = 0;
        let mut prev = 0i64;
        for v in vals {
            let Some((s, d)) = near(*v, k) else {
                size = usize::MAX;
                break;
            };
            size += varint_len(s.wrapping_sub(prev)) + varint_len(d);
            prev = s;
        }
        if size < best.map_or(8 * vals.len(), |b| b.0) {
            best = Some((size, k));
        }
    }
    let Some((_, k)) = best else {
        return put(out, vals.iter().copied());
    };
    out.push(NEAR | k);
    let mut prev = 0i64;
    for v in vals {
        let (s, d) = near(*v, k).expect("checked above");
        put_i64(out, s.wrapping_sub(prev));
        put_i64(out, d);
        prev = s;
    }
}

pub fn read(r: &mut Reader<'_>, n: usize) -> Result<Vec<f64>, Corrupt> {
    let mode = r.u8()?;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    match mode {
        m if m & NEAR != 0 && m != RAW && m & !NEAR <= MAX_SCALE => {
            let f = pow10(m & !NEAR);
            let mut s = 0i64;
            for _ in 0..n {
                s = s.wrapping_add(r.i64()?);
                let base = (s as f64 / f).to_bits() as i64;
                out.push(f64::from_bits(base.wrapping_add(r.i64()?) as u64));
            }
        }
        RAW => {
            for _ in 0..n {
                out.push(r.f64()?);
            }
        }
        k if k <= MAX_SCALE => {
            let f = pow10(k);
            let mut s = 0i64;
            for _ in 0..n {
                s = s.wrapping_add(r.i64()?);
                out.push(s as f64 / f);
            }
        }
        _ => return Err(Corrupt(0)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_bit_for_bit(vals in proptest::collection::vec(
            prop_oneof![
                (-1_000_000i64..1_000_000, 0u32..7).prop_map(|(m, k)| m as f64 / 10f64.powi(k as i32)),
                Just(-0.0f64), Just(1e300), Just(5e-324),
                any::<f64>().prop_filter("finite", |v| v.is_finite()),
            ], 0..100)) {
            let mut out = Vec::new();
            put(&mut out, vals.iter().copied());
            let got = read(&mut Reader::new(&out), vals.len()).unwrap();
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    proptest! {
        #[test]
        fn sums_round_trip_bit_for_bit(vals in proptest::collection::vec(
            proptest::collection::vec(-100_000i64..100_000, 1..60), 0..60)) {
            // Sums of 3-decimal values, accumulated as the store does.
            let sums: Vec<f64> = vals.iter()
                .map(|xs| xs.iter().fold(0.0, |a, x| a + *x as f64 / 1000.0)).collect();
            let mut out = Vec::new();
            put_near(&mut out, &sums);
            let got = read(&mut Reader::new(&out), sums.len()).unwrap();
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                sums.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            // Never more than raw doubles (random sums can be far from
            // every grid; sensor sums are not: see the test below).
            prop_assert!(out.len() <= 8 * sums.len() + 1, "{} bytes", out.len());
        }

        #[test]
        fn put_near_round_trips_anything(vals in proptest::collection::vec(
            any::<f64>().prop_filter("finite", |v| v.is_finite()), 0..40)) {
            let mut out = Vec::new();
            put_near(&mut out, &vals);
            let got = read(&mut Reader::new(&out), vals.len()).unwrap();
            prop_assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    /// Per-minute sums of 3-decimal sensor readings, accumulated as the
    /// store does: a few bytes each, not the raw 8.
    #[test]
    fn sensor_sums_take_a_few_bytes() {
        let sums: Vec<f64> = (0..60)
            .map(|m| {
                (0..60).fold(0.0, |a, s| {
                    a + (20_000 + ((m * 60 + s) * 7919) % 3000) as f64 / 1000.0
                })
            })
            .collect();
        let mut out = Vec::new();
        put_near(&mut out, &sums);
        assert!(out.len() < 6 * sums.len(), "{} bytes", out.len());
        let got = read(&mut Reader::new(&out), sums.len()).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            sums.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn sensor_values_take_two_bytes() {
        let vals: Vec<f64> = (0..1000)
            .map(|i| (20_000 + (i * 37) % 300) as f64 / 1000.0)
            .collect();
        let mut out = Vec::new();
        put(&mut out, vals.iter().copied());
        assert!(out.len() <= 2 * 1000 + 1, "{}", out.len());
    }
}
