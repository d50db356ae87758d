//! Aggregates over points: the accumulator shared by chunk statistics,
//! rollups and query buckets, and the bucketing of time (UTC epoch or a
//! time zone).

use crate::time::{US_PER_DAY, US_PER_SEC};
use crate::value::{number_json, Value};
use jiff::{civil::Date, tz::TimeZone, Timestamp};
use std::collections::BTreeMap;

/// Count, sum, min, max, first and last of a set of points. `sum`, `min`
/// and `max` cover the numeric points only (`num_count` of them); `count`,
/// `first` and `last` cover all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub num_count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: Option<(i64, Value)>,
    pub last: Option<(i64, Value)>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            count: 0,
            num_count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: None,
            last: None,
        }
    }
}

impl Stats {
    pub fn push(&mut self, ts: i64, v: &Value) {
        self.count += 1;
        if let Value::Number(n) = v {
            self.num_count += 1;
            self.sum += n;
            self.min = self.min.min(*n);
            self.max = self.max.max(*n);
        }
        if self.first.as_ref().is_none_or(|(t, _)| ts < *t) {
            self.first = Some((ts, v.clone()));
        }
        if self.last.as_ref().is_none_or(|(t, _)| ts >= *t) {
            self.last = Some((ts, v.clone()));
        }
    }

    /// Numbers only, without cloning a value per point: the hot path of
    /// aggregation over decoded chunks.
    #[inline]
    pub fn push_number(&mut self, ts: i64, n: f64) {
        self.count += 1;
        self.num_count += 1;
        self.sum += n;
        self.min = self.min.min(n);
        self.max = self.max.max(n);
        match &mut self.first {
            Some((t, v)) if ts < *t => {
                *t = ts;
                *v = Value::Number(n);
            }
            None => self.first = Some((ts, Value::Number(n))),
            _ => {}
        }
        match &mut self.last {
            Some((t, v)) if ts >= *t => {
                *t = ts;
                *v = Value::Number(n);
            }
            None => self.last = Some((ts, Value::Number(n))),
            _ => {}
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        if o.count == 0 {
            return;
        }
        self.count += o.count;
        self.num_count += o.num_count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if let Some((t, v)) = &o.first {
            if self.first.as_ref().is_none_or(|(st, _)| t < st) {
                self.first = Some((*t, v.clone()));
            }
        }
        if let Some((t, v)) = &o.last {
            if self.last.as_ref().is_none_or(|(st, _)| t >= st) {
                self.last = Some((*t, v.clone()));
            }
        }
    }

    pub fn avg(&self) -> Option<f64> {
        (self.num_count > 0).then(|| self.sum / self.num_count as f64)
    }

    /// The requested aggregates as JSON fields of one bucket.
    pub fn write_json(&self, aggs: AggSet, out: &mut serde_json::Map<String, serde_json::Value>) {
        let num = |present: bool, v: f64| {
            if present {
                number_json(v)
            } else {
                serde_json::Value::Null
            }
        };
        let has_num = self.num_count > 0;
        for agg in Agg::ALL {
            if !aggs.contains(agg) {
                continue;
            }
            let v = match agg {
                Agg::Avg => num(has_num, self.sum / self.num_count.max(1) as f64),
                Agg::Min => num(has_num, self.min),
                Agg::Max => num(has_num, self.max),
                Agg::Sum => num(has_num, self.sum),
                Agg::Count => serde_json::Value::from(self.count),
                Agg::First => self
                    .first
                    .as_ref()
                    .map(|(_, v)| v.to_json())
                    .unwrap_or_default(),
                Agg::Last => self
                    .last
                    .as_ref()
                    .map(|(_, v)| v.to_json())
                    .unwrap_or_default(),
            };
            out.insert(agg.name().to_string(), v);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Count,
    Sum,
    First,
    Last,
}

impl Agg {
    pub const ALL: [Agg; 7] = [
        Agg::Avg,
        Agg::Min,
        Agg::Max,
        Agg::Count,
        Agg::Sum,
        Agg::First,
        Agg::Last,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::First => "first",
            Agg::Last => "last",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of aggregates, parsed from `avg,min,max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggSet(u8);

impl Default for AggSet {
    fn default() -> Self {
        AggSet(Agg::Avg.bit())
    }
}

impl AggSet {
    pub fn parse(s: &str) -> Result<AggSet, String> {
        let mut set = 0u8;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let agg = Agg::ALL
                .into_iter()
                .find(|a| a.name() == part)
                .ok_or_else(|| {
                    format!(
                        "unknown aggregate '{part}'; use avg, min, max, count, sum, first, last"
                    )
                })?;
            set |= agg.bit();
        }
        if set == 0 {
            return Ok(AggSet::default());
        }
        Ok(AggSet(set))
    }

    pub fn contains(self, a: Agg) -> bool {
        self.0 & a.bit() != 0
    }
}

/// Maps a timestamp to its bucket `[start, end)`: aligned to the UTC epoch,
/// or to local time in a zone (whole-day widths follow the zone's calendar
/// days, so a DST day is 23 or 25 hours long).
#[derive(Debug, Clone)]
pub struct Bucketer {
    width: i64,
    tz: Option<TimeZone>,
}

pub const MIN_BUCKET: i64 = US_PER_SEC;
pub const MAX_BUCKET: i64 = 31 * US_PER_DAY;

impl Bucketer {
    pub fn new(width: i64, tz: Option<TimeZone>) -> Result<Bucketer, &'static str> {
        if !(MIN_BUCKET..=MAX_BUCKET).contains(&width) {
            return Err("must be between 1s and 31d");
        }
        if width % US_PER_SEC != 0 {
            return Err("must be a whole number of seconds");
        }
        Ok(Bucketer { width, tz })
    }

    pub fn width(&self) -> i64 {
        self.width
    }

    pub fn is_utc(&self) -> bool {
        self.tz.is_none()
    }

    pub fn bucket(&self, ts: i64) -> (i64, i64) {
        let Some(tz) = &self.tz else {
            let start = ts.div_euclid(self.width) * self.width;
            return (start, start + self.width);
        };
        let Ok(t) = Timestamp::from_microsecond(ts) else {
            let start = ts.div_euclid(self.width) * self.width;
            return (start, start + self.width);
        };
        if self.width % US_PER_DAY == 0 {
            let days = self.width / US_PER_DAY;
            let date = t.to_zoned(tz.clone()).date();
            let epoch = Date::constant(1970, 1, 1);
            let since = (date - epoch).get_days() as i64;
            let k = since.div_euclid(days) * days;
            let start_date = epoch.checked_add(jiff::Span::new().days(k)).unwrap_or(date);
            let end_date = start_date
                .checked_add(jiff::Span::new().days(days))
                .unwrap_or(start_date);
            let start = day_start(tz, start_date).unwrap_or(ts);
            let end = day_start(tz, end_date).unwrap_or(start + self.width);
            return (start, end);
        }
        let off = tz.to_offset(t).seconds() as i64 * US_PER_SEC;
        let local = ts + off;
        let start = local.div_euclid(self.width) * self.width - off;
        (start, start + self.width)
    }
}

fn day_start(tz: &TimeZone, d: Date) -> Option<i64> {
    d.to_zoned(tz.clone())
        .ok()
        .map(|z| z.timestamp().as_microsecond())
}

/// Groups points and partial statistics into buckets. Points may arrive in
/// any order; in-order input takes a fast path.
pub struct Buckets {
    bucketer: Bucketer,
    map: BTreeMap<i64, Stats>,
    cur: Option<(i64, i64, Stats)>,
}

impl Buckets {
    pub fn new(bucketer: Bucketer) -> Buckets {
        Buckets {
            bucketer,
            map: BTreeMap::new(),
            cur: None,
        }
    }

    pub fn bucketer(&self) -> &Bucketer {
        &self.bucketer
    }

    fn current(&mut self, ts: i64) -> &mut Stats {
        let hit = matches!(&self.cur, Some((s, e, _)) if ts >= *s && ts < *e);
        if !hit {
            if let Some((s, _, st)) = self.cur.take() {
                self.map.entry(s).or_default().merge(&st);
            }
            let (s, e) = self.bucketer.bucket(ts);
            let st = self.map.remove(&s).unwrap_or_default();
            self.cur = Some((s, e, st));
        }
        &mut self.cur.as_mut().expect("current bucket").2
    }

    #[inline]
    pub fn push(&mut self, ts: i64, v: &Value) {
        self.current(ts).push(ts, v);
    }

    #[inline]
    pub fn push_number(&mut self, ts: i64, n: f64) {
        self.current(ts).push_number(ts, n);
    }

    /// Merges statistics known to lie wholly in the bucket of `ts`.
    pub fn merge_at(&mut self, ts: i64, st: &Stats) {
        self.current(ts).merge(st);
    }

    pub fn finish(mut self) -> BTreeMap<i64, Stats> {
        if let Some((s, _, st)) = self.cur.take() {
            self.map.entry(s).or_default().merge(&st);
        }
        self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{US_PER_HOUR, US_PER_MIN};
    use proptest::prelude::*;

    fn naive(points: &[(i64, f64)], width: i64) -> BTreeMap<i64, (u64, f64, f64, f64, f64, f64)> {
        let mut out: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
        for &(t, v) in points {
            out.entry(t.div_euclid(width) * width)
                .or_default()
                .push((t, v));
        }
        out.into_iter()
            .map(|(k, mut v)| {
                v.sort_by_key(|p| p.0);
                let sum: f64 = v.iter().map(|p| p.1).sum();
                let min = v.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                let max = v.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
                (k, (v.len() as u64, sum, min, max, v[0].1, v[v.len() - 1].1))
            })
            .collect()
    }

    proptest! {
        #[test]
        fn buckets_match_naive(
            mut pts in proptest::collection::vec((0i64..10_000_000_000, -1e6f64..1e6), 1..400),
            width_s in 1i64..5000,
            split in 0usize..400,
        ) {
            pts.sort_by_key(|p| p.0);
            pts.dedup_by_key(|p| p.0);
            let width = width_s * US_PER_SEC;
            let b = Bucketer::new(width, None).unwrap();
            // Half the points go in one by one, the rest as a partial Stats
            // per bucket, the way chunk statistics are merged.
            let split = split.min(pts.len());
            let mut acc = Buckets::new(b.clone());
            for &(t, v) in &pts[..split] { acc.push_number(t, v); }
            let mut partial: BTreeMap<i64, Stats> = BTreeMap::new();
            for &(t, v) in &pts[split..] {
                partial.entry(b.bucket(t).0).or_default().push(t, &Value::Number(v));
            }
            for (s, st) in &partial { acc.merge_at(*s, st); }
            let got = acc.finish();
            let want = naive(&pts, width);
            prop_assert_eq!(got.len(), want.len());
            for ((gs, g), (ws, w)) in got.iter().zip(want.iter()) {
                prop_assert_eq!(gs, ws);
                prop_assert_eq!(g.count, w.0);
                prop_assert!((g.sum - w.1).abs() <= 1e-6 * w.1.abs().max(1.0));
                prop_assert_eq!(g.min, w.2);
                prop_assert_eq!(g.max, w.3);
                prop_assert_eq!(g.first.as_ref().unwrap().1.clone(), Value::Number(w.4));
                prop_assert_eq!(g.last.as_ref().unwrap().1.clone(), Value::Number(w.5));
            }
        }
    }

    #[test]
    fn tz_day_buckets_follow_local_midnight() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let b = Bucketer::new(US_PER_DAY, Some(tz)).unwrap();
        // 2026-03-29 is the spring-forward day in Berlin: 23 hours long.
        let t: Timestamp = "2026-03-29T12:00:00Z".parse().unwrap();
        let (s, e) = b.bucket(t.as_microsecond());
        assert_eq!(
            Timestamp::from_microsecond(s).unwrap().to_string(),
            "2026-03-28T23:00:00Z"
        );
        assert_eq!(e - s, 23 * US_PER_HOUR);
        let utc = Bucketer::new(US_PER_DAY, None).unwrap();
        assert_eq!(utc.bucket(t.as_microsecond()).0 % US_PER_DAY, 0);
    }

    #[test]
    fn tz_sub_day_buckets_use_local_offset() {
        let tz = TimeZone::get("Asia/Kolkata").unwrap();
        let b = Bucketer::new(US_PER_HOUR, Some(tz)).unwrap();
        let t: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let (s, _) = b.bucket(t.as_microsecond());
        // Local 05:40 +05:30 falls in the local 05:00 hour = 23:30Z.
        assert_eq!(
            Timestamp::from_microsecond(s).unwrap().to_string(),
            "2025-12-31T23:30:00Z"
        );
        assert!(Bucketer::new(US_PER_MIN / 2, None).is_ok());
        assert!(Bucketer::new(1000, None).is_err());
    }

    #[test]
    fn agg_set_parsing_names_the_bad_one() {
        assert!(AggSet::parse("avg,min").unwrap().contains(Agg::Min));
        assert!(AggSet::parse("").unwrap().contains(Agg::Avg));
        assert!(AggSet::parse("avg,median").unwrap_err().contains("median"));
    }

    #[test]
    fn non_numeric_stats_have_null_numeric_aggs() {
        let mut st = Stats::default();
        st.push(1, &Value::String("open".into()));
        st.push(2, &Value::String("closed".into()));
        let mut m = serde_json::Map::new();
        st.write_json(AggSet::parse("avg,count,first,last").unwrap(), &mut m);
        assert_eq!(m["avg"], serde_json::Value::Null);
        assert_eq!(m["count"], 2);
        assert_eq!(m["first"], "open");
        assert_eq!(m["last"], "closed");
    }
}
