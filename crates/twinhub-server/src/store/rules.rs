//! Rows of rules and alarms: rule definitions (JSON bodies with a version),
//! the rolling state of each rule × twin, alarms (indexed columns for the
//! list filters plus the whole alarm as JSON). At most one open alarm per
//! (tenant, originator, type) is also a database fact (a partial unique
//! index), not only the engine's.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, Clone)]
pub struct RuleRow {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub enabled: bool,
    pub body: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn put_rule(tx: &Connection, r: &RuleRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO rules(tenant, id, version, enabled, body, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(tenant, id) DO UPDATE SET version = excluded.version,
           enabled = excluded.enabled, body = excluded.body, updated_at = excluded.updated_at",
    )?
    .execute(params![
        r.tenant,
        r.id,
        r.version,
        r.enabled,
        r.body,
        r.created_at,
        r.updated_at
    ])?;
    Ok(())
}

/// Deletes a rule and its rolling state; its alarms stay (history).
pub fn delete_rule(tx: &Connection, tenant: &str, id: &str) -> Result<bool, StoreError> {
    tx.execute(
        "DELETE FROM rule_state WHERE tenant = ?1 AND rule = ?2",
        params![tenant, id],
    )?;
    Ok(tx.execute(
        "DELETE FROM rules WHERE tenant = ?1 AND id = ?2",
        params![tenant, id],
    )? > 0)
}

pub fn count_rules(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.query_row("SELECT COUNT(*) FROM rules", [], |r| r.get(0))?)
}

pub fn load_rules(c: &Connection) -> Result<Vec<RuleRow>, StoreError> {
    let mut stmt =
        c.prepare("SELECT tenant, id, version, enabled, body, created_at, updated_at FROM rules")?;
    let rows = stmt.query_map([], |r| {
        Ok(RuleRow {
            tenant: r.get(0)?,
            id: r.get(1)?,
            version: r.get(2)?,
            enabled: r.get(3)?,
            body: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The rolling state of one rule × twin (JSON), or its removal.
pub fn put_state(
    tx: &Connection,
    tenant: &str,
    rule: &str,
    twin: &str,
    state: Option<&str>,
) -> Result<(), StoreError> {
    match state {
        Some(s) => tx
            .prepare_cached(
                "INSERT INTO rule_state(tenant, rule, twin, state) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(tenant, rule, twin) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![tenant, rule, twin, s])?,
        None => tx
            .prepare_cached("DELETE FROM rule_state WHERE tenant = ?1 AND rule = ?2 AND twin = ?3")?
            .execute(params![tenant, rule, twin])?,
    };
    Ok(())
}

/// (tenant, rule, twin, state)
pub fn load_states(c: &Connection) -> Result<Vec<(String, String, String, String)>, StoreError> {
    let mut stmt = c.prepare("SELECT tenant, rule, twin, state FROM rule_state")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRow {
    pub id: i64,
    pub tenant: String,
    pub originator: String,
    pub kind: String,
    pub severity: String,
    pub status: String,
    pub start_ts: i64,
    pub updated_at: i64,
    /// The whole alarm as JSON.
    pub body: String,
}

pub fn put_alarm(tx: &Connection, a: &AlarmRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO alarms(id, tenant, originator, type, severity, status, start_ts, updated_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET severity = excluded.severity, status = excluded.status,
           updated_at = excluded.updated_at, body = excluded.body",
    )?
    .execute(params![
        a.id,
        a.tenant,
        a.originator,
        a.kind,
        a.severity,
        a.status,
        a.start_ts,
        a.updated_at,
        a.body
    ])
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(format!(
                "{} already has an open {} alarm",
                a.originator, a.kind
            ))
        }
        e => e.into(),
    })?;
    Ok(())
}

fn alarm_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlarmRow> {
    Ok(AlarmRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        originator: r.get(2)?,
        kind: r.get(3)?,
        severity: r.get(4)?,
        status: r.get(5)?,
        start_ts: r.get(6)?,
        updated_at: r.get(7)?,
        body: r.get(8)?,
    })
}

const ALARM_COLUMNS: &str =
    "id, tenant, originator, type, severity, status, start_ts, updated_at, body";

pub fn open_alarms(c: &Connection) -> Result<Vec<AlarmRow>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {ALARM_COLUMNS} FROM alarms WHERE status IN ('ACTIVE_UNACK', 'ACTIVE_ACK')"
    ))?;
    let rows = stmt.query_map([], alarm_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn max_alarm_id(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM alarms", [], |r| r.get(0))?)
}

pub fn get_alarm(c: &Connection, tenant: &str, id: i64) -> Result<Option<AlarmRow>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {ALARM_COLUMNS} FROM alarms WHERE tenant = ?1 AND id = ?2"),
        params![tenant, id],
        alarm_row,
    )
    .optional()?)
}

/// What `list_alarms` selects; empty lists and None mean "any".
#[derive(Debug, Clone, Default)]
pub struct AlarmFilter {
    pub statuses: Vec<String>,
    pub severities: Vec<String>,
    pub kind: Option<String>,
    pub originators: Option<Vec<String>>,
    /// `start_ts` bounds (epoch µs), inclusive from, exclusive to.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Ids below this one (the page cursor; newest first).
    pub before: Option<i64>,
    pub limit: usize,
}

pub fn list_alarms(
    c: &Connection,
    tenant: &str,
    f: &AlarmFilter,
) -> Result<Vec<AlarmRow>, StoreError> {
    let mut sql = format!("SELECT {ALARM_COLUMNS} FROM alarms WHERE tenant = ?");
    let mut args: Vec<rusqlite::types::Value> = vec![tenant.to_string().into()];
    let mut any_of = |col: &str, vals: &[String], sql: &mut String| {
        if !vals.is_empty() {
            let marks = vec!["?"; vals.len()].join(", ");
            sql.push_str(&format!(" AND {col} IN ({marks})"));
            args.extend(vals.iter().map(|v| v.clone().into()));
        }
    };
    any_of("status", &f.statuses, &mut sql);
    any_of("severity", &f.severities, &mut sql);
    if let Some(k) = &f.kind {
        any_of("type", std::slice::from_ref(k), &mut sql);
    }
    if let Some(o) = &f.originators {
        if o.is_empty() {
            return Ok(Vec::new());
        }
        any_of("originator", o, &mut sql);
    }
    if let Some(from) = f.from {
        sql.push_str(" AND start_ts >= ?");
        args.push(from.into());
    }
    if let Some(to) = f.to {
        sql.push_str(" AND start_ts < ?");
        args.push(to.into());
    }
    if let Some(b) = f.before {
        sql.push_str(" AND id < ?");
        args.push(b.into());
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push((f.limit as i64).into());
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), alarm_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes closed alarms last changed before `before` (µs); how many.
pub fn delete_closed_alarms(tx: &Connection, before: i64) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "DELETE FROM alarms WHERE status = 'CLEARED_ACK' AND updated_at < ?1",
        [before],
    )?)
}
