//! Retention of raw points: windows past a series' raw cut lose their
//! chunks once their rollups hold every point in them, and the series'
//! cut moves (in its row, and in the index once committed).
//!
//! The retiring itself runs in the writer, so nothing lands in between.
//! A window whose rollups must be (re)made first — rolled up from its
//! chunks when stale, or a window retired before that got late chunks (a
//! backfill past raw retention), whose chunks are added to its stored
//! rollups — is planned on the compactor's thread from a read connection
//! (`plan`): decoding, merging and encoding there, off the writer. The
//! writer takes a plan only when the window still holds the very chunks
//! and stored rollups it was made from (compared byte for byte: a flush,
//! a delete or another retire between the two makes it stale) and makes
//! the rollups itself otherwise, with the same function, so both ways
//! give the same rows.
//!
//! May call: `sql`, `rollup`, and `compactor`'s chunk readers.

use super::sql::{args, Sql};
use super::{compactor, rollup, Store, StoreError, WINDOW};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Windows (or series) one retention write takes at most.
pub(super) const RETENTION_SLICE: usize = 64;
/// A retention write stops after the series that took it past this much
/// of the writer's time, and the next comes this long after it.
pub(super) const RETENTION_STEP: Duration = Duration::from_millis(2);

/// Chunk bytes one plan reads at most: a series is retired whole, so a
/// slice can be a year of one series' windows; past this the writer makes
/// the rest itself, as it did before plans.
const PLAN_BYTES: usize = 32 << 20;

/// The rollups of one window, made off the writer, and what they were
/// made from.
pub(super) struct Planned {
    /// The window was past its series' raw cut (late chunks added to its
    /// stored rollups) rather than stale.
    retired: bool,
    chunks: Vec<(i64, Vec<u8>)>,
    stored: Stored,
    rollups: Vec<(i64, Vec<u8>)>,
}

/// A retired window's stored minute and hour rollups, encoded.
type Stored = [Option<Vec<u8>>; 2];

pub(super) type Plans = HashMap<(u32, i64), Planned>;

/// Plans the windows of `wins` that need rollups made before they are
/// retired. A window that cannot be planned (its chunks do not decode) is
/// left to the writer, which reports the error as it always did.
pub(super) fn plan(store: &Store, wins: &[(u32, i64)]) -> Result<Plans, StoreError> {
    let engine = store.engine();
    let inputs = store.read(|c| {
        let (mut out, mut bytes) = (Vec::new(), 0);
        for &(sid, win) in wins {
            if bytes > PLAN_BYTES {
                break;
            }
            let retired = already_retired(engine, sid, win);
            if !retired && !stale(engine, c, sid, win)? {
                continue;
            }
            let chunks = compactor::window_chunks(c, sid, win)?;
            bytes += chunks.iter().map(|(_, d)| d.len()).sum::<usize>();
            let stored = if retired {
                stored_rollups(c, sid, win)?
            } else {
                [None, None]
            };
            out.push((sid, win, retired, chunks, stored));
        }
        Ok(out)
    })?;
    let mut plans = Plans::new();
    for (sid, win, retired, chunks, stored) in inputs {
        if let Ok(rollups) = make_rollups(win, retired, &chunks, &stored) {
            plans.insert(
                (sid, win),
                Planned {
                    retired,
                    chunks,
                    stored,
                    rollups,
                },
            );
        }
    }
    Ok(plans)
}

/// Retires windows past the raw cut and moves their series' raw cut, with
/// the index, in the writer (so a merge never acts on a window retired
/// meanwhile). Whole series, until a series takes the write past
/// `RETENTION_STEP`; returns how many of `wins` were retired.
pub(super) fn retire_windows(
    ctx: &mut super::WriteCtx<'_>,
    wins: Vec<(u32, i64)>,
    cut: i64,
    mut plans: Plans,
) -> Result<usize, StoreError> {
    let t = Instant::now();
    let mut sids: Vec<u32> = Vec::new();
    let mut done = 0;
    let mut in_writer = 0u64;
    for (i, &(sid, win)) in wins.iter().enumerate() {
        if sids.last() != Some(&sid) {
            // A series boundary: stop here once over the step's time.
            if !sids.is_empty() && t.elapsed() > RETENTION_STEP {
                break;
            }
            sids.push(sid);
        }
        if !retire_window(ctx, sid, win, plans.remove(&(sid, win)))? {
            in_writer += 1;
        }
        done = i + 1;
    }
    let retired: Vec<(u32, i64)> = wins[..done].to_vec();
    ctx.after_commit(move |engine| {
        engine.metrics.windows_retired.add(retired.len() as u64);
        engine.metrics.retire_rollups_in_writer.add(in_writer);
        let mut dirty = engine.dirty.lock().expect("dirty");
        for w in &retired {
            dirty.remove(w);
        }
    });
    raise_cut(ctx, Cut::Raw, sids, cut)?;
    Ok(done)
}

/// Which of a series' cuts retention moves.
#[derive(Clone, Copy)]
pub(super) enum Cut {
    /// From when raw points are complete.
    Raw,
    /// From when 1-minute rollups are.
    Rollup,
}

/// Moves the cut of `sids` up to `cut`: in their rows now, in the index
/// once committed (in the writer, so a merge never acts on a window
/// retired meanwhile).
pub(super) fn raise_cut(
    ctx: &mut super::WriteCtx<'_>,
    which: Cut,
    sids: Vec<u32>,
    cut: i64,
) -> Result<(), StoreError> {
    let column = match which {
        Cut::Raw => "raw_from",
        Cut::Rollup => "rollup_from",
    };
    for sid in &sids {
        ctx.tx.exec(
            &format!(
                "UPDATE series SET {column} = CASE WHEN {column} > ?2 THEN {column} ELSE ?2 END WHERE id = ?1"
            ),
            args![*sid, cut],
        )?;
    }
    ctx.after_commit(move |engine| {
        let mut index = engine.index.write().expect("index");
        let cuts = match which {
            Cut::Raw => &mut index.raw_from,
            Cut::Rollup => &mut index.rollup_from,
        };
        for sid in sids {
            let e = cuts.entry(sid).or_default();
            *e = (*e).max(cut);
        }
    });
    Ok(())
}

/// How many of `wins` (sorted by series) the first run takes: whole
/// series, at most `max` windows unless one series alone has more.
pub(super) fn series_run(wins: &[(u32, i64)], max: usize) -> usize {
    let mut end = 0;
    while end < wins.len() {
        let sid = wins[end].0;
        let mut next = end;
        while next < wins.len() && wins[next].0 == sid {
            next += 1;
        }
        if next > max && end > 0 {
            break;
        }
        end = next;
    }
    end
}

fn already_retired(engine: &super::Engine, sid: u32, win: i64) -> bool {
    let index = engine.index.read().expect("index");
    index
        .raw_from
        .get(&sid)
        .is_some_and(|from| win * WINDOW < *from)
}

/// The window changed since its rollups were made, or has none.
fn stale(engine: &super::Engine, c: &dyn Sql, sid: u32, win: i64) -> Result<bool, StoreError> {
    Ok(engine.dirty.lock().expect("dirty").contains(&(sid, win))
        || c.row(
            "SELECT 1 FROM rollups WHERE series_id = ?1 AND res = 60 AND win = ?2",
            args![sid, win],
            |_| Ok(()),
        )?
        .is_none())
}

fn stored_rollups(c: &dyn Sql, sid: u32, win: i64) -> Result<Stored, StoreError> {
    let one = |res: i64| -> Result<Option<Vec<u8>>, StoreError> {
        c.row(
            "SELECT data FROM rollups WHERE series_id = ?1 AND res = ?2 AND win = ?3",
            args![sid, res, win],
            |r| r.get(0),
        )
    };
    Ok([one(rollup::RES_MINUTE)?, one(rollup::RES_HOUR)?])
}

/// A window's rollups: from its chunks, plus its stored rollups when it
/// was retired before (its chunks are all late arrivals then).
fn make_rollups(
    win: i64,
    retired: bool,
    chunks: &[(i64, Vec<u8>)],
    stored: &Stored,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let merged = compactor::merge_chunks(chunks)?;
    if !retired {
        return Ok(rollup::for_window(win, &merged));
    }
    let decode = |d: &Option<Vec<u8>>| -> Result<Vec<(i64, twinhub_model::Stats)>, StoreError> {
        Ok(match d {
            Some(d) => rollup::decode(win, d)?,
            None => Vec::new(),
        })
    };
    let minutes = decode(&stored[0])?;
    let hour = decode(&stored[1])?;
    Ok(rollup::add_to_window(
        win,
        &merged,
        &minutes,
        hour.first().map(|(_, st)| st),
    ))
}

/// Deletes a window's chunks once its rollups hold every point in them;
/// false when the writer had to make those rollups itself (no plan, or a
/// stale one).
fn retire_window(
    ctx: &mut super::WriteCtx<'_>,
    sid: u32,
    win: i64,
    planned: Option<Planned>,
) -> Result<bool, StoreError> {
    let tx = ctx.tx;
    let retired = already_retired(ctx.engine, sid, win);
    let mut from_plan = true;
    if retired || stale(ctx.engine, tx, sid, win)? {
        let chunks = compactor::window_chunks(tx, sid, win)?;
        let stored = if retired {
            stored_rollups(tx, sid, win)?
        } else {
            [None, None]
        };
        let rollups = match planned {
            Some(p) if p.retired == retired && p.chunks == chunks && p.stored == stored => {
                p.rollups
            }
            _ => {
                from_plan = false;
                make_rollups(win, retired, &chunks, &stored)?
            }
        };
        for (res, data) in rollups {
            tx.exec(
                "INSERT INTO rollups(series_id, res, win, data) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(series_id, res, win) DO UPDATE SET data = excluded.data",
                args![sid, res, win, &data],
            )?;
        }
    }
    tx.exec(
        "DELETE FROM chunks WHERE series_id = ?1 AND win = ?2",
        args![sid, win],
    )?;
    Ok(from_plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_runs_never_split_a_series() {
        let wins: Vec<(u32, i64)> = [(1, 3), (2, 2), (3, 5), (4, 1)]
            .iter()
            .flat_map(|&(sid, n)| (0..n).map(move |w| (sid, w)))
            .collect();
        let runs = |max: usize| {
            let (mut rest, mut out) = (&wins[..], Vec::new());
            while !rest.is_empty() {
                let n = series_run(rest, max);
                let mut sids: Vec<u32> = rest[..n].iter().map(|w| w.0).collect();
                sids.dedup();
                out.push(sids);
                rest = &rest[n..];
            }
            out
        };
        // 1 + 2 would be 5 windows; a 5-window series is a run of its own.
        assert_eq!(runs(4), vec![vec![1], vec![2], vec![3], vec![4]]);
        assert_eq!(runs(6), vec![vec![1, 2], vec![3, 4]]);
        assert_eq!(runs(100), vec![vec![1, 2, 3, 4]]);
        assert_eq!(series_run(&[], 4), 0);
    }
}
