//! One file per subcommand: each turns its flags into settings, connects what it needs, calls
//! the library and prints its report. [`execute`] picks the subcommand; the binary maps its error
//! to an exit code.

pub mod completions;
pub mod daemon;
pub mod forget;
pub mod formats;
pub mod grants;
pub mod inspect;
pub mod migrate;
pub mod prune;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod simulate;
pub mod status;

use std::path::Path;

use crate::cli::{Cli, Command, GlobalOpts, Output};
use crate::error::{Error, Result};
use crate::redis::Nodes;
use crate::redis::tls::RedisTls;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Runs the command (`shutdown` listens for signals while a sweep runs); returns the exit code of an outcome that is not an error (0, 1, 5, 130, 143).
pub async fn execute(cli: &Cli, shutdown: &Shutdown) -> Result<u8> {
    let g = &cli.global;
    match &cli.command {
        Command::Migrate(m) => migrate::execute(g, m).await,
        Command::Run(r) => run::execute(g, r, shutdown).await,
        Command::Daemon(r) => daemon::execute(g, r, shutdown).await,
        Command::CheckSchedule(c) => schedule::execute(c),
        Command::Completions { shell } => completions::completions(*shell),
        Command::Man => completions::man(),
        Command::Formats { name } => formats::execute(name.as_deref()),
        Command::Restore(rs) => restore::execute(g, rs).await,
        Command::Forget(f) => forget::execute(g, f).await,
        Command::Prune(p) => prune::execute(g, p).await,
        Command::Inspect(i) => inspect::execute(g, i).await,
        Command::Status(st) => status::execute(g, st).await,
        Command::Grants(a) => grants::execute(g, a),
        Command::Simulate(s) => simulate::execute(g, s).await,
    }
}

/// PostgreSQL of the global options, one connection.
async fn connect_store(g: &GlobalOpts) -> Result<Store> {
    Store::connect(&database_url(g)?, &g.schema, timeouts(g), 1).await
}

fn redis_url(g: &GlobalOpts) -> Result<String> {
    match &g.redis_url_file {
        Some(path) => read_secret(path, "--redis-url-file"),
        None => Ok(g.redis_url.clone()),
    }
}

/// The Redis of the global options: one node, or with `--redis-cluster` a cluster's primaries.
async fn connect_redis(g: &GlobalOpts) -> Result<Nodes> {
    Nodes::connect(&redis_url(g)?, &redis_tls(g), timeouts(g), g.redis_cluster).await
}

fn timeouts(g: &GlobalOpts) -> crate::config::Timeouts {
    crate::config::Timeouts {
        connect: g.connect_timeout,
        operation: g.operation_timeout,
    }
}

fn redis_tls(g: &GlobalOpts) -> RedisTls {
    RedisTls {
        ca: g.redis_ca.clone(),
        cert: g.redis_cert.clone(),
        key: g.redis_key.clone(),
        insecure: g.redis_insecure,
    }
}

fn database_url(g: &GlobalOpts) -> Result<String> {
    match (&g.database_url_file, &g.database_url) {
        (Some(path), _) => read_secret(path, "--database-url-file"),
        (None, Some(url)) if !url.is_empty() => Ok(url.clone()),
        _ => Err(Error::Usage(
            "--database-url or DATABASE_URL (or --database-url-file) must be set".into(),
        )),
    }
}

/// A URL from a mounted secret file; surrounding whitespace (the trailing newline) is dropped.
fn read_secret(path: &Path, flag: &str) -> Result<String> {
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
) -> Result<()> {
    print(&match output {
        Output::Json => json() + "\n",
        Output::Text => text(),
    })
}

/// Queues `text` for stdout (`logs::stdout`): a stdout nobody reads holds no sweep.
fn print(text: &str) -> Result<()> {
    crate::logs::stdout::print(text)
        .map_err(|e| Error::Other(format!("cannot write the summary to stdout: {e}")))
}
