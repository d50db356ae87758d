//! Rows of the ML tables: model versions (manifest + ONNX bytes), which
//! version is active per model (and the A/B candidate), and bindings.

use super::sql::{args, Sql};
use super::StoreError;

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

pub fn insert_model(tx: &dyn Sql, m: &ModelRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO ml_models(tenant, name, version, manifest, onnx, sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![&m.tenant, &m.name, &m.version, &m.manifest, &m.onnx, &m.sha256, m.created_at],
    )
    .map_err(|e| match e {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("model {} version {} already exists", m.name, m.version))
        }
        e => e,
    })?;
    Ok(())
}

pub fn delete_model_version(
    tx: &dyn Sql,
    tenant: &str,
    name: &str,
    version: &str,
) -> Result<bool, StoreError> {
    Ok(tx.exec(
        "DELETE FROM ml_models WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        args![tenant, name, version],
    )? > 0)
}

/// One version's manifest (as stored) and ONNX bytes.
pub fn model_files(
    c: &dyn Sql,
    tenant: &str,
    name: &str,
    version: &str,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    c.row(
        "SELECT manifest, onnx FROM ml_models WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        args![tenant, name, version],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

pub fn load_models(c: &dyn Sql) -> Result<Vec<ModelRow>, StoreError> {
    c.rows(
        "SELECT tenant, name, version, manifest, onnx, sha256, created_at FROM ml_models ORDER BY tenant, name, created_at",
        args![],
        |r| {
            Ok(ModelRow {
                tenant: r.get(0)?,
                name: r.get(1)?,
                version: r.get(2)?,
                manifest: r.get(3)?,
                onnx: r.get(4)?,
                sha256: r.get(5)?,
                created_at: r.get(6)?,
            })
        },
    )
}

pub fn put_routing(tx: &dyn Sql, r: &RoutingRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO ml_routing(tenant, name, active, candidate, share) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, name) DO UPDATE SET active = excluded.active, candidate = excluded.candidate, share = excluded.share",
        args![&r.tenant, &r.name, &r.active, r.candidate.as_deref(), r.share],
    )?;
    Ok(())
}

pub fn delete_routing(tx: &dyn Sql, tenant: &str, name: &str) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM ml_routing WHERE tenant = ?1 AND name = ?2",
        args![tenant, name],
    )?;
    Ok(())
}

pub fn load_routing(c: &dyn Sql) -> Result<Vec<RoutingRow>, StoreError> {
    c.rows(
        "SELECT tenant, name, active, candidate, share FROM ml_routing",
        args![],
        |r| {
            Ok(RoutingRow {
                tenant: r.get(0)?,
                name: r.get(1)?,
                active: r.get(2)?,
                candidate: r.get(3)?,
                share: r.get(4)?,
            })
        },
    )
}

pub fn put_binding(
    tx: &dyn Sql,
    tenant: &str,
    id: &str,
    body: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO ml_bindings(tenant, id, body, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(tenant, id) DO UPDATE SET body = excluded.body",
        args![tenant, id, body, now],
    )?;
    Ok(())
}

pub fn delete_binding(tx: &dyn Sql, tenant: &str, id: &str) -> Result<bool, StoreError> {
    Ok(tx.exec(
        "DELETE FROM ml_bindings WHERE tenant = ?1 AND id = ?2",
        args![tenant, id],
    )? > 0)
}

pub fn load_bindings(c: &dyn Sql) -> Result<Vec<(String, String, String)>, StoreError> {
    c.rows(
        "SELECT tenant, id, body FROM ml_bindings ORDER BY tenant, id",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}
