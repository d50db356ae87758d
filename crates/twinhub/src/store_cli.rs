//! Offline store commands: `backup`, `restore`, `migrate`, `check`,
//! `export` and `import`. The embedded file is copied as a file; a
//! PostgreSQL store is backed up and restored through the logical export
//! (`store::export`), which also moves an installation between the two.

use crate::{load_config, ServerFlags};
use anyhow::{anyhow, bail};
use std::path::{Path, PathBuf};
use twinhub_server::config::Config;
use twinhub_server::store::backend::{Db, Source};
use twinhub_server::store::{self, export, DirLock, StoreError};

/// Refuses an offline file operation on a store kept in PostgreSQL.
fn embedded_only(config: &Config, what: &str) -> anyhow::Result<()> {
    if !config.store.url.is_empty() {
        bail!(
            "`twinhub {what}` works on the embedded store; this configuration keeps its store in PostgreSQL (store.url): use PostgreSQL's own tools there (amcheck); `twinhub backup`/`restore`/`export` work on both"
        );
    }
    Ok(())
}

pub fn backup(file: Option<&PathBuf>, flags: &ServerFlags, dest: &Path) -> anyhow::Result<()> {
    let config = load_config(file, flags)?;
    if !config.store.url.is_empty() {
        // A PostgreSQL store's backup is its logical export (one snapshot,
        // safe while nodes run); `restore` reads it back.
        return export_to(&config, dest);
    }
    let db = store::db::db_path(&config.data_dir);
    if !db.exists() {
        bail!("no store in {}", config.data_dir.display());
    }
    store::backup_file(&db, dest)?;
    println!("backup written to {}", dest.display());
    Ok(())
}

pub fn migrate(file: Option<&PathBuf>, flags: &ServerFlags) -> anyhow::Result<()> {
    let config = load_config(file, flags)?;
    let source = source(&config);
    // The embedded file has one writer: its directory's lock.
    let _lock = match &source {
        Source::Pg { .. } => None,
        Source::Sqlite(_) => {
            std::fs::create_dir_all(&config.data_dir)?;
            Some(DirLock::acquire(&config.data_dir).map_err(|e| match e {
                StoreError::Locked(_) => anyhow!(
                    "a server is running on {} (it brought the store to its format at start)",
                    config.data_dir.display()
                ),
                e => e.into(),
            })?)
        }
    };
    let format = source.migrate()?;
    println!("store {} is at format {format}", config.store.shown());
    Ok(())
}

pub fn check(file: Option<&PathBuf>, flags: &ServerFlags) -> anyhow::Result<()> {
    let config = load_config(file, flags)?;
    embedded_only(&config, "check")?;
    let r = store::check::check_dir(&config.data_dir)?;
    println!(
        "{}: {} chunks ({} points), {} rollups, {} batch-log records",
        config.data_dir.display(),
        r.chunks,
        r.points,
        r.rollups,
        r.batch_log
    );
    if r.ok() {
        println!("ok");
        return Ok(());
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    bail!("the store has {} problem(s)", r.problems.len())
}

pub fn restore(file: Option<&PathBuf>, flags: &ServerFlags, src: &Path) -> anyhow::Result<()> {
    let config = load_config(file, flags)?;
    // An export restores into either store (replacing what it holds); a
    // file backup only into the embedded one.
    if !config.store.url.is_empty() || is_export(src)? {
        return import_from(&config, src, true);
    }
    let lock = DirLock::acquire(&config.data_dir).map_err(|e| match e {
        StoreError::Locked(_) => anyhow!(
            "a server is running on {}; stop it before restoring",
            config.data_dir.display()
        ),
        e => e.into(),
    })?;
    store::restore_file(&lock, src)?;
    println!(
        "restored {} into {}",
        src.display(),
        config.data_dir.display()
    );
    Ok(())
}

/// `twinhub export FILE`: the whole store (either backend) and its key
/// files, from one snapshot; safe while the server runs.
pub fn export(file: Option<&PathBuf>, flags: &ServerFlags, dest: &Path) -> anyhow::Result<()> {
    export_to(&load_config(file, flags)?, dest)
}

/// `twinhub import FILE`: an export into this configuration's store, which
/// must be new (or `replace`); the server must be stopped.
pub fn import(
    file: Option<&PathBuf>,
    flags: &ServerFlags,
    src: &Path,
    replace: bool,
) -> anyhow::Result<()> {
    import_from(&load_config(file, flags)?, src, replace)
}

fn source(config: &Config) -> Source {
    Source::of(&config.store_options(), &config.data_dir)
}

fn export_to(config: &Config, dest: &Path) -> anyhow::Result<()> {
    let source = source(config);
    if let Source::Sqlite(path) = &source {
        if !path.exists() {
            bail!("no store in {}", config.data_dir.display());
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let s = export::export(&source, &config.data_dir, dest, now)?;
    println!(
        "exported {} ({}, format {}): {} tables, {} rows, key files: {} -> {}",
        config.store.shown(),
        s.source,
        s.store_format,
        s.tables,
        s.rows,
        list(&s.files),
        dest.display()
    );
    println!("the file holds the store's keys: keep it as safe as the data directory");
    Ok(())
}

fn import_from(config: &Config, src: &Path, replace: bool) -> anyhow::Result<()> {
    let source = source(config);
    std::fs::create_dir_all(&config.data_dir)?;
    let stop_first = |e: StoreError| match e {
        StoreError::Locked(_) | StoreError::StoreInUse(_) => anyhow!(
            "a server is running on {}; stop it before importing",
            config.store.shown()
        ),
        e => e.into(),
    };
    // The embedded file's writer is its directory's lock; PostgreSQL's is
    // the advisory lock the writer's connection takes.
    let _lock = match &source {
        Source::Sqlite(_) => Some(DirLock::acquire(&config.data_dir).map_err(stop_first)?),
        Source::Pg { .. } => None,
    };
    let db: Db = source.open_writer().map_err(stop_first)?;
    let (s, files) = export::import(&db, src, replace)?;
    for (name, bytes) in &files {
        twinhub_server::keyfile::write_private(&config.data_dir.join(name), bytes)?;
    }
    println!(
        "imported {} ({} export of format {}): {} tables, {} rows, key files: {} -> {}",
        src.display(),
        s.source,
        s.store_format,
        s.tables,
        s.rows,
        list(&s.files),
        config.store.shown()
    );
    if config.secrets.key.is_some() || config.audit.key.is_some() {
        println!(
            "note: this configuration sets secrets.key or audit.key; they must be the keys the exported installation used"
        );
    }
    Ok(())
}

fn list(files: &[String]) -> String {
    if files.is_empty() {
        "none".into()
    } else {
        files.join(", ")
    }
}

/// Whether `path` is a logical export rather than a file backup.
fn is_export(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let n = f.read(&mut head)?;
    Ok(head[..n].starts_with(b"twinhub-export"))
}
