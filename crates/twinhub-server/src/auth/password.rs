//! argon2id password hashing for people (never for device or API keys,
//! whose random secrets make a fast digest safe).

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Cost {
    /// The cheapest cost argon2 allows: for tests only.
    pub const MIN: Cost = Cost {
        memory_kib: 8,
        iterations: 1,
        lanes: 1,
    };

    fn hasher(self) -> Argon2<'static> {
        let params = Params::new(
            self.memory_kib.max(8),
            self.iterations.max(1),
            self.lanes.max(1),
            None,
        )
        .unwrap_or_else(|_| Params::default());
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }
}

pub fn hash(password: &str, cost: Cost) -> String {
    let salt = SaltString::generate(&mut OsRng);
    cost.hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .expect("argon2 hashing with valid parameters")
}

/// Verifies against the parameters recorded in the hash itself.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so that an
/// unknown name costs as much time as a wrong password. Built without
/// hashing (random salt and output): verifying it costs a real argon2 run,
/// creating it costs nothing.
pub fn dummy_hash(cost: Cost) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let (mut salt, mut out) = ([0u8; 16], [0u8; 32]);
    rand::fill(&mut salt);
    rand::fill(&mut out);
    format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        cost.memory_kib.max(8),
        cost.iterations.max(1),
        cost.lanes.max(1),
        b64.encode(salt),
        b64.encode(out)
    )
}

/// Password policy: at least 10 characters, not all the same class.
pub fn check_policy(password: &str) -> Result<(), &'static str> {
    if password.chars().count() < 10 {
        return Err("must be at least 10 characters long");
    }
    if password.len() > 1024 {
        return Err("must be at most 1024 bytes long");
    }
    let classes = [
        password.chars().any(|c| c.is_ascii_lowercase()),
        password.chars().any(|c| c.is_ascii_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    if classes.iter().filter(|x| **x).count() < 2 {
        return Err("must mix at least two of: lower case, upper case, digits, symbols");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse 1", Cost::MIN);
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse 1", &h));
        assert!(!verify("correct horse 2", &h));
        assert!(!verify("x", "not a hash"));
        let dummy = dummy_hash(Cost::MIN);
        assert!(PasswordHash::new(&dummy).is_ok(), "{dummy}");
        assert!(!verify("twinhub", &dummy));
        assert!(check_policy("short").is_err());
        assert!(check_policy("aaaaaaaaaaaa").is_err());
        assert!(check_policy("plant-admin-2026").is_ok());
    }
}
