//! The head: acknowledged points not yet compacted into chunks, held in
//! memory per series so they are queryable the moment they are durable.
//! In-order points append to a sorted column; late points go to a small
//! ordered map that wins over the column on equal timestamps.

use super::columns::Columns;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;
use twinhub_model::{Point, Quality, Value};

#[derive(Debug, Default)]
pub struct SeriesBuf {
    sorted: Columns,
    late: BTreeMap<i64, (Value, Quality)>,
}

impl SeriesBuf {
    fn append(&mut self, p: &Point) -> bool {
        match self.sorted.last_ts() {
            Some(last) if p.ts <= last => self
                .late
                .insert(p.ts, (p.value.clone(), p.quality))
                .is_none(),
            _ => {
                self.sorted.push(p.ts, &p.value, p.quality);
                true
            }
        }
    }

    pub fn range(&self, from: i64, to: i64) -> Columns {
        let base = self.sorted.slice(self.sorted.range_idx(from, to));
        if self.late.is_empty() {
            return base;
        }
        let mut newer = Columns::default();
        for (t, (v, q)) in self.late.range(from..to) {
            newer.push(*t, v, *q);
        }
        Columns::merge(&base, &newer)
    }

    fn delete_range(&mut self, from: i64, to: i64) -> usize {
        let before = self.late.len();
        self.late.retain(|t, _| *t < from || *t >= to);
        self.sorted.remove_range(from, to) + before - self.late.len()
    }

    pub fn last(&self) -> Option<Point> {
        let a = self
            .sorted
            .len()
            .checked_sub(1)
            .map(|i| self.sorted.point(i));
        let b = self.late.last_key_value().map(|(t, (v, q))| Point {
            ts: *t,
            value: v.clone(),
            quality: *q,
        });
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.ts >= a.ts { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Default)]
pub struct Head {
    pub series: HashMap<u32, SeriesBuf>,
    pub points: usize,
    /// When the oldest point still in this head was appended.
    pub since: Option<Instant>,
    /// Highest batch-log sequence whose points are in this head.
    pub max_seq: u64,
    /// Bytes of batch-log records behind this head.
    pub log_bytes: usize,
}

impl Head {
    /// An empty head with room for `n` series.
    pub fn with_series(n: usize) -> Head {
        Head {
            series: HashMap::with_capacity(n),
            ..Head::default()
        }
    }

    pub fn append(&mut self, sid: u32, points: &[Point], seq: u64) {
        let buf = self.series.entry(sid).or_default();
        for p in points {
            if buf.append(p) {
                self.points += 1;
            }
        }
        self.since.get_or_insert_with(Instant::now);
        self.max_seq = self.max_seq.max(seq);
    }

    pub fn range(&self, sid: u32, from: i64, to: i64) -> Option<Columns> {
        self.series.get(&sid).map(|b| b.range(from, to))
    }

    pub fn delete_range(&mut self, sid: u32, from: i64, to: i64) -> usize {
        let n = self
            .series
            .get_mut(&sid)
            .map(|b| b.delete_range(from, to))
            .unwrap_or(0);
        self.points -= n;
        n
    }

    pub fn is_empty(&self) -> bool {
        self.points == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_points_win_and_merge_in_order() {
        let mut h = Head::default();
        h.append(
            1,
            &[
                Point::number(10, 1.0),
                Point::number(20, 2.0),
                Point::number(30, 3.0),
            ],
            1,
        );
        h.append(
            1,
            &[
                Point::number(20, 9.0),
                Point::number(15, 5.0),
                Point::number(30, 7.0),
            ],
            2,
        );
        let c = h.range(1, 0, 100).unwrap();
        assert_eq!(c.ts, vec![10, 15, 20, 30]);
        assert_eq!(c.vals.get(2), Value::Number(9.0));
        assert_eq!(c.vals.get(3), Value::Number(7.0));
        // `points` counts stored entries (what memory holds), not distinct
        // timestamps.
        assert_eq!(h.points, 6);
        assert_eq!(h.series[&1].last().unwrap().value, Value::Number(7.0));
        assert_eq!(h.delete_range(1, 15, 21), 3);
        assert_eq!(h.range(1, 0, 100).unwrap().ts, vec![10, 30]);
        assert_eq!(h.points, 3);
    }
}
