//! The twinhub binary: `serve`, `demo`, `bench` and the admin CLI.

mod admin;
mod bench;
mod bench_auth;
mod bench_cluster;
mod bench_frames;
mod bench_ingest;
mod bench_load;
mod bench_ml;
mod bench_mqtt;
mod bench_opcua;
mod bench_routes;
mod bench_rules;
mod bench_sustained;
mod bench_twins;
mod demo;
mod model_cli;
mod opcua_sim;
mod route_cli;
mod rule_cli;
mod sim;
mod store_cli;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use twinhub_server::config::Config;

/// mimalloc instead of glibc's malloc: the MQTT path allocates and frees
/// small buffers per message on every worker, and glibc spent about a
/// third of the QoS 1 benchmark's CPU in `malloc`/`free` (stop 26 perf
/// profile); with mimalloc the same run carries ~1.5× the messages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter (`mimalloc.h`), linked in by `libmimalloc-sys`.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Two allocator settings, each left to the environment when it names it:
///
/// - Memory arenas are committed as pages are touched rather than up
///   front (mimalloc's default on Linux is eager): with 100k idle MQTT
///   connections the eager setting cost ~0.3 KB per connection and 15 MB
///   at start (`bench mqtt`: 4.12 → 3.78 KB per idle device, same
///   throughput). `MIMALLOC_ARENA_EAGER_COMMIT` wins.
/// - No transparent huge pages. mimalloc marks its arenas
///   `MADV_HUGEPAGE`, so the first touch of each fresh 2 MiB zeroes all of
///   it in the faulting thread. That thread was the store's writer,
///   between a group's commit and its acknowledgements: the first group
///   after each flush (a new head) took 10–24 ms instead of well under
///   one, a stall every few seconds on every client's ack under
///   `twinhub bench rules` (`RUST_LOG=twinhub_server::store=debug`,
///   "slow group", `head_ms`). Latency-bound servers (Redis, MongoDB) ask
///   for the same. The arena mimalloc reserved before `main` is already
///   marked, so the process opts out with `PR_SET_THP_DISABLE` (what
///   mimalloc itself does when `MIMALLOC_ALLOW_THP=0` is set).
///   `MIMALLOC_ALLOW_THP` wins.
fn tune_allocator() {
    /// Indices in mimalloc v3's `mi_option_t`.
    const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
    const ALLOW_THP: std::ffi::c_int = 43;
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: a plain option store; any value is valid for this option.
        unsafe { mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: a plain option store, and a prctl that takes no pointer.
        unsafe {
            mi_option_set(ALLOW_THP, 0);
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

#[derive(Parser)]
#[command(
    name = "twinhub",
    version,
    about = "Industrial IoT and digital twin platform in one binary"
)]
struct Cli {
    /// Configuration file (default: ./twinhub.toml if present).
    #[arg(long, global = true, env = "TWINHUB_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
pub struct ServerFlags {
    /// Data directory (the embedded store). Env: TWINHUB_DATA_DIR.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free port. Env: TWINHUB_HTTP_LISTEN.
    #[arg(long)]
    http_listen: Option<String>,
    /// MQTT listen address; port 0 picks a free port. Env: TWINHUB_MQTT_LISTEN.
    #[arg(long)]
    mqtt_listen: Option<String>,
    /// MQTT over TLS listen address (needs --tls-cert and --tls-key). Env: TWINHUB_MQTT_TLS_LISTEN.
    #[arg(long)]
    mqtt_tls_listen: Option<String>,
    /// HTTPS listen address (needs --tls-cert and --tls-key). Env: TWINHUB_HTTP_TLS_LISTEN.
    #[arg(long)]
    http_tls_listen: Option<String>,
    /// PEM certificate chain for TLS listeners. Env: TWINHUB_TLS_CERT.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS listeners. Env: TWINHUB_TLS_KEY.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA whose client certificates log devices in over MQTTS (CN = device id). Env: TWINHUB_TLS_CLIENT_CA.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Log filter, e.g. info or twinhub_server=debug.
    #[arg(long)]
    log_level: Option<String>,
}

impl ServerFlags {
    fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(d) = &self.data_dir {
            v.push(("data_dir", d.display().to_string()));
        }
        if let Some(a) = &self.http_listen {
            v.push(("http.listen", a.clone()));
        }
        if let Some(a) = &self.mqtt_listen {
            v.push(("mqtt.listen", a.clone()));
        }
        if let Some(a) = &self.mqtt_tls_listen {
            v.push(("mqtt.tls_listen", a.clone()));
        }
        if let Some(a) = &self.http_tls_listen {
            v.push(("http.tls_listen", a.clone()));
        }
        if let Some(c) = &self.tls_cert {
            v.push(("tls.cert", c.display().to_string()));
        }
        if let Some(k) = &self.tls_key {
            v.push(("tls.key", k.display().to_string()));
        }
        if let Some(c) = &self.tls_client_ca {
            v.push(("tls.client_ca", c.display().to_string()));
        }
        if let Some(f) = &self.log_format {
            v.push(("log.format", f.clone()));
        }
        if let Some(l) = &self.log_level {
            v.push(("log.level", l.clone()));
        }
        v
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServerFlags),
    /// Start a complete, populated system on free ports: simulated reactors
    /// reporting live, until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Measure ingest, compression and query speed on this machine.
    Bench(bench::BenchArgs),
    /// A simulated plant PLC as an OPC UA server (reactors with live
    /// values and writable setpoints), to try the OPC UA connector.
    OpcuaSim(opcua_sim::SimArgs),
    /// Manage devices (directly on the data directory when no server runs,
    /// else through the running server's API).
    #[command(subcommand)]
    Device(admin::DeviceCmd),
    /// Manage users (same rule as `device`).
    #[command(subcommand)]
    User(admin::UserCmd),
    /// Manage API keys (same rule as `device`).
    #[command(subcommand)]
    Apikey(admin::ApiKeyCmd),
    /// Manage tenants (system admin; same rule as `device`).
    #[command(subcommand)]
    Tenant(admin::TenantCmd),
    /// ML models: upload, package for the edge, list, activate.
    #[command(subcommand)]
    Model(model_cli::ModelCmd),
    /// Rules: create from JSON, list with status, update, enable, disable.
    #[command(subcommand)]
    Rule(rule_cli::RuleCmd),
    /// Alarms: list, acknowledge, clear, comment.
    #[command(subcommand)]
    Alarm(rule_cli::AlarmCmd),
    /// Routes: create from JSON, list with status, pause, resume, test,
    /// dead letters and replay.
    #[command(subcommand)]
    Route(route_cli::RouteCmd),
    /// Take a consistent copy of the store (safe while the server runs):
    /// the embedded file as a file, a PostgreSQL store as an export.
    Backup {
        file: PathBuf,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Replace the store with a backup or an export (the server must be
    /// stopped).
    Restore {
        file: PathBuf,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Write the whole store — every table and the data directory's key
    /// files — to one file that either store can import (safe while the
    /// server runs): SQLite to PostgreSQL and back.
    Export {
        file: PathBuf,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Read an export into this configuration's store, which must be new
    /// (the server must be stopped).
    Import {
        file: PathBuf,
        /// Replace whatever the store holds (as `restore` does).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        flags: ServerFlags,
    },
    /// Bring the store (embedded or PostgreSQL) to this binary's format
    /// and exit. Servers do it at start too, once however many nodes start
    /// together.
    Migrate(ServerFlags),
    /// Check a configuration (file, environment, flags) and print it.
    CheckConfig(ServerFlags),
    /// Verify a data directory's store: SQLite integrity, every chunk
    /// against its statistics, rollups and the batch log. Exits non-zero
    /// on any problem.
    Check(ServerFlags),
    /// Generate a local CA and a server certificate for the TLS listeners.
    Cert {
        /// Directory for ca.pem, ca-key.pem, server.pem, server-key.pem.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names and IP addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        /// Instead: issue a client certificate for this device id, signed
        /// by <out>/ca-key.pem (for MQTTS with tls.client_ca).
        #[arg(long)]
        client: Option<String>,
    },
}

pub fn load_config(file: Option<&PathBuf>, flags: &ServerFlags) -> anyhow::Result<Config> {
    Ok(Config::load(
        file.map(|p| p.as_path()),
        std::env::vars(),
        &flags.overrides(),
    )?)
}

pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // The OPC UA stack logs its own retries and settings at info/warn;
    // the connector reports what matters in its status (and logs it).
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},opcua_client=error,opcua_core=error,opcua_server=error,opcua_crypto=error",
            config.log.level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    // glibc's malloc still serves C code (SQLite's page cache and
    // statements): a fixed mmap threshold gives its large short-lived
    // buffers back to the OS when freed instead of raising glibc's
    // dynamic threshold and staying resident.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = rt.block_on(async move {
        match cli.command {
            Command::Serve(flags) => serve(cli.config.as_ref(), &flags).await,
            Command::Demo(args) => demo::run(cli.config.as_ref(), args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::OpcuaSim(args) => opcua_sim::run(args).await,
            Command::Device(cmd) => admin::device(cli.config.as_ref(), cmd).await,
            Command::User(cmd) => admin::user(cli.config.as_ref(), cmd).await,
            Command::Apikey(cmd) => admin::apikey(cli.config.as_ref(), cmd).await,
            Command::Tenant(cmd) => admin::tenant(cli.config.as_ref(), cmd).await,
            Command::Model(cmd) => model_cli::run(cli.config.as_ref(), cmd).await,
            Command::Rule(cmd) => rule_cli::rule(cli.config.as_ref(), cmd).await,
            Command::Alarm(cmd) => rule_cli::alarm(cli.config.as_ref(), cmd).await,
            Command::Route(cmd) => route_cli::route(cli.config.as_ref(), cmd).await,
            Command::Backup { file, flags } => store_cli::backup(cli.config.as_ref(), &flags, &file),
            Command::Check(flags) => store_cli::check(cli.config.as_ref(), &flags),
            Command::Migrate(flags) => store_cli::migrate(cli.config.as_ref(), &flags),
            Command::Restore { file, flags } => {
                store_cli::restore(cli.config.as_ref(), &flags, &file)
            }
            Command::Export { file, flags } => store_cli::export(cli.config.as_ref(), &flags, &file),
            Command::Import {
                file,
                replace,
                flags,
            } => store_cli::import(cli.config.as_ref(), &flags, &file, replace),
                        Command::Cert {
                out,
                client: Some(device),
                ..
            } => {
                let ca_key = std::fs::read_to_string(out.join("ca-key.pem"))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", out.join("ca-key.pem").display()))?;
                let (cert, key) = twinhub_server::tls::issue_client(&ca_key, &device)?;
                std::fs::write(out.join(format!("{device}.pem")), cert)?;
                twinhub_server::keyfile::write_private(&out.join(format!("{device}-key.pem")), key.as_bytes())?;
                println!("wrote {0}/{device}.pem and {0}/{device}-key.pem (0600): CN = {device}", out.display());
                println!("serve with --tls-client-ca {}/ca.pem; the device connects to MQTTS with client id {device} and no password", out.display());
                Ok(())
            }
            Command::Cert { out, hosts, .. } => {
                let g = twinhub_server::tls::generate(&hosts)?;
                twinhub_server::tls::write_generated(&out, &g)?;
                println!("wrote {0}/ca.pem, {0}/server.pem and their keys (0600) for {1}", out.display(), hosts.join(", "));
                println!("use: twinhub serve --tls-cert {0}/server.pem --tls-key {0}/server-key.pem --mqtt-tls-listen 127.0.0.1:8883", out.display());
                Ok(())
            }
            Command::CheckConfig(flags) => {
                let c = load_config(cli.config.as_ref(), &flags)?;
                println!(
                    "configuration OK: data_dir={} http.listen={} mqtt.listen={} store={}",
                    c.data_dir.display(),
                    c.http.listen,
                    c.mqtt.listen,
                    c.store.shown()
                );
                Ok(())
            }
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(file: Option<&PathBuf>, flags: &ServerFlags) -> anyhow::Result<()> {
    let config = load_config(file, flags)?;
    init_logging(&config);
    let listeners = twinhub_server::server::Listeners::bind(&config).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<twinhub_server::server::Ready>();
    let dir = config.data_dir.clone();
    let announce = tokio::spawn(async move {
        if let Ok(ready) = rx.await {
            if let Some(pw) = ready.generated_admin_password {
                println!("Created user 'admin' with password: {pw}");
                println!(
                    "(shown once; also saved to {}/initial-admin-password, mode 0600)",
                    dir.display()
                );
            }
        }
    });
    twinhub_server::server::run(
        config,
        listeners,
        twinhub_server::clock::system(),
        shutdown_signal(),
        Some(tx),
    )
    .await?;
    let _ = announce.await;
    Ok(())
}
