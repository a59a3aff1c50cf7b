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
/// `expired_before_read` and `due` (a key SCAN returns twice is counted twice, in `scanned` and
/// its bucket). Every due key is then `persisted`, `unchanged`, `rejected`, `protected` or `erased` (the
/// second read of a key read twice is `unchanged`).
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
    /// Due keys of conversations erased by `sweeper forget`: not saved, left to their TTL.
    pub erased: u64,
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

/// The most urgent due keys of a dry run, at most `limit` of them (`--list`): a dry run over
/// millions of keys keeps memory bounded by the list, not by the keyspace.
#[derive(Debug, Default)]
pub struct DueList {
    limit: usize,
    /// A max-heap by TTL left: the least urgent key kept is the first to go.
    kept: std::collections::BinaryHeap<ByUrgency>,
    omitted: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct ByUrgency(DueKey);

impl Ord for ByUrgency {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.ttl_ms, &self.0.key).cmp(&(other.0.ttl_ms, &other.0.key))
    }
}

impl PartialOrd for ByUrgency {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl DueList {
    pub fn new(limit: usize) -> DueList {
        DueList {
            limit,
            ..DueList::default()
        }
    }

    pub fn push(&mut self, key: DueKey) {
        self.kept.push(ByUrgency(key));
        if self.kept.len() > self.limit {
            self.kept.pop();
            self.omitted += 1;
        }
    }

    /// The keys kept, most urgent first, and how many less urgent ones were left out.
    pub fn into_sorted(self) -> (Vec<DueKey>, u64) {
        let keys = self
            .kept
            .into_sorted_vec()
            .into_iter()
            .map(|k| k.0)
            .collect();
        (keys, self.omitted)
    }
}

impl Extend<DueKey> for DueList {
    fn extend<I: IntoIterator<Item = DueKey>>(&mut self, keys: I) {
        keys.into_iter().for_each(|k| self.push(k));
    }
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
    /// A dry run's most urgent due keys (`--list` of them), most urgent first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_keys: Option<Vec<DueKey>>,
    /// Due keys a dry run left out of `due_keys` (less urgent than the `--list` shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_keys_omitted: Option<u64>,
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
            due_keys_omitted: None,
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

/// A row of `erasures`, as `sweeper status` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Receipt {
    pub receipt: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub action: String,
    pub scope: String,
    pub reason: Option<String>,
    pub host: Option<String>,
    pub os_user: Option<String>,
    pub conversations: i64,
    pub messages: i64,
    pub redis_keys: Option<i64>,
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    fn due(key: &str, ttl_ms: u64) -> DueKey {
        DueKey {
            key: key.into(),
            ttl_ms,
            bytes: 1,
            messages: Some(1),
            reject: None,
        }
    }

    #[test]
    fn a_due_list_keeps_the_most_urgent_keys_and_counts_the_rest() {
        let mut list = DueList::new(3);
        list.extend([
            due("e", 50),
            due("a", 10),
            due("d", 40),
            due("b", 20),
            due("c", 10),
        ]);
        let (keys, omitted) = list.into_sorted();
        let kept: Vec<_> = keys.iter().map(|k| (k.key.as_str(), k.ttl_ms)).collect();
        assert_eq!(kept, [("a", 10), ("c", 10), ("b", 20)]);
        assert_eq!(omitted, 2);
        let (keys, omitted) = DueList::new(0).into_sorted();
        assert!(keys.is_empty() && omitted == 0);
    }

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
            due_keys_omitted: None,
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
