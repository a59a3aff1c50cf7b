//! The library's typed errors: which side failed decides the exit code an orchestrator sees.
//! Messages are written for an operator reading one line in a job log: what failed, what to do.

use std::process::ExitCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit codes, documented in `--help` and the README. Scripts depend on them: never renumber.
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REDIS: u8 = 3;
    pub const POSTGRES: u8 = 4;
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

    /// Anything else (a bug, an I/O error writing output).
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn postgres(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Postgres { context, source }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Redis { .. } => exit::REDIS,
            Error::Postgres { .. } | Error::NotMigrated { .. } => exit::POSTGRES,
            Error::Other(_) => exit::OTHER,
        }
    }
}

impl From<&Error> for ExitCode {
    fn from(err: &Error) -> ExitCode {
        ExitCode::from(err.exit_code())
    }
}
