//! `sweeper status`: the last runs, and whether the newest successful one is recent enough.

use crate::cli::{GlobalOpts, StatusArgs};
use crate::error::{Result, exit};
use crate::report::StatusReport;

pub async fn execute(g: &GlobalOpts, st: &StatusArgs) -> Result<u8> {
    let store = super::connect_store(g).await?;
    store.ensure_migrated().await?;
    let report = StatusReport {
        runs: store.recent_runs(st.runs).await?,
        last_success: store.last_success().await?,
        now: chrono::Utc::now(),
        max_age: st.max_age,
        receipts: store.recent_receipts(5).await?,
    };
    super::emit(st.out.output, || report.to_json(), || report.to_text())?;
    Ok(if report.healthy() {
        exit::OK
    } else {
        exit::OTHER
    })
}
