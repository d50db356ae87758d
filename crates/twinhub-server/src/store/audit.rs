//! Audit rows: one hash chain per tenant plus `system`. Plain functions
//! over a connection; the audit log calls them inside `Store::write`.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub chain: String,
    pub seq: i64,
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub mac: Vec<u8>,
}

pub fn append(tx: &Connection, r: &AuditRow) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO audit(chain, seq, ts, actor, action, target, detail, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?
        .execute(params![r.chain, r.seq, r.ts, r.actor, r.action, r.target, r.detail, r.mac])?;
    Ok(())
}

/// The last (seq, mac) of every chain.
pub fn heads(c: &Connection) -> Result<Vec<(String, i64, Vec<u8>)>, StoreError> {
    let mut stmt = c.prepare("SELECT chain, seq, mac FROM audit a WHERE seq = (SELECT MAX(seq) FROM audit b WHERE b.chain = a.chain)")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn page(
    c: &Connection,
    chain: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT chain, seq, ts, actor, action, target, detail, mac FROM audit WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
    let rows = stmt.query_map(params![chain, after, limit as i64], |r| {
        Ok(AuditRow {
            chain: r.get(0)?,
            seq: r.get(1)?,
            ts: r.get(2)?,
            actor: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            detail: r.get(6)?,
            mac: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn count(c: &Connection, chain: &str) -> Result<i64, StoreError> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM audit WHERE chain = ?1",
        [chain],
        |r| r.get(0),
    )?)
}

pub fn chains(c: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare("SELECT DISTINCT chain FROM audit ORDER BY chain")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn last_seq(c: &Connection, chain: &str) -> Result<Option<i64>, StoreError> {
    Ok(c.query_row(
        "SELECT MAX(seq) FROM audit WHERE chain = ?1",
        [chain],
        |r| r.get(0),
    )
    .optional()?
    .flatten())
}
