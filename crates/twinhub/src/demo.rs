//! `twinhub demo`: a complete system on free ports with simulated
//! reactors, each a real client with its own device credentials.

use crate::sim::Reactor;
use crate::{init_logging, load_config, shutdown_signal, ServerFlags};
use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use twinhub_server::server::ServerHandle;

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    flags: ServerFlags,
    /// Plants to simulate.
    #[arg(long, default_value_t = 3)]
    plants: usize,
    /// Reactors per plant.
    #[arg(long, default_value_t = 2)]
    reactors: usize,
    /// Seconds between readings of each reactor.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
}

fn free_or_zero(preferred: &str) -> String {
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred.to_string(),
        Err(_) => "127.0.0.1:0".to_string(),
    }
}

pub async fn run(file: Option<&PathBuf>, args: DemoArgs) -> anyhow::Result<()> {
    let mut flags = args.flags.clone();
    if flags.data_dir.is_none() && std::env::var("TWINHUB_DATA_DIR").is_err() {
        flags.data_dir =
            Some(std::env::temp_dir().join(format!("twinhub-demo-{}", std::process::id())));
    }
    if flags.http_listen.is_none() && std::env::var("TWINHUB_HTTP_LISTEN").is_err() {
        flags.http_listen = Some(free_or_zero("127.0.0.1:8080"));
    }
    if flags.mqtt_listen.is_none() && std::env::var("TWINHUB_MQTT_LISTEN").is_err() {
        flags.mqtt_listen = Some(free_or_zero("127.0.0.1:1883"));
    }
    // MQTT over TLS too, with a local CA made for the demo.
    if flags.mqtt_tls_listen.is_none() && std::env::var("TWINHUB_MQTT_TLS_LISTEN").is_err() {
        let dir = flags
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./twinhub-data"))
            .join("certs");
        if !dir.join("server.pem").exists() {
            let g = twinhub_server::tls::generate(&["localhost".into(), "127.0.0.1".into()])?;
            twinhub_server::tls::write_generated(&dir, &g)?;
        }
        flags.tls_cert = Some(dir.join("server.pem"));
        flags.tls_key = Some(dir.join("server-key.pem"));
        flags.mqtt_tls_listen = Some(free_or_zero("127.0.0.1:8883"));
        if flags.http_tls_listen.is_none() && std::env::var("TWINHUB_HTTP_TLS_LISTEN").is_err() {
            flags.http_tls_listen = Some(free_or_zero("127.0.0.1:8443"));
        }
    }
    let mut config = load_config(file, &flags)?;
    let password = config
        .admin_password
        .clone()
        .unwrap_or_else(|| twinhub_server::auth::random_secret(12));
    config.admin_password = Some(password.clone());
    init_logging(&config);
    let data_dir = config.data_dir.clone();
    let server = ServerHandle::start(config, twinhub_server::clock::system()).await?;
    let base = format!("http://{}", server.ready.http);
    let client = reqwest::Client::new();

    let token = crate::admin::login(&client, &base, "admin", &password)
        .await?
        .map_err(|_| {
            anyhow!("the admin password of {} differs from this one; pass TWINHUB_ADMIN_PASSWORD or use a fresh --data-dir", data_dir.display())
        })?;
    let token = token.as_str();

    // The twin graph from the shipped process-plant ontology: plants that
    // contain reactors, each reactor's twin fed by its device.
    let _ = client
        .post(format!("{base}/api/v1/models"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(twinhub_server::ontologies::PROCESS_PLANT)
        .send()
        .await?;
    let put = |path: String, body: Value| {
        client
            .put(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    for p in 1..=args.plants {
        put(format!("/api/v1/twins/plant{p}"), json!({"$metadata": {"$model": "dtmi:twinhub:plant:Plant;1"}, "name": format!("Plant {p}"), "capacity_t_per_day": 120.0})).await?;
        for r in 1..=args.reactors {
            let id = format!("plant{p}-reactor{r}");
            put(
                format!("/api/v1/twins/{id}"),
                json!({"$metadata": {"$model": "dtmi:twinhub:plant:Reactor;1"}, "name": format!("R-{p}0{r}"), "status": "running", "volume": 12.5, "design_temperature_max": 385.0, "agitator": {"$metadata": {}, "motor_kw": 7.5}}),
            )
            .await?;
            put(
                format!("/api/v1/twins/plant{p}/relationships/contains-{id}"),
                json!({"$relationshipName": "contains", "$targetId": id}),
            )
            .await?;
        }
    }

    let mut devices = Vec::new();
    for p in 1..=args.plants {
        for r in 1..=args.reactors {
            let id = format!("plant{p}-reactor{r}");
            // A re-run on the same data directory gets fresh keys.
            let _ = client
                .delete(format!("{base}/api/v1/devices/{id}"))
                .bearer_auth(token)
                .send()
                .await;
            let created: Value = client
                .post(format!("{base}/api/v1/devices"))
                .bearer_auth(token)
                .json(&json!({"id": id, "twin_id": id}))
                .send()
                .await?
                .json()
                .await?;
            let key = created["key"]
                .as_str()
                .context("device creation failed")?
                .to_string();
            devices.push((id, key));
        }
    }

    // The seed's reactor-yield model (examples/reactor-yield), bound to
    // every reactor as a soft sensor: yield_pred with its interval.
    let form = reqwest::multipart::Form::new()
        .part(
            "model",
            reqwest::multipart::Part::bytes(YIELD_ONNX.to_vec()),
        )
        .part(
            "manifest",
            reqwest::multipart::Part::bytes(YIELD_MANIFEST.to_vec()),
        );
    let _ = client
        .post(format!("{base}/api/v1/ml/models"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?;
    let bound = client
        .post(format!("{base}/api/v1/ml/bindings"))
        .bearer_auth(token)
        .json(&json!({"id": "reactor-yield", "model": "reactor-yield",
            "select": {"model": "dtmi:twinhub:plant:Reactor;1"},
            "outputs": {"prediction": "yield_pred", "lower": "yield_pred_lower", "upper": "yield_pred_upper"}}))
        .send()
        .await?;
    if !bound.status().is_success() {
        anyhow::bail!("binding the yield model failed: {}", bound.text().await?);
    }

    // Rules on every reactor: an overheat condition with hysteresis and a
    // minimum duration, and a statistical check on pressure. The simulated
    // reactors drift hot now and then, so alarms appear, and clear when the
    // reactor recovers. Alarms count on the plant that contains them.
    for rule in [
        json!({"id": "reactor-overheat", "name": "Reactor above 372 K for 5 s",
            "select": {"model": "dtmi:twinhub:plant:Reactor;1"},
            "condition": "temperature > 372", "clear": "temperature < 368", "for": "5s",
            "alarm": {"type": "ReactorOverheat", "severity": "major", "propagate": "contains"}}),
        json!({"id": "temperature-anomaly", "name": "Temperature off its own baseline",
            "kind": "statistical", "select": {"model": "dtmi:twinhub:plant:Reactor;1"},
            "statistic": {"property": "temperature", "method": "zscore", "threshold": 5, "window": 120, "warmup": 60},
            "alarm": {"type": "TemperatureAnomaly", "severity": "minor", "propagate": "contains"}}),
    ] {
        let id = rule["id"].as_str().unwrap_or_default().to_string();
        let mut r = client
            .put(format!("{base}/api/v1/rules/{id}"))
            .bearer_auth(token)
            .json(&rule)
            .send()
            .await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            r = client
                .post(format!("{base}/api/v1/rules"))
                .bearer_auth(token)
                .json(&rule)
                .send()
                .await?;
        }
        if !r.status().is_success() {
            anyhow::bail!("creating the rule {id} failed: {}", r.text().await?);
        }
    }

    // A simulated PLC over OPC UA, read by a connector into a reactor twin
    // of its own (what `twinhub opcua-sim` and `/api/v1/connectors` do).
    let (plc, _plc) = crate::opcua_sim::start(crate::opcua_sim::SimArgs {
        listen: "127.0.0.1:0".into(),
        reactors: 1,
        tags: 0,
        interval_ms: 1000,
        time_offset_s: 0,
        user: None,
        password: None,
        pki_dir: Some(data_dir.join("opcua-sim")),
        strict_clients: false,
    })
    .await?;
    let plc_endpoint = plc["endpoint"].as_str().unwrap_or_default().to_string();
    put(
        "/api/v1/twins/plc-reactor1".into(),
        json!({"$metadata": {"$model": "dtmi:twinhub:plant:Reactor;1"}, "name": "R-PLC-1", "status": "running", "volume": 8.0, "design_temperature_max": 385.0, "agitator": {"$metadata": {}, "motor_kw": 5.5}}),
    )
    .await?;
    let ns = plc["namespace"].as_u64().unwrap_or(2);
    let connected = put(
        "/api/v1/connectors/plant-plc".into(),
        json!({"kind": "opcua", "endpoint": plc_endpoint, "publishing_interval": "1s",
            "nodes": [
                {"node": format!("ns={ns};s=R1.Temperature"), "twin": "plc-reactor1", "property": "temperature"},
                {"node": format!("ns={ns};s=R1.Pressure"), "twin": "plc-reactor1", "property": "pressure"}]}),
    )
    .await?;
    if !connected.status().is_success() {
        anyhow::bail!("the OPC UA connector failed: {}", connected.text().await?);
    }

    let interval = Duration::from_secs_f64(args.interval.max(0.01));
    let mqtt = server
        .ready
        .mqtt
        .ok_or_else(|| anyhow!("the demo needs the MQTT listener (mqtt.listen is empty)"))?;
    for (i, (id, key)) in devices.iter().cloned().enumerate() {
        tokio::spawn(simulate_device(mqtt, id, key, 1000 + i as u64, interval));
    }

    let (first, first_key) = &devices[0];
    println!(
        r#"
twinhub demo is running ({n} simulated reactors report temperature, pressure, flow_rate and yield every {iv}s over MQTT)

  Dashboard    {base}/   log in as admin / {password}

  HTTP API     {base}/api/v1   (OpenAPI: {base}/api/v1/openapi.json)
  HTTPS        {https}   (curl --cacert {dir}/certs/ca.pem https://localhost:PORT/health)
  MQTT         {mqtt}   (devices: client id = user name = device id, password = device key)
  MQTTS        {mqtts}   (CA: {dir}/certs/ca.pem)   MQTT over WebSocket: ws://{http_host}/mqtt
  OPC UA       a simulated PLC at {plc_endpoint} feeds twin plc-reactor1 (connector plant-plc)
  metrics      {base}/metrics
  data dir     {dir}
  admin login  admin / {password}

Try:
  TOKEN=$(curl -s -X POST {base}/api/v1/auth/login -H 'content-type: application/json' \
      -d '{{"username":"admin","password":"{password}"}}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  curl -s -H "Authorization: Bearer $TOKEN" {base}/api/v1/twins/{first}
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/twins/{first}/telemetry/temperature?bucket=1m&agg=avg,min,max,count"
  curl -s -N -H "Authorization: Bearer $TOKEN" "{base}/api/v1/events?types=telemetry&twin={first}"
  curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' {base}/api/v1/query \
      -d "{{\"query\": \"SELECT R FROM DIGITALTWINS P JOIN R RELATED P.contains WHERE P.\$dtId = 'plant1' AND R.temperature > 360\"}}"
  curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' {base}/api/v1/ml/models/reactor-yield/predict \
      -d '{{"temperature": 362, "pressure": 6.1, "flow_rate": 101}}'      # soft sensor: every reactor's yield_pred
  curl -s -u {first}:{first_key} -H 'content-type: application/json' \
      -X POST {base}/api/v1/devices/{first}/telemetry -d '{{"temperature": 361.5}}'
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/alarms?status=active"          # reactors that ran hot
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/alarms?originator=plant1&subtree=true"
  curl -s -H "Authorization: Bearer $TOKEN" -X POST {base}/api/v1/alarms/ID/ack
  curl -s -N -H "Authorization: Bearer $TOKEN" "{base}/api/v1/events?types=alarm"
  mosquitto_sub -h {mh} -p {mp} -u admin -P '{password}' -t 'devices/+/telemetry' -v
  mosquitto_pub -h {mh} -p {mp} -i {first} -u {first} -P '{first_key}' -q 1 \
      -t devices/{first}/telemetry -m '{{"temperature": 362.0}}'

Ctrl-C stops the demo.
"#,
        n = devices.len(),
        iv = args.interval,
        dir = data_dir.display(),
        mh = mqtt.ip(),
        mp = mqtt.port(),
        mqtts = server
            .ready
            .mqtts
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        http_host = server.ready.http,
        https = server
            .ready
            .https
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
    );
    shutdown_signal().await;
    println!("stopping…");
    server.stop().await?;
    Ok(())
}

const YIELD_ONNX: &[u8] = include_bytes!("../../twinhub-ml/tests/fixtures/reactor_yield.onnx");
const YIELD_MANIFEST: &[u8] =
    include_bytes!("../../twinhub-ml/tests/fixtures/reactor_yield.manifest.json");

/// One simulated reactor: a real MQTT client with its own credentials,
/// publishing QoS 1 telemetry; it reconnects when the connection drops.
async fn simulate_device(
    broker: std::net::SocketAddr,
    id: String,
    key: String,
    seed: u64,
    interval: Duration,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
    let mut opts = MqttOptions::new(&id, broker.ip().to_string(), broker.port());
    opts.set_credentials(&id, &key);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 64);
    // Commands (`devices/{id}/commands/{name}/{requestId}`) are answered on
    // `devices/{id}/replies/{requestId}`, so the dashboard's buttons and
    // `POST …/commands/{name}` get a reply from the demo's reactors.
    let responder = client.clone();
    let commands = format!("devices/{id}/commands/");
    let replies = format!("devices/{id}/replies/");
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    // try_*: this task drives the event loop, so it must
                    // never wait on the client's request queue.
                    let _ = responder.try_subscribe(format!("{commands}+/+"), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let Some(rest) = p.topic.strip_prefix(&commands) else {
                        continue;
                    };
                    let Some((name, request)) = rest.split_once('/') else {
                        continue;
                    };
                    let args: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let reply = json!({"status": 200, "payload": {"command": name, "accepted": true, "args": args}});
                    let _ = responder.try_publish(
                        format!("{replies}{request}"),
                        QoS::AtLeastOnce,
                        false,
                        reply.to_string(),
                    );
                }
                Ok(Event::Incoming(_)) | Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "simulated device reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let mut reactor = Reactor::new(seed);
    let mut tick = tokio::time::interval(interval);
    let topic = format!("devices/{id}/telemetry");
    loop {
        tick.tick().await;
        let r = reactor.step();
        let body = json!({"temperature": r.temperature, "pressure": r.pressure, "flow_rate": r.flow_rate, "yield": r.yield_pct});
        if client
            .publish(&topic, QoS::AtLeastOnce, false, body.to_string())
            .await
            .is_err()
        {
            return;
        }
    }
}
