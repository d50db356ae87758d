//! `twinhub route`: routes from JSON files (as the API takes them), their
//! status, pause/resume, a test event and the dead letters — through the
//! running server's API, or an in-process one on the data directory.

use crate::admin::{call_and_print, tenant_q, with_api};
use crate::rule_cli::read_json;
use crate::ServerFlags;
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum RouteCmd {
    /// Create a route from a JSON file (`-` reads standard input).
    Create {
        file: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Create or replace a route (a new version; it resumes where it was).
    Put {
        id: String,
        file: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// List routes with their status.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// One route: status, lag, delivered, retried, dead letters, last error.
    Get {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Pause {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    Resume {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Send one test event straight to the route's sink.
    Test {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// List the events the route gave up on.
    Deadletters {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Send the dead letters again.
    Replay {
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

pub async fn route(file: Option<&PathBuf>, cmd: RouteCmd) -> anyhow::Result<()> {
    let one = |id: &str, tail: &str, tenant: &Option<String>| {
        format!("/api/v1/routes/{id}{tail}{}", tenant_q(tenant))
    };
    match cmd {
        RouteCmd::Create {
            file: f,
            tenant,
            flags,
        } => {
            let body = read_json(&f)?;
            let path = format!("/api/v1/routes{}", tenant_q(&tenant));
            call_and_print(file, &flags, "POST", path, Some(body)).await
        }
        RouteCmd::Put {
            id,
            file: f,
            tenant,
            flags,
        } => {
            let body = read_json(&f)?;
            call_and_print(file, &flags, "PUT", one(&id, "", &tenant), Some(body)).await
        }
        RouteCmd::List { tenant, flags } => {
            with_api(file, &flags, move |api| {
                Box::pin(async move {
                    for r in api
                        .all(&format!("/api/v1/routes{}", tenant_q(&tenant)))
                        .await?
                    {
                        println!("{r}");
                    }
                    Ok(())
                })
            })
            .await
        }
        RouteCmd::Get { id, tenant, flags } => {
            call_and_print(file, &flags, "GET", one(&id, "", &tenant), None).await
        }
        RouteCmd::Pause { id, tenant, flags } => {
            call_and_print(
                file,
                &flags,
                "PATCH",
                one(&id, "", &tenant),
                Some(json!({"paused": true})),
            )
            .await
        }
        RouteCmd::Resume { id, tenant, flags } => {
            call_and_print(
                file,
                &flags,
                "PATCH",
                one(&id, "", &tenant),
                Some(json!({"paused": false})),
            )
            .await
        }
        RouteCmd::Test { id, tenant, flags } => {
            call_and_print(
                file,
                &flags,
                "POST",
                one(&id, "/test", &tenant),
                Some(json!({})),
            )
            .await
        }
        RouteCmd::Deadletters { id, tenant, flags } => {
            let path = one(&id, "/deadletters", &tenant);
            with_api(file, &flags, move |api| {
                Box::pin(async move {
                    for d in api.all(&path).await? {
                        println!("{d}");
                    }
                    Ok(())
                })
            })
            .await
        }
        RouteCmd::Replay { id, tenant, flags } => {
            call_and_print(
                file,
                &flags,
                "POST",
                one(&id, "/deadletters/replay", &tenant),
                Some(json!({})),
            )
            .await
        }
        RouteCmd::Rm { id, tenant, flags } => {
            call_and_print(file, &flags, "DELETE", one(&id, "", &tenant), None).await
        }
    }
}
