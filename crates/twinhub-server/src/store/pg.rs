//! `Sql` on PostgreSQL (the cluster's store, `store.url = "postgres://…"`).
//!
//! The store's code is synchronous (its writer thread, its readers), so a
//! `PgConn` is too: the connections' socket I/O runs on one small runtime
//! of its own (`twinhub-pg`), and each statement is waited for with a
//! thread-parking `block_on` — which, unlike a runtime's, may be called
//! from any thread, the writer's inside its own runtime included.
//! Statements are prepared once per connection and cached.
//!
//! May call: nothing outside `store`.

use super::sql::{Dialect, Owned, Row, Sql, Val};
use super::StoreError;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

/// The runtime that drives every PostgreSQL connection's socket.
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("twinhub-pg")
            .enable_all()
            .build()
            .expect("PostgreSQL I/O runtime")
    })
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits for `fut` on this thread (the I/O happens on `io_runtime`).
fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            use tokio_postgres::error::SqlState;
            if *db.code() == SqlState::UNIQUE_VIOLATION {
                return StoreError::Conflict(db.message().to_string());
            }
            // Detail stays in the log, not in answers.
            tracing::warn!(
                code = db.code().code(),
                message = db.message(),
                "PostgreSQL refused a statement"
            );
        } else {
            tracing::warn!(error = %e, "PostgreSQL connection error");
        }
        StoreError::Unavailable
    }
}

/// One PostgreSQL connection with its statement cache.
pub struct PgConn {
    client: Client,
    cache: RefCell<HashMap<String, Statement>>,
    /// Statements held to go in the same round trip as the next one, in
    /// order (`Sql::batch_later`, `Sql::exec_later`).
    deferred: RefCell<Vec<Held>>,
}

/// A statement `PgConn` holds back.
enum Held {
    /// Without arguments or results (`BEGIN`, `SAVEPOINT`, `RELEASE`).
    Text(String),
    /// A write whose row count nobody reads.
    Exec(Statement, Vec<super::sql::Owned>),
}

/// Requests pipelined per round trip: `join_all` polls up to this many in
/// order (tokio-postgres sends each request when its future is first
/// polled, so polling order is sending order).
const PIPELINE: usize = 30;

impl PgConn {
    /// Connects; with `schema`, every unqualified name resolves in it
    /// (created if missing): tests and several installations share one
    /// database this way.
    pub fn connect(url: &str, schema: Option<&str>) -> Result<PgConn, StoreError> {
        PgConn::open(url, schema, true)
    }

    /// Connects to `schema` as it is, creating nothing: a reader (or a
    /// replica's look at the writer's session) has no business creating
    /// the store. A reader opened late by a server being torn down would
    /// otherwise bring back, empty, the schema a test had just dropped.
    pub fn connect_existing(url: &str, schema: Option<&str>) -> Result<PgConn, StoreError> {
        PgConn::open(url, schema, false)
    }

    fn open(url: &str, schema: Option<&str>, create: bool) -> Result<PgConn, StoreError> {
        let url = url.to_string();
        let client = block_on(io_runtime().spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "a PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        }))
        .map_err(|_| StoreError::Unavailable)??;
        let conn = PgConn {
            client,
            cache: RefCell::new(HashMap::new()),
            deferred: RefCell::new(Vec::new()),
        };
        if let Some(s) = schema {
            let quoted = quote_ident(s)?;
            // IF NOT EXISTS is not safe against a concurrent creation
            // (nodes starting together): the loser sees a unique violation.
            if create {
                match conn.batch(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}")) {
                    Ok(()) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            conn.batch(&format!("SET search_path TO {quoted}"))?;
        }
        Ok(conn)
    }

    /// The server closed the connection (restarted, or terminated it).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// This connection as the SQL layer.
    pub fn sql_ref(&self) -> &dyn Sql {
        self
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.cache.borrow().get(sql) {
            return Ok(s.clone());
        }
        let stmt = block_on(self.client.prepare(&super::sql::to_postgres(sql)))?;
        self.cache
            .borrow_mut()
            .insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }
}

/// Drops a schema and everything in it (tests and benchmarks remove
/// their own this way).
pub fn drop_schema(url: &str, name: &str) -> Result<(), StoreError> {
    let quoted = quote_ident(name)?;
    PgConn::connect(url, None)?.batch(&format!("DROP SCHEMA IF EXISTS {quoted} CASCADE"))
}

/// A schema name as an identifier; only letters, digits and `_`.
pub fn quote_ident(s: &str) -> Result<String, StoreError> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Invalid {
            field: "store.schema".into(),
            rule: "letters, digits and _ only".into(),
        });
    }
    Ok(format!("\"{s}\""))
}

fn params<'a>(args: &'a [Val<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl PgConn {
    /// Runs `fut` after the deferred statements, pipelined with them: both
    /// are sent before either answer is awaited (tokio-postgres sends a
    /// request when its future is first polled, in polling order).
    fn after_deferred<T>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let held = std::mem::take(&mut *self.deferred.borrow_mut());
        if held.is_empty() {
            return Ok(block_on(fut)?);
        }
        let (first, then) = block_on(futures_util::future::join(self.send(&held), fut));
        first?;
        Ok(then?)
    }

    /// Sends held statements, pipelined in order; the first error.
    async fn send(&self, held: &[Held]) -> Result<(), tokio_postgres::Error> {
        use futures_util::future::{join_all, Either};
        for part in held.chunks(PIPELINE) {
            let args: Vec<Vec<Val<'_>>> = part
                .iter()
                .map(|h| match h {
                    Held::Exec(_, a) => a.iter().map(super::sql::Owned::as_val).collect(),
                    Held::Text(_) => Vec::new(),
                })
                .collect();
            let sent =
                part.iter().zip(&args).map(|(h, a)| match h {
                    Held::Text(t) => Either::Left(self.client.batch_execute(t)),
                    Held::Exec(stmt, _) => Either::Right(async move {
                        self.client.execute(stmt, &params(a)).await.map(|_| ())
                    }),
                });
            for r in join_all(sent).await {
                r?;
            }
        }
        Ok(())
    }

    fn hold(&self, h: Held) {
        let mut d = self.deferred.borrow_mut();
        // Neighbouring text statements go as one.
        if let (Held::Text(t), Some(Held::Text(last))) = (&h, d.last_mut()) {
            last.push_str("; ");
            last.push_str(t);
            return;
        }
        d.push(h);
    }
}

impl Sql for PgConn {
    fn exec(&self, sql: &str, args: &[Val<'_>]) -> Result<usize, StoreError> {
        let stmt = self.statement(sql)?;
        let params = params(args);
        Ok(self.after_deferred(self.client.execute(&stmt, &params))? as usize)
    }

    fn each(
        &self,
        sql: &str,
        args: &[Val<'_>],
        f: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let stmt = self.statement(sql)?;
        let params = params(args);
        for r in self.after_deferred(self.client.query(&stmt, &params))? {
            f(&r)?;
        }
        Ok(())
    }

    fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.hold(Held::Text(sql.to_string()));
        self.flush()
    }

    fn batch_later(&self, sql: &str) -> Result<(), StoreError> {
        self.hold(Held::Text(sql.to_string()));
        Ok(())
    }

    fn exec_later(&self, sql: &str, args: &[Val<'_>]) -> Result<(), StoreError> {
        let stmt = self.statement(sql)?;
        self.hold(Held::Exec(stmt, args.iter().map(Val::owned).collect()));
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let held = std::mem::take(&mut *self.deferred.borrow_mut());
        if held.is_empty() {
            return Ok(());
        }
        Ok(block_on(self.send(&held))?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

/// Arguments adapt to the parameter's declared type, as SQLite's dynamic
/// typing lets the same SQL text pass an integer for an `INT4` column or a
/// boolean.
impl ToSql for Val<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                _ => Err(format!("an integer cannot be a {ty}").into()),
            },
            Val::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                _ => Err(format!("a real number cannot be a {ty}").into()),
            },
            Val::Text(s) => s.to_sql(ty, out),
            Val::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl Row for tokio_postgres::Row {
    fn value(&self, i: usize) -> Result<Owned, StoreError> {
        let col = self.columns().get(i).ok_or_else(|| StoreError::Invalid {
            field: format!("column {i}"),
            rule: "is not in the result".into(),
        })?;
        let v = match *col.type_() {
            Type::INT8 => self.try_get::<_, Option<i64>>(i)?.map(Owned::Int),
            Type::INT4 => self
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Owned::Int(v.into())),
            Type::INT2 => self
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Owned::Int(v.into())),
            Type::BOOL => self
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Owned::Int(v.into())),
            Type::FLOAT8 => self.try_get::<_, Option<f64>>(i)?.map(Owned::Real),
            Type::FLOAT4 => self
                .try_get::<_, Option<f32>>(i)?
                .map(|v| Owned::Real(v.into())),
            Type::BYTEA => self.try_get::<_, Option<Vec<u8>>>(i)?.map(Owned::Bytes),
            _ => self.try_get::<_, Option<String>>(i)?.map(Owned::Text),
        };
        Ok(v.unwrap_or(Owned::Null))
    }
}

/// The schema a fresh PostgreSQL store starts with (this binary's format).
const SCHEMA: &str = include_str!("pg_schema.sql");

/// Brings the connection's schema to this binary's format, once however
/// many nodes start together: the first takes an advisory lock (scoped to
/// the schema), creates the tables in one transaction and records the
/// format; the others wait for the lock and find it done. A newer format
/// than this binary knows is refused, as on SQLite.
pub fn migrate(c: &PgConn) -> Result<i64, StoreError> {
    let lock = "hashtext('twinhub:' || current_schema())";
    c.batch(&format!("SELECT pg_advisory_lock({lock})"))?;
    let res = (|| {
        let db: &dyn Sql = c;
        let has_meta: bool = db.one("SELECT to_regclass('meta') IS NOT NULL", &[])?;
        let found: i64 = if has_meta {
            db.row(
                "SELECT value FROM meta WHERE key = 'format_version'",
                &[],
                |r| r.get::<String>(0),
            )?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
        } else {
            0
        };
        let supported = super::db::FORMAT_VERSION;
        if found > supported {
            return Err(StoreError::TooNew { found, supported });
        }
        if found == 0 {
            db.in_transaction(|| {
                db.batch(SCHEMA)?;
                db.batch(super::partitions::TABLES)?;
                db.exec(
                    "INSERT INTO meta(key, value) VALUES ('format_version', ?1)",
                    &[Val::Text(&supported.to_string())],
                )
            })?;
            tracing::info!(format = supported, "PostgreSQL store created");
        } else if found < supported {
            db.in_transaction(|| {
                for v in found..supported {
                    match v {
                        // 13 → 14 changed no table.
                        13 => {}
                        14 => super::partitions::partition_format_14(db)?,
                        // 15 → 16: outbox rows in binary, no table changed.
                        15 => {}
                        _ => {
                            return Err(StoreError::Io(std::io::Error::other(format!(
                                "no PostgreSQL migration from store format {v}"
                            ))))
                        }
                    }
                }
                db.exec(
                    "UPDATE meta SET value = ?1 WHERE key = 'format_version'",
                    &[Val::Text(&supported.to_string())],
                )
            })?;
            tracing::info!(from = found, to = supported, "PostgreSQL store migrated");
        }
        Ok(supported)
    })();
    c.batch(&format!("SELECT pg_advisory_unlock({lock})"))?;
    res
}
