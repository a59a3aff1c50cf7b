//! The read stage: SCAN every primary (or a shard's slots), select the due keys by their TTL,
//! and read them with the layout's [`DueReader`] for the decode stage. While PostgreSQL is down,
//! due keys are protected instead of read.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::decode;
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::redis::Nodes;
use crate::redis::cluster::Walk;
use crate::redis::read::{DueReader, Read};
use crate::run::Counters;
use crate::select::{Ttl, classify, idle_due};
use crate::shutdown::Shutdown;

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Every key was scanned.
    Done,
    Deadline,
    Signal(i32),
    /// The writer has gone; it holds the reason.
    WriterGone,
}

pub(super) struct Reader {
    cfg: SweepConfig,
    shutdown: Shutdown,
    deadline: Option<Instant>,
    /// Set when PostgreSQL has failed: due keys are protected, not read.
    store_down: Arc<AtomicBool>,
    counters: Counters,
    /// Hashes of due keys already handled: SCAN may return a key twice.
    seen: HashSet<u64>,
    hasher: RandomState,
    /// Due keys selected so far, for the progress line.
    selected: u64,
    /// Round trips of the handles that SCAN ahead.
    scan_round_trips: u64,
    /// How the layout's due keys are read (and which keys protect them).
    due_reader: DueReader,
}

impl Reader {
    pub(super) fn new(
        cfg: SweepConfig,
        shutdown: Shutdown,
        deadline: Option<Instant>,
        store_down: Arc<AtomicBool>,
    ) -> Reader {
        Reader {
            shutdown,
            deadline,
            store_down,
            counters: Counters::default(),
            seen: HashSet::new(),
            hasher: RandomState::new(),
            selected: 0,
            scan_round_trips: 0,
            due_reader: DueReader::new(cfg.layout, cfg.max_value_bytes, &cfg.prefix),
            cfg,
        }
    }

    /// Scans to the end (or a stop); returns the counters, why it stopped, and the error that
    /// stopped it early, if one did.
    pub(super) async fn run(
        mut self,
        mut source: Nodes,
        tx: mpsc::Sender<Vec<Read>>,
    ) -> (Counters, Stop, Option<Error>) {
        // What was read before Redis failed is still written: the decode stage sends its last
        // batch when this sender is dropped.
        let result = self.scan(&mut source, &tx).await;
        self.cfg.progress.finish();
        self.counters.redis_round_trips = source.round_trips() + self.scan_round_trips;
        self.counters.redis_yield_ms = source.yielded().as_millis() as u64;
        match result {
            Ok(stop) => (self.counters, stop, None),
            Err(e) => (self.counters, Stop::Done, Some(e)),
        }
    }

    fn should_stop(&self) -> Option<Stop> {
        if let Some(sig) = self.shutdown.signal() {
            return Some(Stop::Signal(sig));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                "deadline reached: stopping the scan; the next sweep goes on from the start"
            );
            return Some(Stop::Deadline);
        }
        None
    }

    /// Reads every primary in turn (one node, or each primary of a cluster; for a shard of a
    /// cluster, the primaries and slots it owns).
    async fn scan(&mut self, source: &mut Nodes, tx: &mpsc::Sender<Vec<Read>>) -> Result<Stop> {
        for walk in source.walks(self.cfg.shard).await? {
            if let Some(stop) = self.scan_node(source, walk, tx).await? {
                return Ok(stop);
            }
        }
        Ok(Stop::Done)
    }

    /// Reads one primary to the end; Some when the sweep must stop early. The next page is
    /// fetched (SCAN, or slot reads) on a second handle while this page is read, so its round
    /// trip is off the critical path (not under a throttle: there, being gentle beats being fast).
    async fn scan_node(
        &mut self,
        source: &mut Nodes,
        walk: Walk,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        let mut scanner = source.clone();
        let before = scanner.round_trips();
        let result = self.scan_pages(source, &mut scanner, walk, tx).await;
        self.scan_round_trips += scanner.round_trips() - before;
        result
    }

    async fn scan_pages(
        &mut self,
        source: &mut Nodes,
        scanner: &mut Nodes,
        mut walk: Walk,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        let (pattern, count) = (self.cfg.pattern.clone(), self.cfg.scan_count);
        let mut page = scanner.next_page(&mut walk, &pattern, count).await?;
        loop {
            if let Some(stop) = self.should_stop() {
                return Ok(Some(stop));
            }
            let Some(keys) = page else {
                return Ok(None);
            };
            let (read, next) = if source.throttled() {
                let read = self.page(source, keys, tx).await;
                if !matches!(read, Ok(None)) {
                    return read;
                }
                (read, scanner.next_page(&mut walk, &pattern, count).await)
            } else {
                tokio::join!(
                    self.page(source, keys, tx),
                    scanner.next_page(&mut walk, &pattern, count)
                )
            };
            if let Some(stop) = read? {
                return Ok(Some(stop));
            }
            page = next?;
        }
    }

    /// Selects, reads and batches one page of keys; Some when the sweep must stop early.
    async fn page(
        &mut self,
        source: &mut Nodes,
        mut keys: Vec<Vec<u8>>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        // A shard counts and reads only its own keys: N shards add up to one whole sweep. (On a
        // cluster its walks read mostly its own slots already; a SCANned primary may still hold
        // keys of a slot it is importing.)
        if let Some(shard) = self.cfg.shard {
            keys.retain(|k| shard.owns(k));
        }
        self.counters.scanned += keys.len() as u64;
        let due = self.select(source, keys).await?;
        self.selected += due.len() as u64;
        self.cfg
            .progress
            .update(self.counters.scanned, self.selected);
        if self.store_down.load(Ordering::SeqCst) {
            if self.cfg.protect_ttl.is_zero() {
                return Ok(Some(Stop::WriterGone));
            }
            let keys: Vec<Vec<u8>> = due.into_iter().map(|(k, _)| k).collect();
            self.counters.due += keys.len() as u64;
            // A LangGraph thread lives in all its keys: each is raised, not only the latest.
            let all = self
                .due_reader
                .keys_to_protect(source, keys.clone())
                .await?;
            let p = source.protect(&all, self.cfg.protect_ttl).await?;
            self.counters.due -= decode::count_protected(&mut self.counters, p, &keys);
        } else if !self.read_due(source, due, tx).await? {
            return Ok(Some(Stop::WriterGone));
        }
        Ok(None)
    }

    /// PTTLs of a page; returns the due keys (once each) with their TTL left.
    async fn select(
        &mut self,
        source: &mut Nodes,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, u64)>> {
        let pttls = source.pttls(&keys).await?;
        let mut due = Vec::new();
        let mut idle = Vec::new();
        for (key, pttl) in keys.into_iter().zip(pttls) {
            match classify(pttl, self.cfg.threshold) {
                Ttl::Due { ttl_ms } => {
                    if self.seen.insert(self.hasher.hash_one(&key)) {
                        due.push((key, ttl_ms));
                    }
                }
                Ttl::NotDue => self.counters.not_due += 1,
                Ttl::NoTtl if self.cfg.save_idle.is_some() => idle.push(key),
                Ttl::NoTtl => self.counters.no_ttl += 1,
                Ttl::Gone => decode::expired(&mut self.counters, &key),
            }
        }
        if let (Some(save_idle), false) = (self.cfg.save_idle, idle.is_empty()) {
            // Keys the library gives no TTL (RedisVL, Agent Framework): due once left alone.
            let idle_secs = source.idle_times(&idle).await?;
            for (key, secs) in idle.into_iter().zip(idle_secs) {
                if !idle_due(secs, save_idle) {
                    self.counters.no_ttl += 1;
                } else if self.seen.insert(self.hasher.hash_one(&key)) {
                    due.push((key, 0));
                }
            }
        }
        Ok(due)
    }

    /// Reads the due keys and hands them to the decode stage, `--batch-size` keys at a time.
    /// False when the decode stage has stopped (the writers have gone).
    async fn read_due(
        &mut self,
        source: &mut Nodes,
        due: Vec<(Vec<u8>, u64)>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<bool> {
        for chunk in due.chunks(self.cfg.batch_size) {
            if !self.due_reader.read(source, chunk, tx).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
