//! `ports.json` in the data directory: where a running node listens, for
//! whoever started it on port 0 (the CLI, tests, benchmarks). Written
//! whole into a temporary file and renamed, so a reader never sees half.
//!
//! May call: nothing of twinhub (a leaf).

use std::net::SocketAddr;
use std::path::Path;

pub const PORTS_FILE: &str = "ports.json";

/// Writes the bound listeners (`None` ones are left out) and `extra`
/// fields; what was written.
pub fn write(
    dir: &Path,
    listeners: &[(&str, Option<SocketAddr>)],
    extra: &[(&str, &str)],
) -> std::io::Result<serde_json::Value> {
    let mut v = serde_json::json!({});
    for (name, addr) in listeners {
        if let Some(a) = addr {
            v[*name] = serde_json::json!(a.to_string());
        }
    }
    for (name, value) in extra {
        v[*name] = serde_json::json!(value);
    }
    let tmp = dir.join("ports.json.tmp");
    std::fs::write(&tmp, v.to_string())?;
    std::fs::rename(tmp, dir.join(PORTS_FILE))?;
    Ok(v)
}
