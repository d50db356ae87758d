//! The writer's stepped background work (`install.rs`): a flush installed
//! a step at a time between group commits, a crash half-way through it, and
//! the batch log's freed pages kept under load.

#![allow(non_snake_case)]
use super::tests::{
    batch, blocking, flush, key, on_both_backends, open, rows_in, t0, values, Backend,
};
use super::*;
use crate::clock::OffsetClock;
use std::sync::Arc;
use twinhub_model::time::{US_PER_MIN, US_PER_SEC};
use twinhub_model::Bucketer;

/// A flush goes in a step at a time with group commits in between (a big
/// flush in one transaction held every acknowledgement behind it), and a
/// crash half-way through loses and doubles nothing: the batch log is cut
/// only at the end, and a point both in a chunk and replayed into the head
/// is read once.
async fn a_flush_half_installed_holds_no_commit_and_survives_a_crash(b: Backend) {
    let T0 = t0();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    const SERIES: usize = 4000;
    let name = |i: usize| format!("s{i}");
    let pts: Vec<(i64, f64)> = (0..10).map(|i| (T0 + i * US_PER_SEC, i as f64)).collect();
    let all = WriteBatch {
        entries: (0..SERIES)
            .map(|i| {
                let p = pts.iter().map(|(t, v)| Point::number(*t, *v + i as f64));
                (key(&name(i)), p.collect())
            })
            .collect(),
    };
    s.append(all).await.unwrap();
    health::Faults::set(&s.faults().install_hold, true);
    let flushing = tokio::task::spawn_blocking({
        let s = s.clone();
        move || s.flush()
    });
    let count_chunks = |s: &Store| -> i64 { rows_in(s, "chunks") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_chunks(&s) == 0 {
        assert!(
            Instant::now() < deadline,
            "no slice of the flush was installed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let installed = count_chunks(&s);
    assert!(
        installed < SERIES as i64,
        "the whole flush went in one step"
    );
    // The writer is not held by the unfinished flush.
    let late = (T0 + 30 * US_PER_SEC, -5.0);
    tokio::time::timeout(Duration::from_secs(10), s.append(batch(&name(0), &[late])))
        .await
        .expect("an append waited for the flush")
        .unwrap();
    assert!(!flushing.is_finished());
    let minute = Bucketer::new(US_PER_MIN, None).unwrap();
    let check = |s: &Store, what: &str| {
        for i in [0, 1, SERIES / 2, SERIES - 1] {
            let mut want: Vec<(i64, f64)> = pts.iter().map(|(t, v)| (*t, v + i as f64)).collect();
            if i == 0 {
                want.push(late);
            }
            let got = s.raw(&key(&name(i)), T0, T0 + WINDOW, 100).unwrap();
            assert_eq!(values(&got), want, "{what}: series {i}");
            let agg = s
                .aggregate(&key(&name(i)), T0, T0 + WINDOW, &minute)
                .unwrap();
            let n: u64 = agg.values().map(|st| st.count).sum();
            assert_eq!(n, want.len() as u64, "{what}: count of series {i}");
        }
    };
    check(&s, "half installed");
    blocking({
        let s = s.clone();
        move || s.close_writer_only()
    })
    .await;
    assert!(
        flushing.await.unwrap().is_err(),
        "a crashed flush reported success"
    );
    drop(s);

    let s = open(&b, dir.path(), clock);
    assert_eq!(
        count_chunks(&s),
        installed,
        "the slices committed before the crash stay"
    );
    check(&s, "after the crash");
    flush(&s).await;
    check(&s, "flushed again");
    blocking({
        let s = s.clone();
        move || s.compact_now().unwrap()
    })
    .await;
    check(&s, "merged");
    blocking(move || s.close()).await;
}

on_both_backends!(a_flush_half_installed_holds_no_commit_and_survives_a_crash);

/// Under heavy ingest (flushes close together) the pages the batch log
/// freed stay in the file for its next fill instead of being moved out
/// and back at every flush; once the writer is idle they are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_logs_pages_are_reused_under_load_and_given_back_when_idle() {
    let T0 = t0();
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        &Backend::Sqlite,
        dir.path(),
        Arc::new(OffsetClock::default()),
    );
    // The file's size in pages as committed (the file itself lags by
    // whatever the checkpointer has not copied yet).
    let pages = |s: &Store| -> i64 {
        s.read_sqlite(|c| Ok(c.query_row("PRAGMA page_count", [], |r| r.get(0))?))
            .unwrap()
    };
    let free = |s: &Store| -> i64 {
        s.read_sqlite(|c| Ok(c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?))
            .unwrap()
    };
    let burst = |round: i64, series_n: usize| {
        let s = s.clone();
        async move {
            for series in 0..series_n {
                for b in 0..10 {
                    let pts: Vec<(i64, f64)> = (0..200)
                        .map(|i| {
                            let n = round * 2000 + b * 200 + i;
                            (T0 + n * US_PER_SEC, (n % 89) as f64)
                        })
                        .collect();
                    s.append(batch(&format!("p{series}"), &pts)).await.unwrap();
                }
            }
        }
    };
    burst(0, 20).await;
    flush(&s).await;
    assert!(free(&s) < 16, "the first flush gives everything back");
    let mut round = 1;
    loop {
        burst(round, 20).await;
        flush(&s).await;
        let kept = free(&s);
        assert!(kept > 64, "only {kept} free pages kept for the next fill");
        let size = pages(&s);
        burst(round + 1, 2).await;
        // A test thread starved for longer than the writer's idle delay
        // (2 s) let the idle give-back run meanwhile: run the round again.
        if free(&s) <= 16 && round < 9 {
            round += 2;
            continue;
        }
        assert!(free(&s) > 16, "the test needs free pages left to give back");
        assert!(
            pages(&s) <= size + 64,
            "the log grew the file ({} → {} pages) beside {kept} free pages",
            size,
            pages(&s)
        );
        break;
    }
    // Idle: everything goes back within seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while free(&s) >= 16 {
        assert!(
            Instant::now() < deadline,
            "{} free pages kept while idle",
            free(&s)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    blocking(move || s.close()).await;
}
