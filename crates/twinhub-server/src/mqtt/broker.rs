//! The broker: sessions by client id, the subscription router, retained
//! messages, command round-trips, and the delivery of every published
//! message to the sessions it matches. Connections call into it; it never
//! touches a socket.

use super::acl::Identity;
use super::codec::Refusal;
use super::persist::{self, Op, Persister};
use super::router::{Router, Sub};
use super::session::{Message, Outgoing, SessionState};
use super::topic;
use crate::auth::password;
use crate::metrics::{Counter, CounterVec};
use crate::registry::DeviceAuthError;
use crate::store::mqtt as rows_t;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

pub use super::settings::{RateAction, Settings};

/// Why a connection is being closed from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    TakenOver = 1,
    SlowConsumer = 2,
    Shutdown = 3,
}

/// How a connection is told to leave: the first reason given, and its
/// task woken. A channel would do, but costs ~350 bytes per idle
/// connection; this is a byte and a `Notify`.
#[derive(Default)]
pub struct Kicker {
    reason: std::sync::atomic::AtomicU8,
    wake: Notify,
}

impl Kicker {
    fn kick(&self, why: Kick) {
        let _ = self
            .reason
            .compare_exchange(0, why as u8, Ordering::SeqCst, Ordering::SeqCst);
        // A stored permit if the task is not waiting yet: never lost.
        self.wake.notify_one();
    }

    /// Resolves once the connection has been told to leave.
    pub async fn kicked(&self) -> Kick {
        loop {
            match self.reason.load(Ordering::SeqCst) {
                1 => return Kick::TakenOver,
                2 => return Kick::SlowConsumer,
                3 => return Kick::Shutdown,
                _ => self.wake.notified().await,
            }
        }
    }
}

struct Link {
    gen: u64,
    kick: Arc<Kicker>,
}

pub struct SessionHandle {
    pub client_id: Arc<str>,
    pub tenant: Arc<str>,
    pub owner: String,
    pub state: Mutex<SessionState>,
    /// Woken when messages are queued for the client.
    pub notify: Notify,
    /// Filters as subscribed (with any `$share/` prefix) → options.
    pub subs: Mutex<HashMap<String, Sub>>,
    link: Mutex<Option<Link>>,
    detached: Notify,
    pub expiry_s: AtomicU32,
    gen: AtomicU64,
    /// A copy of this session is in the store.
    persisted: AtomicBool,
}

impl SessionHandle {
    pub fn connected(&self) -> bool {
        self.link.lock().expect("link").is_some()
    }

    /// Tells the connection holding this session, if any, to leave.
    fn kick(&self, why: Kick) {
        if let Some(l) = self.link.lock().expect("link").as_ref() {
            l.kick.kick(why);
        }
    }
}

#[derive(Default)]
pub struct MqttMetrics {
    pub connections: AtomicUsize,
    pub refused: CounterVec,
    pub messages_in: CounterVec,
    pub messages_out: CounterVec,
    pub acl_denied: Counter,
    pub dropped_slow: Counter,
    pub telemetry_rejected: Counter,
    pub rate_limited: Counter,
    /// 3.1.1 connections closed instead of acknowledging a message that
    /// was not stored.
    pub unacknowledged_closes: Counter,
}

fn qos_label(q: u8) -> &'static str {
    match q {
        0 => "0",
        1 => "1",
        _ => "2",
    }
}

impl MqttMetrics {
    pub fn count_in(&self, qos: u8) {
        self.messages_in.add(qos_label(qos), 1);
    }
    pub fn count_out(&self, qos: u8) {
        self.messages_out.add(qos_label(qos), 1);
    }
}

/// What the broker uses of the rest of twinhub: handles to the
/// subsystems it calls, never the application state (the API holds the
/// broker, not the other way round).
#[derive(Clone)]
/// One copy of a message on its way to one session.
pub struct Delivery {
    session: Arc<SessionHandle>,
    out: Outgoing,
}

pub struct BrokerDeps {
    pub registry: Arc<crate::registry::Registry>,
    pub pipeline: Arc<crate::pipeline::Pipeline>,
    pub quotas: Arc<crate::quotas::Quotas>,
    pub metrics: Arc<crate::metrics::ServerMetrics>,
    pub store: crate::store::Store,
    pub clock: crate::clock::SharedClock,
    pub decode_limits: twinhub_codec::Limits,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Who answers a device's function call (`devices/{id}/functions/{name}/
/// {requestId}`): the routes, set at start (the broker does not know them).
pub trait FunctionCalls: Send + Sync {
    fn call(&self, tenant: &str, device: &str, name: &str, request_id: &str, payload: Bytes);
}

pub struct Broker {
    pub deps: BrokerDeps,
    functions: std::sync::OnceLock<Arc<dyn FunctionCalls>>,
    pub sparkplug: super::sparkplug::SparkplugState,
    pub settings: Settings,
    sessions: RwLock<HashMap<Arc<str>, Arc<SessionHandle>>>,
    router: RwLock<Router>,
    retained: RwLock<HashMap<Arc<str>, BTreeMap<String, Arc<Message>>>>,
    commands: Mutex<HashMap<String, oneshot::Sender<Bytes>>>,
    pub metrics: MqttMetrics,
    next_gen: AtomicU64,
    share_rr: AtomicUsize,
    dummy_hash: String,
    pub persist: Persister,
}

impl Broker {
    /// Starts the broker with the state the store kept: retained messages,
    /// persistent sessions with their subscriptions and queued messages.
    pub async fn open(
        deps: BrokerDeps,
        settings: Settings,
        cost: password::Cost,
    ) -> Result<Arc<Broker>, crate::store::StoreError> {
        let (retained, sessions, queue, qos2_in) = deps.store.read(|c| {
            Ok((
                rows_t::load_retained(c)?,
                rows_t::load_sessions(c)?,
                rows_t::load_queue(c)?,
                rows_t::load_qos2_in(c)?,
            ))
        })?;
        let next_id = queue.iter().map(|q| q.id).max().unwrap_or(0) + 1;
        let broker = Arc::new(Broker {
            functions: Default::default(),
            sparkplug: Default::default(),
            persist: Persister::start(deps.store.clone(), next_id),
            settings,
            sessions: RwLock::new(HashMap::new()),
            router: RwLock::new(Router::default()),
            retained: RwLock::new(HashMap::new()),
            commands: Mutex::new(HashMap::new()),
            metrics: MqttMetrics::default(),
            next_gen: AtomicU64::new(1),
            share_rr: AtomicUsize::new(0),
            dummy_hash: password::dummy_hash(cost),
            deps,
        });
        broker.restore(retained, sessions, queue, qos2_in);
        // Server shutdown reaches connections as a kick, so an idle one
        // does not carry its own watch future.
        let (mut sd, weak) = (broker.deps.shutdown.clone(), Arc::downgrade(&broker));
        tokio::spawn(async move {
            while !*sd.borrow_and_update() {
                if sd.changed().await.is_err() {
                    break;
                }
            }
            if let Some(b) = weak.upgrade() {
                b.kick_all(Kick::Shutdown);
            }
        });
        Ok(broker)
    }

    /// Tells every connected client to leave.
    fn kick_all(&self, why: Kick) {
        for h in self.sessions.read().expect("sessions").values() {
            h.kick(why);
        }
    }

    fn restore(
        self: &Arc<Self>,
        retained: Vec<rows_t::RetainedRow>,
        sessions: Vec<rows_t::SessionRow>,
        queue: Vec<rows_t::QueuedRow>,
        qos2_in: Vec<(String, u16)>,
    ) {
        let now = self.now_us();
        {
            let mut all = self.retained.write().expect("retained");
            for r in retained {
                if r.expires_at.is_some_and(|e| e <= now) {
                    continue;
                }
                let tenant: Arc<str> = r.tenant.as_str().into();
                let m = persist::message_from_retained(r);
                all.entry(tenant)
                    .or_default()
                    .insert(m.topic.to_string(), Arc::new(m));
            }
        }
        let mut stale = Vec::new();
        for s in sessions {
            // A session whose connection was open at a crash counts from now.
            let since = s.disconnected_at.unwrap_or(now);
            let left_us = since + s.expiry_s as i64 * 1_000_000 - now;
            if left_us <= 0 {
                stale.push(Op::DelSession(s.client_id));
                continue;
            }
            let client: Arc<str> = s.client_id.as_str().into();
            let h = Arc::new(SessionHandle {
                client_id: client.clone(),
                tenant: s.tenant.as_str().into(),
                owner: s.owner,
                state: Mutex::new(SessionState::new(
                    self.settings.max_queued,
                    self.settings.max_inflight,
                )),
                notify: Notify::new(),
                subs: Mutex::new(HashMap::new()),
                link: Mutex::new(None),
                detached: Notify::new(),
                expiry_s: AtomicU32::new(s.expiry_s),
                gen: AtomicU64::new(0),
                persisted: AtomicBool::new(true),
            });
            let reader = super::acl::Reader::from_owner(&h.owner);
            for (raw, sub) in persist::subs_from_text(&client, &reader, &s.subs) {
                self.router
                    .write()
                    .expect("router")
                    .subscribe(&h.tenant, sub.clone());
                h.subs.lock().expect("subs").insert(raw, sub);
            }
            self.sessions
                .write()
                .expect("sessions")
                .insert(client, h.clone());
            self.expire_later(h, 0, Duration::from_micros(left_us as u64));
        }
        {
            let sessions = self.sessions.read().expect("sessions");
            for q in queue {
                match sessions.get(q.client_id.as_str()) {
                    Some(h) if q.expires_at.is_none_or(|e| e > now) => {
                        let (pkid, released) = (q.pkid, q.released);
                        let out = persist::outgoing_from_row(q);
                        let mut st = h.state.lock().expect("state");
                        match pkid {
                            Some(pkid) => st.restore_inflight(out, pkid, released),
                            None => {
                                st.push(out);
                            }
                        }
                    }
                    _ => stale.push(Op::Dequeue(q.id)),
                }
            }
            for (client_id, pkid) in qos2_in {
                match sessions.get(client_id.as_str()) {
                    Some(h) => h.state.lock().expect("state").restore_qos2_in(pkid),
                    None => stale.push(Op::Qos2In {
                        client_id,
                        pkid,
                        held: false,
                    }),
                }
            }
        }
        self.persist.send(stale);
    }

    fn expire_later(self: &Arc<Self>, h: Arc<SessionHandle>, gen: u64, after: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if !h.connected() && h.gen.load(Ordering::SeqCst) == gen {
                me.end_session(&h, gen);
            }
        });
    }

    fn session_row(&self, h: &SessionHandle, disconnected_at: Option<i64>) -> rows_t::SessionRow {
        rows_t::SessionRow {
            client_id: h.client_id.to_string(),
            tenant: h.tenant.to_string(),
            owner: h.owner.clone(),
            expiry_s: h.expiry_s.load(Ordering::SeqCst),
            disconnected_at,
            subs: persist::subs_to_text(h.subs.lock().expect("subs").iter()),
        }
    }

    /// Writes a persistent session's row (or forgets one that stopped being
    /// persistent).
    pub fn save_session(&self, h: &SessionHandle, disconnected_at: Option<i64>) {
        if h.expiry_s.load(Ordering::SeqCst) > 0 {
            h.persisted.store(true, Ordering::SeqCst);
            self.persist
                .send(vec![Op::PutSession(self.session_row(h, disconnected_at))]);
        } else if h.persisted.swap(false, Ordering::SeqCst) {
            self.persist
                .send(vec![Op::DelSession(h.client_id.to_string())]);
        }
    }

    /// A message the client acknowledged: its stored copy goes.
    pub fn delivered(&self, o: Option<Outgoing>) {
        if let Some(id) = o.and_then(|o| o.persist_id) {
            self.persist.send(vec![Op::Dequeue(id)]);
        }
    }

    pub fn now_us(&self) -> i64 {
        self.deps.clock.now_us()
    }

    /// Checks CONNECT credentials. Every failure costs the same (one argon2
    /// verification), so neither timing nor code tells an unknown device
    /// from a wrong key, or a device from a user.
    pub async fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&str>,
        cert_device: Option<&str>,
    ) -> Result<(Identity, Arc<str>), Refusal> {
        // A client certificate from the configured CA names the device
        // (CN = device id); it replaces the password.
        if let Some(cn) = cert_device {
            if let Some(d) = self.deps.registry.device(cn) {
                if cn != client_id || username.is_some_and(|u| u != cn) {
                    return Err(Refusal::ClientIdInvalid);
                }
                if !d.row.enabled {
                    return Err(Refusal::NotAuthorized);
                }
                return Ok((
                    Identity::Device {
                        id: d.row.id.as_str().into(),
                    },
                    d.row.tenant.as_str().into(),
                ));
            }
        }
        let Some(username) = username else {
            if self.settings.allow_anonymous {
                return Ok((Identity::Anonymous, self.settings.anonymous_tenant.clone()));
            }
            return Err(Refusal::NotAuthorized);
        };
        let pw = password.unwrap_or("");
        if username == "apikey" {
            let Some(p) = self
                .deps
                .registry
                .principal_for_token(pw)
                .filter(|p| matches!(p.kind, crate::auth::PrincipalKind::ApiKey(_)))
            else {
                self.equalise_failure(pw).await;
                return Err(Refusal::BadCredentials);
            };
            if !p.perms.contains(crate::auth::Perm::MqttPublish)
                && !p.perms.contains(crate::auth::Perm::MqttSubscribe)
            {
                return Err(Refusal::NotAuthorized);
            }
            return Ok((
                Identity::User {
                    name: format!("apikey:{}", p.name()).as_str().into(),
                    perms: p.perms,
                },
                p.tenant.as_str().into(),
            ));
        }
        if self.deps.registry.device(username).is_some() {
            return match self.deps.registry.authenticate_device(username, pw) {
                Ok(d) if d.row.id != client_id => Err(Refusal::ClientIdInvalid),
                Ok(d) => Ok((
                    Identity::Device {
                        id: d.row.id.as_str().into(),
                    },
                    d.row.tenant.as_str().into(),
                )),
                Err(DeviceAuthError::Disabled) => Err(Refusal::NotAuthorized),
                Err(DeviceAuthError::BadCredentials) => {
                    self.equalise_failure(pw).await;
                    Err(Refusal::BadCredentials)
                }
            };
        }
        match self.deps.registry.check_password(username, pw).await {
            Some(user) => {
                let p = self.deps.registry.principal(
                    crate::auth::PrincipalKind::User(user.username.clone()),
                    &user.tenant,
                    user.roles.clone(),
                    None,
                );
                let perms = p.perms;
                if !perms.contains(crate::auth::Perm::MqttPublish)
                    && !perms.contains(crate::auth::Perm::MqttSubscribe)
                {
                    return Err(Refusal::NotAuthorized);
                }
                Ok((
                    Identity::User {
                        name: user.username.as_str().into(),
                        perms,
                    },
                    user.tenant.as_str().into(),
                ))
            }
            None => Err(Refusal::BadCredentials),
        }
    }

    async fn equalise_failure(&self, pw: &str) {
        let (pw, hash) = (pw.to_string(), self.dummy_hash.clone());
        let _ = tokio::task::spawn_blocking(move || password::verify(&pw, &hash)).await;
    }

    /// Attaches a connection to its session, taking over a connection that
    /// holds it. Returns the session, whether it existed, the connection's
    /// generation and its kick receiver.
    pub async fn attach(
        &self,
        client_id: &str,
        tenant: &Arc<str>,
        owner: &str,
        clean_start: bool,
        expiry_s: u32,
        window: u16,
    ) -> Result<(Arc<SessionHandle>, bool, u64, Arc<Kicker>), Refusal> {
        let existing = self
            .sessions
            .read()
            .expect("sessions")
            .get(client_id)
            .cloned();
        if let Some(old) = &existing {
            if old.owner != owner || &old.tenant != tenant {
                return Err(Refusal::ClientIdInvalid);
            }
            // Take over: ask the holder to leave and wait until it has.
            loop {
                let gone = old.detached.notified();
                let holder = old
                    .link
                    .lock()
                    .expect("link")
                    .as_ref()
                    .map(|l| l.kick.clone());
                match holder {
                    None => break,
                    Some(kick) => {
                        kick.kick(Kick::TakenOver);
                        if tokio::time::timeout(Duration::from_secs(5), gone)
                            .await
                            .is_err()
                        {
                            return Err(Refusal::ServerBusy);
                        }
                    }
                }
            }
        }
        let gen = self.next_gen.fetch_add(1, Ordering::SeqCst);
        let kicker = Arc::new(Kicker::default());
        let reuse = existing.filter(|_| !clean_start);
        let (handle, present) = match reuse {
            Some(h) => (h, true),
            None => {
                if let Some(old) = self.sessions.write().expect("sessions").remove(client_id) {
                    self.drop_subscriptions(&old);
                    if old.persisted.load(Ordering::SeqCst) {
                        self.persist
                            .send(vec![Op::DelSession(old.client_id.to_string())]);
                    }
                }
                let h = Arc::new(SessionHandle {
                    client_id: client_id.into(),
                    tenant: tenant.clone(),
                    owner: owner.to_string(),
                    state: Mutex::new(SessionState::new(self.settings.max_queued, window)),
                    notify: Notify::new(),
                    subs: Mutex::new(HashMap::new()),
                    link: Mutex::new(None),
                    detached: Notify::new(),
                    expiry_s: AtomicU32::new(expiry_s),
                    gen: AtomicU64::new(gen),
                    persisted: AtomicBool::new(false),
                });
                self.sessions
                    .write()
                    .expect("sessions")
                    .insert(h.client_id.clone(), h.clone());
                (h, false)
            }
        };
        handle.state.lock().expect("state").window = window;
        handle.expiry_s.store(expiry_s, Ordering::SeqCst);
        handle.gen.store(gen, Ordering::SeqCst);
        *handle.link.lock().expect("link") = Some(Link {
            gen,
            kick: kicker.clone(),
        });
        // Attached after the shutdown sweep: leave at once.
        if *self.deps.shutdown.borrow() {
            kicker.kick(Kick::Shutdown);
        }
        self.save_session(&handle, None);
        Ok((handle, present, gen, kicker))
    }

    /// The connection of generation `gen` is gone. A session with no expiry
    /// ends now; others wait for their expiry (or a reconnect).
    pub fn detach(self: &Arc<Self>, h: &Arc<SessionHandle>, gen: u64) {
        {
            let mut link = h.link.lock().expect("link");
            if link.as_ref().is_some_and(|l| l.gen == gen) {
                *link = None;
            } else {
                return;
            }
        }
        h.detached.notify_waiters();
        let expiry = h.expiry_s.load(Ordering::SeqCst);
        if expiry == 0 {
            self.end_session(h, gen);
            return;
        }
        self.save_session(h, Some(self.now_us()));
        self.expire_later(h.clone(), gen, Duration::from_secs(expiry as u64));
    }

    fn end_session(&self, h: &Arc<SessionHandle>, gen: u64) {
        let mut sessions = self.sessions.write().expect("sessions");
        if sessions
            .get(&h.client_id)
            .is_some_and(|cur| Arc::ptr_eq(cur, h) && h.gen.load(Ordering::SeqCst) == gen)
        {
            sessions.remove(&h.client_id);
            drop(sessions);
            self.drop_subscriptions(h);
            if h.persisted.swap(false, Ordering::SeqCst) {
                self.persist
                    .send(vec![Op::DelSession(h.client_id.to_string())]);
            }
        }
    }

    fn drop_subscriptions(&self, h: &SessionHandle) {
        let subs: Vec<Sub> = h
            .subs
            .lock()
            .expect("subs")
            .drain()
            .map(|(_, s)| s)
            .collect();
        let mut router = self.router.write().expect("router");
        for s in subs {
            router.unsubscribe(&h.tenant, &s.filter, &h.client_id, s.share.as_deref());
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.read().expect("sessions").len()
    }

    /// Adds a subscription; returns whether it replaced one.
    pub fn subscribe(&self, h: &SessionHandle, raw_filter: &str, sub: Sub) -> bool {
        self.router
            .write()
            .expect("router")
            .subscribe(&h.tenant, sub.clone());
        let replaced = h
            .subs
            .lock()
            .expect("subs")
            .insert(raw_filter.to_string(), sub)
            .is_some();
        self.save_session(h, None);
        replaced
    }

    pub fn unsubscribe(&self, h: &SessionHandle, raw_filter: &str) -> bool {
        let Some(sub) = h.subs.lock().expect("subs").remove(raw_filter) else {
            return false;
        };
        let found = self.router.write().expect("router").unsubscribe(
            &h.tenant,
            &sub.filter,
            &h.client_id,
            sub.share.as_deref(),
        );
        self.save_session(h, None);
        found
    }

    /// Stores or clears (empty payload) a retained message.
    pub fn retain(&self, tenant: &Arc<str>, msg: &Arc<Message>) -> Op {
        let mut all = self.retained.write().expect("retained");
        let map = all.entry(tenant.clone()).or_default();
        if msg.payload.is_empty() {
            map.remove(&*msg.topic);
            Op::DelRetained {
                tenant: tenant.to_string(),
                topic: msg.topic.to_string(),
            }
        } else {
            map.insert(msg.topic.to_string(), msg.clone());
            Op::PutRetained(persist::retained_row(tenant, msg))
        }
    }

    /// Retained messages matching a filter (not for shared subscriptions
    /// [MQTT-3.8.4-…]: the caller skips those).
    pub fn retained_for(
        &self,
        tenant: &str,
        filter: &str,
        reader: &super::acl::Reader,
    ) -> Vec<Arc<Message>> {
        let now = self.now_us();
        let all = self.retained.read().expect("retained");
        let Some(map) = all.get(tenant) else {
            return Vec::new();
        };
        map.values()
            .filter(|m| {
                topic::matches(&m.topic, filter)
                    && reader.may_read(&m.topic)
                    && m.expires_at.is_none_or(|e| e > now)
            })
            .cloned()
            .collect()
    }

    /// Whether any subscription matches `topic` and may read it.
    pub fn has_readers(&self, tenant: &str, topic: &str) -> bool {
        let mut subs = Vec::new();
        self.router
            .read()
            .expect("router")
            .matches(tenant, topic, &mut subs);
        subs.iter().any(|s| s.reader.may_read(topic))
    }

    /// Delivers a message to every session it matches. Never blocks: a
    /// full queue drops its oldest message (or disconnects its client).
    /// Returns the store operations that keep the copies of persistent
    /// sessions.
    pub fn route(&self, tenant: &str, msg: Arc<Message>) -> Vec<Op> {
        let (plan, mut ops) = self.plan(tenant, msg);
        ops.extend(self.deliver(plan));
        ops
    }

    /// Who gets a message, and the rows that queue its copies for
    /// persistent sessions (to be committed before `deliver`, when the
    /// message itself waits for a commit).
    pub fn plan(&self, tenant: &str, msg: Arc<Message>) -> (Vec<Delivery>, Vec<Op>) {
        let mut subs = Vec::new();
        self.router
            .read()
            .expect("router")
            .matches(tenant, &msg.topic, &mut subs);
        // Wildcards are granted and filtered here, per message, by what
        // each subscriber may read.
        subs.retain(|s| s.reader.may_read(&msg.topic));
        if subs.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let sessions = self.sessions.read().expect("sessions");
        // Shared groups deliver to one member each; prefer connected ones.
        let mut targets: HashMap<Arc<str>, Outgoing> = HashMap::new();
        let mut groups: HashMap<(Arc<str>, Arc<str>), Vec<Sub>> = HashMap::new();
        for s in subs {
            match &s.share {
                Some(g) => groups
                    .entry((g.clone(), s.filter.clone()))
                    .or_default()
                    .push(s),
                None => add_target(&mut targets, &msg, &s),
            }
        }
        for (_, members) in groups {
            let online: Vec<&Sub> = members
                .iter()
                .filter(|m| sessions.get(&m.client).is_some_and(|h| h.connected()))
                .collect();
            let pool: Vec<&Sub> = if online.is_empty() {
                members.iter().collect()
            } else {
                online
            };
            let pick = pool[self.share_rr.fetch_add(1, Ordering::Relaxed) % pool.len()];
            add_target(&mut targets, &msg, pick);
        }
        let mut ops = Vec::new();
        let mut plan = Vec::with_capacity(targets.len());
        for (client, mut out) in targets {
            let Some(h) = sessions.get(&client) else {
                continue;
            };
            // QoS 1/2 messages for a persistent session are stored until the
            // client acknowledges them.
            if out.qos > 0 && h.expiry_s.load(Ordering::SeqCst) > 0 {
                let id = self.persist.next_id();
                out.persist_id = Some(id);
                ops.push(Op::Enqueue(persist::queued_row(&client, &out, id)));
            }
            plan.push(Delivery {
                session: h.clone(),
                out,
            });
        }
        (plan, ops)
    }

    /// The rows of planned copies, to be written in another write's
    /// transaction (the telemetry they carry).
    pub fn rows_in_commit(ops: Vec<Op>) -> Option<crate::store::Also> {
        if ops.is_empty() {
            return None;
        }
        if ops.iter().all(|o| matches!(o, Op::Enqueue(_))) {
            let rows = ops
                .into_iter()
                .filter_map(|o| match o {
                    Op::Enqueue(q) => Some(q),
                    _ => None,
                })
                .collect();
            return Some(crate::store::Also::Copies(rows));
        }
        Some(crate::store::Also::Write(Box::new(move |ctx| {
            persist::apply(ctx.tx, &ops)
        })))
    }

    /// Puts planned copies in their sessions' queues; returns the rows to
    /// delete for copies a full queue dropped.
    pub fn deliver(&self, plan: Vec<Delivery>) -> Vec<Op> {
        let mut ops = Vec::new();
        for Delivery { session: h, out } in plan {
            let dropped = h.state.lock().expect("state").push(out);
            if let Some(d) = dropped {
                self.metrics.dropped_slow.inc();
                if let Some(id) = d.persist_id {
                    ops.push(Op::Dequeue(id));
                }
                if self.settings.disconnect_slow {
                    h.kick(Kick::SlowConsumer);
                }
            }
            h.notify.notify_one();
        }
        ops
    }

    /// Registers a pending command; the device's reply completes it.
    /// Publishes a command to a device on
    /// `devices/{id}/commands/{name}/{requestId}` (QoS 1, with the v5
    /// response topic and correlation data) and returns the request id and
    /// where its reply arrives.
    pub fn send_command(
        &self,
        tenant: &str,
        device: &str,
        name: &str,
        body: Bytes,
    ) -> (String, oneshot::Receiver<Bytes>) {
        let request_id = crate::auth::random_secret(9);
        let reply = self.expect_reply(&request_id);
        let msg = Message {
            topic: format!("devices/{device}/commands/{name}/{request_id}").into(),
            payload: body,
            qos: 1,
            retain: false,
            props: Some(Arc::new(super::session::MsgProps {
                payload_format: Some(1),
                content_type: Some("application/json".into()),
                response_topic: Some(format!("devices/{device}/replies/{request_id}")),
                correlation_data: Some(Bytes::from(request_id.clone())),
                user_properties: vec![],
            })),
            expires_at: None,
            from: None,
        };
        let ops = self.route(tenant, Arc::new(msg));
        self.persist.send(ops);
        (request_id, reply)
    }

    fn expect_reply(&self, request_id: &str) -> oneshot::Receiver<Bytes> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .lock()
            .expect("commands")
            .insert(request_id.to_string(), tx);
        rx
    }

    pub fn forget_reply(&self, request_id: &str) {
        self.commands.lock().expect("commands").remove(request_id);
    }

    /// Sets who answers function calls (once, at start).
    pub fn set_functions(&self, f: Arc<dyn FunctionCalls>) {
        let _ = self.functions.set(f);
    }

    /// A device's function call; without routes it is answered at once.
    pub fn function_call(
        &self,
        tenant: &str,
        device: &str,
        name: &str,
        request_id: &str,
        payload: Bytes,
    ) {
        match self.functions.get() {
            Some(f) => f.call(tenant, device, name, request_id, payload),
            None => self.publish_from_server(
                tenant,
                &format!("devices/{device}/functions/replies/{request_id}"),
                Bytes::from_static(br#"{"status":503,"error":"functions are not available"}"#),
            ),
        }
    }

    /// Publishes a message of the server's own (a function's answer) to
    /// the tenant's subscribers, at QoS 1.
    pub fn publish_from_server(&self, tenant: &str, topic: &str, payload: Bytes) {
        let msg = Message {
            topic: topic.into(),
            payload,
            qos: 1,
            retain: false,
            props: Some(Arc::new(super::session::MsgProps {
                payload_format: Some(1),
                content_type: Some("application/json".into()),
                ..Default::default()
            })),
            expires_at: None,
            from: None,
        };
        let ops = self.route(tenant, Arc::new(msg));
        self.persist.send(ops);
    }

    pub fn reply(&self, request_id: &str, payload: Bytes) -> bool {
        match self.commands.lock().expect("commands").remove(request_id) {
            Some(tx) => tx.send(payload).is_ok(),
            None => false,
        }
    }

    pub fn device_session(&self, device_id: &str) -> Option<Arc<SessionHandle>> {
        self.sessions
            .read()
            .expect("sessions")
            .get(device_id)
            .cloned()
    }

    pub fn queued_total(&self) -> usize {
        self.sessions
            .read()
            .expect("sessions")
            .values()
            .map(|h| h.state.lock().expect("state").queued())
            .sum()
    }
}

/// One delivery per client: the highest QoS of its matching
/// subscriptions, all their identifiers; no-local subscriptions skip the
/// publisher's own messages [MQTT-3.8.3-3].
fn add_target(targets: &mut HashMap<Arc<str>, Outgoing>, msg: &Arc<Message>, s: &Sub) {
    if s.no_local && msg.from.as_deref() == Some(&*s.client) {
        return;
    }
    let qos = msg.qos.min(s.qos);
    let retain = s.retain_as_published && msg.retain;
    let e = targets.entry(s.client.clone()).or_insert_with(|| Outgoing {
        msg: msg.clone(),
        qos,
        retain,
        sub_ids: Vec::new(),
        persist_id: None,
    });
    e.qos = e.qos.max(qos);
    e.retain |= retain;
    if let Some(id) = s.sub_id {
        e.sub_ids.push(id);
    }
}
