//! The model of a run, shared by the sweep, the store (`sweep_runs`) and the report: how it
//! ended, what it counted, its summary.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::SweepConfig;
use crate::error::{Error, exit};

/// How a run ended, as `sweep_runs.status` and the summary's `status` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every matching key was looked at.
    Ok,
    /// The deadline passed: what was read is saved; the next run goes on.
    Partial,
    /// Another sweep holds the lock: this one did nothing.
    Skipped,
    /// SIGINT or SIGTERM: what was read is saved.
    Interrupted,
    /// Redis or PostgreSQL failed (recorded when PostgreSQL still could be reached).
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Skipped => "skipped",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }
}

/// What a sweep counted. Every scanned key lands in exactly one of `not_due`, `no_ttl`,
/// `expired_before_read` and `due` (SCAN may return a key twice; the second sighting is counted
/// in `scanned` only). Every due key is then `persisted`, `unchanged` or `rejected`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub scanned: u64,
    pub due: u64,
    pub not_due: u64,
    pub persisted: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub no_ttl: u64,
    pub expired_before_read: u64,
    /// Due keys whose TTL was raised to --protect-ttl because PostgreSQL could not take them.
    pub protected: u64,
    pub messages_added: u64,
    pub redis_round_trips: u64,
    /// Milliseconds read at the busy pace because other clients were using Redis.
    pub redis_yield_ms: u64,
    /// Statements the batch writes sent to PostgreSQL (BEGIN and COMMIT included).
    pub pg_statements: u64,
    pub batches: u64,
    /// Keys Redis evicted (maxmemory) since the previous run, or since it started for a first
    /// run: conversations lost before their TTL ran out when the policy evicts keys with a TTL.
    pub evicted_keys: u64,
}

/// A due key as a dry run shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DueKey {
    pub key: String,
    pub ttl_ms: u64,
    pub bytes: u64,
    /// Messages in the checkpoint; None when it would be rejected.
    pub messages: Option<usize>,
    /// Why it would be rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<i64>,
    pub status: RunStatus,
    /// Why the run failed: the line the binary prints on stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The signal that interrupted the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub dry_run: bool,
    #[serde(rename = "match")]
    pub pattern: String,
    /// The shard swept (`I/N`), when the sweep was sharded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    pub threshold_ms: u64,
    #[serde(flatten)]
    pub counters: Counters,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_keys: Option<Vec<DueKey>>,
}

impl Summary {
    /// The summary of a sweep that failed before it could read anything but what `counters`
    /// says (the due keys it protected, when PostgreSQL was the reason).
    pub fn failed(
        cfg: &SweepConfig,
        error: &Error,
        counters: Counters,
        duration: std::time::Duration,
    ) -> Summary {
        Summary {
            run_id: None,
            status: RunStatus::Failed,
            error: Some(error.to_string()),
            signal: None,
            dry_run: cfg.dry_run,
            pattern: cfg.pattern.clone(),
            shard: cfg.shard.map(|s| s.to_string()),
            threshold_ms: cfg.threshold.as_millis() as u64,
            counters,
            duration_ms: duration.as_millis() as u64,
            due_keys: None,
        }
    }

    /// The exit code this outcome gets: 0 ok or skipped, 5 partial, 128 + signal interrupted.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            RunStatus::Ok | RunStatus::Skipped => exit::OK,
            RunStatus::Partial => exit::PARTIAL,
            RunStatus::Interrupted => exit::SIGNAL_BASE + self.signal.unwrap_or(15) as u8,
            RunStatus::Failed => exit::OTHER,
        }
    }
}

impl Counters {
    /// Adds what the read and decode stages counted.
    pub fn merge_read(&mut self, r: &Counters) {
        self.scanned += r.scanned;
        self.due += r.due;
        self.not_due += r.not_due;
        self.no_ttl += r.no_ttl;
        self.expired_before_read += r.expired_before_read;
        self.rejected += r.rejected;
        self.protected += r.protected;
        self.redis_round_trips += r.redis_round_trips;
        self.redis_yield_ms += r.redis_yield_ms;
    }
}

/// The runs recorded in `sweep_runs`, summed up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunHistory {
    /// Runs per status (`running` included: a run in progress or one killed before its end).
    pub by_status: Vec<(String, u64)>,
    pub last_success: Option<DateTime<Utc>>,
}

/// A row of `sweep_runs`, as `sweeper status` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    pub scanned: i64,
    pub due: i64,
    pub persisted: i64,
    pub unchanged: i64,
    pub rejected: i64,
    pub protected: i64,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    /// The shard a sharded run swept (`shard_index` of `shard_count`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_index: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<i32>,
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    #[test]
    fn each_status_has_its_documented_exit_code() {
        let mut s = Summary {
            run_id: None,
            status: RunStatus::Ok,
            error: None,
            signal: None,
            dry_run: false,
            pattern: "x*".into(),
            shard: None,
            threshold_ms: 1,
            counters: Counters::default(),
            duration_ms: 0,
            due_keys: None,
        };
        assert_eq!(s.exit_code(), 0);
        s.status = RunStatus::Skipped;
        assert_eq!(s.exit_code(), 0);
        s.status = RunStatus::Partial;
        assert_eq!(s.exit_code(), 5);
        s.status = RunStatus::Interrupted;
        s.signal = Some(2);
        assert_eq!(s.exit_code(), 130);
        s.signal = Some(15);
        assert_eq!(s.exit_code(), 143);
    }
}
