//! HS256 JSON Web Tokens for access tokens. Verification is an HMAC and a
//! small JSON parse (a few µs), so no verified-token cache is needed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"HS256","typ":"JWT"}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// The user's tenant.
    pub ten: String,
    pub roles: Vec<String>,
    /// Session id: logout revokes it.
    pub sid: String,
    /// Issued at / expires, seconds since the epoch.
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
}

pub fn encode(claims: &Claims, key: &[u8]) -> String {
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let signing_input = format!("{HEADER}.{payload}");
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(signing_input.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

pub fn decode(token: &str, key: &[u8], now_s: i64) -> Result<Claims, JwtError> {
    let mut parts = token.splitn(3, '.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    if h != HEADER {
        return Err(JwtError::Malformed);
    }
    let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| JwtError::Signature)?;
    let body = B64.decode(p).map_err(|_| JwtError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&body).map_err(|_| JwtError::Malformed)?;
    if claims.exp <= now_s {
        return Err(JwtError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "admin".into(),
            ten: "default".into(),
            roles: vec!["system_admin".into()],
            sid: "s1".into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = b"0123456789abcdef0123456789abcdef";
        let t = encode(&claims(100), key);
        assert_eq!(decode(&t, key, 50).unwrap(), claims(100));
        assert_eq!(decode(&t, key, 100), Err(JwtError::Expired));
        assert_eq!(decode(&t, b"other key", 50), Err(JwtError::Signature));
        let mut forged = t.clone();
        forged.insert(40, 'x');
        assert!(decode(&forged, key, 50).is_err());
        assert_eq!(decode("a.b", key, 0), Err(JwtError::Malformed));
    }
}
