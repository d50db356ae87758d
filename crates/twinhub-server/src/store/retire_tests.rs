//! Retention's plans (`retire.rs`): late data past raw retention has its
//! rollups made off the writer, and a plan the window outran is not used.

use super::retire;
use super::sql::args;
use super::tests::{
    a_retired_hour, batch, blocking, compact, flush, key, on_both_backends, open, rows_in, Backend,
};
use super::*;
use crate::clock::{Clock, OffsetClock};
use std::sync::Arc;
use twinhub_model::time::{US_PER_DAY, US_PER_SEC};
use twinhub_model::Bucketer;

/// A backfill past raw retention: each late chunk is added to the
/// retired window's rollups with the rollups made on the compactor's
/// thread (the writer makes none), and a window that took another chunk
/// after it was planned is retired from what it holds then — the plan is
/// not used and no point is lost.
async fn late_windows_are_planned_off_the_writer_and_a_stale_plan_is_not_used(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(OffsetClock::default());
    let s = open(&b, dir.path(), clock.clone());
    let m = &s.engine().metrics;
    let start = a_retired_hour(&s, &*clock).await;
    let compact = || compact(&s);
    let hour = Bucketer::new(WINDOW, None).unwrap();
    let total = |s: &Store| -> (u64, f64) {
        let a = s
            .aggregate(&key("t"), start, start + WINDOW, &hour)
            .unwrap();
        (
            a.values().map(|st| st.count).sum(),
            a.values().map(|st| st.sum).sum(),
        )
    };
    assert_eq!(total(&s), (60, 60.0));
    assert_eq!(
        (m.windows_retired.get(), m.retire_rollups_in_writer.get()),
        (1, 0)
    );

    // Late points, retired through plans.
    for (i, v) in [2.0, 3.0].into_iter().enumerate() {
        let ts = start + (10 + i as i64) * US_PER_SEC;
        s.append(batch("t", &[(ts, v)])).await.unwrap();
        flush(&s).await;
        compact().await;
    }
    assert_eq!(total(&s), (62, 65.0));
    assert_eq!(rows_in(&s, "chunks"), 0);
    assert_eq!(
        (m.windows_retired.get(), m.retire_rollups_in_writer.get()),
        (3, 0)
    );

    // A plan made, then the window takes another chunk before the writer
    // retires it.
    s.append(batch("t", &[(start + 20 * US_PER_SEC, 4.0)]))
        .await
        .unwrap();
    flush(&s).await;
    let wins: Vec<(u32, i64)> = s
        .read(|c| {
            c.rows(
                "SELECT DISTINCT series_id, win FROM chunks ORDER BY series_id, win",
                args![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap();
    assert_eq!(wins.len(), 1);
    let plans = {
        let (s, wins) = (s.clone(), wins.clone());
        blocking(move || retire::plan(&s, &wins).unwrap()).await
    };
    assert_eq!(plans.len(), 1, "the late window is planned");
    s.append(batch("t", &[(start + 21 * US_PER_SEC, 5.0)]))
        .await
        .unwrap();
    flush(&s).await;
    assert_eq!(rows_in(&s, "chunks"), 2);
    let cut = (clock.now_us() - 30 * US_PER_DAY).div_euclid(WINDOW) * WINDOW;
    let done = {
        let s = s.clone();
        blocking(move || s.write_blocking(move |ctx| retire::retire_windows(ctx, wins, cut, plans)))
            .await
            .unwrap()
    };
    assert_eq!(done, 1);
    assert_eq!(rows_in(&s, "chunks"), 0);
    assert_eq!(total(&s), (64, 74.0), "both late points counted, once");
    assert_eq!(
        (m.windows_retired.get(), m.retire_rollups_in_writer.get()),
        (4, 1)
    );
    // And after a restart, from the rows alone.
    let s2 = s.clone();
    blocking(move || s2.close()).await;
    let s = open(&b, dir.path(), clock.clone());
    assert_eq!(total(&s), (64, 74.0));
    blocking(move || s.close()).await;
}

on_both_backends!(late_windows_are_planned_off_the_writer_and_a_stale_plan_is_not_used);
