//! Unchanged third-party clients: rumqttc's high-level client (3.1.1 and
//! 5), and Debian's mosquitto_pub / mosquitto_sub.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn rumqttc_v4_and_v5_clients_publish_telemetry() {
    let s = TestServer::start().await;
    let key4 = s.device("rc4").await;
    let key5 = s.device("rc5").await;
    let addr = s.mqtt();

    let mut o = rumqttc::MqttOptions::new("rc4", addr.ip().to_string(), addr.port());
    o.set_credentials("rc4", &key4);
    let (c4, mut ev4) = rumqttc::AsyncClient::new(o, 16);
    c4.publish(
        "devices/rc4/telemetry",
        rumqttc::QoS::AtLeastOnce,
        false,
        r#"{"v": 4}"#,
    )
    .await
    .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev4.poll().await.unwrap()
            {
                break;
            }
        }
    })
    .await;
    assert!(acked.is_ok());

    let mut o = rumqttc::v5::MqttOptions::new("rc5", addr.ip().to_string(), addr.port());
    o.set_credentials("rc5", &key5);
    let (c5, mut ev5) = rumqttc::v5::AsyncClient::new(o, 16);
    c5.publish(
        "devices/rc5/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        r#"{"v": 5}"#,
    )
    .await
    .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)) =
                ev5.poll().await.unwrap()
            {
                break;
            }
        }
    })
    .await;
    assert!(acked.is_ok());
    for (id, v) in [("rc4", 4), ("rc5", 5)] {
        let (_, twin) = s.json(s.get(&format!("/api/v1/twins/{id}"))).await;
        assert_eq!(twin["v"], v);
    }
    s.stop().await;
}

/// Subscribes with mosquitto_sub, publishes with mosquitto_pub (QoS 1,
/// retried until the subscriber has seen one) and returns what
/// mosquitto_sub printed. `sub`/`publ` are extra arguments (credentials).
async fn mosquitto_round_trip(
    port: u16,
    sub: &[&str],
    publ: &[&str],
    topic: &str,
    payload: &str,
) -> String {
    let port = port.to_string();
    let mut sub_cmd = tokio::process::Command::new("mosquitto_sub");
    sub_cmd
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(sub)
        .args(["-t", topic, "-C", "1", "-W", "10", "-v"]);
    let sub = tokio::spawn(sub_cmd.output());
    for _ in 0..50 {
        let st = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(publ)
            .args(["-q", "1", "-t", topic, "-m", payload])
            .status()
            .await
            .expect("mosquitto_pub is installed (.ci/run installs mosquitto-clients)");
        assert!(st.success(), "mosquitto_pub on port {port}");
        if sub.is_finished() {
            let out = sub.await.unwrap().unwrap();
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mosquitto_sub on port {port} received nothing");
}

/// mosquitto_pub and mosquitto_sub, unchanged, against twinhub — and the
/// same commands against the machine's Mosquitto (127.0.0.1:1883, which
/// every machine here runs) print the same line.
#[tokio::test]
async fn mosquitto_clients_work_unchanged() {
    let s = TestServer::start().await;
    let key = s.device("mosq").await;
    let payload = r#"{"temperature": 42.5}"#;
    let ours = mosquitto_round_trip(
        s.mqtt().port(),
        &["-u", "admin", "-P", ADMIN_PASSWORD, "-i", "mosq-sub"],
        &["-i", "mosq", "-u", "mosq", "-P", &key],
        "devices/mosq/telemetry",
        payload,
    )
    .await;
    assert_eq!(ours, format!("devices/mosq/telemetry {payload}"));
    let (_, twin) = s.json(s.get("/api/v1/twins/mosq")).await;
    assert_eq!(twin["temperature"], 42.5);
    // The same commands against Mosquitto (anonymous there; a topic of
    // this run's own so parallel runs do not meet).
    let topic = format!("twinhub-it/{}/devices/mosq/telemetry", std::process::id());
    let theirs = mosquitto_round_trip(1883, &[], &[], &topic, payload).await;
    assert_eq!(
        theirs.strip_prefix(topic.as_str()),
        ours.strip_prefix("devices/mosq/telemetry"),
        "twinhub and Mosquitto print the same message"
    );
    // A refused login exits non-zero.
    let st = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.mqtt().port().to_string(),
            "-i",
            "mosq",
            "-u",
            "mosq",
            "-P",
            "wrong",
            "-t",
            "devices/mosq/telemetry",
            "-m",
            "{}",
        ])
        .status()
        .await
        .unwrap();
    assert!(!st.success());
    s.stop().await;
}

/// What an evaluator tries first with the anonymous mode on:
/// `mosquitto_sub -t '#'` is granted (not "All subscription requests were
/// denied") and shows plant topics but no device's telemetry.
#[tokio::test]
async fn mosquitto_sub_hash_works_anonymously_and_shows_no_device_topics() {
    let s = TestServer::start_with(|c| c.mqtt.allow_anonymous = true).await;
    let key = s.device("hidden").await;
    let port = s.mqtt().port().to_string();
    let sub = tokio::spawn(
        tokio::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "#",
                "-C",
                "2",
                "-W",
                "10",
                "-v",
            ])
            .output(),
    );
    let mut out = None;
    for i in 0..50 {
        // A device's telemetry first, then a plant topic: only the
        // plant topics may reach the anonymous subscriber.
        let st = tokio::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-i",
                "hidden",
                "-u",
                "hidden",
                "-P",
                &key,
            ])
            .args([
                "-q",
                "1",
                "-t",
                "devices/hidden/telemetry",
                "-m",
                r#"{"v": 1}"#,
            ])
            .status()
            .await
            .unwrap();
        assert!(st.success());
        let st = tokio::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-q",
                "1",
                "-t",
                "plant/line1",
            ])
            .args(["-m", &format!("m{i}")])
            .status()
            .await
            .unwrap();
        assert!(st.success());
        if sub.is_finished() {
            out = Some(sub.await.unwrap().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = out.expect("mosquitto_sub -t '#' received two messages");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines.iter().all(|l| l.starts_with("plant/line1 m")),
        "{text}"
    );
    s.stop().await;
}

/// A device written with Eclipse Paho (Python), both protocol versions,
/// over TCP and over WebSocket (`/mqtt` on the HTTP port): telemetry
/// reaches the twin and a command round-trips.
#[tokio::test]
async fn paho_python_devices_work_unchanged() {
    let s = TestServer::start().await;
    let http_port = s.base.rsplit(':').next().unwrap().to_string();
    for (version, transport) in [("4", "tcp"), ("5", "tcp"), ("4", "ws"), ("5", "ws")] {
        let id = format!("paho{version}{transport}");
        let key = s.device(&id).await;
        let port = if transport == "ws" {
            http_port.clone()
        } else {
            s.mqtt().port().to_string()
        };
        let child = PahoDevice::start(&port, &id, &key, version, transport).await;
        // Wait for the telemetry, then send the command the script answers.
        let mut twin = serde_json::Value::Null;
        for _ in 0..100 {
            let (_, t) = s.json(s.get(&format!("/api/v1/twins/{id}"))).await;
            if t["temperature"] == 350.25 {
                twin = t;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(twin["source"], "paho", "paho's telemetry reached the twin");
        let (st, reply) = s
            .json(s.post(
                &format!("/api/v1/devices/{id}/commands/echo?timeout=10s"),
                json!({"x": version}),
            ))
            .await;
        assert_eq!(st, 200, "{reply}");
        assert_eq!(reply, json!({"status": 200, "payload": {"x": version}}));
        child.finished().await;
    }
    s.stop().await;
}

/// MQTTS with a certificate from `twinhub cert`'s generator: mosquitto_pub
/// verifies the server against the CA and its telemetry lands; a client
/// that does not speak TLS gets nowhere.
#[tokio::test]
async fn mqtts_with_a_generated_certificate() {
    let (certs, _) = tls_certs();
    let dir = certs.path().to_path_buf();
    let s = TestServer::start_with(move |c| {
        c.mqtt.tls_listen = "127.0.0.1:0".into();
        use_certs(c, &dir);
    })
    .await;
    let tls_port = s
        .handle_ready()
        .mqtts
        .expect("MQTTS listener")
        .port()
        .to_string();
    let key = s.device("secure").await;
    let st = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &tls_port, "--cafile"])
        .arg(certs.path().join("ca.pem"))
        .args([
            "-i",
            "secure",
            "-u",
            "secure",
            "-P",
            &key,
            "-q",
            "1",
            "-t",
            "devices/secure/telemetry",
            "-m",
            r#"{"v": 7}"#,
        ])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let (_, twin) = s.json(s.get("/api/v1/twins/secure")).await;
    assert_eq!(twin["v"], 7);
    // Without TLS the connection goes nowhere: no CONNACK, closed.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = tokio::net::TcpStream::connect(format!("127.0.0.1:{tls_port}"))
        .await
        .unwrap();
    let mut connect = bytes::BytesMut::new();
    super::connect4("secure", Some(("secure", &key)), true)
        .write(&mut connect, usize::MAX)
        .unwrap();
    plain.write_all(&connect).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got))
        .await
        .expect("closed");
    assert_ne!(got.first(), Some(&0x20u8), "no CONNACK over plain TCP");
    s.stop().await;
}

/// MQTTS with device client certificates (tls.client_ca): mosquitto_pub
/// logs in with its certificate and no password; a certificate for another
/// device id, or no certificate and no password, gets nowhere.
#[tokio::test]
async fn devices_log_in_with_client_certificates() {
    let (certs, g) = tls_certs();
    for id in ["cert-dev", "other-dev"] {
        let (cert, key) = twinhub_server::tls::issue_client(&g.ca_key, id).unwrap();
        std::fs::write(certs.path().join(format!("{id}.pem")), cert).unwrap();
        std::fs::write(certs.path().join(format!("{id}-key.pem")), key).unwrap();
    }
    let dir = certs.path().to_path_buf();
    let s = TestServer::start_with(move |c| {
        c.mqtt.tls_listen = "127.0.0.1:0".into();
        use_certs(c, &dir);
        c.tls.client_ca = Some(dir.join("ca.pem"));
    })
    .await;
    let port = s.handle_ready().mqtts.unwrap().port().to_string();
    s.device("cert-dev").await;
    let publish = |client_id: &str, cert: Option<&str>| {
        let mut c = tokio::process::Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &port, "--cafile"])
            .arg(certs.path().join("ca.pem"))
            .args(["-i", client_id, "-q", "1", "-t"])
            .arg(format!("devices/{client_id}/telemetry"))
            .args(["-m", r#"{"v": 11}"#]);
        if let Some(id) = cert {
            c.arg("--cert")
                .arg(certs.path().join(format!("{id}.pem")))
                .arg("--key")
                .arg(certs.path().join(format!("{id}-key.pem")));
        }
        c.output()
    };
    let out = publish("cert-dev", Some("cert-dev")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, twin) = s.json(s.get("/api/v1/twins/cert-dev")).await;
    assert_eq!(twin["v"], 11);
    let out = publish("cert-dev", Some("other-dev")).await.unwrap();
    assert!(!out.status.success(), "another device's certificate");
    let out = publish("cert-dev", None).await.unwrap();
    assert!(!out.status.success(), "no certificate, no password");
    s.stop().await;
}
