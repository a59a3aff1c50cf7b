//! The schema: this crate's migrations (`migrations/`), LangGraph's tables, and the check that a
//! database is migrated before a sweep writes to it.

use sqlx::migrate::Migrator;

use super::Store;
use crate::error::{Error, Result};

static MIGRATOR: Migrator = sqlx::migrate!();

/// The same migrations without sqlx's session-level lock (a pooler in transaction mode leaks it
/// when a migration fails); [`Store::migrate`] takes a transaction-level lock instead.
static UNLOCKED: Migrator = Migrator {
    locking: false,
    ..sqlx::migrate!()
};

/// The transaction-level advisory lock that serialises migrations (any fixed key: sqlx's own
/// session lock is not taken).
const MIGRATE_LOCK: i64 = 0x7377_6565_7065_7201;

/// The oldest PostgreSQL major the schema is made for and tested on (tests/postgres_versions.rs
/// runs 13 to 18); `migrate` refuses an older server before it changes anything.
const OLDEST_SERVER: i32 = 13;

impl Store {
    /// Applies the migrations not yet applied; returns the versions it applied.
    ///
    /// All in one transaction on one connection, serialised by a transaction-level advisory
    /// lock (sqlx's own lock is a session lock, which a pooler in transaction mode leaks), with
    /// every statement it prepared deallocated before the commit: safe through PgBouncer in
    /// transaction mode as well as direct.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let failed = |e: sqlx::Error| Error::Postgres {
            context: "migrate",
            source: e,
        };
        let (number, version): (i32, String) = super::query_as(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(failed)?;
        if number < OLDEST_SERVER * 10_000 {
            return Err(Error::UnsupportedServer {
                version,
                oldest: OLDEST_SERVER,
            });
        }
        let before = self.schema_version().await?;
        let mut tx = self.begin().await.map_err(failed)?;
        super::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        UNLOCKED
            .run_direct(None, &mut *tx, false)
            .await
            .map_err(|e| failed(e.into()))?;
        // sqlx's migrator prepares named statements; none may outlive the transaction.
        sqlx::raw_sql("DEALLOCATE ALL")
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| before.is_none_or(|b| *v > b))
            .collect())
    }

    /// Creates LangGraph's PostgresSaver tables as its `setup()` does; returns the versions
    /// applied.
    pub async fn migrate_langgraph(&self) -> Result<Vec<i64>> {
        crate::store::langgraph::migrate(&self.pool).await
    }

    /// Fails with [`Error::NotMigrated`] unless LangGraph's tables are fully set up.
    pub async fn ensure_langgraph(&self) -> Result<()> {
        let needed = crate::store::langgraph::needed();
        match crate::store::langgraph::version(&self.pool).await? {
            Some(v) if v >= needed => Ok(()),
            found => Err(Error::NotMigrated {
                found: format!(
                    "LangGraph tables at {}: `sweeper migrate --format langgraph` or PostgresSaver.setup() creates them",
                    found.map_or("none".into(), |v| format!("version {v}"))
                ),
                needed,
            }),
        }
    }

    /// The newest migration applied, or None on a database never migrated.
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        self.in_tx("check schema", async |c| {
            let table: Option<String> =
                super::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                    .fetch_one(&mut *c)
                    .await?;
            if table.is_none() {
                return Ok(None);
            }
            super::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(c)
                .await
        })
        .await
    }

    /// Fails with [`Error::NotMigrated`] unless every migration this binary has is applied.
    pub async fn ensure_migrated(&self) -> Result<()> {
        let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        match self.schema_version().await? {
            Some(v) if v >= needed => Ok(()),
            found => Err(Error::NotMigrated {
                found: found.map_or("no sweeper schema".into(), |v| {
                    format!("schema version {v}")
                }),
                needed,
            }),
        }
    }
}
