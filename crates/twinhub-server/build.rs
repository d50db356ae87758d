//! Embeds the dashboard's built files (`web/dist`, committed; see
//! docs/design/dashboard.md) as a static table: path, bytes, and the
//! gzip copy the web build wrote beside each file. Cargo never runs npm.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let dist = manifest.join("../../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    if dist.is_dir() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let mut out = String::from("pub static ASSETS: &[Asset] = &[\n");
    for rel in files.iter().filter(|f| !f.ends_with(".gz")) {
        let abs = dist.join(rel).canonicalize().expect("asset path");
        let gz = files.contains(&format!("{rel}.gz"));
        let gz = if gz {
            let p = dist
                .join(format!("{rel}.gz"))
                .canonicalize()
                .expect("gz path");
            format!("Some(include_bytes!({:?}))", p.display().to_string())
        } else {
            "None".to_string()
        };
        let bytes = std::fs::read(&abs).expect("read asset");
        // FNV-1a of the content: a stable ETag (not a security boundary).
        let tag = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        writeln!(
            out,
            "    Asset {{ path: {:?}, body: include_bytes!({:?}), gzip: {gz}, etag: \"\\\"{tag:016x}\\\"\" }},",
            format!("/{rel}"),
            abs.display().to_string()
        )
        .expect("write");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("out dir")).join("web_assets.rs");
    std::fs::write(dest, out).expect("write web_assets.rs");
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}
