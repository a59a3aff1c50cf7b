//! The schema: this crate's migrations (`migrations/`), LangGraph's tables, and the check that a
//! database is migrated before a sweep writes to it.

use sqlx::migrate::Migrator;

use super::Store;
use crate::error::{Error, Result};

static MIGRATOR: Migrator = sqlx::migrate!();

impl Store {
    /// Applies the migrations not yet applied; returns the versions it applied.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let before = self.schema_version().await?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::Postgres {
                context: "migrate",
                source: e.into(),
            })?;
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
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&self.pool)
                .await
                .map_err(Error::postgres("check schema"))?;
        if table.is_none() {
            return Ok(None);
        }
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(Error::postgres("check schema"))
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
