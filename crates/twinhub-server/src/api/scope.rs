//! Twin-subtree scopes of custom roles, checked in one place: handlers
//! that act on one twin call `authorize_twin`; handlers that list twins
//! filter with `twin_filter`.
//!
//! A twin outside every scope of a scoped principal answers 404, as a
//! foreign tenant's does: the principal cannot tell it exists.

use super::error::ApiError;
use super::AppState;
use crate::auth::{Denied, Perm, Principal, ScopedGrant};
use std::sync::Arc;

/// Subtrees (root twin, relationship names) a scoped caller may use.
pub type Subtrees = Vec<(String, Vec<String>)>;

/// Decides per twin id; `None` from `twin_filter` means every twin passes.
pub type TwinFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl AppState {
    /// Ok when `p` holds `perm` for twin `id` of `tenant`.
    pub fn authorize_twin(
        &self,
        p: &Principal,
        perm: Perm,
        tenant: &str,
        id: &str,
    ) -> Result<(), ApiError> {
        if p.perms.contains(perm) {
            return Ok(());
        }
        if p.scoped.is_empty() {
            return Err(Denied::Missing(perm).into());
        }
        let (allowed, visible) = self.twins.read(tenant, |g| {
            let under = |gr: &ScopedGrant| g.under(&gr.root, &gr.relationships, id);
            (
                p.scoped
                    .iter()
                    .any(|gr| gr.perms.contains(perm) && under(gr)),
                p.perms.contains(Perm::TwinsRead) || p.scoped.iter().any(under),
            )
        });
        match (allowed, visible) {
            (true, _) => Ok(()),
            (false, true) => Err(Denied::Missing(perm).into()),
            (false, false) => Err(ApiError::not_found(format!("twin {id} not found"))),
        }
    }

    /// The subtrees (root, relationship names) `p` may use `perm` in, for
    /// the query evaluator; `None` when tenant-wide, Err when nowhere.
    pub fn twin_scope(&self, p: &Principal, perm: Perm) -> Result<Option<Subtrees>, ApiError> {
        if p.perms.contains(perm) {
            return Ok(None);
        }
        let roots: Subtrees = p
            .scoped
            .iter()
            .filter(|g| g.perms.contains(perm))
            .map(|g| (g.root.clone(), g.relationships.clone()))
            .collect();
        if roots.is_empty() {
            return Err(Denied::Missing(perm).into());
        }
        Ok(Some(roots))
    }

    /// Which twins `p` may use `perm` on; Err when nowhere.
    pub fn twin_filter(
        &self,
        p: &Principal,
        perm: Perm,
        tenant: &str,
    ) -> Result<Option<TwinFilter>, ApiError> {
        if p.perms.contains(perm) {
            return Ok(None);
        }
        let grants: Vec<ScopedGrant> = p
            .scoped
            .iter()
            .filter(|g| g.perms.contains(perm))
            .cloned()
            .collect();
        if grants.is_empty() {
            return Err(Denied::Missing(perm).into());
        }
        let (twins, tenant) = (self.twins.clone(), tenant.to_string());
        Ok(Some(Arc::new(move |id: &str| {
            twins.read(&tenant, |g| {
                grants
                    .iter()
                    .any(|gr| g.under(&gr.root, &gr.relationships, id))
            })
        })))
    }
}
