//! Reads and history deletion. A read takes the head's points first and
//! then the chunks in one snapshot: a flush commits its chunks before it
//! drops the frozen head, so in that order every acknowledged point is
//! seen at least once, and the merge (head over chunks, newer chunk over
//! older) sees it exactly once.

use super::columns::Columns;
use super::sql::{args, Sql};
use super::writer::insert_chunk;
use super::{chunk, rollup, NewChunk, SeriesKey, Store, StoreError, WINDOW};
use std::collections::BTreeMap;
use twinhub_model::aggregate::Buckets;
use twinhub_model::time::{format_rfc3339, US_PER_SEC};
use twinhub_model::{Bucketer, Point, Stats};

pub(super) struct Meta {
    pub(super) id: i64,
    pub(super) win: i64,
    pub(super) min_ts: i64,
    pub(super) max_ts: i64,
    pub(super) stats: Stats,
}

/// The chunk columns a `Meta` is read from, `META_COLS` of them.
pub(super) const META_COLS: &str =
    "id, win, min_ts, max_ts, count, num_count, sum, min, max, first, last";

/// A `Meta` from a row holding `META_COLS` from column `at` on.
pub(super) fn meta_of(r: &dyn super::sql::Row, at: usize) -> Result<Meta, StoreError> {
    let (min_ts, max_ts): (i64, i64) = (r.get(at + 2)?, r.get(at + 3)?);
    let first: Vec<u8> = r.get(at + 9)?;
    let last: Vec<u8> = r.get(at + 10)?;
    Ok(Meta {
        id: r.get(at)?,
        win: r.get(at + 1)?,
        min_ts,
        max_ts,
        stats: Stats {
            count: r.get::<i64>(at + 4)? as u64,
            num_count: r.get::<i64>(at + 5)? as u64,
            sum: r.get(at + 6)?,
            min: r.get::<Option<f64>>(at + 7)?.unwrap_or(f64::INFINITY),
            max: r.get::<Option<f64>>(at + 8)?.unwrap_or(f64::NEG_INFINITY),
            first: chunk::value_from_blob(&first).map(|v| (min_ts, v)),
            last: chunk::value_from_blob(&last).map(|v| (max_ts, v)),
        },
    })
}

fn chunk_metas(conn: &dyn Sql, sid: u32, from: i64, to: i64) -> Result<Vec<Meta>, StoreError> {
    conn.rows(
        &format!(
            "SELECT {META_COLS} FROM chunks
             WHERE series_id = ?1 AND win BETWEEN ?2 AND ?3 AND max_ts >= ?4 AND min_ts < ?5 ORDER BY win, id"
        ),
        args![
            sid,
            from.div_euclid(WINDOW),
            (to - 1).div_euclid(WINDOW),
            from,
            to
        ],
        |r| meta_of(r, 0),
    )
}

/// By id and window: on PostgreSQL the window picks the partition.
fn load_chunk(conn: &dyn Sql, m: &Meta) -> Result<Columns, StoreError> {
    let data: Vec<u8> = conn.one(
        "SELECT data FROM chunks WHERE id = ?1 AND win = ?2",
        args![m.id, m.win],
    )?;
    Ok(chunk::decode(&data)?)
}

/// The chunks of one window merged (a later chunk wins on equal
/// timestamps), limited to `[from, to)`.
fn window_points(
    conn: &dyn Sql,
    metas: &[&Meta],
    from: i64,
    to: i64,
) -> Result<Columns, StoreError> {
    let mut merged = Columns::default();
    for m in metas {
        let c = load_chunk(conn, m)?;
        let c = c.slice(c.range_idx(from, to));
        merged = Columns::merge(&merged, &c);
    }
    Ok(merged)
}

pub(super) fn group_by_window(metas: &[Meta]) -> Vec<Vec<&Meta>> {
    let mut out: Vec<Vec<&Meta>> = Vec::new();
    for m in metas {
        match out.last_mut() {
            Some(g) if g[0].win == m.win => g.push(m),
            _ => out.push(vec![m]),
        }
    }
    out
}

impl Store {
    /// Bytes and points in chunks of the twins whose id starts with
    /// `prefix` (benchmarks' size per point).
    pub fn chunk_bytes_of_twins(&self, prefix: &str) -> Result<(i64, i64), StoreError> {
        self.read(|c| {
            let like = format!("{prefix}%");
            c.row(
                "SELECT CAST(COALESCE(SUM(LENGTH(c.data)), 0) AS BIGINT), CAST(COALESCE(SUM(c.count), 0) AS BIGINT) FROM chunks c JOIN series s ON s.id = c.series_id WHERE s.twin LIKE ?1",
                args![&like],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Option::unwrap_or_default)
        })
    }

    pub(super) fn sid_and_bounds(&self, key: &SeriesKey) -> Option<(u32, i64, i64)> {
        let index = self.engine().index.read().expect("index");
        let sid = index.sid(key)?;
        Some((
            sid,
            index.raw_from.get(&sid).copied().unwrap_or(i64::MIN),
            index.rollup_from.get(&sid).copied().unwrap_or(i64::MIN),
        ))
    }

    /// The finest bucket width (µs) the series can answer from `from` on:
    /// a second where raw points are kept, else the rollups' resolution.
    pub fn finest_resolution(&self, key: &SeriesKey, from: i64) -> i64 {
        match self.sid_and_bounds(key) {
            Some((_, raw_from, _)) if from >= raw_from => US_PER_SEC,
            Some((_, _, rollup_from)) if from >= rollup_from => rollup::RES_MINUTE * US_PER_SEC,
            Some(_) => rollup::RES_HOUR * US_PER_SEC,
            None => US_PER_SEC,
        }
    }

    /// From when raw points of a series are complete (0 if never trimmed).
    pub fn raw_from(&self, key: &SeriesKey) -> i64 {
        self.sid_and_bounds(key)
            .map(|(_, r, _)| r.max(0))
            .unwrap_or(0)
    }

    pub(super) fn head_range(&self, sid: u32, from: i64, to: i64) -> Columns {
        let e = self.engine();
        let frozen = e.frozen.read().expect("frozen");
        let active = e.active.read().expect("head");
        let f = frozen
            .as_ref()
            .and_then(|h| h.range(sid, from, to))
            .unwrap_or_default();
        let a = active.range(sid, from, to).unwrap_or_default();
        Columns::merge(&f, &a)
    }

    /// Raw points in `[from, to)`, oldest first, at most `limit`.
    pub fn raw(
        &self,
        key: &SeriesKey,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<Point>, StoreError> {
        let Some((sid, raw_from, _)) = self.sid_and_bounds(key) else {
            return Ok(Vec::new());
        };
        if from < raw_from {
            return Err(StoreError::Invalid {
                field: "from".into(),
                rule: format!(
                    "raw points before {} are no longer kept (raw retention); the finest resolution kept there is 1m: ask for bucket=1m or coarser",
                    format_rfc3339(raw_from)
                ),
            });
        }
        if from >= to || limit == 0 {
            return Ok(Vec::new());
        }
        let head = self.head_range(sid, from, to);
        let (chunk_pts, stopped_at) = self.read(|conn| {
            let metas = chunk_metas(conn, sid, from, to)?;
            let mut out = Columns::default();
            for group in group_by_window(&metas) {
                out.extend_from(&window_points(conn, &group, from, to)?);
                if out.len() >= limit {
                    return Ok((out, Some((group[0].win + 1) * WINDOW)));
                }
            }
            Ok((out, None))
        })?;
        let head = match stopped_at {
            Some(end) => head.slice(head.range_idx(from, end)),
            None => head,
        };
        let all = Columns::merge(&chunk_pts, &head);
        Ok((0..all.len().min(limit)).map(|i| all.point(i)).collect())
    }

    /// Bucketed statistics over `[from, to)`: exact over raw points, from
    /// rollups where raw points were retired.
    pub fn aggregate(
        &self,
        key: &SeriesKey,
        from: i64,
        to: i64,
        bucketer: &Bucketer,
    ) -> Result<BTreeMap<i64, Stats>, StoreError> {
        let mut buckets = Buckets::new(bucketer.clone());
        let Some((sid, raw_from, rollup_from)) = self.sid_and_bounds(key) else {
            return Ok(BTreeMap::new());
        };
        if from >= to {
            return Ok(BTreeMap::new());
        }
        if from < raw_from {
            let (res, kept) = if from < rollup_from {
                (rollup::RES_HOUR, "1h")
            } else {
                (rollup::RES_MINUTE, "1m")
            };
            if bucketer.width() % (res * US_PER_SEC) != 0 {
                return Err(StoreError::Invalid {
                    field: "bucket".into(),
                    rule: format!(
                        "data before {} is kept only as rollups; the finest resolution kept there is {kept}",
                        format_rfc3339(if res == rollup::RES_HOUR { rollup_from } else { raw_from })
                    ),
                });
            }
            // A rollup is counted whole or not at all, and there is no
            // finer data where only rollups are kept: the range's edges
            // must fall on rollup boundaries there, or the answer would
            // count points outside the range (or miss some inside it).
            let hour_end = rollup_from.min(raw_from).min(to);
            if from < rollup_from {
                edge_aligned("from", from, rollup::RES_HOUR, rollup_from)?;
                if hour_end == to {
                    edge_aligned("to", to, rollup::RES_HOUR, rollup_from)?;
                }
            }
            let lo = from.max(rollup_from);
            if lo < raw_from.min(to) {
                edge_aligned("from", lo, rollup::RES_MINUTE, raw_from)?;
                if to < raw_from {
                    edge_aligned("to", to, rollup::RES_MINUTE, raw_from)?;
                }
            }
            // Points that arrived after their window's raw points were
            // retired wait in the head or in chunks until retention adds
            // them to the rollups: count them from there meanwhile.
            let late_to = raw_from.min(to);
            let late_head = self.head_range(sid, from, late_to);
            self.read(|conn| {
                if from < rollup_from {
                    rollup::aggregate(conn, sid, rollup::RES_HOUR, from, hour_end, &mut buckets)?;
                }
                if lo < late_to {
                    rollup::aggregate(conn, sid, rollup::RES_MINUTE, lo, late_to, &mut buckets)?;
                }
                let metas = chunk_metas(conn, sid, from, late_to)?;
                for group in group_by_window(&metas) {
                    let pts = window_points(conn, &group, from, late_to)?;
                    push_except(&mut buckets, &pts, &late_head);
                }
                Ok(())
            })?;
            push_except(&mut buckets, &late_head, &Columns::default());
        }
        let lo = from.max(raw_from);
        if lo < to {
            // The raw part as for many series: two statements however many
            // chunks (a round trip each on PostgreSQL otherwise).
            let slice = [(sid, self.head_range(sid, lo, to))];
            self.read(|conn| {
                super::query_many::add_raw(
                    conn,
                    &slice,
                    lo,
                    to,
                    bucketer,
                    std::slice::from_mut(&mut buckets),
                )
            })?;
        }
        Ok(buckets.finish())
    }

    /// Deletes the points of a series in `[from, to)`: chunks are rewritten,
    /// the head trimmed, and a tombstone keeps the batch log from bringing
    /// them back at replay.
    pub async fn delete_range(
        &self,
        key: &SeriesKey,
        from: i64,
        to: i64,
    ) -> Result<(), StoreError> {
        let Some((sid, _, _)) = self.sid_and_bounds(key) else {
            return Ok(());
        };
        self.write(move |ctx| {
            let tx = ctx.tx;
            let metas = chunk_metas(tx, sid, from, to)?;
            let mut windows = Vec::new();
            for m in &metas {
                let cols = load_chunk(tx, m)?;
                tx.exec(
                    "DELETE FROM chunks WHERE id = ?1 AND win = ?2",
                    args![m.id, m.win],
                )?;
                let mut kept = cols.clone();
                kept.remove_range(from, to);
                if !kept.is_empty() {
                    insert_chunk(tx, &NewChunk::new(sid, kept))?;
                }
                windows.push(m.win);
            }
            trim_rollups(tx, sid, from, to)?;
            let seq: i64 = tx.one(
                "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM batch_log",
                args![],
            )?;
            tx.exec(
                "INSERT INTO tombstones(series_id, from_ts, to_ts, seq) VALUES (?1, ?2, ?3, ?4)",
                args![sid, from, to, seq],
            )?;
            let chunk_last: Option<(i64, Vec<u8>)> = tx.row(
                "SELECT max_ts, last FROM chunks WHERE series_id = ?1 ORDER BY max_ts DESC LIMIT 1",
                args![sid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let engine_dirty: Vec<(u32, i64)> = windows.into_iter().map(|w| (sid, w)).collect();
            ctx.after_commit(move |engine| {
                let mut frozen = engine.frozen.write().expect("frozen");
                let mut active = engine.active.write().expect("head");
                active.delete_range(sid, from, to);
                let mut head_last = active.series.get(&sid).and_then(|b| b.last());
                if let Some(f) = frozen.as_mut() {
                    f.delete_range(sid, from, to);
                    engine
                        .deletes_since_freeze
                        .lock()
                        .expect("deletes")
                        .push((sid, from, to));
                    let fl = f.series.get(&sid).and_then(|b| b.last());
                    if fl
                        .as_ref()
                        .is_some_and(|f| head_last.as_ref().is_none_or(|h| f.ts > h.ts))
                    {
                        head_last = fl;
                    }
                }
                let chunk_last = chunk_last.and_then(|(ts, b)| {
                    chunk::value_from_blob(&b).map(|value| Point {
                        ts,
                        value,
                        quality: Default::default(),
                    })
                });
                let newest = match (head_last, chunk_last) {
                    (Some(h), Some(c)) => Some(if h.ts >= c.ts { h } else { c }),
                    (h, c) => h.or(c),
                };
                let mut latest = engine.latest.write().expect("latest");
                match newest {
                    Some(p) => latest.insert(sid, p),
                    None => latest.remove(&sid),
                };
                engine.dirty.lock().expect("dirty").extend(engine_dirty);
            });
            Ok(())
        })
        .await
    }
}

/// Removes 1-minute rollup entries that start inside `[from, to)` and
/// 1-hour rollups of windows wholly inside it. Windows that still have
/// chunks get their rollups recomputed exactly by the compactor.
fn trim_rollups(tx: &dyn Sql, sid: u32, from: i64, to: i64) -> Result<(), StoreError> {
    let (w0, w1) = (from.div_euclid(WINDOW), (to - 1).div_euclid(WINDOW));
    let rows: Vec<(i64, Vec<u8>)> = tx.rows(
        "SELECT win, data FROM rollups WHERE series_id = ?1 AND res = 60 AND win BETWEEN ?2 AND ?3",
        args![sid, w0, w1],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (win, data) in rows {
        let kept: Vec<(i64, Stats)> = rollup::decode(win, &data)?
            .into_iter()
            .filter(|(s, _)| *s < from || *s >= to)
            .collect();
        if kept.is_empty() {
            tx.exec(
                "DELETE FROM rollups WHERE series_id = ?1 AND res = 60 AND win = ?2",
                args![sid, win],
            )?;
        } else {
            tx.exec(
                "UPDATE rollups SET data = ?3 WHERE series_id = ?1 AND res = 60 AND win = ?2",
                args![sid, win, &rollup::encode(&kept)],
            )?;
        }
    }
    tx.exec(
        "DELETE FROM rollups WHERE series_id = ?1 AND res = 3600 AND win * ?4 >= ?2 AND (win + 1) * ?4 <= ?3",
        args![sid, from, to, WINDOW],
    )?;
    Ok(())
}

/// Where only rollups of `res` seconds are kept (before `kept_until`), a
/// range edge must fall on a rollup boundary.
fn edge_aligned(field: &str, t: i64, res: i64, kept_until: i64) -> Result<(), StoreError> {
    let step = res * US_PER_SEC;
    if t.rem_euclid(step) == 0 {
        return Ok(());
    }
    let (unit, floor) = (
        if res == rollup::RES_HOUR { "1h" } else { "1m" },
        t.div_euclid(step) * step,
    );
    Err(StoreError::Invalid {
        field: field.into(),
        rule: format!(
            "data before {} is kept only as {unit} rollups, so `{field}` must fall on a whole {unit} boundary there (e.g. {})",
            format_rfc3339(kept_until),
            format_rfc3339(floor)
        ),
    })
}

/// Pushes the points of `pts` whose timestamps are not in `skip` (sorted).
pub(super) fn push_except(buckets: &mut Buckets, pts: &Columns, skip: &Columns) {
    let mut j = 0;
    for i in 0..pts.len() {
        let t = pts.ts[i];
        while j < skip.len() && skip.ts[j] < t {
            j += 1;
        }
        if j < skip.len() && skip.ts[j] == t {
            continue;
        }
        match &pts.vals {
            super::columns::Vals::Num(ns) => buckets.push_number(t, ns[i]),
            super::columns::Vals::Any(vs) => buckets.push(t, &vs[i]),
        }
    }
}
