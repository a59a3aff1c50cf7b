//! The command line: clap types only. Every flag has an environment twin, so orchestrators can
//! configure `sweeper` without templating arguments.

// Help texts are clap's: `[user:password@]` is a URL form, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{defaults, parse_count_range, parse_duration, parse_size, parse_ttl_range};
use crate::redis::layout::Layout;
use crate::shard::Shard;

mod erase;
pub use erase::{ForgetArgs, PruneArgs, RetentionArg};
mod grants;
pub use grants::{GrantFor, GrantsArgs};

// Help headings, the same on every subcommand, as cargo and ripgrep group their flags.
const CONNECTION: &str = "Connection";
const SELECTION: &str = "Selection";
const WRITING: &str = "Writing";
const SAFETY: &str = "Safety";
const OUTPUT: &str = "Output";

#[derive(Debug, Parser)]
#[command(name = "sweeper", version, about, after_help = crate::error::exit::help(), max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = CONNECTION)]
pub struct GlobalOpts {
    /// Redis holding the checkpoints (redis://[user:password@]host:port/db; rediss:// for TLS).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true,
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Read the Redis URL from this file (a mounted secret) instead.
    #[arg(long, env = "SWEEPER_REDIS_URL_FILE", global = true)]
    pub redis_url_file: Option<PathBuf>,

    /// --redis-url names nodes of a Redis Cluster (one, or several comma-separated seeds): sweep
    /// every primary, each key read from the node owning its slot.
    #[arg(long, env = "SWEEPER_REDIS_CLUSTER", global = true)]
    pub redis_cluster: bool,

    /// PEM CA certificate to verify a rediss:// Redis with (default: the system's trust store).
    #[arg(long, env = "SWEEPER_REDIS_CA", global = true)]
    pub redis_ca: Option<PathBuf>,

    /// PEM client certificate for a rediss:// Redis that requires one (with --redis-key).
    #[arg(
        long,
        env = "SWEEPER_REDIS_CERT",
        global = true,
        requires = "redis_key"
    )]
    pub redis_cert: Option<PathBuf>,

    /// PEM private key of --redis-cert.
    #[arg(
        long,
        env = "SWEEPER_REDIS_KEY",
        global = true,
        requires = "redis_cert"
    )]
    pub redis_key: Option<PathBuf>,

    /// Accept any certificate from a rediss:// Redis: encrypted, not authenticated. Development
    /// only; every run warns.
    #[arg(long, env = "SWEEPER_REDIS_INSECURE", global = true)]
    pub redis_insecure: bool,

    /// PostgreSQL receiving the conversations (postgres://user:password@host:port/db). Needed by
    /// `migrate` and by every run but a dry run. TLS in the URL:
    /// ?sslmode=verify-full&sslrootcert=/path/ca.crt.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Read the PostgreSQL URL from this file (a mounted secret) instead.
    #[arg(long, env = "SWEEPER_DATABASE_URL_FILE", global = true)]
    pub database_url_file: Option<PathBuf>,

    /// PostgreSQL schema holding sweeper's tables (created by `migrate` when missing), so they
    /// sit beside an application's own `conversations` and `messages`. LangGraph's tables
    /// (--format langgraph) stay in `public`.
    #[arg(long, env = "SWEEPER_SCHEMA", default_value = crate::store::schema::DEFAULT, value_parser = crate::store::Schema::parse, global = true)]
    pub schema: crate::store::Schema,

    /// How long to wait for Redis or PostgreSQL before calling it down.
    #[arg(long, env = "SWEEPER_CONNECT_TIMEOUT", default_value = defaults::CONNECT_TIMEOUT, value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,

    /// Longest one Redis pipeline or one PostgreSQL transaction may take before the connection
    /// counts as lost (a silent network drops packets without a reset). Held to a quarter of
    /// --threshold.
    #[arg(long, env = "SWEEPER_OPERATION_TIMEOUT", default_value = defaults::OPERATION_TIMEOUT, value_parser = parse_duration, global = true)]
    pub operation_timeout: Duration,

    /// Log format on stderr.
    #[arg(help_heading = OUTPUT, long, env = "SWEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// More logging (-v debug, -vv trace).
    #[arg(help_heading = OUTPUT, short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less logging (-q warnings only, -qq errors only).
    #[arg(help_heading = OUTPUT, short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Auto,
    Json,
    Hash,
    List,
    Rejson,
    Langgraph,
    // Chat libraries' layouts: built-in mappings (src/mapping/presets), `sweeper formats NAME`.
    Langchain,
    LangchainRedis,
    Llamaindex,
    Redisvl,
    OpenaiAgents,
    AgentFramework,
    Rasa,
    AgentMemoryServer,
}

impl Format {
    /// The preset a chat library's format names (None for the native formats).
    pub fn preset(self) -> Option<&'static str> {
        Some(match self {
            Format::Langchain => "langchain",
            Format::LangchainRedis => "langchain-redis",
            Format::Llamaindex => "llamaindex",
            Format::Redisvl => "redisvl",
            Format::OpenaiAgents => "openai-agents",
            Format::AgentFramework => "agent-framework",
            Format::Rasa => "rasa",
            Format::AgentMemoryServer => "agent-memory-server",
            _ => return None,
        })
    }
}

impl From<Format> for Layout {
    fn from(f: Format) -> Layout {
        match f {
            Format::Auto => Layout::Auto,
            Format::Json => Layout::Json,
            Format::Hash => Layout::Hash,
            Format::List => Layout::List,
            Format::Rejson => Layout::ReJson,
            Format::Langgraph => Layout::LangGraph,
            // What a mapping reads is set from the mapping (cmd::mapping).
            _ => Layout::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `--output`, for every command that prints a report.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = OUTPUT)]
pub struct OutputArg {
    /// Output format on stdout: text for people, or one line of JSON.
    #[arg(long, env = "SWEEPER_OUTPUT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `--format` / `--mapping`: how conversations are kept in Redis, for every command that reads
/// conversation keys (run, run --dry-run, daemon, inspect, restore).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = SELECTION)]
pub struct LayoutArgs {
    /// How checkpoints are stored in Redis: json (a string holding the document), hash (its
    /// fields, `messages` a JSON array string), list (message JSON objects, newest last), rejson
    /// (a RedisJSON document), or auto (each key by its TYPE). A key of another type is rejected.
    /// langgraph: a LangGraph app's threads (langgraph-checkpoint-redis) into LangGraph's own
    /// PostgresSaver tables; --match then names the `checkpoint_latest:*` keys (the default).
    /// Chat libraries (`sweeper formats` lists them): langchain, langchain-redis, llamaindex,
    /// redisvl, openai-agents, agent-framework, rasa, agent-memory-server; --match then defaults to
    /// the library's key pattern. restore writes a conversation back in this layout (the one it
    /// was swept with); inspect decodes its sample keys with it.
    #[arg(long, env = "SWEEPER_FORMAT", value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// A mapping file (TOML) saying how your chat service keeps conversations in Redis; takes the
    /// place of --format. `sweeper formats NAME` prints a preset as one, to start from.
    #[arg(long, env = "SWEEPER_MAPPING")]
    pub mapping: Option<PathBuf>,
}

/// `--threshold`: what counts as ending.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = SELECTION)]
pub struct ThresholdArg {
    /// A key is due (its conversation ending) when its TTL left is under this (e.g. 10m, 90s).
    #[arg(long, env = "SWEEPER_THRESHOLD", default_value = defaults::THRESHOLD, value_parser = parse_duration)]
    pub threshold: Duration,
}

/// Which keys are read, and which are due: `run`, `daemon` and `inspect`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = SELECTION)]
pub struct SelectArgs {
    /// SCAN MATCH pattern of checkpoint keys; the conversation id is what follows its literal prefix.
    #[arg(long = "match", env = "SWEEPER_MATCH", default_value = defaults::MATCH)]
    pub pattern: String,

    #[command(flatten)]
    pub threshold: ThresholdArg,

    /// COUNT hint for each SCAN step (keys examined per round trip).
    #[arg(long, env = "SWEEPER_SCAN_COUNT", default_value_t = defaults::SCAN_COUNT, value_parser = clap::value_parser!(u64).range(1..))]
    pub scan_count: u64,
}

/// How fast Redis is read: `run`, `daemon` and `inspect`.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = SAFETY)]
pub struct PaceArgs {
    /// At most this many Redis commands per second (pipelines are spaced to keep under it), to
    /// protect a busy primary. 0: no limit.
    #[arg(long, env = "SWEEPER_MAX_REDIS_OPS_PER_SEC", default_value_t = 0)]
    pub max_redis_ops_per_sec: u32,

    /// While other clients send Redis commands (live chat), at most this many per second, in
    /// small pipelines; yet never slower than reading every key within --deadline needs. At full
    /// speed while Redis serves no one else. 0: full speed always.
    #[arg(long, env = "SWEEPER_BUSY_REDIS_OPS_PER_SEC", default_value_t = defaults::BUSY_REDIS_OPS_PER_SEC)]
    pub busy_redis_ops_per_sec: u32,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update the PostgreSQL schema (idempotent: safe to run before every deploy).
    Migrate(MigrateArgs),
    /// Sweep once: save every conversation whose checkpoint TTL is under the threshold.
    Run(RunArgs),
    /// Sweep on --schedule, for installs with no orchestrator: one sweep at a time, at once on
    /// start, a firing missed while a sweep ran over swept once; SIGTERM or SIGINT lets the sweep
    /// in flight finish, then exits 0 (a second signal exits at once).
    Daemon(RunArgs),
    /// What the keyspace holds, before trusting a sweep: keys matching, types, keys without TTL,
    /// a histogram of TTL left around the threshold, the largest values, and a few sample keys
    /// decoded as a sweep with the same --format or --mapping would. Reads no other value.
    Inspect(InspectArgs),
    /// Put a saved conversation back into Redis from PostgreSQL (its newest checkpoint, under its
    /// key), refusing to overwrite a live key unless --force.
    Restore(RestoreArgs),
    /// Erase conversations for good (rows, keys; no sweep or restore brings them back); a receipt.
    Forget(ForgetArgs),
    /// Retention: delete the conversations last updated before --older-than; a receipt.
    Prune(PruneArgs),
    /// Print shell completions (e.g. `sweeper completions bash > /etc/bash_completion.d/sweeper`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `sweeper man | man -l -`.
    Man,
    /// List the chat libraries' layouts (--format NAME); with a NAME, print its mapping file, the
    /// start of a custom --mapping.
    Formats {
        /// A preset's name.
        name: Option<String>,
    },
    /// Play the chat service: write N realistic checkpoints with TTLs spread over a range.
    Simulate(SimulateArgs),
    /// Show the last runs; exit 1 when the newest successful run is older than --max-age (the
    /// alarm for a schedule that silently stopped), 4 when PostgreSQL cannot be read: alert on
    /// any exit but 0.
    Status(StatusArgs),
    /// Check that a schedule saves every key: its largest gap plus the run time must stay under
    /// the threshold. Exit 0 with the margin, 1 with the window that loses data.
    CheckSchedule(CheckScheduleArgs),
    /// Print what a command needs and no more: the Redis ACL rule of the commands it sends (for
    /// its --format or --mapping, --match, --redis-cluster, --shard, --save-idle) and the
    /// PostgreSQL statements giving its role the rights it uses.
    Grants(GrantsArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Alarm (exit 1) when the newest run with status ok finished longer ago than this.
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_MAX_AGE", default_value = "15m", value_parser = parse_duration)]
    pub max_age: Duration,

    /// How many runs to show.
    #[arg(help_heading = OUTPUT, long, env = "SWEEPER_STATUS_RUNS", default_value_t = 10)]
    pub runs: i64,

    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Debug, Args)]
pub struct CheckScheduleArgs {
    /// The schedule: 5 crontab fields (0 and 7 are Sunday), 6 with seconds first, or @hourly...
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_SCHEDULE")]
    pub schedule: String,

    #[command(flatten)]
    pub threshold: ThresholdArg,

    /// The longest a run takes to read every key (its --deadline bounds it).
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_MAX_RUNTIME", default_value = defaults::DEADLINE, value_parser = parse_duration)]
    pub max_runtime: Duration,

    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// With langgraph, also create LangGraph's PostgresSaver tables (checkpoints,
    /// checkpoint_blobs, checkpoint_writes, checkpoint_migrations) exactly as its `setup()` does.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_FORMAT", value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub retention: RetentionArg,

    #[command(flatten)]
    pub layout: LayoutArgs,

    /// Also save keys without TTL (RedisVL, Agent Framework set none) once OBJECT IDLETIME says
    /// nobody touched them this long (e.g. 30m). Not under an LFU maxmemory-policy, which keeps
    /// no idle time; a sweep's own reads count as a touch. Off by default.
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_SAVE_IDLE", value_parser = parse_duration)]
    pub save_idle: Option<Duration>,

    /// Sweep only shard I of N (from 0: 0/3, 1/3, 2/3): N workers split the keys by hash slot,
    /// with no overlap and no gap; each takes its own lock and records its own run.
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_SHARD", value_parser = Shard::parse, conflicts_with = "shards")]
    pub shard: Option<Shard>,

    /// Sweep one of N shards, the one JOB_COMPLETION_INDEX names (set by Kubernetes Indexed Jobs).
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_SHARDS", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub shards: Option<u32>,

    /// Read and show the due keys; write nothing anywhere (needs only Redis).
    #[arg(help_heading = WRITING, long, env = "SWEEPER_DRY_RUN")]
    pub dry_run: bool,

    /// Conversations per PostgreSQL transaction. Memory follows it (about 4 batches are in
    /// flight); 500 was as fast as 1000 with 40% less memory.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_BATCH_SIZE", default_value_t = defaults::BATCH_SIZE, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,

    /// Batches written to PostgreSQL at once, each on its own connection.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_WRITERS", default_value_t = defaults::WRITERS, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub writers: u64,

    /// Checkpoints larger than this are rejected without being read whole (e.g. 16MiB).
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_MAX_VALUE_BYTES", default_value = defaults::MAX_VALUE_BYTES, value_parser = parse_size)]
    pub max_value_bytes: u64,

    #[command(flatten)]
    pub pace: PaceArgs,

    /// The schedule this run is started on (crontab form, read in UTC): a --threshold not above
    /// its largest gap plus --deadline is refused, as keys would expire between sweeps.
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_SCHEDULE")]
    pub schedule: Option<String>,

    /// Stop scanning after this long, save what was read, exit 5 (status partial). Keep it under
    /// the schedule gap. 0: no deadline.
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_DEADLINE", default_value = defaults::DEADLINE, value_parser = parse_duration)]
    pub deadline: Duration,

    /// When PostgreSQL cannot take a due key, raise its TTL to this (never lower it) so it outlives
    /// the outage. Must be above --threshold. 0: off.
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_PROTECT_TTL", default_value = defaults::PROTECT_TTL, value_parser = parse_duration)]
    pub protect_ttl: Duration,

    /// How many due keys a dry run lists, the most urgent first (the summary counts the rest).
    #[arg(help_heading = OUTPUT, long, env = "SWEEPER_LIST", default_value_t = defaults::LIST)]
    pub list: u64,

    #[command(flatten)]
    pub out: OutputArg,

    #[command(flatten)]
    pub publish: PublishArgs,
}

/// Where the result goes besides stdout.
#[derive(Debug, Args)]
#[command(next_help_heading = OUTPUT)]
pub struct PublishArgs {
    /// Also write the JSON summary to this file, whatever happens (e.g. /airflow/xcom/return.json).
    #[arg(long, env = "SWEEPER_SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,

    /// Also write each field of the summary to its own file in this folder (Flyte outputs).
    #[arg(long, env = "SWEEPER_OUTPUTS_DIR")]
    pub outputs_dir: Option<PathBuf>,

    /// Write Prometheus metrics to this file, in the node_exporter textfile format (replaced whole).
    #[arg(long, env = "SWEEPER_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Push Prometheus metrics to this Pushgateway (http://host:9091); a failed push only warns.
    /// Each pattern and shard is its own group (labels match, shard).
    #[arg(long, env = "SWEEPER_PUSHGATEWAY")]
    pub pushgateway: Option<String>,

    /// A name for this sweep in the Pushgateway's grouping key (label instance), for sweeps of the
    /// same pattern against different Redis servers sharing one gateway.
    #[arg(long, env = "SWEEPER_INSTANCE", requires = "pushgateway")]
    pub instance: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub select: SelectArgs,

    #[command(flatten)]
    pub pace: PaceArgs,

    /// How many of the largest values to list.
    #[arg(help_heading = OUTPUT, long, env = "SWEEPER_INSPECT_TOP", default_value_t = 10)]
    pub top: usize,

    /// How many keys to show, picked at random.
    #[arg(help_heading = OUTPUT, long, env = "SWEEPER_INSPECT_SAMPLES", default_value_t = 5)]
    pub samples: usize,

    #[command(flatten)]
    pub layout: LayoutArgs,

    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The conversation id (the key without its prefix).
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_CONVERSATION")]
    pub conversation: String,

    /// TTL of the restored key.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_RESTORE_TTL", default_value = "30m", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Overwrite the key even when it is live (the chat service's newer state would be lost).
    #[arg(help_heading = SAFETY, long, env = "SWEEPER_RESTORE_FORCE")]
    pub force: bool,

    #[command(flatten)]
    pub layout: LayoutArgs,

    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// How many conversations to write.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_SIMULATE_CONVERSATIONS")]
    pub conversations: u64,

    /// Key prefix: keys are `{prefix}{conversation_id}`.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_MATCH_PREFIX", default_value = "checkpoint:")]
    pub match_prefix: String,

    /// TTLs are spread uniformly over this range.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_TTL_SPREAD", default_value = "0s..30m", value_parser = parse_ttl_range)]
    pub ttl_spread: (Duration, Duration),

    /// Messages per conversation, spread uniformly over this range.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_SIMULATE_MESSAGES", default_value = "2..20", value_parser = parse_count_range)]
    pub messages: (usize, usize),

    /// Seed of the generator: the same seed writes the same conversations.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_SIMULATE_SEED", default_value_t = 1)]
    pub seed: u64,
}

/// A usage error in one line, as a job log shows it: clap's message with what it lists on the
/// lines below (the missing arguments), and the `--help` of the subcommand `args` named.
pub fn usage_line(err: &clap::Error, args: &[String]) -> String {
    use clap::CommandFactory;
    let text = err.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .collect();
    let message = message.join(" ");
    let cli = Cli::command();
    let command = match args
        .iter()
        .skip(1)
        .find_map(|a| cli.find_subcommand(a.as_str()))
    {
        Some(sub) => format!("sweeper {}", sub.get_name()),
        None => "sweeper".to_string(),
    };
    format!(
        "{} (see `{command} --help`)",
        message.trim_start_matches("error: ")
    )
}

#[cfg(test)]
mod tests;
