//! Admin CLI: devices, users, API keys, tenants, backup and restore.
//!
//! Every change goes through the HTTP API, so validation, audit and the
//! server's caches have one path: when a server holds the data directory
//! the CLI calls it (found via ports.json, credentials from the
//! environment); otherwise it starts the server in-process on a loopback
//! port for the duration of the command and calls that with a token that
//! exists only inside this process.

use crate::{load_config, ServerFlags};
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::PathBuf;
use twinhub_server::config::Config;
use twinhub_server::server::ServerHandle;
use twinhub_server::store::{DirLock, StoreError};

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
    /// Issue a new key (printed once); the old one works for --overlap.
    RotateKey {
        id: String,
        /// How long the old key keeps working, e.g. 1h (default: stops now).
        #[arg(long)]
        overlap: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user. The password is read from stdin with
    /// --password-stdin, else generated and printed once.
    Add {
        username: String,
        /// A role (repeat for several): tenant_admin, operator, viewer, …
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Set a user's password (ends their sessions).
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// List users.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Delete a user (their tokens stop working at once).
    Rm {
        username: String,
        #[command(flatten)]
        flags: ServerFlags,
    },
}

#[derive(Subcommand)]
pub enum ApiKeyCmd {
    /// Create an API key and print it (shown once).
    Create {
        name: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A permission (repeat for several), e.g. telemetry:read.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// RFC 3339 time or epoch milliseconds.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// List API keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Revoke an API key at once.
    Revoke {
        id: String,
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
}

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Add {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        flags: ServerFlags,
    },
}

/// The API the CLI talks to: a running server's, or one started here.
pub(crate) struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
    local: Option<ServerHandle>,
}

impl Api {
    async fn connect(file: Option<&PathBuf>, flags: &ServerFlags) -> anyhow::Result<Api> {
        let config = load_config(file, flags)?;
        let client = reqwest::Client::new();
        match DirLock::acquire(&config.data_dir) {
            Ok(lock) => {
                drop(lock);
                Api::start_local(config, client).await
            }
            Err(StoreError::Locked(_)) => Api::running(&config, client).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn start_local(mut config: Config, client: reqwest::Client) -> anyhow::Result<Api> {
        config.http.listen = "127.0.0.1:0".into();
        config.http.tls_listen.clear();
        config.mqtt.listen.clear();
        config.mqtt.tls_listen.clear();
        let server = ServerHandle::start(config, twinhub_server::clock::system()).await?;
        if let Some(pw) = &server.ready.generated_admin_password {
            println!("Created user 'admin' with password: {pw} (shown once)");
        }
        Ok(Api {
            base: format!("http://{}", server.ready.http),
            token: server.ready.local_token.clone(),
            client,
            local: Some(server),
        })
    }

    async fn running(config: &Config, client: reqwest::Client) -> anyhow::Result<Api> {
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
        let token = match std::env::var("TWINHUB_TOKEN") {
            Ok(t) => t,
            Err(_) => {
                let username = std::env::var("TWINHUB_USERNAME").unwrap_or_else(|_| "admin".into());
                let password = std::env::var("TWINHUB_PASSWORD")
                    .or_else(|_| std::env::var("TWINHUB_ADMIN_PASSWORD"))
                    .map_err(|_| anyhow!("a server is running: set TWINHUB_TOKEN, or TWINHUB_USERNAME and TWINHUB_PASSWORD, to go through its API"))?;
                login(&client, &base, &username, &password)
                    .await?
                    .map_err(|why| anyhow!("login refused: {why}"))?
            }
        };
        Ok(Api {
            base,
            token,
            client,
            local: None,
        })
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method.parse()?, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.answer(req).await
    }

    /// POSTs a multipart form (model uploads).
    pub(crate) async fn upload(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> anyhow::Result<Value> {
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .multipart(form);
        self.answer(req).await
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let r = req.send().await?;
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

    /// Every item of a paged list.
    pub(crate) async fn all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut url = format!("{path}{sep}limit=1000");
            if let Some(n) = &next {
                url.push_str(&format!("&next={n}"));
            }
            let page = self.call("GET", &url, None).await?;
            out.extend(page["value"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(n) => next = Some(n.to_string()),
                None => return Ok(out),
            }
        }
    }

    async fn close(self) -> anyhow::Result<()> {
        if let Some(s) = self.local {
            s.stop().await?;
        }
        Ok(())
    }
}

/// Runs one API conversation and always stops an in-process server.
pub(crate) async fn with_api<F>(
    file: Option<&PathBuf>,
    flags: &ServerFlags,
    f: F,
) -> anyhow::Result<()>
where
    F: for<'a> FnOnce(
        &'a Api,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
    >,
{
    let api = Api::connect(file, flags).await?;
    let res = f(&api).await;
    api.close().await?;
    res
}

/// Logs in through the API: the token, or the server's reason for refusing
/// (transport failures are the outer error).
pub(crate) async fn login(
    client: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<Result<String, String>> {
    let body: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| body["error"]["message"].to_string()))
}

pub(crate) fn tenant_q(tenant: &Option<String>) -> String {
    tenant
        .as_ref()
        .map(|t| format!("?tenant={t}"))
        .unwrap_or_default()
}

fn print_each(items: Vec<Value>, keys: &[&str]) {
    for v in items {
        let mut o = serde_json::Map::new();
        for k in keys {
            o.insert(k.to_string(), v[*k].clone());
        }
        println!("{}", Value::Object(o));
    }
}

/// A password from stdin (one line), or a generated one to print.
fn new_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\r', '\n']).to_string();
        if pw.is_empty() {
            bail!("--password-stdin: no password on standard input");
        }
        return Ok((pw, false));
    }
    loop {
        let pw = twinhub_server::auth::random_secret(15);
        if twinhub_server::auth::password::check_policy(&pw).is_ok() {
            return Ok((pw, true));
        }
    }
}

pub async fn device(file: Option<&PathBuf>, cmd: DeviceCmd) -> anyhow::Result<()> {
    let flags = match &cmd {
        DeviceCmd::Add { flags, .. }
        | DeviceCmd::List { flags, .. }
        | DeviceCmd::Rm { flags, .. }
        | DeviceCmd::RotateKey { flags, .. } => flags.clone(),
    };
    with_api(file, &flags, move |api| {
        Box::pin(async move {
            match cmd {
                DeviceCmd::Add {
                    id, twin, tenant, ..
                } => {
                    let v = api
                        .call(
                            "POST",
                            &format!("/api/v1/devices{}", tenant_q(&tenant)),
                            Some(json!({"id": id, "twin_id": twin})),
                        )
                        .await?;
                    println!("{v}");
                }
                DeviceCmd::List { tenant, .. } => {
                    let items = api
                        .all(&format!("/api/v1/devices{}", tenant_q(&tenant)))
                        .await?;
                    print_each(items, &["id", "twin_id", "enabled"]);
                }
                DeviceCmd::Rm { id, tenant, .. } => {
                    api.call(
                        "DELETE",
                        &format!("/api/v1/devices/{id}{}", tenant_q(&tenant)),
                        None,
                    )
                    .await?;
                    println!("{}", json!({"deleted": id}));
                }
                DeviceCmd::RotateKey {
                    id,
                    overlap,
                    tenant,
                    ..
                } => {
                    let v = api
                        .call(
                            "POST",
                            &format!("/api/v1/devices/{id}/key{}", tenant_q(&tenant)),
                            Some(json!({"overlap": overlap})),
                        )
                        .await?;
                    println!("{v}");
                }
            }
            Ok(())
        })
    })
    .await
}

pub async fn user(file: Option<&PathBuf>, cmd: UserCmd) -> anyhow::Result<()> {
    let flags = match &cmd {
        UserCmd::Add { flags, .. }
        | UserCmd::Passwd { flags, .. }
        | UserCmd::List { flags, .. }
        | UserCmd::Rm { flags, .. } => flags.clone(),
    };
    with_api(file, &flags, move |api| {
        Box::pin(async move {
            match cmd {
                UserCmd::Add { username, roles, tenant, password_stdin, .. } => {
                    let (password, generated) = new_password(password_stdin)?;
                    let mut v = api
                        .call(
                            "POST",
                            "/api/v1/users",
                            Some(json!({"username": username, "password": password, "roles": roles, "tenant": tenant})),
                        )
                        .await?;
                    if generated {
                        v["password"] = json!(password);
                    }
                    println!("{v}");
                }
                UserCmd::Passwd { username, password_stdin, .. } => {
                    let (password, generated) = new_password(password_stdin)?;
                    let mut v = api
                        .call("PATCH", &format!("/api/v1/users/{username}"), Some(json!({"password": password})))
                        .await?;
                    if generated {
                        v["password"] = json!(password);
                    }
                    println!("{v}");
                }
                UserCmd::List { tenant, .. } => {
                    let items = api.all(&format!("/api/v1/users{}", tenant_q(&tenant))).await?;
                    print_each(items, &["username", "tenant", "roles"]);
                }
                UserCmd::Rm { username, .. } => {
                    api.call("DELETE", &format!("/api/v1/users/{username}"), None).await?;
                    println!("{}", json!({"deleted": username}));
                }
            }
            Ok(())
        })
    })
    .await
}

pub async fn apikey(file: Option<&PathBuf>, cmd: ApiKeyCmd) -> anyhow::Result<()> {
    let flags = match &cmd {
        ApiKeyCmd::Create { flags, .. }
        | ApiKeyCmd::List { flags, .. }
        | ApiKeyCmd::Revoke { flags, .. } => flags.clone(),
    };
    with_api(file, &flags, move |api| {
        Box::pin(async move {
            match cmd {
                ApiKeyCmd::Create {
                    name,
                    roles,
                    permissions,
                    expires_at,
                    tenant,
                    ..
                } => {
                    let mut body = json!({"name": name, "roles": roles});
                    if !permissions.is_empty() {
                        body["permissions"] = json!(permissions);
                    }
                    if let Some(e) = expires_at {
                        body["expires_at"] = match e.parse::<i64>() {
                            Ok(ms) => json!(ms),
                            Err(_) => json!(e),
                        };
                    }
                    let v = api
                        .call(
                            "POST",
                            &format!("/api/v1/apikeys{}", tenant_q(&tenant)),
                            Some(body),
                        )
                        .await?;
                    println!("{v}");
                }
                ApiKeyCmd::List { tenant, .. } => {
                    let items = api
                        .all(&format!("/api/v1/apikeys{}", tenant_q(&tenant)))
                        .await?;
                    print_each(
                        items,
                        &[
                            "id",
                            "name",
                            "roles",
                            "permissions",
                            "expires_at",
                            "last_used",
                            "revoked",
                        ],
                    );
                }
                ApiKeyCmd::Revoke { id, tenant, .. } => {
                    api.call(
                        "DELETE",
                        &format!("/api/v1/apikeys/{id}{}", tenant_q(&tenant)),
                        None,
                    )
                    .await?;
                    println!("{}", json!({"revoked": id}));
                }
            }
            Ok(())
        })
    })
    .await
}

pub async fn tenant(file: Option<&PathBuf>, cmd: TenantCmd) -> anyhow::Result<()> {
    let flags = match &cmd {
        TenantCmd::Add { flags, .. } | TenantCmd::List { flags } => flags.clone(),
    };
    with_api(file, &flags, move |api| {
        Box::pin(async move {
            match cmd {
                TenantCmd::Add { id, name, .. } => {
                    let name = name.unwrap_or_else(|| id.clone());
                    let v = api
                        .call(
                            "POST",
                            "/api/v1/tenants",
                            Some(json!({"id": id, "name": name})),
                        )
                        .await?;
                    println!("{v}");
                }
                TenantCmd::List { .. } => {
                    print_each(api.all("/api/v1/tenants").await?, &["id", "name"]);
                }
            }
            Ok(())
        })
    })
    .await
}

/// One API call through the running (or an in-process) server; prints the
/// answer.
pub async fn call_and_print(
    file: Option<&PathBuf>,
    flags: &ServerFlags,
    method: &'static str,
    path: String,
    body: Option<Value>,
) -> anyhow::Result<()> {
    with_api(file, flags, move |api| {
        Box::pin(async move {
            let v = api.call(method, &path, body).await?;
            println!("{v}");
            Ok(())
        })
    })
    .await
}
