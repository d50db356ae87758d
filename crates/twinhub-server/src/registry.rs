//! The registry: tenants, devices, users and sessions, cached in memory
//! (authenticating a device or a token never touches the database) and
//! written through the store's group commit. Cache updates run as
//! after-commit hooks, in commit order.
//!
//! May call: `store`, `auth`, `clock`, `roles` (custom roles), `audit`
//! (the system chain's name).

use crate::auth::{self, jwt, password, Principal, PrincipalKind};
use crate::clock::SharedClock;
use crate::store::registry::{self as rows, DeviceRow, TenantRow, UserRow};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use twinhub_model::ids::check_id;

pub const DEFAULT_TENANT: &str = "default";

fn check_unknown_policy(p: &str) -> Result<(), RegistryError> {
    match p {
        "reject" | "record" => Ok(()),
        _ => Err(RegistryError::Invalid {
            field: "unknown_telemetry".into(),
            rule: "must be reject or record".into(),
        }),
    }
}

#[derive(Debug)]
pub struct Device {
    pub row: DeviceRow,
    /// µs since the epoch of the last message, 0 when never.
    pub last_seen: AtomicI64,
    pub active: AtomicBool,
    /// Holds an MQTT connection right now.
    pub connected: AtomicBool,
}

impl Device {
    fn new(row: DeviceRow) -> Device {
        let seen = row.last_seen.unwrap_or(0);
        Device {
            row,
            last_seen: AtomicI64::new(seen),
            active: AtomicBool::new(false),
            connected: AtomicBool::new(false),
        }
    }

    /// The twin this device's telemetry updates.
    pub fn twin(&self) -> &str {
        self.row.twin_id.as_deref().unwrap_or(&self.row.id)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceAuthError {
    /// Unknown device or wrong key: deliberately the same answer.
    #[error("bad device credentials")]
    BadCredentials,
    #[error("device is disabled")]
    Disabled,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

pub struct AuthSettings {
    pub cost: password::Cost,
    pub access_ttl_s: i64,
    pub refresh_ttl_s: i64,
    /// Failed logins in a row before a user name is locked.
    pub lockout_threshold: u32,
    pub lockout_s: i64,
}

#[derive(Debug)]
pub struct ApiKey {
    pub row: rows::ApiKeyRow,
    pub last_used: AtomicI64,
}

#[derive(Debug, PartialEq)]
pub enum LoginError {
    Bad,
    /// Locked until this time (µs).
    Locked(i64),
}

/// Tenant ids twinhub keeps for itself.
pub const RESERVED_TENANT_IDS: &[&str] = &[crate::audit::SYSTEM_CHAIN, "twinhub", "internal"];

pub struct Registry {
    store: Store,
    clock: SharedClock,
    settings: AuthSettings,
    jwt_key: Vec<u8>,
    dummy_hash: String,
    devices: Arc<RwLock<HashMap<String, Arc<Device>>>>,
    users: Arc<RwLock<HashMap<String, UserRow>>>,
    tenants: Arc<RwLock<BTreeMap<String, TenantRow>>>,
    revoked: Arc<RwLock<HashMap<String, i64>>>,
    apikeys: Arc<RwLock<HashMap<String, Arc<ApiKey>>>>,
    failures: Arc<std::sync::Mutex<HashMap<String, (u32, Option<i64>)>>>,
    local_tokens: Arc<RwLock<std::collections::HashSet<[u8; 32]>>>,
    /// Custom roles of every tenant.
    pub roles: crate::roles::RoleBook,
}

/// What the first start created: the admin password when it was generated
/// (to show once).
pub struct Bootstrap {
    pub generated_password: Option<String>,
}

impl Registry {
    pub async fn open(
        store: Store,
        clock: SharedClock,
        settings: AuthSettings,
        admin_password: Option<String>,
    ) -> Result<(Registry, Bootstrap), RegistryError> {
        let now = clock.now_us();
        let (tenants, devices, users, revoked, key, apikeys, failures) = store.read(|c| {
            Ok((
                rows::load_tenants(c)?,
                rows::load_devices(c)?,
                rows::load_users(c)?,
                rows::load_revoked(c, now / 1_000_000)?,
                rows::meta_get(c, "jwt_key")?,
                rows::load_apikeys(c)?,
                rows::load_login_failures(c)?,
            ))
        })?;
        let jwt_key = match key {
            Some(k) => k.into_bytes(),
            None => {
                let k = auth::random_secret(32);
                let k2 = k.clone();
                store
                    .write(move |ctx| rows::meta_set(ctx.tx, "jwt_key", &k2))
                    .await?;
                k.into_bytes()
            }
        };
        let roles = crate::roles::RoleBook::load(&store)?;
        let reg = Registry {
            store,
            clock,
            dummy_hash: password::dummy_hash(settings.cost),
            settings,
            jwt_key,
            devices: Arc::new(RwLock::new(
                devices
                    .into_iter()
                    .map(|d| (d.id.clone(), Arc::new(Device::new(d))))
                    .collect(),
            )),
            users: Arc::new(RwLock::new(
                users.into_iter().map(|u| (u.username.clone(), u)).collect(),
            )),
            tenants: Arc::new(RwLock::new(
                tenants.into_iter().map(|t| (t.id.clone(), t)).collect(),
            )),
            revoked: Arc::new(RwLock::new(revoked.into_iter().collect())),
            apikeys: Arc::new(RwLock::new(
                apikeys
                    .into_iter()
                    .map(|k| {
                        (
                            k.id.clone(),
                            Arc::new(ApiKey {
                                last_used: AtomicI64::new(k.last_used.unwrap_or(0)),
                                row: k,
                            }),
                        )
                    })
                    .collect(),
            )),
            failures: Arc::new(std::sync::Mutex::new(
                failures.into_iter().map(|(u, c, l)| (u, (c, l))).collect(),
            )),
            local_tokens: Default::default(),
            roles,
        };
        let mut boot = Bootstrap {
            generated_password: None,
        };
        if reg.tenants.read().expect("tenants").is_empty() {
            reg.create_tenant(DEFAULT_TENANT, "Default").await?;
        }
        if reg.users.read().expect("users").is_empty() {
            let (pw, generated) = match admin_password {
                Some(p) => (p, false),
                None => (auth::random_secret(18), true),
            };
            reg.create_user_unchecked("admin", DEFAULT_TENANT, &pw, vec!["system_admin".into()])
                .await?;
            if generated {
                boot.generated_password = Some(pw);
            }
        }
        Ok((reg, boot))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn now_us(&self) -> i64 {
        self.clock.now_us()
    }

    // ---- tenants ----

    pub async fn create_tenant(&self, id: &str, name: &str) -> Result<TenantRow, RegistryError> {
        check_id("id", id).map_err(|e| RegistryError::Invalid {
            field: e.field,
            rule: e.rule.into(),
        })?;
        // Names twinhub uses for itself (the system audit chain is keyed
        // by "system"): a tenant with one would read what is not its own.
        if RESERVED_TENANT_IDS.contains(&id.to_ascii_lowercase().as_str()) {
            return Err(RegistryError::Invalid {
                field: "id".into(),
                rule: format!("`{id}` is reserved for twinhub itself; choose another tenant id"),
            });
        }
        let row = TenantRow {
            id: id.into(),
            name: name.into(),
            created_at: self.now_us(),
        };
        let (r, cache) = (row.clone(), self.tenants.clone());
        self.store
            .write(move |ctx| {
                rows::insert_tenant(ctx.tx, &r)?;
                ctx.after_commit(move |_| {
                    cache.write().expect("tenants").insert(r.id.clone(), r);
                });
                Ok(())
            })
            .await?;
        Ok(row)
    }

    pub fn tenant_exists(&self, id: &str) -> bool {
        self.tenants.read().expect("tenants").contains_key(id)
    }

    pub fn tenants(&self) -> Vec<TenantRow> {
        self.tenants
            .read()
            .expect("tenants")
            .values()
            .cloned()
            .collect()
    }

    // ---- devices ----

    /// Creates a device and returns it with its key (the only time the key
    /// exists outside the caller's hands).
    pub async fn create_device(
        &self,
        tenant: &str,
        id: &str,
        twin_id: Option<String>,
    ) -> Result<(Arc<Device>, String), RegistryError> {
        self.create_device_with(tenant, id, twin_id, "reject").await
    }

    pub async fn create_device_with(
        &self,
        tenant: &str,
        id: &str,
        twin_id: Option<String>,
        unknown_telemetry: &str,
    ) -> Result<(Arc<Device>, String), RegistryError> {
        check_unknown_policy(unknown_telemetry)?;
        check_id("id", id).map_err(|e| RegistryError::Invalid {
            field: e.field,
            rule: e.rule.into(),
        })?;
        if let Some(t) = &twin_id {
            check_id("twin_id", t).map_err(|e| RegistryError::Invalid {
                field: e.field,
                rule: e.rule.into(),
            })?;
        }
        let key = auth::random_secret(24);
        let row = DeviceRow {
            id: id.into(),
            tenant: tenant.into(),
            twin_id,
            key_hash: auth::digest(&key).to_vec(),
            enabled: true,
            created_at: self.now_us(),
            last_seen: None,
            unknown_telemetry: unknown_telemetry.to_string(),
            previous_key_hash: None,
            previous_key_until: None,
        };
        let dev = Arc::new(Device::new(row.clone()));
        let (d, cache) = (dev.clone(), self.devices.clone());
        self.store
            .write(move |ctx| {
                rows::insert_device(ctx.tx, &row)?;
                ctx.after_commit(move |_| {
                    cache.write().expect("devices").insert(d.row.id.clone(), d);
                });
                Ok(())
            })
            .await?;
        Ok((dev, key))
    }

    pub fn device(&self, id: &str) -> Option<Arc<Device>> {
        self.devices.read().expect("devices").get(id).cloned()
    }

    /// A device of this tenant (None for another tenant's: callers answer
    /// 404 either way).
    pub fn device_in(&self, tenant: &str, id: &str) -> Option<Arc<Device>> {
        self.device(id).filter(|d| d.row.tenant == tenant)
    }

    pub fn devices_of(&self, tenant: &str, after: Option<&str>, limit: usize) -> Vec<Arc<Device>> {
        let map = self.devices.read().expect("devices");
        let mut v: Vec<Arc<Device>> = map
            .values()
            .filter(|d| d.row.tenant == tenant && after.is_none_or(|a| d.row.id.as_str() > a))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.row.id.cmp(&b.row.id));
        v.truncate(limit);
        v
    }

    pub fn device_count(&self, tenant: &str) -> usize {
        self.devices
            .read()
            .expect("devices")
            .values()
            .filter(|d| d.row.tenant == tenant)
            .count()
    }

    pub fn all_devices(&self) -> Vec<Arc<Device>> {
        self.devices
            .read()
            .expect("devices")
            .values()
            .cloned()
            .collect()
    }

    pub async fn update_device(
        &self,
        current: &Device,
        enabled: Option<bool>,
        twin_id: Option<Option<String>>,
        unknown_telemetry: Option<String>,
    ) -> Result<Arc<Device>, RegistryError> {
        let mut row = current.row.clone();
        if let Some(u) = unknown_telemetry {
            check_unknown_policy(&u)?;
            row.unknown_telemetry = u;
        }
        if let Some(e) = enabled {
            row.enabled = e;
        }
        if let Some(t) = twin_id {
            if let Some(t) = &t {
                check_id("twin_id", t).map_err(|e| RegistryError::Invalid {
                    field: e.field,
                    rule: e.rule.into(),
                })?;
            }
            row.twin_id = t;
        }
        self.replace_device(current, row).await
    }

    /// Gives a device a new key; the old one keeps working for `overlap_us`
    /// (0: revoked at once). Returns the new key, shown once.
    pub async fn rotate_device_key(
        &self,
        current: &Device,
        overlap_us: i64,
    ) -> Result<(Arc<Device>, String), RegistryError> {
        let key = auth::random_secret(24);
        let mut row = current.row.clone();
        row.previous_key_hash = (overlap_us > 0).then(|| row.key_hash.clone());
        row.previous_key_until = (overlap_us > 0).then(|| self.now_us() + overlap_us);
        row.key_hash = auth::digest(&key).to_vec();
        Ok((self.replace_device(current, row).await?, key))
    }

    async fn replace_device(
        &self,
        current: &Device,
        row: DeviceRow,
    ) -> Result<Arc<Device>, RegistryError> {
        let dev = Arc::new(Device::new(row.clone()));
        dev.last_seen
            .store(current.last_seen.load(Ordering::Relaxed), Ordering::Relaxed);
        dev.active
            .store(current.active.load(Ordering::Relaxed), Ordering::Relaxed);
        dev.connected
            .store(current.connected.load(Ordering::Relaxed), Ordering::Relaxed);
        let (d, cache) = (dev.clone(), self.devices.clone());
        self.store
            .write(move |ctx| {
                rows::update_device(ctx.tx, &row)?;
                ctx.after_commit(move |_| {
                    cache.write().expect("devices").insert(d.row.id.clone(), d);
                });
                Ok(())
            })
            .await?;
        Ok(dev)
    }

    pub async fn delete_device(&self, id: &str) -> Result<bool, RegistryError> {
        let (id, cache) = (id.to_string(), self.devices.clone());
        Ok(self
            .store
            .write(move |ctx| {
                let found = rows::delete_device(ctx.tx, &id)?;
                ctx.after_commit(move |_| {
                    cache.write().expect("devices").remove(&id);
                });
                Ok(found)
            })
            .await?)
    }

    /// Checks a device's credentials in constant time. An unknown device
    /// and a wrong key are indistinguishable; disabled is told only after
    /// the key verified.
    pub fn authenticate_device(&self, id: &str, key: &str) -> Result<Arc<Device>, DeviceAuthError> {
        let dev = self.device(id);
        let stored: &[u8] = dev
            .as_ref()
            .map(|d| d.row.key_hash.as_slice())
            .unwrap_or(&[0u8; 32]);
        let mut ok = auth::verify_digest(key, stored);
        if let Some(d) = &dev {
            if let (Some(prev), Some(until)) = (&d.row.previous_key_hash, d.row.previous_key_until)
            {
                ok |= until > self.now_us() && auth::verify_digest(key, prev);
            }
        }
        match dev {
            Some(d) if ok => {
                if d.row.enabled {
                    Ok(d)
                } else {
                    Err(DeviceAuthError::Disabled)
                }
            }
            _ => Err(DeviceAuthError::BadCredentials),
        }
    }

    /// Persists last-seen times (called periodically, not per message).
    pub async fn persist_last_seen(&self) -> Result<(), RegistryError> {
        let seen: Vec<(String, i64)> = self
            .all_devices()
            .into_iter()
            .filter_map(|d| {
                let t = d.last_seen.load(Ordering::Relaxed);
                (t > 0 && Some(t) != d.row.last_seen).then(|| (d.row.id.clone(), t))
            })
            .collect();
        if seen.is_empty() {
            return Ok(());
        }
        self.store
            .write(move |ctx| rows::set_last_seen(ctx.tx, &seen))
            .await?;
        Ok(())
    }

    // ---- users and sessions ----

    pub async fn create_user(
        &self,
        username: &str,
        tenant: &str,
        pw: &str,
        roles: Vec<String>,
    ) -> Result<(), RegistryError> {
        password::check_policy(pw).map_err(|rule| RegistryError::Invalid {
            field: "password".into(),
            rule: rule.into(),
        })?;
        self.check_roles(tenant, &roles)?;
        self.create_user_unchecked(username, tenant, pw, roles)
            .await
    }

    async fn create_user_unchecked(
        &self,
        username: &str,
        tenant: &str,
        pw: &str,
        roles: Vec<String>,
    ) -> Result<(), RegistryError> {
        check_id("username", username).map_err(|e| RegistryError::Invalid {
            field: e.field,
            rule: e.rule.into(),
        })?;
        let cost = self.settings.cost;
        let pw = pw.to_string();
        let hash = tokio::task::spawn_blocking(move || password::hash(&pw, cost))
            .await
            .map_err(|_| RegistryError::Store(StoreError::Unavailable))?;
        let row = UserRow {
            username: username.into(),
            tenant: tenant.into(),
            password_hash: hash,
            roles,
            created_at: self.now_us(),
        };
        let cache = self.users.clone();
        self.store
            .write(move |ctx| {
                rows::insert_user(ctx.tx, &row)?;
                ctx.after_commit(move |_| {
                    cache
                        .write()
                        .expect("users")
                        .insert(row.username.clone(), row);
                });
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Replaces a user's password and ends all their sessions (refresh
    /// tokens and the access tokens issued with them).
    pub async fn set_password(&self, username: &str, pw: &str) -> Result<bool, RegistryError> {
        password::check_policy(pw).map_err(|rule| RegistryError::Invalid {
            field: "password".into(),
            rule: rule.into(),
        })?;
        if !self.users.read().expect("users").contains_key(username) {
            return Ok(false);
        }
        let cost = self.settings.cost;
        let pw = pw.to_string();
        let hash = tokio::task::spawn_blocking(move || password::hash(&pw, cost))
            .await
            .map_err(|_| RegistryError::Store(StoreError::Unavailable))?;
        let (name, h) = (username.to_string(), hash.clone());
        let changed = self
            .store
            .write(move |ctx| rows::set_password(ctx.tx, &name, &h))
            .await?;
        if changed {
            if let Some(u) = self.users.write().expect("users").get_mut(username) {
                u.password_hash = hash;
            }
            self.end_sessions_of(username).await?;
        }
        Ok(changed)
    }

    /// Replaces a user's roles; tokens already issued act with the new
    /// roles from their next request.
    pub async fn set_roles(
        &self,
        username: &str,
        roles: Vec<String>,
    ) -> Result<bool, RegistryError> {
        let Some(user) = self.user(username) else {
            return Ok(false);
        };
        self.check_roles(&user.tenant, &roles)?;
        let (name, r) = (username.to_string(), roles.clone());
        let changed = self
            .store
            .write(move |ctx| rows::set_roles(ctx.tx, &name, &r))
            .await?;
        if changed {
            if let Some(u) = self.users.write().expect("users").get_mut(username) {
                u.roles = roles;
            }
        }
        Ok(changed)
    }

    /// Deletes a user; their tokens stop working at once.
    pub async fn delete_user(&self, username: &str) -> Result<bool, RegistryError> {
        self.end_sessions_of(username).await?;
        let name = username.to_string();
        let cache = self.users.clone();
        Ok(self
            .store
            .write(move |ctx| {
                let gone = rows::delete_user(ctx.tx, &name)?;
                ctx.after_commit(move |_| {
                    cache.write().expect("users").remove(&name);
                });
                Ok(gone)
            })
            .await?)
    }

    async fn end_sessions_of(&self, username: &str) -> Result<(), RegistryError> {
        let exp =
            self.now_us() / 1_000_000 + self.settings.refresh_ttl_s.max(self.settings.access_ttl_s);
        let (name, cache) = (username.to_string(), self.revoked.clone());
        self.store
            .write(move |ctx| {
                let sessions = rows::sessions_of(ctx.tx, &name)?;
                for s in &sessions {
                    rows::revoke_session(ctx.tx, s, exp)?;
                }
                ctx.after_commit(move |_| {
                    let mut r = cache.write().expect("revoked");
                    for s in sessions {
                        r.insert(s, exp);
                    }
                });
                Ok(())
            })
            .await?;
        Ok(())
    }

    pub fn user(&self, username: &str) -> Option<UserRow> {
        self.users.read().expect("users").get(username).cloned()
    }

    fn check_roles(&self, tenant: &str, roles: &[String]) -> Result<(), RegistryError> {
        self.roles
            .check_names(tenant, roles)
            .map_err(|rule| RegistryError::Invalid {
                field: "roles".into(),
                rule,
            })
    }

    /// A principal with its built-in and custom roles resolved.
    pub fn principal(
        &self,
        kind: PrincipalKind,
        tenant: &str,
        roles: Vec<String>,
        session: Option<String>,
    ) -> Principal {
        let mut p = Principal::new(kind, tenant, roles, session);
        self.roles.apply(&mut p);
        p
    }

    /// A bearer token for this process only (the CLI's in-process server):
    /// never stored, gone when the process ends. Acts as system admin.
    pub fn mint_local_token(&self) -> String {
        let t = format!("thl_{}", auth::random_secret(32));
        self.local_tokens
            .write()
            .expect("local tokens")
            .insert(auth::digest(&t));
        t
    }

    pub fn users_of(&self, tenant: &str) -> Vec<UserRow> {
        let mut v: Vec<UserRow> = self
            .users
            .read()
            .expect("users")
            .values()
            .filter(|u| u.tenant == tenant)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.username.cmp(&b.username));
        v
    }

    /// Verifies a password; unknown users cost the same time as wrong
    /// passwords. Runs argon2 off the async workers.
    pub async fn check_password(&self, username: &str, pw: &str) -> Option<UserRow> {
        let user = self.users.read().expect("users").get(username).cloned();
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let pw = pw.to_string();
        let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
            .await
            .unwrap_or(false);
        user.filter(|_| ok)
    }

    pub async fn issue_tokens(
        &self,
        user: &UserRow,
        session: Option<String>,
    ) -> Result<Tokens, RegistryError> {
        let now_s = self.now_us() / 1_000_000;
        let sid = session.unwrap_or_else(|| auth::random_secret(12));
        let claims = jwt::Claims {
            sub: user.username.clone(),
            ten: user.tenant.clone(),
            roles: user.roles.clone(),
            sid: sid.clone(),
            iat: now_s,
            exp: now_s + self.settings.access_ttl_s,
        };
        let access_token = jwt::encode(&claims, &self.jwt_key);
        let refresh_token = auth::random_secret(32);
        let (hash, name, exp) = (
            auth::digest(&refresh_token),
            user.username.clone(),
            now_s + self.settings.refresh_ttl_s,
        );
        self.store
            .write(move |ctx| rows::insert_refresh(ctx.tx, &hash, &name, &sid, exp))
            .await?;
        Ok(Tokens {
            access_token,
            refresh_token,
            expires_in: self.settings.access_ttl_s,
        })
    }

    /// Exchanges a refresh token for new tokens; the old one is spent.
    pub async fn refresh(&self, token: &str) -> Result<Option<Tokens>, RegistryError> {
        let hash = auth::digest(token);
        let now_s = self.now_us() / 1_000_000;
        let found = self
            .store
            .write(move |ctx| rows::take_refresh(ctx.tx, &hash))
            .await?;
        let Some((username, session, exp)) = found else {
            return Ok(None);
        };
        if exp <= now_s || self.revoked.read().expect("revoked").contains_key(&session) {
            return Ok(None);
        }
        let Some(user) = self.users.read().expect("users").get(&username).cloned() else {
            return Ok(None);
        };
        Ok(Some(self.issue_tokens(&user, Some(session)).await?))
    }

    pub async fn logout(&self, session: &str) -> Result<(), RegistryError> {
        let exp =
            self.now_us() / 1_000_000 + self.settings.refresh_ttl_s.max(self.settings.access_ttl_s);
        let (s, cache) = (session.to_string(), self.revoked.clone());
        self.store
            .write(move |ctx| {
                rows::revoke_session(ctx.tx, &s, exp)?;
                ctx.after_commit(move |_| {
                    cache.write().expect("revoked").insert(s, exp);
                });
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The principal behind a bearer token, or None (expired, forged,
    /// revoked, or the user is gone).
    pub fn principal_for_token(&self, token: &str) -> Option<Principal> {
        if token.starts_with("thk_") {
            return self.principal_for_apikey(token);
        }
        if token.starts_with("thl_") {
            let known = self
                .local_tokens
                .read()
                .expect("local tokens")
                .contains(&auth::digest(token));
            return known.then(|| {
                Principal::new(
                    PrincipalKind::Local,
                    DEFAULT_TENANT,
                    vec!["system_admin".into()],
                    None,
                )
            });
        }
        let claims = jwt::decode(token, &self.jwt_key, self.now_us() / 1_000_000).ok()?;
        if self
            .revoked
            .read()
            .expect("revoked")
            .contains_key(&claims.sid)
        {
            return None;
        }
        let users = self.users.read().expect("users");
        let user = users.get(&claims.sub)?;
        Some(self.principal(
            PrincipalKind::User(user.username.clone()),
            &user.tenant,
            user.roles.clone(),
            Some(claims.sid),
        ))
    }

    // ---- logins with lockout ----

    /// Checks a login. After `lockout_threshold` failures in a row the
    /// user name is locked for `lockout_s`, whether or not such a user
    /// exists (so locking reveals nothing).
    pub async fn login(&self, username: &str, pw: &str) -> Result<UserRow, LoginError> {
        let now = self.now_us();
        if let Some((_, Some(until))) = self.failures.lock().expect("failures").get(username) {
            if *until > now {
                return Err(LoginError::Locked(*until));
            }
        }
        match self.check_password(username, pw).await {
            Some(u) => {
                let had = self
                    .failures
                    .lock()
                    .expect("failures")
                    .remove(username)
                    .is_some();
                if had {
                    let name = username.to_string();
                    let _ = self
                        .store
                        .write(move |ctx| rows::set_login_failures(ctx.tx, &name, 0, None))
                        .await;
                }
                Ok(u)
            }
            None => {
                let (count, locked) = {
                    let mut f = self.failures.lock().expect("failures");
                    if f.len() > 100_000 {
                        f.retain(|_, (_, l)| l.is_some_and(|l| l > now));
                    }
                    let e = f.entry(username.to_string()).or_insert((0, None));
                    e.0 += 1;
                    if e.0 >= self.settings.lockout_threshold {
                        e.1 = Some(now + self.settings.lockout_s * 1_000_000);
                        e.0 = 0;
                    }
                    *e
                };
                // Only real accounts are persisted: unknown names would let anyone
                // grow the table; their lock lives in memory (bounded above).
                if self.users.read().expect("users").contains_key(username) {
                    let name = username.to_string();
                    let _ = self
                        .store
                        .write(move |ctx| {
                            rows::set_login_failures(ctx.tx, &name, count.max(1), locked)
                        })
                        .await;
                }
                Err(match locked {
                    Some(until) => LoginError::Locked(until),
                    None => LoginError::Bad,
                })
            }
        }
    }

    // ---- API keys ----

    /// Creates an API key `thk_<id>_<secret>`; the key exists only in the
    /// answer, the store keeps its SHA-256.
    pub async fn create_apikey(
        &self,
        mut row: rows::ApiKeyRow,
    ) -> Result<(Arc<ApiKey>, String), RegistryError> {
        row.id = {
            let mut b = [0u8; 6];
            rand::fill(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect()
        };
        let secret = auth::random_secret(24);
        let key = format!("thk_{}_{}", row.id, secret);
        row.key_hash = auth::digest(&key).to_vec();
        row.created_at = self.now_us();
        let entry = Arc::new(ApiKey {
            row: row.clone(),
            last_used: AtomicI64::new(0),
        });
        let (e2, cache) = (entry.clone(), self.apikeys.clone());
        self.store
            .write(move |ctx| {
                rows::put_apikey(ctx.tx, &row)?;
                ctx.after_commit(move |_| {
                    cache
                        .write()
                        .expect("apikeys")
                        .insert(e2.row.id.clone(), e2);
                });
                Ok(())
            })
            .await?;
        Ok((entry, key))
    }

    pub fn apikeys_of(&self, tenant: &str) -> Vec<Arc<ApiKey>> {
        let mut v: Vec<Arc<ApiKey>> = self
            .apikeys
            .read()
            .expect("apikeys")
            .values()
            .filter(|k| k.row.tenant == tenant)
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            a.row
                .created_at
                .cmp(&b.row.created_at)
                .then(a.row.id.cmp(&b.row.id))
        });
        v
    }

    /// Revokes at once: the cache changes in the same commit hook that
    /// makes the revocation durable.
    pub async fn revoke_apikey(&self, tenant: &str, id: &str) -> Result<bool, RegistryError> {
        let Some(k) = self
            .apikeys
            .read()
            .expect("apikeys")
            .get(id)
            .filter(|k| k.row.tenant == tenant)
            .cloned()
        else {
            return Ok(false);
        };
        let mut row = k.row.clone();
        row.revoked_at = Some(self.now_us());
        row.last_used = Some(k.last_used.load(Ordering::Relaxed)).filter(|t| *t > 0);
        let cache = self.apikeys.clone();
        self.store
            .write(move |ctx| {
                rows::put_apikey(ctx.tx, &row)?;
                ctx.after_commit(move |_| {
                    let last = Arc::new(ApiKey {
                        last_used: AtomicI64::new(row.last_used.unwrap_or(0)),
                        row,
                    });
                    cache
                        .write()
                        .expect("apikeys")
                        .insert(last.row.id.clone(), last);
                });
                Ok(())
            })
            .await?;
        Ok(true)
    }

    fn principal_for_apikey(&self, token: &str) -> Option<Principal> {
        let rest = token.strip_prefix("thk_")?;
        let (id, _) = rest.split_once('_')?;
        let k = self.apikeys.read().expect("apikeys").get(id).cloned();
        // Always verify something, so an unknown id costs what a bad
        // secret does.
        let stored: &[u8] = k
            .as_ref()
            .map(|k| k.row.key_hash.as_slice())
            .unwrap_or(&[0u8; 32]);
        if !auth::verify_digest(token, stored) {
            return None;
        }
        let k = k?;
        let now = self.now_us();
        if k.row.revoked_at.is_some() || k.row.expires_at.is_some_and(|e| e <= now) {
            return None;
        }
        k.last_used.store(now, Ordering::Relaxed);
        let kind = PrincipalKind::ApiKey(k.row.id.clone());
        let mut p = self.principal(kind, &k.row.tenant, k.row.roles.clone(), None);
        if let Some(perms) = &k.row.permissions {
            p.perms = p.perms.union(auth::PermSet::of(
                &perms
                    .iter()
                    .filter_map(|p| auth::Perm::parse(p))
                    .collect::<Vec<_>>(),
            ));
        }
        Some(p)
    }
}
