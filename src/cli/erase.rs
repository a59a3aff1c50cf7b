//! The flags of `forget` and `prune`: erasure on request, and retention.

use std::time::Duration;

use clap::Args;

use super::{LayoutArgs, OutputArg, SELECTION, WRITING};
use crate::config::{defaults, parse_duration};

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// A conversation to erase (its id: the key without its prefix; a LangGraph thread id with
    /// --format langgraph). Repeat it for more.
    #[arg(help_heading = SELECTION, long = "conversation", env = "SWEEPER_CONVERSATION")]
    pub conversations: Vec<String>,

    /// A user whose conversations are all erased, the saved ones and those only Redis holds so
    /// far (found by reading the keys matching --match). Repeat it for more: the keyspace is read
    /// once for all.
    #[arg(help_heading = SELECTION, long = "user", env = "SWEEPER_USER")]
    pub users: Vec<String>,

    /// SCAN MATCH pattern of the conversation keys, as for `run`.
    #[arg(help_heading = SELECTION, long = "match", env = "SWEEPER_MATCH", default_value = defaults::MATCH)]
    pub pattern: String,

    /// Why (a ticket reference): kept in the receipt.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_REASON")]
    pub reason: Option<String>,

    /// Count what would be erased, in PostgreSQL and Redis; delete and record nothing.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_DRY_RUN")]
    pub dry_run: bool,

    #[command(flatten)]
    pub layout: LayoutArgs,

    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete the conversations last updated longer ago than this (e.g. 365d), with their
    /// messages, and the rejects last seen before it.
    #[arg(help_heading = SELECTION, long, env = "SWEEPER_OLDER_THAN", value_parser = parse_duration)]
    pub older_than: Duration,

    /// Conversations deleted per transaction: short transactions keep the sweeps beside it
    /// unblocked and let autovacuum reuse the space as it goes.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_PRUNE_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub prune_batch: u32,

    /// Count what would be deleted; delete and record nothing.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_DRY_RUN")]
    pub dry_run: bool,

    #[command(flatten)]
    pub out: OutputArg,
}

/// `--retention`: retention on the sweep's own schedule (`run`, `daemon`).
#[derive(Debug, Clone, Copy, Args)]
pub struct RetentionArg {
    /// After the sweep, once a day (no prune recorded in the last 23 hours), delete the
    /// conversations last updated longer ago than this, as `sweeper prune --older-than` does (the
    /// database role then needs DELETE). Off by default.
    #[arg(help_heading = WRITING, long, env = "SWEEPER_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
}
