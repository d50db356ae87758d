//! The writer's group commits on both backends.

use super::sql::args;
use super::tests::{blocking, on_both_backends, open, Backend};
use super::StoreError;
use crate::clock::OffsetClock;
use std::sync::Arc;

/// Registry writes committed together (one group) stay independent when
/// their statements are pipelined (`exec_later` on PostgreSQL): one that
/// a deferred statement refuses fails alone, with its error; the others
/// commit.
async fn a_refused_held_write_fails_alone_in_its_group(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&b, dir.path(), Arc::new(OffsetClock::default()));
    let row = |seq: i64| super::audit::AuditRow {
        chain: "c".into(),
        seq,
        ts: 0,
        actor: "a".into(),
        action: "x".into(),
        target: "t".into(),
        detail: String::new(),
        mac: vec![1],
    };
    let first = row(1);
    s.write(move |ctx| super::audit::append(ctx.tx, &first))
        .await
        .unwrap();
    // Seq 1 again is a primary-key conflict, found only when the held
    // insert is sent; seqs 2 and 3 around it are fine.
    let writes = [2, 1, 3].map(|seq| {
        let r = row(seq);
        let s = s.clone();
        async move { s.write(move |ctx| super::audit::append(ctx.tx, &r)).await }
    });
    let got = futures_util::future::join_all(writes).await;
    assert!(got[0].is_ok() && got[2].is_ok(), "{got:?}");
    assert!(
        matches!(got[1], Err(StoreError::Conflict(_))),
        "{:?}",
        got[1]
    );
    let seqs: Vec<i64> = s
        .read(|c| c.rows("SELECT seq FROM audit ORDER BY seq", args![], |r| r.get(0)))
        .unwrap();
    assert_eq!(seqs, [1, 2, 3]);
    blocking(move || s.close()).await;
}

on_both_backends!(a_refused_held_write_fails_alone_in_its_group);
