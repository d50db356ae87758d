//! `twinhub opcua-sim`: a simulated plant PLC as an OPC UA server (the
//! `async-opcua` server), to try the OPC UA connector without hardware and
//! to test and benchmark it. Each reactor `R{i}` has, in namespace
//! `urn:twinhub:reactors`: `R{i}.Temperature` (K, follows the setpoint),
//! `R{i}.Pressure` (bar), `R{i}.Running`, `R{i}.Mode`, a writable
//! `R{i}.Setpoint` (Double, 370), `R{i}.Level` (Int32, writable), and
//! `R{i}.Probe`, whose status cycles Good → Uncertain → Bad at every
//! update; plus `--tags` extra `R{i}.Tag{k}` values for load. Endpoints:
//! None, and Basic256Sha256 Sign and SignAndEncrypt; anonymous, or only
//! `--user`/`--password` when given.

use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::{AddressSpace, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    DataTypeId, DataValue, DateTime, MessageSecurityMode, NodeId, StatusCode, Variant,
};
use std::sync::Arc;
use std::time::Duration;

pub const NAMESPACE: &str = "urn:twinhub:reactors";

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:4840")]
    pub listen: String,
    /// Reactors to simulate.
    #[arg(long, default_value_t = 3)]
    pub reactors: usize,
    /// Extra numeric tags per reactor (`R{i}.Tag{k}`), for load.
    #[arg(long, default_value_t = 0)]
    pub tags: usize,
    /// How often values change, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Source timestamps this many seconds off the clock (a PLC with its
    /// own clock, or buffered values).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub time_offset_s: i64,
    /// Accept only this user (with --password) instead of anonymous.
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// Where the server keeps its certificate and trusted clients.
    #[arg(long)]
    pub pki_dir: Option<std::path::PathBuf>,
    /// Refuse client certificates not in `<pki-dir>/trusted` (default:
    /// trust every client, as a test bench does).
    #[arg(long)]
    pub strict_clients: bool,
}

fn node(ns: u16, r: usize, tag: &str) -> NodeId {
    NodeId::new(ns, format!("R{r}.{tag}"))
}

fn build_space(space: &mut AddressSpace, ns: u16, args: &SimArgs) {
    let plant = NodeId::new(ns, "Plant");
    space.add_folder(&plant, "Plant", "Plant", &NodeId::objects_folder_id());
    for r in 1..=args.reactors {
        let folder = NodeId::new(ns, format!("R{r}"));
        let name = format!("Reactor{r}");
        space.add_folder(&folder, name.as_str(), name.as_str(), &plant);
        let mut add = |tag: &str, ty: DataTypeId, v: Variant, writable: bool| {
            let b = VariableBuilder::new(&node(ns, r, tag), tag, tag)
                .data_type(ty)
                .value(v)
                .organized_by(&folder);
            let b = if writable { b.writable() } else { b };
            b.insert(space);
        };
        add("Temperature", DataTypeId::Double, 370.0.into(), false);
        add("Pressure", DataTypeId::Double, 2.0.into(), false);
        add("Running", DataTypeId::Boolean, true.into(), false);
        add("Mode", DataTypeId::String, "auto".into(), false);
        add("Setpoint", DataTypeId::Double, 370.0.into(), true);
        add("Level", DataTypeId::Int32, 50i32.into(), true);
        add("Probe", DataTypeId::Double, 0.0.into(), false);
        for k in 0..args.tags {
            add(&format!("Tag{k}"), DataTypeId::Double, 0.0.into(), false);
        }
    }
}

fn read_double(space: &AddressSpace, id: &NodeId) -> Option<f64> {
    use opcua::server::address_space::NodeType;
    match space.find(id)? {
        NodeType::Variable(v) => match v
            .value(
                opcua::types::TimestampsToReturn::Neither,
                &opcua::types::NumericRange::None,
                &opcua::types::DataEncoding::Binary,
                0.0,
            )
            .value?
        {
            Variant::Double(d) => Some(d),
            _ => None,
        },
        _ => None,
    }
}

/// Starts the simulator; the endpoint URL, the namespace index and the
/// server certificate (base64 DER) once it listens, and the task serving.
pub async fn start(
    args: SimArgs,
) -> anyhow::Result<(serde_json::Value, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let pki = match &args.pki_dir {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!("twinhub-opcua-sim-{}", addr.port())),
    };
    let mut ids: Vec<&str> = Vec::new();
    if args.user.is_none() {
        ids.push(ANONYMOUS_USER_TOKEN_ID);
    } else {
        ids.push("operator");
    }
    let mut b = ServerBuilder::new()
        .application_name("twinhub reactor simulator")
        .application_uri("urn:twinhub:opcua-sim")
        .product_uri("urn:twinhub:opcua-sim")
        .create_sample_keypair(true)
        .pki_dir(pki.clone())
        .host(addr.ip().to_string())
        .port(addr.port())
        .trust_client_certs(!args.strict_clients)
        .discovery_urls(vec!["/".to_owned()])
        .add_endpoint(
            "none",
            (
                "/",
                SecurityPolicy::None,
                MessageSecurityMode::None,
                &ids as &[&str],
            ),
        )
        .add_endpoint(
            "basic256sha256_sign",
            (
                "/",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::Sign,
                &ids as &[&str],
            ),
        )
        .add_endpoint(
            "basic256sha256_sign_encrypt",
            (
                "/",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
                &ids as &[&str],
            ),
        )
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE.to_owned(),
                ..Default::default()
            },
            "reactors",
        ));
    if let (Some(u), Some(p)) = (&args.user, &args.password) {
        b = b.add_user_token("operator", ServerUserToken::user_pass(u, p));
    }
    {
        let limits = b.limits_mut();
        limits.subscriptions.max_monitored_items_per_sub = 200_000;
        limits.operational.max_monitored_items_per_call = 10_000;
    }
    let (server, handle) = b
        .build()
        .map_err(|e| anyhow::anyhow!("OPC UA server settings: {e}"))?;
    let manager = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or_else(|| anyhow::anyhow!("no node manager"))?;
    let ns = handle
        .get_namespace_index(NAMESPACE)
        .ok_or_else(|| anyhow::anyhow!("no namespace"))?;
    build_space(&mut manager.address_space().write(), ns, &args);
    let cert = std::fs::read(pki.join("own/cert.der")).unwrap_or_default();
    use base64::Engine;
    let info = serde_json::json!({
        "endpoint": format!("opc.tcp://{addr}/"),
        "namespace": ns,
        "certificate": base64::engine::general_purpose::STANDARD.encode(cert),
    });
    let subs = handle.subscriptions().clone();
    let stop = handle.clone();
    let task = tokio::spawn(async move {
        let updater = tokio::spawn(update(manager, subs, ns, args));
        if let Err(e) = server.run_with(listener).await {
            tracing::error!(error = %e, "the OPC UA simulator stopped");
        }
        updater.abort();
        drop(stop);
    });
    Ok((info, task))
}

/// Moves every value once per interval.
async fn update(
    manager: Arc<SimpleNodeManager>,
    subs: Arc<opcua::server::SubscriptionCache>,
    ns: u16,
    args: SimArgs,
) {
    let statuses = [
        StatusCode::Good,
        StatusCode::UncertainLastUsableValue,
        StatusCode::BadSensorFailure,
    ];
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(10)));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let source = DateTime::from(DateTime::now().ticks() + args.time_offset_s * 10_000_000);
        let dv = |v: Variant, status: StatusCode| DataValue {
            value: Some(v),
            status: Some(status),
            source_timestamp: Some(source),
            server_timestamp: Some(DateTime::now()),
            ..Default::default()
        };
        let t = n as f64 * args.interval_ms as f64 / 1000.0;
        let mut values: Vec<(NodeId, DataValue)> = Vec::new();
        {
            let space = manager.address_space().read();
            for r in 1..=args.reactors {
                let phase = r as f64;
                let sp = read_double(&space, &node(ns, r, "Setpoint")).unwrap_or(370.0);
                let wave = (t / 60.0 * std::f64::consts::TAU + phase).sin();
                let round = |x: f64| (x * 1000.0).round() / 1000.0;
                values.push((
                    node(ns, r, "Temperature"),
                    dv(round(sp + 3.0 * wave).into(), StatusCode::Good),
                ));
                values.push((
                    node(ns, r, "Pressure"),
                    dv(round(2.0 + 0.1 * wave).into(), StatusCode::Good),
                ));
                values.push((
                    node(ns, r, "Probe"),
                    dv((n as f64).into(), statuses[(n % 3) as usize]),
                ));
                for k in 0..args.tags {
                    let v = round(100.0 * ((t + k as f64) / 30.0 + phase).sin());
                    values.push((
                        node(ns, r, &format!("Tag{k}")),
                        dv(v.into(), StatusCode::Good),
                    ));
                }
            }
        }
        let items = values.iter().map(|(id, v)| (id, None, v.clone()));
        if let Err(e) = manager.set_values(&subs, items) {
            tracing::warn!(error = %e, "simulator update");
        }
    }
}

/// `twinhub opcua-sim`: serves until interrupted; prints one JSON line
/// with the endpoint first.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let (info, task) = start(args).await?;
    println!("{info}");
    tokio::select! {
        _ = task => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
