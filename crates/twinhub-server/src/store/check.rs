//! `twinhub check`: verifies a data directory from the outside, read-only.
//! SQLite's own integrity check, then every record twinhub wrote: each
//! chunk decodes and its stored statistics (count, time range, sum, min,
//! max, first, last) are the ones of its points, in its window; each
//! rollup and batch-log record decodes. Used after crashes (the crash-loop
//! test) and by operators before trusting a restored backup.

use super::{batch, chunk, db, rollup, StoreError, WINDOW};
use rusqlite::Connection;
use std::path::Path;

/// What was checked and every problem found (empty: healthy).
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub chunks: u64,
    pub points: u64,
    pub rollups: u64,
    pub batch_log: u64,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// At most this many problems are listed (a corrupt file has many).
const MAX_PROBLEMS: usize = 100;

/// Checks the store of a data directory. Safe while a server runs (it
/// reads one snapshot), though a stopped directory is what it is for.
pub fn check_dir(dir: &Path) -> Result<CheckReport, StoreError> {
    let path = db::db_path(dir);
    if !path.exists() {
        return Err(StoreError::NotFound(format!(
            "no store in {}",
            dir.display()
        )));
    }
    let conn = db::open_reader(&path)?;
    check(&conn)
}

pub fn check(conn: &Connection) -> Result<CheckReport, StoreError> {
    let mut r = CheckReport::default();
    conn.execute_batch("BEGIN")?;
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines: Vec<String> = stmt
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    if lines != ["ok"] {
        r.problems
            .extend(lines.into_iter().map(|l| format!("sqlite: {l}")));
    }
    check_chunks(conn, &mut r)?;
    check_rollups(conn, &mut r)?;
    let mut stmt = conn.prepare("SELECT seq, data FROM batch_log")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        r.batch_log += 1;
        let (seq, data): (i64, Vec<u8>) = (row.get(0)?, row.get(1)?);
        if let Err(e) = batch::decode(&data) {
            problem(&mut r, format!("batch log record {seq}: {e}"));
        }
    }
    drop(rows);
    drop(stmt);
    conn.execute_batch("COMMIT")?;
    Ok(r)
}

fn problem(r: &mut CheckReport, p: String) {
    if r.problems.len() < MAX_PROBLEMS {
        r.problems.push(p);
    }
}

fn check_chunks(conn: &Connection, r: &mut CheckReport) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, series_id, win, min_ts, max_ts, count, num_count, sum, min, max, first, last, data FROM chunks",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        r.chunks += 1;
        let id: i64 = row.get(0)?;
        let (win, min_ts, max_ts): (i64, i64, i64) = (row.get(2)?, row.get(3)?, row.get(4)?);
        let (count, num_count): (i64, i64) = (row.get(5)?, row.get(6)?);
        let (sum, min, max): (f64, Option<f64>, Option<f64>) =
            (row.get(7)?, row.get(8)?, row.get(9)?);
        let (first, last): (Vec<u8>, Vec<u8>) = (row.get(10)?, row.get(11)?);
        let data: Vec<u8> = row.get(12)?;
        let cols = match chunk::decode(&data) {
            Ok(c) => c,
            Err(e) => {
                problem(r, format!("chunk {id}: does not decode: {e}"));
                continue;
            }
        };
        r.points += cols.len() as u64;
        let st = chunk::stats(&cols);
        let mut bad = Vec::new();
        if cols.is_empty() {
            bad.push("no points".to_string());
        } else {
            if cols.ts.windows(2).any(|w| w[0] >= w[1]) {
                bad.push("timestamps not strictly increasing".into());
            }
            if (cols.ts[0], *cols.ts.last().expect("non-empty")) != (min_ts, max_ts) {
                bad.push(format!(
                    "time range {min_ts}..{max_ts} stored, {}..{} in its points",
                    cols.ts[0],
                    cols.ts.last().expect("non-empty")
                ));
            }
            if min_ts.div_euclid(WINDOW) != win || max_ts.div_euclid(WINDOW) != win {
                bad.push(format!("points outside its window {win}"));
            }
        }
        if st.count != count as u64 || st.num_count != num_count as u64 {
            bad.push(format!(
                "count {count}/{num_count} stored, {}/{} in its points",
                st.count, st.num_count
            ));
        }
        if st.num_count > 0 {
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
            if !close(st.sum, sum) || Some(st.min) != min || Some(st.max) != max {
                bad.push("sum/min/max differ from its points".into());
            }
        }
        let first_ok = st.first.as_ref().map(|(_, v)| chunk::value_blob(v)) == Some(first);
        let last_ok = st.last.as_ref().map(|(_, v)| chunk::value_blob(v)) == Some(last);
        let ends_ok = cols.is_empty() || (first_ok && last_ok);
        if !ends_ok {
            bad.push("first/last differ from its points".into());
        }
        for b in bad {
            let sid: i64 = row.get(1)?;
            problem(r, format!("chunk {id} (series {sid}, window {win}): {b}"));
        }
    }
    Ok(())
}

fn check_rollups(conn: &Connection, r: &mut CheckReport) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("SELECT series_id, res, win, data FROM rollups")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        r.rollups += 1;
        let (sid, res, win, data): (i64, i64, i64, Vec<u8>) =
            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        match rollup::decode(win, &data) {
            Err(e) => problem(
                r,
                format!("rollup (series {sid}, res {res}, window {win}): {e}"),
            ),
            Ok(entries) => {
                if entries
                    .iter()
                    .any(|(start, _)| start.div_euclid(WINDOW) != win)
                {
                    problem(
                        r,
                        format!("rollup (series {sid}, res {res}, window {win}): entries outside its window"),
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_chunk_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = db::db_path(dir.path());
        let conn = db::open_writer(&path).unwrap();
        let mut cols = super::super::columns::Columns::default();
        for i in 0..10 {
            cols.push(
                WINDOW * 3 + i,
                &twinhub_model::Value::Number(i as f64),
                Default::default(),
            );
        }
        conn.execute(
            "INSERT INTO series(tenant, twin, name) VALUES ('t', 'w', 'x')",
            [],
        )
        .unwrap();
        super::super::writer::insert_chunk(&conn, &super::super::NewChunk::new(1, cols)).unwrap();
        let report = check(&db::open_reader(&path).unwrap()).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!((report.chunks, report.points), (1, 10));
        conn.execute("UPDATE chunks SET count = 11, max = 99", [])
            .unwrap();
        let report = check(&db::open_reader(&path).unwrap()).unwrap();
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(
            report.problems[0].contains("count 11"),
            "{:?}",
            report.problems
        );
        conn.execute("UPDATE chunks SET data = x'0102'", [])
            .unwrap();
        let report = check(&db::open_reader(&path).unwrap()).unwrap();
        assert!(
            report.problems[0].contains("does not decode"),
            "{:?}",
            report.problems
        );
    }
}
