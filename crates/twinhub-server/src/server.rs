//! Wiring: binds the listeners, opens the store and registry, starts the
//! background jobs and serves until shutdown. `run` is what the binary and
//! the integration tests call, on port 0 in tests.
//!
//! May call: every module.

use crate::api::{self, AppInner, AppState};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::ServerMetrics;
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::store::{DirLock, Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use twinhub_model::time::parse_duration;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({flag}): {cause}")]
    Bind {
        addr: String,
        flag: &'static str,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

pub struct Listeners {
    pub http: TcpListener,
    pub mqtt: Option<TcpListener>,
    pub mqtts: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    pub https: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
}

impl Listeners {
    /// Binds the configured addresses; a taken address fails with the flag
    /// to change.
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        let http = bind_one(&config.http.listen, "--http-listen").await?;
        let mqtt = match config.mqtt.listen.trim() {
            "" => None,
            addr => Some(bind_one(addr, "--mqtt-listen").await?),
        };
        let mqtts = bind_tls(
            config,
            &config.mqtt.tls_listen,
            "--mqtt-tls-listen",
            config.tls.client_ca.as_deref(),
        )
        .await?;
        let https = bind_tls(config, &config.http.tls_listen, "--http-tls-listen", None).await?;
        Ok(Listeners {
            http,
            mqtt,
            mqtts,
            https,
        })
    }
}

async fn bind_tls(
    config: &Config,
    addr: &str,
    flag: &'static str,
    client_ca: Option<&std::path::Path>,
) -> Result<Option<(TcpListener, tokio_rustls::TlsAcceptor)>, ServerError> {
    if addr.trim().is_empty() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Err(ServerError::Tls(crate::tls::TlsError::Config(format!(
            "{flag} needs --tls-cert and --tls-key"
        ))));
    };
    let cfg = crate::tls::server_config_with_clients(cert, key, client_ca)?;
    Ok(Some((
        bind_one(addr.trim(), flag).await?,
        tokio_rustls::TlsAcceptor::from(cfg),
    )))
}

/// The raw-frame sockets the configuration asks for (UDP, TCP).
async fn bind_frames(
    config: &Config,
) -> Result<(Option<tokio::net::UdpSocket>, Option<TcpListener>), ServerError> {
    let udp = match config.ingest.udp_listen.trim() {
        "" => None,
        addr => {
            let socket =
                tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(|cause| ServerError::Bind {
                        addr: addr.to_string(),
                        flag: "ingest.udp_listen (TWINHUB_INGEST_UDP_LISTEN)",
                        cause,
                    })?;
            crate::ingest::frames::enlarge_receive_buffer(&socket, 8 << 20);
            Some(socket)
        }
    };
    let tcp = match config.ingest.tcp_listen.trim() {
        "" => None,
        addr => Some(bind_one(addr, "ingest.tcp_listen (TWINHUB_INGEST_TCP_LISTEN)").await?),
    };
    Ok((udp, tcp))
}

async fn bind_one(addr: &str, flag: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| ServerError::Bind {
            addr: addr.to_string(),
            flag,
            cause,
        })
}

/// What a running server tells its starter once it is ready.
#[derive(Clone)]
pub struct Ready {
    pub http: SocketAddr,
    pub mqtt: Option<SocketAddr>,
    pub mqtts: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// The raw-frame UDP socket, when configured.
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// A system-admin bearer token valid only inside this process (the
    /// CLI drives a server it started in-process through the API with it).
    pub local_token: String,
    /// The bootstrap admin password when this start generated it.
    pub generated_admin_password: Option<String>,
    /// The server's store (in-process starters: benchmarks and tests).
    pub store: Store,
}

pub use crate::ports::PORTS_FILE;
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

/// Runs the server until `shutdown` resolves, then stops accepting,
/// finishes in-flight requests, commits everything queued and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: Option<oneshot::Sender<Ready>>,
) -> Result<(), ServerError> {
    let dir = config.data_dir.clone();
    let opts = config.store_options();
    let mut shutdown = Box::pin(shutdown);
    // Bound before the store opens: a cluster replica relays frames too.
    let (udp_socket, tcp_listener) = bind_frames(&config).await?;
    let (store, announcer) = if config.cluster.enabled() {
        // Primary or replica: see `cluster`.
        let node = config.cluster.node_name(listeners.http.local_addr()?);
        let subject = config.cluster.subject(&config.store.schema);
        use crate::cluster::{open_when_primary, Membership, Opened};
        let member = Membership {
            node: &node,
            nats: config.cluster.nats.trim(),
            subject: &subject,
            http: &listeners.http,
            mqtt: listeners.mqtt.as_ref(),
            https: listeners.https.as_ref(),
            mqtts: listeners.mqtts.as_ref(),
            udp: udp_socket.as_ref(),
            tcp: tcp_listener.as_ref(),
            forward_key: config.forward_key(),
            decoding: crate::cluster::Decoding {
                limits: config.decode_limits(),
                max_body: config.http.max_ingest_body,
            },
        };
        match open_when_primary(&dir, opts, clock.clone(), member, &mut shutdown).await? {
            Opened::Primary(store, announcer) => (store, Some(announcer)),
            Opened::Stopped => return Ok(()),
        }
    } else {
        let lock = DirLock::acquire_within(&dir, Duration::from_secs(1))?;
        let clock = clock.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(lock, opts, clock))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        (store, None)
    };
    let settings = config.auth_settings();
    let (registry, boot) = Registry::open(
        store.clone(),
        clock.clone(),
        settings,
        config.admin_password.clone(),
    )
    .await?;
    let registry = Arc::new(registry);
    if let Some(pw) = &boot.generated_password {
        write_private(&dir.join(INITIAL_PASSWORD_FILE), pw)?;
    }
    let metrics = Arc::new(ServerMetrics::default());
    let events = store.events().clone();
    let twins = crate::twins::TwinGraphs::load(store.clone(), clock.clone())?;
    let audit =
        crate::audit::AuditLog::open(store.clone(), clock.clone(), config.audit.key.as_deref())?;
    let quotas = crate::quotas::Quotas::load(store.clone(), clock.clone())?;
    let ml = crate::ml::MlModels::load(store.clone(), clock.clone(), config.ml_settings())?;
    let bindings = crate::ml::bindings::Bindings::load(store.clone())?;
    let lookup_bindings: crate::rules::BindingLookup = {
        let bindings = bindings.clone();
        Arc::new(move |tenant: &str, id: &str| {
            bindings
                .get(tenant, id)
                .map(|b| crate::rules::BindingOutputs {
                    model: b.model.clone(),
                    prediction: b.outputs.prediction.clone(),
                    lower: b.outputs.lower.clone(),
                    upper: b.outputs.upper.clone(),
                })
        })
    };
    let rules =
        crate::rules::RuleBook::load(store.clone(), clock.clone(), &twins, lookup_bindings)?;
    let alarms = crate::rules::alarms::Alarms::load(store.clone(), clock.clone())?;
    let secrets = Arc::new(crate::secrets::SecretBox::open(
        store.clone(),
        clock.clone(),
        config.secrets.key.as_deref(),
    )?);
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        metrics.clone(),
        clock.clone(),
        twins.clone(),
        quotas.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let layouts = crate::ingest::frames::Layouts::load(store.clone(), twins.clone())?;
    let routes = crate::routes::RouteBook::start(crate::routes::RouteDeps {
        store: store.clone(),
        twins: twins.clone(),
        secrets: secrets.clone(),
        clock: clock.clone(),
        backpressure: pipeline.backpressure.clone(),
        alarms: alarms.clone(),
        shutdown: stop_rx.clone(),
    })?;
    let connectors = crate::connectors::ConnectorBook::start(crate::connectors::ConnectorDeps {
        store: store.clone(),
        pipeline: pipeline.clone(),
        secrets: secrets.clone(),
        events: events.clone(),
        registry: registry.clone(),
        layouts: layouts.clone(),
        clock: clock.clone(),
        data_dir: dir.clone(),
        shutdown: stop_rx.clone(),
    })?;
    let state = AppState(Arc::new(AppInner {
        decode_limits: config.decode_limits(),
        forward_key: config.forward_key(),
        queue_wait: Config::duration(&config.ingest.queue_wait),
        config,
        store: store.clone(),
        registry: registry.clone(),
        pipeline,
        events,
        metrics,
        clock,
        ready: Default::default(),
        shutdown: stop_rx,
        mqtt: Default::default(),
        twins,
        audit,
        limiter: Default::default(),
        quotas,
        secrets,
        ml,
        bindings,
        rules,
        alarms,
        routes,
        connectors,
        layouts,
        listeners: Default::default(),
    }));

    let http_addr = listeners.http.local_addr()?;
    let mqtt_addr = listeners
        .mqtt
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let mqtts_addr = listeners
        .mqtts
        .as_ref()
        .map(|(l, _)| l.local_addr())
        .transpose()?;
    let https_addr = listeners
        .https
        .as_ref()
        .map(|(l, _)| l.local_addr())
        .transpose()?;
    let mut jobs = spawn_jobs(state.clone());
    jobs.push(tokio::spawn(crate::ml::soft_sensor::run(
        state.bindings.clone(),
        state.ml.clone(),
        state.pipeline.clone(),
        state.store.clone(),
        state.twins.clone(),
        state.events.clone(),
        state.shutdown.clone(),
    )));
    if listeners.mqtt.is_some() || listeners.mqtts.is_some() {
        let broker = crate::mqtt::Broker::open(
            crate::mqtt::BrokerDeps {
                registry: state.registry.clone(),
                pipeline: state.pipeline.clone(),
                quotas: state.quotas.clone(),
                metrics: state.metrics.clone(),
                store: state.store.clone(),
                clock: state.clock.clone(),
                decode_limits: state.decode_limits,
                shutdown: state.shutdown.clone(),
            },
            crate::mqtt::broker::Settings {
                forward_key: state.forward_key.clone(),
                ..crate::mqtt::broker::Settings::from_config(&state.config.mqtt)
            },
            state.config.auth_settings().cost,
        )
        .await?;
        *state.mqtt.write().expect("mqtt") = Some(broker.clone());
        state.routes.attach_broker(&broker);
        jobs.push(tokio::spawn(crate::mqtt::fanout::deliver_telemetry(
            broker.clone(),
            state.events.clone(),
            state.shutdown.clone(),
        )));
        if let Some(l) = listeners.mqtt {
            jobs.push(tokio::spawn(crate::mqtt::serve(
                broker.clone(),
                l,
                state.shutdown.clone(),
            )));
        }
        if let Some((l, acceptor)) = listeners.mqtts {
            jobs.push(tokio::spawn(crate::mqtt::serve_tls(
                broker,
                l,
                acceptor,
                state.shutdown.clone(),
            )));
        }
    }
    jobs.push(crate::rules::engine::spawn(
        crate::rules::engine::Engine::new(crate::rules::engine::EngineDeps {
            book: state.rules.clone(),
            alarms: state.alarms.clone(),
            twins: state.twins.clone(),
            store: state.store.clone(),
            clock: state.clock.clone(),
            pipeline: state.pipeline.clone(),
            broker: state.broker(),
            settings: state.config.rules.clone(),
            drift: {
                let ml = state.ml.clone();
                Arc::new(move || ml.drift_gauges())
            },
        }),
        state.shutdown.clone(),
    ));
    let app = api::router(state.clone());
    let mut stop_for_serve = state.shutdown.clone();
    let https = listeners.https.map(|(l, acceptor)| {
        let mut stop = state.shutdown.clone();
        let app = app
            .clone()
            .into_make_service_with_connect_info::<crate::tls::PeerAddr>();
        let timeout = Config::duration(&state.config.mqtt.connect_timeout);
        async move {
            let l = crate::tls::TlsListener::new(l, acceptor, timeout)?;
            axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }
    });
    let app = app.into_make_service_with_connect_info::<crate::tls::PeerAddr>();
    let serve =
        axum::serve(crate::tls::plain(listeners.http), app).with_graceful_shutdown(async move {
            let _ = stop_for_serve.wait_for(|s| *s).await;
        });
    let serve = tokio::spawn(async move {
        match https {
            Some(https) => {
                let (a, b) = tokio::join!(serve, https);
                a.and(b)
            }
            None => serve.await,
        }
    });

    // Raw frames over UDP and TCP, when configured.
    let mut sources = std::collections::HashMap::new();
    for (ip, device) in &state.config.ingest.frame_sources {
        let addr: std::net::IpAddr = ip.parse().map_err(|_| ServerError::Bind {
            addr: ip.clone(),
            flag: "ingest.frame_sources (an IP address per device)",
            cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an IP address"),
        })?;
        sources.insert(addr, device.clone());
    }
    let frame_deps = || crate::ingest::frames::FrameDeps {
        registry: state.registry.clone(),
        pipeline: state.pipeline.clone(),
        layouts: state.layouts.clone(),
        metrics: state.metrics.clone(),
        limits: state.decode_limits,
        wait: state.queue_wait,
        sources: sources.clone(),
        forward_key: state.forward_key.clone(),
    };
    let udp_addr = match udp_socket {
        None => None,
        Some(socket) => {
            let bound = socket.local_addr()?;
            jobs.push(tokio::spawn(crate::ingest::frames::serve_udp(
                socket,
                frame_deps(),
                state.shutdown.clone(),
            )));
            Some(bound)
        }
    };
    let tcp_addr = match tcp_listener {
        None => None,
        Some(listener) => {
            let bound = listener.local_addr()?;
            jobs.push(tokio::spawn(crate::ingest::frames::serve_tcp(
                listener,
                frame_deps(),
                state.shutdown.clone(),
            )));
            Some(bound)
        }
    };
    let ports = crate::ports::write(
        &dir,
        &[
            ("http", Some(http_addr)),
            ("mqtt", mqtt_addr),
            ("mqtts", mqtts_addr),
            ("https", https_addr),
            ("udp", udp_addr),
            ("tcp", tcp_addr),
        ],
        &[],
    )?;
    let _ = state.listeners.set(ports);
    // A cluster's primary says where it is, for the replicas to forward to.
    let cluster = &state.config.cluster;
    if let Some(a) = &announcer {
        a.serving(crate::cluster::Serving {
            http: cluster.advertised(http_addr),
            mqtt: mqtt_addr.map(|m| cluster.advertised(m)),
            udp: udp_addr.map(|u| cluster.advertised(u)),
            tcp: tcp_addr.map(|t| cluster.advertised(t)),
        });
    }
    state.ready.store(true, Ordering::SeqCst);
    tracing::info!(http = %http_addr, mqtt = ?mqtt_addr, data_dir = %dir.display(), "twinhub is ready");
    if let Some(tx) = on_ready {
        let _ = tx.send(Ready {
            http: http_addr,
            mqtt: mqtt_addr,
            mqtts: mqtts_addr,
            https: https_addr,
            udp: udp_addr,
            tcp: tcp_addr,
            local_token: state.registry.mint_local_token(),
            generated_admin_password: boot.generated_password.clone(),
            store: store.clone(),
        });
    }

    // A node that lost the store's writer lock to another stops rather
    // than serve what it holds in memory (see `cluster`).
    let lost = {
        let store = store.clone();
        let announcer = announcer.as_ref();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if store.health().writer_lock_lost.load(Ordering::SeqCst) {
                    return;
                }
                if announcer.is_some_and(|a| a.superseded()) {
                    return;
                }
            }
        }
    };
    let lost_lock = tokio::select! {
        _ = &mut shutdown => false,
        _ = lost => true,
    };
    if lost_lock {
        tracing::error!(
            "another node is the primary now; this node stops (restart it to serve as a replica)"
        );
    }
    drop(announcer);
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    state.ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), serve).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server ended with an error"),
        Err(_) => tracing::warn!("requests still open after 10 s; closing them"),
        _ => {}
    }
    for j in jobs {
        j.abort();
    }
    // Connections see the shutdown signal and close; give them a moment to
    // acknowledge what became durable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state.mqtt_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.mqtt.write().expect("mqtt").take();
    if let Err(e) = state.registry.persist_last_seen(false).await {
        tracing::warn!(error = %e, "could not persist last-seen times");
    }
    if let Err(e) = state.quotas.save_points().await {
        tracing::warn!(error = %e, "could not save quota counters");
    }
    let _ = std::fs::remove_file(dir.join(PORTS_FILE));
    tokio::task::spawn_blocking(move || store.close())
        .await
        .ok();
    if lost_lock {
        return Err(ServerError::Io(std::io::Error::other(
            "stopped: another node took the store's writer lock",
        )));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

fn spawn_jobs(state: AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut jobs = Vec::new();
    let q = state.quotas.clone();
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tick.tick().await;
            let q = q.clone();
            let _ = tokio::task::spawn_blocking(move || q.measure_storage()).await;
        }
    }));
    let q = state.quotas.clone();
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            if let Err(e) = q.save_points().await {
                tracing::warn!(error = %e, "could not save quota counters");
            }
        }
    }));
    let timeout = parse_duration(&state.config.devices.inactivity_timeout).unwrap_or(600_000_000);
    let s = state.clone();
    jobs.push(tokio::spawn(async move {
        let period = Duration::from_micros((timeout / 4).clamp(50_000, 1_000_000) as u64);
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            s.pipeline
                .sweep_inactive(&s.registry.all_devices(), timeout);
        }
    }));
    let s = state;
    jobs.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = s.registry.persist_last_seen(true).await {
                tracing::warn!(error = %e, "could not persist last-seen times");
            }
        }
    }));
    jobs
}

/// Writes ports.json (atomically): each bound listener's address.
fn write_private(path: &PathBuf, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")
}

/// A server running in this process (tests, demo, bench).
pub struct ServerHandle {
    pub ready: Ready,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    pub async fn start(config: Config, clock: SharedClock) -> Result<ServerHandle, ServerError> {
        let listeners = Listeners::bind(&config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(run(
            config,
            listeners,
            clock,
            async move {
                let _ = stopped.await;
            },
            Some(ready_tx),
        ));
        match ready_rx.await {
            Ok(ready) => Ok(ServerHandle {
                ready,
                stop: Some(stop),
                task,
            }),
            Err(_) => Err(task
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .err()
                .unwrap_or_else(|| {
                    ServerError::Io(std::io::Error::other("server stopped before it was ready"))
                })),
        }
    }

    /// Graceful shutdown; returns once the data directory is released.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}
