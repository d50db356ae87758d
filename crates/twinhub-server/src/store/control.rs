//! The compactor's operations on the writer's thread (`Ctrl`): freezing
//! the head for a flush, starting a flush's install (done in steps,
//! `install.rs`), and replacing a window's chunks and rollups after a
//! merge. They are served ahead of data so a full head can always drain.
//!
//! Owns nothing; part of the writer (`writer.rs`).

use super::chunk;
use super::head::Head;
use super::sql::{args, Sql};
use super::writer::Writer;
use super::{NewChunk, StoreError};
use tokio::sync::oneshot;

/// The compactor's operations; served before data so a full head can
/// always drain.
pub enum Ctrl {
    Freeze {
        ack: oneshot::Sender<Option<u64>>,
    },
    Install {
        chunks: Vec<NewChunk>,
        upto_seq: u64,
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
    Replace {
        sid: u32,
        win: i64,
        old_ids: Vec<i64>,
        /// None keeps the chunks as they are and only writes rollups.
        new: Option<Vec<NewChunk>>,
        rollups: Vec<(i64, Vec<u8>)>,
        /// The window has closed: once merged it is clean, and rollups
        /// stored for it before are dropped unless this carries new ones.
        closed: bool,
        ack: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Commit whatever data is queued, then stop and release the lock.
    Shutdown,
    /// Stop taking writes until the sender is dropped: lets tests fill the
    /// queue to prove back-pressure through the real interfaces.
    Pause(oneshot::Receiver<()>),
}

impl Writer {
    pub(super) fn control(&mut self, c: Ctrl) {
        self.reconnect();
        match c {
            Ctrl::Freeze { ack } => {
                let mut frozen = self.engine.frozen.write().expect("frozen");
                if let Some(f) = frozen.as_ref() {
                    // An earlier install failed: flush the same head again
                    // (flushes are serialised by the store's flush lock).
                    let _ = ack.send(Some(f.max_seq));
                    return;
                }
                let mut active = self.engine.active.write().expect("head");
                if active.is_empty() {
                    let _ = ack.send(None);
                    return;
                }
                // The next head starts with room for as many series: grown
                // from empty, its map rehashed (and faulted in fresh memory)
                // inside group commits, 10–25 ms of one group's time each
                // under `twinhub bench rules`.
                let next = Head::with_series(active.series.len());
                let head = std::mem::replace(&mut *active, next);
                let seq = head.max_seq;
                *frozen = Some(head);
                self.engine
                    .deletes_since_freeze
                    .lock()
                    .expect("deletes")
                    .clear();
                let _ = ack.send(Some(seq));
            }
            Ctrl::Install {
                chunks,
                upto_seq,
                ack,
            } => self.begin_install(chunks, upto_seq, ack),
            Ctrl::Replace {
                sid,
                win,
                old_ids,
                new,
                rollups,
                closed,
                ack,
            } => {
                let res = self.replace(sid, win, &old_ids, new, rollups, closed);
                // Cleared here, in the writer, so a flush that added a chunk
                // to this window (and failed this merge) keeps it dirty.
                if closed && matches!(res, Ok(true)) {
                    self.engine.dirty.lock().expect("dirty").remove(&(sid, win));
                }
                let _ = ack.send(res);
                self.reclaim(super::install::Reclaim::Merge);
            }
            Ctrl::Shutdown | Ctrl::Pause(_) => {}
        }
    }

    fn replace(
        &mut self,
        sid: u32,
        win: i64,
        old_ids: &[i64],
        new: Option<Vec<NewChunk>>,
        rollups: Vec<(i64, Vec<u8>)>,
        closed: bool,
    ) -> Result<bool, StoreError> {
        let retired = self
            .engine
            .index
            .read()
            .expect("index")
            .raw_from
            .get(&sid)
            .is_some_and(|from| win * super::WINDOW < *from);
        if retired {
            // Retention owns windows past the raw cut (it adds late points
            // to their rollups): this merge is stale.
            return Ok(false);
        }
        self.conn.transaction(false, |tx| {
            // The window must still hold exactly the chunks that were
            // merged: a flush or a delete that ran meanwhile makes this
            // merge stale.
            let mut current: Vec<i64> = tx.rows(
                "SELECT id FROM chunks WHERE series_id = ?1 AND win = ?2 ORDER BY id",
                args![sid, win],
                |r| r.get(0),
            )?;
            current.sort_unstable();
            let mut old = old_ids.to_vec();
            old.sort_unstable();
            if current != old {
                return Ok(false);
            }
            if let Some(new) = &new {
                for id in old_ids {
                    tx.exec(
                        "DELETE FROM chunks WHERE id = ?1 AND win = ?2",
                        args![*id, win],
                    )?;
                }
                for c in new {
                    insert_chunk(tx, c)?;
                }
            }
            if closed && rollups.is_empty() {
                // The merge of a changed window: rollups made before the
                // change (by `preroll`) may miss a point. Retention or the
                // next preroll makes them again.
                tx.exec(
                    "DELETE FROM rollups WHERE series_id = ?1 AND win = ?2",
                    args![sid, win],
                )?;
            }
            for (res, data) in &rollups {
                tx.exec(
                    "INSERT INTO rollups(series_id, res, win, data) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(series_id, res, win) DO UPDATE SET data = excluded.data",
                    args![sid, *res, win, data],
                )?;
            }
            Ok(true)
        })
    }
}

pub fn insert_chunk(tx: &dyn Sql, c: &NewChunk) -> Result<(), StoreError> {
    let st = &c.stats;
    let (first, last) = (
        st.first
            .as_ref()
            .map(|(_, v)| chunk::value_blob(v))
            .unwrap_or_default(),
        st.last
            .as_ref()
            .map(|(_, v)| chunk::value_blob(v))
            .unwrap_or_default(),
    );
    let has_num = st.num_count > 0;
    tx.exec(
        "INSERT INTO chunks(series_id, win, min_ts, max_ts, count, num_count, sum, min, max, first, last, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        args![
            c.sid,
            c.win,
            c.min_ts,
            c.max_ts,
            st.count as i64,
            st.num_count as i64,
            st.sum,
            has_num.then_some(st.min),
            has_num.then_some(st.max),
            &first,
            &last,
            &c.data,
        ],
    )?;
    Ok(())
}
