//! `sweeper daemon`: sweeps on a schedule of its own, for installs with no orchestrator.
//!
//! One sweep at a time: the next is planned when the last has ended, so sweeps never overlap. A
//! firing that passed while a sweep ran over is swept once, at once, not in a burst. The first
//! sweep starts at once: a daemon that (re)starts cannot know how long keys have waited. The
//! first SIGTERM or SIGINT lets the sweep in flight finish, then the daemon exits 0.

use chrono::Utc;

use crate::schedule::CronSchedule;
use crate::shutdown::Shutdown;

/// Runs `sweep` on `schedule` until `shutdown` is signalled; returns how many sweeps ran. The
/// sweep is handed no signal: it runs to its end (its own --deadline bounds it).
pub async fn run<F, Fut>(schedule: &CronSchedule, shutdown: &Shutdown, mut sweep: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut firing = Utc::now();
    let mut sweeps = 0;
    loop {
        sweep().await;
        sweeps += 1;
        if shutdown.signal().is_some() {
            break;
        }
        let Some(next) = schedule.next_sweep(firing, Utc::now()) else {
            tracing::warn!(
                schedule = schedule.text(),
                "the schedule never fires again: stopping"
            );
            break;
        };
        if next.dropped > 0 {
            tracing::warn!(
                dropped = next.dropped,
                "the last sweep ran over several firings: sweeping once now for all of them"
            );
        }
        firing = next.firing;
        let wait = (next.at - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(next = %next.at, "next sweep");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => break,
        }
    }
    tracing::info!(sweeps, "daemon stopping");
    sweeps
}

/// `sweeper daemon`: the settings are checked once, before the first sweep.
pub async fn execute(
    g: &crate::cli::GlobalOpts,
    r: &crate::cli::RunArgs,
    shutdown: &Shutdown,
) -> crate::Result<u8> {
    let expr = r.schedule.as_deref().ok_or_else(|| {
        crate::Error::Usage("daemon needs --schedule (or SWEEPER_SCHEDULE)".into())
    })?;
    let schedule = super::schedule::parse(expr)?;
    // Settings errors stop the daemon before it starts, not at every firing.
    let prepared = super::run::prepare(g, r)?;
    let signals = shutdown.listening()?;
    run(&schedule, &signals, || async {
        // Not the listening one: the sweep in flight is not cut short by the signal.
        let prepared = Ok(prepared.clone());
        if let Err(e) = super::run::sweep_and_report(r, prepared, &Shutdown::new()).await {
            tracing::error!(exit_code = e.exit_code(), "sweep failed: {e}");
        }
        if let Some(older_than) = r.retention.retention.filter(|_| !r.dry_run) {
            super::prune::when_due(g, older_than).await;
        }
    })
    .await;
    Ok(crate::error::exit::OK)
}
