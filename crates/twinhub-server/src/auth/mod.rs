//! Authentication and authorisation: who is calling (`Principal`), what
//! they may do (`Perm`, roles), and the secrets that prove it (device and
//! API keys as SHA-256 digests, passwords as argon2id, access tokens as
//! HS256 JWTs).
//!
//! Owns no storage: the registry keeps users, devices and sessions; this
//! module only checks. May call: `twinhub-model`.

pub mod jwt;
pub mod password;
pub mod ratelimit;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A permission. The string form is what a 403 names and what custom roles
/// list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Perm {
    TwinsRead,
    TwinsWrite,
    ModelsRead,
    ModelsWrite,
    DevicesRead,
    DevicesAdmin,
    TelemetryRead,
    TelemetryWrite,
    TelemetryDelete,
    EventsRead,
    AlarmsRead,
    AlarmsAck,
    RulesRead,
    RulesWrite,
    RoutesRead,
    RoutesWrite,
    MlRead,
    MlPredict,
    MlAdmin,
    CommandsSend,
    UsersAdmin,
    ApikeysAdmin,
    AuditRead,
    TenantsAdmin,
    MqttPublish,
    MqttSubscribe,
    SecretsAdmin,
    ConnectorsRead,
    ConnectorsWrite,
}

impl Perm {
    pub const ALL: [Perm; 29] = [
        Perm::TwinsRead,
        Perm::TwinsWrite,
        Perm::ModelsRead,
        Perm::ModelsWrite,
        Perm::DevicesRead,
        Perm::DevicesAdmin,
        Perm::TelemetryRead,
        Perm::TelemetryWrite,
        Perm::TelemetryDelete,
        Perm::EventsRead,
        Perm::AlarmsRead,
        Perm::AlarmsAck,
        Perm::RulesRead,
        Perm::RulesWrite,
        Perm::RoutesRead,
        Perm::RoutesWrite,
        Perm::MlRead,
        Perm::MlPredict,
        Perm::MlAdmin,
        Perm::CommandsSend,
        Perm::UsersAdmin,
        Perm::ApikeysAdmin,
        Perm::AuditRead,
        Perm::TenantsAdmin,
        Perm::MqttPublish,
        Perm::MqttSubscribe,
        Perm::SecretsAdmin,
        Perm::ConnectorsRead,
        Perm::ConnectorsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Perm::TwinsRead => "twins:read",
            Perm::TwinsWrite => "twins:write",
            Perm::ModelsRead => "models:read",
            Perm::ModelsWrite => "models:write",
            Perm::DevicesRead => "devices:read",
            Perm::DevicesAdmin => "devices:admin",
            Perm::TelemetryRead => "telemetry:read",
            Perm::TelemetryWrite => "telemetry:write",
            Perm::TelemetryDelete => "telemetry:delete",
            Perm::EventsRead => "events:read",
            Perm::AlarmsRead => "alarms:read",
            Perm::AlarmsAck => "alarms:ack",
            Perm::RulesRead => "rules:read",
            Perm::RulesWrite => "rules:write",
            Perm::RoutesRead => "routes:read",
            Perm::RoutesWrite => "routes:write",
            Perm::MlRead => "ml:read",
            Perm::MlPredict => "ml:predict",
            Perm::MlAdmin => "ml:admin",
            Perm::CommandsSend => "commands:send",
            Perm::UsersAdmin => "users:admin",
            Perm::ApikeysAdmin => "apikeys:admin",
            Perm::AuditRead => "audit:read",
            Perm::TenantsAdmin => "tenants:admin",
            Perm::MqttPublish => "mqtt:publish",
            Perm::MqttSubscribe => "mqtt:subscribe",
            Perm::SecretsAdmin => "secrets:admin",
            Perm::ConnectorsRead => "connectors:read",
            Perm::ConnectorsWrite => "connectors:write",
        }
    }

    fn bit(self) -> u64 {
        1 << (self as u8)
    }

    pub fn parse(s: &str) -> Option<Perm> {
        Perm::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A set of permissions as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PermSet(u64);

impl PermSet {
    pub fn of(perms: &[Perm]) -> PermSet {
        PermSet(perms.iter().fold(0, |m, p| m | p.bit()))
    }

    pub fn all() -> PermSet {
        PermSet::of(&Perm::ALL)
    }

    pub fn contains(self, p: Perm) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn union(self, o: PermSet) -> PermSet {
        PermSet(self.0 | o.0)
    }

    /// The permission names, in `Perm::ALL` order.
    pub fn names(self) -> Vec<&'static str> {
        Perm::ALL
            .iter()
            .filter(|p| self.contains(**p))
            .map(|p| p.as_str())
            .collect()
    }
}

pub const BUILTIN_ROLES: &[&str] = &[
    "system_admin",
    "tenant_admin",
    "operator",
    "viewer",
    "device",
];

/// The permissions of a built-in role; None for an unknown role.
pub fn role_perms(role: &str) -> Option<PermSet> {
    use Perm::*;
    let reads = [
        TwinsRead,
        ModelsRead,
        DevicesRead,
        TelemetryRead,
        EventsRead,
        AlarmsRead,
        RulesRead,
        RoutesRead,
        ConnectorsRead,
        MlRead,
        MqttSubscribe,
    ];
    Some(match role {
        "system_admin" => PermSet::all(),
        "tenant_admin" => PermSet(PermSet::all().0 & !TenantsAdmin.bit()),
        "operator" => PermSet::of(&reads).union(PermSet::of(&[
            TwinsWrite,
            AlarmsAck,
            CommandsSend,
            MlPredict,
            MqttPublish,
        ])),
        "viewer" => PermSet::of(&reads),
        "device" => PermSet::of(&[TelemetryWrite]),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    User(String),
    Device(String),
    ApiKey(String),
    /// The CLI working on a stopped server's data directory (in-process).
    Local,
}

/// Who is calling, in which tenant, with which permissions. Handlers take
/// it as an argument; every check goes through `require`.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub tenant: String,
    pub roles: Vec<String>,
    pub perms: PermSet,
    pub session: Option<String>,
    /// Permissions that hold only for the twins under a root (custom roles
    /// with a scope); `perms` holds everywhere in the tenant.
    pub scoped: Vec<ScopedGrant>,
}

/// Permissions limited to a twin subtree: the root and every twin reached
/// from it through the named relationships.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopedGrant {
    pub root: String,
    pub relationships: Vec<String>,
    pub perms: PermSet,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Denied {
    #[error("missing permission {}", .0.as_str())]
    Missing(Perm),
}

impl Principal {
    /// A principal with an explicit permission set (API keys made with
    /// `permissions` rather than roles).
    pub fn with_perms(
        kind: PrincipalKind,
        tenant: &str,
        roles: Vec<String>,
        perms: PermSet,
    ) -> Principal {
        Principal {
            kind,
            tenant: tenant.to_string(),
            roles,
            perms,
            session: None,
            scoped: Vec::new(),
        }
    }

    pub fn new(
        kind: PrincipalKind,
        tenant: &str,
        roles: Vec<String>,
        session: Option<String>,
    ) -> Principal {
        let perms = roles
            .iter()
            .filter_map(|r| role_perms(r))
            .fold(PermSet::default(), PermSet::union);
        Principal {
            kind,
            tenant: tenant.to_string(),
            roles,
            perms,
            session,
            scoped: Vec::new(),
        }
    }

    /// Whether `p` holds anywhere: in the whole tenant or in some subtree.
    pub fn holds_somewhere(&self, p: Perm) -> bool {
        self.perms.contains(p) || self.scoped.iter().any(|g| g.perms.contains(p))
    }

    pub fn require(&self, p: Perm) -> Result<(), Denied> {
        if self.perms.contains(p) {
            Ok(())
        } else {
            Err(Denied::Missing(p))
        }
    }

    pub fn is_system_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "system_admin")
    }

    /// The tenant a request acts in: a system admin may pick another with
    /// `?tenant=`; anyone else always acts in their own (a foreign tenant
    /// simply shows nothing of its own).
    pub fn tenant_scope(&self, requested: Option<&str>) -> String {
        match requested {
            Some(t) if self.is_system_admin() => t.to_string(),
            _ => self.tenant.clone(),
        }
    }

    pub fn name(&self) -> &str {
        match &self.kind {
            PrincipalKind::User(n) | PrincipalKind::Device(n) | PrincipalKind::ApiKey(n) => n,
            PrincipalKind::Local => "local-cli",
        }
    }
}

/// A random secret of `bytes` bytes, URL-safe base64 without padding.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time comparison of a presented secret with a stored digest.
pub fn verify_digest(secret: &str, stored: &[u8]) -> bool {
    let d = digest(secret);
    stored.len() == 32 && bool::from(d.ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_they_say() {
        let viewer = Principal::new(
            PrincipalKind::User("v".into()),
            "default",
            vec!["viewer".into()],
            None,
        );
        assert!(viewer.require(Perm::TwinsRead).is_ok());
        assert_eq!(
            viewer.require(Perm::DevicesAdmin).unwrap_err().to_string(),
            "missing permission devices:admin"
        );
        let admin = Principal::new(
            PrincipalKind::User("a".into()),
            "default",
            vec!["tenant_admin".into()],
            None,
        );
        assert!(admin.require(Perm::DevicesAdmin).is_ok());
        assert!(admin.require(Perm::TenantsAdmin).is_err());
        assert_eq!(admin.tenant_scope(Some("other")), "default");
        let sys = Principal::new(
            PrincipalKind::User("s".into()),
            "default",
            vec!["system_admin".into()],
            None,
        );
        assert_eq!(sys.tenant_scope(Some("other")), "other");
    }

    #[test]
    fn secrets_and_digests() {
        let s = random_secret(24);
        assert!(s.len() >= 32, "at least 192 bits");
        assert_ne!(s, random_secret(24));
        let d = digest(&s);
        assert!(verify_digest(&s, &d));
        assert!(!verify_digest("wrong", &d));
        assert!(!verify_digest(&s, &d[..31]));
    }
}
