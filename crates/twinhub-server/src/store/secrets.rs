//! Rows of the secret box: sealed values (nonce + ciphertext) per
//! (tenant, name). Sealing and opening happen in `secrets`; only
//! ciphertext reaches the store.

use super::sql::{args, Sql};
use super::StoreError;

pub fn put_secret(
    tx: &dyn Sql,
    tenant: &str,
    name: &str,
    nonce: &[u8],
    sealed: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO secrets(tenant, name, nonce, ciphertext, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, name) DO UPDATE SET nonce = excluded.nonce,
           ciphertext = excluded.ciphertext, created_at = excluded.created_at",
        args![tenant, name, nonce, sealed, now],
    )?;
    Ok(())
}

/// (nonce, ciphertext) of one secret.
pub fn sealed(
    c: &dyn Sql,
    tenant: &str,
    name: &str,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
    c.row(
        "SELECT nonce, ciphertext FROM secrets WHERE tenant = ?1 AND name = ?2",
        args![tenant, name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// (name, created_at) of a tenant's secrets, by name.
pub fn names(c: &dyn Sql, tenant: &str) -> Result<Vec<(String, i64)>, StoreError> {
    c.rows(
        "SELECT name, created_at FROM secrets WHERE tenant = ?1 ORDER BY name",
        args![tenant],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

pub fn delete_secret(tx: &dyn Sql, tenant: &str, name: &str) -> Result<bool, StoreError> {
    Ok(tx.exec(
        "DELETE FROM secrets WHERE tenant = ?1 AND name = ?2",
        args![tenant, name],
    )? > 0)
}
