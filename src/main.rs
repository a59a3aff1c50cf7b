//! The `sweeper` binary: parses the command line, sets up logging, calls the library, and turns
//! its result into one summary on stdout, or one error line on stderr and an exit code.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use cli::{Cli, Command, GlobalOpts, LogFormat, Output};
use sweeper::config::{SweepConfig, redact_url};
use sweeper::error::{Error, exit};
use sweeper::simulate::{SimulateConfig, simulate};
use sweeper::source::Source;
use sweeper::store::Store;
use sweeper::sweep;

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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&cli.global, &e),
    }
}

fn fail(global: &GlobalOpts, err: &Error) -> ExitCode {
    match global.log_format {
        LogFormat::Json => tracing::error!(exit_code = err.exit_code(), "{err}"),
        LogFormat::Text => eprintln!("sweeper: error: {err}"),
    }
    ExitCode::from(err)
}

async fn execute(cli: &Cli) -> sweeper::Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Migrate => {
            let store = Store::connect(database_url(g)?, g.connect_timeout).await?;
            let applied = store.migrate().await?;
            let version = store.schema_version().await?.unwrap_or(0);
            tracing::info!(?applied, version, "migrations applied");
            println!(
                "schema at version {version} ({} migration(s) applied now)",
                applied.len()
            );
            Ok(())
        }
        Command::Run(r) => {
            let cfg = SweepConfig::new(
                &r.pattern,
                r.threshold,
                r.batch_size as usize,
                r.scan_count as usize,
                r.max_value_bytes,
                r.dry_run,
            )?;
            let source = Source::connect(&g.redis_url, g.connect_timeout).await?;
            let store = match r.dry_run {
                true => None,
                false => Some(Store::connect(database_url(g)?, g.connect_timeout).await?),
            };
            tracing::info!(
                redis = %redact_url(&g.redis_url),
                pattern = %cfg.pattern,
                threshold = %humantime::format_duration(cfg.threshold),
                dry_run = cfg.dry_run,
                "sweep starting"
            );
            let summary = sweep::run(&cfg, source, store.as_ref()).await?;
            let c = &summary.counters;
            tracing::info!(
                run_id = summary.run_id,
                scanned = c.scanned,
                due = c.due,
                persisted = c.persisted,
                unchanged = c.unchanged,
                rejected = c.rejected,
                no_ttl = c.no_ttl,
                expired_before_read = c.expired_before_read,
                duration_ms = summary.duration_ms,
                "sweep finished"
            );
            let text = match r.output {
                Output::Json => summary.to_json() + "\n",
                Output::Text => summary.to_text(),
            };
            print(&text)
        }
        Command::Simulate(s) => {
            let source = Source::connect(&g.redis_url, g.connect_timeout).await?;
            let cfg = SimulateConfig {
                conversations: s.conversations,
                prefix: s.match_prefix.clone(),
                ttl_min: s.ttl_spread.0,
                ttl_max: s.ttl_spread.1,
                messages_min: s.messages.0,
                messages_max: s.messages.1,
                seed: s.seed,
            };
            let report = simulate(&source, &cfg).await?;
            print(&format!(
                "wrote {} checkpoints under {}* ({} messages, {} bytes), TTLs {} to {}\n",
                report.written,
                cfg.prefix,
                report.messages,
                report.bytes,
                humantime::format_duration(cfg.ttl_min),
                humantime::format_duration(cfg.ttl_max)
            ))
        }
    }
}

fn database_url(g: &GlobalOpts) -> sweeper::Result<&str> {
    g.database_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Error::Usage("--database-url or DATABASE_URL must be set".into()))
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
