//! `sweeper run`: one sweep, its summary printed and published. `daemon` runs the same on a
//! schedule.

use crate::cli::{GlobalOpts, Output, RunArgs};
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::redact::redact_url;
use crate::report::publish::{Publish, grouping};
use crate::shard::Shard;
use crate::shutdown::Shutdown;
use crate::sweep;

pub async fn execute(g: &GlobalOpts, r: &RunArgs, shutdown: &Shutdown) -> Result<u8> {
    let shutdown = shutdown.listening()?;
    let prepared = prepare(g, r).map(|(cfg, ends)| {
        let progress = Progress::on_terminal();
        (SweepConfig { progress, ..cfg }, ends)
    });
    let code = sweep_and_report(r, prepared, &shutdown).await;
    if let Some(older_than) = r.retention.retention.filter(|_| !r.dry_run) {
        super::prune::when_due(g, older_than).await;
    }
    code
}

/// One sweep and everything around it: the settings checked, the servers connected, the summary
/// printed and published. Returns the exit code of an outcome that is not an error.
pub async fn sweep_and_report(
    r: &RunArgs,
    prepared: Result<(SweepConfig, sweep::Endpoints)>,
    shutdown: &Shutdown,
) -> Result<u8> {
    let started = std::time::Instant::now();
    let (outcome, started_sweep) = match prepared {
        Ok((cfg, ends)) => {
            tracing::info!(
                redis = %redact_url(&ends.redis_url),
                pattern = %cfg.pattern,
                shard = cfg.shard.map(|s| s.to_string()),
                threshold = %humantime::format_duration(cfg.threshold),
                dry_run = cfg.dry_run,
                "sweep starting"
            );
            (sweep::connect_and_run(&cfg, &ends, shutdown).await, true)
        }
        Err(e) => {
            let cfg = sweep_config(r);
            let outcome = sweep::Outcome::failed(&cfg, e, Default::default(), started.elapsed());
            (outcome, false)
        }
    };
    let summary = &outcome.summary;
    if started_sweep {
        summary.log_finished();
        // JSON is printed for every run, failed ones included: orchestrators read its counters.
        // People get the text only when there is more to it than the error line.
        match r.out.output {
            Output::Json => super::print(&(summary.to_json() + "\n"))?,
            Output::Text if summary.run_id.is_some() || summary.counters.scanned > 0 => {
                super::print(&summary.to_text())?
            }
            Output::Text => {}
        }
    }
    let p = &r.publish;
    let publish = Publish {
        summary_file: p.summary_file.clone(),
        outputs_dir: p.outputs_dir.clone(),
        metrics_file: p.metrics_file.clone(),
        pushgateway: p.pushgateway.clone(),
        grouping: grouping(
            &summary.pattern,
            summary.shard.as_deref(),
            p.instance.as_deref(),
        ),
    };
    let published = publish
        .publish(summary, outcome.history.as_ref(), chrono::Utc::now())
        .await;
    match (outcome.error, published) {
        (Some(e), Err(p)) => {
            tracing::error!(error = %p, "the result could not be published either");
            Err(e)
        }
        (Some(e), Ok(())) => Err(e),
        (None, Err(p)) => Err(p),
        (None, Ok(())) => Ok(summary.exit_code()),
    }
}

/// Checks the settings and resolves where the sweep connects: usage errors, before any I/O.
pub fn prepare(g: &GlobalOpts, r: &RunArgs) -> Result<(SweepConfig, sweep::Endpoints)> {
    let mut cfg = sweep_config(r);
    if let Some(m) = super::formats::resolve(&r.layout)? {
        // A chat library's keys: the default --match follows its key template.
        cfg.pattern = super::formats::pattern(r.layout.format, Some(&m), &r.select.pattern)?;
        cfg.layout = super::formats::layout(&m);
        cfg.mapping = Some(std::sync::Arc::new(m));
    }
    let mut cfg = cfg.validate()?;
    if let Some(n) = r.shards {
        let index = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
            Error::Usage(format!(
                "--shards {n} takes the shard from JOB_COMPLETION_INDEX (set by Kubernetes Indexed Jobs), which is not set; use --shard I/{n} elsewhere"
            ))
        })?;
        cfg.shard =
            Some(Shard::of_job(n, &index).map_err(|e| Error::Usage(format!("--shards: {e}")))?);
    }
    if let Some(expr) = &r.schedule {
        super::schedule::refuse_unsafe_threshold(expr, cfg.threshold, cfg.deadline)?;
    }
    if cfg.layout == crate::redis::layout::Layout::LangGraph && g.redis_cluster {
        return Err(Error::Usage(
            "--format langgraph finds a thread's checkpoints with RediSearch, which answers for one node: it does not take --redis-cluster".into(),
        ));
    }
    let ends = sweep::Endpoints {
        redis_url: super::redis_url(g)?,
        redis_tls: super::redis_tls(g),
        redis_cluster: g.redis_cluster,
        database_url: match cfg.dry_run {
            true => None,
            false => Some(super::database_url(g)?),
        },
        schema: g.schema.clone(),
        timeouts: super::timeouts(g).fit(cfg.threshold)?,
    };
    Ok((cfg, ends))
}

/// The run flags as sweep settings, not yet validated.
fn sweep_config(r: &RunArgs) -> SweepConfig {
    let (select, pace) = (&r.select, &r.pace);
    SweepConfig {
        // LangGraph threads are due by their `checkpoint_latest:` keys: the default --match follows.
        // (Without a mapping there is nothing to refuse.)
        pattern: super::formats::pattern(r.layout.format, None, &select.pattern)
            .unwrap_or_else(|_| select.pattern.clone()),
        threshold: select.threshold.threshold,
        batch_size: r.batch_size as usize,
        scan_count: select.scan_count as usize,
        max_value_bytes: r.max_value_bytes,
        dry_run: r.dry_run,
        deadline: (!r.deadline.is_zero()).then_some(r.deadline),
        protect_ttl: r.protect_ttl,
        writers: r.writers as usize,
        max_redis_ops_per_sec: pace.max_redis_ops_per_sec,
        busy_redis_ops_per_sec: pace.busy_redis_ops_per_sec,
        layout: r.layout.format.into(),
        shard: r.shard,
        save_idle: r.save_idle,
        list: r.list as usize,
        ..SweepConfig::default()
    }
}
