//! The `sweeper` binary: parses the command line, sets up logging, calls the library, and turns
//! its result into one summary on stdout, or one error line on stderr and an exit code.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use cli::{Cli, Command, GlobalOpts, LogFormat, Output};
use sweeper::cluster::Nodes;
use sweeper::config::{SweepConfig, redact_url};
use sweeper::error::{Error, exit};
use sweeper::inspect::{InspectConfig, inspect};
use sweeper::pace::Pacing;
use sweeper::progress::Progress;
use sweeper::publish::Publish;
use sweeper::report::StatusReport;
use sweeper::restore::restore;
use sweeper::schedule::{self, CronSchedule, ScheduleCheck, Verdict};
use sweeper::shard::Shard;
use sweeper::shutdown::Shutdown;
use sweeper::simulate::{SimulateConfig, simulate};
use sweeper::store::Store;
use sweeper::tls::RedisTls;
use sweeper::{daemon, sweep};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, as a job log shows it; `--help` has the rest.
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            eprintln!("sweeper: error: {first} (see `sweeper --help`)");
            return ExitCode::from(exit::USAGE);
        }
    };
    init_logging(&cli.global);
    one_malloc_arena();
    // One worker thread: a sweep mostly waits on Redis and PostgreSQL, which want the machine's
    // cores more. With one worker per core, a 1M-key dry run took 2.66-2.82 s against the
    // floor's 2.36-2.59 s; with one, 2.36-2.66 s, and a full sweep took no longer (12.1-12.9 s
    // against 12.4-13.9 s).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &cli.global,
                &Error::Other(format!("cannot start the async runtime: {e}")),
            );
        }
    };
    match runtime.block_on(execute(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&cli.global, &e),
    }
}

/// glibc gives each thread that allocates its own arena, and batches built on one runtime thread
/// and freed on another leave every arena holding its own free pages: peak RSS then creeps with
/// the length of the sweep (52-54 MB at 1M keys against 44 MB at 100k). One arena keeps it bounded
/// by the batches in flight (38 MB against 36 MB) at no measured cost in speed: the threads
/// mostly wait on the network, so they rarely contend for the arena's lock.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the runtime starts threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn fail(global: &GlobalOpts, err: &Error) -> ExitCode {
    match global.log_format {
        LogFormat::Json => tracing::error!(exit_code = err.exit_code(), "{err}"),
        LogFormat::Text => eprintln!("sweeper: error: {err}"),
    }
    ExitCode::from(err)
}

/// Runs the command; returns the exit code of an outcome that is not an error (0, 5, 130, 143).
async fn execute(cli: &Cli) -> sweeper::Result<u8> {
    let g = &cli.global;
    match &cli.command {
        Command::Migrate(m) => {
            let store = Store::connect(&database_url(g)?, g.connect_timeout, 1).await?;
            let applied = store.migrate().await?;
            let version = store.schema_version().await?.unwrap_or(0);
            tracing::info!(?applied, version, "migrations applied");
            println!(
                "schema at version {version} ({} migration(s) applied now)",
                applied.len()
            );
            if m.format == cli::Format::Langgraph {
                let applied = store.migrate_langgraph().await?;
                tracing::info!(?applied, "LangGraph migrations applied");
                println!(
                    "LangGraph PostgresSaver tables at version {} ({} migration(s) applied now)",
                    sweeper::langgraph::store::needed(),
                    applied.len()
                );
            }
            Ok(exit::OK)
        }
        Command::Run(r) => {
            let shutdown = Shutdown::new();
            shutdown
                .listen()
                .map_err(|e| Error::Other(format!("cannot listen for signals: {e}")))?;
            let prepared = prepare(g, r).map(|(cfg, ends)| {
                let progress = Progress::on_terminal();
                (SweepConfig { progress, ..cfg }, ends)
            });
            sweep_and_report(r, prepared, &shutdown).await
        }
        Command::Daemon(r) => {
            let expr = r.schedule.as_deref().ok_or_else(|| {
                Error::Usage("daemon needs --schedule (or SWEEPER_SCHEDULE)".into())
            })?;
            let schedule: CronSchedule = expr
                .parse()
                .map_err(|e: String| Error::Usage(format!("--schedule {e}")))?;
            // Settings errors stop the daemon before it starts, not at every firing.
            let prepared = prepare(g, r)?;
            let signals = Shutdown::new();
            signals
                .listen()
                .map_err(|e| Error::Other(format!("cannot listen for signals: {e}")))?;
            daemon::run(&schedule, &signals, || async {
                // Not the listening one: the sweep in flight is not cut short by the signal.
                let prepared = Ok(prepared.clone());
                if let Err(e) = sweep_and_report(r, prepared, &Shutdown::new()).await {
                    tracing::error!(exit_code = e.exit_code(), "sweep failed: {e}");
                }
            })
            .await;
            Ok(exit::OK)
        }
        Command::CheckSchedule(c) => check_schedule(c),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "sweeper", &mut out);
            print(&String::from_utf8_lossy(&out))?;
            Ok(exit::OK)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| Error::Other(format!("cannot render the man page: {e}")))?;
            print(&String::from_utf8_lossy(&out))?;
            Ok(exit::OK)
        }
        Command::Restore(rs) => {
            if rs.ttl.is_zero() {
                return Err(Error::Usage("--ttl must be above 0".into()));
            }
            let store = Store::connect(&database_url(g)?, g.connect_timeout, 1).await?;
            store.ensure_migrated().await?;
            let mut source = connect_redis(g).await?;
            let restored = restore(&store, &mut source, &rs.conversation, rs.ttl, rs.force).await?;
            tracing::info!(key = %restored.key, "conversation restored");
            emit(rs.output, || restored.to_json(), || restored.to_text())?;
            Ok(exit::OK)
        }
        Command::Inspect(i) => {
            let cfg = InspectConfig {
                pattern: i.pattern.clone(),
                threshold: i.threshold,
                scan_count: i.scan_count as usize,
                top: i.top,
                samples: i.samples,
            };
            let mut source = connect_redis(g).await?;
            source.set_pacing(Pacing {
                max_ops_per_sec: i.max_redis_ops_per_sec,
                busy_ops_per_sec: i.busy_redis_ops_per_sec,
                budget: None,
            });
            let report = inspect(&mut source, &cfg, &Progress::on_terminal()).await?;
            emit(i.output, || report.to_json(), || report.to_text())?;
            Ok(exit::OK)
        }
        Command::Status(st) => {
            let store = Store::connect(&database_url(g)?, g.connect_timeout, 1).await?;
            store.ensure_migrated().await?;
            status(&store, st).await
        }
        Command::Simulate(s) => {
            let mut source = connect_redis(g).await?;
            let cfg = SimulateConfig {
                conversations: s.conversations,
                prefix: s.match_prefix.clone(),
                ttl_min: s.ttl_spread.0,
                ttl_max: s.ttl_spread.1,
                messages_min: s.messages.0,
                messages_max: s.messages.1,
                seed: s.seed,
            };
            let report = simulate(&mut source, &cfg).await?;
            print(&format!(
                "wrote {} checkpoints under {}* ({} messages, {} bytes), TTLs {} to {}\n",
                report.written,
                cfg.prefix,
                report.messages,
                report.bytes,
                humantime::format_duration(cfg.ttl_min),
                humantime::format_duration(cfg.ttl_max)
            ))?;
            Ok(exit::OK)
        }
    }
}

/// One sweep and everything around it: the settings checked, the servers connected, the summary
/// printed and published. Returns the exit code of an outcome that is not an error.
async fn sweep_and_report(
    r: &cli::RunArgs,
    prepared: sweeper::Result<(SweepConfig, sweep::Endpoints)>,
    shutdown: &Shutdown,
) -> sweeper::Result<u8> {
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
            let cfg = run_config(r);
            let outcome = sweep::Outcome::failed(&cfg, e, Default::default(), started.elapsed());
            (outcome, false)
        }
    };
    let summary = &outcome.summary;
    let c = &summary.counters;
    if started_sweep {
        tracing::info!(
            run_id = summary.run_id,
            status = summary.status.as_str(),
            scanned = c.scanned,
            due = c.due,
            persisted = c.persisted,
            unchanged = c.unchanged,
            rejected = c.rejected,
            no_ttl = c.no_ttl,
            expired_before_read = c.expired_before_read,
            protected = c.protected,
            duration_ms = summary.duration_ms,
            "sweep finished"
        );
        // JSON is printed for every run, failed ones included: orchestrators read its counters.
        // People get the text only when there is more to it than the error line.
        match r.output {
            Output::Json => print(&(summary.to_json() + "\n"))?,
            Output::Text if summary.run_id.is_some() || c.scanned > 0 => print(&summary.to_text())?,
            Output::Text => {}
        }
    }
    let p = &r.publish;
    let publish = Publish {
        summary_file: p.summary_file.clone(),
        outputs_dir: p.outputs_dir.clone(),
        metrics_file: p.metrics_file.clone(),
        pushgateway: p.pushgateway.clone(),
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

/// The run flags as sweep settings, not yet validated.
fn run_config(r: &cli::RunArgs) -> SweepConfig {
    // LangGraph threads are due by their `checkpoint_latest:` keys: the default --match follows.
    let pattern = match (r.format, r.pattern.as_str()) {
        (cli::Format::Langgraph, "checkpoint:*") => "checkpoint_latest:*".to_string(),
        (_, p) => p.to_string(),
    };
    SweepConfig {
        pattern,
        threshold: r.threshold,
        batch_size: r.batch_size as usize,
        scan_count: r.scan_count as usize,
        max_value_bytes: r.max_value_bytes,
        dry_run: r.dry_run,
        deadline: (!r.deadline.is_zero()).then_some(r.deadline),
        protect_ttl: r.protect_ttl,
        writers: r.writers as usize,
        max_redis_ops_per_sec: r.max_redis_ops_per_sec,
        busy_redis_ops_per_sec: r.busy_redis_ops_per_sec,
        layout: r.format.into(),
        shard: r.shard,
        ..SweepConfig::default()
    }
}

/// Checks the settings and resolves where the sweep connects: usage errors, before any I/O.
fn prepare(g: &GlobalOpts, r: &cli::RunArgs) -> sweeper::Result<(SweepConfig, sweep::Endpoints)> {
    let mut cfg = run_config(r).validate()?;
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
        refuse_unsafe_threshold(expr, cfg.threshold, cfg.deadline)?;
    }
    if cfg.layout == sweeper::layout::Layout::LangGraph && g.redis_cluster {
        return Err(Error::Usage(
            "--format langgraph finds a thread's checkpoints with RediSearch, which answers for one node: it does not take --redis-cluster".into(),
        ));
    }
    let ends = sweep::Endpoints {
        redis_url: redis_url(g)?,
        redis_tls: redis_tls(g),
        redis_cluster: g.redis_cluster,
        database_url: match cfg.dry_run {
            true => None,
            false => Some(database_url(g)?),
        },
        connect_timeout: g.connect_timeout,
    };
    Ok((cfg, ends))
}

/// The last runs, and whether the newest successful one is recent enough.
async fn status(store: &Store, st: &cli::StatusArgs) -> sweeper::Result<u8> {
    let report = StatusReport {
        runs: store.recent_runs(st.runs).await?,
        last_success: store.last_success().await?,
        now: chrono::Utc::now(),
        max_age: st.max_age,
    };
    emit(st.output, || report.to_json(), || report.to_text())?;
    Ok(if report.healthy() {
        exit::OK
    } else {
        exit::OTHER
    })
}

/// The largest gap of a schedule over a year from now.
fn schedule_gap(expr: &str) -> sweeper::Result<(CronSchedule, schedule::Gap)> {
    let s: CronSchedule = expr
        .parse()
        .map_err(|e: String| Error::Usage(format!("--schedule {e}")))?;
    let gap = s
        .largest_gap(chrono::Utc::now(), YEAR)
        .ok_or_else(|| Error::Usage(format!("--schedule `{expr}` fires less than twice a year")))?;
    Ok((s, gap))
}

/// Refuses a run whose threshold the schedule cannot keep: a key just above the threshold at one
/// sweep must be read by the next, one gap and up to a deadline later.
fn refuse_unsafe_threshold(
    expr: &str,
    threshold: std::time::Duration,
    deadline: Option<std::time::Duration>,
) -> sweeper::Result<()> {
    let (_, gap) = schedule_gap(expr)?;
    let runtime = deadline.unwrap_or_default();
    if let Verdict::Unsafe { smallest_safe, .. } =
        schedule::verdict(gap.largest, threshold, runtime)
    {
        return Err(Error::Usage(format!(
            "--threshold {} is not above the largest gap of --schedule `{expr}` ({}) plus --deadline ({}): keys could expire between sweeps; use at least {} (see `sweeper check-schedule`)",
            humantime::format_duration(threshold),
            humantime::format_duration(gap.largest),
            humantime::format_duration(runtime),
            humantime::format_duration(smallest_safe)
        )));
    }
    Ok(())
}

/// Two years: every month length, leap days, weekday patterns, and two firings of @yearly.
const YEAR: std::time::Duration = std::time::Duration::from_secs(2 * 366 * 24 * 3600);

fn check_schedule(c: &cli::CheckScheduleArgs) -> sweeper::Result<u8> {
    let (s, gap) = schedule_gap(&c.schedule)?;
    let check = ScheduleCheck::new(&s, gap, c.threshold, c.max_runtime);
    emit(c.output, || check.to_json(), || check.to_text())?;
    Ok(if check.is_safe() {
        exit::OK
    } else {
        exit::OTHER
    })
}

fn redis_url(g: &GlobalOpts) -> sweeper::Result<String> {
    match &g.redis_url_file {
        Some(path) => read_secret(path, "--redis-url-file"),
        None => Ok(g.redis_url.clone()),
    }
}

/// The Redis of the global options: one node, or with `--redis-cluster` a cluster's primaries.
async fn connect_redis(g: &GlobalOpts) -> sweeper::Result<Nodes> {
    Nodes::connect(
        &redis_url(g)?,
        &redis_tls(g),
        g.connect_timeout,
        g.redis_cluster,
    )
    .await
}

fn redis_tls(g: &GlobalOpts) -> RedisTls {
    RedisTls {
        ca: g.redis_ca.clone(),
        cert: g.redis_cert.clone(),
        key: g.redis_key.clone(),
        insecure: g.redis_insecure,
    }
}

fn database_url(g: &GlobalOpts) -> sweeper::Result<String> {
    match (&g.database_url_file, &g.database_url) {
        (Some(path), _) => read_secret(path, "--database-url-file"),
        (None, Some(url)) if !url.is_empty() => Ok(url.clone()),
        _ => Err(Error::Usage(
            "--database-url or DATABASE_URL (or --database-url-file) must be set".into(),
        )),
    }
}

/// A URL from a mounted secret file; surrounding whitespace (the trailing newline) is dropped.
fn read_secret(path: &std::path::Path, flag: &str) -> sweeper::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("{flag} {}: {e}", path.display())))?;
    let url = text.trim();
    if url.is_empty() {
        return Err(Error::Usage(format!("{flag} {} is empty", path.display())));
    }
    Ok(url.to_string())
}

/// Prints a report on stdout as `--output` asks: text for people, or one line of JSON.
fn emit(
    output: Output,
    json: impl FnOnce() -> String,
    text: impl FnOnce() -> String,
) -> sweeper::Result<()> {
    print(&match output {
        Output::Json => json() + "\n",
        Output::Text => text(),
    })
}

fn print(text: &str) -> sweeper::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::Other(format!("cannot write the summary to stdout: {e}")))
}

fn init_logging(g: &GlobalOpts) {
    let level = match (g.verbose, g.quiet) {
        (0, 0) => Level::INFO,
        (1, _) => Level::DEBUG,
        (v, _) if v >= 2 => Level::TRACE,
        (_, 1) => Level::WARN,
        _ => Level::ERROR,
    };
    // Our own events at the chosen level; the libraries' only when they warn.
    let filter = Targets::new()
        .with_target("sweeper", level)
        .with_default(Level::WARN.min(level));
    let registry = tracing_subscriber::registry().with(filter);
    match g.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .init(),
    }
}
