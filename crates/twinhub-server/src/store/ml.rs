//! Rows of the ML tables: model versions (manifest + ONNX bytes), which
//! version is active per model (and the A/B candidate), and bindings.

use super::StoreError;
use rusqlite::OptionalExtension;
use rusqlite::{params, Connection};

#[derive(Debug, Clone)]
pub struct ModelRow {
    pub tenant: String,
    pub name: String,
    pub version: String,
    pub manifest: String,
    pub onnx: Vec<u8>,
    pub sha256: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutingRow {
    pub tenant: String,
    pub name: String,
    pub active: String,
    pub candidate: Option<String>,
    pub share: f64,
}

pub fn insert_model(tx: &Connection, m: &ModelRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO ml_models(tenant, name, version, manifest, onnx, sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![m.tenant, m.name, m.version, m.manifest, m.onnx, m.sha256, m.created_at],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict(format!("model {} version {} already exists", m.name, m.version))
        }
        e => e.into(),
    })?;
    Ok(())
}

pub fn delete_model_version(
    tx: &Connection,
    tenant: &str,
    name: &str,
    version: &str,
) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "DELETE FROM ml_models WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        params![tenant, name, version],
    )? > 0)
}

/// One version's manifest (as stored) and ONNX bytes.
pub fn model_files(
    c: &Connection,
    tenant: &str,
    name: &str,
    version: &str,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    Ok(c.query_row(
        "SELECT manifest, onnx FROM ml_models WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        [tenant, name, version],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

pub fn load_models(c: &Connection) -> Result<Vec<ModelRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT tenant, name, version, manifest, onnx, sha256, created_at FROM ml_models ORDER BY tenant, name, created_at",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ModelRow {
            tenant: r.get(0)?,
            name: r.get(1)?,
            version: r.get(2)?,
            manifest: r.get(3)?,
            onnx: r.get(4)?,
            sha256: r.get(5)?,
            created_at: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn put_routing(tx: &Connection, r: &RoutingRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO ml_routing(tenant, name, active, candidate, share) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, name) DO UPDATE SET active = excluded.active, candidate = excluded.candidate, share = excluded.share",
        params![r.tenant, r.name, r.active, r.candidate, r.share],
    )?;
    Ok(())
}

pub fn delete_routing(tx: &Connection, tenant: &str, name: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM ml_routing WHERE tenant = ?1 AND name = ?2",
        params![tenant, name],
    )?;
    Ok(())
}

pub fn load_routing(c: &Connection) -> Result<Vec<RoutingRow>, StoreError> {
    let mut stmt = c.prepare("SELECT tenant, name, active, candidate, share FROM ml_routing")?;
    let rows = stmt.query_map([], |r| {
        Ok(RoutingRow {
            tenant: r.get(0)?,
            name: r.get(1)?,
            active: r.get(2)?,
            candidate: r.get(3)?,
            share: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn put_binding(
    tx: &Connection,
    tenant: &str,
    id: &str,
    body: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO ml_bindings(tenant, id, body, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(tenant, id) DO UPDATE SET body = excluded.body",
        params![tenant, id, body, now],
    )?;
    Ok(())
}

pub fn delete_binding(tx: &Connection, tenant: &str, id: &str) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "DELETE FROM ml_bindings WHERE tenant = ?1 AND id = ?2",
        params![tenant, id],
    )? > 0)
}

pub fn load_bindings(c: &Connection) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut stmt = c.prepare("SELECT tenant, id, body FROM ml_bindings ORDER BY tenant, id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
