//! Rows of the twin graph: DTDL models, twins and relationships. Plain
//! functions over a connection; the twin graph calls them inside
//! `Store::write` and loads everything with `Store::read` at start.

use super::StoreError;
use rusqlite::{params, Connection};

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    pub tenant: String,
    pub id: String,
    pub body: String,
    pub decommissioned: bool,
    pub uploaded_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TwinRow {
    pub tenant: String,
    pub id: String,
    pub model: String,
    pub etag: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelationshipRow {
    pub tenant: String,
    pub source: String,
    pub id: String,
    pub name: String,
    pub target: String,
    pub etag: String,
    pub body: String,
}

pub fn put_model(tx: &Connection, m: &ModelRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO dt_models(tenant, id, body, decommissioned, uploaded_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, id) DO UPDATE SET body = excluded.body, decommissioned = excluded.decommissioned",
    )?
    .execute(params![m.tenant, m.id, m.body, m.decommissioned, m.uploaded_at])?;
    Ok(())
}

pub fn delete_model(tx: &Connection, tenant: &str, id: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM dt_models WHERE tenant = ?1 AND id = ?2")?
        .execute(params![tenant, id])?;
    Ok(())
}

pub fn load_models(c: &Connection) -> Result<Vec<ModelRow>, StoreError> {
    let mut stmt =
        c.prepare("SELECT tenant, id, body, decommissioned, uploaded_at FROM dt_models")?;
    let rows = stmt.query_map([], |r| {
        Ok(ModelRow {
            tenant: r.get(0)?,
            id: r.get(1)?,
            body: r.get(2)?,
            decommissioned: r.get(3)?,
            uploaded_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn put_twin(tx: &Connection, t: &TwinRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO dt_twins(tenant, id, model, etag, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, id) DO UPDATE SET model = excluded.model, etag = excluded.etag, body = excluded.body",
    )?
    .execute(params![t.tenant, t.id, t.model, t.etag, t.body])?;
    Ok(())
}

pub fn delete_twin(tx: &Connection, tenant: &str, id: &str) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM dt_twins WHERE tenant = ?1 AND id = ?2")?
        .execute(params![tenant, id])?;
    Ok(())
}

pub fn load_twins(c: &Connection) -> Result<Vec<TwinRow>, StoreError> {
    let mut stmt = c.prepare("SELECT tenant, id, model, etag, body FROM dt_twins")?;
    let rows = stmt.query_map([], |r| {
        Ok(TwinRow {
            tenant: r.get(0)?,
            id: r.get(1)?,
            model: r.get(2)?,
            etag: r.get(3)?,
            body: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn put_relationship(tx: &Connection, r: &RelationshipRow) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO dt_relationships(tenant, source, id, name, target, etag, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(tenant, source, id) DO UPDATE SET name = excluded.name, target = excluded.target, etag = excluded.etag, body = excluded.body",
    )?
    .execute(params![r.tenant, r.source, r.id, r.name, r.target, r.etag, r.body])?;
    Ok(())
}

pub fn delete_relationship(
    tx: &Connection,
    tenant: &str,
    source: &str,
    id: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM dt_relationships WHERE tenant = ?1 AND source = ?2 AND id = ?3",
    )?
    .execute(params![tenant, source, id])?;
    Ok(())
}

pub fn load_relationships(c: &Connection) -> Result<Vec<RelationshipRow>, StoreError> {
    let mut stmt =
        c.prepare("SELECT tenant, source, id, name, target, etag, body FROM dt_relationships")?;
    let rows = stmt.query_map([], |r| {
        Ok(RelationshipRow {
            tenant: r.get(0)?,
            source: r.get(1)?,
            id: r.get(2)?,
            name: r.get(3)?,
            target: r.get(4)?,
            etag: r.get(5)?,
            body: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
