//! The rule engine commits a batch in two steps — its alarm changes first
//! (ahead of queued ingest), then its rule states and position — so a
//! crash can fall between them. The store is put in exactly that state
//! and the server restarted: the replayed events rebuild the states but
//! must not apply their alarm changes a second time.

use crate::common::*;
use crate::rules::{alarms_until, hot, rule, temp};
use twinhub_server::store::sql::args;

/// The rules consumer's recorded position.
fn rules_position(s: &TestServer) -> u64 {
    s.store()
        .consumers()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "rules")
        .map(|(_, p)| p)
        .expect("the rules consumer")
}

#[tokio::test]
async fn alarm_changes_committed_before_a_crash_are_not_applied_again() {
    let s = TestServer::start().await;
    let key = s.device("r9").await;
    rule(&s, hot("hot", "r9")).await;
    // A second durable consumer that never moves keeps the outbox rows
    // the rewound position below needs.
    s.store()
        .write(|ctx| ctx.ensure_consumer("test-hold"))
        .await
        .unwrap();
    let before = rules_position(&s);
    for i in 0..3 {
        temp(&s, "r9", &key, i, 380.0).await;
    }
    alarms_until(&s, "", "an alarm counting 3", |a| {
        a.len() == 1 && a[0]["count"] == 3
    })
    .await;
    let last = s.store().events().last_id();
    until("the states and position committed", || async {
        rules_position(&s) >= last
    })
    .await;

    // As if the process died after the alarm changes committed and
    // before the states and the position did: position and states back
    // to where they were before the three events.
    s.store()
        .write(move |ctx| {
            ctx.tx.exec(
                "UPDATE consumers SET position = ?2 WHERE name = ?1",
                args!["rules", before as i64],
            )?;
            ctx.tx
                .exec("DELETE FROM rule_state WHERE rule = ?1", args!["hot"])?;
            Ok(())
        })
        .await
        .unwrap();
    let s = s.restart().await;
    let last = s.store().events().last_id();
    until("the replay", || async { rules_position(&s) >= last }).await;
    let a = alarms_until(&s, "", "the alarm", |a| a.len() == 1).await;
    assert_eq!(a[0]["count"], 3, "replayed events counted again: {a:?}");

    // The replay rebuilt the condition's state: still raised, so the next
    // hot reading counts on the same alarm and 365 (under the clear
    // threshold) clears it.
    temp(&s, "r9", &key, 3, 381.0).await;
    alarms_until(&s, "", "the same alarm counting 4", |a| {
        a.len() == 1 && a[0]["count"] == 4
    })
    .await;
    temp(&s, "r9", &key, 4, 365.0).await;
    alarms_until(&s, "status=cleared", "cleared", |a| a.len() == 1).await;
    s.stop().await;
}
