//! Registry rows: tenants, devices, users, refresh tokens and revoked
//! sessions. Plain functions over a connection: the server's registry
//! calls them inside `Store::write` (writes) or `Store::read` (loading).

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

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

fn conflict(e: rusqlite::Error, what: String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what)
        }
        e => e.into(),
    }
}

pub fn insert_tenant(tx: &Connection, t: &TenantRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tenants(id, name, created_at) VALUES (?1, ?2, ?3)",
        params![t.id, t.name, t.created_at],
    )
    .map_err(|e| conflict(e, format!("tenant {} already exists", t.id)))?;
    Ok(())
}

pub fn load_tenants(c: &Connection) -> Result<Vec<TenantRow>, StoreError> {
    let mut stmt = c.prepare("SELECT id, name, created_at FROM tenants ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(TenantRow {
            id: r.get(0)?,
            name: r.get(1)?,
            created_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn insert_device(tx: &Connection, d: &DeviceRow) -> Result<(), StoreError> {
    tx.execute(
                "INSERT INTO devices(id, tenant, twin_id, key_hash, enabled, created_at, last_seen, unknown_telemetry, previous_key_hash, previous_key_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            d.id,
            d.tenant,
            d.twin_id,
            d.key_hash,
            d.enabled,
            d.created_at,
            d.last_seen,
            d.unknown_telemetry,
            d.previous_key_hash,
            d.previous_key_until
        ],
    )
    .map_err(|e| conflict(e, format!("device {} already exists", d.id)))?;
    Ok(())
}

pub fn update_device(tx: &Connection, d: &DeviceRow) -> Result<(), StoreError> {
    let n = tx.execute(
        "UPDATE devices SET twin_id = ?2, key_hash = ?3, enabled = ?4, unknown_telemetry = ?5,
         previous_key_hash = ?6, previous_key_until = ?7 WHERE id = ?1",
        params![
            d.id,
            d.twin_id,
            d.key_hash,
            d.enabled,
            d.unknown_telemetry,
            d.previous_key_hash,
            d.previous_key_until
        ],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("device {} not found", d.id)));
    }
    Ok(())
}

pub fn delete_device(tx: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(tx.execute("DELETE FROM devices WHERE id = ?1", [id])? > 0)
}

pub fn set_last_seen(tx: &Connection, seen: &[(String, i64)]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE id = ?1")?;
    for (id, ts) in seen {
        stmt.execute(params![id, ts])?;
    }
    Ok(())
}

pub fn load_devices(c: &Connection) -> Result<Vec<DeviceRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, tenant, twin_id, key_hash, enabled, created_at, last_seen, unknown_telemetry, previous_key_hash, previous_key_until FROM devices ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
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
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn insert_user(tx: &Connection, u: &UserRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO users(username, tenant, password_hash, roles, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![u.username, u.tenant, u.password_hash, serde_json::to_string(&u.roles).unwrap_or_default(), u.created_at],
    )
    .map_err(|e| conflict(e, format!("user {} already exists", u.username)))?;
    Ok(())
}

pub fn set_password(tx: &Connection, username: &str, hash: &str) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE users SET password_hash = ?2 WHERE username = ?1",
        params![username, hash],
    )? > 0)
}

pub fn set_roles(tx: &Connection, username: &str, roles: &[String]) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE users SET roles = ?2 WHERE username = ?1",
        params![username, serde_json::to_string(roles).unwrap_or_default()],
    )? > 0)
}

pub fn delete_user(tx: &Connection, username: &str) -> Result<bool, StoreError> {
    tx.execute("DELETE FROM refresh_tokens WHERE username = ?1", [username])?;
    tx.execute("DELETE FROM login_failures WHERE username = ?1", [username])?;
    Ok(tx.execute("DELETE FROM users WHERE username = ?1", [username])? > 0)
}

/// The sessions that still hold a refresh token.
pub fn sessions_of(tx: &Connection, username: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.prepare("SELECT DISTINCT session FROM refresh_tokens WHERE username = ?1")?;
    let rows = stmt.query_map([username], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn load_users(c: &Connection) -> Result<Vec<UserRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT username, tenant, password_hash, roles, created_at FROM users ORDER BY username",
    )?;
    let rows = stmt.query_map([], |r| {
        let roles: String = r.get(3)?;
        Ok(UserRow {
            username: r.get(0)?,
            tenant: r.get(1)?,
            password_hash: r.get(2)?,
            roles: serde_json::from_str(&roles).unwrap_or_default(),
            created_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn insert_refresh(
    tx: &Connection,
    hash: &[u8],
    username: &str,
    session: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO refresh_tokens(hash, username, session, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![hash, username, session, expires_at],
    )?;
    Ok(())
}

/// Removes and returns a refresh token (rotation: each is used once).
pub fn take_refresh(
    tx: &Connection,
    hash: &[u8],
) -> Result<Option<(String, String, i64)>, StoreError> {
    let row = tx
        .query_row(
            "SELECT username, session, expires_at FROM refresh_tokens WHERE hash = ?1",
            [hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if row.is_some() {
        tx.execute("DELETE FROM refresh_tokens WHERE hash = ?1", [hash])?;
    }
    Ok(row)
}

pub fn revoke_session(tx: &Connection, session: &str, expires_at: i64) -> Result<(), StoreError> {
    tx.execute("DELETE FROM refresh_tokens WHERE session = ?1", [session])?;
    tx.execute(
        "INSERT INTO revoked_sessions(session, expires_at) VALUES (?1, ?2) ON CONFLICT(session) DO NOTHING",
        params![session, expires_at],
    )?;
    Ok(())
}

pub fn load_revoked(c: &Connection, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt =
        c.prepare("SELECT session, expires_at FROM revoked_sessions WHERE expires_at > ?1")?;
    let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn purge_expired(tx: &Connection, now: i64) -> Result<(), StoreError> {
    tx.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?1", [now])?;
    tx.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?1", [now])?;
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

pub fn put_apikey(tx: &Connection, k: &ApiKeyRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO apikeys(id, tenant, name, key_hash, roles, permissions, created_by, created_at, expires_at, revoked_at, last_used)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(id) DO UPDATE SET revoked_at = excluded.revoked_at, last_used = excluded.last_used",
        params![
            k.id,
            k.tenant,
            k.name,
            k.key_hash,
            serde_json::to_string(&k.roles).unwrap_or_default(),
            k.permissions.as_ref().map(|p| serde_json::to_string(p).unwrap_or_default()),
            k.created_by,
            k.created_at,
            k.expires_at,
            k.revoked_at,
            k.last_used
        ],
    )?;
    Ok(())
}

pub fn load_apikeys(c: &Connection) -> Result<Vec<ApiKeyRow>, StoreError> {
    let mut stmt = c.prepare("SELECT id, tenant, name, key_hash, roles, permissions, created_by, created_at, expires_at, revoked_at, last_used FROM apikeys")?;
    let rows = stmt.query_map([], |r| {
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
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_login_failures(
    tx: &Connection,
    username: &str,
    count: u32,
    locked_until: Option<i64>,
) -> Result<(), StoreError> {
    if count == 0 {
        tx.execute("DELETE FROM login_failures WHERE username = ?1", [username])?;
    } else {
        tx.execute(
            "INSERT INTO login_failures(username, count, locked_until) VALUES (?1, ?2, ?3)
             ON CONFLICT(username) DO UPDATE SET count = excluded.count, locked_until = excluded.locked_until",
            params![username, count, locked_until],
        )?;
    }
    Ok(())
}

pub fn load_login_failures(c: &Connection) -> Result<Vec<(String, u32, Option<i64>)>, StoreError> {
    let mut stmt = c.prepare("SELECT username, count, locked_until FROM login_failures")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
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

pub fn put_role(tx: &Connection, r: &RoleRow) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO roles(tenant, name, permissions, scope, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(tenant, name) DO UPDATE SET permissions = excluded.permissions, scope = excluded.scope",
        params![
            r.tenant,
            r.name,
            serde_json::to_string(&r.permissions).unwrap_or_default(),
            r.scope.as_ref().map(|s| s.to_string()),
            r.created_at
        ],
    )?;
    Ok(())
}

pub fn delete_role(tx: &Connection, tenant: &str, name: &str) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "DELETE FROM roles WHERE tenant = ?1 AND name = ?2",
        params![tenant, name],
    )? > 0)
}

pub fn load_roles(c: &Connection) -> Result<Vec<RoleRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT tenant, name, permissions, scope, created_at FROM roles ORDER BY tenant, name",
    )?;
    let rows = stmt.query_map([], |r| {
        let perms: String = r.get(2)?;
        let scope: Option<String> = r.get(3)?;
        Ok(RoleRow {
            tenant: r.get(0)?,
            name: r.get(1)?,
            permissions: serde_json::from_str(&perms).unwrap_or_default(),
            scope: scope.and_then(|s| serde_json::from_str(&s).ok()),
            created_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn load_quotas(c: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = c.prepare("SELECT id, quotas FROM tenants")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_quotas(tx: &Connection, tenant: &str, quotas: &str) -> Result<bool, StoreError> {
    Ok(tx.execute(
        "UPDATE tenants SET quotas = ?2 WHERE id = ?1",
        params![tenant, quotas],
    )? > 0)
}

/// Compressed history bytes per tenant (chunks; rollups are small).
pub fn storage_by_tenant(c: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT s.tenant, SUM(length(c.data)) FROM chunks c JOIN series s ON s.id = c.series_id GROUP BY s.tenant",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A device's binary layout (JSON as declared), or its removal.
pub fn put_layout(
    tx: &Connection,
    tenant: &str,
    device: &str,
    body: Option<&str>,
) -> Result<(), StoreError> {
    match body {
        Some(b) => tx.execute(
            "INSERT INTO device_layouts(device, tenant, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(device) DO UPDATE SET tenant = excluded.tenant, body = excluded.body",
            rusqlite::params![device, tenant, b],
        )?,
        None => tx.execute("DELETE FROM device_layouts WHERE device = ?1", [device])?,
    };
    Ok(())
}

/// Every stored layout: (tenant, device, body).
pub fn load_layouts(c: &Connection) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut stmt = c.prepare("SELECT tenant, device, body FROM device_layouts")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Stores (Some) or deletes (None) a named layout; whether a row changed.
pub fn put_named_layout(
    tx: &Connection,
    tenant: &str,
    id: &str,
    body: Option<&str>,
) -> Result<bool, StoreError> {
    Ok(match body {
        Some(b) => tx.execute(
            "INSERT INTO layouts(tenant, id, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(tenant, id) DO UPDATE SET body = excluded.body",
            rusqlite::params![tenant, id, b],
        )?,
        None => tx.execute(
            "DELETE FROM layouts WHERE tenant = ?1 AND id = ?2",
            rusqlite::params![tenant, id],
        )?,
    } > 0)
}

/// Every named layout: (tenant, id, body).
pub fn load_named_layouts(c: &Connection) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut stmt = c.prepare("SELECT tenant, id, body FROM layouts")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
