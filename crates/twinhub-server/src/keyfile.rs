//! Key material for the audit chain and the secret box: from the
//! configuration when given, else from a 0600 file beside (never inside)
//! the database, created on first use.
//!
//! May call: `auth` (random key material).

use std::path::Path;

pub fn load_or_create(
    dir: &Path,
    file: &str,
    configured: Option<&str>,
) -> std::io::Result<Vec<u8>> {
    if let Some(k) = configured.filter(|k| !k.is_empty()) {
        return Ok(k.as_bytes().to_vec());
    }
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => {
            let k = crate::auth::random_secret(32).into_bytes();
            write_private(&path, &k)?;
            Ok(k)
        }
    }
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}
