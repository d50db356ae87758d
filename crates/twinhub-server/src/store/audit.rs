//! Audit rows: one hash chain per tenant plus `system`. Plain functions
//! over a connection; the audit log calls them inside `Store::write`.

use super::sql::{args, Sql};
use super::StoreError;

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

pub fn append(tx: &dyn Sql, r: &AuditRow) -> Result<(), StoreError> {
    tx.exec_later(
        "INSERT INTO audit(chain, seq, ts, actor, action, target, detail, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![&r.chain, r.seq, r.ts, &r.actor, &r.action, &r.target, &r.detail, &r.mac],
    )?;
    Ok(())
}

/// The last (seq, mac) of every chain.
pub fn heads(c: &dyn Sql) -> Result<Vec<(String, i64, Vec<u8>)>, StoreError> {
    c.rows(
        "SELECT chain, seq, mac FROM audit a WHERE seq = (SELECT MAX(seq) FROM audit b WHERE b.chain = a.chain)",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

pub fn page(
    c: &dyn Sql,
    chain: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<AuditRow>, StoreError> {
    c.rows(
        "SELECT chain, seq, ts, actor, action, target, detail, mac FROM audit WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        args![chain, after, limit as i64],
        |r| {
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
        },
    )
}

pub fn count(c: &dyn Sql, chain: &str) -> Result<i64, StoreError> {
    c.one("SELECT COUNT(*) FROM audit WHERE chain = ?1", args![chain])
}

pub fn chains(c: &dyn Sql) -> Result<Vec<String>, StoreError> {
    c.rows(
        "SELECT DISTINCT chain FROM audit ORDER BY chain",
        args![],
        |r| r.get(0),
    )
}

pub fn last_seq(c: &dyn Sql, chain: &str) -> Result<Option<i64>, StoreError> {
    c.one("SELECT MAX(seq) FROM audit WHERE chain = ?1", args![chain])
}
