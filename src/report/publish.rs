//! Where a run's result goes besides stdout, for orchestrators and monitoring: the JSON summary in
//! a file (Airflow's XCom reads `/airflow/xcom/return.json`), one file per field (Flyte's
//! ContainerTask outputs), and Prometheus metrics, as a node_exporter textfile or pushed to a
//! Pushgateway (the Prometheus way for batch jobs, which live too short to be scraped).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::run::RunHistory;
use crate::run::{RunStatus, Summary};

/// The Pushgateway's grouping key starts with the job; `Publish::grouping` adds the labels that
/// tell one sweep from another (pattern, shard, instance). Each group is replaced metric by metric
/// on each push, so sweeps in different groups never overwrite each other's metrics.
const PUSH_PATH: &str = "/metrics/job/sweeper";
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

const LAST_SUCCESS: &str = "sweeper_last_success_timestamp_seconds";

#[derive(Debug, Clone, Default)]
pub struct Publish {
    pub summary_file: Option<PathBuf>,
    pub outputs_dir: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    /// Base URL of a Pushgateway (`http://host:9091`).
    pub pushgateway: Option<String>,
    /// The labels of the push's group after `job`, in order: see [`grouping`].
    pub grouping: Vec<(&'static str, String)>,
}

/// The grouping key of a sweep's pushes: the pattern it sweeps (`match`), its shard's index when
/// sharded (`shard`, as in `/metrics/job/sweeper/shard/1`), and the `--instance` name when given,
/// for sweeps of one pattern against different Redis servers sharing a gateway.
pub fn grouping(
    pattern: &str,
    shard: Option<&str>,
    instance: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut labels = vec![("match", pattern.to_string())];
    // The summary says `I/N`; the label is the index, which is what tells the pods apart.
    if let Some(s) = shard {
        labels.push(("shard", s.split('/').next().unwrap_or(s).to_string()));
    }
    if let Some(name) = instance {
        labels.push(("instance", name.to_string()));
    }
    labels
}

/// The push URL: `BASE/metrics/job/sweeper/LABEL@base64/VALUE...`. Every value goes base64 (URL-safe,
/// the Pushgateway's own escape), since a pattern holds `*` and may hold `/`.
pub fn push_url(base: &str, grouping: &[(&'static str, String)]) -> String {
    let mut url = format!("{}{PUSH_PATH}", base.trim_end_matches('/'));
    for (label, value) in grouping {
        let encoded = match value.is_empty() {
            // The Pushgateway's spelling of an empty value.
            true => "=".to_string(),
            false => base64::engine::general_purpose::URL_SAFE.encode(value),
        };
        let _ = write!(url, "/{label}@base64/{encoded}");
    }
    url
}

impl Publish {
    /// Writes what was asked for. A file that cannot be written is an error: a setting to fix,
    /// and the orchestrator would otherwise miss the result. A Pushgateway that cannot be reached
    /// is only logged: the sweep's work is done, and the next push carries the counters again.
    pub async fn publish(
        &self,
        summary: &Summary,
        history: Option<&RunHistory>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if let Some(path) = &self.summary_file {
            write_atomically(path, (summary.to_json() + "\n").as_bytes())?;
        }
        if let Some(dir) = &self.outputs_dir {
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
            for (name, value) in outputs(summary) {
                write_atomically(&dir.join(name), value.as_bytes())?;
            }
        }
        if self.metrics_file.is_none() && self.pushgateway.is_none() {
            return Ok(());
        }
        let previous = self
            .metrics_file
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| previous_last_success(&text));
        let text = metrics(summary, history, previous, now);
        if let Some(path) = &self.metrics_file {
            write_atomically(path, text.as_bytes())?;
        }
        if let Some(base) = &self.pushgateway {
            let url = push_url(base, &self.grouping);
            let pushed = tokio::task::spawn_blocking(move || push(&url, text)).await;
            match pushed {
                Ok(Ok(())) => tracing::debug!("metrics pushed"),
                Ok(Err(e)) => {
                    tracing::warn!(pushgateway = %redact_url(base), error = %e, "could not push the metrics")
                }
                Err(e) => tracing::warn!(error = %e, "the metrics push failed"),
            }
        }
        Ok(())
    }
}

/// POSTs the metrics: POST replaces only the metrics it names, so a last-success time pushed by
/// an earlier run survives a run that failed before it could read it.
fn push(url: &str, text: String) -> std::result::Result<(), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PUSH_TIMEOUT))
        .build()
        .into();
    agent
        .post(url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .send(text)?;
    Ok(())
}

/// One file per scalar field of the JSON summary, named after it, holding its bare value.
pub fn outputs(summary: &Summary) -> Vec<(String, String)> {
    let serde_json::Value::Object(fields) =
        serde_json::to_value(summary).expect("a summary always serializes")
    else {
        unreachable!("a summary is an object")
    };
    fields
        .into_iter()
        .filter_map(|(name, value)| match value {
            serde_json::Value::String(s) => Some((name, s)),
            serde_json::Value::Number(n) => Some((name, n.to_string())),
            serde_json::Value::Bool(b) => Some((name, b.to_string())),
            _ => None,
        })
        .collect()
}

/// The run in the Prometheus text format. `previous_last_success` is the value a former run left
/// in the textfile, kept when this run cannot tell (PostgreSQL down).
pub fn metrics(
    summary: &Summary,
    history: Option<&RunHistory>,
    previous_last_success: Option<f64>,
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    if let Some(h) = history {
        let samples: Vec<_> = h
            .by_status
            .iter()
            .map(|(status, n)| (format!("{{status=\"{}\"}}", escape(status)), *n as f64))
            .collect();
        metric(
            "sweeper_runs_total",
            "counter",
            "Sweeps recorded in sweep_runs, by status.",
            &samples,
        );
    }
    metric(
        "sweeper_last_run_status",
        "gauge",
        "1 for the status the last run ended with.",
        &status_samples(summary.status),
    );
    let c = &summary.counters;
    for (what, n) in [
        ("scanned", c.scanned),
        ("due", c.due),
        ("not_due", c.not_due),
        ("persisted", c.persisted),
        ("unchanged", c.unchanged),
        ("rejected", c.rejected),
        ("no_ttl", c.no_ttl),
        ("expired_before_read", c.expired_before_read),
        ("protected", c.protected),
        ("erased", c.erased),
        ("evicted", c.evicted_keys),
    ] {
        metric(
            &format!("sweeper_last_run_{what}_keys"),
            "gauge",
            &format!("Keys the last run counted as {what}."),
            &[(String::new(), n as f64)],
        );
    }
    metric(
        "sweeper_last_run_messages_added",
        "gauge",
        "Messages the last run added to PostgreSQL.",
        &[(String::new(), c.messages_added as f64)],
    );
    metric(
        "sweeper_last_run_duration_seconds",
        "gauge",
        "How long the last run took.",
        &[(String::new(), summary.duration_ms as f64 / 1000.0)],
    );
    metric(
        "sweeper_last_run_timestamp_seconds",
        "gauge",
        "When the last run ended (Unix time).",
        &[(String::new(), unix_seconds(now))],
    );
    let last_success = match (history, summary.status) {
        (Some(h), _) => h.last_success.map(unix_seconds),
        (None, RunStatus::Ok) if !summary.dry_run => Some(unix_seconds(now)),
        (None, _) => None,
    }
    .or(previous_last_success);
    if let Some(t) = last_success {
        metric(
            LAST_SUCCESS,
            "gauge",
            "When the newest run with status ok ended (Unix time): alert when it grows old.",
            &[(String::new(), t)],
        );
    }
    out
}

/// 1 for the status the run ended with, 0 for the others.
fn status_samples(status: RunStatus) -> Vec<(String, f64)> {
    let statuses = [
        RunStatus::Ok,
        RunStatus::Partial,
        RunStatus::Skipped,
        RunStatus::Interrupted,
        RunStatus::Failed,
    ];
    statuses
        .iter()
        .map(|s| {
            let one = if *s == status { 1.0 } else { 0.0 };
            (format!("{{status=\"{}\"}}", s.as_str()), one)
        })
        .collect()
}

fn previous_last_success(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(LAST_SUCCESS)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `path` whole or not at all (a temp file beside it, renamed over it), so a reader (the
/// node_exporter, a sidecar copying XCom) never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            file_error(path, e)
        })
}

fn file_error(path: &Path, e: std::io::Error) -> Error {
    Error::Other(format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SweepConfig;
    use crate::report::Counters;

    fn summary(status: RunStatus) -> Summary {
        let mut s = Summary::failed(
            &SweepConfig::default(),
            &Error::Other("x".into()),
            Counters {
                scanned: 10,
                due: 4,
                persisted: 3,
                rejected: 1,
                ..Counters::default()
            },
            Duration::from_millis(1500),
        );
        s.status = status;
        s.error = None;
        s
    }

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn metrics_carry_the_counters_the_status_and_the_history() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let history = RunHistory {
            by_status: vec![("failed".into(), 2), ("ok".into(), 5)],
            last_success: DateTime::from_timestamp(1_799_999_700, 0),
        };
        let t = metrics(&summary(RunStatus::Ok), Some(&history), None, now);
        assert_eq!(sample(&t, "sweeper_runs_total{status=\"ok\"}"), Some(5.0));
        assert_eq!(
            sample(&t, "sweeper_runs_total{status=\"failed\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&t, "sweeper_last_run_status{status=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, "sweeper_last_run_status{status=\"failed\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&t, "sweeper_last_run_scanned_keys"), Some(10.0));
        assert_eq!(sample(&t, "sweeper_last_run_persisted_keys"), Some(3.0));
        assert_eq!(sample(&t, "sweeper_last_run_duration_seconds"), Some(1.5));
        assert_eq!(sample(&t, LAST_SUCCESS), Some(1_799_999_700.0));
        assert!(t.contains("# TYPE sweeper_runs_total counter"));
    }

    #[test]
    fn a_failed_run_keeps_the_last_success_it_cannot_read() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let t = metrics(&summary(RunStatus::Failed), None, None, now);
        assert_eq!(sample(&t, LAST_SUCCESS), None);
        assert!(!t.contains("sweeper_runs_total"));
        let t = metrics(&summary(RunStatus::Failed), None, Some(1.5e9), now);
        assert_eq!(previous_last_success(&t), Some(1.5e9));
        // Without PostgreSQL's word, an ok run is its own last success.
        let t = metrics(&summary(RunStatus::Ok), None, Some(1.5e9), now);
        assert_eq!(previous_last_success(&t), Some(1.8e9));
    }

    #[test]
    fn outputs_are_the_scalar_fields_of_the_summary() {
        let o: std::collections::HashMap<_, _> =
            outputs(&summary(RunStatus::Partial)).into_iter().collect();
        assert_eq!(o["status"], "partial");
        assert_eq!(o["scanned"], "10");
        assert_eq!(o["persisted"], "3");
        assert_eq!(o["dry_run"], "false");
        assert_eq!(o["match"], "checkpoint:*");
        assert!(!o.contains_key("due_keys"));
    }

    #[test]
    fn each_shard_and_instance_pushes_to_its_own_group() {
        let base = "http://gw:9091/";
        assert_eq!(
            push_url(base, &grouping("checkpoint:*", None, None)),
            "http://gw:9091/metrics/job/sweeper/match@base64/Y2hlY2twb2ludDoq"
        );
        assert_eq!(
            push_url(base, &grouping("a/b", Some("1/3"), Some("eu-1"))),
            "http://gw:9091/metrics/job/sweeper/match@base64/YS9i/shard@base64/MQ==/instance@base64/ZXUtMQ=="
        );
        let urls: std::collections::HashSet<_> = (0..3)
            .map(|i| push_url(base, &grouping("c:*", Some(&format!("{i}/3")), None)))
            .collect();
        assert_eq!(urls.len(), 3, "three shards, three groups");
        assert!(push_url(base, &grouping("", None, None)).ends_with("/match@base64/="));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn files_are_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("sweeper-publish-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("summary.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        let err = write_atomically(&dir.join("missing/x.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/x.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
