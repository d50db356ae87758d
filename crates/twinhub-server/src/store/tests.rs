//! The store's conformance suite: what an acknowledged write guarantees
//! (queryable, durable across restart, exact aggregates) through flushes,
//! merges, deletions and retention — on the embedded file in a temporary
//! directory and on the real PostgreSQL (a schema per test). Tests of
//! SQLite's own file (pages, vacuum) run on SQLite only.

#![allow(non_snake_case)]
use super::sql::args;
use super::sql_tests::{pg_url, Schema};
use super::*;
use crate::clock::{Clock, OffsetClock, SharedClock};
use proptest::prelude::*;
use std::sync::Arc;
use twinhub_model::time::{US_PER_MIN, US_PER_SEC};
use twinhub_model::{Bucketer, Value};

/// The start of the hour five hours ago: recent enough for retention to
/// keep it, old enough for its windows to count as closed.
pub(super) fn t0() -> i64 {
    let now = crate::clock::SystemClock.now_us();
    (now - 5 * WINDOW).div_euclid(WINDOW) * WINDOW
}

/// Which database a test's store runs on.
#[derive(Clone)]
pub(super) enum Backend {
    Sqlite,
    /// The real PostgreSQL, in a schema of the test's own (dropped with
    /// the last clone).
    Postgres(Arc<Schema>),
}

impl Backend {
    pub(super) fn postgres() -> Backend {
        Backend::Postgres(Arc::new(Schema::new()))
    }

    fn options(&self, opts: StoreOptions) -> StoreOptions {
        match self {
            Backend::Sqlite => opts,
            Backend::Postgres(s) => StoreOptions {
                url: Some(pg_url()),
                schema: Some(s.name.clone()),
                ..opts
            },
        }
    }
}

/// `on_both_backends!(name, …)`: the tests `name::sqlite` and
/// `name::postgres` run `async fn name(b: Backend)` on each backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::postgres()).await
            }
        }
    )*};
}
pub(super) use on_both_backends;

pub(super) fn open(b: &Backend, dir: &Path, clock: SharedClock) -> Store {
    let opts = b.options(StoreOptions {
        tick: Duration::from_secs(3600),
        ..StoreOptions::default()
    });
    let s = Store::open(DirLock::acquire(dir).unwrap(), opts, clock).unwrap();
    let want = match b {
        Backend::Sqlite => sql::Dialect::Sqlite,
        Backend::Postgres(_) => sql::Dialect::Postgres,
    };
    assert_eq!(s.read(|c| Ok(c.dialect())).unwrap(), want);
    s
}

/// Rows in a table, on either backend.
pub(super) fn rows_in(s: &Store, table: &str) -> i64 {
    s.read(|c| c.one(&format!("SELECT COUNT(*) FROM {table}"), args![]))
        .unwrap()
}

pub(super) fn key(name: &str) -> SeriesKey {
    SeriesKey::new("default", "reactor1", name)
}

pub(super) fn batch(name: &str, pts: &[(i64, f64)]) -> WriteBatch {
    WriteBatch {
        entries: vec![(
            key(name),
            pts.iter().map(|(t, v)| Point::number(*t, *v)).collect(),
        )],
    }
}

pub(super) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Flushes, merges, rolls up and retires now (off the async workers).
pub(super) async fn compact(s: &Store) {
    let s = s.clone();
    blocking(move || s.compact_now().unwrap()).await
}

/// Series "t" with 60 points of value 1.0 in an hour 40 days back, past
/// the default raw retention and retired into rollups; the hour's start.
pub(super) async fn a_retired_hour(s: &Store, clock: &dyn Clock) -> i64 {
    let start = (clock.now_us() - 40 * DAY).div_euclid(WINDOW) * WINDOW;
    let pts: Vec<(i64, f64)> = (0..60).map(|i| (start + i * US_PER_MIN, 1.0)).collect();
    s.append(batch("t", &pts)).await.unwrap();
    compact(s).await;
    start
}

/// Moves the head into chunks (off the async workers, as the compactor does).
pub(super) async fn flush(s: &Store) {
    let s = s.clone();
    blocking(move || s.flush().unwrap()).await
}

pub(super) fn values(points: &[Point]) -> Vec<(i64, f64)> {
    points
        .iter()
        .map(|p| (p.ts, p.value.as_f64().unwrap()))
        .collect()
}

async fn acknowledged_points_are_queryable_and_survive_restart(b: Backend) {
    let T0 = t0();
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    s.append(batch("temp", &[(T0, 1.0), (T0 + 2, 2.0), (T0 + 1, 1.5)]))
        .await
        .unwrap();
    // A retry of the same timestamp overwrites instead of double-counting.
    s.append(batch("temp", &[(T0 + 2, 2.5)])).await.unwrap();
    let got = s.raw(&key("temp"), T0, T0 + 10, 100).unwrap();
    assert_eq!(values(&got), vec![(T0, 1.0), (T0 + 1, 1.5), (T0 + 2, 2.5)]);
    assert_eq!(
        s.latest_of_twin("default", "reactor1")[0].1.value,
        Value::Number(2.5)
    );
    // Drop without close: the batch log is all there is.
    blocking({
        let s = s.clone();
        move || s.close_writer_only()
    })
    .await;
    drop(s);
    let s = open(&b, dir.path(), clock);
    let got = s.raw(&key("temp"), T0, T0 + 10, 100).unwrap();
    assert_eq!(values(&got), vec![(T0, 1.0), (T0 + 1, 1.5), (T0 + 2, 2.5)]);
    assert_eq!(s.latest_of_twin("default", "reactor1")[0].1.ts, T0 + 2);
    blocking(move || s.close()).await;
}

async fn flush_merge_and_restart_keep_every_point(b: Backend) {
    let T0 = t0();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    let pts: Vec<(i64, f64)> = (0..7200)
        .map(|i| (T0 + i * US_PER_SEC, (i % 97) as f64))
        .collect();
    s.append(batch("temp", &pts[..3000])).await.unwrap();
    flush(&s).await;
    s.append(batch("temp", &pts[3000..])).await.unwrap();
    // A late overwrite of a point that is already in a chunk.
    s.append(batch("temp", &[(T0 + 10 * US_PER_SEC, -1.0)]))
        .await
        .unwrap();
    flush(&s).await;
    let mut want = pts.clone();
    want[10].1 = -1.0;
    assert_eq!(
        values(
            &s.raw(&key("temp"), T0, T0 + 7200 * US_PER_SEC, 10_000)
                .unwrap()
        ),
        want
    );
    // Close the windows and merge them into single chunks with rollups.
    blocking({
        let s = s.clone();
        move || s.compact_now().unwrap()
    })
    .await;
    let chunks: i64 = rows_in(&s, "chunks");
    assert_eq!(chunks, 2, "one chunk per closed window");
    assert_eq!(
        values(
            &s.raw(&key("temp"), T0, T0 + 7200 * US_PER_SEC, 10_000)
                .unwrap()
        ),
        want
    );
    // Paging: the first page stops at the limit.
    let page = s
        .raw(&key("temp"), T0, T0 + 7200 * US_PER_SEC, 100)
        .unwrap();
    assert_eq!(values(&page), want[..100].to_vec());
    blocking(move || s.close()).await;
    let s = open(&b, dir.path(), clock);
    assert_eq!(
        values(
            &s.raw(&key("temp"), T0, T0 + 7200 * US_PER_SEC, 10_000)
                .unwrap()
        ),
        want
    );
    blocking(move || s.close()).await;
}

async fn deleted_ranges_stay_deleted_across_flush_and_restart(b: Backend) {
    let T0 = t0();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    let pts: Vec<(i64, f64)> = (0..100).map(|i| (T0 + i * US_PER_SEC, i as f64)).collect();
    s.append(batch("p", &pts[..50])).await.unwrap();
    flush(&s).await;
    s.append(batch("p", &pts[50..])).await.unwrap();
    // Delete a range spanning a chunk and the head.
    s.delete_range(&key("p"), T0 + 40 * US_PER_SEC, T0 + 60 * US_PER_SEC)
        .await
        .unwrap();
    let want: Vec<(i64, f64)> = pts
        .iter()
        .copied()
        .filter(|(t, _)| *t < T0 + 40 * US_PER_SEC || *t >= T0 + 60 * US_PER_SEC)
        .collect();
    assert_eq!(
        values(&s.raw(&key("p"), T0, T0 + 1000 * US_PER_SEC, 1000).unwrap()),
        want
    );
    // Deleting the newest points moves the twin's latest value back.
    s.delete_range(&key("p"), T0 + 99 * US_PER_SEC, T0 + 100 * US_PER_SEC)
        .await
        .unwrap();
    assert_eq!(
        s.latest_of_twin("default", "reactor1")[0].1.ts,
        T0 + 98 * US_PER_SEC
    );
    blocking({
        let s = s.clone();
        move || s.close_writer_only()
    })
    .await;
    drop(s);
    let s = open(&b, dir.path(), clock);
    let got = s.raw(&key("p"), T0, T0 + 1000 * US_PER_SEC, 1000).unwrap();
    assert_eq!(values(&got), want[..want.len() - 1].to_vec());
    blocking(move || s.close()).await;
}

async fn retention_keeps_rollups_and_refuses_finer_requests(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    let now = clock.now_us();
    let start = (now - 40 * DAY).div_euclid(WINDOW) * WINDOW;
    let pts: Vec<(i64, f64)> = (0..360)
        .map(|i| (start + i * 10 * US_PER_SEC, i as f64))
        .collect();
    s.append(batch("t", &pts)).await.unwrap();
    let minute = Bucketer::new(US_PER_MIN, None).unwrap();
    let before = s
        .aggregate(&key("t"), start, start + WINDOW, &minute)
        .unwrap();
    assert_eq!(before.len(), 60);
    blocking({
        let s = s.clone();
        move || s.compact_now().unwrap()
    })
    .await;
    let chunks: i64 = rows_in(&s, "chunks");
    assert_eq!(chunks, 0, "raw points past 30 days are gone");
    let after = s
        .aggregate(&key("t"), start, start + WINDOW, &minute)
        .unwrap();
    assert_eq!(before, after, "1-minute buckets come from rollups");
    let err = s.raw(&key("t"), start, start + WINDOW, 10).unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { ref field, .. } if field == "from"),
        "{err}"
    );
    let ten_s = Bucketer::new(10 * US_PER_SEC, None).unwrap();
    let err = s
        .aggregate(&key("t"), start, start + WINDOW, &ten_s)
        .unwrap_err();
    assert!(err.to_string().contains("1m"), "{err}");
    blocking(move || s.close()).await;
}

fn naive(
    pts: &std::collections::BTreeMap<i64, f64>,
    from: i64,
    to: i64,
    width: i64,
) -> Vec<(i64, u64, f64, f64, f64)> {
    let mut m: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    for (t, v) in pts.range(from..to) {
        m.entry(t.div_euclid(width) * width).or_default().push(*v);
    }
    m.into_iter()
        .map(|(k, v)| {
            let sum: f64 = v.iter().sum();
            (
                k,
                v.len() as u64,
                sum,
                v.iter().cloned().fold(f64::INFINITY, f64::min),
                v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
            )
        })
        .collect()
}

on_both_backends!(
    acknowledged_points_are_queryable_and_survive_restart,
    flush_merge_and_restart_keep_every_point,
    deleted_ranges_stay_deleted_across_flush_and_restart,
    retention_keeps_rollups_and_refuses_finer_requests,
    compaction_under_concurrent_reads_loses_nothing,
    a_late_point_in_a_retired_window_is_added_to_its_rollups,
    a_range_edge_inside_a_rollup_hour_is_refused_not_overcounted,
    rollups_are_made_before_retention_and_remade_after_a_late_point,
);

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]
    #[test]
    fn aggregates_match_a_naive_computation(
        pg in any::<bool>(),
        writes in proptest::collection::vec(proptest::collection::vec((0i64..3 * 3600, -100i32..100), 1..300), 1..4),
        from_s in 0i64..3 * 3600, len_s in 1i64..4 * 3600, width_s in prop_oneof![Just(1i64), Just(60), Just(300), Just(3600), 1i64..7200],
        flush_after in 0usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let T0 = t0();
            let dir = tempfile::tempdir().unwrap();
            let clock = Arc::new(OffsetClock::default());
            let b = if pg { Backend::postgres() } else { Backend::Sqlite };
            let s = open(&b, dir.path(), clock);
            let mut model = std::collections::BTreeMap::new();
            for (i, w) in writes.iter().enumerate() {
                let pts: Vec<(i64, f64)> = w.iter().map(|(t, v)| (T0 + t * US_PER_SEC, *v as f64 / 4.0)).collect();
                for (t, v) in &pts { model.insert(*t, *v); }
                s.append(batch("x", &pts)).await.unwrap();
                if i == flush_after {
                    flush(&s).await;
                }
            }
            if flush_after == 3 {
                blocking({ let s = s.clone(); move || s.compact_now().unwrap() }).await;
            }
            let (from, to, width) = (T0 + from_s * US_PER_SEC, T0 + (from_s + len_s) * US_PER_SEC, width_s * US_PER_SEC);
            let got = s.aggregate(&key("x"), from, to, &Bucketer::new(width, None).unwrap()).unwrap();
            let want = naive(&model, from, to, width);
            assert_eq!(got.len(), want.len());
            for ((gs, g), (ws, n, sum, min, max)) in got.iter().zip(&want) {
                assert_eq!(gs, ws);
                assert_eq!(g.count, *n);
                assert!((g.sum - sum).abs() < 1e-6);
                assert_eq!((g.min, g.max), (*min, *max));
            }
            let raw = s.raw(&key("x"), from, to, usize::MAX).unwrap();
            let want_raw: Vec<(i64, f64)> = model.range(from..to).map(|(t, v)| (*t, *v)).collect();
            assert_eq!(values(&raw), want_raw);
            blocking(move || s.close()).await;
        });
    }
}

/// Readers running while the head is flushed and windows are merged see
/// every acknowledged point exactly once.
async fn compaction_under_concurrent_reads_loses_nothing(b: Backend) {
    let T0 = t0();
    let dir = tempfile::tempdir().unwrap();
    let s = open(&b, dir.path(), Arc::new(OffsetClock::default()));
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (s, acked, stop) = (s.clone(), acked.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                let before = acked.load(Ordering::SeqCst);
                let pts = s.raw(&key("c"), T0, T0 + 4 * WINDOW, usize::MAX).unwrap();
                let after = acked.load(Ordering::SeqCst);
                // A point is visible a moment before its writer hears the
                // acknowledgement: allow the batch in flight.
                assert!(
                    pts.len() >= before && pts.len() <= after + 400,
                    "{} points, {before}..{after} acknowledged",
                    pts.len()
                );
                assert!(
                    pts.windows(2).all(|w| w[0].ts < w[1].ts),
                    "sorted, no duplicates"
                );
                let minute = Bucketer::new(US_PER_MIN, None).unwrap();
                let aggs = s
                    .aggregate(&key("c"), T0, T0 + 4 * WINDOW, &minute)
                    .unwrap();
                let n: u64 = aggs.values().map(|st| st.count).sum();
                if (n as usize) < before {
                    let pts2 = s.raw(&key("c"), T0, T0 + 4 * WINDOW, usize::MAX).unwrap();
                    let chunks: Vec<(i64, i64, i64, i64)> = s
                        .read(|c| {
                            c.rows(
                                "SELECT id, win, min_ts, count FROM chunks ORDER BY id",
                                args![],
                                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                            )
                        })
                        .unwrap();
                    panic!(
                        "aggregate count {n} < {before}; raw now {}; buckets {}; chunks {:?}",
                        pts2.len(),
                        aggs.len(),
                        chunks
                    );
                }
                reads += 1;
            }
            reads
        }));
    }
    let mut compactions = Vec::new();
    for round in 0..30i64 {
        let pts: Vec<(i64, f64)> = (0..400)
            .map(|i| (T0 + (round * 400 + i) * US_PER_SEC, i as f64))
            .collect();
        s.append(batch("c", &pts)).await.unwrap();
        acked.fetch_add(400, Ordering::SeqCst);
        if round % 3 == 0 {
            let s = s.clone();
            compactions.push(tokio::task::spawn_blocking(move || {
                s.flush().unwrap();
                s.compact_now().unwrap();
            }));
        }
    }
    for c in compactions {
        c.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    // Some reads overlapped the compactions (how many depends on the
    // machine's speed: 10 on a slow box, where `> 10` failed).
    assert!(reads > 0, "readers ran concurrently ({reads} reads)");
    assert_eq!(
        s.raw(&key("c"), T0, T0 + 4 * WINDOW, usize::MAX)
            .unwrap()
            .len(),
        12_000
    );
    blocking(move || s.close()).await;
}

fn open_with_retention(
    b: &Backend,
    dir: &Path,
    clock: SharedClock,
    raw: &str,
    rollup_1m: &str,
) -> Store {
    let opts = b.options(StoreOptions {
        tick: Duration::from_secs(3600),
        retention: RetentionPolicy {
            raw: raw.into(),
            rollup_1m: rollup_1m.into(),
            ..RetentionPolicy::default()
        },
        ..StoreOptions::default()
    });
    Store::open(DirLock::acquire(dir).unwrap(), opts, clock).unwrap()
}

/// What a step of the backfill test does.
#[derive(Debug, Clone)]
enum Step {
    /// Points at these offsets (seconds from the base) with these values.
    Write(Vec<(i64, i32)>),
    /// Flush, merge, roll up and retire now.
    Compact,
    /// Time passes (seconds): windows close and pass the retention cuts.
    Advance(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::collection::vec((0i64..12 * 3600, -100i32..100), 1..120).prop_map(Step::Write),
        2 => Just(Step::Compact),
        1 => (0i64..3 * 3600).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    /// Backfill and late points, with retention retiring raw points into
    /// rollups as time passes: every point ever acknowledged is counted
    /// exactly once by any aggregate, whatever arrived when, and a range
    /// edge that cuts a rollup is refused rather than miscounted.
    #[test]
    fn backfill_past_raw_retention_matches_a_naive_model(
        pg in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..12),
        from_m in 0i64..14 * 60, len_m in 1i64..14 * 60,
        width_h in prop_oneof![Just(1i64), Just(2), Just(24)],
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let clock = Arc::new(OffsetClock::default());
            let b = if pg { Backend::postgres() } else { Backend::Sqlite };
            let s = open_with_retention(&b, dir.path(), clock.clone(), "3h", "8h");
            // Twelve hours of data ending an hour ago.
            let base = (clock.now_us() - 13 * WINDOW).div_euclid(WINDOW) * WINDOW;
            let mut model = std::collections::BTreeMap::new();
            for st in &steps {
                match st {
                    Step::Write(pts) => {
                        // Distinct timestamps only: past raw retention a
                        // resent timestamp counts again (documented).
                        let pts: Vec<(i64, f64)> = pts
                            .iter()
                            .map(|(t, v)| (base + t * US_PER_SEC, *v as f64))
                            .filter(|(t, _)| !model.contains_key(t))
                            .collect::<std::collections::BTreeMap<_, _>>()
                            .into_iter()
                            .collect();
                        for (t, v) in &pts { model.insert(*t, *v); }
                        if !pts.is_empty() {
                            s.append(batch("x", &pts)).await.unwrap();
                        }
                    }
                    Step::Compact => {
                        blocking({ let s = s.clone(); move || s.compact_now().unwrap() }).await;
                    }
                    Step::Advance(secs) => clock.advance_us(secs * US_PER_SEC),
                }
            }
            let width = width_h * WINDOW;
            let check = |from: i64, to: i64| {
                let got = s.aggregate(&key("x"), from, to, &Bucketer::new(width, None).unwrap());
                let got = match got {
                    Ok(g) => g,
                    Err(StoreError::Invalid { field, .. }) => {
                        assert!(field == "from" || field == "to", "{field}");
                        let cut = |t: i64| t.rem_euclid(US_PER_MIN) != 0 || t.rem_euclid(WINDOW) != 0;
                        assert!(cut(from) || cut(to), "refused an aligned range {from}..{to}");
                        return;
                    }
                    Err(e) => panic!("{e}"),
                };
                let want = naive(&model, from, to, width);
                let got: Vec<(i64, u64, f64, f64, f64)> = got.iter().map(|(t, g)| (*t, g.count, g.sum, g.min, g.max)).collect();
                assert_eq!(got.len(), want.len(), "{from}..{to}: {got:?} vs {want:?}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.0, g.1), (w.0, w.1), "{from}..{to}");
                    assert!((g.2 - w.2).abs() < 1e-6);
                    assert_eq!((g.3, g.4), (w.3, w.4));
                }
            };
            // Whole hours: always answerable, always exact.
            check(base - WINDOW, base + 14 * WINDOW);
            let from_h = base + (from_m / 60) * WINDOW;
            check(from_h, from_h + (len_m / 60 + 1) * WINDOW);
            // Minute edges: exact, or refused where only hour rollups are.
            let from = base + from_m * US_PER_MIN;
            check(from, from + len_m * US_PER_MIN);
            // Retention leaves nothing behind: after a last round every
            // window past the cut has no chunks, and still adds up.
            blocking({ let s = s.clone(); move || s.compact_now().unwrap() }).await;
            check(base - WINDOW, base + 14 * WINDOW);
            blocking(move || s.close()).await;
        });
    }
}

/// The exact ways the old code lost points past raw retention: a late
/// point in a retired window must be added to its rollups, not replace
/// them, and retention must not delete it before it is rolled up.
async fn a_late_point_in_a_retired_window_is_added_to_its_rollups(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    let start = a_retired_hour(&s, &*clock).await;
    let compact = || compact(&s);
    let hour = Bucketer::new(WINDOW, None).unwrap();
    let total = |s: &Store| {
        s.aggregate(&key("t"), start, start + WINDOW, &hour)
            .unwrap()
            .values()
            .map(|st| st.count)
            .sum::<u64>()
    };
    assert_eq!(total(&s), 60);
    // Late: counted at once (from the head), and after every step.
    s.append(batch("t", &[(start + 30 * US_PER_SEC, 5.0)]))
        .await
        .unwrap();
    assert_eq!(total(&s), 61);
    flush(&s).await;
    assert_eq!(total(&s), 61, "in a chunk of the retired window");
    compact().await;
    assert_eq!(total(&s), 61, "added to the rollups");
    let chunks: i64 = rows_in(&s, "chunks");
    assert_eq!(chunks, 0);
    let minute = Bucketer::new(US_PER_MIN, None).unwrap();
    let first = s
        .aggregate(&key("t"), start, start + US_PER_MIN, &minute)
        .unwrap();
    assert_eq!(first[&start].count, 2);
    assert_eq!(first[&start].max, 5.0);
    blocking(move || s.close()).await;
}

/// An hour rollup is never counted whole for a range that ends inside it.
async fn a_range_edge_inside_a_rollup_hour_is_refused_not_overcounted(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open_with_retention(&b, dir.path(), clock.clone(), "1h", "2h");
    let start = (clock.now_us() - 10 * WINDOW).div_euclid(WINDOW) * WINDOW;
    let pts: Vec<(i64, f64)> = (0..120).map(|i| (start + i * US_PER_MIN, 1.0)).collect();
    s.append(batch("t", &pts)).await.unwrap();
    blocking({
        let s = s.clone();
        move || s.compact_now().unwrap()
    })
    .await;
    let day = Bucketer::new(24 * WINDOW, None).unwrap();
    let whole = s
        .aggregate(&key("t"), start, start + 2 * WINDOW, &day)
        .unwrap();
    assert_eq!(whole.values().map(|s| s.count).sum::<u64>(), 120);
    let err = s
        .aggregate(&key("t"), start, start + WINDOW + 30 * US_PER_MIN, &day)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid { field, rule } if field == "to" && rule.contains("1h")),
        "{err}"
    );
    blocking(move || s.close()).await;
}

/// What the user sees with `du`: once a burst is compacted, the batch
/// log's pages go back to the file system and the write-ahead log is
/// truncated, so the directory holds little more than the chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_gives_the_disk_back() {
    let b = Backend::Sqlite;
    let T0 = t0();
    let dir = tempfile::tempdir().unwrap();
    let s = open(&b, dir.path(), Arc::new(OffsetClock::default()));
    let size = |dir: &Path| -> u64 {
        ["twinhub.db", "twinhub.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for series in 0..50 {
        let s = s.clone();
        tasks.spawn(async move {
            for b in 0..20 {
                let pts: Vec<(i64, f64)> = (0..200)
                    .map(|i| {
                        let n = b * 200 + i;
                        (T0 + n * US_PER_SEC, 20.0 + (n % 97) as f64 / 100.0)
                    })
                    .collect();
                s.append(batch(&format!("p{series}"), &pts)).await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    blocking({
        let s = s.clone();
        move || s.flush()
    })
    .await
    .unwrap();
    let free: i64 = s
        .read_sqlite(|c| Ok(c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?))
        .unwrap();
    // The log is truncated once the writer is idle (not behind a flush:
    // under load that stalled the commits queued after it).
    let wal_len = || std::fs::metadata(dir.path().join("twinhub.db-wal")).map_or(0, |m| m.len());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while wal_len() >= 64 * 1024 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let wal = wal_len();
    assert!(wal < 64 * 1024, "the write-ahead log kept {wal} bytes");
    let after = size(dir.path());
    let payload: i64 = s
        .read_sqlite(|c| {
            Ok(c.query_row(
                "SELECT (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM chunks)
                      + (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM rollups)
                      + (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM batch_log)",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert!(free < 256, "{free} free pages kept");
    assert!(
        after < (payload as u64) * 3 / 2 + 256 * 1024,
        "{after} bytes on disk for {payload} bytes of chunks and rollups"
    );
    assert_eq!(
        s.raw(&key("p7"), T0, T0 + 4000 * US_PER_SEC, 10_000)
            .unwrap()
            .len(),
        4000
    );
    blocking(move || s.close()).await;
}

/// A file written before incremental auto-vacuum is rewritten once.
#[test]
fn an_older_file_is_switched_to_incremental_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twinhub.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .unwrap();
    }
    let c = db::open_writer(&path).unwrap();
    let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, 2);
}

fn rollup_rows(s: &Store) -> i64 {
    rows_in(s, "rollups")
}

/// Rollups are made only as retention approaches (queries read them only
/// where raw points are gone): recent windows carry none on disk. A
/// window rolled up early that then takes a late point loses those
/// rollups and gets them again, so retention never trusts rollups that
/// miss a point.
async fn rollups_are_made_before_retention_and_remade_after_a_late_point(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    let compact = || {
        let s = s.clone();
        blocking(move || s.compact_now().unwrap())
    };
    // A closed window well inside raw retention: chunks, no rollups.
    let recent = t0();
    let pts: Vec<(i64, f64)> = (0..60).map(|i| (recent + i * US_PER_MIN, 1.0)).collect();
    s.append(batch("recent", &pts)).await.unwrap();
    // A window retention (30 days of raw points) retires within the hour.
    let start = (clock.now_us() - 30 * DAY + WINDOW).div_euclid(WINDOW) * WINDOW - WINDOW;
    let pts: Vec<(i64, f64)> = (0..60).map(|i| (start + i * US_PER_MIN, 1.0)).collect();
    s.append(batch("t", &pts)).await.unwrap();
    compact().await;
    assert_eq!(
        rollup_rows(&s),
        2,
        "minute and hour rollups of the old window only"
    );
    let chunks: i64 = rows_in(&s, "chunks");
    assert_eq!(chunks, 2, "both windows still have their raw points");
    // A late point: the early rollups would miss it.
    s.append(batch("t", &[(start + 30 * US_PER_SEC, 5.0)]))
        .await
        .unwrap();
    flush(&s).await;
    compact().await;
    // Past the cut: raw points retired, minute buckets from the rollups.
    clock.advance_us(2 * WINDOW);
    compact().await;
    let raw_left: i64 = s
        .read(|c| {
            c.one(
                "SELECT COUNT(*) FROM chunks c JOIN series s ON s.id = c.series_id WHERE s.name = 't'",
                args![],
            )
        })
        .unwrap();
    assert_eq!(raw_left, 0, "the old window's raw points are retired");
    let minute = Bucketer::new(US_PER_MIN, None).unwrap();
    let b = s
        .aggregate(&key("t"), start, start + WINDOW, &minute)
        .unwrap();
    assert_eq!(b.values().map(|st| st.count).sum::<u64>(), 61);
    assert_eq!(b[&start].count, 2);
    assert_eq!(b[&start].max, 5.0, "the late point is in the rollups");
    blocking(move || s.close()).await;
}

/// One writer per PostgreSQL store, as the directory lock makes it for the
/// embedded file: a second node's batch-log cut would delete rows whose
/// points only the first node's head holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_on_one_postgres_store_is_refused_until_the_first_stops() {
    let b = Backend::postgres();
    let clock: SharedClock = Arc::new(OffsetClock::default());
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = open(&b, d1.path(), clock.clone());
    first.append(batch("t", &[(t0(), 1.0)])).await.unwrap();
    let opts = b.options(StoreOptions::default());
    let second = Store::open(
        DirLock::acquire(d2.path()).unwrap(),
        opts.clone(),
        clock.clone(),
    );
    let err = second.err().expect("a second writer is refused");
    assert!(
        matches!(&err, StoreError::StoreInUse(_)) && err.to_string().contains("cluster.nats"),
        "{err}"
    );
    blocking(move || first.close()).await;
    let second = Store::open(DirLock::acquire(d2.path()).unwrap(), opts, clock).unwrap();
    assert_eq!(
        values(&second.raw(&key("t"), t0(), t0() + 1, 10).unwrap()),
        vec![(t0(), 1.0)]
    );
    blocking(move || second.close()).await;
}
