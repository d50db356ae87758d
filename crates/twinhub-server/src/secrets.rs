//! The secret box: credentials the platform keeps for a tenant (webhook
//! signing secrets, connector passwords) encrypted at rest with
//! AES-256-GCM. The key is derived from `secrets.key` /
//! `TWINHUB_SECRETS_KEY`, or from `<data-dir>/secrets.key` (0600) kept
//! beside, never inside, the database. Each ciphertext is bound to its
//! tenant and name (associated data), so rows cannot be swapped. The API
//! only ever shows a masked preview; plaintext goes to in-process users
//! (sinks) through `reveal`.
//!
//! May call: `store` (rows), `keyfile`, `clock`.

use crate::clock::SharedClock;
use crate::store::secrets as rows;
use crate::store::{Store, StoreError};
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::Sha256;

const KEY_FILE: &str = "secrets.key";
/// Largest secret value accepted (bytes).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0} cannot be decrypted with the configured key")]
    Undecryptable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the API shows of a secret.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub name: String,
    /// The first and last two characters at most, e.g. "wh…9x".
    pub preview: String,
    pub created_at: String,
}

pub struct SecretBox {
    store: Store,
    clock: SharedClock,
    key: LessSafeKey,
}

/// A preview that never reveals more than four characters, and none of a
/// short secret.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 12 {
        return "…".into();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail}")
}

fn aad(tenant: &str, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(tenant.len() + name.len() + 1);
    v.extend_from_slice(tenant.as_bytes());
    v.push(0);
    v.extend_from_slice(name.as_bytes());
    v
}

impl SecretBox {
    pub fn open(
        store: Store,
        clock: SharedClock,
        configured_key: Option<&str>,
    ) -> Result<SecretBox, StoreError> {
        let material = crate::keyfile::load_or_create(store.dir(), KEY_FILE, configured_key)?;
        // A KDF step: whatever the configured text, the AEAD key is 32
        // uniformly distributed bytes, separate from other uses of it.
        let mut kdf = Hmac::<Sha256>::new_from_slice(&material).expect("any key length");
        kdf.update(b"twinhub secret box v1");
        let derived = kdf.finalize().into_bytes();
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &derived).expect("32-byte AES-256-GCM key"),
        );
        Ok(SecretBox { store, clock, key })
    }

    /// Stores (or replaces) a secret.
    pub async fn put(
        &self,
        tenant: &str,
        name: &str,
        value: &str,
    ) -> Result<SecretInfo, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut sealed = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tenant, name)),
                &mut sealed,
            )
            .map_err(|_| StoreError::Unavailable)?;
        let now = self.clock.now_us();
        let (t, n) = (tenant.to_string(), name.to_string());
        self.store
            .write(move |ctx| rows::put_secret(ctx.tx, &t, &n, &nonce, &sealed, now))
            .await?;
        Ok(SecretInfo {
            name: name.to_string(),
            preview: mask(value),
            created_at: twinhub_model::time::format_rfc3339(now),
        })
    }

    /// The plaintext, for in-process users only (never an API answer).
    pub fn reveal(&self, tenant: &str, name: &str) -> Result<Option<String>, SecretError> {
        let row = self.store.read(|c| rows::sealed(c, tenant, name))?;
        let Some((nonce, mut sealed)) = row else {
            return Ok(None);
        };
        let nonce = Nonce::try_assume_unique_for_key(&nonce)
            .map_err(|_| SecretError::Undecryptable(name.into()))?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(tenant, name)), &mut sealed)
            .map_err(|_| SecretError::Undecryptable(name.into()))?;
        String::from_utf8(plain.to_vec())
            .map(Some)
            .map_err(|_| SecretError::Undecryptable(name.into()))
    }

    /// Names and masked previews (decrypting to mask them).
    pub fn list(&self, tenant: &str) -> Result<Vec<SecretInfo>, SecretError> {
        let names = self.store.read(|c| rows::names(c, tenant))?;
        names
            .into_iter()
            .map(|(name, at)| {
                let preview = match self.reveal(tenant, &name) {
                    Ok(Some(v)) => mask(&v),
                    _ => "(undecryptable)".into(),
                };
                Ok(SecretInfo {
                    name,
                    preview,
                    created_at: twinhub_model::time::format_rfc3339(at),
                })
            })
            .collect()
    }

    pub async fn delete(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let (t, n) = (tenant.to_string(), name.to_string());
        self.store
            .write(move |ctx| rows::delete_secret(ctx.tx, &t, &n))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_show_at_most_four_characters() {
        assert_eq!(mask("short"), "…");
        assert_eq!(mask("whsec_0123456789x9"), "wh…x9");
    }
}
