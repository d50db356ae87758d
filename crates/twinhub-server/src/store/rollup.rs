//! Rollups: per closed window, the statistics of every minute (res 60) and
//! of the whole hour (res 3600). They outlive raw points, so long ranges
//! stay answerable after raw retention.
//!
//! Layout: see `encode` (columnar); `decode` also reads the row layout
//! of earlier binaries.

use super::chunk::{put_value, read_value};
use super::columns::{Columns, Vals};
use super::sql::{args, Sql};
use super::varint::{put_i64, put_u64, Corrupt, Reader};
use super::{StoreError, WINDOW};
use twinhub_model::aggregate::Buckets;
use twinhub_model::time::US_PER_SEC;
use twinhub_model::{Bucketer, Stats, Value};

pub const RES_MINUTE: i64 = 60;
pub const RES_HOUR: i64 = 3600;

pub fn for_window(win: i64, cols: &Columns) -> Vec<(i64, Vec<u8>)> {
    add_to_window(win, cols, &[], None)
}

/// Rollups of a window whose raw points were retired, with late points
/// added: the stored minute entries and hour statistics, plus `cols`.
pub fn add_to_window(
    win: i64,
    cols: &Columns,
    minutes_before: &[(i64, Stats)],
    hour_before: Option<&Stats>,
) -> Vec<(i64, Vec<u8>)> {
    let minute = Bucketer::new(RES_MINUTE * US_PER_SEC, None).expect("valid width");
    let mut b = Buckets::new(minute);
    let mut hour = hour_before.cloned().unwrap_or_default();
    for (start, st) in minutes_before {
        b.merge_at(*start, st);
    }
    match &cols.vals {
        Vals::Num(ns) => {
            for (t, n) in cols.ts.iter().zip(ns) {
                b.push_number(*t, *n);
                hour.push_number(*t, *n);
            }
        }
        Vals::Any(vs) => {
            for (t, v) in cols.ts.iter().zip(vs) {
                b.push(*t, v);
                hour.push(*t, v);
            }
        }
    }
    let minutes: Vec<(i64, Stats)> = b.finish().into_iter().collect();
    vec![
        (RES_MINUTE, encode(&minutes)),
        (RES_HOUR, encode(&[(win * WINDOW, hour)])),
    ]
}

/// Marks the columnar layout; the first byte of the row layout is an
/// entry count under 128, so the two never meet.
const COLUMNAR: u8 = 0xC2;

/// Columnar (written): `0xC2, n varint, offsets (seconds, delta varints),
/// counts varints, num_counts (0 = as counts, else 1 and n varints),
/// first and last time offsets (zig-zag deltas from the previous
/// bucket's), first and last values (numcol columns when every bucket's
/// are numbers, else tagged values), then over the numeric buckets the
/// sum, min and max numcol columns`. Sensor rollups take ~15 bytes a
/// minute instead of ~48, and fit a page without overflow.
pub fn encode(entries: &[(i64, Stats)]) -> Vec<u8> {
    let mut out = vec![COLUMNAR];
    put_u64(&mut out, entries.len() as u64);
    let mut prev = 0i64;
    for (start, _) in entries {
        let base = start.div_euclid(WINDOW) * WINDOW;
        let off = (start - base) / US_PER_SEC;
        put_u64(&mut out, (off - prev) as u64);
        prev = off;
    }
    for (_, st) in entries {
        put_u64(&mut out, st.count);
    }
    if entries.iter().all(|(_, st)| st.num_count == st.count) {
        out.push(0);
    } else {
        out.push(1);
        for (_, st) in entries {
            put_u64(&mut out, st.num_count);
        }
    }
    let ends = |f: fn(&Stats) -> &Option<(i64, Value)>| {
        entries
            .iter()
            .map(move |(start, st)| f(st).clone().unwrap_or((*start, Value::Bool(false))))
            .map(move |(t, v)| (t, v))
    };
    let firsts: Vec<(i64, Value)> = ends(|s| &s.first).collect();
    let lasts: Vec<(i64, Value)> = ends(|s| &s.last).collect();
    for col in [&firsts, &lasts] {
        let mut prev = 0i64;
        for ((start, _), (t, _)) in entries.iter().zip(col) {
            let dt = t - start;
            put_i64(&mut out, dt - prev);
            prev = dt;
        }
    }
    for col in [&firsts, &lasts] {
        if col.iter().all(|(_, v)| matches!(v, Value::Number(_))) {
            out.push(1);
            super::numcol::put(&mut out, col.iter().map(|(_, v)| v.as_f64().unwrap_or(0.0)));
        } else {
            out.push(0);
            col.iter().for_each(|(_, v)| put_value(&mut out, v));
        }
    }
    let numeric = || {
        entries
            .iter()
            .filter(|(_, st)| st.num_count > 0)
            .map(|(_, st)| st)
    };
    super::numcol::put_near(&mut out, &numeric().map(|st| st.sum).collect::<Vec<_>>());
    super::numcol::put(&mut out, numeric().map(|st| st.min));
    super::numcol::put(&mut out, numeric().map(|st| st.max));
    out
}

pub fn decode(win: i64, data: &[u8]) -> Result<Vec<(i64, Stats)>, Corrupt> {
    if data.first() != Some(&COLUMNAR) {
        return decode_rows(win, data);
    }
    let mut r = Reader::new(&data[1..]);
    let n = r.usize()?;
    if n > 4096 {
        return Err(Corrupt(0));
    }
    let mut out = Vec::with_capacity(n);
    let mut off = 0i64;
    for _ in 0..n {
        off = off.wrapping_add(r.u64()? as i64);
        let start = win * WINDOW + off * US_PER_SEC;
        out.push((start, Stats::default()));
    }
    for (_, st) in out.iter_mut() {
        st.count = r.u64()?;
    }
    let own_num_counts = r.u8()? == 1;
    for (_, st) in out.iter_mut() {
        st.num_count = if own_num_counts { r.u64()? } else { st.count };
    }
    let mut times = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for col in times.iter_mut() {
        let mut prev = 0i64;
        for (start, _) in &out {
            prev = prev.wrapping_add(r.i64()?);
            col.push(start + prev);
        }
    }
    let mut values: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for col in values.iter_mut() {
        *col = if r.u8()? == 1 {
            super::numcol::read(&mut r, n)?
                .into_iter()
                .map(Value::Number)
                .collect()
        } else {
            (0..n)
                .map(|_| read_value(&mut r))
                .collect::<Result<_, _>>()?
        };
    }
    let [fv, lv] = values;
    let [ft, lt] = times;
    for (i, ((_, st), (f, l))) in out.iter_mut().zip(fv.into_iter().zip(lv)).enumerate() {
        st.first = Some((ft[i], f));
        st.last = Some((lt[i], l));
    }
    let numeric = out.iter().filter(|(_, st)| st.num_count > 0).count();
    let sums = super::numcol::read(&mut r, numeric)?;
    let mins = super::numcol::read(&mut r, numeric)?;
    let maxs = super::numcol::read(&mut r, numeric)?;
    for (i, (_, st)) in out
        .iter_mut()
        .filter(|(_, st)| st.num_count > 0)
        .enumerate()
    {
        st.sum = sums[i];
        st.min = mins[i];
        st.max = maxs[i];
    }
    Ok(out)
}

/// The row layout earlier binaries wrote: `n varint, {offset_s varint,
/// count varint, num_count varint, [sum, min, max f64 if num_count > 0],
/// first_dt zig-zag, value, last_dt zig-zag, value}*`.
fn decode_rows(win: i64, data: &[u8]) -> Result<Vec<(i64, Stats)>, Corrupt> {
    let mut r = Reader::new(data);
    let n = r.usize()?;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let start = win * WINDOW + r.u64()? as i64 * US_PER_SEC;
        let mut st = Stats {
            count: r.u64()?,
            num_count: r.u64()?,
            ..Stats::default()
        };
        if st.num_count > 0 {
            st.sum = r.f64()?;
            st.min = r.f64()?;
            st.max = r.f64()?;
        }
        let ft = start + r.i64()?;
        st.first = Some((ft, read_value(&mut r)?));
        let lt = start + r.i64()?;
        st.last = Some((lt, read_value(&mut r)?));
        out.push((start, st));
    }
    Ok(out)
}

/// Merges rollups of resolution `res` with bucket starts in `[from, to)`
/// into `buckets`. Fails with a 422-style error when the requested buckets
/// do not align with the rollup resolution.
pub fn aggregate(
    conn: &dyn Sql,
    sid: u32,
    res: i64,
    from: i64,
    to: i64,
    buckets: &mut Buckets,
) -> Result<(), StoreError> {
    let res_us = res * US_PER_SEC;
    let w0 = from.div_euclid(WINDOW);
    let w1 = (to - 1).div_euclid(WINDOW);
    let rows: Vec<(i64, Vec<u8>)> = conn.rows(
        "SELECT win, data FROM rollups WHERE series_id = ?1 AND res = ?2 AND win BETWEEN ?3 AND ?4 ORDER BY win",
        args![sid, res, w0, w1],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (win, data) in rows {
        for (start, st) in decode(win, &data)? {
            if start < from || start >= to {
                continue;
            }
            let (_, end) = buckets.bucketer().bucket(start);
            if end < start + res_us {
                return Err(StoreError::Invalid {
                    field: "bucket".into(),
                    rule: format!(
                        "this range is kept as {} rollups; buckets must align to them",
                        if res == RES_MINUTE {
                            "1-minute"
                        } else {
                            "1-hour"
                        }
                    ),
                });
            }
            buckets.merge_at(start, &st);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinhub_model::Quality;

    proptest::proptest! {
        /// Any statistics come back as they went in: numeric and not,
        /// on a decimal grid or not.
        #[test]
        fn columnar_round_trip(buckets in proptest::collection::btree_map(0i64..60, (1u64..100, 0u8..3, -1e6f64..1e6, 0i64..60_000_000), 1..60)) {
            let entries: Vec<(i64, Stats)> = buckets.into_iter().map(|(m, (count, kind, x, dt))| {
                let start = 3 * WINDOW + m * 60 * US_PER_SEC;
                let v = match kind { 0 => Value::Number((x * 1000.0).round() / 1000.0), 1 => Value::Number(x), _ => Value::String(format!("s{x}")) };
                let numeric = kind < 2;
                (start, Stats {
                    count,
                    num_count: if numeric { count } else { 0 },
                    sum: if numeric { x * 3.0 } else { 0.0 },
                    min: if numeric { x - 1.0 } else { f64::INFINITY },
                    max: if numeric { x + 1.0 } else { f64::NEG_INFINITY },
                    first: Some((start + dt / 2, v.clone())),
                    last: Some((start + dt, v)),
                })
            }).collect();
            let got = decode(3, &encode(&entries)).unwrap();
            proptest::prop_assert_eq!(got, entries);
        }
    }

    #[test]
    fn rollups_round_trip() {
        let mut c = Columns::default();
        for i in 0..300 {
            c.push(
                7 * WINDOW + i * 10 * US_PER_SEC,
                &Value::Number(i as f64),
                Quality::Good,
            );
        }
        let r = for_window(7, &c);
        let minutes = decode(7, &r[0].1).unwrap();
        assert_eq!(minutes.len(), 50);
        assert_eq!(minutes[0].1.count, 6);
        assert_eq!(minutes[0].1.sum, 15.0);
        assert_eq!(minutes[1].0, 7 * WINDOW + 60 * US_PER_SEC);
        assert_eq!(minutes[1].1.first.as_ref().unwrap().1, Value::Number(6.0));
        let hour = decode(7, &r[1].1).unwrap();
        assert_eq!(hour[0].1.count, 300);
        assert_eq!(hour[0].1.max, 299.0);
    }
}
