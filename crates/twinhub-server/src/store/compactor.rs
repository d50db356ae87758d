//! The compactor thread: flushes the head into per-window chunks, merges a
//! window's chunks into one once the window has closed (or has many),
//! computes a window's rollups shortly before retention retires its raw
//! points, and applies retention. Decoding, merging, encoding and rollups
//! happen here, off the writer thread, which only inserts the rows (a
//! flush in short steps between group commits: `install.rs`).
//!
//! Rollups are made late on purpose: queries read them only where raw
//! points were retired (`query.rs`), so rollups of windows whose chunks
//! are still kept would be dead weight on disk (for a 33-minute burst of
//! sensor values they were a third of the bytes beside the chunks).

use super::columns::Columns;
use super::retire::{self, raise_cut, series_run, Cut, RETENTION_SLICE, RETENTION_STEP};
use super::sql::{args, Sql};
use super::writer::Ctrl;
use super::{chunk, rollup, NewChunk, SeriesKey, Store, StoreError, WINDOW};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use twinhub_model::time::{parse_duration, US_PER_DAY};

/// Points per chunk at most; a window with more is split.
const MAX_CHUNK_POINTS: usize = 65_536;
/// An open window with this many chunks is merged without waiting.
const MERGE_OPEN_AT: usize = 8;
const WINDOWS_PER_ROUND: usize = 256;
/// Windows whose raw points retention will retire within this much time
/// get their rollups now, off the writer (retention runs once a minute; a
/// window it finds without rollups is rolled up by it, off the writer).
const PREROLL_LEAD: i64 = 2 * WINDOW;

/// How long raw points and rollups are kept, with overrides per tenant and
/// property-name prefix (first matching rule wins).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Raw points, e.g. "30d"; "forever" keeps them.
    #[serde(default = "default_raw")]
    pub raw: String,
    /// 1-minute rollups.
    #[serde(default = "default_rollup_1m")]
    pub rollup_1m: String,
    /// 1-hour rollups.
    #[serde(default = "default_forever")]
    pub rollup_1h: String,
    #[serde(default)]
    pub rules: Vec<RetentionRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub tenant: Option<String>,
    /// A property name, or a prefix ending in `*`.
    pub property: Option<String>,
    pub raw: Option<String>,
    pub rollup_1m: Option<String>,
    pub rollup_1h: Option<String>,
}

fn default_raw() -> String {
    "30d".into()
}
fn default_rollup_1m() -> String {
    "365d".into()
}
fn default_forever() -> String {
    "forever".into()
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            raw: default_raw(),
            rollup_1m: default_rollup_1m(),
            rollup_1h: default_forever(),
            rules: Vec::new(),
        }
    }
}

/// Parsed keep-times in µs (None = forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Keep {
    pub raw: Option<i64>,
    pub rollup_1m: Option<i64>,
    pub rollup_1h: Option<i64>,
}

fn keep_time(field: &str, s: &str) -> Result<Option<i64>, String> {
    if s == "forever" {
        return Ok(None);
    }
    parse_duration(s)
        .map(Some)
        .map_err(|rule| format!("{field}: {rule}, or \"forever\""))
}

impl RetentionPolicy {
    pub fn validate(&self) -> Result<(), String> {
        self.keep_for(&SeriesKey::new("", "", "")).map(|_| ())?;
        for (i, r) in self.rules.iter().enumerate() {
            for (f, v) in [
                ("raw", &r.raw),
                ("rollup_1m", &r.rollup_1m),
                ("rollup_1h", &r.rollup_1h),
            ] {
                if let Some(v) = v {
                    keep_time(&format!("retention.rules[{i}].{f}"), v)?;
                }
            }
        }
        Ok(())
    }

    /// The first rule that applies to a series.
    fn rule_for(&self, key: &SeriesKey) -> Option<&RetentionRule> {
        self.rules.iter().find(|r| {
            r.tenant.as_deref().is_none_or(|t| t == key.tenant)
                && r.property
                    .as_deref()
                    .is_none_or(|p| match p.strip_suffix('*') {
                        Some(prefix) => key.name.starts_with(prefix),
                        None => key.name == p,
                    })
        })
    }

    pub fn keep_for(&self, key: &SeriesKey) -> Result<Keep, String> {
        let rule = self.rule_for(key);
        let pick = |f: &str, over: Option<&String>, base: &String| {
            keep_time(&format!("retention.{f}"), over.unwrap_or(base))
        };
        let keep = Keep {
            raw: pick("raw", rule.and_then(|r| r.raw.as_ref()), &self.raw)?,
            rollup_1m: pick(
                "rollup_1m",
                rule.and_then(|r| r.rollup_1m.as_ref()),
                &self.rollup_1m,
            )?,
            rollup_1h: pick(
                "rollup_1h",
                rule.and_then(|r| r.rollup_1h.as_ref()),
                &self.rollup_1h,
            )?,
        };
        Ok(keep)
    }
}

pub struct Compactor {
    store: Store,
    last_retention: Option<Instant>,
}

fn wait<T>(rx: oneshot::Receiver<T>) -> Result<T, StoreError> {
    rx.blocking_recv().map_err(|_| StoreError::Unavailable)
}

/// Moves the whole head into chunks (or retries the frozen head whose
/// install failed). Must not run on an async worker; callers go through
/// `Store::flush`, which serialises flushes and records their health.
pub(super) fn flush(store: &Store) -> Result<(), StoreError> {
    let (ack, rx) = oneshot::channel();
    store.ctrl(Ctrl::Freeze { ack })?;
    let Some(upto_seq) = wait(rx)? else {
        return Ok(());
    };
    let chunks = {
        let frozen = store.engine().frozen.read().expect("frozen");
        let head = frozen
            .as_ref()
            .expect("frozen head present until installed");
        let mut chunks = Vec::new();
        for (sid, buf) in &head.series {
            let cols = buf.range(i64::MIN, i64::MAX);
            split_into_chunks(*sid, &cols, &mut chunks);
        }
        chunks
    };
    let (ack, rx) = oneshot::channel();
    store.ctrl(Ctrl::Install {
        chunks,
        upto_seq,
        ack,
    })?;
    wait(rx)?
}

/// A window's chunks (id, encoded data) in the order they were written.
pub(super) fn window_chunks(
    c: &dyn Sql,
    sid: u32,
    win: i64,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    c.rows(
        "SELECT id, data FROM chunks WHERE series_id = ?1 AND win = ?2 ORDER BY id",
        args![sid, win],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The points of a window's chunks, merged (a later chunk's point wins).
pub(super) fn merge_chunks(rows: &[(i64, Vec<u8>)]) -> Result<Columns, StoreError> {
    let mut merged = Columns::default();
    for (_, data) in rows {
        merged = Columns::merge(&merged, &chunk::decode(data)?);
    }
    Ok(merged)
}

/// Cuts sorted points at window boundaries and at the chunk size limit.
fn split_into_chunks(sid: u32, cols: &Columns, out: &mut Vec<NewChunk>) {
    let mut i = 0;
    while i < cols.len() {
        let win = cols.ts[i].div_euclid(WINDOW);
        let win_end = (win + 1).saturating_mul(WINDOW);
        let end = (i + cols.ts[i..].partition_point(|t| *t < win_end)).min(i + MAX_CHUNK_POINTS);
        out.push(NewChunk::new(sid, cols.slice(i..end)));
        i = end;
    }
}

impl Compactor {
    pub fn new(store: Store) -> Compactor {
        Compactor {
            store,
            last_retention: None,
        }
    }

    /// Runs rounds until the store stops. A failed round is retried with
    /// backoff (tick, doubling, at most 5 s); a panicking round is caught,
    /// counted and the loop goes on, so one bad window or one transient
    /// fault never leaves the head growing until the writer stops.
    pub fn run(mut self) {
        let tick = self.store.opts().tick;
        let mut pause = tick;
        while !self.store.stopping() {
            let until = Instant::now() + pause;
            while Instant::now() < until && !self.store.stopping() {
                std::thread::sleep(pause.min(Duration::from_millis(50)));
            }
            if self.store.stopping() {
                break;
            }
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if self
                    .store
                    .faults()
                    .compactor_panic
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    panic!("injected fault: compactor panic");
                }
                self.round(false)
            }));
            match round {
                Ok(Ok(())) => pause = tick,
                Ok(Err(e)) => {
                    pause = (pause * 2).min(Duration::from_secs(5));
                    if !self.store.stopping() {
                        tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "compaction round failed; retrying");
                    }
                }
                Err(_) => {
                    let h = self.store.health();
                    h.compactor_restarts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!("the compactor panicked; restarting it");
                    pause = tick;
                    self.last_retention = None;
                }
            }
        }
    }

    /// One round: flush if due, merge closed windows, retention once a
    /// minute (or now when `force`).
    pub fn round(&mut self, force: bool) -> Result<(), StoreError> {
        if self.flush_due() || force {
            self.store.flush()?;
        }
        self.merge_windows(force)?;
        if force
            || self
                .last_retention
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.preroll()?;
            // An unfinished pass goes on at the next round.
            if self.retention(if force { None } else { Some(RETENTION_PASS) })? {
                self.last_retention = Some(Instant::now());
            }
        }
        Ok(())
    }

    fn flush_due(&self) -> bool {
        let opts = self.store.opts();
        let head = self.store.engine().active.read().expect("head");
        head.points >= opts.flush_points
            || head.log_bytes >= opts.flush_log_bytes
            || head
                .since
                .is_some_and(|s| s.elapsed() >= opts.flush_interval)
    }

    fn merge_windows(&mut self, force: bool) -> Result<(), StoreError> {
        let now = self.store.engine().clock.now_us();
        let grace = self.store.opts().close_grace_us;
        let candidates: Vec<(u32, i64)> = {
            let dirty = self.store.engine().dirty.lock().expect("dirty");
            dirty.iter().copied().take(WINDOWS_PER_ROUND * 4).collect()
        };
        let retired_before: std::collections::HashMap<u32, i64> = {
            let index = self.store.engine().index.read().expect("index");
            candidates
                .iter()
                .filter_map(|(sid, _)| Some((*sid, *index.raw_from.get(sid)?)))
                .collect()
        };
        let mut done = 0;
        for (sid, win) in candidates {
            if done >= WINDOWS_PER_ROUND && !force {
                break;
            }
            // A long merge round must not let the head grow past its flush
            // size (memory, and the writer's stall): flush in between.
            if self.flush_due() {
                self.store.flush()?;
            }
            if retired_before
                .get(&sid)
                .is_some_and(|from| win * WINDOW < *from)
            {
                // A late chunk in a retired window: retention adds it to
                // the stored rollups (a merge here would recompute them
                // from the late points alone).
                continue;
            }
            let closed = (win + 1) * WINDOW + grace <= now;
            let rows = self.store.read(|c| window_chunks(c, sid, win))?;
            if rows.is_empty() {
                // Cleared through the writer, which knows whether a chunk
                // arrived meanwhile.
                let (ack, rx) = oneshot::channel();
                self.store.ctrl(Ctrl::Replace {
                    sid,
                    win,
                    old_ids: Vec::new(),
                    new: None,
                    rollups: Vec::new(),
                    closed: true,
                    ack,
                })?;
                wait(rx)??;
                continue;
            }
            if !closed && rows.len() < MERGE_OPEN_AT {
                continue;
            }
            done += 1;
            let merged = merge_chunks(&rows)?;
            let new = (rows.len() > 1).then(|| {
                let mut out = Vec::new();
                split_into_chunks(sid, &merged, &mut out);
                out
            });
            // No rollups here (see the module's doc); a closed window's
            // stored rollups, if any, are dropped by the writer as stale.
            let (ack, rx) = oneshot::channel();
            self.store.ctrl(Ctrl::Replace {
                sid,
                win,
                old_ids: rows.iter().map(|r| r.0).collect(),
                new,
                rollups: Vec::new(),
                closed,
                ack,
            })?;
            if wait(rx)?? {
                self.store.engine().metrics.merges.inc();
            }
        }
        Ok(())
    }

    /// Series grouped by what retention keeps of them (series kept
    /// forever at every resolution are left out).
    fn retention_classes(&self) -> std::collections::HashMap<Keep, Vec<u32>> {
        let policy = &self.store.opts().retention;
        let mut classes: std::collections::HashMap<Keep, Vec<u32>> = Default::default();
        let index = self.store.engine().index.read().expect("index");
        for (sid, key) in &index.keys {
            if let Ok(k) = policy.keep_for(key) {
                if k.raw.is_some() || k.rollup_1m.is_some() || k.rollup_1h.is_some() {
                    classes.entry(k).or_default().push(*sid);
                }
            }
        }
        classes
    }

    /// Rolls up, off the writer, the closed windows that retention will
    /// retire within `PREROLL_LEAD` and that have no rollups yet. The
    /// writer installs them only if the window still holds the chunks
    /// they were made from; a window changed later loses them again
    /// (`Ctrl::Replace` of a closed window), so retention never trusts
    /// rollups that miss a point.
    fn preroll(&mut self) -> Result<(), StoreError> {
        let now = self.store.engine().clock.now_us();
        let grace = self.store.opts().close_grace_us;
        let mut done = 0;
        for (keep, sids) in self.retention_classes() {
            let Some(raw) = keep.raw else { continue };
            // Windows ending by this are retired within the lead (and
            // closed).
            let horizon = (now - raw + PREROLL_LEAD).min(now - grace);
            let sids_json = serde_json::to_string(&sids).unwrap_or_default();
            let wins: Vec<(u32, i64)> = self.store.read(|c| {
                c.rows(
                    &format!(
                        "SELECT DISTINCT c.series_id, c.win FROM chunks c
                         WHERE c.win < ?1 AND c.series_id {}
                           AND NOT EXISTS (SELECT 1 FROM rollups r
                                           WHERE r.series_id = c.series_id AND r.res = 60 AND r.win = c.win)
                         LIMIT ?3",
                        c.in_json_ints(2)
                    ),
                    args![horizon.div_euclid(WINDOW), &sids_json, WINDOWS_PER_ROUND as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })?;
            // The query keeps only windows ending by the horizon; a dirty
            // one is merged first (which would drop these rollups).
            for (sid, win) in wins {
                if self
                    .store
                    .engine()
                    .dirty
                    .lock()
                    .expect("dirty")
                    .contains(&(sid, win))
                {
                    continue;
                }
                if done >= WINDOWS_PER_ROUND {
                    return Ok(());
                }
                done += 1;
                let rows = self.store.read(|c| window_chunks(c, sid, win))?;
                let merged = merge_chunks(&rows)?;
                let (ack, rx) = oneshot::channel();
                self.store.ctrl(Ctrl::Replace {
                    sid,
                    win,
                    old_ids: rows.iter().map(|r| r.0).collect(),
                    new: None,
                    rollups: rollup::for_window(win, &merged),
                    closed: false,
                    ack,
                })?;
                wait(rx)??;
            }
        }
        Ok(())
    }

    /// Retires raw chunks of windows older than their keep-time, then old
    /// rollups, and records per series from when raw points (and 1-minute
    /// rollups) are still complete.
    ///
    /// Runs in the writer, so nothing lands in between: a window whose
    /// rollups are stale (a chunk arrived since, or none were computed) is
    /// rolled up from its chunks first; a window retired before that got
    /// a late chunk (a point accepted just before its window passed the
    /// cut, or a backfill) has the late points added to its rollups. Either
    /// way every acknowledged point ends up in the rollups, and rollups are
    /// never recomputed from part of a window. Those rollups are made here,
    /// on the compactor's thread, and used by the writer only if the
    /// window is unchanged (`retire.rs`).
    ///
    /// A pass is cut into writes of about `RETENTION_STEP` of the writer's
    /// time each (whole series; `RETENTION_SLICE` series for the rollups),
    /// `RETENTION_STEP` apart, and stops after `budget` (the next round
    /// goes on; true once finished): retiring every window of 10,000
    /// series at once — data backfilled past raw retention, or a server
    /// that was down for a while — was one 5-s transaction with every
    /// acknowledgement waiting behind it (measured under `twinhub bench
    /// rules`, whose readings are a year old). The windows to retire are
    /// found on a read connection; a window that gets a chunk after that
    /// read is retired by the next pass.
    fn retention(&mut self, budget: Option<Duration>) -> Result<bool, StoreError> {
        let started = Instant::now();
        let over = || budget.is_some_and(|b| started.elapsed() > b);
        let now = self.store.engine().clock.now_us();
        for (keep, sids) in self.retention_classes() {
            let cut =
                |keep: Option<i64>, align: i64| keep.map(|k| (now - k).div_euclid(align) * align);
            let raw_cut = cut(keep.raw, WINDOW);
            let m_cut = cut(keep.rollup_1m, WINDOW);
            let h_cut = cut(keep.rollup_1h, US_PER_DAY);
            if let Some(cut) = raw_cut {
                let sids_json = serde_json::to_string(&sids).unwrap_or_default();
                let wins: Vec<(u32, i64)> = self.store.read(|c| {
                    c.rows(
                        &format!(
                            "SELECT DISTINCT series_id, win FROM chunks WHERE win < ?1 AND series_id {} ORDER BY series_id, win",
                            c.in_json_ints(2)
                        ),
                        args![cut / WINDOW, &sids_json],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                })?;
                // Whole series per write, so a series' raw cut moves with
                // the last of its windows.
                let mut rest: &[(u32, i64)] = &wins;
                while !rest.is_empty() {
                    if over() {
                        return Ok(false);
                    }
                    let slice = rest[..series_run(rest, RETENTION_SLICE)].to_vec();
                    let plans = retire::plan(&self.store, &slice)?;
                    let done = self.store.write_blocking(move |ctx| {
                        retire::retire_windows(ctx, slice, cut, plans)
                    })?;
                    rest = &rest[done..];
                    std::thread::sleep(RETENTION_STEP);
                }
            }
            if m_cut.is_none() && h_cut.is_none() {
                continue;
            }
            // Only series with rollups past a cut get a write (most
            // passes have none).
            let sids_json = serde_json::to_string(&sids).unwrap_or_default();
            let past = |cut: Option<i64>| cut.map_or(i64::MIN, |c| c / WINDOW);
            let due: Vec<u32> = self.store.read(|c| {
                c.rows(
                    &format!(
                        "SELECT DISTINCT series_id FROM rollups
                         WHERE ((res = 60 AND win < ?1) OR (res = 3600 AND win < ?3)) AND series_id {}
                         ORDER BY series_id",
                        c.in_json_ints(2)
                    ),
                    args![past(m_cut), &sids_json, past(h_cut)],
                    |r| r.get(0),
                )
            })?;
            for slice in due.chunks(RETENTION_SLICE) {
                if over() {
                    return Ok(false);
                }
                let sids_json = serde_json::to_string(slice).unwrap_or_default();
                self.store.write_blocking(move |ctx| {
                    if let Some(cut) = m_cut {
                        let mut changed = ctx.tx.rows(
                            &format!(
                                "DELETE FROM rollups WHERE res = 60 AND win < ?1 AND series_id {} RETURNING series_id",
                                ctx.tx.in_json_ints(2)
                            ),
                            args![cut / WINDOW, &sids_json],
                            |r| r.get::<u32>(0),
                        )?;
                        changed.sort_unstable();
                        changed.dedup();
                        raise_cut(ctx, Cut::Rollup, changed, cut)?;
                    }
                    if let Some(cut) = h_cut {
                        ctx.tx.exec(
                            &format!(
                                "DELETE FROM rollups WHERE res = 3600 AND win < ?1 AND series_id {}",
                                ctx.tx.in_json_ints(2)
                            ),
                            args![cut / WINDOW, &sids_json],
                        )?;
                    }
                    Ok(())
                })?;
                std::thread::sleep(RETENTION_STEP);
            }
        }
        Ok(true)
    }
}

/// How long one round's retention pass goes on before the compactor
/// flushes and merges again (the pass resumes at the next round).
const RETENTION_PASS: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_rules_pick_first_match() {
        let p: RetentionPolicy = toml::from_str(
            r#"raw = "30d"
               [[rules]]
               tenant = "acme"
               property = "vib*"
               raw = "7d"
               [[rules]]
               property = "status"
               raw = "forever""#,
        )
        .unwrap();
        p.validate().unwrap();
        let k = p
            .keep_for(&SeriesKey::new("acme", "t", "vibration"))
            .unwrap();
        assert_eq!(k.raw, Some(7 * US_PER_DAY));
        let k = p
            .keep_for(&SeriesKey::new("other", "t", "vibration"))
            .unwrap();
        assert_eq!(k.raw, Some(30 * US_PER_DAY));
        assert_eq!(
            p.keep_for(&SeriesKey::new("x", "t", "status")).unwrap().raw,
            None
        );
        let bad: RetentionPolicy = toml::from_str(r#"raw = "soon""#).unwrap();
        assert!(bad.validate().unwrap_err().contains("retention.raw"));
    }
}
