//! One Redis node's connection: retries, throttling, SCAN pages. With [`crate::redis::cluster`] (which
//! routes per-key commands to the node owning each key), the only code that speaks Redis. It
//! never uses KEYS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::redis::layout::Probe;
use crate::redis::pace::{self, Pace, Pacing};
use crate::redis::sentinel::{self, SentinelUrl};
use crate::redis::tls::RedisTls;
use crate::retry::{self, Retries};

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
    /// Whether this handle's pipelines wait for the pace (they are counted either way).
    paced: bool,
    /// Set when a pipeline of this source or a clone gave up after its retries, cleared by the
    /// next that goes through: while set, a failing pipeline is not retried. Protecting the
    /// keys of each batch after Redis died retried for 30 s each, one after the other.
    gave_up: Arc<AtomicBool>,
    /// Set when the URL names sentinels: they are asked again for the primary when this one
    /// refuses writes or the connection to it fails.
    sentinel: Option<Arc<Sentinels>>,
    /// Bumped when this source follows the sentinels to another node: a SCAN cursor of the old
    /// node means nothing on the new one (another hash table, another seed).
    epoch: u64,
    /// The epoch of the last SCAN page.
    scan_epoch: u64,
}

/// Keys Redis evicts to stay under `maxmemory`, before their TTL runs out: with
/// `volatile-ttl` exactly the due ones, the keys closest to expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evictions {
    pub policy: String,
    /// Since the server started (`evicted_keys`).
    pub evicted: u64,
}

impl Evictions {
    pub fn parse(memory: &str, stats: &str) -> Option<Evictions> {
        let field = |text: &str, name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
        };
        Some(Evictions {
            policy: field(memory, "maxmemory_policy")?,
            evicted: field(stats, "evicted_keys")?.parse().ok()?,
        })
    }

    /// Whether the policy may evict a conversation key (it has a TTL): any but `noeviction`.
    pub fn can_evict(&self) -> bool {
        self.policy != "noeviction"
    }
}

/// A resolver answering one address whatever the name: see [`Source::connect_via`].
struct Dial(SocketAddr);

impl redis::io::AsyncDNSResolver for Dial {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _host: &'b str,
        _port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        let addr = self.0;
        Box::pin(async move {
            Ok(Box::new(std::iter::once(addr)) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// What a source needs to ask the sentinels again.
struct Sentinels {
    url: SentinelUrl,
    tls: RedisTls,
    timeouts: Timeouts,
}

impl Source {
    /// Connects, failing within `timeouts.connect` when Redis is down. A `redis+sentinel://` URL
    /// connects to the primary the sentinels name.
    pub async fn connect(url: &str, tls: &RedisTls, timeouts: Timeouts) -> Result<Source> {
        Source::connect_via(url, tls, timeouts, None).await
    }

    /// [`Source::connect`], dialling `dial` whatever the URL's host resolves to: TLS still checks
    /// the certificate against the URL's host name (a cluster node announced by its address,
    /// reached under the name the operator configured).
    pub async fn connect_via(
        url: &str,
        tls: &RedisTls,
        timeouts: Timeouts,
        dial: Option<SocketAddr>,
    ) -> Result<Source> {
        let (url, sentinel) = match sentinel::is_sentinel_url(url) {
            false => (url.to_string(), None),
            true => {
                let s = Sentinels {
                    url: SentinelUrl::parse(url)?,
                    tls: tls.clone(),
                    timeouts,
                };
                (s.primary().await?, Some(Arc::new(s)))
            }
        };
        let shown = redact_url(&url);
        let client = tls.client(&url, timeouts.operation)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            // No answer within this, the connection counts as lost (a silent network).
            .set_response_timeout(Some(timeouts.operation));
        let config = match dial {
            Some(addr) => config.set_dns_resolver(Dial(addr)),
            None => config,
        };
        let shown = match dial {
            Some(addr) => format!("{shown} ({addr})"),
            None => shown,
        };
        // Refused or reset connections are retried until `timeout`.
        let conn = retry::within("connecting to Redis", timeouts.connect, || async {
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
            paced: true,
            gave_up: Arc::default(),
            sentinel,
            epoch: 0,
            scan_epoch: 0,
        };
        // Authentication and reachability problems show here, not in the middle of a sweep.
        let mut ping = redis::pipe();
        ping.cmd("PING");
        source.query::<Value>(&ping).await?;
        Ok(source)
    }

    /// What `INFO memory` and `INFO stats` say of evictions: the `maxmemory-policy` and the
    /// keys evicted since the server started. None when INFO is refused (an ACL). Not counted
    /// as a round trip of the sweep.
    pub async fn evictions(&self) -> Option<Evictions> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("memory").cmd("INFO").arg("stats");
        let (memory, stats): (String, String) =
            pipe.query_async(&mut self.conn.clone()).await.ok()?;
        Evictions::parse(&memory, &stats)
    }

    /// Refuses a sentinel reached as a node (`ROLE` says so): it holds no keys.
    pub async fn refuse_sentinel(&self) -> Result<()> {
        if self.sentinel.is_none() && self.is_sentinel().await {
            return Err(Error::Usage(format!(
                "Redis at {} is a Redis Sentinel, which holds no keys: name the service with redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE",
                self.url
            )));
        }
        Ok(())
    }

    /// Whether this is a sentinel (`ROLE` says so). Not counted as a round trip of the sweep.
    async fn is_sentinel(&self) -> bool {
        let role: redis::RedisResult<Value> =
            redis::cmd("ROLE").query_async(&mut self.conn.clone()).await;
        matches!(role, Ok(Value::Array(items)) if matches!(items.first(), Some(Value::BulkString(r)) if r == b"sentinel"))
    }

    /// A fresh connection, to the primary the sentinels name now when they are in use.
    async fn reconnect(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(s) = self.sentinel.clone() {
            match s.primary().await {
                Ok(url) if redact_url(&url) != self.url => {
                    tracing::warn!(from = %self.url, to = %redact_url(&url), "Redis Sentinel names another primary: following it");
                    if let Ok(client) = s.tls.client(&url, s.timeouts.operation) {
                        self.client = client;
                        self.url = redact_url(&url);
                        self.epoch += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Redis Sentinel could not name a primary"),
            }
        }
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }

    /// Retries give up rather than pause past this instant.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// How fast to talk to this node from now on (see [`crate::redis::pace`]).
    pub fn set_pacing(&mut self, pacing: Pacing) {
        self.pace = Pace::new(pacing);
    }

    /// Whether this handle waits for the pace (see [`crate::redis::Nodes::unpaced`]).
    pub fn set_paced(&mut self, paced: bool) {
        self.paced = paced;
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
    /// This source on a connection of its own (a clone shares its connection): Redis serves
    /// each connection's commands in order, so a step that must not queue behind another's
    /// pipelines gets its own. On failure it stays shared (its queries reconnect as usual).
    pub async fn detach(&mut self) {
        if let Ok(conn) = self.reconnect().await {
            self.conn = conn;
        }
    }

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
        if self.paced {
            let wait = self.pace.reserve(pipe.len());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let mut retries = Retries::new(self.deadline);
        loop {
            let reply = match retries.retried() {
                // A dropped multiplexed connection stays dropped: open another. A failure to is
                // this try's failure (a silent network: no second wait on the old connection).
                true => match self.reconnect().await {
                    Ok(conn) => {
                        self.conn = conn;
                        self.send(pipe).await
                    }
                    Err(e) => Err(e),
                },
                false => self.send(pipe).await,
            };
            let err = match reply {
                Ok(v) => {
                    self.gave_up.store(false, Ordering::SeqCst);
                    return Ok(v);
                }
                Err(source) => Error::Redis {
                    url: self.url.clone(),
                    source,
                },
            };
            let pause = match self.gave_up.load(Ordering::SeqCst) && err.is_transient() {
                true => None,
                false => retries.pause(&err, "reading from Redis"),
            };
            let Some(pause) = pause else {
                if err.is_transient() {
                    self.gave_up.store(true, Ordering::SeqCst);
                }
                return Err(err);
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// One try of a pipeline on the current connection.
    async fn send<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        self.round_trips += 1;
        let reply = {
            let _shared = self.pace.gate().read().await;
            self.pace.sent(pipe.len());
            pipe.query_async::<Value>(&mut self.conn).await
        };
        reply.and_then(|v| match first_server_error(&v) {
            Some(e) => Err(e.into()),
            None => Ok(redis::from_redis_value::<T>(v)?),
        })
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
        let mut cursor = cursor;
        loop {
            // A new primary (a failover followed): its keys are walked again from the start;
            // the keys seen twice are handled once.
            if cursor != 0 && self.epoch != self.scan_epoch {
                tracing::warn!(redis = %self.url, "the primary changed mid-scan: scanning it again from the start");
                cursor = 0;
            }
            self.scan_epoch = self.epoch;
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count.min(self.max_pipeline()));
            let (page,): ((u64, Vec<Vec<u8>>),) = self.query(&pipe).await?;
            if self.epoch == self.scan_epoch {
                return Ok(page);
            }
        }
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

impl Sentinels {
    /// The primary's node URL, asking until `timeouts.connect` (a failover takes a few seconds).
    async fn primary(&self) -> Result<String> {
        retry::within(
            "asking Redis Sentinel for the primary",
            self.timeouts.connect,
            || self.url.primary(&self.tls, self.timeouts.connect),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_come_from_info_memory_and_stats() {
        let e = Evictions::parse(
            "# Memory\r\nused_memory:1\r\nmaxmemory_policy:volatile-ttl\r\n",
            "# Stats\r\nevicted_keys:42\r\n",
        )
        .unwrap();
        assert_eq!(e.policy, "volatile-ttl");
        assert_eq!(e.evicted, 42);
        assert!(e.can_evict());
        assert!(Evictions::parse("", "evicted_keys:1").is_none());
        let none = Evictions::parse("maxmemory_policy:noeviction", "evicted_keys:0").unwrap();
        assert!(!none.can_evict());
    }
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
