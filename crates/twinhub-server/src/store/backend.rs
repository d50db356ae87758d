//! Which database a store runs on: the embedded SQLite file or a
//! PostgreSQL server. The writer, the readers and the compactor hold a
//! `Db`; everything they say goes through the SQL layer (`sql.rs`), and
//! what only one engine has (SQLite's checkpoints and free pages) asks
//! `sqlite()` first.
//!
//! May call: nothing outside `store`.

use super::pg::PgConn;
use super::sql::{Dialect, Sql, Val};
use super::StoreError;
use rusqlite::Connection;

pub enum Db {
    Sqlite(Connection),
    Pg(PgConn),
}

impl Db {
    pub fn sql(&self) -> &dyn Sql {
        match self {
            Db::Sqlite(c) => c,
            Db::Pg(c) => c,
        }
    }

    /// The SQLite connection, for what only the embedded file has.
    pub fn sqlite(&self) -> Option<&Connection> {
        match self {
            Db::Sqlite(c) => Some(c),
            Db::Pg(_) => None,
        }
    }

    /// The connection is gone for good (PostgreSQL restarted or ended
    /// it): statements can only fail until it is replaced.
    pub fn is_broken(&self) -> bool {
        match self {
            Db::Sqlite(_) => false,
            Db::Pg(c) => c.is_closed(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.sql().dialect()
    }

    /// Opens the writer's transaction (SQLite takes its write lock at
    /// once, so a reader upgrading can never deadlock it).
    pub fn begin(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => c.batch("BEGIN IMMEDIATE"),
            // Sent with the transaction's first statement.
            Db::Pg(c) => c.batch_later("BEGIN"),
        }
    }

    /// Whether the embedded store's commits wait for the disk (until set
    /// again). PostgreSQL's are set per transaction
    /// (`SET LOCAL synchronous_commit`).
    pub fn sync_commits(&self, wait: bool) -> Result<(), StoreError> {
        if let Db::Sqlite(c) = self {
            c.pragma_update(None, "synchronous", if wait { "FULL" } else { "NORMAL" })?;
        }
        Ok(())
    }

    /// Opens the writer's transaction with a commit that does not wait
    /// for the disk. The caller sets [`Db::sync_commits`] back to `true`
    /// after the commit, whatever happened: every other commit must wait.
    pub fn begin_unsynced(&self) -> Result<(), StoreError> {
        self.sync_commits(false)?;
        self.begin()?;
        if let Db::Pg(_) = self {
            self.sql().batch("SET LOCAL synchronous_commit TO OFF")?;
        }
        Ok(())
    }

    /// Runs `f` in a transaction of its own: committed if it succeeds,
    /// rolled back if not. `unsynced` commits without waiting for the disk
    /// (background work that can be redone): the next synced commit makes
    /// it durable with it, as both engines write their logs in order.
    pub fn transaction<R>(
        &self,
        unsynced: bool,
        f: impl FnOnce(&dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let sql = self.sql();
        let out = (|| {
            if unsynced {
                self.begin_unsynced()?;
            } else {
                self.begin()?;
            }
            let r = f(sql)?;
            sql.commit()?;
            Ok(r)
        })();
        if out.is_err() {
            // Whatever failed, from BEGIN to COMMIT, leaves no transaction
            // open behind it (a ROLLBACK with none open is a no-op here).
            let _ = sql.batch("ROLLBACK");
        }
        if unsynced {
            // Acknowledgements rest on this: no group may commit unsynced.
            self.sync_commits(true).expect("synchronous back to FULL");
        }
        out
    }
}

/// Where a store's database is, and how to connect to it.
#[derive(Clone)]
pub enum Source {
    /// The embedded file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL server; `schema` scopes every table (created if
    /// missing), so several installations or test runs share a database.
    Pg { url: String, schema: Option<String> },
}

/// By hand: the URL may hold a password.
impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            Source::Pg { url, schema } => f
                .debug_struct("Pg")
                .field("url", &super::settings::redact_url(url))
                .field("schema", schema)
                .finish(),
        }
    }
}

impl Source {
    /// Where the store with these options and this data directory is:
    /// PostgreSQL when `url` is set, else the directory's file.
    pub fn of(opts: &super::StoreOptions, dir: &std::path::Path) -> Source {
        match &opts.url {
            Some(url) => Source::Pg {
                url: url.clone(),
                schema: opts.schema.clone(),
            },
            None => Source::Sqlite(super::db::db_path(dir)),
        }
    }

    /// The writer's connection, its database brought to this binary's
    /// format first.
    pub fn open_writer(&self) -> Result<Db, StoreError> {
        Ok(match self {
            Source::Sqlite(path) => Db::Sqlite(super::db::open_writer(path)?),
            Source::Pg { url, schema } => {
                let c = PgConn::connect(url, schema.as_deref())?;
                super::pg::migrate(&c)?;
                // One writer per store, as the data directory's lock
                // makes it for the embedded file: a second node's batch-log
                // cut would delete rows whose points only the first holds.
                // Held by this connection's session: released when the
                // node stops or dies.
                let held: bool = c.sql_ref().one(
                    "SELECT pg_try_advisory_lock(hashtext('twinhub-writer:' || current_schema()))",
                    &[],
                )?;
                if !held {
                    let name: String = c.sql_ref().one("SELECT current_schema()", &[])?;
                    return Err(StoreError::StoreInUse(name));
                }
                // A host that vanishes (power, network) sends no FIN: without
                // keepalives PostgreSQL would keep this session, and the
                // lock, for the kernel's two hours.
                c.batch(
                    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2;
                     SET tcp_keepalives_count = 3",
                )?;
                Db::Pg(c)
            }
        })
    }

    /// A new term for the writer that just took the lock: greater than
    /// every earlier holder's (0 on the embedded store, which has one).
    pub fn take_term(db: &Db) -> Result<i64, StoreError> {
        match db {
            Db::Sqlite(_) => Ok(0),
            // Only the lock holder creates or advances it, so the
            // `IF NOT EXISTS` cannot race.
            Db::Pg(c) => {
                c.batch("CREATE SEQUENCE IF NOT EXISTS writer_term")?;
                c.sql_ref().one("SELECT nextval('writer_term')", &[])
            }
        }
    }

    /// Ends the PostgreSQL session holding this store's writer lock (the
    /// lock goes with it); answers how many it ended. A cluster's replica
    /// does this to a primary that holds the lock but has gone silent — a
    /// stopped or hung process keeps its session open indefinitely.
    /// Only a session at least `older_than_s` old: one that just took the
    /// lock (another replica, quicker) is not the silent one.
    pub fn end_writer_session(&self, older_than_s: i64) -> Result<i64, StoreError> {
        match self {
            Source::Sqlite(_) => Ok(0),
            Source::Pg { url, schema } => {
                let c = PgConn::connect_existing(url, schema.as_deref())?;
                c.sql_ref().one(
                    "SELECT COUNT(pg_terminate_backend(l.pid)) FROM pg_locks l
                     JOIN pg_stat_activity a ON a.pid = l.pid
                     WHERE l.locktype = 'advisory' AND l.granted
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND l.objid::INT4 = hashtext('twinhub-writer:' || current_schema())
                       AND a.backend_start < now() - make_interval(secs => ?1::INT8::FLOAT8)",
                    &[Val::Int(older_than_s)],
                )
            }
        }
    }

    /// Brings the database to this binary's format (the embedded file's
    /// directory lock must be held) and answers the format.
    pub fn migrate(&self) -> Result<i64, StoreError> {
        match self {
            Source::Sqlite(path) => {
                let c = super::db::open_writer(path)?;
                super::db::format_version(&c)
            }
            Source::Pg { url, schema } => {
                super::pg::migrate(&PgConn::connect(url, schema.as_deref())?)
            }
        }
    }

    pub fn open_reader(&self) -> Result<Db, StoreError> {
        Ok(match self {
            Source::Sqlite(path) => Db::Sqlite(super::db::open_reader(path)?),
            Source::Pg { url, schema } => Db::Pg(PgConn::connect_existing(url, schema.as_deref())?),
        })
    }

    /// Opens a read-only snapshot: everything read until `COMMIT` is one
    /// consistent state.
    pub(super) fn begin_read(db: &Db) -> Result<(), StoreError> {
        db.sql().batch(match db {
            Db::Sqlite(_) => "BEGIN",
            Db::Pg(_) => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        })
    }
}
