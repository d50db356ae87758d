//! The durable side of the fan-out. While at least one durable consumer
//! exists (rules, routes), the writer stores the events of each operation
//! in `outbox` in the same transaction as the operation itself, so an
//! event is in the outbox exactly when its change is committed. A consumer
//! records the last event id it has applied in `consumers` — ideally in
//! the same transaction as its own effects (`WriteCtx::set_position`),
//! which makes those effects exactly-once — and resumes after a crash or a
//! restart from there. Rows every consumer has passed are deleted.
//!
//! `Consumer::next` gives at-least-once delivery in id (commit) order: it
//! reads the outbox until it has caught up, then follows the live bus,
//! and goes back to the outbox whenever it falls behind the bus.

use super::sql::{args, Sql};
use super::{Engine, Store, StoreError, WriteCtx};
use crate::events::{Draft, Event};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Writes the events of one operation as one row (inside the writer's
/// transaction).
pub(super) fn insert(tx: &dyn Sql, events: &[Event]) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let data = super::outbox_rows::encode(events);
    // Sent with the commit on PostgreSQL (a round trip per group, not
    // per row); an error fails the group there.
    tx.exec_later(
        "INSERT INTO outbox(last_id, first_id, data) VALUES (?1, ?2, ?3)",
        args![last.id as i64, first.id as i64, &data],
    )
}

/// The highest event id the directory has seen (outbox rows and consumer
/// positions), so ids keep increasing across restarts even when the clock
/// does not.
pub(super) fn high_water(conn: &dyn Sql) -> Result<(u64, bool), StoreError> {
    let (rows, consumers): (Option<i64>, Option<i64>) = conn
        .row(
            "SELECT (SELECT MAX(last_id) FROM outbox), (SELECT MAX(position) FROM consumers)",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .unwrap_or((None, None));
    let on = consumers.is_some();
    Ok((
        rows.unwrap_or(0).max(consumers.unwrap_or(0)).max(0) as u64,
        on,
    ))
}

/// Events with ids after `after`, in order; whole rows, so possibly a few
/// more than `max`.
pub(super) fn read_after(conn: &dyn Sql, after: u64, max: usize) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    // A row holds at least one event: `max` rows are enough.
    conn.each(
        "SELECT data FROM outbox WHERE last_id > ?1 ORDER BY last_id LIMIT ?2",
        args![after as i64, max as i64],
        &mut |r| {
            if out.len() >= max {
                return Ok(());
            }
            let blob: Vec<u8> = r.get(0)?;
            for e in super::outbox_rows::decode(&blob)? {
                if e.id > after {
                    out.push(e);
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}

pub(super) fn set_position(tx: &dyn Sql, name: &str, pos: u64) -> Result<(), StoreError> {
    let n = tx.exec(
        "UPDATE consumers SET position = CASE WHEN position > ?2 THEN position ELSE ?2 END
         WHERE name = ?1",
        args![name, pos as i64],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("no durable consumer {name}")));
    }
    tx.exec(
        "DELETE FROM outbox WHERE last_id <= (SELECT MIN(position) FROM consumers)",
        args![],
    )?;
    Ok(())
}

impl WriteCtx<'_> {
    /// Publishes `draft` once this transaction commits (and stores it in
    /// the outbox with it, when durable consumers exist). Dropped if this
    /// closure fails.
    pub fn emit(&mut self, draft: Draft) {
        self.events.push(draft);
    }

    /// Creates the durable consumer `name` at the end of the stream as this
    /// transaction leaves it (so it sees every change committed after —
    /// including this one's events), unless it exists; its position.
    pub fn ensure_consumer(&mut self, name: &str) -> Result<u64, StoreError> {
        let tx: &dyn Sql = self.tx;
        let found: Option<i64> = tx.row(
            "SELECT position FROM consumers WHERE name = ?1",
            args![name],
            |r| r.get(0),
        )?;
        let pos = match found {
            Some(p) => p as u64,
            None => {
                let p = self.engine.last_event_id();
                tx.exec(
                    "INSERT INTO consumers(name, position) VALUES (?1, ?2)",
                    args![name, p as i64],
                )?;
                p
            }
        };
        let was = self.engine.outbox_on.swap(true, Ordering::SeqCst);
        self.on_rollback(move |e| e.outbox_on.store(was, Ordering::SeqCst));
        Ok(pos)
    }

    /// Removes a durable consumer (see `Store::drop_consumer`).
    pub fn drop_consumer(&mut self, name: &str) -> Result<bool, StoreError> {
        let tx: &dyn Sql = self.tx;
        let gone = tx.exec("DELETE FROM consumers WHERE name = ?1", args![name])? > 0;
        let left: i64 = tx.one("SELECT COUNT(*) FROM consumers", args![])?;
        if left == 0 {
            tx.exec("DELETE FROM outbox", args![])?;
            let was = self.engine.outbox_on.swap(false, Ordering::SeqCst);
            self.on_rollback(move |e| e.outbox_on.store(was, Ordering::SeqCst));
        } else {
            tx.exec(
                "DELETE FROM outbox WHERE last_id <= (SELECT MIN(position) FROM consumers)",
                args![],
            )?;
        }
        Ok(gone)
    }

    /// Records that consumer `name` has applied every event up to `pos`,
    /// atomically with whatever else this closure writes.
    pub fn set_position(&mut self, name: &str, pos: u64) -> Result<(), StoreError> {
        set_position(self.tx, name, pos)
    }
}

impl Engine {
    /// The id of the last event committed.
    pub fn last_event_id(&self) -> u64 {
        self.event_seq.load(Ordering::SeqCst)
    }
}

impl Store {
    /// The post-commit fan-out: every committed change, in commit order.
    pub fn events(&self) -> &Arc<crate::events::EventBus> {
        &self.inner.engine.bus
    }

    /// Commits events that carry no other change (device presence).
    pub async fn emit(&self, events: Vec<Draft>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(move |ctx| {
            ctx.events.extend(events);
            Ok(())
        })
        .await
    }

    /// `emit` without waiting (from synchronous code in the runtime).
    pub fn emit_detached(&self, events: Vec<Draft>) {
        if events.is_empty() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.emit(events).await {
                tracing::warn!(error = %e, "an event could not be committed");
            }
        });
    }

    /// Opens the durable consumer `name`, creating it at the current end
    /// of the stream (it sees what is committed from now on) if it does
    /// not exist yet.
    pub async fn consumer(&self, name: &str) -> Result<Consumer, StoreError> {
        // Subscribed before the position is read, so nothing committed
        // after it can be missed.
        let (_, rx) = self.events().subscribe(None);
        let n = name.to_string();
        let position = self.write(move |ctx| ctx.ensure_consumer(&n)).await?;
        Ok(Consumer {
            store: self.clone(),
            name: name.to_string(),
            position,
            delivered: position,
            rx,
            catching_up: true,
        })
    }

    /// Removes a durable consumer; when none is left the outbox is emptied
    /// and no longer written.
    pub async fn drop_consumer(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_string();
        self.write(move |ctx| ctx.drop_consumer(&n)).await
    }

    /// Durable consumers and their positions.
    pub fn consumers(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|c| {
            c.rows(
                "SELECT name, position FROM consumers ORDER BY name",
                args![],
                |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)? as u64)),
            )
        })
    }

    /// Rows and bytes held in the outbox.
    pub fn outbox_size(&self) -> Result<(u64, u64), StoreError> {
        self.read(|c| {
            let (rows, bytes) = c
                .row(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM outbox",
                    args![],
                    |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
                )?
                .unwrap_or((0, 0));
            Ok((rows as u64, bytes as u64))
        })
    }
}

/// A durable consumer of the fan-out (see the module doc).
pub struct Consumer {
    store: Store,
    name: String,
    position: u64,
    delivered: u64,
    rx: broadcast::Receiver<Arc<Event>>,
    catching_up: bool,
}

impl Consumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last id recorded as applied.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next events after those already handed out, in id order (at
    /// least one; waits for it). After a restart, delivery resumes after
    /// the recorded position, so events handed out but not recorded come
    /// again.
    pub async fn next(&mut self, max: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let max = max.max(1);
        loop {
            if self.catching_up {
                let after = self.delivered;
                let evs = self.store.read(move |c| read_after(c, after, max))?;
                if let Some(last) = evs.last() {
                    self.delivered = last.id;
                    return Ok(evs.into_iter().map(Arc::new).collect());
                }
                self.catching_up = false;
            }
            let first = match self.rx.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(_)) => {
                    self.catching_up = true;
                    continue;
                }
                Err(RecvError::Closed) => return Err(StoreError::Unavailable),
            };
            let mut out = Vec::new();
            let mut next = Some(first);
            while let Some(e) = next.take() {
                if e.id > self.delivered {
                    self.delivered = e.id;
                    out.push(e);
                }
                if out.len() >= max {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(e) => next = Some(e),
                    Err(TryRecvError::Lagged(_)) => {
                        self.catching_up = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Records every event up to `pos` as applied (when the consumer has no
    /// store writes of its own to make it atomic with).
    pub async fn commit(&mut self, pos: u64) -> Result<(), StoreError> {
        let n = self.name.clone();
        self.store
            .write(move |ctx| ctx.set_position(&n, pos))
            .await?;
        self.position = self.position.max(pos);
        Ok(())
    }

    /// Moves past every event up to `pos` without applying them (a route
    /// dropping its oldest events), recorded at once.
    pub async fn skip_to(&mut self, pos: u64) -> Result<(), StoreError> {
        self.commit(pos).await?;
        if pos > self.delivered {
            self.delivered = pos;
            self.catching_up = true;
        }
        Ok(())
    }

    /// Notes a position recorded through `WriteCtx::set_position`.
    pub fn committed(&mut self, pos: u64) {
        self.position = self.position.max(pos);
    }
}
