//! `sweeper grants`'s arguments: which command, and the settings of it that change what it sends.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{CONNECTION, LayoutArgs, SELECTION};
use crate::config::{defaults, parse_duration};
use crate::shard::Shard;

/// The commands `sweeper grants` knows the needs of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GrantFor {
    Migrate,
    Run,
    Daemon,
    Inspect,
    Restore,
    Status,
    Forget,
    Prune,
}

impl GrantFor {
    pub fn name(self) -> &'static str {
        match self {
            GrantFor::Migrate => "migrate",
            GrantFor::Run => "run",
            GrantFor::Daemon => "daemon",
            GrantFor::Inspect => "inspect",
            GrantFor::Restore => "restore",
            GrantFor::Status => "status",
            GrantFor::Forget => "forget",
            GrantFor::Prune => "prune",
        }
    }

    /// The role docs/deploying.md gives the command.
    pub fn role(self) -> &'static str {
        match self {
            GrantFor::Migrate => "sweeper_migrate",
            GrantFor::Run | GrantFor::Daemon | GrantFor::Inspect => "sweeper_run",
            GrantFor::Restore | GrantFor::Status => "sweeper_restore",
            GrantFor::Forget | GrantFor::Prune => "sweeper_eraser",
        }
    }
}

#[derive(Debug, Args)]
pub struct GrantsArgs {
    /// The command to give rights to.
    #[arg(value_enum)]
    pub command: GrantFor,

    /// The Redis ACL user the rule is for.
    #[arg(help_heading = CONNECTION, long, env = "SWEEPER_GRANTS_REDIS_USER", default_value = "sweeper")]
    pub redis_user: String,

    /// The PostgreSQL role the statements are for (default: sweeper_migrate for migrate,
    /// sweeper_restore for restore and status, sweeper_eraser for forget and prune,
    /// sweeper_run for the sweeps).
    #[arg(help_heading = CONNECTION, long, env = "SWEEPER_GRANTS_ROLE")]
    pub role: Option<String>,

    /// The sweep's --match: the ACL's key pattern.
    #[arg(help_heading = SELECTION, long = "match", env = "SWEEPER_MATCH", default_value = defaults::MATCH)]
    pub pattern: String,

    #[command(flatten)]
    pub layout: LayoutArgs,

    /// The sweep's --save-idle (it then asks OBJECT IDLETIME).
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_SAVE_IDLE", value_parser = parse_duration)]
    pub save_idle: Option<Duration>,

    /// The sweep's --shard (on a cluster, it then reads slot by slot).
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_SHARD", value_parser = Shard::parse)]
    pub shard: Option<Shard>,

    /// The sweep's --shards.
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_SHARDS")]
    pub shards: Option<u32>,
}
