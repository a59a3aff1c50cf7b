//! Flags turned into validated settings: durations, sizes, the key pattern. No I/O here.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::redis::layout::Layout;
use crate::redis::pace::Pacing;
use crate::shard::Shard;

pub use crate::redact::redact_url;

/// Every default of a setting, once: the flags show them, [`SweepConfig::default`] uses them.
pub mod defaults {
    pub const MATCH: &str = "checkpoint:*";
    pub const THRESHOLD: &str = "10m";
    pub const BATCH_SIZE: u64 = 500;
    pub const SCAN_COUNT: u64 = 1000;
    pub const MAX_VALUE_BYTES: &str = "16MiB";
    pub const DEADLINE: &str = "4m";
    pub const PROTECT_TTL: &str = "15m";
    pub const WRITERS: u64 = 2;
    pub const BUSY_REDIS_OPS_PER_SEC: u32 = 10_000;
    pub const CONNECT_TIMEOUT: &str = "10s";
    pub const OPERATION_TIMEOUT: &str = "15s";
    /// Due keys a dry run lists, most urgent first.
    pub const LIST: u64 = 1000;
}

/// The client's own deadlines: a server that goes silent (a partition drops packets without a
/// reset) is noticed within these, whatever TCP would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a connection (and, retried, before calling a server down).
    pub connect: Duration,
    /// For one Redis pipeline or one PostgreSQL transaction, from first byte to last.
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: duration(defaults::CONNECT_TIMEOUT),
            operation: duration(defaults::OPERATION_TIMEOUT),
        }
    }
}

impl Timeouts {
    /// The operation deadline must leave a sweep time to protect what it could not save before
    /// the keys due now expire: it is held to a quarter of `--threshold` (lowered, with a note,
    /// when set above that). Zero is refused.
    pub fn fit(self, threshold: Duration) -> Result<Timeouts> {
        if self.operation.is_zero() {
            return Err(Error::Usage(
                "--operation-timeout must be above zero: every operation would fail".into(),
            ));
        }
        let most = threshold / 4;
        if self.operation <= most {
            return Ok(self);
        }
        tracing::info!(
            operation_timeout = %humantime::format_duration(most),
            "--operation-timeout held to a quarter of --threshold, so a silent server is noticed while the due keys can still be protected"
        );
        Ok(Timeouts {
            operation: most.max(Duration::from_millis(100)),
            ..self
        })
    }
}

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
    /// A chat library's layout (`--format PRESET`, `--mapping FILE`): keys decoded through it
    /// instead of as checkpoint documents. `layout` then reads its Redis type.
    pub mapping: Option<std::sync::Arc<crate::mapping::Mapping>>,
    /// A key without TTL is due once idle this long (`--save-idle`); None: never.
    pub save_idle: Option<Duration>,
    /// A dry run lists this many due keys, the most urgent (its memory is bounded by it).
    pub list: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            pattern: defaults::MATCH.into(),
            prefix: literal_prefix(defaults::MATCH).into(),
            threshold: duration(defaults::THRESHOLD),
            batch_size: defaults::BATCH_SIZE as usize,
            scan_count: defaults::SCAN_COUNT as usize,
            max_value_bytes: parse_size(defaults::MAX_VALUE_BYTES).expect("a valid default"),
            dry_run: false,
            deadline: Some(duration(defaults::DEADLINE)),
            protect_ttl: duration(defaults::PROTECT_TTL),
            writers: defaults::WRITERS as usize,
            max_redis_ops_per_sec: 0,
            busy_redis_ops_per_sec: defaults::BUSY_REDIS_OPS_PER_SEC,
            progress: Progress::default(),
            layout: Layout::Json,
            shard: None,
            mapping: None,
            save_idle: None,
            list: defaults::LIST as usize,
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
        if self.layout == Layout::LangGraph && crate::langgraph::indexes(&self.prefix).is_none() {
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
        if self.save_idle.is_some_and(|d| d.is_zero()) {
            return Err(Error::Usage(
                "--save-idle must be above 0 (leave it out to never save keys without TTL)".into(),
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

fn duration(text: &str) -> Duration {
    parse_duration(text).expect("a valid default")
}

/// Parses `90s`, `10m`, `1h 30m` (humantime's form).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 90s or 10m: {e}"))
}

/// Prints a duration the way the flags take one, to the second: `9m50s`, `1h30m`, `2d3h`; under a
/// second, `450ms`. (humantime prints every unit down to nanoseconds, spaced: `9m 50s 445ms`.)
pub fn format_duration(d: Duration) -> String {
    let total = d.as_secs();
    if total == 0 {
        return match d.subsec_millis() {
            0 => "0s".to_string(),
            ms => format!("{ms}ms"),
        };
    }
    let parts = [
        (total / 86_400, "d"),
        (total / 3_600 % 24, "h"),
        (total / 60 % 60, "m"),
        (total % 60, "s"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
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

/// Parses a `0s..30m` range of durations.
pub fn parse_ttl_range(s: &str) -> std::result::Result<(Duration, Duration), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}` is not a range like 0s..30m"))?;
    let (a, b) = (parse_duration(a)?, parse_duration(b)?);
    if a > b {
        return Err(format!("`{s}`: the range's start is after its end"));
    }
    Ok((a, b))
}

/// Parses a `2..20` range of counts.
pub fn parse_count_range(s: &str) -> std::result::Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not a range like 2..20");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a > b {
        return Err(format!("`{s}`: the range's start is after its end"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_the_flags_take_them() {
        let cases = [
            (590_445, "9m50s"),
            (5_400_000, "1h30m"),
            (183_600_000, "2d3h"),
            (600_000, "10m"),
            (450, "450ms"),
            (0, "0s"),
        ];
        for (ms, want) in cases {
            let printed = format_duration(Duration::from_millis(ms));
            assert_eq!(printed, want);
            let back = parse_duration(&printed).unwrap();
            assert_eq!(back.as_secs(), ms / 1000, "{printed} parses back");
        }
    }

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
    fn defaults_are_what_the_documentation_says() {
        let d = SweepConfig::default();
        assert_eq!(d.threshold, Duration::from_secs(600));
        assert_eq!(d.deadline, Some(Duration::from_secs(240)));
        assert_eq!(d.protect_ttl, Duration::from_secs(900));
        assert_eq!(d.max_value_bytes, 16 << 20);
        assert_eq!(d.prefix, "checkpoint:");
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

    #[test]
    fn ranges_parse() {
        assert_eq!(
            parse_ttl_range("0s..30m").unwrap(),
            (Duration::ZERO, Duration::from_secs(1800))
        );
        assert!(parse_ttl_range("30m..1m").is_err());
        assert!(parse_ttl_range("5m").is_err());
        assert_eq!(parse_count_range("2..20").unwrap(), (2, 20));
        assert!(parse_count_range("a..b").is_err());
    }
}
