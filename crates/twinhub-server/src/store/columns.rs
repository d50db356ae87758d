//! Columnar point buffers shared by the head, chunks and query results:
//! timestamps, values (a dense f64 column while a series is all numbers)
//! and an optional quality column (absent while every point is good).

use twinhub_model::{Point, Quality, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Vals {
    Num(Vec<f64>),
    Any(Vec<Value>),
}

impl Default for Vals {
    fn default() -> Self {
        Vals::Num(Vec::new())
    }
}

impl Vals {
    fn widen(&mut self) -> &mut Vec<Value> {
        if let Vals::Num(ns) = self {
            *self = Vals::Any(ns.iter().map(|n| Value::Number(*n)).collect());
        }
        match self {
            Vals::Any(v) => v,
            Vals::Num(_) => unreachable!("widened above"),
        }
    }

    pub fn get(&self, i: usize) -> Value {
        match self {
            Vals::Num(v) => Value::Number(v[i]),
            Vals::Any(v) => v[i].clone(),
        }
    }
}

/// Points of one series in ascending timestamp order without duplicates
/// (every constructor and operation here keeps that invariant).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Columns {
    pub ts: Vec<i64>,
    pub vals: Vals,
    pub quality: Option<Vec<u8>>,
}

impl Columns {
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    pub fn with_capacity(n: usize) -> Columns {
        Columns {
            ts: Vec::with_capacity(n),
            vals: Vals::Num(Vec::with_capacity(n)),
            quality: None,
        }
    }

    pub fn quality_at(&self, i: usize) -> Quality {
        self.quality
            .as_ref()
            .map(|q| Quality::from_u8(q[i]))
            .unwrap_or_default()
    }

    pub fn point(&self, i: usize) -> Point {
        Point {
            ts: self.ts[i],
            value: self.vals.get(i),
            quality: self.quality_at(i),
        }
    }

    pub fn last_ts(&self) -> Option<i64> {
        self.ts.last().copied()
    }

    /// Appends a point whose timestamp is greater than the last one.
    pub fn push(&mut self, ts: i64, v: &Value, q: Quality) {
        debug_assert!(self.ts.last().is_none_or(|l| *l < ts));
        let i = self.ts.len();
        self.ts.push(ts);
        match (&mut self.vals, v) {
            (Vals::Num(ns), Value::Number(n)) => ns.push(*n),
            (vals, v) => vals.widen().push(v.clone()),
        }
        if q != Quality::Good || self.quality.is_some() {
            let col = self.quality.get_or_insert_with(|| vec![0; i]);
            col.push(q.as_u8());
        }
    }

    pub fn push_from(&mut self, other: &Columns, i: usize) {
        match (&mut self.vals, &other.vals) {
            (Vals::Num(ns), Vals::Num(os)) => {
                let q = other.quality_at(i);
                self.ts.push(other.ts[i]);
                ns.push(os[i]);
                if q != Quality::Good || self.quality.is_some() {
                    let n = self.ts.len() - 1;
                    self.quality
                        .get_or_insert_with(|| vec![0; n])
                        .push(q.as_u8());
                }
            }
            _ => self.push(other.ts[i], &other.vals.get(i), other.quality_at(i)),
        }
    }

    /// Appends points that all lie after the last one here.
    pub fn extend_from(&mut self, other: &Columns) {
        for i in 0..other.len() {
            self.push_from(other, i);
        }
    }

    pub fn from_points(points: &[Point]) -> Columns {
        let mut c = Columns::with_capacity(points.len());
        for p in points {
            c.push(p.ts, &p.value, p.quality);
        }
        c
    }

    /// Index range of the points with `from <= ts < to`.
    pub fn range_idx(&self, from: i64, to: i64) -> std::ops::Range<usize> {
        let a = self.ts.partition_point(|t| *t < from);
        let b = self.ts.partition_point(|t| *t < to);
        a..b.max(a)
    }

    pub fn slice(&self, r: std::ops::Range<usize>) -> Columns {
        Columns {
            ts: self.ts[r.clone()].to_vec(),
            vals: match &self.vals {
                Vals::Num(v) => Vals::Num(v[r.clone()].to_vec()),
                Vals::Any(v) => Vals::Any(v[r.clone()].to_vec()),
            },
            quality: self.quality.as_ref().map(|q| q[r].to_vec()),
        }
    }

    /// Removes the points with `from <= ts < to`; returns how many.
    pub fn remove_range(&mut self, from: i64, to: i64) -> usize {
        let r = self.range_idx(from, to);
        let n = r.len();
        if n == 0 {
            return 0;
        }
        self.ts.drain(r.clone());
        match &mut self.vals {
            Vals::Num(v) => {
                v.drain(r.clone());
            }
            Vals::Any(v) => {
                v.drain(r.clone());
            }
        }
        if let Some(q) = &mut self.quality {
            q.drain(r);
        }
        n
    }

    /// Merges two sorted, de-duplicated point sets; on equal timestamps the
    /// point of `newer` wins.
    pub fn merge(older: &Columns, newer: &Columns) -> Columns {
        if older.is_empty() {
            return newer.clone();
        }
        if newer.is_empty() {
            return older.clone();
        }
        let mut out = Columns::with_capacity(older.len() + newer.len());
        let (mut i, mut j) = (0, 0);
        while i < older.len() || j < newer.len() {
            let take_newer = match (older.ts.get(i), newer.ts.get(j)) {
                (Some(a), Some(b)) => {
                    if a == b {
                        i += 1;
                        true
                    } else {
                        b < a
                    }
                }
                (None, Some(_)) => true,
                _ => false,
            };
            if take_newer {
                out.push_from(newer, j);
                j += 1;
            } else {
                out.push_from(older, i);
                i += 1;
            }
        }
        out
    }

    pub fn to_points(&self) -> Vec<Point> {
        (0..self.len()).map(|i| self.point(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn cols(m: &BTreeMap<i64, f64>) -> Columns {
        let mut c = Columns::default();
        for (t, v) in m {
            c.push(*t, &Value::Number(*v), Quality::Good);
        }
        c
    }

    proptest! {
        #[test]
        fn merge_newer_wins(a in proptest::collection::btree_map(0i64..200, -5f64..5.0, 0..50),
                            b in proptest::collection::btree_map(0i64..200, -5f64..5.0, 0..50)) {
            let merged = Columns::merge(&cols(&a), &cols(&b));
            let mut want = a.clone();
            want.extend(b.iter());
            prop_assert_eq!(merged, cols(&want));
        }
    }

    #[test]
    fn mixed_types_and_quality() {
        let mut c = Columns::default();
        c.push(1, &Value::Number(1.0), Quality::Good);
        c.push(2, &Value::String("x".into()), Quality::Bad);
        c.push(3, &Value::Bool(true), Quality::Good);
        assert_eq!(c.point(1).value, Value::String("x".into()));
        assert_eq!(c.quality_at(1), Quality::Bad);
        assert_eq!(c.quality_at(0), Quality::Good);
        assert_eq!(c.remove_range(2, 3), 1);
        assert_eq!(c.ts, vec![1, 3]);
        assert_eq!(c.quality_at(1), Quality::Good);
    }
}
