//! MQTT broker state that must survive restarts: retained messages,
//! persistent sessions (subscriptions, expiry) and the messages queued for
//! them. Plain functions over a connection; the broker's persister calls
//! them inside `Store::write`, and `Store::read` at start-up.

use super::sql::{args, in_chunks, value_lists, Sql, Val};
use super::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct RetainedRow {
    pub tenant: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub props: Option<String>,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub client_id: String,
    pub tenant: String,
    pub owner: String,
    pub expiry_s: u32,
    pub disconnected_at: Option<i64>,
    /// The subscriptions, as the broker serialises them.
    pub subs: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueuedRow {
    pub id: i64,
    pub client_id: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<String>,
    pub expires_at: Option<i64>,
    pub sub_ids: String,
    /// The packet id it was sent with (QoS 2), and whether the client
    /// acknowledged it with PUBREC.
    pub pkid: Option<u16>,
    pub released: bool,
}

pub fn put_retained(tx: &dyn Sql, r: &RetainedRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO mqtt_retained(tenant, topic, payload, qos, props, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(tenant, topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos,
           props = excluded.props, expires_at = excluded.expires_at",
        args![&r.tenant, &r.topic, &r.payload, r.qos, r.props.as_ref(), r.expires_at],
    )?;
    Ok(())
}

pub fn delete_retained(tx: &dyn Sql, tenant: &str, topic: &str) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM mqtt_retained WHERE tenant = ?1 AND topic = ?2",
        args![tenant, topic],
    )?;
    Ok(())
}

pub fn load_retained(c: &dyn Sql) -> Result<Vec<RetainedRow>, StoreError> {
    c.rows(
        "SELECT tenant, topic, payload, qos, props, expires_at FROM mqtt_retained",
        args![],
        |r| {
            Ok(RetainedRow {
                tenant: r.get(0)?,
                topic: r.get(1)?,
                payload: r.get(2)?,
                qos: r.get(3)?,
                props: r.get(4)?,
                expires_at: r.get(5)?,
            })
        },
    )
}

pub fn put_session(tx: &dyn Sql, s: &SessionRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO mqtt_sessions(client_id, tenant, owner, expiry_s, disconnected_at, subs) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(client_id) DO UPDATE SET tenant = excluded.tenant, owner = excluded.owner,
           expiry_s = excluded.expiry_s, disconnected_at = excluded.disconnected_at, subs = excluded.subs",
        args![&s.client_id, &s.tenant, &s.owner, s.expiry_s, s.disconnected_at, &s.subs],
    )?;
    Ok(())
}

/// Removes a session and everything queued for it.
pub fn delete_session(tx: &dyn Sql, client_id: &str) -> Result<(), StoreError> {
    for table in ["mqtt_sessions", "mqtt_queue", "mqtt_qos2_in"] {
        tx.exec(
            &format!("DELETE FROM {table} WHERE client_id = ?1"),
            args![client_id],
        )?;
    }
    Ok(())
}

pub fn load_sessions(c: &dyn Sql) -> Result<Vec<SessionRow>, StoreError> {
    c.rows(
        "SELECT client_id, tenant, owner, expiry_s, disconnected_at, subs FROM mqtt_sessions",
        args![],
        |r| {
            Ok(SessionRow {
                client_id: r.get(0)?,
                tenant: r.get(1)?,
                owner: r.get(2)?,
                expiry_s: r.get(3)?,
                disconnected_at: r.get(4)?,
                subs: r.get(5)?,
            })
        },
    )
}

const QUEUE_COLS: usize = 11;

/// Stores queued copies (replacing rows with the same id), many per
/// statement: on PostgreSQL each statement is a round trip, and a
/// persistent subscriber's copies went one INSERT and one DELETE each.
pub fn enqueue(tx: &dyn Sql, rows: &[&QueuedRow]) -> Result<(), StoreError> {
    in_chunks(rows.len(), |range| {
        let sql = format!(
            "INSERT INTO mqtt_queue(id, client_id, topic, payload, qos, retain, props, expires_at, sub_ids, pkid, released)
             VALUES {}
             ON CONFLICT(id) DO UPDATE SET client_id = excluded.client_id, topic = excluded.topic,
               payload = excluded.payload, qos = excluded.qos, retain = excluded.retain, props = excluded.props,
               expires_at = excluded.expires_at, sub_ids = excluded.sub_ids, pkid = excluded.pkid,
               released = excluded.released",
            value_lists(range.len(), QUEUE_COLS)
        );
        let mut vals = Vec::with_capacity(range.len() * QUEUE_COLS);
        for q in &rows[range] {
            vals.extend([
                Val::from(q.id),
                Val::from(&q.client_id),
                Val::from(&q.topic),
                Val::from(&q.payload),
                Val::from(q.qos),
                Val::from(q.retain),
                Val::from(q.props.as_ref()),
                Val::from(q.expires_at),
                Val::from(&q.sub_ids),
                Val::from(q.pkid),
                Val::from(q.released),
            ]);
        }
        // Pipelined on PostgreSQL: sent with the change's end (`flush`).
        tx.exec_later(&sql, &vals)
    })
}

/// Records the packet id a queued message went out with, or its PUBREC.
pub fn set_inflight(tx: &dyn Sql, id: i64, pkid: u16, released: bool) -> Result<(), StoreError> {
    tx.exec_later(
        "UPDATE mqtt_queue SET pkid = ?2, released = ?3 WHERE id = ?1",
        args![id, pkid, released],
    )
}

/// A QoS 2 packet id received from a persistent session, until PUBREL.
pub fn qos2_in(tx: &dyn Sql, client_id: &str, pkid: u16, held: bool) -> Result<(), StoreError> {
    let sql = if held {
        "INSERT INTO mqtt_qos2_in(client_id, pkid) VALUES (?1, ?2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM mqtt_qos2_in WHERE client_id = ?1 AND pkid = ?2"
    };
    tx.exec_later(sql, args![client_id, pkid])
}

pub fn load_qos2_in(c: &dyn Sql) -> Result<Vec<(String, u16)>, StoreError> {
    c.rows("SELECT client_id, pkid FROM mqtt_qos2_in", args![], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// Deletes delivered (or dropped) copies, several per statement.
pub fn dequeue(tx: &dyn Sql, ids: &[i64]) -> Result<(), StoreError> {
    in_chunks(ids.len(), |range| {
        let list = value_lists(range.len(), 1).replace(['(', ')'], "");
        let vals: Vec<Val<'_>> = ids[range].iter().map(|&id| Val::from(id)).collect();
        tx.exec_later(
            &format!("DELETE FROM mqtt_queue WHERE id IN ({list})"),
            &vals,
        )
    })
}

pub fn load_queue(c: &dyn Sql) -> Result<Vec<QueuedRow>, StoreError> {
    c.rows(
        "SELECT id, client_id, topic, payload, qos, retain, props, expires_at, sub_ids, pkid, released FROM mqtt_queue ORDER BY id",
        args![],
        |r| {
            Ok(QueuedRow {
                id: r.get(0)?,
                client_id: r.get(1)?,
                topic: r.get(2)?,
                payload: r.get(3)?,
                qos: r.get(4)?,
                retain: r.get(5)?,
                props: r.get(6)?,
                expires_at: r.get(7)?,
                sub_ids: r.get(8)?,
                pkid: r.get(9)?,
                released: r.get(10)?,
            })
        },
    )
}
