//! One Redis node's connection: retries, throttling, SCAN pages. With [`crate::redis::cluster`] (which
//! routes per-key commands to the node owning each key), the only code that speaks Redis. It
//! never uses KEYS.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::redis::layout::Probe;
use crate::redis::pace::{self, Pace, Pacing};
use crate::redis::tls::RedisTls;
use crate::retry::{self, Backoff};

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
    /// Shared by the clones of this source: they speak over the same connection.
    pace: Pace,
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
            pace: Pace::default(),
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

    /// How fast to talk to this node from now on (see [`crate::redis::pace`]).
    pub fn set_pacing(&mut self, pacing: Pacing) {
        self.pace = Pace::new(pacing);
    }

    /// This node's pace, shared with the clones of this source.
    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    /// Commands per pipeline at most (fetches are split to it too): small while paced.
    pub fn max_pipeline(&self) -> usize {
        self.pace.max_pipeline()
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
        self.sample().await;
        let wait = self.pace.reserve(pipe.len());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let backoff = Backoff::default();
        let mut n = 0;
        loop {
            self.round_trips += 1;
            let reply = {
                let _shared = self.pace.gate().read().await;
                self.pace.sent(pipe.len());
                pipe.query_async::<Value>(&mut self.conn).await
            };
            let reply = reply.and_then(|v| match first_server_error(&v) {
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

    /// Samples `INFO` when due, with none of the sweep's own pipelines in flight, to see whether
    /// other clients are using this node (see [`crate::redis::pace`]).
    async fn sample(&mut self) {
        if !self.pace.sample_due() {
            return;
        }
        let _alone = self.pace.gate().write().await;
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("stats").cmd("INFO").arg("keyspace");
        self.round_trips += 1;
        let reply = pipe.query_async::<Value>(&mut self.conn).await;
        let db = self.client.get_connection_info().redis_settings().db();
        let info = match reply {
            // A dropped connection: the query after this one deals with it.
            Err(_) => {
                self.pace.abandon();
                return;
            }
            // NOPERM, or INFO renamed away.
            Ok(v) if first_server_error(&v).is_some() => None,
            Ok(v) => redis::from_redis_value::<(String, String)>(v)
                .ok()
                .and_then(|(stats, keyspace)| pace::parse_info(&stats, &keyspace, db)),
        };
        let Some((total, keys)) = info else {
            self.pace.refused();
            tracing::warn!(
                redis = %self.url,
                busy_ops_per_sec = self.pace.pacing().busy_ops_per_sec,
                "INFO is refused, so other clients cannot be seen: reading at the busy pace throughout (grant INFO, or pass --busy-redis-ops-per-sec 0 for full speed)"
            );
            return;
        };
        let seen = self.pace.observe(total, keys, pipe.len());
        if let Some(rate) = seen.rate.filter(|_| seen.others_per_sec > 0.0) {
            let first = self.pace.first_yield();
            let msg = "other clients are using Redis: sweeping at a gentler pace";
            let others = seen.others_per_sec.round() as u64;
            match first {
                true => {
                    tracing::info!(redis = %self.url, others_per_sec = others, ops_per_sec = rate, "{msg}")
                }
                false => {
                    tracing::debug!(redis = %self.url, others_per_sec = others, ops_per_sec = rate, "{msg}")
                }
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
            .arg(count.min(self.max_pipeline()));
        let (page,): ((u64, Vec<Vec<u8>>),) = self.query(&pipe).await?;
        Ok(page)
    }

    /// The slot map of the cluster this node belongs to (`CLUSTER SLOTS`).
    pub async fn cluster_slots(&mut self) -> Result<Vec<crate::redis::slots::SlotRange>> {
        let mut pipe = redis::pipe();
        pipe.cmd("CLUSTER").arg("SLOTS");
        let (reply,): (Value,) = self.query(&pipe).await?;
        let asked = self.client.get_connection_info().addr().to_string();
        crate::redis::slots::parse_cluster_slots(&reply, &asked).ok_or_else(|| Error::Redis {
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
        Ok(crate::redis::slots::parse_importing(&nodes))
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
/// 32 MiB (`FETCH_BUDGET_BYTES`; a run holds at least one key), so memory stays bounded even when
/// a page holds many large checkpoints.
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
/// and ASK of a cluster in resharding (followed by [`crate::redis::cluster`]).
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
    use crate::redis::layout::Layout;

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
