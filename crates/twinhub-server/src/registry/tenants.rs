//! Tenants: creation (ids checked, internal names reserved), listing.

use super::*;

impl Registry {
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
        let (r1, r2) = (row.clone(), row.clone());
        self.store
            .write_cached(
                &self.tenants,
                move |tx| rows::insert_tenant(tx, &r1),
                move |tenants| {
                    tenants.insert(r2.id.clone(), r2);
                },
            )
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
}
