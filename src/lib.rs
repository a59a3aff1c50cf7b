//! `sweeper` saves ending chat conversations from Redis into PostgreSQL.
//!
//! A chat service keeps each live conversation in Redis under `checkpoint:{conversation_id}` and
//! refreshes its TTL on every turn. A sweep, run on a schedule, finds the keys whose TTL has run low
//! (the conversation is ending) and bulk-upserts them into PostgreSQL before Redis drops them.
//!
//! # Layout
//! Data flows one way: Redis -> selection -> decoding -> PostgreSQL -> report. One folder per
//! side, one module per concern:
//!
//! - [`redis`]: the only code that speaks Redis: a node ([`redis::node`]), a cluster's primaries
//!   and the routing of per-key commands ([`redis::cluster`]), how a conversation is stored under
//!   its key ([`redis::layout`]), reading the due keys' values ([`redis::read`]), pace, TLS, glob,
//!   LangGraph threads read whole ([`redis::langgraph`]).
//! - [`select`]: which keys are due, from their TTL alone. Pure.
//! - [`checkpoint`]: the checkpoint document, decoded and validated, or rejected with a reason.
//!   Pure. [`mapping`]: a chat library's layout as data (presets, `--mapping` files), decoded into
//!   checkpoints and restored in the library's layout. Pure. [`langgraph`]: a LangGraph thread's rows. Pure.
//! - [`store`]: the only code that speaks PostgreSQL: connect, migrations, the batch write (and
//!   its check of the erasure tombstones), runs and the single-run lock, LangGraph's tables,
//!   erasure and its receipts ([`store::erase`]), retention ([`store::prune`]). SQL in files
//!   beside it.
//! - [`sweep`]: one sweep as stages: read ([`sweep::read`]), decode ([`sweep::decode`]), write
//!   ([`sweep::write`]), protect ([`sweep::protect`]), record ([`sweep::record`]), wired by its
//!   `mod.rs`; [`sweep::health`] tells the reader when PostgreSQL does not take the writes, and
//!   [`sweep::shield`] which keys a slow write holds up are about to run out.
//! - [`run`]: the model of a run (status, counters, summary, run record) that the store and the
//!   report both use. [`report`]: the summary as text and JSON, `status`, and publishing (files,
//!   metrics, Pushgateway).
//! - [`cmd`]: one file per subcommand; [`cli`]: the flags (clap types, flattened groups).
//!
//! Around them: [`config`] (validated settings and every default, no I/O), [`error`] (typed
//! errors, what is transient, exit codes), [`retry`] (the one backoff policy), [`shutdown`]
//! (SIGINT and SIGTERM), [`schedule`] (cron expressions, whether a schedule can lose a key),
//! [`shard`] (which keys a worker of a sharded sweep owns), [`redact`] (passwords out of logs),
//! [`progress`] (a spinner for people at a terminal), [`logs`] (per-key warnings shown for a
//! run's first keys only; stderr and stdout written by threads of their own, so a stalled reader
//! never stalls a sweep).

pub mod checkpoint;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod error;
pub mod langgraph;
pub mod logs;
pub mod mapping;
pub mod progress;
pub mod redact;
pub mod redis;
pub mod report;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod select;
pub mod shard;
pub mod shutdown;
pub mod store;
pub mod sweep;

pub use error::{Error, Result};
