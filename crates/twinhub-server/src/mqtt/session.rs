//! Per-session delivery state: the bounded queue of messages waiting for
//! the client, the in-flight window (packet ids awaiting PUBACK / PUBREC /
//! PUBCOMP), and QoS 2 packet ids received but not yet released. Pure and
//! tested without sockets; the connection task drives it.

use bytes::Bytes;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

/// MQTT 5 properties a message carries from publisher to subscriber.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MsgProps {
    pub payload_format: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// A published message as the broker routes it. The topic is the one
/// clients see (tenant namespacing is the router's business).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<Arc<MsgProps>>,
    /// Clock time (µs) after which the message is discarded (v5 message
    /// expiry).
    pub expires_at: Option<i64>,
    /// The publishing client (for no-local).
    pub from: Option<Arc<str>>,
}

/// A message on its way to one subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub msg: Arc<Message>,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<usize>,
    /// The stored copy's id when the session is persistent (deleted once
    /// the client acknowledged the message).
    pub persist_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitAck,
    AwaitRec,
    AwaitComp,
}

/// What a PUBREC meant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PubRec {
    /// Not a QoS 2 message in flight.
    Unknown,
    /// The first PUBREC for it (with the stored copy's id, to record).
    First(Option<i64>),
    /// A repeated PUBREC.
    Again,
}

/// What the connection should write next.
#[derive(Debug, Clone, PartialEq)]
pub enum Send {
    Publish { pkid: u16, out: Outgoing, dup: bool },
    PubRel(u16),
}

#[derive(Debug)]
pub struct SessionState {
    queue: VecDeque<Outgoing>,
    cap: usize,
    inflight: BTreeMap<u16, (Outgoing, Phase)>,
    incoming_qos2: HashSet<u16>,
    next_pkid: u16,
    /// How many QoS 1/2 messages may await acknowledgement at once.
    pub window: u16,
    pub dropped: u64,
}

impl SessionState {
    pub fn new(cap: usize, window: u16) -> SessionState {
        SessionState {
            queue: VecDeque::new(),
            cap: cap.max(1),
            inflight: BTreeMap::new(),
            incoming_qos2: HashSet::new(),
            next_pkid: 0,
            window: window.max(1),
            dropped: 0,
        }
    }

    /// Queues a message; when the queue is full the oldest is dropped (and
    /// returned) so a slow subscriber never holds up anyone else.
    pub fn push(&mut self, o: Outgoing) -> Option<Outgoing> {
        let dropped = if self.queue.len() >= self.cap {
            self.dropped += 1;
            self.queue.pop_front()
        } else {
            None
        };
        self.queue.push_back(o);
        dropped
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn queue_iter(&self) -> impl Iterator<Item = &Outgoing> {
        self.queue.iter()
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid == 0 {
                self.next_pkid = 1;
            }
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// The next message to write, if the window allows. Expired messages
    /// are dropped here [MQTT-3.3.2-5].
    pub fn next(&mut self, now_us: i64) -> Option<Send> {
        loop {
            let front = self.queue.front()?;
            if front.msg.expires_at.is_some_and(|e| e <= now_us) {
                self.queue.pop_front();
                continue;
            }
            if front.qos > 0 && self.inflight.len() >= self.window as usize {
                return None;
            }
            let out = self.queue.pop_front().expect("front exists");
            if out.qos == 0 {
                return Some(Send::Publish {
                    pkid: 0,
                    out,
                    dup: false,
                });
            }
            let pkid = self.alloc_pkid();
            let phase = if out.qos == 1 {
                Phase::AwaitAck
            } else {
                Phase::AwaitRec
            };
            self.inflight.insert(pkid, (out.clone(), phase));
            return Some(Send::Publish {
                pkid,
                out,
                dup: false,
            });
        }
    }

    /// PUBACK for a QoS 1 message we sent.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Outgoing> {
        if !matches!(self.inflight.get(&pkid), Some((_, Phase::AwaitAck))) {
            return None;
        }
        self.inflight.remove(&pkid).map(|(o, _)| o)
    }

    /// PUBREC for a QoS 2 message we sent; the caller answers PUBREL.
    pub fn on_pubrec(&mut self, pkid: u16) -> PubRec {
        match self.inflight.get_mut(&pkid) {
            Some((o, p @ Phase::AwaitRec)) => {
                *p = Phase::AwaitComp;
                PubRec::First(o.persist_id)
            }
            Some((_, Phase::AwaitComp)) => PubRec::Again,
            _ => PubRec::Unknown,
        }
    }

    /// A stored message that was in flight when the server stopped: it
    /// goes back in flight under its packet id, so the reconnecting client
    /// gets the same PUBLISH (DUP) or PUBREL again and never a second copy
    /// under a new id [MQTT-4.3.3].
    pub fn restore_inflight(&mut self, out: Outgoing, pkid: u16, released: bool) {
        if pkid == 0 || self.inflight.contains_key(&pkid) {
            self.push(out);
            return;
        }
        let phase = match (out.qos, released) {
            (_, true) => Phase::AwaitComp,
            (1, _) => Phase::AwaitAck,
            _ => Phase::AwaitRec,
        };
        self.inflight.insert(pkid, (out, phase));
    }

    pub fn on_pubcomp(&mut self, pkid: u16) -> Option<Outgoing> {
        if !matches!(self.inflight.get(&pkid), Some((_, Phase::AwaitComp))) {
            return None;
        }
        self.inflight.remove(&pkid).map(|(o, _)| o)
    }

    /// On reconnect of a persistent session: unacknowledged PUBLISHes again
    /// with DUP set, PUBRELs for those already received [MQTT-4.4.0-1].
    pub fn replay(&self) -> Vec<Send> {
        self.inflight
            .iter()
            .map(|(pkid, (out, phase))| match phase {
                Phase::AwaitComp => Send::PubRel(*pkid),
                _ => Send::Publish {
                    pkid: *pkid,
                    out: out.clone(),
                    dup: true,
                },
            })
            .collect()
    }

    /// A QoS 2 PUBLISH arrived; false if its packet id is already awaiting
    /// PUBREL (a duplicate that must not be delivered again).
    pub fn qos2_received(&mut self, pkid: u16) -> bool {
        self.incoming_qos2.insert(pkid)
    }

    pub fn qos2_released(&mut self, pkid: u16) -> bool {
        self.incoming_qos2.remove(&pkid)
    }

    /// Packet ids received before a restart and not yet released.
    pub fn restore_qos2_in(&mut self, pkid: u16) {
        self.incoming_qos2.insert(pkid);
    }

    pub fn qos2_pending(&self, pkid: u16) -> bool {
        self.incoming_qos2.contains(&pkid)
    }

    /// Everything still owed to the client (persisted for restart).
    pub fn pending(&self) -> Vec<Outgoing> {
        self.inflight
            .values()
            .map(|(o, _)| o.clone())
            .chain(self.queue.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(qos: u8, n: u8) -> Outgoing {
        Outgoing {
            msg: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from(vec![n]),
                qos,
                retain: false,
                props: None,
                expires_at: None,
                from: None,
            }),
            qos,
            retain: false,
            sub_ids: vec![],
            persist_id: None,
        }
    }

    #[test]
    fn window_acks_and_replay() {
        let mut s = SessionState::new(10, 2);
        for i in 0..4 {
            s.push(out(1, i));
        }
        let a = s.next(0).unwrap();
        let b = s.next(0).unwrap();
        assert!(s.next(0).is_none(), "window of 2 is full");
        let (Send::Publish { pkid: pa, .. }, Send::Publish { pkid: pb, .. }) = (a, b) else {
            panic!()
        };
        assert_ne!(pa, pb);
        assert!(s.on_pubcomp(pa).is_none(), "wrong phase");
        assert!(s.on_puback(pa).is_some());
        assert!(s.on_puback(pa).is_none(), "acked once");
        assert!(matches!(s.next(0), Some(Send::Publish { .. })));
        let replay = s.replay();
        assert_eq!(replay.len(), 2);
        assert!(replay
            .iter()
            .all(|r| matches!(r, Send::Publish { dup: true, .. })));
    }

    #[test]
    fn qos2_flow_and_duplicates() {
        let mut s = SessionState::new(10, 10);
        s.push(out(2, 1));
        let Some(Send::Publish { pkid, .. }) = s.next(0) else {
            panic!()
        };
        assert_eq!(s.on_pubrec(pkid), PubRec::First(None));
        assert_eq!(s.on_pubrec(pkid), PubRec::Again);
        assert_eq!(s.replay(), vec![Send::PubRel(pkid)]);
        assert!(s.on_pubcomp(pkid).is_some());
        assert_eq!(s.inflight(), 0);
        assert!(s.qos2_received(7));
        assert!(!s.qos2_received(7), "a duplicate is recognised");
        assert!(s.qos2_released(7));
        assert!(!s.qos2_released(7));
    }

    #[test]
    fn restored_exchanges_resume_under_their_ids() {
        let mut s = SessionState::new(10, 10);
        s.restore_inflight(out(2, 1), 5, true);
        s.restore_inflight(out(2, 2), 9, false);
        s.restore_inflight(out(2, 3), 9, false); // id taken: queued anew
        assert_eq!(s.inflight(), 2);
        let replay = s.replay();
        assert_eq!(replay[0], Send::PubRel(5));
        assert!(
            matches!(&replay[1], Send::Publish { pkid: 9, dup: true, out } if out.msg.payload[0] == 2)
        );
        let Some(Send::Publish { pkid, out, .. }) = s.next(0) else {
            panic!()
        };
        assert!(pkid != 5 && pkid != 9 && out.msg.payload[0] == 3);
        assert!(s.on_pubcomp(5).is_some());
        assert_eq!(s.on_pubrec(9), PubRec::First(None));
        s.restore_qos2_in(7);
        assert!(
            !s.qos2_received(7),
            "a retransmission after restart is known"
        );
    }

    #[test]
    fn full_queue_drops_oldest_and_counts() {
        let mut s = SessionState::new(2, 10);
        s.push(out(0, 1));
        s.push(out(0, 2));
        let dropped = s.push(out(0, 3)).unwrap();
        assert_eq!(dropped.msg.payload[0], 1);
        assert_eq!(s.dropped, 1);
        let Some(Send::Publish { out, pkid: 0, .. }) = s.next(0) else {
            panic!()
        };
        assert_eq!(out.msg.payload[0], 2);
    }

    #[test]
    fn expired_messages_are_not_sent() {
        let mut s = SessionState::new(10, 10);
        let mut o = out(1, 1);
        Arc::make_mut(&mut o.msg).expires_at = Some(100);
        s.push(o);
        s.push(out(1, 2));
        let Some(Send::Publish { out, .. }) = s.next(200) else {
            panic!()
        };
        assert_eq!(out.msg.payload[0], 2);
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = SessionState::new(100_000, u16::MAX);
        s.next_pkid = u16::MAX - 1;
        for i in 0..3 {
            s.push(out(1, i));
        }
        let ids: Vec<u16> = (0..3)
            .map(|_| match s.next(0) {
                Some(Send::Publish { pkid, .. }) => pkid,
                _ => panic!(),
            })
            .collect();
        assert_eq!(ids, vec![u16::MAX, 1, 2], "0 is never a packet id");
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the client acknowledges (late, twice, unknown ids), the
        /// window and the queue bound hold, packet ids are never 0 nor
        /// reused while in flight, and every QoS 1/2 message is either in
        /// flight, queued, acknowledged or counted as dropped.
        #[test]
        fn invariants_hold_under_any_acknowledgements(ops in proptest::collection::vec((0u8..5, any::<u16>()), 0..300)) {
            let mut s = SessionState::new(8, 4);
            let mut in_flight: HashSet<u16> = HashSet::new();
            let (mut pushed, mut acked) = (0u64, 0u64);
            for (op, arg) in ops {
                match op {
                    0 => {
                        let o = Outgoing { msg: Arc::new(Message { topic: "t".into(), payload: Bytes::new(), qos: 1, retain: false, props: None, expires_at: None, from: None }), qos: 1 + (arg % 2) as u8, retain: false, sub_ids: vec![], persist_id: None };
                        s.push(o);
                        pushed += 1;
                    }
                    1 => if let Some(Send::Publish { pkid, .. }) = s.next(0) {
                        prop_assert!(pkid != 0);
                        prop_assert!(in_flight.insert(pkid), "id {} reused while in flight", pkid);
                    },
                    2 => if s.on_puback(arg).is_some() { in_flight.remove(&arg); acked += 1; },
                    3 => { s.on_pubrec(arg); }
                    _ => if s.on_pubcomp(arg).is_some() { in_flight.remove(&arg); acked += 1; },
                }
                prop_assert!(s.inflight() <= 4);
                prop_assert!(s.queued() <= 8);
                prop_assert_eq!(pushed, acked + s.dropped + s.inflight() as u64 + s.queued() as u64);
            }
        }
    }
}
