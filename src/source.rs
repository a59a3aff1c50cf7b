//! One Redis node's connection: retries, throttling, SCAN pages. With [`crate::cluster`] (which
//! routes per-key commands to the node owning each key), the only code that speaks Redis. It
//! never uses KEYS.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::config::redact_url;
use crate::error::{Error, Result};
use crate::layout::Probe;
use crate::retry::{self, Backoff};
use crate::tls::RedisTls;

/// Values fetched in one pipeline are capped at this many bytes together, so memory stays bounded
/// even when a page holds many large checkpoints.
const FETCH_BUDGET_BYTES: u64 = 32 * 1024 * 1024;

/// A connection to one Redis node. Reads are retried on transient errors (a dropped connection
/// is replaced first): every command here is safe to repeat.
#[derive(Clone)]
pub struct Source {
    client: redis::Client,
    config: AsyncConnectionConfig,
    conn: MultiplexedConnection,
    url: String,
    round_trips: u64,
    deadline: Option<Instant>,
    throttle: Option<Throttle>,
    /// Commands per pipeline at most: small under a throttle, so that no single burst holds
    /// Redis long.
    max_pipeline: usize,
}

/// Spaces pipelines so that at most a given number of commands per second reach Redis, for
/// operators who must protect a busy primary.
#[derive(Clone, Debug)]
struct Throttle {
    per_command: Duration,
    next: Instant,
}

impl Source {
    /// Connects, failing within `timeout` when Redis is down.
    pub async fn connect(url: &str, tls: &RedisTls, timeout: Duration) -> Result<Source> {
        let shown = redact_url(url);
        let client = tls.client(url)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            // A single pipeline of large values can legitimately take a while.
            .set_response_timeout(Some(timeout.max(Duration::from_secs(30))));
        // Refused or reset connections are retried until `timeout`.
        let conn = retry::within("connecting to Redis", timeout, || async {
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|source| Error::Redis {
                    url: shown.clone(),
                    source,
                })
        })
        .await?;
        let mut source = Source {
            client,
            config,
            conn,
            url: shown,
            round_trips: 0,
            deadline: None,
            throttle: None,
            max_pipeline: usize::MAX,
        };
        // Authentication and reachability problems show here, not in the middle of a sweep.
        let mut ping = redis::pipe();
        ping.cmd("PING");
        source.query::<Value>(&ping).await?;
        Ok(source)
    }

    /// Retries give up rather than pause past this instant.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// At most `ops_per_sec` commands per second from this source (0: no limit).
    pub fn set_rate_limit(&mut self, ops_per_sec: u32) {
        self.throttle = (ops_per_sec > 0).then(|| Throttle {
            per_command: Duration::from_secs(1) / ops_per_sec,
            next: Instant::now(),
        });
        // Pipelines of at most 5ms of the budget each.
        self.max_pipeline = match ops_per_sec {
            0 => usize::MAX,
            n => (n as usize / 200).clamp(10, 1000),
        };
    }

    /// Commands per pipeline at most (fetches are split to it too).
    pub fn max_pipeline(&self) -> usize {
        self.max_pipeline
    }

    /// Pipelines sent so far (each SCAN, PTTL batch, probe and fetch is one).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Sends one pipeline, retrying transient failures on a fresh connection. Per-key WRONGTYPE
    /// replies (of pipelines with `ignore_errors`) are data for the caller; any other server
    /// error (LOADING, MASTERDOWN, NOPERM, ...) fails the whole pipeline, so that it is retried
    /// or ends the run, never mistaken for a bad or vanished key.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        if let Some(t) = &mut self.throttle {
            let now = Instant::now();
            let start = t.next.max(now);
            t.next = start + t.per_command * pipe.len() as u32;
            if start > now {
                tokio::time::sleep(start - now).await;
            }
        }
        let backoff = Backoff::default();
        let mut n = 0;
        loop {
            self.round_trips += 1;
            let reply = pipe
                .query_async::<Value>(&mut self.conn)
                .await
                .and_then(|v| match first_server_error(&v) {
                    Some(e) => Err(e.into()),
                    None => Ok(redis::from_redis_value::<T>(v)?),
                });
            let err = match reply {
                Ok(v) => return Ok(v),
                Err(source) => Error::Redis {
                    url: self.url.clone(),
                    source,
                },
            };
            let Some(pause) = backoff.pause(n, &err, self.deadline, "reading from Redis") else {
                return Err(err);
            };
            tokio::time::sleep(pause).await;
            n += 1;
            // A dropped multiplexed connection stays dropped: open another. If that fails, the
            // retry above fails too and counts against the attempts.
            if let Ok(conn) = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
            {
                self.conn = conn;
            }
        }
    }

    /// One SCAN step: the next cursor (0 when done) and the keys of this page.
    pub async fn scan_page(
        &mut self,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count.min(self.max_pipeline));
        let (page,): ((u64, Vec<Vec<u8>>),) = self.query(&pipe).await?;
        Ok(page)
    }

    /// The slot map of the cluster this node belongs to (`CLUSTER SLOTS`).
    pub async fn cluster_slots(&mut self) -> Result<Vec<crate::cluster::SlotRange>> {
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER").arg("SLOTS");
        let (reply,): (Value,) = self.query(&pipe).await?;
        let asked = self.client.get_connection_info().addr().to_string();
        crate::cluster::parse_cluster_slots(&reply, &asked).ok_or_else(|| Error::Redis {
            url: self.url.clone(),
            source: redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "CLUSTER SLOTS",
                format!("{reply:?}"),
            )),
        })
    }

    /// The slots this cluster node is importing (`CLUSTER NODES`).
    pub async fn importing_slots(&mut self) -> Result<Vec<u16>> {
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER").arg("NODES");
        let (nodes,): (String,) = self.query(&pipe).await?;
        Ok(crate::cluster::parse_importing(&nodes))
    }

    /// Whether this node is part of a cluster (`INFO cluster`). A node that will not say (an ACL
    /// without INFO) is taken as a single node. Not counted as a round trip of the sweep.
    pub async fn is_cluster_node(&self) -> bool {
        let mut conn = self.conn.clone();
        let info: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await;
        info.is_ok_and(|i| i.contains("cluster_enabled:1"))
    }
}

/// Splits probed keys into consecutive runs of at most `max_keys` whose values add up to at most
/// [`FETCH_BUDGET_BYTES`] (a run holds at least one key), so memory stays bounded even when a page
/// holds many large checkpoints.
pub fn fetch_chunks(probes: &[Probe], max_keys: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, p) in probes.iter().enumerate() {
        let size = match p {
            Probe::Read { size, .. } => *size,
            _ => 0,
        };
        if i > start && (bytes + size > FETCH_BUDGET_BYTES || i - start >= max_keys) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < probes.len() {
        out.push(start..probes.len());
    }
    out
}

/// The first server error in a reply other than the per-key answers: WRONGTYPE, and the MOVED
/// and ASK of a cluster in resharding (followed by [`crate::cluster`]).
fn first_server_error(v: &Value) -> Option<redis::ServerError> {
    let per_key = |e: &redis::ServerError| matches!(e.code(), "WRONGTYPE" | "MOVED" | "ASK");
    match v {
        Value::ServerError(e) if !per_key(e) => Some(e.clone()),
        Value::Array(items) => items.iter().find_map(|i| match i {
            Value::ServerError(e) if !per_key(e) => Some(e.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// A key as text for logs and tables: UTF-8 keys as they are, other bytes escaped (`\xff`).
pub fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.contains('\0') => s.to_string(),
        _ => key.escape_ascii().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    #[test]
    fn fetch_chunks_stay_within_the_budget() {
        let mb = 1024 * 1024;
        let probes: Vec<Probe> = [10, 10, 10, 10, 40, 1, 1]
            .iter()
            .map(|m| Probe::Read {
                layout: Layout::Json,
                size: m * mb,
            })
            .chain([Probe::Gone, Probe::WrongType("hash".into())])
            .collect();
        let chunks = fetch_chunks(&probes, usize::MAX);
        assert_eq!(chunks, vec![0..3, 3..4, 4..5, 5..9]);
        assert_eq!(fetch_chunks(&probes, 2), vec![0..2, 2..4, 4..5, 5..7, 7..9]);
        for c in &chunks {
            let total: u64 = probes[c.clone()]
                .iter()
                .map(|p| match p {
                    Probe::Read { size, .. } => *size,
                    _ => 0,
                })
                .sum();
            assert!(
                total <= FETCH_BUDGET_BYTES || c.len() == 1,
                "{c:?}: {total}"
            );
        }
        assert!(fetch_chunks(&[], 10).is_empty());
    }
}
