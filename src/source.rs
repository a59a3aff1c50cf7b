//! The only code that speaks Redis: SCAN pages, pipelined PTTLs, pipelined reads. It never writes
//! (a sweep changes nothing in Redis) and never uses KEYS.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::config::redact_url;
use crate::error::{Error, Result};
use crate::layout::{Fetched, Layout, Probe};
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
}

impl Source {
    /// Connects, failing within `timeout` when Redis is down.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Source> {
        let shown = redact_url(url);
        let client = redis::Client::open(url)
            .map_err(|e| Error::Usage(format!("invalid --redis-url {shown}: {e}")))?;
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

    /// The connection, for the simulator that plays the chat service.
    pub fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// Pipelines sent so far (each SCAN, PTTL batch, probe and fetch is one).
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Sends one pipeline, retrying transient failures on a fresh connection.
    async fn query<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T> {
        let backoff = Backoff::default();
        let mut n = 0;
        loop {
            self.round_trips += 1;
            let err = match pipe.query_async(&mut self.conn).await {
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
            .arg(count);
        let (page,): ((u64, Vec<Vec<u8>>),) = self.query(&pipe).await?;
        Ok(page)
    }

    /// PTTL of every key, in one pipeline: milliseconds left, -1 without TTL, -2 gone.
    pub async fn pttls(&mut self, keys: &[Vec<u8>]) -> Result<Vec<i64>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("PTTL").arg(k);
        }
        self.query(&pipe).await
    }

    /// Reads the checkpoints at `keys`: one probe pipeline, then fetch pipelines of at most
    /// [`FETCH_BUDGET_BYTES`] each. Per-key problems come back as [`Fetched`] variants; only a
    /// failing connection is an error.
    pub async fn read(
        &mut self,
        layout: Layout,
        keys: &[Vec<u8>],
        max_value_bytes: u64,
    ) -> Result<Vec<Fetched>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for k in keys {
            layout.queue_probe(&mut pipe, k);
        }
        let replies: Vec<Value> = self.query(&pipe).await?;
        let probes: Vec<Probe> = replies
            .chunks(Layout::PROBE_REPLIES)
            .map(|r| layout.probe_result(r, max_value_bytes))
            .collect();

        let mut out = Vec::with_capacity(keys.len());
        let mut start = 0;
        while start < keys.len() {
            // Take keys until the byte budget is spent (always at least one).
            let mut end = start;
            let mut bytes = 0u64;
            while end < keys.len() {
                let size = match probes[end] {
                    Probe::Read { size } => size,
                    _ => 0,
                };
                if end > start && bytes + size > FETCH_BUDGET_BYTES {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let queued: Vec<bool> = (start..end)
                .map(|i| layout.queue_fetch(&mut pipe, &keys[i], &probes[i]))
                .collect();
            let mut replies = if queued.iter().any(|q| *q) {
                self.query::<Vec<Value>>(&pipe).await?.into_iter()
            } else {
                Vec::new().into_iter()
            };
            for (i, q) in (start..end).zip(queued) {
                let reply = if q { replies.next() } else { None };
                out.push(layout.fetched(probes[i].clone(), reply));
            }
            start = end;
        }
        Ok(out)
    }
}

impl Source {
    /// Raises the TTL of `keys` to `ttl`, never lowering it (PEXPIRE GT: a key without TTL or
    /// with more left is untouched). Returns how many keys were raised.
    pub async fn protect(&mut self, keys: &[Vec<u8>], ttl: Duration) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("PEXPIRE")
                .arg(k)
                .arg(ttl.as_millis() as u64)
                .arg("GT");
        }
        let replies: Vec<Value> = self.query(&pipe).await?;
        Ok(replies
            .iter()
            .filter(|v| matches!(v, Value::Int(1)))
            .count() as u64)
    }
}

/// A key as text for logs and tables: UTF-8 keys as they are, other bytes escaped (`\xff`).
pub fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.contains('\0') => s.to_string(),
        _ => key.escape_ascii().to_string(),
    }
}
