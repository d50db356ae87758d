//! Custom roles: per-tenant permission sets, optionally scoped to a twin
//! subtree (a user may operate Plant 2 only). Owns the `roles` table's
//! cache and turns a principal's role names into permissions.
//!
//! May call: `store` (rows), `auth` (permission types).

use crate::auth::{self, Perm, PermSet, Principal, ScopedGrant};
use crate::store::registry::{self as rows, RoleRow};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// Relationships that define a subtree when a scope names none.
pub const DEFAULT_SCOPE_RELATIONSHIPS: &[&str] = &["contains"];

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &str, rule: impl Into<String>) -> RoleError {
    RoleError::Invalid {
        field: field.into(),
        rule: rule.into(),
    }
}

#[derive(Clone, Default)]
pub struct RoleBook {
    by_tenant: Arc<RwLock<HashMap<String, BTreeMap<String, RoleRow>>>>,
}

impl RoleBook {
    pub fn load(store: &Store) -> Result<RoleBook, StoreError> {
        let book = RoleBook::default();
        {
            let mut m = book.by_tenant.write().expect("roles");
            for r in store.read(|c| rows::load_roles(c))? {
                m.entry(r.tenant.clone())
                    .or_default()
                    .insert(r.name.clone(), r);
            }
        }
        Ok(book)
    }

    pub fn get(&self, tenant: &str, name: &str) -> Option<RoleRow> {
        self.by_tenant
            .read()
            .expect("roles")
            .get(tenant)?
            .get(name)
            .cloned()
    }

    pub fn list(&self, tenant: &str) -> Vec<RoleRow> {
        self.by_tenant
            .read()
            .expect("roles")
            .get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Checks a role definition: a name that is not built in, known
    /// permissions (never `tenants:admin`), a well-formed scope.
    pub fn validate(row: &RoleRow) -> Result<(), RoleError> {
        twinhub_model::ids::check_id("name", &row.name).map_err(|e| invalid(&e.field, e.rule))?;
        if auth::role_perms(&row.name).is_some() {
            return Err(invalid("name", "is a built-in role"));
        }
        if row.permissions.is_empty() {
            return Err(invalid("permissions", "must list at least one permission"));
        }
        for (i, p) in row.permissions.iter().enumerate() {
            match Perm::parse(p) {
                None => {
                    return Err(invalid(
                        &format!("permissions[{i}]"),
                        format!("unknown permission '{p}'"),
                    ))
                }
                Some(Perm::TenantsAdmin) => {
                    return Err(invalid(
                        &format!("permissions[{i}]"),
                        "tenants:admin belongs to system admins only",
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(scope) = &row.scope {
            let Some(obj) = scope.as_object() else {
                return Err(invalid(
                    "scope",
                    "must be an object {\"twin\", \"relationships\"?}",
                ));
            };
            if let Some(k) = obj.keys().find(|k| *k != "twin" && *k != "relationships") {
                return Err(invalid(&format!("scope.{k}"), "is not a scope field"));
            }
            match obj.get("twin").and_then(|t| t.as_str()) {
                Some(t) if !t.is_empty() => {}
                _ => return Err(invalid("scope.twin", "must name the root twin")),
            }
            if let Some(r) = obj.get("relationships") {
                let ok = r.as_array().is_some_and(|a| {
                    !a.is_empty() && a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
                });
                if !ok {
                    return Err(invalid(
                        "scope.relationships",
                        "must be a non-empty list of relationship names",
                    ));
                }
            }
        }
        Ok(())
    }

    pub async fn put(&self, store: &Store, row: RoleRow) -> Result<(), RoleError> {
        RoleBook::validate(&row)?;
        let r2 = row.clone();
        store
            .write_cached(
                &self.by_tenant,
                move |tx| rows::put_role(tx, &r2),
                move |roles| {
                    roles
                        .entry(row.tenant.clone())
                        .or_default()
                        .insert(row.name.clone(), row);
                },
            )
            .await?;
        Ok(())
    }

    pub async fn delete(&self, store: &Store, tenant: &str, name: &str) -> Result<bool, RoleError> {
        let (t, n) = (tenant.to_string(), name.to_string());
        let (t2, n2) = (t.clone(), n.clone());
        Ok(store
            .write_cached(
                &self.by_tenant,
                move |tx| rows::delete_role(tx, &t, &n),
                move |roles| {
                    if let Some(m) = roles.get_mut(&t2) {
                        m.remove(&n2);
                    }
                },
            )
            .await?)
    }

    /// Whether every name is a built-in role or one of the tenant's.
    pub fn check_names(&self, tenant: &str, roles: &[String]) -> Result<(), String> {
        for r in roles {
            if auth::role_perms(r).is_none() && self.get(tenant, r).is_none() {
                return Err(format!(
                    "unknown role '{r}'; built-in roles are {} (or create one at /api/v1/roles)",
                    auth::BUILTIN_ROLES.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Adds the tenant's custom roles among `p.roles` to `p`: unscoped ones
    /// to its permissions, scoped ones as subtree grants. Unknown names
    /// (e.g. a deleted role) grant nothing.
    pub fn apply(&self, p: &mut Principal) {
        if p.roles.iter().all(|r| auth::role_perms(r).is_some()) {
            return;
        }
        let book = self.by_tenant.read().expect("roles");
        let Some(mine) = book.get(&p.tenant) else {
            return;
        };
        for name in &p.roles {
            let Some(role) = mine.get(name) else {
                continue;
            };
            let perms = PermSet::of(
                &role
                    .permissions
                    .iter()
                    .filter_map(|s| Perm::parse(s))
                    .collect::<Vec<_>>(),
            );
            match &role.scope {
                None => p.perms = p.perms.union(perms),
                Some(scope) => p.scoped.push(ScopedGrant {
                    root: scope["twin"].as_str().unwrap_or_default().to_string(),
                    relationships: scope["relationships"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_else(|| {
                            DEFAULT_SCOPE_RELATIONSHIPS
                                .iter()
                                .map(|s| s.to_string())
                                .collect()
                        }),
                    perms,
                }),
            }
        }
    }
}
