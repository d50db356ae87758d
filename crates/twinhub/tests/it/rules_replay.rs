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

/// The rules' position back to `before` and `rule`'s states gone, as a
/// crash before they committed leaves them.
fn rewind(
    ctx: &mut twinhub_server::store::WriteCtx<'_>,
    before: u64,
    rule: &str,
) -> Result<(), twinhub_server::store::StoreError> {
    ctx.tx.exec(
        "UPDATE consumers SET position = ?2 WHERE name = ?1",
        args!["rules", before as i64],
    )?;
    ctx.tx
        .exec("DELETE FROM rule_state WHERE rule = ?1", args![rule])?;
    Ok(())
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
        .write(move |ctx| rewind(ctx, before, "hot"))
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

/// The alarms' watermark row (`rules::commit::APPLIED`).
fn watermark(s: &TestServer) -> Option<String> {
    s.store()
        .read(|c| {
            c.row(
                "SELECT state FROM rule_state WHERE tenant = '' AND rule = '' AND twin = 'alarms-applied'",
                args![],
                |r| r.get::<String>(0),
            )
        })
        .unwrap()
}

/// An alarm change commits without waiting for the disk (the next synced
/// commit carries it), so a power cut can lose it after it was shown —
/// and with it everything after it in the log, the rules' position too.
/// The store is put in that state: the replay must raise the same alarm
/// again, under the id an operator already saw.
#[tokio::test]
async fn an_alarm_lost_with_the_logs_unsynced_tail_comes_back_under_its_id() {
    let s = TestServer::start().await;
    let (k8, k9) = (s.device("r8").await, s.device("r9").await);
    rule(&s, hot("hot8", "r8")).await;
    rule(&s, hot("hot9", "r9")).await;
    s.store()
        .write(|ctx| ctx.ensure_consumer("test-hold"))
        .await
        .unwrap();
    // An earlier alarm, durable, so the lost one's id is not the first.
    temp(&s, "r8", &k8, 0, 390.0).await;
    let first = alarms_until(&s, "", "r8's alarm", |a| a.len() == 1).await;
    let last = s.store().events().last_id();
    until("r8's states and position committed", || async {
        rules_position(&s) >= last
    })
    .await;
    let (before, applied) = (rules_position(&s), watermark(&s));

    for i in 1..4 {
        temp(&s, "r9", &k9, i, 380.0).await;
    }
    let shown = alarms_until(&s, "originator=r9", "r9's alarm counting 3", |a| {
        a.len() == 1 && a[0]["count"] == 3
    })
    .await;
    assert_ne!(shown[0]["id"], first[0]["id"]);
    let last = s.store().events().last_id();
    until("r9's states and position committed", || async {
        rules_position(&s) >= last
    })
    .await;

    // What a power cut right after the alarm commit leaves: the telemetry
    // (acknowledged, so synced), and nothing of the alarm commit or after.
    // Ids are decimal strings in the API.
    let id: i64 = shown[0]["id"].as_str().unwrap().parse().unwrap();
    s.store()
        .write(move |ctx| {
            ctx.tx.exec("DELETE FROM alarms WHERE id = ?1", args![id])?;
            rewind(ctx, before, "hot9")?;
            ctx.tx.exec(
                "DELETE FROM rule_state WHERE tenant = '' AND rule = '' AND twin = 'alarms-applied'",
                args![],
            )?;
            if let Some(a) = applied {
                ctx.tx.exec(
                    "INSERT INTO rule_state(tenant, rule, twin, state) VALUES ('', '', 'alarms-applied', ?1)",
                    args![&a],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let s = s.restart().await;
    let again = alarms_until(&s, "originator=r9", "r9's alarm raised again", |a| {
        a.len() == 1 && a[0]["count"] == 3
    })
    .await;
    for field in ["id", "start_ts", "type", "severity", "status", "last_value"] {
        assert_eq!(
            again[0][field], shown[0][field],
            "{field}: {again:?} vs {shown:?}"
        );
    }
    // And the next alarm takes the next id.
    temp(&s, "r8", &k8, 5, 365.0).await;
    temp(&s, "r8", &k8, 6, 390.0).await;
    let next = alarms_until(&s, "originator=r8&status=active", "r8's new alarm", |a| {
        a.len() == 1 && a[0]["id"] != first[0]["id"]
    })
    .await;
    assert_eq!(next[0]["id"], (id + 1).to_string());
    s.stop().await;
}
