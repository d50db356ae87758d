//! The fan-out as the store's writer runs it: events published in commit
//! order and only when committed; durable consumers that resume from
//! their recorded position after a restart and never miss an event, even
//! when they fall far behind the live bus.

use super::health::Faults;
use super::*;
use crate::clock::{OffsetClock, SharedClock};
use crate::events::{Draft, Kind};
use std::sync::Arc;

fn open(dir: &Path) -> Store {
    let clock: SharedClock = Arc::new(OffsetClock::default());
    let opts = StoreOptions {
        tick: Duration::from_secs(3600),
        ..StoreOptions::default()
    };
    Store::open(DirLock::acquire(dir).unwrap(), opts, clock).unwrap()
}

fn draft(n: u64) -> Draft {
    Draft::new(
        "default",
        Kind::Telemetry,
        Some("reactor1"),
        None,
        serde_json::json!({ "n": n }),
    )
}

fn batch(n: u64) -> WriteBatch {
    WriteBatch {
        entries: vec![(
            SeriesKey::new("default", "reactor1", "temp"),
            vec![Point::number(1_000_000 + n as i64, n as f64)],
        )],
    }
}

fn numbers(evs: &[Arc<crate::events::Event>]) -> Vec<u64> {
    evs.iter().map(|e| e.data["n"].as_u64().unwrap()).collect()
}

async fn close(s: Store) {
    tokio::task::spawn_blocking(move || s.close())
        .await
        .unwrap();
}

/// Takes events from `c` until `want` numbers arrived.
async fn take(c: &mut outbox::Consumer, want: usize) -> Vec<Arc<crate::events::Event>> {
    let mut out = Vec::new();
    while out.len() < want {
        let got = tokio::time::timeout(Duration::from_secs(10), c.next(1000))
            .await
            .expect("events arrive")
            .unwrap();
        out.extend(got);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_published_in_commit_order_and_failed_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (_, mut rx) = s.events().subscribe(None);
    // Concurrent producers: whatever the interleaving, ids follow the
    // order of the commits and each producer's own order is kept.
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let n = p * 1000 + i;
                s.append_with(batch(n), vec![draft(n)], None, None)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Faults::set(&s.faults().commit, true);
    assert!(s
        .append_with(batch(9999), vec![draft(9999)], None, None)
        .await
        .is_err());
    assert!(s.emit(vec![draft(9998)]).await.is_err());
    Faults::set(&s.faults().commit, false);
    s.emit(vec![draft(7777)]).await.unwrap();

    let mut got = Vec::new();
    loop {
        let e = rx.recv().await.unwrap();
        if e.data["n"] == 7777 {
            break;
        }
        got.push(e);
    }
    assert_eq!(got.len(), 200, "every committed event, and nothing refused");
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    for p in 0..4u64 {
        let mine: Vec<u64> = numbers(&got)
            .into_iter()
            .filter(|n| n / 1000 == p)
            .collect();
        assert_eq!(mine, (0..50).map(|i| p * 1000 + i).collect::<Vec<_>>());
    }
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_resumes_after_its_recorded_position_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // Before the consumer exists nothing is kept for it.
    s.emit(vec![draft(0)]).await.unwrap();
    let mut c = s.consumer("rules").await.unwrap();
    for n in 1..=10 {
        s.append_with(batch(n), vec![draft(n)], None, None)
            .await
            .unwrap();
    }
    let first = take(&mut c, 10).await;
    assert_eq!(numbers(&first), (1..=10).collect::<Vec<_>>());
    // Applied up to 6, then the process stops.
    c.commit(first[5].id).await.unwrap();
    let last_id = first[9].id;
    drop(c);
    close(s).await;

    let s = open(dir.path());
    let mut c = s.consumer("rules").await.unwrap();
    assert_eq!(c.position(), first[5].id);
    s.emit(vec![draft(11)]).await.unwrap();
    let again = take(&mut c, 5).await;
    // At least once: 7..10 come again, then what was committed since.
    assert_eq!(numbers(&again), vec![7, 8, 9, 10, 11]);
    assert!(again[4].id > last_id, "ids keep increasing across restarts");
    // Everything applied: the outbox is emptied.
    c.commit(again[4].id).await.unwrap();
    assert_eq!(s.outbox_size().unwrap().0, 0);
    // Without consumers nothing is kept.
    assert!(s.drop_consumer("rules").await.unwrap());
    s.emit(vec![draft(12)]).await.unwrap();
    assert_eq!(s.outbox_size().unwrap().0, 0);
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_far_behind_the_live_bus_still_gets_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut c = s.consumer("routes").await.unwrap();
    // More than the bus holds for a subscriber (4096), in one go.
    let all: Vec<Draft> = (0..10_000).map(draft).collect();
    for chunk in all.chunks(500) {
        s.emit(chunk.to_vec()).await.unwrap();
    }
    let got = take(&mut c, 10_000).await;
    assert_eq!(numbers(&got), (0..10_000).collect::<Vec<_>>());
    // And it follows the live stream afterwards.
    s.emit(vec![draft(10_000)]).await.unwrap();
    assert_eq!(numbers(&take(&mut c, 1).await), vec![10_000]);
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_recorded_with_a_refused_change_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut c = s.consumer("rules").await.unwrap();
    s.emit(vec![draft(1)]).await.unwrap();
    let ev = take(&mut c, 1).await;
    let id = ev[0].id;
    // The consumer's own effect fails: its position must not move either.
    let res = s
        .write(move |ctx| {
            ctx.set_position("rules", id)?;
            Err::<(), _>(StoreError::Conflict("alarm changed meanwhile".into()))
        })
        .await;
    assert!(res.is_err());
    assert_eq!(s.consumers().unwrap(), vec![("rules".to_string(), id - 1)]);
    s.write(move |ctx| ctx.set_position("rules", id))
        .await
        .unwrap();
    assert_eq!(s.consumers().unwrap(), vec![("rules".to_string(), id)]);
    close(s).await;
}
