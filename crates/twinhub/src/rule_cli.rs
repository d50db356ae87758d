//! `twinhub rule` and `twinhub alarm`: rules from JSON files (as the API
//! takes them), and the alarm lifecycle from the command line — through
//! the running server's API, or an in-process one on the data directory.

use crate::admin::{call_and_print, tenant_q, with_api};
use crate::ServerFlags;
use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum RuleCmd {
    /// Create a rule from a JSON file (`-` reads standard input).
    Create {
        file: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Replace a rule's definition (a new version).
    Update {
        id: String,
        file: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// List rules with their status.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Show one rule with its status (evaluations, errors).
    Get {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Enable {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Disable {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Rm {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
}

#[derive(Subcommand)]
pub enum AlarmCmd {
    /// List alarms, newest first.
    List {
        /// active, cleared, unack, ack or an exact status.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        originator: Option<String>,
        /// With --originator: also the twins below it.
        #[arg(long)]
        subtree: bool,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Ack {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Clear {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Comment {
        id: String,
        text: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
}

pub(crate) fn read_json(p: &PathBuf) -> anyhow::Result<Value> {
    let bytes = if p.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        b
    } else {
        std::fs::read(p).with_context(|| format!("{}", p.display()))?
    };
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", p.display()))
}

pub async fn rule(file: Option<&PathBuf>, cmd: RuleCmd) -> anyhow::Result<()> {
    match cmd {
        RuleCmd::Create {
            file: f,
            tenant,
            flags,
        } => {
            let body = read_json(&f)?;
            let path = format!("/api/v1/rules{}", tenant_q(&tenant));
            call_and_print(file, &flags, "POST", path, Some(body)).await
        }
        RuleCmd::Update {
            id,
            file: f,
            tenant,
            flags,
        } => {
            let body = read_json(&f)?;
            let path = format!("/api/v1/rules/{id}{}", tenant_q(&tenant));
            call_and_print(file, &flags, "PUT", path, Some(body)).await
        }
        RuleCmd::List { tenant, flags } => {
            with_api(file, &flags, move |api| {
                Box::pin(async move {
                    for r in api
                        .all(&format!("/api/v1/rules{}", tenant_q(&tenant)))
                        .await?
                    {
                        println!("{r}");
                    }
                    Ok(())
                })
            })
            .await
        }
        RuleCmd::Get { id, tenant, flags } => {
            let path = format!("/api/v1/rules/{id}{}", tenant_q(&tenant));
            call_and_print(file, &flags, "GET", path, None).await
        }
        RuleCmd::Enable { id, tenant, flags } => {
            let path = format!("/api/v1/rules/{id}{}", tenant_q(&tenant));
            call_and_print(file, &flags, "PATCH", path, Some(json!({"enabled": true}))).await
        }
        RuleCmd::Disable { id, tenant, flags } => {
            let path = format!("/api/v1/rules/{id}{}", tenant_q(&tenant));
            call_and_print(file, &flags, "PATCH", path, Some(json!({"enabled": false}))).await
        }
        RuleCmd::Rm { id, tenant, flags } => {
            let path = format!("/api/v1/rules/{id}{}", tenant_q(&tenant));
            call_and_print(file, &flags, "DELETE", path, None).await
        }
    }
}

pub async fn alarm(file: Option<&PathBuf>, cmd: AlarmCmd) -> anyhow::Result<()> {
    match cmd {
        AlarmCmd::List {
            status,
            originator,
            subtree,
            tenant,
            flags,
        } => {
            let mut q: Vec<String> = Vec::new();
            if let Some(s) = status {
                q.push(format!("status={s}"));
            }
            if let Some(o) = originator {
                q.push(format!("originator={o}"));
            }
            if subtree {
                q.push("subtree=true".into());
            }
            if let Some(t) = tenant {
                q.push(format!("tenant={t}"));
            }
            let path = format!("/api/v1/alarms?{}", q.join("&"));
            with_api(file, &flags, move |api| {
                Box::pin(async move {
                    for a in api.all(&path).await? {
                        println!("{a}");
                    }
                    Ok(())
                })
            })
            .await
        }
        AlarmCmd::Ack { id, tenant, flags } => {
            let path = format!("/api/v1/alarms/{id}/ack{}", tenant_q(&tenant));
            call_and_print(file, &flags, "POST", path, Some(json!({}))).await
        }
        AlarmCmd::Clear { id, tenant, flags } => {
            let path = format!("/api/v1/alarms/{id}/clear{}", tenant_q(&tenant));
            call_and_print(file, &flags, "POST", path, Some(json!({}))).await
        }
        AlarmCmd::Comment {
            id,
            text,
            tenant,
            flags,
        } => {
            let path = format!("/api/v1/alarms/{id}/comments{}", tenant_q(&tenant));
            call_and_print(file, &flags, "POST", path, Some(json!({"text": text}))).await
        }
    }
}
