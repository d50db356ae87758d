//! One SQL text for both backends. Store modules run their statements
//! through `Sql` (implemented for SQLite here and for PostgreSQL in
//! `pg.rs`) instead of calling `rusqlite` directly, so the same registry
//! code — and the same conformance tests — serve the embedded store and
//! a cluster's PostgreSQL (docs/design/scale-out.md).
//!
//! The SQL written against it keeps to what both engines accept: `?N`
//! placeholders (rewritten to `$N` for PostgreSQL), `ON CONFLICT … DO`,
//! `RETURNING`, integers for booleans, no `rowid` and no JSON functions.
//! DDL is per backend.
//!
//! May call: nothing outside `store`.

use super::StoreError;

/// A statement argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    Int(i64),
    Real(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Null,
}

impl Val<'_> {
    /// The value, owning its text or bytes.
    pub fn owned(&self) -> Owned {
        match *self {
            Val::Int(v) => Owned::Int(v),
            Val::Real(v) => Owned::Real(v),
            Val::Text(v) => Owned::Text(v.to_string()),
            Val::Bytes(v) => Owned::Bytes(v.to_vec()),
            Val::Null => Owned::Null,
        }
    }
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}

impl From<u32> for Val<'_> {
    fn from(v: u32) -> Self {
        Val::Int(v.into())
    }
}

impl From<u16> for Val<'_> {
    fn from(v: u16) -> Self {
        Val::Int(v.into())
    }
}

impl From<u8> for Val<'_> {
    fn from(v: u8) -> Self {
        Val::Int(v.into())
    }
}

impl From<bool> for Val<'_> {
    fn from(v: bool) -> Self {
        Val::Int(v.into())
    }
}

impl From<f64> for Val<'_> {
    fn from(v: f64) -> Self {
        Val::Real(v)
    }
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::Text(v)
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(v: &'a String) -> Self {
        Val::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Val<'a> {
    fn from(v: &'a [u8]) -> Self {
        Val::Bytes(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Val<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Val::Bytes(v)
    }
}

impl<'a, T: Into<Val<'a>>> From<Option<T>> for Val<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// Statement arguments: `args![a, b, c]`.
#[macro_export]
macro_rules! sql_args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::store::sql::Val::from($v)),*][..]
    };
}
pub use crate::sql_args as args;

/// Rows per multi-row statement. A few fixed sizes keep each backend's
/// statement cache at four entries per statement shape, and n rows cost
/// about n/64 + 6 statements instead of n.
pub const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// Calls `f` with consecutive ranges covering `0..n`, of the sizes in
/// `CHUNKS`.
pub fn in_chunks(
    n: usize,
    mut f: impl FnMut(std::ops::Range<usize>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut at = 0;
    for size in CHUNKS {
        while n - at >= size {
            f(at..at + size)?;
            at += size;
        }
    }
    Ok(())
}

/// `(?1, …, ?cols), (…)` for `rows` rows (a multi-row `VALUES` list).
pub fn value_lists(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("?{}", r * cols + c + 1));
        }
        out.push(')');
    }
    out
}

/// A column value read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Owned {
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
    Null,
}

impl Owned {
    /// What kind of value this is, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Owned::Int(_) => "an integer",
            Owned::Real(_) => "a real number",
            Owned::Text(_) => "text",
            Owned::Bytes(_) => "bytes",
            Owned::Null => "NULL",
        }
    }

    /// The value as a statement argument.
    pub fn as_val(&self) -> Val<'_> {
        match self {
            Owned::Int(i) => Val::Int(*i),
            Owned::Real(f) => Val::Real(*f),
            Owned::Text(t) => Val::Text(t),
            Owned::Bytes(b) => Val::Bytes(b),
            Owned::Null => Val::Null,
        }
    }
}

/// A Rust value a column converts into.
pub trait FromSql: Sized {
    fn from_sql(v: Owned) -> Option<Self>;
}

impl FromSql for i64 {
    fn from_sql(v: Owned) -> Option<Self> {
        match v {
            Owned::Int(i) => Some(i),
            _ => None,
        }
    }
}

impl FromSql for u32 {
    fn from_sql(v: Owned) -> Option<Self> {
        i64::from_sql(v).and_then(|i| u32::try_from(i).ok())
    }
}

impl FromSql for u16 {
    fn from_sql(v: Owned) -> Option<Self> {
        i64::from_sql(v).and_then(|i| u16::try_from(i).ok())
    }
}

impl FromSql for u8 {
    fn from_sql(v: Owned) -> Option<Self> {
        i64::from_sql(v).and_then(|i| u8::try_from(i).ok())
    }
}

impl FromSql for bool {
    fn from_sql(v: Owned) -> Option<Self> {
        i64::from_sql(v).map(|i| i != 0)
    }
}

impl FromSql for f64 {
    fn from_sql(v: Owned) -> Option<Self> {
        match v {
            Owned::Real(f) => Some(f),
            Owned::Int(i) => Some(i as f64),
            _ => None,
        }
    }
}

impl FromSql for String {
    fn from_sql(v: Owned) -> Option<Self> {
        match v {
            Owned::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_sql(v: Owned) -> Option<Self> {
        match v {
            Owned::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(v: Owned) -> Option<Self> {
        match v {
            Owned::Null => Some(None),
            v => T::from_sql(v).map(Some),
        }
    }
}

/// One result row.
pub trait Row {
    fn value(&self, i: usize) -> Result<Owned, StoreError>;
}

impl dyn Row + '_ {
    /// Column `i` as `T`; a NULL or a value of another type is an error
    /// naming the column (use `Option<T>` for nullable columns).
    pub fn get<T: FromSql>(&self, i: usize) -> Result<T, StoreError> {
        let v = self.value(i)?;
        // Named before the value is consumed; formatting the value itself
        // on every read cost a copy of each blob read (chunks).
        let held = v.kind();
        T::from_sql(v).ok_or_else(|| StoreError::Invalid {
            field: format!("column {i}"),
            rule: format!("holds {held}, not a {}", std::any::type_name::<T>()),
        })
    }
}

/// A connection (or the writer's open transaction) of either backend.
pub trait Sql {
    /// Runs a statement; the number of rows it changed.
    fn exec(&self, sql: &str, args: &[Val<'_>]) -> Result<usize, StoreError>;
    /// Runs a query, handing each row to `f` in order.
    fn each(
        &self,
        sql: &str,
        args: &[Val<'_>],
        f: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Runs statements without arguments (DDL, `BEGIN`).
    fn batch(&self, sql: &str) -> Result<(), StoreError>;
    /// Like `batch`, for statements whose outcome the caller does not look
    /// at (`BEGIN`, `SAVEPOINT`, `RELEASE`): a backend across a network
    /// may send them with the next statement, in the same round trip
    /// (their errors then come with that statement's).
    fn batch_later(&self, sql: &str) -> Result<(), StoreError> {
        self.batch(sql)
    }
    /// Like `exec`, for a write whose row count the caller does not need:
    /// a backend across a network may hold it and send it with the next
    /// statement or at `flush`, pipelined (its error then comes from
    /// there). Reads on the same connection see it: they are sent after it.
    fn exec_later(&self, sql: &str, args: &[Val<'_>]) -> Result<(), StoreError> {
        self.exec(sql, args).map(|_| ())
    }
    /// Sends whatever `batch_later` and `exec_later` hold and waits for
    /// their outcome (the first error, if any).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Which backend: DDL and a few statements differ.
    fn dialect(&self) -> Dialect;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl dyn Sql + '_ {
    /// Commits the open transaction, or fails if it did not commit.
    /// PostgreSQL answers COMMIT of a transaction an error aborted with a
    /// rollback that is no error: the SELECT before it fails instead
    /// (skipping the COMMIT, so the caller rolls back).
    pub fn commit(&self) -> Result<(), StoreError> {
        self.batch(match self.dialect() {
            Dialect::Sqlite => "COMMIT",
            Dialect::Postgres => "SELECT 1; COMMIT",
        })
    }

    /// Runs `f` between `BEGIN` and `COMMIT`, or rolls back if it fails
    /// (a plain connection; the writer's own transactions are
    /// `Db::transaction`).
    pub fn in_transaction<R>(
        &self,
        f: impl FnOnce() -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.batch("BEGIN")?;
        match f().and_then(|r| self.commit().map(|_| r)) {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Every row, mapped.
    pub fn rows<T>(
        &self,
        sql: &str,
        args: &[Val<'_>],
        mut f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.each(sql, args, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, mapped, if there is one.
    pub fn row<T>(
        &self,
        sql: &str,
        args: &[Val<'_>],
        f: impl FnOnce(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut f = Some(f);
        let mut out = None;
        self.each(sql, args, &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Membership in the integers of a JSON array bound at `?n` (a set of
    /// series ids of any size in one statement, on both backends): `x {}`.
    pub fn in_json_ints(&self, n: usize) -> String {
        match self.dialect() {
            Dialect::Sqlite => format!("IN (SELECT value FROM json_each(?{n}))"),
            // An array built once (an init plan), not a subquery the
            // planner may re-run for every row: without statistics (a
            // table just written) it joined the set against each chunk,
            // 70 ms for 200 series.
            Dialect::Postgres => format!(
                "= ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(?{n} AS TEXT)::jsonb)::INT8))"
            ),
        }
    }

    /// The first column of the first row (`COUNT(*)`, `RETURNING id`).
    pub fn one<T: FromSql>(&self, sql: &str, args: &[Val<'_>]) -> Result<T, StoreError> {
        self.row(sql, args, |r| r.get(0))?
            .ok_or_else(|| StoreError::NotFound("the statement returned no row".into()))
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Val::Int(i) => ValueRef::Integer(i),
            Val::Real(f) => ValueRef::Real(f),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Bytes(b) => ValueRef::Blob(b),
            Val::Null => ValueRef::Null,
        }))
    }
}

impl Row for rusqlite::Row<'_> {
    fn value(&self, i: usize) -> Result<Owned, StoreError> {
        use rusqlite::types::ValueRef;
        Ok(match self.get_ref(i)? {
            ValueRef::Null => Owned::Null,
            ValueRef::Integer(i) => Owned::Int(i),
            ValueRef::Real(f) => Owned::Real(f),
            ValueRef::Text(t) => Owned::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Owned::Bytes(b.to_vec()),
        })
    }
}

impl Sql for rusqlite::Connection {
    fn exec(&self, sql: &str, args: &[Val<'_>]) -> Result<usize, StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        stmt.execute(rusqlite::params_from_iter(args.iter()))
            .map_err(conflict_or)
    }

    fn each(
        &self,
        sql: &str,
        args: &[Val<'_>],
        f: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(conflict_or)?;
        while let Some(r) = rows.next().map_err(conflict_or)? {
            f(r)?;
        }
        Ok(())
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.execute_batch(sql)?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

/// A unique or primary key violation is a conflict on both backends.
fn conflict_or(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            StoreError::Conflict(msg.clone().unwrap_or_else(|| "already exists".into()))
        }
        _ => e.into(),
    }
}

/// `?N` placeholders as PostgreSQL's `$N`, outside quoted text.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let (mut single, mut double) = (false, false);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '?' if !single && !double && chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes_only() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"d?3\" = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"d?3\" = $12"
        );
        assert_eq!(
            to_postgres("SELECT 'it''s ?1', ?2"),
            "SELECT 'it''s ?1', $2"
        );
    }
}
