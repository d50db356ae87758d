//! Rows of inbound connectors: one JSON definition per (tenant, id). The
//! credentials a definition names live in the secret box, not here.

use super::sql::{args, Sql};
use super::StoreError;

#[derive(Debug, Clone)]
pub struct ConnectorRow {
    pub tenant: String,
    pub id: String,
    pub kind: String,
    pub body: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn put_connector(tx: &dyn Sql, r: &ConnectorRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO connectors(tenant, id, kind, body, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(tenant, id) DO UPDATE SET kind = excluded.kind,
           body = excluded.body, updated_at = excluded.updated_at",
        args![
            &r.tenant,
            &r.id,
            &r.kind,
            &r.body,
            r.created_at,
            r.updated_at
        ],
    )?;
    Ok(())
}

pub fn delete_connector(tx: &dyn Sql, tenant: &str, id: &str) -> Result<bool, StoreError> {
    Ok(tx.exec(
        "DELETE FROM connectors WHERE tenant = ?1 AND id = ?2",
        args![tenant, id],
    )? > 0)
}

pub fn load_connectors(c: &dyn Sql) -> Result<Vec<ConnectorRow>, StoreError> {
    c.rows(
        "SELECT tenant, id, kind, body, created_at, updated_at FROM connectors",
        args![],
        |r| {
            Ok(ConnectorRow {
                tenant: r.get(0)?,
                id: r.get(1)?,
                kind: r.get(2)?,
                body: r.get(3)?,
                created_at: r.get(4)?,
                updated_at: r.get(5)?,
            })
        },
    )
}
