//! LoRaWAN through the network server: ChirpStack v4 (its MQTT
//! integration, subscribed on the network server's broker, or its HTTP
//! integration posting to `/api/v1/connectors/{id}/uplink`) and The Things
//! Stack v3 (its webhook, posting there too). An uplink names its device
//! by DevEUI (a twinhub device whose id is the DevEUI in lower-case hex)
//! or by name (`device_key: "name"`: ChirpStack's device name, The Things
//! Stack's device id). The network server's decoded object is stored when
//! there is one, else the payload is decoded with the device's binary
//! layout; the time is the network server's. MQTT uplinks are
//! acknowledged to the broker only once stored. Downlinks go back the same
//! way: published to ChirpStack's `…/command/down`, or pushed to The
//! Things Stack's webhook downlink API.

use super::spec::{refuse, SpecError};
use super::Status;
use crate::ingest::layouts::Layouts;
use crate::pipeline::{IngestError, Pipeline};
use crate::registry::Registry;
use base64::Engine;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use twinhub_codec::lorawan::{parse_uplink, Network, Uplink};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoRaWanSpec {
    /// `chirpstack` or `tts` (The Things Stack).
    pub network: String,
    /// `dev_eui` (default) or `name`.
    #[serde(default = "dev_eui")]
    pub device_key: String,
    /// ChirpStack's MQTT broker (`mqtt://host:1883`); absent, uplinks come
    /// over HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    /// ChirpStack application id whose uplinks to take (default all).
    #[serde(default = "all")]
    pub application_id: String,
    /// The Things Stack: the server's URL, the webhook id and an API key
    /// (a secret's name) for downlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
}

fn dev_eui() -> String {
    "dev_eui".into()
}

fn all() -> String {
    "+".into()
}

#[derive(Debug, Clone)]
pub struct LoRaWan {
    pub spec: LoRaWanSpec,
    pub network: Network,
    /// (host, port) of the ChirpStack broker.
    pub broker: Option<(String, u16)>,
}

impl LoRaWan {
    pub fn parse(settings: &Map<String, Value>) -> Result<LoRaWan, SpecError> {
        let spec: LoRaWanSpec = serde_path_to_error::deserialize(Value::Object(settings.clone()))
            .map_err(|e| {
            let path = e.path().to_string();
            refuse(&path, e.into_inner().to_string())
        })?;
        let network = Network::parse(&spec.network)
            .ok_or_else(|| refuse("network", "must be chirpstack or tts"))?;
        if !["dev_eui", "name"].contains(&spec.device_key.as_str()) {
            return Err(refuse("device_key", "must be dev_eui or name"));
        }
        let broker = match &spec.broker {
            None => None,
            Some(_) if network != Network::ChirpStack => {
                return Err(refuse("broker", "is for ChirpStack's MQTT integration"))
            }
            Some(b) => {
                let url = reqwest::Url::parse(b)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "mqtt" | "tcp"))
                    .ok_or_else(|| refuse("broker", "must be mqtt://host:port"))?;
                let host = url
                    .host_str()
                    .ok_or_else(|| refuse("broker", "has no host"))?
                    .to_string();
                Some((host, url.port().unwrap_or(1883)))
            }
        };
        let app = &spec.application_id;
        if app.is_empty()
            || app.contains('/')
            || app.contains('#')
            || (app.contains('+') && app != "+")
        {
            return Err(refuse("application_id", "must be an application id or +"));
        }
        for (field, name) in [
            ("password_secret", &spec.password_secret),
            ("api_key_secret", &spec.api_key_secret),
        ] {
            if let Some(n) = name {
                twinhub_model::ids::check_id(field, n).map_err(|e| refuse(&e.field, e.rule))?;
            }
        }
        if let Some(u) = &spec.api_url {
            if network != Network::TheThingsStack {
                return Err(refuse("api_url", "is for The Things Stack"));
            }
            reqwest::Url::parse(u)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| refuse("api_url", "must be an http(s) URL"))?;
            if spec.webhook_id.is_none() || spec.api_key_secret.is_none() {
                return Err(refuse(
                    "webhook_id",
                    "and api_key_secret are needed with api_url (for downlinks)",
                ));
            }
        }
        Ok(LoRaWan {
            spec,
            network,
            broker,
        })
    }

    /// The secrets the definition names.
    pub fn secrets(&self) -> Vec<(&'static str, &str)> {
        let mut v = Vec::new();
        if let Some(s) = &self.spec.password_secret {
            v.push(("password_secret", s.as_str()));
        }
        if let Some(s) = &self.spec.api_key_secret {
            v.push(("api_key_secret", s.as_str()));
        }
        v
    }
}

/// Why an uplink was not stored.
#[derive(Debug)]
pub enum UplinkError {
    /// Not an uplink of this network (400).
    Malformed(String),
    /// Unknown device, no layout, or values the model refuses (422).
    Invalid(String),
    /// The tenant's points quota is used up (429).
    OverQuota(String),
    /// Not stored now; send again (503).
    RetryLater,
}

pub struct Runner {
    pub tenant: String,
    pub conf: LoRaWan,
    pub registry: Arc<Registry>,
    pub layouts: Arc<Layouts>,
    pub pipeline: Arc<Pipeline>,
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub status: Arc<Status>,
    pub clock: crate::clock::SharedClock,
    pub limits: twinhub_codec::Limits,
    mqtt: Mutex<Option<AsyncClient>>,
    /// Per twinhub device: (application id, the network server's device
    /// id, DevEUI), from its last uplink, for downlinks.
    seen: Mutex<HashMap<String, (String, String, String)>>,
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: &str,
        conf: LoRaWan,
        registry: Arc<Registry>,
        layouts: Arc<Layouts>,
        pipeline: Arc<Pipeline>,
        secrets: Arc<crate::secrets::SecretBox>,
        status: Arc<Status>,
        clock: crate::clock::SharedClock,
    ) -> Runner {
        Runner {
            tenant: tenant.into(),
            conf,
            registry,
            layouts,
            pipeline,
            secrets,
            status,
            clock,
            limits: Default::default(),
            mqtt: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn reject(&self, msg: String) -> UplinkError {
        self.status.rejected.fetch_add(1, Ordering::Relaxed);
        self.status.error(self.clock.now_us(), msg.clone());
        UplinkError::Invalid(msg)
    }

    /// Stores one uplink event; the points stored.
    pub async fn uplink(&self, body: &[u8]) -> Result<usize, UplinkError> {
        let up: Uplink = parse_uplink(self.conf.network, body).map_err(|e| {
            self.status.rejected.fetch_add(1, Ordering::Relaxed);
            UplinkError::Malformed(format!("{}: {}", e.field, e.rule))
        })?;
        let id = match self.conf.spec.device_key.as_str() {
            "name" => up.name.clone(),
            _ => up.dev_eui.clone(),
        };
        let Some(device) = self.registry.device_in(&self.tenant, &id) else {
            return Err(self.reject(format!(
                "uplink of device {id}, which is not a device of this tenant (create it first)"
            )));
        };
        if !device.row.enabled {
            return Err(self.reject(format!("uplink of device {id}, which is disabled")));
        }
        self.seen.lock().expect("seen").insert(
            device.row.id.clone(),
            (up.application.clone(), up.name.clone(), up.dev_eui.clone()),
        );
        let decoded = match &up.decoded {
            Some(obj) => twinhub_codec::decode_telemetry(obj.to_string().as_bytes(), &self.limits),
            None => match self
                .layouts
                .for_device(&self.tenant, &device.row.id, device.twin())
            {
                Some(l) => l.decode(&up.payload),
                None => {
                    return Err(self.reject(format!(
                    "device {id}: the uplink has no decoded object and the device no binary layout"
                )))
                }
            },
        };
        let mut msgs =
            decoded.map_err(|e| self.reject(format!("device {id}: {}: {}", e.field, e.rule)))?;
        if let Some(t) = up.time {
            for ts in msgs.timestamps_mut() {
                ts.get_or_insert(t);
            }
        }
        match self
            .pipeline
            .ingest(&device, "lorawan", msgs, Some(Duration::from_secs(5)))
            .await
        {
            Ok(n) => {
                self.status.points.fetch_add(n as u64, Ordering::Relaxed);
                self.status
                    .last_value_at
                    .store(self.clock.now_us(), Ordering::Relaxed);
                Ok(n)
            }
            Err(IngestError::Invalid { field, rule }) => {
                Err(self.reject(format!("device {id}: {field}: {rule}")))
            }
            Err(IngestError::Quota(why)) => {
                self.status.dropped.fetch_add(1, Ordering::Relaxed);
                let msg = format!("device {id}: over quota: {why}");
                self.status.error(self.clock.now_us(), msg.clone());
                Err(UplinkError::OverQuota(msg))
            }
            Err(e) => {
                self.status.error(
                    self.clock.now_us(),
                    format!("device {id}: not stored yet: {e}"),
                );
                Err(UplinkError::RetryLater)
            }
        }
    }

    fn topic_prefix(&self, app: &str) -> String {
        format!("application/{app}/device")
    }

    /// ChirpStack's MQTT integration: subscribes to the uplinks and stores
    /// each before acknowledging it to the broker; reconnects with
    /// backoff until `stop`.
    pub async fn run_mqtt(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some((host, port)) = self.conf.broker.clone() else {
            self.status.set_state("listening", self.clock.now_us());
            return;
        };
        let client_id = format!("twinhub-{}", crate::auth::random_secret(6).to_lowercase());
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_manual_acks(true);
        if let Some(user) = &self.conf.spec.username {
            let pw = self
                .conf
                .spec
                .password_secret
                .as_ref()
                .and_then(|s| self.secrets.reveal(&self.tenant, s).ok().flatten())
                .unwrap_or_default();
            opts.set_credentials(user.clone(), pw);
        }
        let (client, mut events) = AsyncClient::new(opts, 64);
        *self.mqtt.lock().expect("mqtt") = Some(client.clone());
        let topic = format!(
            "{}/+/event/up",
            self.topic_prefix(&self.conf.spec.application_id)
        );
        self.status.set_state("connecting", self.clock.now_us());
        let mut backoff = Duration::from_millis(500);
        loop {
            let ev = tokio::select! {
                e = events.poll() => e,
                _ = stop.wait_for(|s| *s) => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(500);
                    if let Err(e) = client.subscribe(topic.clone(), QoS::AtLeastOnce).await {
                        self.status
                            .error(self.clock.now_us(), format!("subscribe: {e}"));
                    }
                    self.status.connects.fetch_add(1, Ordering::Relaxed);
                    self.status.set_state("connected", self.clock.now_us());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut wait = Duration::from_millis(100);
                    // Acknowledged once stored, or refused for good.
                    while let Err(UplinkError::RetryLater) = self.uplink(&p.payload).await {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                    let _ = client.ack(&p).await;
                }
                Ok(_) => {}
                Err(e) => {
                    self.status
                        .error(self.clock.now_us(), format!("broker: {e}"));
                    self.status.set_state("disconnected", self.clock.now_us());
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let _ = client.disconnect().await;
        self.status.set_state("stopped", self.clock.now_us());
    }

    /// Whether the device has sent an uplink through this connector.
    pub fn has_seen(&self, device: &str) -> bool {
        self.seen.lock().expect("seen").contains_key(device)
    }

    /// Sends a downlink to a device that has sent an uplink before.
    pub async fn downlink(
        &self,
        device: &str,
        f_port: u8,
        data: &[u8],
        confirmed: bool,
    ) -> Result<(), String> {
        if f_port == 0 || f_port > 223 {
            return Err("f_port: must be 1 to 223".into());
        }
        let (app, name, eui) = self
            .seen
            .lock()
            .expect("seen")
            .get(device)
            .cloned()
            .ok_or_else(|| {
                format!("device: {device} has sent no uplink through this connector yet")
            })?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        match self.conf.network {
            Network::ChirpStack => {
                let client = self
                    .mqtt
                    .lock()
                    .expect("mqtt")
                    .clone()
                    .ok_or("broker: the connector has none (ChirpStack downlinks go through its MQTT integration)")?;
                let body =
                    json!({"devEui": eui, "confirmed": confirmed, "fPort": f_port, "data": b64});
                client
                    .publish(
                        format!("{}/{eui}/command/down", self.topic_prefix(&app)),
                        QoS::AtLeastOnce,
                        false,
                        body.to_string(),
                    )
                    .await
                    .map_err(|e| format!("broker: {e}"))
            }
            Network::TheThingsStack => {
                let s = &self.conf.spec;
                let (Some(url), Some(hook), Some(secret)) =
                    (&s.api_url, &s.webhook_id, &s.api_key_secret)
                else {
                    return Err(
                        "api_url: downlinks need api_url, webhook_id and api_key_secret".into(),
                    );
                };
                let key = self
                    .secrets
                    .reveal(&self.tenant, secret)
                    .ok()
                    .flatten()
                    .ok_or("api_key_secret: the secret cannot be read")?;
                let u = format!(
                    "{}/api/v3/as/applications/{app}/webhooks/{hook}/devices/{name}/down/push",
                    url.trim_end_matches('/')
                );
                let body = json!({"downlinks": [{"f_port": f_port, "frm_payload": b64,
                    "priority": "NORMAL", "confirmed": confirmed}]});
                let r = reqwest::Client::new()
                    .post(u)
                    .bearer_auth(key)
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| format!("The Things Stack: {}", e.without_url()))?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("The Things Stack answered {}", r.status()))
                }
            }
        }
    }
}
