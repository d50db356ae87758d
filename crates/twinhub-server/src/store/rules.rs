//! Rows of rules and alarms: rule definitions (JSON bodies with a version),
//! the rolling state of each rule × twin, alarms (indexed columns for the
//! list filters plus the whole alarm as JSON). At most one open alarm per
//! (tenant, originator, type) is also a database fact (a partial unique
//! index), not only the engine's.

use super::sql::{args, Row, Sql, Val};
use super::StoreError;

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

pub fn put_rule(tx: &dyn Sql, r: &RuleRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO rules(tenant, id, version, enabled, body, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(tenant, id) DO UPDATE SET version = excluded.version,
           enabled = excluded.enabled, body = excluded.body, updated_at = excluded.updated_at",
        args![
            &r.tenant,
            &r.id,
            r.version,
            r.enabled,
            &r.body,
            r.created_at,
            r.updated_at
        ],
    )?;
    Ok(())
}

/// Deletes a rule and its rolling state; its alarms stay (history).
pub fn delete_rule(tx: &dyn Sql, tenant: &str, id: &str) -> Result<bool, StoreError> {
    tx.exec(
        "DELETE FROM rule_state WHERE tenant = ?1 AND rule = ?2",
        args![tenant, id],
    )?;
    Ok(tx.exec(
        "DELETE FROM rules WHERE tenant = ?1 AND id = ?2",
        args![tenant, id],
    )? > 0)
}

pub fn count_rules(c: &dyn Sql) -> Result<i64, StoreError> {
    c.one("SELECT COUNT(*) FROM rules", args![])
}

pub fn load_rules(c: &dyn Sql) -> Result<Vec<RuleRow>, StoreError> {
    c.rows(
        "SELECT tenant, id, version, enabled, body, created_at, updated_at FROM rules",
        args![],
        |r| {
            Ok(RuleRow {
                tenant: r.get(0)?,
                id: r.get(1)?,
                version: r.get(2)?,
                enabled: r.get(3)?,
                body: r.get(4)?,
                created_at: r.get(5)?,
                updated_at: r.get(6)?,
            })
        },
    )
}

/// The rolling state of one rule × twin (JSON), or its removal.
pub fn put_state(
    tx: &dyn Sql,
    tenant: &str,
    rule: &str,
    twin: &str,
    state: Option<&str>,
) -> Result<(), StoreError> {
    match state {
        Some(s) => tx.exec(
            "INSERT INTO rule_state(tenant, rule, twin, state) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(tenant, rule, twin) DO UPDATE SET state = excluded.state",
            args![tenant, rule, twin, s],
        )?,
        None => tx.exec(
            "DELETE FROM rule_state WHERE tenant = ?1 AND rule = ?2 AND twin = ?3",
            args![tenant, rule, twin],
        )?,
    };
    Ok(())
}

/// (tenant, rule, twin, state)
pub fn load_states(c: &dyn Sql) -> Result<Vec<(String, String, String, String)>, StoreError> {
    c.rows(
        "SELECT tenant, rule, twin, state FROM rule_state",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
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

pub fn put_alarm(tx: &dyn Sql, a: &AlarmRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO alarms(id, tenant, originator, type, severity, status, start_ts, updated_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET severity = excluded.severity, status = excluded.status,
           updated_at = excluded.updated_at, body = excluded.body",
        args![
            a.id,
            &a.tenant,
            &a.originator,
            &a.kind,
            &a.severity,
            &a.status,
            a.start_ts,
            a.updated_at,
            &a.body
        ],
    )
    .map_err(|e| match e {
        StoreError::Conflict(_) => StoreError::Conflict(format!(
            "{} already has an open {} alarm",
            a.originator, a.kind
        )),
        e => e,
    })?;
    Ok(())
}

fn alarm_row(r: &dyn Row) -> Result<AlarmRow, StoreError> {
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

pub fn open_alarms(c: &dyn Sql) -> Result<Vec<AlarmRow>, StoreError> {
    c.rows(
        &format!(
            "SELECT {ALARM_COLUMNS} FROM alarms WHERE status IN ('ACTIVE_UNACK', 'ACTIVE_ACK')"
        ),
        args![],
        alarm_row,
    )
}

pub fn max_alarm_id(c: &dyn Sql) -> Result<i64, StoreError> {
    c.one("SELECT COALESCE(MAX(id), 0) FROM alarms", args![])
}

pub fn get_alarm(c: &dyn Sql, tenant: &str, id: i64) -> Result<Option<AlarmRow>, StoreError> {
    c.row(
        &format!("SELECT {ALARM_COLUMNS} FROM alarms WHERE tenant = ?1 AND id = ?2"),
        args![tenant, id],
        alarm_row,
    )
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
    c: &dyn Sql,
    tenant: &str,
    f: &AlarmFilter,
) -> Result<Vec<AlarmRow>, StoreError> {
    let mut sql = format!("SELECT {ALARM_COLUMNS} FROM alarms WHERE tenant = ?1");
    let mut args: Vec<Val<'_>> = vec![Val::Text(tenant)];
    // Numbered placeholders: the same text runs on PostgreSQL.
    fn mark(args: &[Val<'_>]) -> String {
        format!("?{}", args.len() + 1)
    }
    fn any_of<'a>(col: &str, vals: &'a [String], sql: &mut String, args: &mut Vec<Val<'a>>) {
        if !vals.is_empty() {
            let marks: Vec<String> = (0..vals.len())
                .map(|i| format!("?{}", args.len() + 1 + i))
                .collect();
            sql.push_str(&format!(" AND {col} IN ({})", marks.join(", ")));
            args.extend(vals.iter().map(|v| Val::Text(v)));
        }
    }
    any_of("status", &f.statuses, &mut sql, &mut args);
    any_of("severity", &f.severities, &mut sql, &mut args);
    if let Some(k) = &f.kind {
        any_of("type", std::slice::from_ref(k), &mut sql, &mut args);
    }
    if let Some(o) = &f.originators {
        if o.is_empty() {
            return Ok(Vec::new());
        }
        any_of("originator", o, &mut sql, &mut args);
    }
    for (cond, v) in [
        (" AND start_ts >= ", f.from),
        (" AND start_ts < ", f.to),
        (" AND id < ", f.before),
        (" ORDER BY id DESC LIMIT ", Some(f.limit as i64)),
    ] {
        if let Some(v) = v {
            sql.push_str(cond);
            sql.push_str(&mark(&args));
            args.push(Val::Int(v));
        }
    }
    c.rows(&sql, &args, alarm_row)
}

/// Deletes closed alarms last changed before `before` (µs); how many.
pub fn delete_closed_alarms(tx: &dyn Sql, before: i64) -> Result<usize, StoreError> {
    tx.exec(
        "DELETE FROM alarms WHERE status = 'CLEARED_ACK' AND updated_at < ?1",
        args![before],
    )
}
