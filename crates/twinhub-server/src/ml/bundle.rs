//! The model bundle, `twinhub-model-bundle/1`: one JSON file holding a
//! version's manifest, its ONNX bytes (base64) and their SHA-256, to carry
//! a model to an air-gapped edge box. `twinhub model package` writes one
//! from files, `GET …/versions/{v}/bundle` exports one from a server, and
//! upload checks the checksum.
//!
//! May call: nothing (pure).

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;

pub const FORMAT: &str = "twinhub-model-bundle/1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub manifest: Value,
    pub sha256: String,
    pub model: String,
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A bundle of this model and manifest.
pub fn make(model: &[u8], manifest: &Value) -> Value {
    json!({
        "format": FORMAT,
        "manifest": manifest,
        "sha256": sha256_hex(model),
        "model": base64::engine::general_purpose::STANDARD.encode(model),
    })
}

/// Why a bundle was refused: the field and the rule.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// Not a bundle we read (400).
    Malformed(&'static str, &'static str),
    /// Damaged: the checksum does not match (422).
    Damaged,
}

/// The ONNX bytes and the manifest of a bundle, checked.
pub fn open(b: Bundle) -> Result<(Vec<u8>, Value), Refused> {
    if b.format != FORMAT {
        return Err(Refused::Malformed(
            "bundle.format",
            "must be twinhub-model-bundle/1",
        ));
    }
    let onnx = base64::engine::general_purpose::STANDARD
        .decode(b.model.as_bytes())
        .map_err(|_| Refused::Malformed("bundle.model", "is not base64"))?;
    if sha256_hex(&onnx) != b.sha256.to_ascii_lowercase() {
        return Err(Refused::Damaged);
    }
    Ok((onnx, b.manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_damage_is_found() {
        let m = json!({"name": "m", "version": "1"});
        let b: Bundle = serde_json::from_value(make(b"onnx bytes", &m)).unwrap();
        assert_eq!(open(b).unwrap(), (b"onnx bytes".to_vec(), m.clone()));
        let mut v = make(b"onnx bytes", &m);
        v["model"] = json!(base64::engine::general_purpose::STANDARD.encode(b"other"));
        assert_eq!(
            open(serde_json::from_value(v).unwrap()).unwrap_err(),
            Refused::Damaged
        );
    }
}
