//! `sweeper` saves ending chat conversations from Redis checkpoints into PostgreSQL.
//!
//! A chat service keeps each live conversation in Redis under `checkpoint:{conversation_id}` and
//! refreshes its TTL on every turn. A sweep, run on a schedule, finds the keys whose TTL has run low
//! (the conversation is ending) and bulk-upserts them into PostgreSQL before Redis drops them.
//!
//! # Layout
//! Data flows one way, one module per step:
//!
//! - [`source`] and [`cluster`]: the only code that speaks Redis: one node's connection and SCAN
//!   pages; the node or cluster primaries a sweep reads, per-key pipelines (PTTL, probe, fetch)
//!   routed to each key's owner, MOVED and ASK followed. [`pace`]: how fast they talk to a node
//!   (full speed alone, gentler while other clients use it).
//! - [`layout`]: how a checkpoint is stored in Redis (JSON string, hash, list, RedisJSON) and read
//!   back as one JSON document.
//! - [`select`]: which keys are due, from their TTL alone. Pure.
//! - [`checkpoint`]: the checkpoint document, decoded and validated, or rejected with a reason. Pure.
//! - [`decode`]: the decode stage of a sweep: values read become batches of checkpoints and
//!   rejects, on a task of its own so decoding overlaps the Redis round trips.
//! - [`store`]: the only code that speaks PostgreSQL: migrations, bulk upserts, rejects, runs.
//! - [`langgraph`]: `--format langgraph`: a LangGraph app's threads, read whole from
//!   langgraph-checkpoint-redis's keys ([`langgraph::read`]) and written into LangGraph's own
//!   PostgresSaver tables ([`langgraph::store`]), through the same sweep.
//! - [`sweep`]: the pipeline tying them: Redis task -> decode task -> bounded channel -> Postgres
//!   writers.
//! - [`report`]: the run summary, as text for people or JSON for orchestrators.
//! - [`publish`]: the summary and metrics in files and on a Pushgateway, for orchestrators.
//!
//! Around them: [`tls`] (certificates for `rediss://`), [`config`] (validated settings, no I/O), [`error`] (typed errors, what is
//! transient, exit codes), [`retry`] (the one backoff policy), [`shutdown`] (SIGINT and SIGTERM),
//! [`schedule`] (cron expressions and whether a schedule can lose a key), [`daemon`] (sweeps on a
//! schedule without an orchestrator), [`shard`] (which keys a worker of a sharded sweep owns),
//! [`glob`] (Redis glob patterns, for keys read by slot),
//! [`simulate`] (plays the chat service to seed demos, tests and benchmarks), [`inspect`] (what
//! the keyspace holds, before trusting a sweep), [`restore`] (a saved conversation back into
//! Redis), [`progress`] (a spinner for people at a terminal).

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod error;
pub mod glob;
pub mod inspect;
pub mod langgraph;
pub mod layout;
pub mod mapping;
pub mod pace;
pub mod progress;
pub mod publish;
pub mod report;
pub mod restore;
pub mod retry;
pub mod schedule;
pub mod select;
pub mod shard;
pub mod shutdown;
pub mod simulate;
pub mod source;
pub mod store;
pub mod sweep;
pub mod tls;

pub use error::{Error, Result};
