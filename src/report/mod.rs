//! The run summary as it is shown (a table and a line for people, one JSON
//! object for orchestrators). Summaries go to stdout; logs go to stderr.

use std::fmt::Write;

pub mod publish;

use chrono::{DateTime, Utc};

pub use crate::run::{Counters, DueKey, RunStatus, Summary};
use crate::run::{Receipt, RunRecord};

impl Summary {
    /// The `sweep finished` log event, with the counters a log search wants.
    pub fn log_finished(&self) {
        let c = &self.counters;
        tracing::info!(
            run_id = self.run_id,
            status = self.status.as_str(),
            scanned = c.scanned,
            due = c.due,
            persisted = c.persisted,
            unchanged = c.unchanged,
            rejected = c.rejected,
            no_ttl = c.no_ttl,
            expired_before_read = c.expired_before_read,
            protected = c.protected,
            erased = c.erased,
            duration_ms = self.duration_ms,
            "sweep finished"
        );
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
        if let Some(n @ 1..) = self.due_keys_omitted {
            let _ = writeln!(
                out,
                "... and {n} less urgent due keys not listed (--list sets how many are)"
            );
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
            if c.erased > 0 {
                let _ = writeln!(
                    out,
                    "{} due keys belong to erased conversations (sweeper forget): not saved, left to their TTL",
                    c.erased
                );
            }
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
    /// The newest receipts of `forget`, `prune` and `restore`.
    pub receipts: Vec<Receipt>,
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
            "erasures": self.receipts,
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
        t + &verdict + "\n" + &receipts_table(&self.receipts)
    }
}

/// The newest receipts, for auditors: what was erased or read back, when, by whom.
fn receipts_table(receipts: &[Receipt]) -> String {
    if receipts.is_empty() {
        return String::new();
    }
    let mut t = format!(
        "\n{:<36}  {:<20}  {:<7}  {:<12}  {:>13}  {:>8}  {:>10}  {}\n",
        "RECEIPT",
        "AT",
        "ACTION",
        "SCOPE",
        "CONVERSATIONS",
        "MESSAGES",
        "REDIS_KEYS",
        "BY / REASON"
    );
    for r in receipts {
        let keys = r
            .redis_keys
            .map_or("unfinished".to_string(), |n| n.to_string());
        let _ = writeln!(
            t,
            "{:<36}  {:<20}  {:<7}  {:<12}  {:>13}  {:>8}  {:>10}  {}@{} {}",
            r.receipt,
            r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.action,
            r.scope,
            r.conversations,
            r.messages,
            keys,
            r.os_user.as_deref().unwrap_or("?"),
            r.host.as_deref().unwrap_or("?"),
            r.reason.as_deref().unwrap_or("")
        );
    }
    t
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
            due_keys_omitted: dry_run.then_some(0),
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
