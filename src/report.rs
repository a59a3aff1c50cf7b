//! The run summary: counters, and how they are shown (a table and a line for people, one JSON
//! object for orchestrators). Summaries go to stdout; logs go to stderr.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::SweepConfig;
use crate::error::{Error, exit};
use crate::store::RunRecord;

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

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }

    pub fn to_text(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        if let Some(keys) = &self.due_keys {
            out.push_str(&due_table(keys));
        }
        let threshold =
            humantime::format_duration(std::time::Duration::from_millis(self.threshold_ms));
        let scope = match &self.shard {
            Some(shard) => format!("{:?} (shard {shard})", self.pattern),
            None => format!("{:?}", self.pattern),
        };
        if self.dry_run {
            let _ = writeln!(
                out,
                "dry run: {} keys matching {scope} scanned, {} due (TTL under {threshold}): {} would be saved, {} rejected; \
                 {} not due, {} without TTL, {} expired before read; nothing was written ({} ms)",
                c.scanned,
                c.due,
                c.due - c.rejected,
                c.rejected,
                c.not_due,
                c.no_ttl,
                c.expired_before_read,
                self.duration_ms
            );
        } else {
            let run = self.run_id.map_or(String::new(), |id| format!(" {id}"));
            let _ = writeln!(
                out,
                "sweep{run} {}: {} keys matching {scope} scanned, {} due (TTL under {threshold}): {} persisted, \
                 {} unchanged, {} rejected, {} messages added; {} not due, {} without TTL, {} expired before read ({} ms)",
                self.status.as_str(),
                c.scanned,
                c.due,
                c.persisted,
                c.unchanged,
                c.rejected,
                c.messages_added,
                c.not_due,
                c.no_ttl,
                c.expired_before_read,
                self.duration_ms
            );
        }
        out
    }
}

/// The due keys, most urgent (least TTL left) first.
/// What `sweeper status` shows: the last runs, and whether the newest successful one finished
/// within `max_age` of `now`.
pub struct StatusReport {
    pub runs: Vec<RunRecord>,
    pub last_success: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub max_age: std::time::Duration,
}

impl StatusReport {
    fn age(&self) -> Option<std::time::Duration> {
        self.last_success
            .map(|t| (self.now - t).to_std().unwrap_or_default())
    }

    pub fn healthy(&self) -> bool {
        self.age().is_some_and(|a| a <= self.max_age)
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "healthy": self.healthy(),
            "last_success_at": self.last_success.map(|t| t.to_rfc3339()),
            "last_success_age_ms": self.age().map(|a| a.as_millis() as u64),
            "max_age_ms": self.max_age.as_millis() as u64,
            "runs": self.runs,
        })
        .to_string()
    }

    pub fn to_text(&self) -> String {
        let row = |cols: [&dyn std::fmt::Display; 10]| {
            format!(
                "{:>6}  {:<25}  {:<11}  {:>9}  {:>7}  {:>9}  {:>9}  {:>8}  {:>9}  {:>8}\n",
                cols[0],
                cols[1],
                cols[2],
                cols[3],
                cols[4],
                cols[5],
                cols[6],
                cols[7],
                cols[8],
                cols[9]
            )
        };
        let mut t = row([
            &"RUN",
            &"STARTED",
            &"STATUS",
            &"SCANNED",
            &"DUE",
            &"PERSISTED",
            &"UNCHANGED",
            &"REJECTED",
            &"PROTECTED",
            &"MS",
        ]);
        for r in &self.runs {
            let started = r
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let ms = r.duration_ms.map_or("-".to_string(), |d| d.to_string());
            t.push_str(&row([
                &r.id,
                &started,
                &r.status,
                &r.scanned,
                &r.due,
                &r.persisted,
                &r.unchanged,
                &r.rejected,
                &r.protected,
                &ms,
            ]));
        }
        let fmt = |d: std::time::Duration| {
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        };
        let verdict = match (self.last_success, self.age()) {
            (Some(at), Some(age)) => format!(
                "{}: the newest successful sweep finished {} ago ({}), {} --max-age {}{}",
                if self.healthy() { "ok" } else { "ALARM" },
                fmt(age),
                at.to_rfc3339(),
                if self.healthy() { "within" } else { "over" },
                humantime::format_duration(self.max_age),
                if self.healthy() {
                    ""
                } else {
                    ": is the schedule still running?"
                }
            ),
            _ => "ALARM: no sweep has ever succeeded on this database".to_string(),
        };
        t + &verdict + "\n"
    }
}

fn due_table(keys: &[DueKey]) -> String {
    let mut keys: Vec<&DueKey> = keys.iter().collect();
    keys.sort_by_key(|k| k.ttl_ms);
    let width = keys
        .iter()
        .map(|k| k.key.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = format!(
        "{:<width$}  {:>9}  {:>9}  {:>8}\n",
        "KEY", "TTL LEFT", "BYTES", "MESSAGES"
    );
    for k in keys {
        let ttl = format!("{:.1}s", k.ttl_ms as f64 / 1000.0);
        let messages = match (&k.messages, &k.reject) {
            (Some(n), _) => n.to_string(),
            (None, Some(reason)) => {
                format!("rejected ({})", reason.split(':').next().unwrap_or(""))
            }
            (None, None) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {ttl:>9}  {:>9}  {messages:>8}",
            k.key, k.bytes
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(dry_run: bool) -> Summary {
        Summary {
            run_id: (!dry_run).then_some(7),
            status: RunStatus::Ok,
            error: None,
            signal: None,
            dry_run,
            pattern: "checkpoint:*".into(),
            shard: None,
            threshold_ms: 600_000,
            counters: Counters {
                scanned: 10,
                due: 3,
                not_due: 5,
                persisted: 2,
                rejected: 1,
                no_ttl: 2,
                ..Counters::default()
            },
            duration_ms: 12,
            due_keys: dry_run.then(|| {
                vec![DueKey {
                    key: "checkpoint:a".into(),
                    ttl_ms: 1500,
                    bytes: 42,
                    messages: Some(4),
                    reject: None,
                }]
            }),
        }
    }

    #[test]
    fn json_summary_has_the_fields_orchestrators_read() {
        let v: serde_json::Value = serde_json::from_str(&summary(false).to_json()).unwrap();
        for field in [
            "dry_run",
            "scanned",
            "due",
            "persisted",
            "unchanged",
            "rejected",
            "no_ttl",
            "expired_before_read",
            "duration_ms",
            "run_id",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {v}");
        }
        assert_eq!(v["persisted"], 2);
        assert_eq!(v["status"], "ok");
        assert!(v.get("due_keys").is_none());
        let dry: serde_json::Value = serde_json::from_str(&summary(true).to_json()).unwrap();
        assert!(dry.get("run_id").is_none());
        assert_eq!(dry["due_keys"][0]["key"], "checkpoint:a");
        assert_eq!(dry["due_keys"][0]["messages"], 4);
    }

    #[test]
    fn text_summary_says_what_happened() {
        let t = summary(false).to_text();
        assert!(t.contains("sweep 7 ok"), "{t}");
        assert!(t.contains("2 persisted"), "{t}");
        let d = summary(true).to_text();
        assert!(
            d.contains("KEY") && d.contains("checkpoint:a") && d.contains("1.5s"),
            "{d}"
        );
        assert!(d.contains("nothing was written"), "{d}");
    }
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
