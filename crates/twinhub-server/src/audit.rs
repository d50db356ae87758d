//! The tamper-evident audit log. Every security-relevant or state-changing
//! action is appended to its tenant's chain (or `system`); each entry's MAC
//! is HMAC-SHA-256(key, previous MAC ‖ entry), keyed from the
//! configuration (`audit.key`) or a key file kept beside — not inside — the
//! database. The chain heads are also checkpointed to a file outside the
//! database, so a truncated tail, or a chain recomputed by someone who can
//! write the database but not the key and checkpoint, is detected.
//!
//! May call: `store`, `clock`, `keyfile`.

use crate::clock::SharedClock;
use crate::store::audit::{self as rows, AuditRow};
use crate::store::{Store, StoreError};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

type HmacSha256 = Hmac<Sha256>;

pub const SYSTEM_CHAIN: &str = "system";
const KEY_FILE: &str = "audit.key";
const HEADS_FILE: &str = "audit-heads.json";

type Heads = Arc<Mutex<HashMap<String, (i64, Vec<u8>)>>>;

pub struct AuditLog {
    store: Store,
    clock: SharedClock,
    key: Vec<u8>,
    heads: Heads,
    heads_file: PathBuf,
    checkpoint: Arc<Checkpoint>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// The heads file is rewritten (and synced) off the store's writer, once
/// for however many entries committed meanwhile: one file write per entry
/// capped durable twin writes at about a thousand a second. It may lag the
/// database by the entries of the last moments, never lead it; `verify`
/// brings it up to date first.
#[derive(Default)]
struct Checkpoint {
    /// (heads changed since written, closing)
    state: Mutex<(bool, bool)>,
    wake: std::sync::Condvar,
    /// One writer of the file (and its temporary) at a time.
    writing: Mutex<()>,
}

fn write_heads(cp: &Checkpoint, heads: &Heads, file: &std::path::Path) {
    let _one = cp.writing.lock().expect("checkpoint writer");
    let snapshot: HashMap<String, serde_json::Value> = heads
        .lock()
        .expect("audit heads")
        .iter()
        .map(|(c, (s, m))| (c.clone(), serde_json::json!({"seq": s, "mac": hex(m)})))
        .collect();
    if let Err(e) = crate::keyfile::write_private(
        file,
        serde_json::to_vec(&snapshot).unwrap_or_default().as_slice(),
    ) {
        tracing::error!(error = %e, "could not checkpoint the audit chain heads");
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.checkpoint.state.lock().expect("checkpoint").1 = true;
        self.checkpoint.wake.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub chain: String,
    pub ok: bool,
    pub entries: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn mac(key: &[u8], prev: &[u8], r: &AuditRow) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(prev);
    // Length-prefixed fields: no two entries serialise alike.
    for part in [
        r.chain.as_bytes(),
        &r.seq.to_be_bytes(),
        &r.ts.to_be_bytes(),
        r.actor.as_bytes(),
        r.action.as_bytes(),
        r.target.as_bytes(),
        r.detail.as_bytes(),
    ] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl AuditLog {
    /// Opens the log: the key from config, else from (or newly into) the
    /// key file beside the database.
    pub fn open(
        store: Store,
        clock: SharedClock,
        configured_key: Option<&str>,
    ) -> Result<AuditLog, StoreError> {
        let dir = store.dir().to_path_buf();
        let key = crate::keyfile::load_or_create(&dir, KEY_FILE, configured_key)?;
        let heads: HashMap<String, (i64, Vec<u8>)> = store
            .read(|c| rows::heads(c))?
            .into_iter()
            .map(|(c, s, m)| (c, (s, m)))
            .collect();
        let heads: Heads = Arc::new(Mutex::new(heads));
        let heads_file = dir.join(HEADS_FILE);
        let checkpoint = Arc::new(Checkpoint::default());
        let checkpointer = {
            let (cp, heads, file) = (checkpoint.clone(), heads.clone(), heads_file.clone());
            std::thread::Builder::new()
                .name("twinhub-audit".into())
                .spawn(move || loop {
                    let closing = {
                        let mut st = cp.state.lock().expect("checkpoint");
                        while !st.0 && !st.1 {
                            st = cp.wake.wait(st).expect("checkpoint");
                        }
                        let dirty = std::mem::take(&mut st.0);
                        if !dirty && st.1 {
                            return;
                        }
                        st.1
                    };
                    write_heads(&cp, &heads, &file);
                    if closing {
                        return;
                    }
                })
                .map_err(StoreError::Io)?
        };
        Ok(AuditLog {
            store,
            clock,
            key,
            heads,
            heads_file,
            checkpoint,
            checkpointer: Some(checkpointer),
        })
    }

    /// Appends an entry; returns once it is durable.
    pub async fn record(
        &self,
        chain: &str,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<i64, StoreError> {
        self.store
            .write(self.entry(chain, actor, action, target, detail))
            .await
    }

    /// An entry to append inside another write's transaction (so a change
    /// and its audit entry commit together, or neither does): call the
    /// returned closure with that write's context.
    pub fn entry(
        &self,
        chain: &str,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> impl FnOnce(&mut crate::store::WriteCtx<'_>) -> Result<i64, StoreError> + Send + 'static
    {
        let (key, heads, checkpoint) = (
            self.key.clone(),
            self.heads.clone(),
            self.checkpoint.clone(),
        );
        let mut row = AuditRow {
            chain: chain.to_string(),
            seq: 0,
            ts: self.clock.now_us(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail: detail.to_string(),
            mac: Vec::new(),
        };
        move |ctx| {
            let mut h = heads.lock().expect("audit heads");
            let (prev_seq, prev_mac) = h.get(&row.chain).cloned().unwrap_or((0, Vec::new()));
            row.seq = prev_seq + 1;
            row.mac = mac(&key, &prev_mac, &row);
            rows::append(ctx.tx, &row)?;
            let previous = h.insert(row.chain.clone(), (row.seq, row.mac.clone()));
            drop(h);
            let (h2, chain) = (heads.clone(), row.chain.clone());
            ctx.on_rollback(move |_| {
                let mut h = h2.lock().expect("audit heads");
                match previous {
                    Some(p) => h.insert(chain, p),
                    None => h.remove(&chain),
                };
            });
            ctx.after_commit(move |_| {
                checkpoint.state.lock().expect("checkpoint").0 = true;
                checkpoint.wake.notify_one();
            });
            Ok(row.seq)
        }
    }

    /// Entries of one chain after `after`, oldest first.
    pub fn page(&self, chain: &str, after: i64, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        self.store.read(|c| rows::page(c, chain, after, limit))
    }

    /// Recomputes a chain and compares its head with the checkpoint kept
    /// outside the database.
    pub fn verify(&self, chain: &str) -> Result<ChainReport, StoreError> {
        write_heads(&self.checkpoint, &self.heads, &self.heads_file);
        let checkpoint: Option<(i64, String)> = std::fs::read(&self.heads_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                let c = v.get(chain)?;
                Some((c["seq"].as_i64()?, c["mac"].as_str()?.to_string()))
            });
        let mut report = ChainReport {
            chain: chain.to_string(),
            ok: true,
            entries: 0,
            first_bad: None,
            reason: None,
        };
        let mut prev_mac: Vec<u8> = Vec::new();
        let mut expected = 1i64;
        let mut after = 0i64;
        let mut macs: HashMap<i64, Vec<u8>> = HashMap::new();
        loop {
            let page = self.page(chain, after, 5000)?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                report.entries += 1;
                if report.ok {
                    let bad = if r.seq != expected {
                        Some((expected, "an entry is missing or out of order"))
                    } else if mac(&self.key, &prev_mac, r) != r.mac {
                        Some((r.seq, "the entry was altered"))
                    } else {
                        None
                    };
                    if let Some((seq, why)) = bad {
                        report.ok = false;
                        report.first_bad = Some(seq);
                        report.reason = Some(why.into());
                    }
                }
                prev_mac = r.mac.clone();
                expected = r.seq + 1;
                if checkpoint.as_ref().is_some_and(|(s, _)| *s == r.seq) {
                    macs.insert(r.seq, r.mac.clone());
                }
                after = r.seq;
            }
        }
        if report.ok {
            if let Some((seq, m)) = &checkpoint {
                if *seq > after {
                    report.ok = false;
                    report.first_bad = Some(after + 1);
                    report.reason =
                        Some("entries after the last one in the database were removed".into());
                } else if macs.get(seq).map(|x| hex(x)).as_deref() != Some(m.as_str()) {
                    report.ok = false;
                    report.first_bad = Some(*seq);
                    report.reason = Some("the chain no longer matches its checkpoint".into());
                }
            }
        }
        Ok(report)
    }

    pub fn chains(&self) -> Result<Vec<String>, StoreError> {
        self.store.read(|c| rows::chains(c))
    }
}
