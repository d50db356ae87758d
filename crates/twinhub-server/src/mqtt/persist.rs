//! Keeps the broker's durable state in the store: retained messages,
//! persistent sessions and the QoS 1/2 messages queued for them. One task
//! applies operations in order, many per transaction; callers that must
//! not acknowledge before the state is durable await `durable`.

use super::router::Sub;
use super::session::{Message, MsgProps, Outgoing};
use crate::store::mqtt::{self as rows, QueuedRow, RetainedRow, SessionRow};
use crate::store::Store;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug)]
pub enum Op {
    PutRetained(RetainedRow),
    DelRetained {
        tenant: String,
        topic: String,
    },
    PutSession(SessionRow),
    DelSession(String),
    Enqueue(QueuedRow),
    Dequeue(i64),
    /// A queued QoS 2 message went out with this packet id (`released`:
    /// the client answered PUBREC).
    InFlight {
        id: i64,
        pkid: u16,
        released: bool,
    },
    /// A QoS 2 packet id received from a persistent session (`held`) or
    /// released by its PUBREL.
    Qos2In {
        client_id: String,
        pkid: u16,
        held: bool,
    },
}

/// Operations and, when someone waits for them, where to say whether they
/// were committed.
type Batch = (Vec<Op>, Option<Waiter>);
type Waiter = oneshot::Sender<bool>;

pub struct Persister {
    tx: mpsc::UnboundedSender<Batch>,
    next_id: AtomicI64,
}

/// A write of broker state did not commit: nothing that waited for it may
/// be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker's state could not be stored")]
pub struct NotStored;

impl Persister {
    pub fn start(store: Store, next_id: i64) -> Persister {
        let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batches = vec![first];
                while batches.len() < 1024 {
                    match rx.try_recv() {
                        Ok(b) => batches.push(b),
                        Err(_) => break,
                    }
                }
                commit(&store, batches).await;
            }
        });
        Persister {
            tx,
            next_id: AtomicI64::new(next_id),
        }
    }

    pub fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queued behind earlier operations; nothing waits for it.
    pub fn send(&self, ops: Vec<Op>) {
        if !ops.is_empty() {
            let _ = self.tx.send((ops, None));
        }
    }

    /// Resolves once the operations (and all sent before) are committed,
    /// or with `NotStored` when they could not be.
    pub fn durable(
        &self,
        ops: Vec<Op>,
    ) -> impl std::future::Future<Output = Result<(), NotStored>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send((ops, Some(tx))).is_ok();
        async move {
            if !sent {
                return Err(NotStored);
            }
            match rx.await {
                Ok(true) => Ok(()),
                _ => Err(NotStored),
            }
        }
    }
}

/// Commits merged batches in one transaction; if that fails, each batch
/// alone, so one failing operation fails only its own waiter.
async fn commit(store: &Store, batches: Vec<Batch>) {
    let batches: Vec<(Arc<Vec<Op>>, Option<Waiter>)> =
        batches.into_iter().map(|(o, d)| (Arc::new(o), d)).collect();
    if batches.len() > 1 {
        let all: Vec<Arc<Vec<Op>>> = batches.iter().map(|(o, _)| o.clone()).collect();
        let res = store
            .write(move |ctx| apply(ctx.tx, all.iter().flat_map(|ops| ops.iter())))
            .await;
        if res.is_ok() {
            for (_, d) in batches {
                if let Some(d) = d {
                    let _ = d.send(true);
                }
            }
            return;
        }
    }
    for (ops, done) in batches {
        let n = ops.len();
        let res = store.write(move |ctx| apply(ctx.tx, ops.iter())).await;
        if let Err(e) = &res {
            tracing::error!(error = %e, operations = n, waited = done.is_some(), "could not persist MQTT state");
        }
        if let Some(d) = done {
            let _ = d.send(res.is_ok());
        }
    }
}

pub(super) fn apply<'a>(
    tx: &dyn crate::store::sql::Sql,
    ops: impl IntoIterator<Item = &'a Op>,
) -> Result<(), crate::store::StoreError> {
    let ops: Vec<&Op> = ops.into_iter().collect();
    // Runs of copies queued or delivered go many rows per statement (in
    // order: a run ends at the first operation of another kind).
    let mut i = 0;
    while i < ops.len() {
        let kind = std::mem::discriminant(ops[i]);
        let run = ops[i..]
            .iter()
            .take_while(|o| std::mem::discriminant(**o) == kind)
            .count();
        let ops_run = &ops[i..i + run];
        i += run;
        match ops_run[0] {
            Op::Enqueue(_) => {
                // One statement cannot upsert a row twice: a later copy of
                // the same id replaces the earlier one.
                let mut at: HashMap<i64, usize> = HashMap::new();
                let mut queued: Vec<&QueuedRow> = Vec::with_capacity(run);
                for op in ops_run {
                    if let Op::Enqueue(q) = op {
                        match at.get(&q.id) {
                            Some(&k) => queued[k] = q,
                            None => {
                                at.insert(q.id, queued.len());
                                queued.push(q);
                            }
                        }
                    }
                }
                rows::enqueue(tx, &queued)?;
            }
            Op::Dequeue(_) => {
                let ids: Vec<i64> = ops_run
                    .iter()
                    .filter_map(|o| match o {
                        Op::Dequeue(id) => Some(*id),
                        _ => None,
                    })
                    .collect();
                rows::dequeue(tx, &ids)?;
            }
            _ => {
                for op in ops_run {
                    apply_one(tx, op)?;
                }
            }
        }
    }
    Ok(())
}

fn apply_one(tx: &dyn crate::store::sql::Sql, op: &Op) -> Result<(), crate::store::StoreError> {
    match op {
        Op::PutRetained(r) => rows::put_retained(tx, r),
        Op::DelRetained { tenant, topic } => rows::delete_retained(tx, tenant, topic),
        Op::PutSession(s) => rows::put_session(tx, s),
        Op::DelSession(c) => rows::delete_session(tx, c),
        Op::Enqueue(q) => rows::enqueue(tx, &[q]),
        Op::Dequeue(id) => rows::dequeue(tx, &[*id]),
        Op::InFlight { id, pkid, released } => rows::set_inflight(tx, *id, *pkid, *released),
        Op::Qos2In {
            client_id,
            pkid,
            held,
        } => rows::qos2_in(tx, client_id, *pkid, *held),
    }
}

#[derive(Serialize, Deserialize, Default)]
struct PropsJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pf: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ct: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cd: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    up: Vec<(String, String)>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn props_to_text(p: &Option<Arc<MsgProps>>) -> Option<String> {
    p.as_ref().map(|p| {
        serde_json::to_string(&PropsJson {
            pf: p.payload_format,
            ct: p.content_type.clone(),
            rt: p.response_topic.clone(),
            cd: p.correlation_data.as_ref().map(|c| B64.encode(c)),
            up: p.user_properties.clone(),
        })
        .unwrap_or_default()
    })
}

pub fn props_from_text(t: Option<&str>) -> Option<Arc<MsgProps>> {
    let p: PropsJson = serde_json::from_str(t?).ok()?;
    Some(Arc::new(MsgProps {
        payload_format: p.pf,
        content_type: p.ct,
        response_topic: p.rt,
        correlation_data: p.cd.and_then(|c| B64.decode(c).ok()).map(Bytes::from),
        user_properties: p.up,
    }))
}

pub fn retained_row(tenant: &str, m: &Message) -> RetainedRow {
    RetainedRow {
        tenant: tenant.to_string(),
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos,
        props: props_to_text(&m.props),
        expires_at: m.expires_at,
    }
}

pub fn message_from_retained(r: RetainedRow) -> Message {
    Message {
        topic: r.topic.as_str().into(),
        payload: Bytes::from(r.payload),
        qos: r.qos,
        retain: true,
        props: props_from_text(r.props.as_deref()),
        expires_at: r.expires_at,
        from: None,
    }
}

pub fn queued_row(client_id: &str, o: &Outgoing, id: i64) -> QueuedRow {
    QueuedRow {
        id,
        client_id: client_id.to_string(),
        topic: o.msg.topic.to_string(),
        payload: o.msg.payload.to_vec(),
        qos: o.qos,
        retain: o.retain,
        props: props_to_text(&o.msg.props),
        expires_at: o.msg.expires_at,
        sub_ids: serde_json::to_string(&o.sub_ids).unwrap_or_else(|_| "[]".into()),
        pkid: None,
        released: false,
    }
}

pub fn outgoing_from_row(q: QueuedRow) -> Outgoing {
    Outgoing {
        msg: Arc::new(Message {
            topic: q.topic.as_str().into(),
            payload: Bytes::from(q.payload),
            qos: q.qos,
            retain: q.retain,
            props: props_from_text(q.props.as_deref()),
            expires_at: q.expires_at,
            from: None,
        }),
        qos: q.qos,
        retain: q.retain,
        sub_ids: serde_json::from_str(&q.sub_ids).unwrap_or_default(),
        persist_id: Some(q.id),
    }
}

#[derive(Serialize, Deserialize)]
pub struct SubJson {
    pub raw: String,
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub rap: bool,
    pub sub_id: Option<usize>,
    pub share: Option<String>,
}

pub fn subs_to_text<'a>(subs: impl Iterator<Item = (&'a String, &'a Sub)>) -> String {
    let v: Vec<SubJson> = subs
        .map(|(raw, s)| SubJson {
            raw: raw.clone(),
            filter: s.filter.to_string(),
            qos: s.qos,
            no_local: s.no_local,
            rap: s.retain_as_published,
            sub_id: s.sub_id,
            share: s.share.as_deref().map(str::to_string),
        })
        .collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

pub fn subs_from_text(
    client: &Arc<str>,
    reader: &super::acl::Reader,
    t: &str,
) -> Vec<(String, Sub)> {
    let v: Vec<SubJson> = serde_json::from_str(t).unwrap_or_default();
    v.into_iter()
        .map(|s| {
            (
                s.raw,
                Sub {
                    client: client.clone(),
                    filter: s.filter.into(),
                    qos: s.qos,
                    no_local: s.no_local,
                    retain_as_published: s.rap,
                    sub_id: s.sub_id,
                    share: s.share.map(Into::into),
                    reader: reader.clone(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_round_trip() {
        let p = Some(Arc::new(MsgProps {
            payload_format: Some(1),
            content_type: Some("application/json".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(&[0, 1, 255])),
            user_properties: vec![("a".into(), "b".into())],
        }));
        assert_eq!(props_from_text(props_to_text(&p).as_deref()), p);
        assert_eq!(props_from_text(None), None);
    }
}
