//! The schema: this crate's migrations (`migrations/`), LangGraph's tables, and the check that a
//! database is migrated before a sweep writes to it.

use sqlx::migrate::Migrator;
use sqlx::{AssertSqlSafe, PgConnection};

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

/// The migration that moves an install from `public` to its schema.
const OWN_SCHEMA: i64 = 20261206000001;

/// Where a database's migrations were applied: in the schema, in `public` (an install migrated
/// before the schema of its own: `20261206000001` moves it), or nowhere yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    InSchema,
    InPublic,
    Nowhere,
}

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
    ///
    /// The schema is created when missing (which takes CREATE on the database; a schema made
    /// beforehand by an administrator, owned by the role migrating, needs none). An install
    /// whose migrations are in `public` is migrated there, with `sweeper.schema` naming the
    /// target: migration `20261206000001` moves it and points search_path at the schema for
    /// the migrations after it.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let failed = |e: sqlx::Error| Error::Postgres {
            context: "migrate",
            source: e,
        };
        let mut tx = self.begin().await.map_err(failed)?;
        let (number, version): (i32, String) = super::query_as(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        if number < OLDEST_SERVER * 10_000 {
            return Err(Error::UnsupportedServer {
                version,
                oldest: OLDEST_SERVER,
            });
        }
        super::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let found = self.found(&mut tx).await.map_err(failed)?;
        let before = match found {
            Found::Nowhere => Ok(None),
            Found::InSchema => version_in(&mut tx, self.schema.name()).await,
            Found::InPublic => version_in(&mut tx, "public").await,
        }
        .map_err(failed)?;
        let exists: bool =
            super::query_scalar("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
                .bind(self.schema.name())
                .fetch_one(&mut *tx)
                .await
                .map_err(failed)?;
        if !exists {
            // Checked first: CREATE SCHEMA IF NOT EXISTS asks for CREATE on the database even
            // when the schema is there.
            sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {}", self.schema)))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        let path = match found {
            Found::InPublic => "public".to_string(),
            _ => self.schema.search_path(),
        };
        super::query(
            "SELECT set_config('search_path', $1, true), set_config('sweeper.schema', $2, true)",
        )
        .bind(path)
        .bind(self.schema.name())
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

    /// Where this database's migrations are. A `public._sqlx_migrations` counts as sweeper's to
    /// move only when it holds sweeper's first migration, same checksum (a chat service migrated
    /// with sqlx has a table of that name too, and its tables must not move), and not the move
    /// itself (an install that chose `--schema public`: another `--schema` is a new install).
    async fn found(&self, c: &mut PgConnection) -> sqlx::Result<Found> {
        if table_in(c, self.schema.name()).await? {
            return Ok(Found::InSchema);
        }
        if self.schema.name() == "public" || !table_in(c, "public").await? {
            return Ok(Found::Nowhere);
        }
        let first = MIGRATOR.iter().next().expect("migrations/ is not empty");
        let ours: bool = super::query_scalar(
            "SELECT EXISTS (SELECT FROM public._sqlx_migrations WHERE version = $1 AND checksum = $2)
                AND NOT EXISTS (SELECT FROM public._sqlx_migrations WHERE version = $3)",
        )
        .bind(first.version)
        .bind(&*first.checksum)
        .bind(OWN_SCHEMA)
        .fetch_one(c)
        .await?;
        Ok(if ours {
            Found::InPublic
        } else {
            Found::Nowhere
        })
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
    /// The newest migration applied in the schema, or None where it was never migrated (an
    /// install migrated in `public` before the schema of its own included: it takes `sweeper
    /// migrate` to move it).
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        let schema = self.schema.name();
        self.in_tx("check schema", async |c| {
            if !table_in(&mut *c, schema).await? {
                return Ok(None);
            }
            version_in(c, schema).await
        })
        .await
    }

    /// Fails with [`Error::NotMigrated`] unless every migration this binary has is applied.
    pub async fn ensure_migrated(&self) -> Result<()> {
        let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        match self.schema_version().await? {
            Some(v) if v >= needed => Ok(()),
            found => Err(Error::NotMigrated {
                found: found.map_or_else(
                    || format!("no migrations in schema {}", self.schema),
                    |v| format!("schema version {v}"),
                ),
                needed,
            }),
        }
    }
}

/// Whether `schema` holds sqlx's table of applied migrations.
async fn table_in(c: &mut PgConnection, schema: &str) -> sqlx::Result<bool> {
    super::query_scalar("SELECT to_regclass(format('%I._sqlx_migrations', $1::text)) IS NOT NULL")
        .bind(schema)
        .fetch_one(c)
        .await
}

/// The newest migration applied in `schema`, which holds sqlx's table.
async fn version_in(c: &mut PgConnection, schema: &str) -> sqlx::Result<Option<i64>> {
    super::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {schema}._sqlx_migrations WHERE success"
    )))
    .fetch_one(c)
    .await
}
