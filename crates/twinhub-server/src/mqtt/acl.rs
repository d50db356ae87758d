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
        Identity::Device { id } => own_prefix(topic, id),
        Identity::User { perms, .. } => perms.contains(Perm::MqttPublish),
        Identity::Anonymous => first_level(topic) != "devices",
    }
}

pub fn may_subscribe(who: &Identity, filter: &str) -> bool {
    match who {
        Identity::Device { id } => own_prefix(filter, id),
        Identity::User { perms, .. } => perms.contains(Perm::MqttSubscribe),
        Identity::Anonymous => {
            let first = first_level(filter);
            // A leading wildcard could reach devices/…
            first != "devices" && first != "+" && first != "#"
        }
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

    #[test]
    fn devices_stay_home() {
        let d = Identity::Device { id: "r1".into() };
        assert!(may_publish(&d, "devices/r1/telemetry"));
        assert!(!may_publish(&d, "devices/r10/telemetry"));
        assert!(!may_publish(&d, "devices/r2/telemetry"));
        assert!(!may_publish(&d, "plant/x"));
        assert!(!may_publish(&d, "devices/r1"));
        assert!(may_subscribe(&d, "devices/r1/commands/#"));
        assert!(!may_subscribe(&d, "devices/+/commands/#"));
        assert!(!may_subscribe(&d, "#"));
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
        assert!(
            !may_subscribe(&a, "#")
                && !may_subscribe(&a, "+/r1/telemetry")
                && !may_subscribe(&a, "devices/#")
        );
    }
}
