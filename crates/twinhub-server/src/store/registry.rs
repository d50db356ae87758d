//! Registry rows: tenants, devices, users, refresh tokens and revoked
//! sessions. Plain functions over a connection: the server's registry
//! calls them inside `Store::write` (writes) or `Store::read` (loading).

use super::sql::{args, Sql};
use super::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub id: String,
    pub tenant: String,
    pub twin_id: Option<String>,
    pub key_hash: Vec<u8>,
    pub enabled: bool,
    pub created_at: i64,
    pub last_seen: Option<i64>,
    /// For a modelled twin: `reject` telemetry names the model lacks, or
    /// `record` them (history and live value, no validation).
    pub unknown_telemetry: String,
    /// After a key rotation the old key keeps working until
    /// `previous_key_until` (µs), so devices can switch without a gap.
    pub previous_key_hash: Option<Vec<u8>>,
    pub previous_key_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub username: String,
    pub tenant: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub created_at: i64,
}

/// A unique violation as this registry's conflict message.
fn conflict(e: StoreError, what: String) -> StoreError {
    match e {
        StoreError::Conflict(_) => StoreError::Conflict(what),
        e => e,
    }
}

pub fn insert_tenant(tx: &dyn Sql, t: &TenantRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO tenants(id, name, created_at) VALUES (?1, ?2, ?3)",
        args![&t.id, &t.name, t.created_at],
    )
    .map_err(|e| conflict(e, format!("tenant {} already exists", t.id)))?;
    Ok(())
}

pub fn load_tenants(c: &dyn Sql) -> Result<Vec<TenantRow>, StoreError> {
    c.rows(
        "SELECT id, name, created_at FROM tenants ORDER BY id",
        args![],
        |r| {
            Ok(TenantRow {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
            })
        },
    )
}

pub fn insert_device(tx: &dyn Sql, d: &DeviceRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO devices(id, tenant, twin_id, key_hash, enabled, created_at, last_seen, unknown_telemetry, previous_key_hash, previous_key_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        args![
            &d.id,
            &d.tenant,
            d.twin_id.as_ref(),
            &d.key_hash,
            d.enabled,
            d.created_at,
            d.last_seen,
            &d.unknown_telemetry,
            d.previous_key_hash.as_ref(),
            d.previous_key_until
        ],
    )
    .map_err(|e| conflict(e, format!("device {} already exists", d.id)))?;
    Ok(())
}

pub fn update_device(tx: &dyn Sql, d: &DeviceRow) -> Result<(), StoreError> {
    let n = tx.exec(
        "UPDATE devices SET twin_id = ?2, key_hash = ?3, enabled = ?4, unknown_telemetry = ?5,
         previous_key_hash = ?6, previous_key_until = ?7 WHERE id = ?1",
        args![
            &d.id,
            d.twin_id.as_ref(),
            &d.key_hash,
            d.enabled,
            &d.unknown_telemetry,
            d.previous_key_hash.as_ref(),
            d.previous_key_until
        ],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("device {} not found", d.id)));
    }
    Ok(())
}

pub fn delete_device(tx: &dyn Sql, id: &str) -> Result<bool, StoreError> {
    Ok(tx.exec("DELETE FROM devices WHERE id = ?1", args![id])? > 0)
}

pub fn set_last_seen(tx: &dyn Sql, seen: &[(String, i64)]) -> Result<(), StoreError> {
    for (id, ts) in seen {
        tx.exec(
            "UPDATE devices SET last_seen = ?2 WHERE id = ?1",
            args![id, *ts],
        )?;
    }
    Ok(())
}

pub fn load_devices(c: &dyn Sql) -> Result<Vec<DeviceRow>, StoreError> {
    c.rows(
        "SELECT id, tenant, twin_id, key_hash, enabled, created_at, last_seen, unknown_telemetry, previous_key_hash, previous_key_until FROM devices ORDER BY id",
        args![],
        |r| {
            Ok(DeviceRow {
                id: r.get(0)?,
                tenant: r.get(1)?,
                twin_id: r.get(2)?,
                key_hash: r.get(3)?,
                enabled: r.get(4)?,
                created_at: r.get(5)?,
                last_seen: r.get(6)?,
                unknown_telemetry: r.get(7)?,
                previous_key_hash: r.get(8)?,
                previous_key_until: r.get(9)?,
            })
        },
    )
}

pub fn insert_user(tx: &dyn Sql, u: &UserRow) -> Result<(), StoreError> {
    let roles = serde_json::to_string(&u.roles).unwrap_or_default();
    tx.exec(
        "INSERT INTO users(username, tenant, password_hash, roles, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![&u.username, &u.tenant, &u.password_hash, &roles, u.created_at],
    )
    .map_err(|e| conflict(e, format!("user {} already exists", u.username)))?;
    Ok(())
}

pub fn set_password(tx: &dyn Sql, username: &str, hash: &str) -> Result<bool, StoreError> {
    Ok(tx.exec(
        "UPDATE users SET password_hash = ?2 WHERE username = ?1",
        args![username, hash],
    )? > 0)
}

pub fn set_roles(tx: &dyn Sql, username: &str, roles: &[String]) -> Result<bool, StoreError> {
    let roles = serde_json::to_string(roles).unwrap_or_default();
    Ok(tx.exec(
        "UPDATE users SET roles = ?2 WHERE username = ?1",
        args![username, &roles],
    )? > 0)
}

pub fn delete_user(tx: &dyn Sql, username: &str) -> Result<bool, StoreError> {
    tx.exec(
        "DELETE FROM refresh_tokens WHERE username = ?1",
        args![username],
    )?;
    tx.exec(
        "DELETE FROM login_failures WHERE username = ?1",
        args![username],
    )?;
    Ok(tx.exec("DELETE FROM users WHERE username = ?1", args![username])? > 0)
}

/// The sessions that still hold a refresh token.
pub fn sessions_of(tx: &dyn Sql, username: &str) -> Result<Vec<String>, StoreError> {
    tx.rows(
        "SELECT DISTINCT session FROM refresh_tokens WHERE username = ?1",
        args![username],
        |r| r.get(0),
    )
}

pub fn load_users(c: &dyn Sql) -> Result<Vec<UserRow>, StoreError> {
    c.rows(
        "SELECT username, tenant, password_hash, roles, created_at FROM users ORDER BY username",
        args![],
        |r| {
            let roles: String = r.get(3)?;
            Ok(UserRow {
                username: r.get(0)?,
                tenant: r.get(1)?,
                password_hash: r.get(2)?,
                roles: serde_json::from_str(&roles).unwrap_or_default(),
                created_at: r.get(4)?,
            })
        },
    )
}

pub fn insert_refresh(
    tx: &dyn Sql,
    hash: &[u8],
    username: &str,
    session: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO refresh_tokens(hash, username, session, expires_at) VALUES (?1, ?2, ?3, ?4)",
        args![hash, username, session, expires_at],
    )?;
    Ok(())
}

/// Removes and returns a refresh token (rotation: each is used once).
pub fn take_refresh(
    tx: &dyn Sql,
    hash: &[u8],
) -> Result<Option<(String, String, i64)>, StoreError> {
    let row = tx.row(
        "SELECT username, session, expires_at FROM refresh_tokens WHERE hash = ?1",
        args![hash],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if row.is_some() {
        tx.exec("DELETE FROM refresh_tokens WHERE hash = ?1", args![hash])?;
    }
    Ok(row)
}

pub fn revoke_session(tx: &dyn Sql, session: &str, expires_at: i64) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM refresh_tokens WHERE session = ?1",
        args![session],
    )?;
    tx.exec(
        "INSERT INTO revoked_sessions(session, expires_at) VALUES (?1, ?2) ON CONFLICT(session) DO NOTHING",
        args![session, expires_at],
    )?;
    Ok(())
}

pub fn load_revoked(c: &dyn Sql, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
    c.rows(
        "SELECT session, expires_at FROM revoked_sessions WHERE expires_at > ?1",
        args![now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

pub fn purge_expired(tx: &dyn Sql, now: i64) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM revoked_sessions WHERE expires_at <= ?1",
        args![now],
    )?;
    tx.exec(
        "DELETE FROM refresh_tokens WHERE expires_at <= ?1",
        args![now],
    )?;
    Ok(())
}

pub use super::db::{meta_get, meta_set};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub key_hash: Vec<u8>,
    pub roles: Vec<String>,
    pub permissions: Option<Vec<String>>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used: Option<i64>,
}

pub fn put_apikey(tx: &dyn Sql, k: &ApiKeyRow) -> Result<(), StoreError> {
    let roles = serde_json::to_string(&k.roles).unwrap_or_default();
    let perms = k
        .permissions
        .as_ref()
        .map(|p| serde_json::to_string(p).unwrap_or_default());
    tx.exec(
        "INSERT INTO apikeys(id, tenant, name, key_hash, roles, permissions, created_by, created_at, expires_at, revoked_at, last_used)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(id) DO UPDATE SET revoked_at = excluded.revoked_at, last_used = excluded.last_used",
        args![
            &k.id,
            &k.tenant,
            &k.name,
            &k.key_hash,
            &roles,
            perms.as_ref(),
            &k.created_by,
            k.created_at,
            k.expires_at,
            k.revoked_at,
            k.last_used
        ],
    )?;
    Ok(())
}

pub fn load_apikeys(c: &dyn Sql) -> Result<Vec<ApiKeyRow>, StoreError> {
    c.rows(
        "SELECT id, tenant, name, key_hash, roles, permissions, created_by, created_at, expires_at, revoked_at, last_used FROM apikeys",
        args![],
        |r| {
            let roles: String = r.get(4)?;
            let perms: Option<String> = r.get(5)?;
            Ok(ApiKeyRow {
                id: r.get(0)?,
                tenant: r.get(1)?,
                name: r.get(2)?,
                key_hash: r.get(3)?,
                roles: serde_json::from_str(&roles).unwrap_or_default(),
                permissions: perms.and_then(|p| serde_json::from_str(&p).ok()),
                created_by: r.get(6)?,
                created_at: r.get(7)?,
                expires_at: r.get(8)?,
                revoked_at: r.get(9)?,
                last_used: r.get(10)?,
            })
        },
    )
}

pub fn set_login_failures(
    tx: &dyn Sql,
    username: &str,
    count: u32,
    locked_until: Option<i64>,
) -> Result<(), StoreError> {
    if count == 0 {
        tx.exec(
            "DELETE FROM login_failures WHERE username = ?1",
            args![username],
        )?;
    } else {
        tx.exec(
            "INSERT INTO login_failures(username, count, locked_until) VALUES (?1, ?2, ?3)
             ON CONFLICT(username) DO UPDATE SET count = excluded.count, locked_until = excluded.locked_until",
            args![username, count, locked_until],
        )?;
    }
    Ok(())
}

pub fn load_login_failures(c: &dyn Sql) -> Result<Vec<(String, u32, Option<i64>)>, StoreError> {
    c.rows(
        "SELECT username, count, locked_until FROM login_failures",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// A tenant's custom role: a permission set, optionally limited to the
/// twins under one root (`scope` JSON: `{"twin", "relationships"}`).
#[derive(Debug, Clone, PartialEq)]
pub struct RoleRow {
    pub tenant: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub scope: Option<serde_json::Value>,
    pub created_at: i64,
}

pub fn put_role(tx: &dyn Sql, r: &RoleRow) -> Result<(), StoreError> {
    let perms = serde_json::to_string(&r.permissions).unwrap_or_default();
    let scope = r.scope.as_ref().map(|s| s.to_string());
    tx.exec(
        "INSERT INTO roles(tenant, name, permissions, scope, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, name) DO UPDATE SET permissions = excluded.permissions, scope = excluded.scope",
        args![&r.tenant, &r.name, &perms, scope.as_ref(), r.created_at],
    )?;
    Ok(())
}

pub fn delete_role(tx: &dyn Sql, tenant: &str, name: &str) -> Result<bool, StoreError> {
    Ok(tx.exec(
        "DELETE FROM roles WHERE tenant = ?1 AND name = ?2",
        args![tenant, name],
    )? > 0)
}

pub fn load_roles(c: &dyn Sql) -> Result<Vec<RoleRow>, StoreError> {
    c.rows(
        "SELECT tenant, name, permissions, scope, created_at FROM roles ORDER BY tenant, name",
        args![],
        |r| {
            let perms: String = r.get(2)?;
            let scope: Option<String> = r.get(3)?;
            Ok(RoleRow {
                tenant: r.get(0)?,
                name: r.get(1)?,
                permissions: serde_json::from_str(&perms).unwrap_or_default(),
                scope: scope.and_then(|s| serde_json::from_str(&s).ok()),
                created_at: r.get(4)?,
            })
        },
    )
}

pub fn load_quotas(c: &dyn Sql) -> Result<Vec<(String, String)>, StoreError> {
    c.rows("SELECT id, quotas FROM tenants", args![], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

pub fn set_quotas(tx: &dyn Sql, tenant: &str, quotas: &str) -> Result<bool, StoreError> {
    Ok(tx.exec(
        "UPDATE tenants SET quotas = ?2 WHERE id = ?1",
        args![tenant, quotas],
    )? > 0)
}

/// Compressed history bytes per tenant (chunks; rollups are small).
pub fn storage_by_tenant(c: &dyn Sql) -> Result<Vec<(String, u64)>, StoreError> {
    c.rows(
        "SELECT s.tenant, CAST(SUM(LENGTH(c.data)) AS BIGINT) FROM chunks c JOIN series s ON s.id = c.series_id GROUP BY s.tenant",
        args![],
        |r| Ok((r.get(0)?, r.get::<i64>(1)? as u64)),
    )
}

/// A device's binary layout (JSON as declared), or its removal.
pub fn put_layout(
    tx: &dyn Sql,
    tenant: &str,
    device: &str,
    body: Option<&str>,
) -> Result<(), StoreError> {
    match body {
        Some(b) => tx.exec(
            "INSERT INTO device_layouts(device, tenant, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(device) DO UPDATE SET tenant = excluded.tenant, body = excluded.body",
            args![device, tenant, b],
        )?,
        None => tx.exec(
            "DELETE FROM device_layouts WHERE device = ?1",
            args![device],
        )?,
    };
    Ok(())
}

/// Every stored layout: (tenant, device, body).
pub fn load_layouts(c: &dyn Sql) -> Result<Vec<(String, String, String)>, StoreError> {
    c.rows(
        "SELECT tenant, device, body FROM device_layouts",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// Stores (Some) or deletes (None) a named layout; whether a row changed.
pub fn put_named_layout(
    tx: &dyn Sql,
    tenant: &str,
    id: &str,
    body: Option<&str>,
) -> Result<bool, StoreError> {
    Ok(match body {
        Some(b) => tx.exec(
            "INSERT INTO layouts(tenant, id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(tenant, id) DO UPDATE SET body = excluded.body",
            args![tenant, id, b],
        )?,
        None => tx.exec(
            "DELETE FROM layouts WHERE tenant = ?1 AND id = ?2",
            args![tenant, id],
        )?,
    } > 0)
}

/// Every named layout: (tenant, id, body).
pub fn load_named_layouts(c: &dyn Sql) -> Result<Vec<(String, String, String)>, StoreError> {
    c.rows("SELECT tenant, id, body FROM layouts", args![], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}
