//! The library's typed errors: which side failed decides the exit code an orchestrator sees.
//! Messages are written for an operator reading one line in a job log: what failed, what to do.

use std::process::ExitCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes, documented in `--help` and docs/operating.md. Scripts depend on them: never renumber.
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REDIS: u8 = 3;
    pub const POSTGRES: u8 = 4;
    /// The deadline passed: what was read is saved, the next run continues.
    pub const PARTIAL: u8 = 5;
    /// Interrupted by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM).
    pub const SIGNAL_BASE: u8 = 128;

    /// What each code means, as `--help` lists them.
    const MEANINGS: &[(u8, &str)] = &[
        (
            OK,
            "done (rejected checkpoints do not fail a run: they are counted and kept in sweep_rejects)",
        ),
        (OTHER, "anything else"),
        (
            USAGE,
            "bad usage: a bad flag, value or URL, or a missing setting",
        ),
        (REDIS, "Redis unreachable or failing"),
        (
            POSTGRES,
            "PostgreSQL unreachable or failing, or its schema not migrated (due keys are protected first)",
        ),
        (
            PARTIAL,
            "partial: --deadline passed; what was read is saved and the next run goes on",
        ),
        (
            SIGNAL_BASE + crate::shutdown::SIGINT as u8,
            "interrupted by SIGINT, 143 by SIGTERM; what was read is saved",
        ),
    ];

    /// The exit codes section of `--help`.
    pub fn help() -> String {
        let mut out = String::from("Exit codes:");
        for (code, meaning) in MEANINGS {
            out.push_str(&format!("\n{code:>3}  {meaning}"));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag value or a missing setting: the operator's command line must change.
    #[error("{0}")]
    Usage(String),

    /// Redis could not be reached or failed a command.
    #[error("Redis at {url}: {source}")]
    Redis {
        /// The URL with any password redacted.
        url: String,
        #[source]
        source: redis::RedisError,
    },

    /// PostgreSQL could not be reached or failed a statement.
    #[error("PostgreSQL {context}: {source}")]
    Postgres {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// The database exists but its schema is missing or older than this binary.
    #[error(
        "the database has not been migrated ({found}; this sweeper needs schema version {needed}): run `sweeper migrate` first"
    )]
    NotMigrated { found: String, needed: i64 },

    /// A PostgreSQL older than the schema is made for: `migrate` changes nothing on it.
    #[error(
        "PostgreSQL {version} is not supported: sweeper needs PostgreSQL {oldest} or newer (13 to 18 are tested); upgrade the server"
    )]
    UnsupportedServer { version: String, oldest: i32 },

    /// Anything else (a bug, an I/O error writing output).
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn postgres(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Postgres { context, source }
    }

    /// Worth another try: a dropped or refused connection, a timeout, a serialization failure or
    /// deadlock, a server shutting down. Everything else (bad SQL, bad data, auth) is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis { source, .. } => {
                (source.is_io_error() && !is_tls_refusal(source))
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || matches!(
                        source.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::MasterDown
                                // A replica now (a failover demoted it): a fresh connection, or
                                // the sentinels, find the primary.
                                | redis::ServerErrorKind::ReadOnly
                        )
                    )
                    // A script running too long: the server answers again once it ends.
                    || source.code() == Some("BUSY")
            }
            Error::Postgres { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    // serialization_failure, deadlock_detected, admin/crash shutdown,
                    // cannot_connect_now, lock_not_available (lock_timeout), query_canceled
                    // (statement_timeout), connection exceptions (class 08), and
                    // unique_violation: every statement upserts, so a unique violation is a
                    // race with another writer creating the same conversation (a second sweep
                    // after PostgreSQL dropped the first one's lock); the retry finds the row
                    // committed and merges into it; foreign_key_violation, the same race seen at
                    // commit (the messages reference the id this writer drew for the
                    // conversation; the other writer's row has its own). read_only_sql_transaction:
                    // the endpoint still points at a standby not yet promoted (RDS Multi-AZ,
                    // Patroni).
                    matches!(
                        &*c,
                        "25006"
                            | "40001"
                            | "40P01"
                            | "57P01"
                            | "57P02"
                            | "57P03"
                            | "55P03"
                            | "57014"
                            | "23505"
                            | "23503"
                    ) || c.starts_with("08")
                }),
                _ => false,
            },
            _ => false,
        }
    }

    /// No answer in time (a response or a connection that timed out): what a silent network
    /// partition looks like. Retried once, on a fresh connection; a second silence ends the
    /// retries (see [`crate::retry::Retries`]), so a partition is called within
    /// `--operation-timeout` + `--connect-timeout` of the first.
    pub fn is_silence(&self) -> bool {
        match self {
            Error::Redis { source, .. } => source.is_timeout(),
            Error::Postgres { source, .. } => match source {
                sqlx::Error::PoolTimedOut => true,
                sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
                _ => false,
            },
            _ => false,
        }
    }

    /// A failover under way: the endpoint reached a standby not yet promoted or a node demoted
    /// (25006, `READONLY`), or a server shutting down or starting (`admin_shutdown`,
    /// `cannot_connect_now`). Quick refusals that end when the failover does, so they are
    /// retried until the run's deadline ([`crate::retry::Retries`]), not only the ride-out.
    pub fn is_failover(&self) -> bool {
        match self {
            Error::Redis { source, .. } => matches!(
                source.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            ),
            Error::Postgres {
                source: sqlx::Error::Database(db),
                ..
            } => db
                .code()
                .is_some_and(|c| matches!(&*c, "25006" | "57P01" | "57P03")),
            _ => false,
        }
    }

    /// The connection that saw this cannot be trusted for the next try: it went silent or was
    /// lost, or its server is a standby or shutting down (a failover: a fresh connection reaches
    /// the new primary). Such connections are dropped from the pool, not reused.
    pub fn spoils_connection(&self) -> bool {
        let Error::Postgres { source, .. } = self else {
            return false;
        };
        match source {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                matches!(&*c, "25006" | "57P01" | "57P02" | "57P03") || c.starts_with("08")
            }),
            _ => false,
        }
    }

    /// A server's certificate refused because it does not name the host dialled (it may name
    /// another: see [`crate::redis::Nodes`] for cluster nodes announced by address).
    pub fn is_certificate_name_refusal(&self) -> bool {
        let Error::Redis { source, .. } = self else {
            return false;
        };
        let text = source.to_string();
        text.contains("NotValidForName") || text.contains("not valid for name")
    }

    /// PostgreSQL refused the data itself (a value it cannot store, a key too long for an index):
    /// retrying the same rows cannot help, but the other rows of the batch may go in alone.
    pub fn is_data_error(&self) -> bool {
        match self {
            Error::Postgres {
                source: sqlx::Error::Database(db),
                ..
            } => db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("54")),
            _ => false,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Redis { .. } => exit::REDIS,
            Error::Postgres { .. }
            | Error::NotMigrated { .. }
            | Error::UnsupportedServer { .. } => exit::POSTGRES,
            Error::Other(_) => exit::OTHER,
        }
    }
}

/// A TLS handshake refused for good (a certificate not trusted, or one the server required and
/// did not get): no retry can change it. rustls reports these as I/O errors, told apart here by
/// rustls's own wording, as the redis crate does not expose the rustls error.
fn is_tls_refusal(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    [
        "invalid peer certificate",
        "received fatal alert",
        "peer is incompatible",
    ]
    .iter()
    .any(|m| text.contains(m))
}

impl From<&Error> for ExitCode {
    fn from(err: &Error) -> ExitCode {
        ExitCode::from(err.exit_code())
    }
}
