//! Who may publish and subscribe where. Devices live under their own
//! `devices/{id}/`; users and API keys need `mqtt:publish` /
//! `mqtt:subscribe` and may use any topic of their tenant; anonymous
//! clients (when allowed) stay outside `devices/`. Pure.

use crate::auth::{Perm, PermSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Identity {
    Device { id: Arc<str> },
    User { name: Arc<str>, perms: PermSet },
    Anonymous,
}

impl Identity {
    /// Who owns a session: only the same owner may resume or take it over.
    pub fn owner(&self) -> String {
        match self {
            Identity::Device { id } => format!("device:{id}"),
            Identity::User { name, .. } => format!("user:{name}"),
            Identity::Anonymous => "anonymous".into(),
        }
    }
}

/// v5 reason code 0x87 (not authorized) when refused.
pub fn may_publish(who: &Identity, topic: &str) -> bool {
    if topic.starts_with('$') {
        return false;
    }
    match who {
        Identity::Device { id } => own_prefix(topic, id) || sparkplug_own(topic, id, false),
        Identity::User { perms, .. } => perms.contains(Perm::MqttPublish),
        Identity::Anonymous => first_level(topic) != "devices",
    }
}

/// Whether `who` may read messages published on `topic`: the per-message
/// check behind every subscription (as Mosquitto's ACLs do it).
pub fn may_read(who: &Identity, topic: &str) -> bool {
    match who {
        Identity::User { perms, .. } if !perms.contains(Perm::MqttSubscribe) => false,
        _ => Reader::of(who).may_read(topic),
    }
}

/// A subscription is granted unless no topic its filter can match is
/// readable; what it matches is then filtered per message (`Reader`).
/// v5 reason code 0x87 (not authorized) when refused.
pub fn may_subscribe(who: &Identity, filter: &str) -> bool {
    match who {
        Identity::Device { id } => could_reach_own(filter, id),
        Identity::User { perms, .. } => perms.contains(Perm::MqttSubscribe),
        // Anything but devices/… is readable: only a literal first level
        // of `devices` can match nothing readable.
        Identity::Anonymous => first_level(filter) != "devices",
    }
}

/// The per-message read check a subscription carries, fixed when it is
/// made (and restored with persistent sessions from the session owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// Users and API keys with `mqtt:subscribe`: every topic of the tenant.
    All,
    /// A device: its own `devices/{id}/…` only.
    Device(Arc<str>),
    /// Anonymous clients: everything outside `devices/`.
    Anonymous,
}

impl Reader {
    pub fn of(who: &Identity) -> Reader {
        match who {
            Identity::Device { id } => Reader::Device(id.clone()),
            Identity::User { .. } => Reader::All,
            Identity::Anonymous => Reader::Anonymous,
        }
    }

    /// From `Identity::owner` (persistent sessions keep the owner).
    pub fn from_owner(owner: &str) -> Reader {
        if let Some(id) = owner.strip_prefix("device:") {
            Reader::Device(id.into())
        } else if owner.starts_with("user:") {
            Reader::All
        } else {
            Reader::Anonymous
        }
    }

    #[inline]
    pub fn may_read(&self, topic: &str) -> bool {
        match self {
            Reader::All => true,
            Reader::Device(id) => own_prefix(topic, id) || sparkplug_own(topic, id, true),
            Reader::Anonymous => first_level(topic) != "devices",
        }
    }
}

/// A Sparkplug B topic of the edge node `id` (an edge node authenticates
/// as the device named like its edge node id): what it publishes (births,
/// data, deaths) or, with `commands`, what it reads (NCMD/DCMD).
fn sparkplug_own(t: &str, id: &str, commands: bool) -> bool {
    let mut l = t.split('/');
    let (Some("spBv1.0"), Some(g), Some(kind), Some(edge)) =
        (l.next(), l.next(), l.next(), l.next())
    else {
        return false;
    };
    let mine = edge == id && !g.is_empty();
    match kind {
        "NCMD" | "DCMD" => commands && mine,
        "NBIRTH" | "NDEATH" | "DBIRTH" | "DDEATH" | "NDATA" | "DDATA" => !commands && mine,
        _ => false,
    }
}

/// Whether `filter` can match some topic under `devices/{id}/` (or the
/// device's Sparkplug commands; messages are filtered one by one).
fn could_reach_own(filter: &str, id: &str) -> bool {
    let mut levels = filter.split('/');
    match levels.next() {
        Some("#") => return true,
        Some("spBv1.0") => return true,
        Some("devices") | Some("+") => {}
        _ => return false,
    }
    match levels.next() {
        Some("#") => true,
        Some("+") => levels.next().is_some(),
        Some(l) if l == id => levels.next().is_some(),
        _ => false,
    }
}

fn first_level(t: &str) -> &str {
    t.split('/').next().unwrap_or("")
}

/// `devices/{id}/…` with the id literal (no wildcard reaching other devices).
fn own_prefix(t: &str, id: &str) -> bool {
    t.strip_prefix("devices/")
        .and_then(|r| r.strip_prefix(id))
        .is_some_and(|r| r.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn devices_stay_home() {
        let d = Identity::Device { id: "r1".into() };
        assert!(may_publish(&d, "devices/r1/telemetry"));
        assert!(!may_publish(&d, "devices/r10/telemetry"));
        assert!(!may_publish(&d, "devices/r2/telemetry"));
        assert!(!may_publish(&d, "plant/x"));
        assert!(!may_publish(&d, "devices/r1"));
        assert!(may_subscribe(&d, "devices/r1/commands/#"));
        // Wildcards are granted and filtered per message…
        assert!(may_subscribe(&d, "devices/+/commands/#"));
        assert!(may_subscribe(&d, "#") && may_subscribe(&d, "+/+/telemetry"));
        assert!(may_read(&d, "devices/r1/commands/x/1"));
        assert!(!may_read(&d, "devices/r2/commands/x/1"));
        assert!(!may_read(&d, "devices/r10/telemetry") && !may_read(&d, "plant/x"));
        // …unless nothing they can match is the device's own.
        assert!(!may_subscribe(&d, "plant/#"));
        assert!(!may_subscribe(&d, "devices/r2/#"));
        assert!(!may_subscribe(&d, "+/+"));
        assert!(!may_subscribe(&d, "devices"));
    }

    #[test]
    fn users_need_permissions_and_anonymous_stays_out_of_devices() {
        let viewer = Identity::User {
            name: "v".into(),
            perms: crate::auth::role_perms("viewer").unwrap(),
        };
        assert!(may_subscribe(&viewer, "#"));
        assert!(!may_publish(&viewer, "a/b"));
        let op = Identity::User {
            name: "o".into(),
            perms: crate::auth::role_perms("operator").unwrap(),
        };
        assert!(may_publish(&op, "devices/r1/commands/x"));
        assert!(!may_publish(&op, "$SYS/x"));
        let a = Identity::Anonymous;
        assert!(may_publish(&a, "plant/line1") && may_subscribe(&a, "plant/#"));
        assert!(!may_publish(&a, "devices/r1/telemetry"));
        // `#` and `+/…` are granted; device topics are filtered out.
        assert!(may_subscribe(&a, "#") && may_subscribe(&a, "+/r1/telemetry"));
        assert!(!may_subscribe(&a, "devices/#"));
        assert!(may_read(&a, "plant/x") && !may_read(&a, "devices/r1/telemetry"));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("devices".to_string()),
            Just("r1".to_string()),
            Just("r2".to_string()),
            Just("telemetry".to_string()),
            Just("plant".to_string()),
            Just(String::new()),
        ]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![4 => level(), 1 => Just("+".to_string())]
    }

    fn identity() -> impl Strategy<Value = Identity> {
        prop_oneof![
            Just(Identity::Device { id: "r1".into() }),
            Just(Identity::Anonymous),
            Just(Identity::User {
                name: "v".into(),
                perms: crate::auth::role_perms("viewer").unwrap()
            }),
        ]
    }

    proptest! {
        /// Random filters × random topics × every identity kind: a granted
        /// wildcard subscription delivers a message exactly when the
        /// subscriber could have subscribed to that topic directly.
        #[test]
        fn wildcards_deliver_only_what_a_direct_subscription_may(
            who in identity(),
            topic in proptest::collection::vec(level(), 1..5),
            filter in proptest::collection::vec(filter_level(), 1..5),
            hash in any::<bool>(),
        ) {
            let topic = topic.join("/");
            let mut filter = filter.join("/");
            if hash { filter.push_str("/#"); }
            let granted = may_subscribe(&who, &filter);
            let delivered = granted
                && super::super::topic::matches(&topic, &filter)
                && Reader::of(&who).may_read(&topic);
            let direct = may_subscribe(&who, &topic) && may_read(&who, &topic);
            if delivered {
                prop_assert!(direct, "{filter} delivered {topic} to {who:?}");
            }
            if direct && super::super::topic::matches(&topic, &filter) {
                prop_assert!(delivered, "{filter} withheld readable {topic} from {who:?}");
            }
        }
    }
}
