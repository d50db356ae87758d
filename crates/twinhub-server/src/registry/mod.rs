//! The registry: tenants, devices, users and sessions, cached in memory
//! (authenticating a device or a token never touches the database) and
//! written through the store's group commit. Cache updates run as
//! after-commit hooks, in commit order.
//!
//! One file per concern: `tenants`, `devices`, `users` (and sessions),
//! `lockout` (failed logins), `apikeys`; this one holds the types and
//! opening.
//!
//! May call: `store`, `auth`, `clock`, `roles` (custom roles), `audit`
//! (the system chain's name).

use crate::auth::{self, jwt, password, Principal, PrincipalKind};
use crate::clock::SharedClock;
use crate::store::registry::{self as rows, DeviceRow, TenantRow, UserRow};
use crate::store::{Store, StoreError};
pub use settings::AuthConfig;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use twinhub_model::ids::check_id;

mod apikeys;
mod devices;
mod lockout;
mod settings;
mod tenants;
mod users;

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
    /// The `last_seen` the store holds: a device is rewritten only when
    /// it was seen since (`persist_last_seen`).
    pub(crate) persisted: AtomicI64,
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
            persisted: AtomicI64::new(seen),
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
}
