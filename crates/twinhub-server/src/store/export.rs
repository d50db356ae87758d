//! Logical export and import of a whole store: every table, row by row, in
//! one file that either backend writes and reads. `twinhub export` and
//! `twinhub import` move an installation between the embedded file and
//! PostgreSQL (an edge box growing into a site, or a site's twins taken
//! back to a box), and are the backup and restore of a PostgreSQL store.
//!
//! The history engine keeps all of its state in tables (batch log, chunks,
//! rollups, series), so an export read in one snapshot is complete and
//! consistent: a running server can be exported. The data directory's key
//! files (secrets, audit chain) travel with it, so the file is as
//! sensitive as the directory and is written owner-only.
//!
//! Format: `twinhub-export 1\n`, then tagged records — `H` header (JSON),
//! `T` table (name, column names), `R` row (tagged values: null, integer,
//! real, text, bytes), `E` end of table (its row count), `F` file (name,
//! bytes), `Z` then the SHA-256 of every byte before it. Lengths and
//! numbers are little-endian. An import runs in one transaction and
//! commits only once the digest matched: a cut or altered file leaves the
//! target as it was.
//!
//! May call: nothing outside `store`.

use super::backend::{Db, Source};
use super::db::{meta_get, FORMAT_VERSION};
use super::partitions::Table;
use super::sql::{in_chunks, value_lists, Dialect, Owned, Sql, Val};
use super::StoreError;
use sha2::{Digest, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"twinhub-export 1\n";
/// The data directory's files an installation cannot do without.
pub const KEY_FILES: [&str; 2] = ["secrets.key", "audit.key"];
/// Rows fetched per round trip from PostgreSQL (a cursor, so a table of
/// any size streams).
const FETCH: usize = 1000;

/// What an export or import moved.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub store_format: i64,
    /// The backend the export was read from: `sqlite` or `postgres`.
    pub source: String,
    pub exported_at_us: i64,
    #[serde(default)]
    pub tables: usize,
    #[serde(default)]
    pub rows: u64,
    /// Key files carried (their contents are not in the summary).
    #[serde(default)]
    pub files: Vec<String>,
}

fn bad(rule: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field: "export file".into(),
        rule: rule.into(),
    }
}

/// Writes the store at `source` (and the key files found in `dir`) to
/// `out`, from one read snapshot.
pub fn export(source: &Source, dir: &Path, out: &Path, now_us: i64) -> Result<Summary, StoreError> {
    let db = source.open_reader()?;
    Source::begin_read(&db)?;
    let res = write_all(&db, dir, out, now_us);
    let _ = db.sql().batch("COMMIT");
    res
}

fn write_all(db: &Db, dir: &Path, out: &Path, now_us: i64) -> Result<Summary, StoreError> {
    let sql = db.sql();
    let format: i64 = meta_get(sql, "format_version")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if format != FORMAT_VERSION {
        return Err(StoreError::Invalid {
            field: "store".into(),
            rule: format!(
                "is at format {format}; this binary exports format {FORMAT_VERSION} (run `twinhub migrate` first)"
            ),
        });
    }
    let mut summary = Summary {
        store_format: format,
        source: dialect_name(sql.dialect()).into(),
        exported_at_us: now_us,
        ..Summary::default()
    };
    let tmp = out.with_extension("partial");
    let file = private_file(&tmp)?;
    let mut w = Hashing::new(BufWriter::with_capacity(1 << 20, file));
    w.write_all(MAGIC)?;
    w.write_all(b"H")?;
    put_bytes(
        &mut w,
        &serde_json::to_vec(&summary).expect("summary serialises"),
    )?;
    for table in tables(sql)? {
        let cols = columns(sql, &table)?;
        w.write_all(b"T")?;
        put_bytes(&mut w, table.as_bytes())?;
        w.write_all(&(cols.len() as u32).to_le_bytes())?;
        for c in &cols {
            put_bytes(&mut w, c.as_bytes())?;
        }
        let mut n = 0u64;
        each_row(sql, &table, &cols, &mut |row| {
            w.write_all(b"R")?;
            for v in row {
                put_value(&mut w, v)?;
            }
            n += 1;
            Ok(())
        })?;
        w.write_all(b"E")?;
        w.write_all(&n.to_le_bytes())?;
        summary.tables += 1;
        summary.rows += n;
    }
    for name in KEY_FILES {
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => {
                w.write_all(b"F")?;
                put_bytes(&mut w, name.as_bytes())?;
                put_bytes(&mut w, &bytes)?;
                summary.files.push(name.into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    w.write_all(b"Z")?;
    let digest = w.hash.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&digest)?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(summary)
}

/// The key files an import carried, for the caller to put in the target's
/// data directory once the store has committed.
pub type KeyFiles = Vec<(String, Vec<u8>)>;

/// Reads an export into the store at `target` (through `db`, the target's
/// writer connection: the embedded file's directory lock, or PostgreSQL's
/// writer lock, is held). The target must hold no data unless `replace`,
/// which empties every table first — in the same transaction.
pub fn import(db: &Db, input: &Path, replace: bool) -> Result<(Summary, KeyFiles), StoreError> {
    let sql = db.sql();
    let file = std::fs::File::open(input)?;
    let mut r = Hashing::new(BufReader::with_capacity(1 << 20, file));
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .map_err(|_| bad("is not a twinhub export (too short)"))?;
    if magic != MAGIC {
        return Err(bad("is not a twinhub export (its first line differs)"));
    }
    if get_u8(&mut r)? != b'H' {
        return Err(bad("has no header"));
    }
    let mut summary: Summary = serde_json::from_slice(&get_bytes(&mut r)?)
        .map_err(|e| bad(format!("has an unreadable header ({e})")))?;
    if summary.store_format != FORMAT_VERSION {
        return Err(bad(format!(
            "holds store format {}; this binary imports format {FORMAT_VERSION} (export it with the same twinhub version)",
            summary.store_format
        )));
    }
    summary.tables = 0;
    summary.rows = 0;
    summary.files.clear();
    let known = tables(sql)?;
    db.begin()?;
    let res = (|| {
        if replace {
            for t in known.iter().filter(|t| *t != "meta") {
                sql.exec(&format!("DELETE FROM \"{t}\""), &[])?;
            }
        } else {
            for t in known.iter().filter(|t| *t != "meta") {
                if sql
                    .row(&format!("SELECT 1 FROM \"{t}\" LIMIT 1"), &[], |_| Ok(()))?
                    .is_some()
                {
                    return Err(StoreError::Conflict(format!(
                        "the target store already holds data (table {t}); import into a new store (an empty data directory or PostgreSQL schema), or replace its contents"
                    )));
                }
            }
        }
        sql.exec("DELETE FROM meta WHERE key <> 'format_version'", &[])?;
        let mut parts = super::partitions::existing(sql)?;
        let mut files = Vec::new();
        loop {
            match get_u8(&mut r)? {
                b'T' => {
                    let (table, rows) = import_table(sql, &mut r, &known, &mut parts)?;
                    summary.tables += 1;
                    summary.rows += rows;
                    if sql.dialect() == Dialect::Postgres {
                        restart_identities(sql, &table)?;
                    }
                }
                b'F' => {
                    let name = String::from_utf8(get_bytes(&mut r)?)
                        .map_err(|_| bad("names a file in bytes that are not UTF-8"))?;
                    if !KEY_FILES.contains(&name.as_str()) {
                        return Err(bad(format!("carries an unknown file {name:?}")));
                    }
                    files.push((name.clone(), get_bytes(&mut r)?));
                    summary.files.push(name);
                }
                b'Z' => {
                    let expected = r.hash.clone().finalize();
                    let mut digest = [0u8; 32];
                    r.inner
                        .read_exact(&mut digest)
                        .map_err(|_| bad("is cut short (no digest)"))?;
                    if digest[..] != expected[..] {
                        return Err(bad("does not match its digest (altered or damaged)"));
                    }
                    return Ok(files);
                }
                t => return Err(bad(format!("has an unknown record {:?}", t as char))),
            }
        }
    })();
    match res {
        Ok(files) => {
            sql.batch("COMMIT")?;
            Ok((summary, files))
        }
        Err(e) => {
            let _ = sql.batch("ROLLBACK");
            Err(e)
        }
    }
}

fn import_table<R: Read>(
    sql: &dyn Sql,
    r: &mut Hashing<R>,
    known: &[String],
    parts: &mut std::collections::BTreeSet<(Table, i64)>,
) -> Result<(String, u64), StoreError> {
    let table = ident(get_bytes(r)?)?;
    if !known.contains(&table) {
        return Err(bad(format!(
            "holds table {table}, which this store does not have"
        )));
    }
    let ncols = get_u32(r)? as usize;
    if ncols == 0 || ncols > 256 {
        return Err(bad(format!("gives table {table} {ncols} columns")));
    }
    let mut cols = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        cols.push(ident(get_bytes(r)?)?);
    }
    let have = columns(sql, &table)?;
    if let Some(c) = cols.iter().find(|c| !have.contains(c)) {
        return Err(bad(format!(
            "has column {table}.{c}, which this store does not have"
        )));
    }
    // The target's own format row stays; the rest of meta comes along.
    let key_col = cols.iter().position(|c| c == "key");
    let list = cols
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // PostgreSQL's partitioned tables need the rows' partitions first.
    let partitioned = [Table::Chunks, Table::BatchLog]
        .into_iter()
        .find(|t| t.name() == table)
        .and_then(|t| Some((t, cols.iter().position(|c| c == t.key())?)));
    let mut pending: Vec<Vec<Owned>> = Vec::new();
    let mut n = 0u64;
    let mut flush = |pending: &mut Vec<Vec<Owned>>| -> Result<(), StoreError> {
        if let Some((t, k)) = partitioned {
            let keys = pending.iter().filter_map(|row| match row[k] {
                Owned::Int(v) => Some(v),
                _ => None,
            });
            super::partitions::ensure_in_tx(sql, parts, t, keys)?;
        }
        in_chunks(pending.len(), |range| {
            let stmt = format!(
                "INSERT INTO \"{table}\"({list}) VALUES {}",
                value_lists(range.len(), ncols)
            );
            let vals: Vec<Val<'_>> = pending[range]
                .iter()
                .flat_map(|row| row.iter().map(Owned::as_val))
                .collect();
            sql.exec(&stmt, &vals).map(|_| ())
        })?;
        pending.clear();
        Ok(())
    };
    loop {
        match get_u8(r)? {
            b'R' => {
                let mut row = Vec::with_capacity(ncols);
                for _ in 0..ncols {
                    row.push(get_value(r)?);
                }
                n += 1;
                if table == "meta"
                    && key_col.is_some_and(|k| row[k] == Owned::Text("format_version".into()))
                {
                    continue;
                }
                pending.push(row);
                if pending.len() >= 256 {
                    flush(&mut pending)?;
                }
            }
            b'E' => {
                flush(&mut pending)?;
                let said = u64::from_le_bytes(get_array(r)?);
                if said != n {
                    return Err(bad(format!(
                        "says table {table} has {said} rows but holds {n}"
                    )));
                }
                return Ok((table, n));
            }
            t => {
                return Err(bad(format!(
                    "has an unknown record {:?} in table {table}",
                    t as char
                )))
            }
        }
    }
}

/// Identity columns, and columns numbered from a sequence they own,
/// continue after the rows imported with explicit ids.
fn restart_identities(sql: &dyn Sql, table: &str) -> Result<(), StoreError> {
    let cols: Vec<String> = sql.rows(
        "SELECT column_name::TEXT FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name::TEXT = ?1
           AND (is_identity = 'YES' OR column_default LIKE 'nextval(%')",
        &[Val::Text(table)],
        |r| r.get(0),
    )?;
    for c in cols {
        sql.exec(
            &format!(
                "SELECT setval(pg_get_serial_sequence(?1, ?2), COALESCE(MAX(\"{c}\"), 0) + 1, false) FROM \"{table}\""
            ),
            &[Val::Text(table), Val::Text(&c)],
        )?;
    }
    Ok(())
}

fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "sqlite",
        Dialect::Postgres => "postgres",
    }
}

/// The store's tables, by name.
fn tables(sql: &dyn Sql) -> Result<Vec<String>, StoreError> {
    let q = match sql.dialect() {
        Dialect::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        Dialect::Postgres => {
            // Partitions are read and written through their parents.
            "SELECT c.relname::TEXT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY 1"
        }
    };
    sql.rows(q, &[], |r| r.get(0))
}

/// A table's columns, in order.
fn columns(sql: &dyn Sql, table: &str) -> Result<Vec<String>, StoreError> {
    let q = match sql.dialect() {
        Dialect::Sqlite => "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
        Dialect::Postgres => {
            "SELECT column_name::TEXT FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name::TEXT = ?1 ORDER BY ordinal_position"
        }
    };
    sql.rows(q, &[Val::Text(table)], |r| r.get(0))
}

/// Every row of a table, streamed (SQLite steps its statement; on
/// PostgreSQL a cursor in the snapshot's transaction is fetched in pages).
fn each_row(
    sql: &dyn Sql,
    table: &str,
    cols: &[String],
    f: &mut dyn FnMut(&[Owned]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let list = cols
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let select = format!("SELECT {list} FROM \"{table}\"");
    let mut row = Vec::with_capacity(cols.len());
    let mut take = |r: &dyn super::sql::Row| -> Result<(), StoreError> {
        row.clear();
        for i in 0..cols.len() {
            row.push(r.value(i)?);
        }
        f(&row)
    };
    match sql.dialect() {
        Dialect::Sqlite => sql.each(&select, &[], &mut take),
        Dialect::Postgres => {
            let cursor = format!("\"export_{table}\"");
            sql.batch(&format!("DECLARE {cursor} NO SCROLL CURSOR FOR {select}"))?;
            let fetch = format!("FETCH {FETCH} FROM {cursor}");
            loop {
                let mut got = 0;
                sql.each(&fetch, &[], &mut |r| {
                    got += 1;
                    take(r)
                })?;
                if got < FETCH {
                    break;
                }
            }
            sql.batch(&format!("CLOSE {cursor}"))
        }
    }
}

/// A table or column name from the file: ours are snake_case, and
/// anything else is refused before it reaches a statement.
fn ident(bytes: Vec<u8>) -> Result<String, StoreError> {
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if !ok {
        return Err(bad(
            "names a table or column with characters other than a-z, 0-9 and _",
        ));
    }
    Ok(String::from_utf8(bytes).expect("ascii"))
}

fn private_file(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?)
}

/// A reader or writer that hashes every byte that passes.
struct Hashing<T> {
    inner: T,
    hash: Sha256,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(b.len()).map_err(|_| bad("a value over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(b)?;
    Ok(())
}

fn put_value(w: &mut impl Write, v: &Owned) -> Result<(), StoreError> {
    match v {
        Owned::Null => w.write_all(&[0])?,
        Owned::Int(i) => {
            w.write_all(&[1])?;
            w.write_all(&i.to_le_bytes())?;
        }
        Owned::Real(f) => {
            w.write_all(&[2])?;
            w.write_all(&f.to_le_bytes())?;
        }
        Owned::Text(t) => {
            w.write_all(&[3])?;
            put_bytes(w, t.as_bytes())?;
        }
        Owned::Bytes(b) => {
            w.write_all(&[4])?;
            put_bytes(w, b)?;
        }
    }
    Ok(())
}

fn get_array<const N: usize>(r: &mut impl Read) -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(|_| bad("is cut short"))?;
    Ok(b)
}

fn get_u8(r: &mut impl Read) -> Result<u8, StoreError> {
    Ok(get_array::<1>(r)?[0])
}

fn get_u32(r: &mut impl Read) -> Result<u32, StoreError> {
    Ok(u32::from_le_bytes(get_array(r)?))
}

fn get_bytes(r: &mut impl Read) -> Result<Vec<u8>, StoreError> {
    let len = get_u32(r)? as usize;
    let mut b = Vec::new();
    // Grown as bytes arrive, so a damaged length cannot allocate 4 GiB.
    r.by_ref().take(len as u64).read_to_end(&mut b)?;
    if b.len() != len {
        return Err(bad("is cut short"));
    }
    Ok(b)
}

fn get_value(r: &mut impl Read) -> Result<Owned, StoreError> {
    Ok(match get_u8(r)? {
        0 => Owned::Null,
        1 => Owned::Int(i64::from_le_bytes(get_array(r)?)),
        2 => Owned::Real(f64::from_le_bytes(get_array(r)?)),
        3 => Owned::Text(
            String::from_utf8(get_bytes(r)?).map_err(|_| bad("holds text that is not UTF-8"))?,
        ),
        4 => Owned::Bytes(get_bytes(r)?),
        t => return Err(bad(format!("holds a value of unknown kind {t}"))),
    })
}
