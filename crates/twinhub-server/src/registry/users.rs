//! Users and their sessions: passwords (argon2id), roles, tokens, refresh and logout.

use super::*;

impl Registry {
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

    pub(super) async fn create_user_unchecked(
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
        let r2 = row.clone();
        self.store
            .write_cached(
                &self.users,
                move |tx| rows::insert_user(tx, &r2),
                move |users| {
                    users.insert(row.username.clone(), row);
                },
            )
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
        let (name, n2) = (username.to_string(), username.to_string());
        let h = hash.clone();
        let changed = self
            .store
            .write_cached(
                &self.users,
                move |tx| rows::set_password(tx, &name, &h),
                move |users| {
                    if let Some(u) = users.get_mut(&n2) {
                        u.password_hash = hash;
                    }
                },
            )
            .await?;
        if changed {
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
        let (name, n2, r) = (username.to_string(), username.to_string(), roles.clone());
        Ok(self
            .store
            .write_cached(
                &self.users,
                move |tx| rows::set_roles(tx, &name, &r),
                move |users| {
                    if let Some(u) = users.get_mut(&n2) {
                        u.roles = roles;
                    }
                },
            )
            .await?)
    }

    /// Deletes a user; their tokens stop working at once.
    pub async fn delete_user(&self, username: &str) -> Result<bool, RegistryError> {
        self.end_sessions_of(username).await?;
        let (n1, n2) = (username.to_string(), username.to_string());
        Ok(self
            .store
            .write_cached(
                &self.users,
                move |tx| rows::delete_user(tx, &n1),
                move |users| {
                    users.remove(&n2);
                },
            )
            .await?)
    }

    pub(super) async fn end_sessions_of(&self, username: &str) -> Result<(), RegistryError> {
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

    pub(super) fn check_roles(&self, tenant: &str, roles: &[String]) -> Result<(), RegistryError> {
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
        let (s1, s2) = (session.to_string(), session.to_string());
        self.store
            .write_cached(
                &self.revoked,
                move |tx| rows::revoke_session(tx, &s1, exp),
                move |revoked| {
                    revoked.insert(s2, exp);
                },
            )
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
}
