//! `sweeper migrate`: creates or updates the schema (and LangGraph's tables with `--format
//! langgraph`).

use crate::cli::{Format, GlobalOpts, MigrateArgs};
use crate::error::{Result, exit};

pub async fn execute(g: &GlobalOpts, m: &MigrateArgs) -> Result<u8> {
    let store = super::connect_store(g).await?;
    let applied = store.migrate().await?;
    let version = store.schema_version().await?.unwrap_or(0);
    tracing::info!(?applied, version, "migrations applied");
    // The partitions the next conversation ids need (each sweep makes them too).
    let made = store.extend_partitions().await?;
    tracing::debug!(made, "message_rows partitions made");
    super::print(&format!(
        "schema at version {version} ({} migration(s) applied now)\n",
        applied.len()
    ))?;
    if m.format == Format::Langgraph {
        let applied = store.migrate_langgraph().await?;
        tracing::info!(?applied, "LangGraph migrations applied");
        super::print(&format!(
            "LangGraph PostgresSaver tables at version {} ({} migration(s) applied now)\n",
            crate::store::langgraph::needed(),
            applied.len()
        ))?;
    }
    Ok(exit::OK)
}
