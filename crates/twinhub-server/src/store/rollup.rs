//! Rollups: per closed window, the statistics of every minute (res 60) and
//! of the whole hour (res 3600). They outlive raw points, so long ranges
//! stay answerable after raw retention.
//!
//! Layout: `n varint, {offset_s varint, count varint, num_count varint,
//! [sum, min, max f64 if num_count > 0], first_dt zig-zag, value, last_dt
//! zig-zag, value}*`, offsets relative to the bucket start.

use super::chunk::{put_value, read_value};
use super::columns::{Columns, Vals};
use super::varint::{put_i64, put_u64, Corrupt, Reader};
use super::{StoreError, WINDOW};
use rusqlite::{params, Connection};
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

pub fn encode(entries: &[(i64, Stats)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u64(&mut out, entries.len() as u64);
    for (start, st) in entries {
        let base = start.div_euclid(WINDOW) * WINDOW;
        put_u64(&mut out, ((start - base) / US_PER_SEC) as u64);
        put_u64(&mut out, st.count);
        put_u64(&mut out, st.num_count);
        if st.num_count > 0 {
            for f in [st.sum, st.min, st.max] {
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
        for fl in [&st.first, &st.last] {
            let (t, v) = fl.clone().unwrap_or((*start, Value::Bool(false)));
            put_i64(&mut out, t - start);
            put_value(&mut out, &v);
        }
    }
    out
}

pub fn decode(win: i64, data: &[u8]) -> Result<Vec<(i64, Stats)>, Corrupt> {
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
    conn: &Connection,
    sid: u32,
    res: i64,
    from: i64,
    to: i64,
    buckets: &mut Buckets,
) -> Result<(), StoreError> {
    let res_us = res * US_PER_SEC;
    let w0 = from.div_euclid(WINDOW);
    let w1 = (to - 1).div_euclid(WINDOW);
    let mut stmt = conn.prepare_cached(
        "SELECT win, data FROM rollups WHERE series_id = ?1 AND res = ?2 AND win BETWEEN ?3 AND ?4 ORDER BY win",
    )?;
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map(params![sid, res, w0, w1], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
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
