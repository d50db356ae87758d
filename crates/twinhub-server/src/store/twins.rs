//! Rows of the twin graph: DTDL models, twins and relationships. Plain
//! functions over a connection; the twin graph calls them inside
//! `Store::write` and loads everything with `Store::read` at start.

use super::sql::{args, Sql};
use super::StoreError;

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

pub fn put_model(tx: &dyn Sql, m: &ModelRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO dt_models(tenant, id, body, decommissioned, uploaded_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, id) DO UPDATE SET body = excluded.body, decommissioned = excluded.decommissioned",
        args![&m.tenant, &m.id, &m.body, m.decommissioned, m.uploaded_at],
    )?;
    Ok(())
}

pub fn delete_model(tx: &dyn Sql, tenant: &str, id: &str) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM dt_models WHERE tenant = ?1 AND id = ?2",
        args![tenant, id],
    )?;
    Ok(())
}

pub fn load_models(c: &dyn Sql) -> Result<Vec<ModelRow>, StoreError> {
    c.rows(
        "SELECT tenant, id, body, decommissioned, uploaded_at FROM dt_models",
        args![],
        |r| {
            Ok(ModelRow {
                tenant: r.get(0)?,
                id: r.get(1)?,
                body: r.get(2)?,
                decommissioned: r.get(3)?,
                uploaded_at: r.get(4)?,
            })
        },
    )
}

pub fn put_twin(tx: &dyn Sql, t: &TwinRow) -> Result<(), StoreError> {
    tx.exec_later(
        "INSERT INTO dt_twins(tenant, id, model, etag, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, id) DO UPDATE SET model = excluded.model, etag = excluded.etag, body = excluded.body",
        args![&t.tenant, &t.id, &t.model, &t.etag, &t.body],
    )?;
    Ok(())
}

pub fn delete_twin(tx: &dyn Sql, tenant: &str, id: &str) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM dt_twins WHERE tenant = ?1 AND id = ?2",
        args![tenant, id],
    )?;
    Ok(())
}

pub fn load_twins(c: &dyn Sql) -> Result<Vec<TwinRow>, StoreError> {
    c.rows(
        "SELECT tenant, id, model, etag, body FROM dt_twins",
        args![],
        |r| {
            Ok(TwinRow {
                tenant: r.get(0)?,
                id: r.get(1)?,
                model: r.get(2)?,
                etag: r.get(3)?,
                body: r.get(4)?,
            })
        },
    )
}

pub fn put_relationship(tx: &dyn Sql, r: &RelationshipRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO dt_relationships(tenant, source, id, name, target, etag, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(tenant, source, id) DO UPDATE SET name = excluded.name, target = excluded.target, etag = excluded.etag, body = excluded.body",
        args![&r.tenant, &r.source, &r.id, &r.name, &r.target, &r.etag, &r.body],
    )?;
    Ok(())
}

pub fn delete_relationship(
    tx: &dyn Sql,
    tenant: &str,
    source: &str,
    id: &str,
) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM dt_relationships WHERE tenant = ?1 AND source = ?2 AND id = ?3",
        args![tenant, source, id],
    )?;
    Ok(())
}

pub fn load_relationships(c: &dyn Sql) -> Result<Vec<RelationshipRow>, StoreError> {
    c.rows(
        "SELECT tenant, source, id, name, target, etag, body FROM dt_relationships",
        args![],
        |r| {
            Ok(RelationshipRow {
                tenant: r.get(0)?,
                source: r.get(1)?,
                id: r.get(2)?,
                name: r.get(3)?,
                target: r.get(4)?,
                etag: r.get(5)?,
                body: r.get(6)?,
            })
        },
    )
}
