//! The read stage: SCAN every primary (or a shard's slots), select the due keys by their TTL,
//! and read them with the layout's [`DueReader`] for the decode stage. While PostgreSQL is down
//! or stuck, due keys are protected instead of read.

use std::time::Instant;

use tokio::sync::mpsc;

use super::decode;
use super::health::Health;
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
    /// While PostgreSQL fails: due keys are protected, not read.
    health: Health,
    counters: Counters,
    /// Due keys selected so far, for the progress line.
    selected: u64,
    /// How the layout's due keys are read (and which keys protect them).
    due_reader: DueReader,
}

impl Reader {
    pub(super) fn new(
        cfg: SweepConfig,
        shutdown: Shutdown,
        deadline: Option<Instant>,
        health: Health,
    ) -> Reader {
        Reader {
            shutdown,
            deadline,
            health,
            counters: Counters::default(),
            selected: 0,
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
        let mut handles = Handles::of(&source).await;
        let result = self.scan(&mut source, &mut handles, &tx).await;
        self.cfg.progress.finish();
        self.counters.redis_round_trips = source.round_trips() + handles.round_trips();
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
    async fn scan(
        &mut self,
        source: &mut Nodes,
        handles: &mut Handles,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Stop> {
        for walk in source.walks(self.cfg.shard).await? {
            if let Some(stop) = self.scan_node(source, handles, walk, tx).await? {
                return Ok(stop);
            }
        }
        Ok(Stop::Done)
    }

    /// Reads one primary to the end; Some when the sweep must stop early. Selecting and reading
    /// run side by side, each on its own [handle](Handles), a page or two apart: the next page's
    /// SCAN (or slot reads) and this page's TTLs, while the due keys of the pages before are
    /// read; so no step waits for another's round trips.
    async fn scan_node(
        &mut self,
        source: &mut Nodes,
        handles: &mut Handles,
        walk: Walk,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        let Handles {
            scanner,
            chooser,
            second,
        } = handles;
        // Two pages' due keys wait while others are read: memory stays bounded by pages.
        let (due_tx, due_rx) = mpsc::channel(2);
        let mut taker = Taker {
            due_reader: self.due_reader.clone(),
            batch_size: self.cfg.batch_size,
            protect_ttl: self.cfg.protect_ttl,
            health: self.health.clone(),
            counters: Counters::default(),
            flushed: false,
        };
        let (taken, chosen) = {
            let taking = taker.run([source, second], due_rx, tx);
            let choosing = self.scan_pages(scanner, chooser, walk, due_tx);
            tokio::pin!(taking, choosing);
            // The first to fail stops the other at once (on a partition both would, each after
            // its own retries): what was read is written, the next run reads the rest.
            tokio::select! {
                taken = &mut taking => match taken {
                    Err(e) => (Err(e), Ok(None)),
                    taken => (taken, choosing.await),
                },
                chosen = &mut choosing => match chosen {
                    Err(e) => (Ok(None), Err(e)),
                    chosen => (taking.await, chosen),
                },
            }
        };
        self.counters.merge_read(&taker.counters);
        // Reading stopped first (the writers have gone), or failed: that is why the scan ended.
        match (taken?, chosen?) {
            (Some(stop), _) | (None, Some(stop)) => Ok(Some(stop)),
            (None, None) => Ok(None),
        }
    }

    /// Scans and selects page by page, handing each page's due keys to the [`Taker`]; Some when
    /// the sweep must stop early. Every page selected is read: a page is handled whole.
    async fn scan_pages(
        &mut self,
        scanner: &mut Nodes,
        chooser: &mut Nodes,
        mut walk: Walk,
        due_tx: mpsc::Sender<Vec<(Vec<u8>, u64)>>,
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
            let (due, next) = if chooser.throttled() {
                // Under a throttle, being gentle beats being fast: one step at a time.
                let due = self.choose(chooser, keys).await?;
                (due, scanner.next_page(&mut walk, &pattern, count).await)
            } else {
                let (due, next) = tokio::join!(
                    self.choose(chooser, keys),
                    scanner.next_page(&mut walk, &pattern, count)
                );
                (due?, next)
            };
            if !due.is_empty() && due_tx.send(due).await.is_err() {
                // The taker has stopped; it says why.
                return Ok(None);
            }
            page = next?;
        }
    }

    /// Selects the due keys of one page (for a shard, of its own keys).
    async fn choose(
        &mut self,
        source: &mut Nodes,
        mut keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, u64)>> {
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
        Ok(due)
    }

    /// PTTLs of a page; returns the due keys with their TTL left.
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
                // A key SCAN returns twice (Redis may, while its table shrinks) is read twice:
                // remembering every due key would make memory grow with the keyspace, and the
                // second read finds it stored as it is (counted unchanged).
                Ttl::Due { ttl_ms } => due.push((key, ttl_ms)),
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
                } else {
                    due.push((key, 0));
                }
            }
        }
        Ok(due)
    }
}

/// The handles a sweep's steps use beside the reader's own, each on a connection of its own
/// (per node): Redis serves a connection's commands in order, so on one shared connection the
/// reads of due keys waited behind the next page's SCAN and TTLs (a 1M-key LangChain dry run
/// took 3.5 s on one, 2.95 s on four). So a sweep holds four connections to each node.
struct Handles {
    /// SCANs ahead.
    scanner: Nodes,
    /// Reads the TTLs of the page SCANned before.
    chooser: Nodes,
    /// Reads due keys beside the reader's own handle.
    second: Nodes,
}

impl Handles {
    async fn of(source: &Nodes) -> Handles {
        let mut h = Handles {
            scanner: source.clone(),
            chooser: source.clone(),
            second: source.clone(),
        };
        for n in [&mut h.scanner, &mut h.chooser, &mut h.second] {
            n.detach().await;
        }
        h
    }

    fn round_trips(&self) -> u64 {
        [&self.scanner, &self.chooser, &self.second]
            .iter()
            .map(|n| n.round_trips())
            .sum()
    }
}

/// Takes the due keys the selection hands over: reads them for the decode stage, or protects
/// them while PostgreSQL is down.
struct Taker {
    due_reader: DueReader,
    batch_size: usize,
    protect_ttl: std::time::Duration,
    health: Health,
    /// What protection counted (kept whatever happens to the run).
    counters: Counters,
    /// Whether the decode stage was told to hand over what it holds since protecting began.
    flushed: bool,
}

impl Taker {
    /// Takes every page handed over; Some when the sweep must stop early. Two pages waiting
    /// are read side by side, on two handles: a layout read in two round trips (probe, then
    /// fetch) keeps up with the selection.
    async fn run(
        &mut self,
        handles: [&mut Nodes; 2],
        mut due_rx: mpsc::Receiver<Vec<(Vec<u8>, u64)>>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        let [first, second] = handles;
        while let Some(due) = due_rx.recv().await {
            // The decode stage holds what was read until a batch is full: once due keys are
            // protected instead of read, it would hold them until the scan ends, and they ran
            // out meanwhile (34 of the 94 held, in tests/partitions.rs). An empty run tells it
            // to hand them over now, to be protected.
            let protecting = self.protecting();
            if protecting && !self.flushed && tx.send(Vec::new()).await.is_err() {
                return Ok(Some(Stop::WriterGone));
            }
            self.flushed = protecting;
            let taken = match due_rx.try_recv() {
                Ok(next) if !self.protecting() => {
                    let (a, b) =
                        tokio::join!(self.read(first, due, tx), self.read(second, next, tx));
                    a.and_then(|a| b.map(|b| a.or(b)))
                }
                Ok(next) => match self.take(first, due, tx).await {
                    Ok(None) => self.take(first, next, tx).await,
                    other => other,
                },
                Err(_) => self.take(first, due, tx).await,
            };
            if !matches!(taken, Ok(None)) {
                return taken;
            }
        }
        Ok(None)
    }

    /// Whether due keys are protected rather than read: PostgreSQL failed for good, or is stuck
    /// for now (not with `--protect-ttl 0`: nothing is protected then, so the reading waits).
    fn protecting(&self) -> bool {
        self.health.is_down() || (self.health.is_failing() && !self.protect_ttl.is_zero())
    }

    async fn take(
        &mut self,
        source: &mut Nodes,
        due: Vec<(Vec<u8>, u64)>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        if self.protecting() {
            if self.protect_ttl.is_zero() {
                return Ok(Some(Stop::WriterGone));
            }
            let keys: Vec<Vec<u8>> = due.into_iter().map(|(k, _)| k).collect();
            self.counters.due += keys.len() as u64;
            // A LangGraph thread lives in all its keys: each is raised, not only the latest.
            let all = self
                .due_reader
                .keys_to_protect(source, keys.clone())
                .await?;
            let p = source.protect(&all, self.protect_ttl).await?;
            self.counters.due -= decode::count_protected(&mut self.counters, p, &keys);
            return Ok(None);
        }
        self.read(source, due, tx).await
    }

    /// Reads due keys for the decode stage, `--batch-size` keys at a time; Some when the decode
    /// stage has stopped.
    async fn read(
        &self,
        source: &mut Nodes,
        due: Vec<(Vec<u8>, u64)>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        for chunk in due.chunks(self.batch_size) {
            if !self.due_reader.read(source, chunk, tx).await? {
                return Ok(Some(Stop::WriterGone));
            }
        }
        Ok(None)
    }
}
