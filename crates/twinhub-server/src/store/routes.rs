//! Rows of routes: definitions (JSON bodies with a version and the pause
//! flag) and dead letters (events a route gave up on, kept until replayed
//! or deleted). A route's queue is the outbox itself, read from the
//! route's durable consumer position (`outbox.rs`).

use super::StoreError;
use rusqlite::{params, Connection};

#[derive(Debug, Clone)]
pub struct RouteRow {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub paused: bool,
    pub body: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn put_route(tx: &Connection, r: &RouteRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO routes(tenant, id, version, paused, body, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(tenant, id) DO UPDATE SET version = excluded.version,
           paused = excluded.paused, body = excluded.body, updated_at = excluded.updated_at",
    )?
    .execute(params![
        r.tenant,
        r.id,
        r.version,
        r.paused,
        r.body,
        r.created_at,
        r.updated_at
    ])?;
    Ok(())
}

/// Deletes a route and its dead letters.
pub fn delete_route(tx: &Connection, tenant: &str, id: &str) -> Result<bool, StoreError> {
    tx.execute(
        "DELETE FROM route_deadletters WHERE tenant = ?1 AND route = ?2",
        params![tenant, id],
    )?;
    Ok(tx.execute(
        "DELETE FROM routes WHERE tenant = ?1 AND id = ?2",
        params![tenant, id],
    )? > 0)
}

pub fn load_routes(c: &Connection) -> Result<Vec<RouteRow>, StoreError> {
    let mut stmt =
        c.prepare("SELECT tenant, id, version, paused, body, created_at, updated_at FROM routes")?;
    let rows = stmt.query_map([], |r| {
        Ok(RouteRow {
            tenant: r.get(0)?,
            id: r.get(1)?,
            version: r.get(2)?,
            paused: r.get(3)?,
            body: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A dead letter: one event envelope (JSON) and why it was given up.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub seq: i64,
    pub event_id: u64,
    pub at: i64,
    pub attempts: u32,
    pub error: String,
    pub body: String,
}

pub fn add_dead_letters(
    tx: &Connection,
    tenant: &str,
    route: &str,
    letters: &[(u64, String)],
    at: i64,
    attempts: u32,
    error: &str,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO route_deadletters(tenant, route, event_id, at, attempts, error, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for (id, body) in letters {
        stmt.execute(params![
            tenant, route, *id as i64, at, attempts, error, body
        ])?;
    }
    Ok(())
}

/// Dead letters of a route after `after` (their sequence), oldest first.
pub fn dead_letters(
    c: &Connection,
    tenant: &str,
    route: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, event_id, at, attempts, error, body FROM route_deadletters
         WHERE tenant = ?1 AND route = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![tenant, route, after, limit as i64], |r| {
        Ok(DeadLetter {
            seq: r.get(0)?,
            event_id: r.get::<_, i64>(1)? as u64,
            at: r.get(2)?,
            attempts: r.get::<_, i64>(3)? as u32,
            error: r.get(4)?,
            body: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn count_dead_letters(c: &Connection, tenant: &str, route: &str) -> Result<u64, StoreError> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM route_deadletters WHERE tenant = ?1 AND route = ?2",
        params![tenant, route],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

pub fn remove_dead_letters(
    tx: &Connection,
    tenant: &str,
    route: &str,
    seqs: &[i64],
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "DELETE FROM route_deadletters WHERE tenant = ?1 AND route = ?2 AND seq = ?3",
    )?;
    for s in seqs {
        stmt.execute(params![tenant, route, s])?;
    }
    Ok(())
}

/// Events waiting in the outbox after `position` (whole operations; ids
/// within one are consecutive) and the bytes they take.
pub fn backlog(c: &Connection, position: u64) -> Result<(u64, u64), StoreError> {
    Ok(c.query_row(
        "SELECT COALESCE(SUM(last_id - MAX(first_id, ?1 + 1) + 1), 0), COALESCE(SUM(LENGTH(data)), 0)
         FROM outbox WHERE last_id > ?1",
        [position as i64],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?)
}

/// The event id after which `keep` events remain in the outbox (for a
/// route dropping its oldest events); None if fewer remain already.
pub fn skip_to_keep(c: &Connection, position: u64, keep: u64) -> Result<Option<u64>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT first_id, last_id FROM outbox WHERE last_id > ?1 ORDER BY last_id DESC",
    )?;
    let mut rows = stmt.query([position as i64])?;
    let mut kept = 0u64;
    while let Some(r) = rows.next()? {
        let (first, last): (i64, i64) = (r.get(0)?, r.get(1)?);
        let n = (last - first.max(position as i64 + 1) + 1).max(0) as u64;
        if kept + n > keep {
            // Keep the newest events of this operation that still fit.
            let room = keep - kept;
            return Ok(Some((last as u64).saturating_sub(room)));
        }
        kept += n;
    }
    Ok(None)
}
