//! Admin CLI: devices, backup and restore. Works on the data directory
//! directly while no server holds its lock; otherwise goes through the
//! running server's HTTP API (found via ports.json), so the server's
//! caches never miss a change.

use crate::{load_config, ServerFlags};
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use twinhub_server::config::Config;
use twinhub_server::registry::Registry;
use twinhub_server::store::{self, DirLock, Store, StoreError};

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// Create a device and print its key (shown once).
    Add {
        id: String,
        /// The twin its telemetry updates (default: its own id).
        #[arg(long)]
        twin: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// List devices.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Delete a device.
    Rm {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
}

enum Target {
    Direct(Store, Registry),
    Http {
        base: String,
        token: String,
        client: reqwest::Client,
    },
}

async fn target(config: &Config) -> anyhow::Result<Target> {
    match DirLock::acquire(&config.data_dir) {
        Ok(lock) => {
            let store = {
                let opts = config.store_options();
                tokio::task::spawn_blocking(move || {
                    Store::open(lock, opts, twinhub_server::clock::system())
                })
                .await??
            };
            let settings = config.auth_settings();
            let (reg, boot) = Registry::open(
                store.clone(),
                twinhub_server::clock::system(),
                settings,
                config.admin_password.clone(),
            )
            .await?;
            if let Some(pw) = boot.generated_password {
                println!("Created user 'admin' with password: {pw} (shown once)");
            }
            Ok(Target::Direct(store, reg))
        }
        Err(StoreError::Locked(_)) => {
            let ports: Value = serde_json::from_slice(
                &std::fs::read(config.data_dir.join(twinhub_server::server::PORTS_FILE))
                    .context("a server holds the data directory but ports.json is missing")?,
            )?;
            let base = format!(
                "http://{}",
                ports["http"]
                    .as_str()
                    .ok_or_else(|| anyhow!("ports.json has no http address"))?
            );
            let client = reqwest::Client::new();
            let token = match std::env::var("TWINHUB_TOKEN") {
                Ok(t) => t,
                Err(_) => {
                    let username =
                        std::env::var("TWINHUB_USERNAME").unwrap_or_else(|_| "admin".into());
                    let password = std::env::var("TWINHUB_PASSWORD")
                        .or_else(|_| std::env::var("TWINHUB_ADMIN_PASSWORD"))
                        .map_err(|_| anyhow!("a server is running: set TWINHUB_TOKEN, or TWINHUB_USERNAME and TWINHUB_PASSWORD, to go through its API"))?;
                    let r = client
                        .post(format!("{base}/api/v1/auth/login"))
                        .json(&json!({"username": username, "password": password}))
                        .send()
                        .await?;
                    let body: Value = r.json().await?;
                    body["access_token"]
                        .as_str()
                        .ok_or_else(|| anyhow!("login refused: {}", body["error"]["message"]))?
                        .to_string()
                }
            };
            Ok(Target::Http {
                base,
                token,
                client,
            })
        }
        Err(e) => Err(e.into()),
    }
}

async fn close(store: Store) {
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
}

async fn http(
    client: &reqwest::Client,
    req: reqwest::RequestBuilder,
    token: &str,
) -> anyhow::Result<Value> {
    let _ = client;
    let r = req.bearer_auth(token).send().await?;
    let status = r.status();
    let body: Value = if status == reqwest::StatusCode::NO_CONTENT {
        Value::Null
    } else {
        r.json().await.unwrap_or(Value::Null)
    };
    if !status.is_success() {
        bail!(
            "{}: {}",
            status,
            body["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        );
    }
    Ok(body)
}

fn tenant_q(tenant: &Option<String>) -> String {
    tenant
        .as_ref()
        .map(|t| format!("?tenant={t}"))
        .unwrap_or_default()
}

pub async fn device(file: Option<&PathBuf>, cmd: DeviceCmd) -> anyhow::Result<()> {
    let flags = match &cmd {
        DeviceCmd::Add { flags, .. }
        | DeviceCmd::List { flags, .. }
        | DeviceCmd::Rm { flags, .. } => flags.clone(),
    };
    let config = load_config(file, &flags)?;
    match (target(&config).await?, cmd) {
        (
            Target::Direct(store, reg),
            DeviceCmd::Add {
                id, twin, tenant, ..
            },
        ) => {
            let tenant = tenant.unwrap_or_else(|| "default".into());
            if !reg.tenant_exists(&tenant) {
                close(store).await;
                bail!("tenant {tenant} not found");
            }
            let res = reg.create_device(&tenant, &id, twin).await;
            close(store).await;
            let (dev, key) = res?;
            println!(
                "{}",
                json!({"id": dev.row.id, "twin_id": dev.row.twin_id, "tenant": tenant, "key": key})
            );
        }
        (Target::Direct(store, reg), DeviceCmd::List { tenant, .. }) => {
            let tenant = tenant.unwrap_or_else(|| "default".into());
            for d in reg.devices_of(&tenant, None, usize::MAX) {
                println!(
                    "{}",
                    json!({"id": d.row.id, "twin_id": d.row.twin_id, "enabled": d.row.enabled})
                );
            }
            close(store).await;
        }
        (Target::Direct(store, reg), DeviceCmd::Rm { id, tenant, .. }) => {
            let tenant = tenant.unwrap_or_else(|| "default".into());
            let found = reg.device_in(&tenant, &id).is_some();
            let res = if found {
                reg.delete_device(&id).await.map(|_| ())
            } else {
                Ok(())
            };
            close(store).await;
            res?;
            if !found {
                bail!("device {id} not found");
            }
            println!("{}", json!({"deleted": id}));
        }
        (
            Target::Http {
                base,
                token,
                client,
            },
            DeviceCmd::Add {
                id, twin, tenant, ..
            },
        ) => {
            let req = client
                .post(format!("{base}/api/v1/devices{}", tenant_q(&tenant)))
                .json(&json!({"id": id, "twin_id": twin}));
            println!("{}", http(&client, req, &token).await?);
        }
        (
            Target::Http {
                base,
                token,
                client,
            },
            DeviceCmd::List { tenant, .. },
        ) => {
            let mut next: Option<String> = None;
            loop {
                let mut url = format!("{base}/api/v1/devices?limit=1000");
                if let Some(t) = &tenant {
                    url.push_str(&format!("&tenant={t}"));
                }
                if let Some(n) = &next {
                    url.push_str(&format!("&next={n}"));
                }
                let page = http(&client, client.get(url), &token).await?;
                for d in page["value"].as_array().into_iter().flatten() {
                    println!(
                        "{}",
                        json!({"id": d["id"], "twin_id": d["twin_id"], "enabled": d["enabled"]})
                    );
                }
                match page["next"].as_str() {
                    Some(n) => next = Some(n.to_string()),
                    None => break,
                }
            }
        }
        (
            Target::Http {
                base,
                token,
                client,
            },
            DeviceCmd::Rm { id, tenant, .. },
        ) => {
            http(
                &client,
                client.delete(format!("{base}/api/v1/devices/{id}{}", tenant_q(&tenant))),
                &token,
            )
            .await?;
            println!("{}", json!({"deleted": id}));
        }
    }
    Ok(())
}

pub fn backup(file: Option<&PathBuf>, flags: &ServerFlags, dest: &Path) -> anyhow::Result<()> {
    let config = load_config(file, flags)?;
    let db = store::db::db_path(&config.data_dir);
    if !db.exists() {
        bail!("no store in {}", config.data_dir.display());
    }
    store::backup_file(&db, dest)?;
    println!("backup written to {}", dest.display());
    Ok(())
}

pub fn restore(file: Option<&PathBuf>, flags: &ServerFlags, src: &Path) -> anyhow::Result<()> {
    let config = load_config(file, flags)?;
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
