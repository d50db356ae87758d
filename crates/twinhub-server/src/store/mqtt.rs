//! MQTT broker state that must survive restarts: retained messages,
//! persistent sessions (subscriptions, expiry) and the messages queued for
//! them. Plain functions over a connection; the broker's persister calls
//! them inside `Store::write`, and `Store::read` at start-up.

use super::StoreError;
use rusqlite::{params, Connection};

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

pub fn put_retained(tx: &Connection, r: &RetainedRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO mqtt_retained(tenant, topic, payload, qos, props, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(tenant, topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos,
           props = excluded.props, expires_at = excluded.expires_at",
    )?
    .execute(params![r.tenant, r.topic, r.payload, r.qos, r.props, r.expires_at])?;
    Ok(())
}

pub fn delete_retained(tx: &Connection, tenant: &str, topic: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM mqtt_retained WHERE tenant = ?1 AND topic = ?2")?
        .execute(params![tenant, topic])?;
    Ok(())
}

pub fn load_retained(c: &Connection) -> Result<Vec<RetainedRow>, StoreError> {
    let mut stmt =
        c.prepare("SELECT tenant, topic, payload, qos, props, expires_at FROM mqtt_retained")?;
    let rows = stmt.query_map([], |r| {
        Ok(RetainedRow {
            tenant: r.get(0)?,
            topic: r.get(1)?,
            payload: r.get(2)?,
            qos: r.get(3)?,
            props: r.get(4)?,
            expires_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn put_session(tx: &Connection, s: &SessionRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO mqtt_sessions(client_id, tenant, owner, expiry_s, disconnected_at, subs) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(client_id) DO UPDATE SET tenant = excluded.tenant, owner = excluded.owner,
           expiry_s = excluded.expiry_s, disconnected_at = excluded.disconnected_at, subs = excluded.subs",
    )?
    .execute(params![s.client_id, s.tenant, s.owner, s.expiry_s, s.disconnected_at, s.subs])?;
    Ok(())
}

/// Removes a session and everything queued for it.
pub fn delete_session(tx: &Connection, client_id: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM mqtt_sessions WHERE client_id = ?1")?
        .execute([client_id])?;
    tx.prepare_cached("DELETE FROM mqtt_queue WHERE client_id = ?1")?
        .execute([client_id])?;
    tx.prepare_cached("DELETE FROM mqtt_qos2_in WHERE client_id = ?1")?
        .execute([client_id])?;
    Ok(())
}

pub fn load_sessions(c: &Connection) -> Result<Vec<SessionRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT client_id, tenant, owner, expiry_s, disconnected_at, subs FROM mqtt_sessions",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SessionRow {
            client_id: r.get(0)?,
            tenant: r.get(1)?,
            owner: r.get(2)?,
            expiry_s: r.get(3)?,
            disconnected_at: r.get(4)?,
            subs: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn enqueue(tx: &Connection, q: &QueuedRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO mqtt_queue(id, client_id, topic, payload, qos, retain, props, expires_at, sub_ids, pkid, released)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![q.id, q.client_id, q.topic, q.payload, q.qos, q.retain, q.props, q.expires_at, q.sub_ids, q.pkid, q.released])?;
    Ok(())
}

/// Records the packet id a queued message went out with, or its PUBREC.
pub fn set_inflight(tx: &Connection, id: i64, pkid: u16, released: bool) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE mqtt_queue SET pkid = ?2, released = ?3 WHERE id = ?1")?
        .execute(params![id, pkid, released])?;
    Ok(())
}

/// A QoS 2 packet id received from a persistent session, until PUBREL.
pub fn qos2_in(tx: &Connection, client_id: &str, pkid: u16, held: bool) -> Result<(), StoreError> {
    let sql = if held {
        "INSERT OR IGNORE INTO mqtt_qos2_in(client_id, pkid) VALUES (?1, ?2)"
    } else {
        "DELETE FROM mqtt_qos2_in WHERE client_id = ?1 AND pkid = ?2"
    };
    tx.prepare_cached(sql)?.execute(params![client_id, pkid])?;
    Ok(())
}

pub fn load_qos2_in(c: &Connection) -> Result<Vec<(String, u16)>, StoreError> {
    let mut stmt = c.prepare("SELECT client_id, pkid FROM mqtt_qos2_in")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn dequeue(tx: &Connection, ids: &[i64]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached("DELETE FROM mqtt_queue WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

pub fn load_queue(c: &Connection) -> Result<Vec<QueuedRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, client_id, topic, payload, qos, retain, props, expires_at, sub_ids, pkid, released FROM mqtt_queue ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
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
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
