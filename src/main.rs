//! The `sweeper` binary: parses the command line, sets up logging, calls the library, and turns
//! its result into an exit code. The only place the process exits.

use std::process::ExitCode;

use clap::Parser;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use sweeper::cli::{Cli, GlobalOpts, LogFormat};
use sweeper::error::{Error, exit};
use sweeper::logs;
use sweeper::shutdown::Shutdown;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let args: Vec<String> = std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            eprintln!("sweeper: error: {}", sweeper::cli::usage_line(&e, &args));
            return ExitCode::from(exit::USAGE);
        }
    };
    // Held to the end of main, past the runtime: the last lines reach stderr when it drops.
    let _flush = match init_logging(&cli.global) {
        Ok(flush) => flush,
        Err(e) => {
            eprintln!("sweeper: error: cannot start the thread writing the logs: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
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
            let e = Error::Other(format!("cannot start the async runtime: {e}"));
            return fail(&cli.global, &e);
        }
    };
    let shutdown = Shutdown::new();
    let (code, forced) = runtime.block_on(async {
        tokio::select! {
            result = sweeper::cmd::execute(&cli, &shutdown) => match result {
                Ok(code) => (ExitCode::from(code), false),
                Err(e) => (fail(&cli.global, &e), false),
            },
            // A second SIGINT or SIGTERM: an operator pressing Ctrl-C twice means it.
            signal = shutdown.forced() => (ExitCode::from(exit::SIGNAL_BASE + signal as u8), true),
        }
    });
    // The output, whole, before the process ends: it waits on a reader of stdout, as it must,
    // unless told twice to exit.
    let within = forced.then_some(logs::stderr::FLUSH_WITHIN);
    match logs::stdout::finish(within) {
        Err(e) if code == ExitCode::SUCCESS => {
            let e = Error::Other(format!("cannot write the summary to stdout: {e}"));
            fail(&cli.global, &e)
        }
        _ => code,
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
        LogFormat::Text => logs::stderr::line(&format!("sweeper: error: {err}")),
    }
    ExitCode::from(err)
}

/// Logs at the level asked, onto stderr through the queue that never blocks the sweep
/// (`logs::stderr`).
fn init_logging(g: &GlobalOpts) -> std::io::Result<logs::stderr::Flush> {
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
    let (stderr, flush) = logs::stderr::start()?;
    let layer = tracing_subscriber::fmt::layer().with_writer(stderr);
    match g.log_format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry.with(layer.with_ansi(false)).init(),
    }
    Ok(flush)
}
