//! The session state machine under arbitrary (out-of-order, duplicate,
//! unknown-id) acknowledgements: never panics, never exceeds its window or
//! queue, never hands out packet id 0 or an id already in flight.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use twinhub_server::mqtt::session::{Message, Outgoing, Send, SessionState};

fuzz_target!(|ops: Vec<(u8, u16)>| {
    let mut s = SessionState::new(8, 4);
    let mut inflight = std::collections::HashSet::new();
    for (op, arg) in ops {
        match op % 6 {
            0 => {
                s.push(Outgoing {
                    msg: Arc::new(Message { topic: "t".into(), payload: bytes::Bytes::new(), qos: (arg % 3) as u8, retain: false, props: None, expires_at: None, from: None }),
                    qos: (arg % 3) as u8,
                    retain: false,
                    sub_ids: vec![],
                    persist_id: None,
                });
            }
            1 => {
                if let Some(Send::Publish { pkid, out, .. }) = s.next(0) {
                    if out.qos > 0 {
                        assert!(pkid != 0 && inflight.insert(pkid));
                    }
                }
            }
            2 => {
                if s.on_puback(arg).is_some() {
                    inflight.remove(&arg);
                }
            }
            3 => {
                s.on_pubrec(arg);
            }
            4 => {
                if s.on_pubcomp(arg).is_some() {
                    inflight.remove(&arg);
                }
            }
            _ => {
                s.qos2_received(arg);
                s.qos2_released(arg.wrapping_add(1));
            }
        }
        assert!(s.inflight() <= 4 && s.queued() <= 8);
    }
});
