//! Alarms: raised, repeated and cleared by rules (`apply`, inside the
//! rule engine's write), acknowledged, cleared and commented by operators
//! (`ack`, `clear`, `comment`). Every change is a store write and emits an
//! `alarm` event in the same commit. The open alarms are kept in memory,
//! changed eagerly inside the writer's transaction (and put back if it
//! fails), so the engine and operators — whose writes the single writer
//! orders — always see each other's changes: at most one open alarm per
//! (tenant, originator, type), whatever the concurrency.

use crate::clock::SharedClock;
use crate::events::{Draft, Kind};
use crate::store::rules::{self as rows, AlarmFilter, AlarmRow};
use crate::store::{Store, StoreError, WriteCtx};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use twinhub_model::rules::alarm::{Refused, Severity, Status};
use twinhub_model::time::to_epoch_ms_json;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comment {
    pub at: i64,
    pub author: String,
    pub text: String,
}

/// An alarm as stored (times in µs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alarm {
    pub id: i64,
    pub tenant: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: Severity,
    pub originator: String,
    pub status: Status,
    pub rule: Option<String>,
    pub start_ts: i64,
    pub end_ts: Option<i64>,
    pub ack_ts: Option<i64>,
    pub clear_ts: Option<i64>,
    pub ack_by: Option<String>,
    pub clear_by: Option<String>,
    pub count: u64,
    pub last_value: Value,
    pub propagate: Option<String>,
    #[serde(default)]
    pub comments: Vec<Comment>,
    pub updated_at: i64,
}

impl Alarm {
    /// The alarm as the API shows it (times in epoch ms).
    pub fn doc(&self) -> Value {
        let ms = |t: Option<i64>| t.map(to_epoch_ms_json).unwrap_or(Value::Null);
        json!({
            "id": self.id.to_string(),
            "type": self.kind,
            "severity": self.severity,
            "originator": self.originator,
            "status": self.status,
            "rule": self.rule,
            "start_ts": to_epoch_ms_json(self.start_ts),
            "end_ts": ms(self.end_ts),
            "ack_ts": ms(self.ack_ts),
            "clear_ts": ms(self.clear_ts),
            "ack_by": self.ack_by,
            "clear_by": self.clear_by,
            "count": self.count,
            "last_value": self.last_value,
            "propagate": self.propagate,
            "comments": self.comments.iter().map(|c| json!({
                "at": to_epoch_ms_json(c.at), "author": c.author, "text": c.text,
            })).collect::<Vec<_>>(),
        })
    }

    fn row(&self) -> AlarmRow {
        AlarmRow {
            id: self.id,
            tenant: self.tenant.clone(),
            originator: self.originator.clone(),
            kind: self.kind.clone(),
            severity: text(&self.severity),
            status: text(&self.status),
            start_ts: self.start_ts,
            updated_at: self.updated_at,
            body: serde_json::to_string(self).unwrap_or_default(),
        }
    }

    fn from_row(r: &AlarmRow) -> Result<Alarm, StoreError> {
        serde_json::from_str(&r.body)
            .map_err(|e| StoreError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}

/// The JSON string of an enum (its contract name).
pub fn text<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// An alarm change a batch made (for the rules' actions).
#[derive(Debug, Clone)]
pub struct Change {
    pub op: &'static str,
    pub alarm: Alarm,
}

/// What a rule decided for one originator.
#[derive(Debug, Clone)]
pub enum Intent {
    /// The condition holds: open the alarm, or count one more event on
    /// the open one (escalating its severity, never lowering it).
    Raise {
        tenant: String,
        originator: String,
        kind: String,
        severity: Severity,
        rule: String,
        propagate: Option<String>,
        value: Value,
        ts: i64,
    },
    /// The originator recovered: clear the open alarm, if any.
    Clear {
        tenant: String,
        originator: String,
        kind: String,
        rule: String,
        value: Value,
        ts: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AlarmError {
    #[error("alarm {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type OpenKey = (String, String, String);

pub struct Alarms {
    store: Store,
    clock: SharedClock,
    open: RwLock<HashMap<OpenKey, Alarm>>,
    next_id: AtomicI64,
    pub raised: std::sync::atomic::AtomicU64,
}

impl Alarms {
    pub fn load(store: Store, clock: SharedClock) -> Result<Arc<Alarms>, StoreError> {
        let (open_rows, max) =
            store.read(|c| Ok((rows::open_alarms(c)?, rows::max_alarm_id(c)?)))?;
        let mut open = HashMap::new();
        for r in &open_rows {
            let a = Alarm::from_row(r)?;
            open.insert((a.tenant.clone(), a.originator.clone(), a.kind.clone()), a);
        }
        Ok(Arc::new(Alarms {
            store,
            clock,
            open: RwLock::new(open),
            next_id: AtomicI64::new(max + 1),
            raised: Default::default(),
        }))
    }

    /// Whether an alarm of this type is open on the originator (a timer's
    /// raise replayed after a crash finds its alarm already open).
    pub fn is_open(&self, tenant: &str, originator: &str, kind: &str) -> bool {
        self.open.read().expect("alarms").contains_key(&(
            tenant.to_string(),
            originator.to_string(),
            kind.to_string(),
        ))
    }

    /// Applies a rule engine batch's intents inside its transaction: each
    /// changed alarm is written (and announced) once, in its final state.
    pub fn apply(
        self: &Arc<Self>,
        ctx: &mut WriteCtx<'_>,
        intents: Vec<Intent>,
    ) -> Result<Vec<Change>, StoreError> {
        let now = self.clock.now_us();
        let mut changed: Vec<(OpenKey, &'static str)> = Vec::new();
        let mut closed: Vec<Alarm> = Vec::new();
        let mut before: HashMap<OpenKey, Option<Alarm>> = HashMap::new();
        {
            let mut open = self.open.write().expect("alarms");
            for intent in intents {
                match intent {
                    Intent::Raise {
                        tenant,
                        originator,
                        kind,
                        severity,
                        rule,
                        propagate,
                        value,
                        ts,
                    } => {
                        let key = (tenant.clone(), originator.clone(), kind.clone());
                        before
                            .entry(key.clone())
                            .or_insert_with(|| open.get(&key).cloned());
                        let op = match open.get_mut(&key) {
                            Some(a) => {
                                a.count += 1;
                                let escalated = severity > a.severity;
                                a.severity = a.severity.max(severity);
                                a.last_value = value;
                                a.updated_at = now;
                                if escalated {
                                    "escalate"
                                } else {
                                    "update"
                                }
                            }
                            None => {
                                let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                                self.raised.fetch_add(1, Ordering::Relaxed);
                                open.insert(
                                    key.clone(),
                                    Alarm {
                                        id,
                                        tenant,
                                        kind,
                                        severity,
                                        originator,
                                        status: Status::ActiveUnack,
                                        rule: Some(rule),
                                        start_ts: ts,
                                        end_ts: None,
                                        ack_ts: None,
                                        clear_ts: None,
                                        ack_by: None,
                                        clear_by: None,
                                        count: 1,
                                        last_value: value,
                                        propagate,
                                        comments: Vec::new(),
                                        updated_at: now,
                                    },
                                );
                                "raise"
                            }
                        };
                        note(&mut changed, key, op);
                    }
                    Intent::Clear {
                        tenant,
                        originator,
                        kind,
                        value,
                        ts,
                        ..
                    } => {
                        let key = (tenant, originator, kind);
                        before
                            .entry(key.clone())
                            .or_insert_with(|| open.get(&key).cloned());
                        if let Some(mut a) = open.remove(&key) {
                            if let Ok(s) = a.status.clear() {
                                a.status = s;
                            }
                            a.end_ts = Some(ts);
                            a.clear_ts = Some(now);
                            a.clear_by = Some("rule".into());
                            a.last_value = value;
                            a.updated_at = now;
                            changed.retain(|(k, _)| *k != key);
                            closed.push(a);
                        }
                    }
                }
            }
        }
        let me = self.clone();
        let undo = before.clone();
        ctx.on_rollback(move |_| {
            let mut open = me.open.write().expect("alarms");
            for (k, a) in undo {
                match a {
                    Some(a) => open.insert(k, a),
                    None => open.remove(&k),
                };
            }
        });
        // Cleared ones first: a new excursion after a clear in the same
        // batch opens a new alarm, which the unique index of open alarms
        // allows only once the old one is closed.
        let mut out = Vec::new();
        for a in closed {
            rows::put_alarm(ctx.tx, &a.row())?;
            ctx.emit(event(&a, "clear"));
            out.push(Change {
                op: "clear",
                alarm: a,
            });
        }
        let open = self.open.read().expect("alarms");
        for (key, op) in changed {
            if let Some(a) = open.get(&key) {
                rows::put_alarm(ctx.tx, &a.row())?;
                ctx.emit(event(a, op));
                out.push(Change {
                    op,
                    alarm: a.clone(),
                });
            }
        }
        Ok(out)
    }

    /// Acknowledges (by an operator).
    pub async fn ack(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        by: &str,
    ) -> Result<Alarm, AlarmError> {
        let by = by.to_string();
        self.change(tenant, id, "ack", move |a, now| {
            a.status = a.status.ack()?;
            a.ack_ts = Some(now);
            a.ack_by = Some(by);
            Ok(())
        })
        .await
    }

    /// Clears (by an operator): the alarm stays until acknowledged too.
    pub async fn clear(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        by: &str,
    ) -> Result<Alarm, AlarmError> {
        let by = by.to_string();
        self.change(tenant, id, "clear", move |a, now| {
            a.status = a.status.clear()?;
            a.clear_ts = Some(now);
            a.end_ts.get_or_insert(now);
            a.clear_by = Some(by);
            Ok(())
        })
        .await
    }

    pub async fn comment(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        by: &str,
        text: &str,
    ) -> Result<Alarm, AlarmError> {
        let (by, text) = (by.to_string(), text.to_string());
        self.change(tenant, id, "comment", move |a, now| {
            a.comments.push(Comment {
                at: now,
                author: by,
                text,
            });
            Ok(())
        })
        .await
    }

    /// One operator change, read and written inside the writer's
    /// transaction, so it applies to the alarm as the engine left it.
    async fn change(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        op: &'static str,
        f: impl FnOnce(&mut Alarm, i64) -> Result<(), Refused> + Send + 'static,
    ) -> Result<Alarm, AlarmError> {
        let Ok(num) = id.parse::<i64>() else {
            return Err(AlarmError::NotFound(id.into()));
        };
        let (me, t, now) = (self.clone(), tenant.to_string(), self.clock.now_us());
        let out = self
            .store
            .write(move |ctx| {
                let Some(row) = rows::get_alarm(ctx.tx, &t, num)? else {
                    return Ok(Err(AlarmError::NotFound(num.to_string())));
                };
                let mut a = Alarm::from_row(&row)?;
                if let Err(r) = f(&mut a, now) {
                    return Ok(Err(r.into()));
                }
                a.updated_at = now;
                rows::put_alarm(ctx.tx, &a.row())?;
                ctx.emit(event(&a, op));
                let key = (a.tenant.clone(), a.originator.clone(), a.kind.clone());
                let mut open = me.open.write().expect("alarms");
                let before = open.get(&key).cloned();
                if a.status.is_active() {
                    open.insert(key.clone(), a.clone());
                } else if before.as_ref().is_some_and(|b| b.id == a.id) {
                    open.remove(&key);
                }
                drop(open);
                let me2 = me.clone();
                ctx.on_rollback(move |_| {
                    let mut open = me2.open.write().expect("alarms");
                    match before {
                        Some(b) => open.insert(key, b),
                        None => open.remove(&key),
                    };
                });
                Ok(Ok(a))
            })
            .await?;
        out
    }

    pub fn get(&self, tenant: &str, id: &str) -> Result<Option<Alarm>, StoreError> {
        let Ok(num) = id.parse::<i64>() else {
            return Ok(None);
        };
        let t = tenant.to_string();
        match self.store.read(move |c| rows::get_alarm(c, &t, num))? {
            Some(r) => Ok(Some(Alarm::from_row(&r)?)),
            None => Ok(None),
        }
    }

    pub fn list(&self, tenant: &str, filter: AlarmFilter) -> Result<Vec<Alarm>, StoreError> {
        let t = tenant.to_string();
        let rows = self
            .store
            .read(move |c| rows::list_alarms(c, &t, &filter))?;
        rows.iter().map(Alarm::from_row).collect()
    }

    /// Open alarms of a tenant (for counts).
    pub fn open_of(&self, tenant: &str) -> Vec<Alarm> {
        self.open
            .read()
            .expect("alarms")
            .iter()
            .filter(|((t, _, _), _)| t == tenant)
            .map(|(_, a)| a.clone())
            .collect()
    }

    pub fn open_count(&self) -> usize {
        self.open.read().expect("alarms").len()
    }
}

fn note(changed: &mut Vec<(OpenKey, &'static str)>, key: OpenKey, op: &'static str) {
    match changed.iter_mut().find(|(k, _)| *k == key) {
        // A raise followed by repeats in one batch is announced as a
        // raise, an escalation as one even if repeats follow.
        Some((_, existing)) => {
            if *existing == "update" {
                *existing = op;
            }
        }
        None => changed.push((key, op)),
    }
}

fn event(a: &Alarm, op: &str) -> Draft {
    Draft::new(
        &a.tenant,
        Kind::Alarm,
        Some(&a.originator),
        None,
        json!({"op": op, "alarm": a.doc()}),
    )
}
