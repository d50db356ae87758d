//! The wire: MQTT 3.1.1 and 5.0 packets through rumqttc's `mqttbytes`
//! codecs, mapped to one version-neutral form (`In`) for the session
//! layer, and back (`Out`) with the right reason codes per version.

use super::session::MsgProps;
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as b4, v4, QoS as Q4};
use rumqttc::v5::mqttbytes::{v5, QoS as Q5};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported protocol level {0}")]
    ProtocolLevel(u8),
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub delay_s: u32,
    pub expiry_s: Option<u32>,
    pub props: Option<MsgProps>,
}

#[derive(Debug, Clone)]
pub struct ConnectIn {
    pub version: Version,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
    pub session_expiry_s: u32,
    pub receive_max: u16,
    pub max_packet_size: Option<u32>,
    pub topic_alias_max: u16,
}

#[derive(Debug, Clone)]
pub struct PublishIn {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub topic_alias: Option<u16>,
    pub expiry_s: Option<u32>,
    pub props: Option<MsgProps>,
}

#[derive(Debug, Clone)]
pub struct SubReq {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on subscribe, 1: only on a new subscription, 2: never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone)]
pub enum In {
    Connect(Box<ConnectIn>),
    Publish(PublishIn),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<SubReq>,
        sub_id: Option<usize>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry_s: Option<u32>,
    },
    /// A packet only a server sends (CONNACK, SUBACK…) or AUTH.
    Unexpected(&'static str),
}

fn qos4(q: Q4) -> u8 {
    q as u8
}

fn qos5(q: Q5) -> u8 {
    match q {
        Q5::AtMostOnce => 0,
        Q5::AtLeastOnce => 1,
        Q5::ExactlyOnce => 2,
    }
}

fn to_q4(q: u8) -> Q4 {
    match q {
        0 => Q4::AtMostOnce,
        1 => Q4::AtLeastOnce,
        _ => Q4::ExactlyOnce,
    }
}

fn to_q5(q: u8) -> Q5 {
    match q {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

/// The protocol level of a complete CONNECT frame at the start of `buf`.
fn connect_level(buf: &[u8]) -> Option<u8> {
    let mut i = 1;
    while *buf.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let vh = i + 1;
    let name_len = u16::from_be_bytes([*buf.get(vh)?, *buf.get(vh + 1)?]) as usize;
    buf.get(vh + 2 + name_len).copied()
}

/// Reads one packet if `buf` holds a complete one. `version` is None until
/// the CONNECT has been read (its protocol level picks the codec).
pub fn read(
    buf: &mut BytesMut,
    version: Option<Version>,
    max: usize,
) -> Result<Option<In>, CodecError> {
    let header = match b4::check(buf.iter(), max) {
        Ok(h) => h,
        Err(b4::Error::InsufficientBytes(_)) => return Ok(None),
        Err(b4::Error::PayloadSizeLimitExceeded(n)) => return Err(CodecError::TooLarge(n)),
        Err(e) => return Err(CodecError::Malformed(e.to_string())),
    };
    let version = match version {
        Some(v) => v,
        None => {
            if buf[0] >> 4 != 1 {
                return Err(CodecError::Malformed(
                    "the first packet must be CONNECT".into(),
                ));
            }
            match connect_level(&buf[..header.frame_length()]) {
                Some(5) => Version::V5,
                Some(4) => Version::V4,
                Some(l) => return Err(CodecError::ProtocolLevel(l)),
                None => return Err(CodecError::Malformed("truncated CONNECT".into())),
            }
        }
    };
    match version {
        Version::V4 => read4(buf, max),
        Version::V5 => read5(buf, max),
    }
    .map(Some)
}

fn read4(buf: &mut BytesMut, max: usize) -> Result<In, CodecError> {
    let p = v4::Packet::read(buf, max).map_err(|e| CodecError::Malformed(e.to_string()))?;
    Ok(match p {
        v4::Packet::Connect(c) => In::Connect(Box::new(ConnectIn {
            version: Version::V4,
            client_id: c.client_id,
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            username: c
                .login
                .as_ref()
                .map(|l| l.username.clone())
                .filter(|u| !u.is_empty()),
            password: c.login.map(|l| l.password),
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: qos4(w.qos),
                retain: w.retain,
                delay_s: 0,
                expiry_s: None,
                props: None,
            }),
            session_expiry_s: if c.clean_session { 0 } else { u32::MAX },
            receive_max: u16::MAX,
            max_packet_size: None,
            topic_alias_max: 0,
        })),
        v4::Packet::Publish(p) => In::Publish(PublishIn {
            topic: p.topic,
            payload: p.payload,
            qos: qos4(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            topic_alias: None,
            expiry_s: None,
            props: None,
        }),
        v4::Packet::PubAck(a) => In::PubAck(a.pkid),
        v4::Packet::PubRec(a) => In::PubRec(a.pkid),
        v4::Packet::PubRel(a) => In::PubRel(a.pkid),
        v4::Packet::PubComp(a) => In::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => In::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubReq {
                    filter: f.path,
                    qos: qos4(f.qos),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                })
                .collect(),
            sub_id: None,
        },
        v4::Packet::Unsubscribe(u) => In::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => In::PingReq,
        v4::Packet::Disconnect => In::Disconnect {
            reason: 0,
            session_expiry_s: None,
        },
        v4::Packet::ConnAck(_) => In::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => In::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => In::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => In::Unexpected("PINGRESP"),
    })
}

fn props_from5(p: &v5::PublishProperties) -> MsgProps {
    MsgProps {
        payload_format: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
    }
}

fn read5(buf: &mut BytesMut, max: usize) -> Result<In, CodecError> {
    // A DISCONNECT may omit its reason code and properties (remaining
    // length 0 means "normal disconnection" [MQTT-3.14.2.1]); the codec
    // refuses that form, so it is read here.
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(In::Disconnect {
            reason: 0,
            session_expiry_s: None,
        });
    }
    let p = v5::Packet::read(buf, Some(max.min(u32::MAX as usize) as u32))
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    Ok(match p {
        v5::Packet::Connect(c, will, login) => {
            let props = c.properties.unwrap_or_default();
            In::Connect(Box::new(ConnectIn {
                version: Version::V5,
                client_id: c.client_id,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                username: login
                    .as_ref()
                    .map(|l| l.username.clone())
                    .filter(|u| !u.is_empty()),
                password: login.map(|l| l.password),
                will: will
                    .map(|w| -> Result<Will, CodecError> {
                        let wp = w.properties.unwrap_or(v5::LastWillProperties {
                            delay_interval: None,
                            payload_format_indicator: None,
                            message_expiry_interval: None,
                            content_type: None,
                            response_topic: None,
                            correlation_data: None,
                            user_properties: vec![],
                        });
                        Ok(Will {
                            topic: String::from_utf8(w.topic.to_vec()).map_err(|_| {
                                CodecError::Malformed("will topic is not UTF-8".into())
                            })?,
                            payload: w.message,
                            qos: qos5(w.qos),
                            retain: w.retain,
                            delay_s: wp.delay_interval.unwrap_or(0),
                            expiry_s: wp.message_expiry_interval,
                            props: Some(MsgProps {
                                payload_format: wp.payload_format_indicator,
                                content_type: wp.content_type,
                                response_topic: wp.response_topic,
                                correlation_data: wp.correlation_data,
                                user_properties: wp.user_properties,
                            }),
                        })
                    })
                    .transpose()?,
                session_expiry_s: props.session_expiry_interval.unwrap_or(0),
                receive_max: props.receive_maximum.unwrap_or(u16::MAX).max(1),
                max_packet_size: props.max_packet_size,
                topic_alias_max: props.topic_alias_max.unwrap_or(0),
            }))
        }
        v5::Packet::Publish(p) => {
            let props = p.properties.as_ref();
            In::Publish(PublishIn {
                topic: String::from_utf8(p.topic.to_vec())
                    .map_err(|_| CodecError::Malformed("topic is not UTF-8".into()))?,
                payload: p.payload,
                qos: qos5(p.qos),
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                topic_alias: props.and_then(|p| p.topic_alias),
                expiry_s: props.and_then(|p| p.message_expiry_interval),
                props: props.map(props_from5),
            })
        }
        v5::Packet::PubAck(a) => In::PubAck(a.pkid),
        v5::Packet::PubRec(a) => In::PubRec(a.pkid),
        v5::Packet::PubRel(a) => In::PubRel(a.pkid),
        v5::Packet::PubComp(a) => In::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => In::Subscribe {
            pkid: s.pkid,
            sub_id: s.properties.as_ref().and_then(|p| p.id),
            filters: s
                .filters
                .into_iter()
                .map(|f| SubReq {
                    filter: f.path,
                    qos: qos5(f.qos),
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => 0,
                        v5::RetainForwardRule::OnNewSubscribe => 1,
                        v5::RetainForwardRule::Never => 2,
                    },
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => In::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => In::PingReq,
        v5::Packet::Disconnect(d) => In::Disconnect {
            reason: d.reason_code as u8,
            session_expiry_s: d.properties.and_then(|p| p.session_expiry_interval),
        },
        v5::Packet::Auth(_) => In::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => In::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => In::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => In::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => In::Unexpected("PINGRESP"),
    })
}

/// Why a CONNECT was refused, in version-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
    ClientIdInvalid,
    ServerBusy,
    UnsupportedVersion,
    /// The tenant's connection quota is used up.
    QuotaExceeded,
}

/// Packets the server writes.
#[derive(Debug)]
pub enum Out<'a> {
    ConnAck {
        session_present: bool,
        refusal: Option<Refusal>,
        props: ConnAckProps,
    },
    Publish {
        topic: &'a str,
        payload: &'a Bytes,
        qos: u8,
        retain: bool,
        dup: bool,
        pkid: u16,
        props: Option<&'a MsgProps>,
        expiry_s: Option<u32>,
        sub_ids: &'a [usize],
        /// v5 outbound topic alias (with an empty `topic` once the client
        /// knows it).
        alias: Option<u16>,
    },
    /// `reason` is the v5 reason code; 3.1.1 has none.
    PubAck {
        pkid: u16,
        reason: u8,
    },
    PubRec {
        pkid: u16,
        reason: u8,
    },
    PubRel {
        pkid: u16,
        reason: u8,
    },
    PubComp {
        pkid: u16,
        reason: u8,
    },
    /// Per filter: Ok(granted QoS) or Err(v5 reason; 3.1.1 sends 0x80).
    SubAck {
        pkid: u16,
        codes: Vec<Result<u8, u8>>,
    },
    /// v5 reason per filter (0x00 success, 0x11 no subscription existed).
    UnsubAck {
        pkid: u16,
        reasons: Vec<u8>,
    },
    PingResp,
    /// v5 only; on 3.1.1 the connection is simply closed.
    Disconnect {
        reason: u8,
        message: Option<&'a str>,
    },
}

#[derive(Debug, Default)]
pub struct ConnAckProps {
    pub session_expiry_s: Option<u32>,
    pub receive_max: Option<u16>,
    pub topic_alias_max: Option<u16>,
    pub max_packet_size: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub reason: Option<String>,
}

fn v5_connack_code(r: Refusal) -> v5::ConnectReturnCode {
    match r {
        Refusal::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
        Refusal::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
        Refusal::ClientIdInvalid => v5::ConnectReturnCode::ClientIdentifierNotValid,
        Refusal::ServerBusy => v5::ConnectReturnCode::ServerBusy,
        Refusal::UnsupportedVersion => v5::ConnectReturnCode::UnsupportedProtocolVersion,
        Refusal::QuotaExceeded => v5::ConnectReturnCode::QuotaExceeded,
    }
}

fn v4_connack_code(r: Refusal) -> v4::ConnectReturnCode {
    match r {
        Refusal::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
        Refusal::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
        Refusal::ClientIdInvalid => v4::ConnectReturnCode::BadClientId,
        Refusal::ServerBusy => v4::ConnectReturnCode::ServiceUnavailable,
        Refusal::UnsupportedVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
        Refusal::QuotaExceeded => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

fn puback_reason(r: u8) -> v5::PubAckReason {
    use v5::PubAckReason::*;
    match r {
        0x00 => Success,
        0x10 => NoMatchingSubscribers,
        0x83 => ImplementationSpecificError,
        0x87 => NotAuthorized,
        0x90 => TopicNameInvalid,
        0x91 => PacketIdentifierInUse,
        0x97 => QuotaExceeded,
        0x99 => PayloadFormatInvalid,
        _ => UnspecifiedError,
    }
}

fn pubrec_reason(r: u8) -> v5::PubRecReason {
    use v5::PubRecReason::*;
    match r {
        0x00 => Success,
        0x10 => NoMatchingSubscribers,
        0x83 => ImplementationSpecificError,
        0x87 => NotAuthorized,
        0x90 => TopicNameInvalid,
        0x91 => PacketIdentifierInUse,
        0x97 => QuotaExceeded,
        0x99 => PayloadFormatInvalid,
        _ => UnspecifiedError,
    }
}

fn suback_reason(r: u8) -> v5::SubscribeReasonCode {
    use v5::SubscribeReasonCode::*;
    match r {
        0x83 => ImplementationSpecific,
        0x87 => NotAuthorized,
        0x8F => TopicFilterInvalid,
        0x91 => PkidInUse,
        0x97 => QuotaExceeded,
        0x9E => SharedSubscriptionsNotSupported,
        _ => Unspecified,
    }
}

fn disconnect_text(r: u8) -> &'static str {
    match r {
        0x00 => "normal disconnection",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x87 => "not authorized",
        0x89 => "server busy",
        0x8B => "server shutting down",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x90 => "topic name invalid",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        _ => "unspecified error",
    }
}

fn disconnect_reason(r: u8) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode::*;
    match r {
        0x00 => NormalDisconnection,
        0x81 => MalformedPacket,
        0x82 => ProtocolError,
        0x83 => ImplementationSpecificError,
        0x87 => NotAuthorized,
        0x89 => ServerBusy,
        0x8B => ServerShuttingDown,
        0x8D => KeepAliveTimeout,
        0x8E => SessionTakenOver,
        0x8F => TopicFilterInvalid,
        0x90 => TopicNameInvalid,
        0x93 => ReceiveMaximumExceeded,
        0x94 => TopicAliasInvalid,
        0x95 => PacketTooLarge,
        0x96 => MessageRateTooHigh,
        0x97 => QuotaExceeded,
        0x99 => PayloadFormatInvalid,
        _ => UnspecifiedError,
    }
}

/// Encodes `out` for `version` into `buf`.
pub fn write(buf: &mut BytesMut, version: Version, out: Out<'_>) -> Result<(), CodecError> {
    let err = |e: &dyn std::fmt::Display| CodecError::Malformed(e.to_string());
    match version {
        Version::V4 => {
            let p = match out {
                Out::ConnAck {
                    session_present,
                    refusal,
                    ..
                } => v4::Packet::ConnAck(v4::ConnAck::new(
                    refusal
                        .map(v4_connack_code)
                        .unwrap_or(v4::ConnectReturnCode::Success),
                    session_present,
                )),
                Out::Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    dup,
                    pkid,
                    ..
                } => {
                    let mut p = v4::Publish::from_bytes(topic, to_q4(qos), payload.clone());
                    p.retain = retain;
                    p.dup = dup;
                    p.pkid = pkid;
                    v4::Packet::Publish(p)
                }
                Out::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(pkid)),
                Out::PubRec { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(pkid)),
                Out::PubRel { pkid, .. } => v4::Packet::PubRel(v4::PubRel::new(pkid)),
                Out::PubComp { pkid, .. } => v4::Packet::PubComp(v4::PubComp::new(pkid)),
                Out::SubAck { pkid, codes } => v4::Packet::SubAck(v4::SubAck::new(
                    pkid,
                    codes
                        .into_iter()
                        .map(|c| match c {
                            Ok(q) => v4::SubscribeReasonCode::Success(to_q4(q)),
                            Err(_) => v4::SubscribeReasonCode::Failure,
                        })
                        .collect(),
                )),
                Out::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
                Out::PingResp => v4::Packet::PingResp,
                Out::Disconnect { .. } => return Ok(()),
            };
            p.write(buf, usize::MAX).map_err(|e| err(&e))?;
        }
        Version::V5 => {
            let p = match out {
                Out::ConnAck {
                    session_present,
                    refusal,
                    props,
                } => v5::Packet::ConnAck(v5::ConnAck {
                    session_present,
                    code: refusal
                        .map(v5_connack_code)
                        .unwrap_or(v5::ConnectReturnCode::Success),
                    properties: Some(v5::ConnAckProperties {
                        session_expiry_interval: props.session_expiry_s,
                        receive_max: props.receive_max,
                        max_qos: None,
                        retain_available: Some(1),
                        max_packet_size: props.max_packet_size,
                        assigned_client_identifier: props.assigned_client_id,
                        topic_alias_max: props.topic_alias_max,
                        reason_string: props.reason,
                        user_properties: vec![],
                        wildcard_subscription_available: Some(1),
                        subscription_identifiers_available: Some(1),
                        shared_subscription_available: Some(1),
                        server_keep_alive: props.server_keep_alive,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    }),
                }),
                Out::Publish {
                    topic,
                    payload,
                    qos,
                    retain,
                    dup,
                    pkid,
                    props,
                    expiry_s,
                    sub_ids,
                    alias,
                } => {
                    let properties = if props.is_some()
                        || expiry_s.is_some()
                        || !sub_ids.is_empty()
                        || alias.is_some()
                    {
                        let p = props.cloned().unwrap_or_default();
                        Some(v5::PublishProperties {
                            payload_format_indicator: p.payload_format,
                            message_expiry_interval: expiry_s,
                            topic_alias: alias,
                            response_topic: p.response_topic,
                            correlation_data: p.correlation_data,
                            user_properties: p.user_properties,
                            subscription_identifiers: sub_ids.to_vec(),
                            content_type: p.content_type,
                        })
                    } else {
                        None
                    };
                    v5::Packet::Publish(v5::Publish {
                        dup,
                        qos: to_q5(qos),
                        retain,
                        topic: Bytes::copy_from_slice(topic.as_bytes()),
                        pkid,
                        payload: payload.clone(),
                        properties,
                    })
                }
                Out::PubAck { pkid, reason } => {
                    let mut a = v5::PubAck::new(pkid, None);
                    a.reason = puback_reason(reason);
                    v5::Packet::PubAck(a)
                }
                Out::PubRec { pkid, reason } => {
                    let mut a = v5::PubRec::new(pkid, None);
                    a.reason = pubrec_reason(reason);
                    v5::Packet::PubRec(a)
                }
                Out::PubRel { pkid, reason } => {
                    let mut a = v5::PubRel::new(pkid, None);
                    if reason == 0x92 {
                        a.reason = v5::PubRelReason::PacketIdentifierNotFound;
                    }
                    v5::Packet::PubRel(a)
                }
                Out::PubComp { pkid, reason } => {
                    let mut a = v5::PubComp::new(pkid, None);
                    if reason == 0x92 {
                        a.reason = v5::PubCompReason::PacketIdentifierNotFound;
                    }
                    v5::Packet::PubComp(a)
                }
                Out::SubAck { pkid, codes } => v5::Packet::SubAck(v5::SubAck {
                    pkid,
                    return_codes: codes
                        .into_iter()
                        .map(|c| match c {
                            Ok(q) => v5::SubscribeReasonCode::Success(to_q5(q)),
                            Err(r) => suback_reason(r),
                        })
                        .collect(),
                    properties: None,
                }),
                Out::UnsubAck { pkid, reasons } => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: reasons
                        .into_iter()
                        .map(|r| match r {
                            0x00 => v5::UnsubAckReason::Success,
                            0x11 => v5::UnsubAckReason::NoSubscriptionExisted,
                            0x87 => v5::UnsubAckReason::NotAuthorized,
                            0x8F => v5::UnsubAckReason::TopicFilterInvalid,
                            _ => v5::UnsubAckReason::UnspecifiedError,
                        })
                        .collect(),
                    properties: None,
                }),
                Out::PingResp => v5::Packet::PingResp(v5::PingResp),
                // Always with a reason string: rumqttc mis-frames a
                // DISCONNECT whose property block is absent or empty.
                Out::Disconnect { reason, message } => v5::Packet::Disconnect(v5::Disconnect {
                    reason_code: disconnect_reason(reason),
                    properties: Some(v5::DisconnectProperties {
                        session_expiry_interval: None,
                        reason_string: Some(message.unwrap_or(disconnect_text(reason)).to_string()),
                        user_properties: vec![],
                        server_reference: None,
                    }),
                }),
            };
            p.write(buf, None).map_err(|e| err(&e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn publish_bytes(topic: &str, payload: &[u8], pkid: u16) -> Vec<u8> {
        let mut p = v4::Publish::new(topic, Q4::AtLeastOnce, payload.to_vec());
        p.pkid = pkid;
        let mut out = BytesMut::new();
        v4::Packet::Publish(p).write(&mut out, usize::MAX).unwrap();
        out.to_vec()
    }

    proptest! {
        /// Arbitrary bytes never panic the reader; an incomplete frame is
        /// left untouched for the next read.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            for version in [None, Some(Version::V4), Some(Version::V5)] {
                let mut buf = BytesMut::from(&data[..]);
                for _ in 0..32 {
                    let before = buf.len();
                    match read(&mut buf, version, 1 << 16) {
                        Ok(Some(_)) => prop_assert!(buf.len() < before),
                        Ok(None) => { prop_assert_eq!(buf.len(), before); break; }
                        Err(_) => break,
                    }
                }
            }
        }

        /// A stream of packets cut at arbitrary points (as TCP delivers
        /// it) decodes to the same packets.
        #[test]
        fn split_streams_decode_the_same(
            msgs in proptest::collection::vec(("[a-z]{1,8}(/[a-z]{1,8}){0,3}", proptest::collection::vec(any::<u8>(), 0..64)), 1..10),
            cuts in proptest::collection::vec(1usize..50, 0..20),
        ) {
            let mut stream = Vec::new();
            for (i, (t, p)) in msgs.iter().enumerate() {
                stream.extend(publish_bytes(t, p, i as u16 + 1));
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut cuts = cuts.into_iter();
            while pos < stream.len() {
                let n = cuts.next().unwrap_or(stream.len()).min(stream.len() - pos);
                buf.extend_from_slice(&stream[pos..pos + n]);
                pos += n;
                while let Some(p) = read(&mut buf, Some(Version::V4), 1 << 16).unwrap() {
                    if let In::Publish(p) = p {
                        got.push((p.topic, p.payload.to_vec()));
                    }
                }
            }
            let want: Vec<(String, Vec<u8>)> = msgs.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }

    /// Everything the server writes frames exactly as a client reads it.
    #[test]
    fn written_packets_frame_exactly() {
        let payload = Bytes::from_static(b"hello");
        let props = MsgProps {
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        for version in [Version::V4, Version::V5] {
            let outs: Vec<Out<'_>> = vec![
                Out::ConnAck {
                    session_present: true,
                    refusal: None,
                    props: ConnAckProps::default(),
                },
                Out::ConnAck {
                    session_present: false,
                    refusal: Some(Refusal::BadCredentials),
                    props: ConnAckProps::default(),
                },
                Out::Publish {
                    topic: "a/b",
                    payload: &payload,
                    qos: 1,
                    retain: true,
                    dup: false,
                    pkid: 3,
                    props: Some(&props),
                    expiry_s: Some(5),
                    sub_ids: &[1],
                    alias: None,
                },
                Out::PubAck { pkid: 1, reason: 0 },
                Out::PubAck {
                    pkid: 1,
                    reason: 0x87,
                },
                Out::PubRec {
                    pkid: 2,
                    reason: 0x99,
                },
                Out::PubRel { pkid: 2, reason: 0 },
                Out::PubComp {
                    pkid: 2,
                    reason: 0x92,
                },
                Out::SubAck {
                    pkid: 4,
                    codes: vec![Ok(1), Err(0x87)],
                },
                Out::UnsubAck {
                    pkid: 5,
                    reasons: vec![0, 0x11],
                },
                Out::PingResp,
                Out::Disconnect {
                    reason: 0x95,
                    message: None,
                },
                Out::Disconnect {
                    reason: 0x8B,
                    message: Some("bye"),
                },
            ];
            for o in outs {
                let what = format!("{o:?}");
                let mut buf = BytesMut::new();
                write(&mut buf, version, o).unwrap();
                if buf.is_empty() {
                    continue; // DISCONNECT does not exist in 3.1.1
                }
                match version {
                    Version::V4 => {
                        v4::Packet::read(&mut buf, 1 << 20)
                            .unwrap_or_else(|e| panic!("{what}: {e}"));
                    }
                    Version::V5 => {
                        v5::Packet::read(&mut buf, None).unwrap_or_else(|e| panic!("{what}: {e}"));
                    }
                }
                assert!(buf.is_empty(), "{what} left {} bytes", buf.len());
            }
        }
    }

    #[test]
    fn a_bare_v5_disconnect_is_a_normal_disconnection() {
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert!(matches!(
            read(&mut buf, Some(Version::V5), 1024),
            Ok(Some(In::Disconnect {
                reason: 0,
                session_expiry_s: None
            }))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_packets_are_refused_before_they_are_read() {
        let mut buf = BytesMut::from(&publish_bytes("a", &[0u8; 2000], 1)[..10]);
        assert!(matches!(
            read(&mut buf, Some(Version::V4), 1000),
            Err(CodecError::TooLarge(_))
        ));
    }
}
