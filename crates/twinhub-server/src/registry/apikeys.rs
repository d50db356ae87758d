//! API keys: creation (never more than the creator), listing, revocation, authentication by key id.

use super::*;

impl Registry {
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
        let e2 = entry.clone();
        self.store
            .write_cached(
                &self.apikeys,
                move |tx| rows::put_apikey(tx, &row),
                move |keys| {
                    keys.insert(e2.row.id.clone(), e2);
                },
            )
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
        let revoked = Arc::new(ApiKey {
            last_used: AtomicI64::new(row.last_used.unwrap_or(0)),
            row: row.clone(),
        });
        self.store
            .write_cached(
                &self.apikeys,
                move |tx| rows::put_apikey(tx, &row),
                move |keys| {
                    keys.insert(revoked.row.id.clone(), revoked);
                },
            )
            .await?;
        Ok(true)
    }

    pub(super) fn principal_for_apikey(&self, token: &str) -> Option<Principal> {
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
