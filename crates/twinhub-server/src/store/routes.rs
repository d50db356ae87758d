//! Rows of routes: definitions (JSON bodies with a version and the pause
//! flag) and dead letters (events a route gave up on, kept until replayed
//! or deleted). A route's queue is the outbox itself, read from the
//! route's durable consumer position (`outbox.rs`).

use super::sql::{args, Sql};
use super::StoreError;

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

pub fn put_route(tx: &dyn Sql, r: &RouteRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO routes(tenant, id, version, paused, body, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(tenant, id) DO UPDATE SET version = excluded.version,
           paused = excluded.paused, body = excluded.body, updated_at = excluded.updated_at",
        args![
            &r.tenant,
            &r.id,
            r.version,
            r.paused,
            &r.body,
            r.created_at,
            r.updated_at
        ],
    )?;
    Ok(())
}

/// Deletes a route and its dead letters.
pub fn delete_route(tx: &dyn Sql, tenant: &str, id: &str) -> Result<bool, StoreError> {
    tx.exec(
        "DELETE FROM route_deadletters WHERE tenant = ?1 AND route = ?2",
        args![tenant, id],
    )?;
    Ok(tx.exec(
        "DELETE FROM routes WHERE tenant = ?1 AND id = ?2",
        args![tenant, id],
    )? > 0)
}

pub fn load_routes(c: &dyn Sql) -> Result<Vec<RouteRow>, StoreError> {
    c.rows(
        "SELECT tenant, id, version, paused, body, created_at, updated_at FROM routes",
        args![],
        |r| {
            Ok(RouteRow {
                tenant: r.get(0)?,
                id: r.get(1)?,
                version: r.get(2)?,
                paused: r.get(3)?,
                body: r.get(4)?,
                created_at: r.get(5)?,
                updated_at: r.get(6)?,
            })
        },
    )
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
    tx: &dyn Sql,
    tenant: &str,
    route: &str,
    letters: &[(u64, String)],
    at: i64,
    attempts: u32,
    error: &str,
) -> Result<(), StoreError> {
    for (id, body) in letters {
        tx.exec(
            "INSERT INTO route_deadletters(tenant, route, event_id, at, attempts, error, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![tenant, route, *id as i64, at, attempts, error, body],
        )?;
    }
    Ok(())
}

/// Dead letters of a route after `after` (their sequence), oldest first.
pub fn dead_letters(
    c: &dyn Sql,
    tenant: &str,
    route: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    c.rows(
        "SELECT seq, event_id, at, attempts, error, body FROM route_deadletters
         WHERE tenant = ?1 AND route = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
        args![tenant, route, after, limit as i64],
        |r| {
            Ok(DeadLetter {
                seq: r.get(0)?,
                event_id: r.get::<i64>(1)? as u64,
                at: r.get(2)?,
                attempts: r.get(3)?,
                error: r.get(4)?,
                body: r.get(5)?,
            })
        },
    )
}

pub fn count_dead_letters(c: &dyn Sql, tenant: &str, route: &str) -> Result<u64, StoreError> {
    Ok(c.one::<i64>(
        "SELECT COUNT(*) FROM route_deadletters WHERE tenant = ?1 AND route = ?2",
        args![tenant, route],
    )? as u64)
}

pub fn remove_dead_letters(
    tx: &dyn Sql,
    tenant: &str,
    route: &str,
    seqs: &[i64],
) -> Result<(), StoreError> {
    for s in seqs {
        tx.exec(
            "DELETE FROM route_deadletters WHERE tenant = ?1 AND route = ?2 AND seq = ?3",
            args![tenant, route, *s],
        )?;
    }
    Ok(())
}

/// Events waiting in the outbox after `position` (whole operations; ids
/// within one are consecutive) and the bytes they take.
pub fn backlog(c: &dyn Sql, position: u64) -> Result<(u64, u64), StoreError> {
    // CASE rather than SQLite's two-argument MAX (GREATEST on PostgreSQL);
    // sums cast back to integers (PostgreSQL sums INT8 as NUMERIC).
    let (events, bytes) = c
        .row(
            "SELECT CAST(COALESCE(SUM(last_id - CASE WHEN first_id > ?1 THEN first_id ELSE ?1 + 1 END + 1), 0) AS BIGINT),
                    CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT)
             FROM outbox WHERE last_id > ?1",
            args![position as i64],
            |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
        )?
        .unwrap_or((0, 0));
    Ok((events as u64, bytes as u64))
}

/// The event id after which `keep` events remain in the outbox (for a
/// route dropping its oldest events); None if fewer remain already.
pub fn skip_to_keep(c: &dyn Sql, position: u64, keep: u64) -> Result<Option<u64>, StoreError> {
    let mut kept = 0u64;
    let mut found = None;
    c.each(
        "SELECT first_id, last_id FROM outbox WHERE last_id > ?1 ORDER BY last_id DESC",
        args![position as i64],
        &mut |r| {
            if found.is_some() {
                return Ok(());
            }
            let (first, last): (i64, i64) = (r.get(0)?, r.get(1)?);
            let n = (last - first.max(position as i64 + 1) + 1).max(0) as u64;
            if kept + n > keep {
                // Keep the newest events of this operation that still fit.
                let room = keep - kept;
                found = Some((last as u64).saturating_sub(room));
            } else {
                kept += n;
            }
            Ok(())
        },
    )?;
    Ok(found)
}
