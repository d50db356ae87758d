//! MQTT over real TCP: a raw client speaking packets through rumqttc's
//! codecs (exact control for the conformance statements), and the
//! high-level rumqttc and command-line clients for behaviour.

mod behaviour;
mod conformance;
mod exactly_once;
mod interop;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(5);

/// A raw MQTT client: writes the packets it is told to, returns the
/// packets the server sends, and reports when the server closes.
pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
    pub v5: bool,
}

pub enum Got4 {
    P(v4::Packet),
    Closed,
    Silent,
}

pub enum Got5 {
    P(v5::Packet),
    Closed,
    Silent,
}

impl Raw {
    pub async fn open(addr: SocketAddr, v5: bool) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            buf: BytesMut::new(),
            v5,
        }
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b).await;
    }

    pub async fn send4(&mut self, p: v4::Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, usize::MAX).unwrap();
        self.send_bytes(&out).await;
    }

    pub async fn send5(&mut self, p: v5::Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, None).unwrap();
        self.send_bytes(&out).await;
    }

    async fn fill(&mut self, wait: Duration) -> Option<bool> {
        match tokio::time::timeout(wait, self.s.read_buf(&mut self.buf)).await {
            Err(_) => None,
            Ok(Ok(0)) | Ok(Err(_)) => Some(false),
            Ok(Ok(_)) => Some(true),
        }
    }

    pub async fn recv4_within(&mut self, wait: Duration) -> Got4 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match v4::Packet::read(&mut self.buf, 1 << 24) {
                Ok(p) => return Got4::P(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("server sent a malformed packet: {e}"),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.fill(left).await {
                None => return Got4::Silent,
                Some(false) => return Got4::Closed,
                Some(true) => {}
            }
        }
    }

    pub async fn recv5_within(&mut self, wait: Duration) -> Got5 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match v5::Packet::read(&mut self.buf, None) {
                Ok(p) => return Got5::P(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("server sent a malformed packet: {e}"),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.fill(left).await {
                None => return Got5::Silent,
                Some(false) => return Got5::Closed,
                Some(true) => {}
            }
        }
    }

    pub async fn recv4(&mut self) -> v4::Packet {
        match self.recv4_within(WAIT).await {
            Got4::P(p) => p,
            Got4::Closed => panic!("connection closed while a packet was expected"),
            Got4::Silent => panic!("no packet within {WAIT:?}"),
        }
    }

    pub async fn recv5(&mut self) -> v5::Packet {
        match self.recv5_within(WAIT).await {
            Got5::P(p) => p,
            Got5::Closed => panic!("connection closed while a packet was expected"),
            Got5::Silent => panic!("no packet within {WAIT:?}"),
        }
    }

    /// The server closes the connection (possibly after a DISCONNECT).
    pub async fn expect_closed(&mut self) {
        loop {
            if self.v5 {
                match self.recv5_within(WAIT).await {
                    Got5::Closed => return,
                    Got5::P(v5::Packet::Disconnect(_)) => {}
                    Got5::P(p) => panic!("expected the connection to close, got {p:?}"),
                    Got5::Silent => panic!("the connection stayed open"),
                }
            } else {
                match self.recv4_within(WAIT).await {
                    Got4::Closed => return,
                    Got4::P(p) => panic!("expected the connection to close, got {p:?}"),
                    Got4::Silent => panic!("the connection stayed open"),
                }
            }
        }
    }

    /// Nothing arrives for a while (used where a message must NOT come).
    pub async fn expect_silence(&mut self, wait: Duration) {
        if self.v5 {
            if let Got5::P(p) = self.recv5_within(wait).await {
                panic!("expected nothing, got {p:?}");
            }
        } else if let Got4::P(p) = self.recv4_within(wait).await {
            panic!("expected nothing, got {p:?}");
        }
    }
}

pub fn connect4(client_id: &str, login: Option<(&str, &str)>, clean: bool) -> v4::Packet {
    let mut c = v4::Connect::new(client_id);
    c.clean_session = clean;
    c.keep_alive = 30;
    c.login = login.map(|(u, p)| v4::Login::new(u, p));
    v4::Packet::Connect(c)
}

pub fn connect5(
    client_id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
    expiry: Option<u32>,
) -> v5::Packet {
    let props = v5::ConnectProperties {
        session_expiry_interval: expiry,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: vec![],
        authentication_method: None,
        authentication_data: None,
    };
    v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: clean,
            properties: Some(props),
        },
        None,
        login.map(|(u, p)| v5::Login {
            username: u.into(),
            password: p.into(),
        }),
    )
}

/// Connects with MQTT 3.1.1 and returns the CONNACK code.
pub async fn open4(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
) -> (Raw, v4::ConnAck) {
    let mut r = Raw::open(addr, false).await;
    r.send4(connect4(id, login, clean)).await;
    match r.recv4().await {
        v4::Packet::ConnAck(a) => (r, a),
        p => panic!("expected CONNACK, got {p:?}"),
    }
}

pub async fn open5(
    addr: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
    expiry: Option<u32>,
) -> (Raw, v5::ConnAck) {
    let mut r = Raw::open(addr, true).await;
    r.send5(connect5(id, login, clean, expiry)).await;
    match r.recv5().await {
        v5::Packet::ConnAck(a) => (r, a),
        p => panic!("expected CONNACK, got {p:?}"),
    }
}

pub fn sub4(pkid: u16, filter: &str, qos: u8) -> v4::Packet {
    let q = match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    };
    v4::Packet::Subscribe(v4::Subscribe {
        pkid,
        filters: vec![v4::SubscribeFilter::new(filter.into(), q)],
    })
}

pub fn pub4(topic: &str, qos: u8, pkid: u16, payload: &[u8], retain: bool) -> v4::Packet {
    let q = match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    };
    let mut p = v4::Publish::new(topic, q, payload.to_vec());
    p.pkid = pkid;
    p.retain = retain;
    v4::Packet::Publish(p)
}

pub fn q5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

pub fn pub5(
    topic: &str,
    qos: u8,
    pkid: u16,
    payload: &[u8],
    props: Option<v5::PublishProperties>,
) -> v5::Packet {
    let mut p = v5::Publish::new(topic, q5(qos), payload.to_vec(), props);
    p.pkid = pkid;
    v5::Packet::Publish(p)
}

pub fn sub5(
    pkid: u16,
    filter: &str,
    qos: u8,
    f: impl FnOnce(&mut v5::Filter),
    id: Option<usize>,
) -> v5::Packet {
    let mut filt = v5::Filter::new(filter, q5(qos));
    f(&mut filt);
    v5::Packet::Subscribe(v5::Subscribe {
        pkid,
        filters: vec![filt],
        properties: id.map(|id| v5::SubscribeProperties {
            id: Some(id),
            user_properties: vec![],
        }),
    })
}
