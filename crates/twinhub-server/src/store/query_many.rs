//! Bucketed statistics of many series over one range in a few statements
//! (dashboards, `POST /history/query`, the 1,000-series benchmark). Per
//! series, `aggregate` is a read transaction and two or three statements:
//! microseconds each on the embedded file, but a round trip each on
//! PostgreSQL — 1,000 series were 4,000 round trips. Here the heads are
//! read first (as `aggregate` does: see `query.rs`), then one snapshot
//! reads the chunk statistics of a slice of series in one statement and
//! the chunk data it needs in another.

use super::columns::Columns;
use super::query::{group_by_window, meta_of, push_except, Meta, META_COLS};
use super::sql::Val;
use super::{chunk, SeriesKey, Store, StoreError, WINDOW};
use std::collections::{BTreeMap, HashMap};
use twinhub_model::aggregate::Buckets;
use twinhub_model::{Bucketer, Stats};

/// Series per statement pair (bounds the chunk data held at once).
const SLICE: usize = 200;

impl Store {
    /// `aggregate` for each of `keys` over the same range, answers in the
    /// order of `keys`. Series whose range reaches back past their raw
    /// points (rollups) are answered one by one.
    pub fn aggregate_many(
        &self,
        keys: &[SeriesKey],
        from: i64,
        to: i64,
        bucketer: &Bucketer,
    ) -> Result<Vec<BTreeMap<i64, Stats>>, StoreError> {
        let mut out: Vec<Option<BTreeMap<i64, Stats>>> = vec![None; keys.len()];
        if from >= to {
            return Ok(vec![BTreeMap::new(); keys.len()]);
        }
        // The answer slots and, for each, the series and its head's points
        // in the range.
        let mut slots: Vec<usize> = Vec::new();
        let mut batch: Vec<(u32, Columns)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.sid_and_bounds(k) {
                None => out[i] = Some(BTreeMap::new()),
                Some((sid, raw_from, _)) if from >= raw_from => {
                    slots.push(i);
                    batch.push((sid, self.head_range(sid, from, to)));
                }
                Some(_) => out[i] = Some(self.aggregate(k, from, to, bucketer)?),
            }
        }
        if !batch.is_empty() {
            let mut buckets: Vec<Buckets> = batch
                .iter()
                .map(|_| Buckets::new(bucketer.clone()))
                .collect();
            self.read(|conn| {
                for (slice, into) in batch.chunks(SLICE).zip(buckets.chunks_mut(SLICE)) {
                    add_raw(conn, slice, from, to, bucketer, into)?;
                }
                Ok(())
            })?;
            for (i, b) in slots.into_iter().zip(buckets) {
                out[i] = Some(b.finish());
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }
}

fn ints_json(ids: impl Iterator<Item = i64>) -> String {
    let v: Vec<i64> = ids.collect();
    serde_json::to_string(&v).expect("ints")
}

/// Adds the raw points in `[from, to)` of each series of `slice` (its id
/// and its head's points in the range, read before this snapshot) to the
/// matching `into`: chunk statistics where a window's one chunk falls in
/// one bucket, else the chunks' points, then the head's.
pub(super) fn add_raw(
    conn: &dyn super::sql::Sql,
    slice: &[(u32, Columns)],
    from: i64,
    to: i64,
    bucketer: &Bucketer,
    into: &mut [Buckets],
) -> Result<(), StoreError> {
    let sids = ints_json(slice.iter().map(|(sid, _)| *sid as i64));
    let mut metas: HashMap<u32, Vec<Meta>> = HashMap::new();
    let sql = format!(
        "SELECT series_id, {META_COLS} FROM chunks
         WHERE series_id {} AND win BETWEEN ?2 AND ?3 AND max_ts >= ?4 AND min_ts < ?5
         ORDER BY series_id, win, id",
        conn.in_json_ints(1)
    );
    conn.each(
        &sql,
        &[
            Val::Text(&sids),
            Val::Int(from.div_euclid(WINDOW)),
            Val::Int((to - 1).div_euclid(WINDOW)),
            Val::Int(from),
            Val::Int(to),
        ],
        &mut |r| {
            let sid: u32 = r.get(0)?;
            metas.entry(sid).or_default().push(meta_of(r, 1)?);
            Ok(())
        },
    )?;
    // A window's statistics answer for it only when its one chunk falls in
    // one bucket and the head holds none of its points; otherwise its
    // points are read.
    let whole = |m: &Meta, head: &Columns| {
        m.min_ts >= from
            && m.max_ts < to
            && bucketer.bucket(m.min_ts).1 > m.max_ts
            && head.range_idx(m.min_ts, m.max_ts + 1).is_empty()
    };
    let mut wanted: Vec<i64> = Vec::new();
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for (sid, head) in slice {
        for group in group_by_window(metas.get(sid).map_or(&[][..], |v| v)) {
            if !(group.len() == 1 && whole(group[0], head)) {
                wanted.extend(group.iter().map(|m| m.id));
                lo = lo.min(group[0].win);
                hi = hi.max(group[0].win);
            }
        }
    }
    let mut data: HashMap<i64, Columns> = HashMap::with_capacity(wanted.len());
    if !wanted.is_empty() {
        let ids = ints_json(wanted.into_iter());
        conn.each(
            &format!(
                "SELECT id, data FROM chunks WHERE id {} AND win BETWEEN ?2 AND ?3",
                conn.in_json_ints(1)
            ),
            &[Val::Text(&ids), Val::Int(lo), Val::Int(hi)],
            &mut |r| {
                let id: i64 = r.get(0)?;
                let blob: Vec<u8> = r.get(1)?;
                data.insert(id, chunk::decode(&blob)?);
                Ok(())
            },
        )?;
    }
    for ((sid, head), buckets) in slice.iter().zip(into.iter_mut()) {
        for group in group_by_window(metas.get(sid).map_or(&[][..], |v| v)) {
            if group.len() == 1 && whole(group[0], head) {
                buckets.merge_at(group[0].min_ts, &group[0].stats);
                continue;
            }
            // The window's chunks merged in order: a later chunk wins on
            // equal timestamps (as `window_points` does).
            let mut merged = Columns::default();
            for m in &group {
                let c = data.get(&m.id).ok_or_else(|| StoreError::Invalid {
                    field: format!("chunk {}", m.id),
                    rule: "was listed but not read".into(),
                })?;
                merged = Columns::merge(&merged, &c.slice(c.range_idx(from, to)));
            }
            push_except(buckets, &merged, head);
        }
        push_except(buckets, head, &Columns::default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{blocking, flush, on_both_backends, open, Backend};
    use super::super::{SeriesKey, WriteBatch, WINDOW};
    use crate::clock::{OffsetClock, SharedClock};
    use std::sync::Arc;
    use twinhub_model::time::{US_PER_MIN, US_PER_SEC};
    use twinhub_model::{Bucketer, Point};

    fn k(name: &str) -> SeriesKey {
        SeriesKey::new("default", "many", name)
    }

    fn pts(name: &str, from: i64, n: i64, step: i64, v: f64) -> (SeriesKey, Vec<Point>) {
        (
            k(name),
            (0..n)
                .map(|i| Point::number(from + i * step, v + i as f64))
                .collect(),
        )
    }

    /// Whatever state a series is in — flushed, several chunks per window,
    /// in the head, both, unknown — and across the statement slices, the
    /// batched answer for many series is the answer for each alone (both
    /// are checked against a naive computation by
    /// `tests::aggregates_match_a_naive_computation`).
    async fn many_series_answer_as_each_alone(b: Backend) {
        let dir = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(OffsetClock::default());
        let s = open(&b, dir.path(), clock.clone());
        let start = (clock.now_us() - 3 * WINDOW).div_euclid(WINDOW) * WINDOW;
        let sec = US_PER_SEC;
        let mut first = WriteBatch::default();
        first
            .entries
            .push(pts("flushed", start, 720, 10 * sec, 0.0));
        first
            .entries
            .push(pts("two_chunks", start, 360, 10 * sec, 0.0));
        first.entries.push(pts("mixed", start, 100, 30 * sec, 5.0));
        for i in 0..250 {
            first.entries.push(pts(
                &format!("s{i}"),
                start + i * sec,
                3,
                700 * sec,
                i as f64,
            ));
        }
        s.append(first).await.unwrap();
        flush(&s).await;
        let mut second = WriteBatch::default();
        // Same timestamps, new values (a later chunk wins), and new ones.
        second
            .entries
            .push(pts("two_chunks", start + 5 * sec, 200, 10 * sec, 100.0));
        s.append(second).await.unwrap();
        flush(&s).await;
        let mut head = WriteBatch::default();
        head.entries
            .push(pts("head_only", start + 7 * sec, 500, 13 * sec, -3.0));
        head.entries
            .push(pts("mixed", start + 15 * sec, 50, 30 * sec, 1000.0));
        s.append(head).await.unwrap();

        let mut keys: Vec<SeriesKey> = ["flushed", "two_chunks", "mixed", "head_only", "missing"]
            .iter()
            .map(|n| k(n))
            .collect();
        keys.extend((0..250).map(|i| k(&format!("s{i}"))));
        for width in [7 * sec, US_PER_MIN, WINDOW, 2 * WINDOW] {
            let bucketer = Bucketer::new(width, None).unwrap();
            for (from, to) in [
                (start, start + 3 * WINDOW),
                (start + 17 * sec, start + 5000 * sec),
                (start + WINDOW, start + WINDOW + 1),
                (start, start),
            ] {
                let (s2, keys2, b2) = (s.clone(), keys.clone(), bucketer.clone());
                let (many, each) = blocking(move || {
                    let many = s2.aggregate_many(&keys2, from, to, &b2).unwrap();
                    let each: Vec<_> = keys2
                        .iter()
                        .map(|key| s2.aggregate(key, from, to, &b2).unwrap())
                        .collect();
                    (many, each)
                })
                .await;
                assert_eq!(many.len(), keys.len());
                for (i, (m, e)) in many.iter().zip(&each).enumerate() {
                    assert_eq!(m, e, "{} width {width} range {from}..{to}", keys[i].name);
                }
                if from + 1 < to {
                    assert!(!many[0].is_empty() && !many[3].is_empty());
                }
                assert!(many[4].is_empty(), "an unknown series has no buckets");
            }
        }
        blocking(move || s.close()).await;
    }

    on_both_backends!(many_series_answer_as_each_alone);
}
