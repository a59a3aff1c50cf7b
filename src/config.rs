//! Flags turned into validated settings: durations, sizes, the key pattern. No I/O here.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::pace::Pacing;
use crate::progress::Progress;
use crate::shard::Shard;

/// What a sweep needs to know. Build it with struct update syntax over `Default` and call
/// [`SweepConfig::validate`].
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The SCAN MATCH pattern, e.g. `checkpoint:*`.
    pub pattern: String,
    /// The pattern's literal prefix, stripped from a key to give the conversation id (set by
    /// `validate`).
    pub prefix: String,
    /// A key is due when its TTL left is under this.
    pub threshold: Duration,
    /// Conversations per PostgreSQL write.
    pub batch_size: usize,
    /// The COUNT hint given to SCAN.
    pub scan_count: usize,
    /// Larger values are rejected without being read whole.
    pub max_value_bytes: u64,
    /// Read and report, write nothing anywhere.
    pub dry_run: bool,
    /// Stop scanning when this much time has passed since the start; None: no deadline.
    pub deadline: Option<Duration>,
    /// When PostgreSQL cannot take a due key, raise its TTL to this (never lower it) so it
    /// outlives the outage; zero: don't.
    pub protect_ttl: Duration,
    /// Batches written to PostgreSQL at once.
    pub writers: usize,
    /// At most this many Redis commands per second (0: no limit).
    pub max_redis_ops_per_sec: u32,
    /// While other clients use Redis, at most this many commands per second (0: full speed).
    pub busy_redis_ops_per_sec: u32,
    /// Where the scan reports how far it got (hidden unless a person watches a terminal).
    pub progress: Progress,
    /// How checkpoints are stored in Redis.
    pub layout: Layout,
    /// Sweep only the keys of this shard (None: every key).
    pub shard: Option<Shard>,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            pattern: "checkpoint:*".into(),
            prefix: "checkpoint:".into(),
            threshold: Duration::from_secs(600),
            batch_size: 500,
            scan_count: 1000,
            max_value_bytes: 16 << 20,
            dry_run: false,
            deadline: Some(Duration::from_secs(240)),
            protect_ttl: Duration::from_secs(900),
            writers: 2,
            max_redis_ops_per_sec: 0,
            busy_redis_ops_per_sec: 10_000,
            progress: Progress::default(),
            layout: Layout::Json,
            shard: None,
        }
    }
}

impl SweepConfig {
    /// How fast the sweep may talk to Redis.
    pub fn pacing(&self) -> Pacing {
        Pacing {
            max_ops_per_sec: self.max_redis_ops_per_sec,
            busy_ops_per_sec: self.busy_redis_ops_per_sec,
            budget: self.deadline,
        }
    }

    pub fn validate(mut self) -> Result<SweepConfig> {
        if self.pattern.is_empty() {
            return Err(Error::Usage("--match must not be empty".into()));
        }
        self.prefix = literal_prefix(&self.pattern).to_string();
        if self.layout == Layout::LangGraph
            && crate::langgraph::read::indexes(&self.prefix).is_none()
        {
            return Err(Error::Usage(format!(
                "--format langgraph sweeps a LangGraph app's `{{prefix}}_latest:*` keys (`checkpoint_latest:*` by default), not --match {}",
                self.pattern
            )));
        }
        if self.threshold.is_zero() {
            return Err(Error::Usage(
                "--threshold must be above zero: with 0 no key is ever due".into(),
            ));
        }
        if self.batch_size == 0 || self.scan_count == 0 || self.writers == 0 {
            return Err(Error::Usage(
                "--batch-size, --scan-count and --writers must be at least 1".into(),
            ));
        }
        if self.max_value_bytes == 0 {
            return Err(Error::Usage("--max-value-bytes must be at least 1".into()));
        }
        if !self.protect_ttl.is_zero() && self.protect_ttl <= self.threshold {
            return Err(Error::Usage(format!(
                "--protect-ttl ({}) must be above --threshold ({}) so a protected key is not due again at once, or 0 to turn protection off",
                humantime::format_duration(self.protect_ttl),
                humantime::format_duration(self.threshold)
            )));
        }
        Ok(self)
    }
}

/// The part of a Redis glob pattern before its first special character: `checkpoint:*` gives
/// `checkpoint:`. Every key the pattern matches starts with it.
pub fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[', '\\']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Parses `90s`, `10m`, `1h 30m` (humantime's form).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 90s or 10m: {e}"))
}

/// Parses a byte size: `16MiB`, `512KiB`, `1GiB`, `100kB`, `2048` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 16MiB or 65536"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (use B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A URL fit for logs and error messages: any password replaced by `***`. A comma-separated list
/// (a cluster's seeds) is redacted URL by URL: parsed whole, the seeds after the first would be
/// read as the first one's path and kept as they are.
pub fn redact_url(raw: &str) -> String {
    let urls: Vec<&str> = raw.split(',').map(str::trim).collect();
    if urls.len() > 1 && urls.iter().all(|u| u.contains("://")) {
        return urls
            .iter()
            .map(|u| redact_one_url(u))
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one_url(raw)
}

fn redact_one_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // libpq-style URLs may carry the password as a parameter too.
            if u.query_pairs().any(|(k, _)| is_secret_param(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_param(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Not a URL we can parse: show only the scheme, never the rest (it may hold a secret).
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://(unparseable URL)"),
            None => "(unparseable URL)".to_string(),
        },
    }
}

fn is_secret_param(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "password" | "pass" | "sslpassword"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefix_stops_at_first_glob_character() {
        assert_eq!(literal_prefix("checkpoint:*"), "checkpoint:");
        assert_eq!(literal_prefix("t1:checkpoint:*"), "t1:checkpoint:");
        assert_eq!(literal_prefix("chat?:*"), "chat");
        assert_eq!(literal_prefix("a[bc]*"), "a");
        assert_eq!(literal_prefix(r"a\*b*"), "a");
        assert_eq!(literal_prefix("exact"), "exact");
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 * 1024 * 1024);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("100kB").unwrap(), 100_000);
        assert_eq!(parse_size("2048").unwrap(), 2048);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert!(parse_size("16XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations_use_humantime_form() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("ten minutes").is_err());
    }

    #[test]
    fn passwords_never_survive_redaction() {
        let r = redact_url("postgres://app:s3cret@db:5432/chat");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("app:***@db"), "{r}");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert!(!redact_url("redis://:pw@[bad").contains("pw"));
        let seeds =
            redact_url("redis://u:pw1@a:7000/,redis://u:pw2@b:7001/, rediss://u:pw3@c:7002/");
        assert_eq!(
            seeds,
            "redis://u:***@a:7000/,redis://u:***@b:7001/,rediss://u:***@c:7002/"
        );
        let q = redact_url("postgres://db/chat?sslmode=require&password=hunter2");
        assert!(
            !q.contains("hunter2") && q.contains("sslmode=require"),
            "{q}"
        );
    }

    #[test]
    fn config_refuses_values_that_make_no_sweep() {
        let ok = SweepConfig {
            pattern: "t1:checkpoint:*".into(),
            ..SweepConfig::default()
        }
        .validate()
        .unwrap();
        assert_eq!(ok.prefix, "t1:checkpoint:");
        let bad = |c: SweepConfig| c.validate().is_err();
        let d = SweepConfig::default;
        assert!(bad(SweepConfig {
            threshold: Duration::ZERO,
            ..d()
        }));
        assert!(bad(SweepConfig {
            batch_size: 0,
            ..d()
        }));
        assert!(bad(SweepConfig {
            pattern: String::new(),
            ..d()
        }));
        assert!(bad(SweepConfig {
            protect_ttl: Duration::from_secs(600),
            ..d()
        }));
        assert!(!bad(SweepConfig {
            protect_ttl: Duration::ZERO,
            ..d()
        }));
    }
}
