//! The Redis a sweep reads: one node, or every primary of a Redis Cluster (`--redis-cluster`).
//! With [`crate::source`] (one node's connection), the only code that speaks Redis.
//!
//! On a cluster the primaries are discovered with `CLUSTER SLOTS` from the first seed URL that
//! answers; each is SCANned in turn (replicas never: each key is seen once), and every per-key
//! command goes to the node owning the key's slot. During resharding a slot may move between
//! SCAN and the reads: a `MOVED` reply is followed to the new owner (and the slot map refreshed
//! for the next pages), an `ASK` reply to the importing node with `ASKING`. A single node is the
//! same with one node owning every slot, so the sweep has one code path. A sweep writes no
//! values (only TTLs, to protect keys); `simulate` and `restore` write theirs through the same
//! routing ([`Nodes::set_all`], [`Nodes::put_back`]), so they work on a cluster too.
//!
//! A shard of a sharded sweep ([`Nodes::walks`]) reads only the primaries owning slots of its
//! range, and within each only its own slots:
//! - a primary whose slots are all the shard's is SCANned, as in an unsharded sweep;
//! - a primary whose slots the shard shares with other shards is read slot by slot: `CLUSTER
//!   COUNTKEYSINSLOT` for a batch of slots, then `CLUSTER GETKEYSINSLOT slot limit` for the slots
//!   holding keys, whole slots per page up to `--scan-count` keys, the pattern matched here
//!   ([`crate::glob`]: GETKEYSINSLOT has no MATCH). GETKEYSINSLOT has no cursor either (the same
//!   first keys come back on every call), so a slot is read in one call, with a limit a little
//!   above its count: a reply that fills the limit means the slot grew meanwhile and is not
//!   taken. Such slots, and slots of more than [`SLOT_KEYS_MAX`] keys (a hot hash tag), are
//!   SCANned afterwards, the primary's SCAN keeping only their keys. So a page holds at most
//!   about `--scan-count` keys, or one slot of at most `SLOT_KEYS_MAX`, and memory stays bounded.
//!
//! A slot half-migrated when the shard starts (`CLUSTER NODES` of each primary names the slots
//! it imports) is read on the importing node too (the reads of its keys follow the owner's
//! `ASK`). A slot moving while a shard reads it may still be missed by that run (its keys then on
//! a node the shard does not read): the next run reads it from its new owner (if not expired).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use redis::{Pipeline, Value};

use crate::config::redact_url;
use crate::error::{Error, Result};
use crate::layout::{Fetched, Layout, Probe};
use crate::pace::Pacing;
use crate::shard::{SLOTS, Shard, key_slot};
use crate::source::{Source, fetch_chunks};
use crate::tls::RedisTls;

/// Redirections followed for one key before the read fails (a slot moving back and forth).
const MAX_REDIRECTS: usize = 5;

/// A slot with more keys than this is not read by GETKEYSINSLOT (one reply holds the whole
/// slot) but SCANned: memory stays bounded whatever a hash tag gathers in one slot.
pub const SLOT_KEYS_MAX: u64 = 100_000;

/// Slots counted per `CLUSTER COUNTKEYSINSLOT` pipeline.
const COUNT_BATCH: usize = 1024;

/// How a sweep reads one primary's keys: SCAN, or some of its slots one by one (see the module
/// documentation). Pages come from [`Nodes::next_page`].
#[derive(Debug, Clone)]
pub struct Walk {
    /// The primary, by address: indexes into the nodes change when the slot map is read again.
    addr: String,
    step: Step,
}

#[derive(Debug, Clone)]
enum Step {
    /// SCAN from the cursor (None: not started); with `only`, keys of other slots are dropped.
    Scan {
        cursor: Option<u64>,
        only: Option<Vec<bool>>,
    },
    /// Slots still to count, counted slots with keys to read, and the slots left to a SCAN.
    Slots {
        uncounted: VecDeque<u16>,
        counted: VecDeque<(u16, u64)>,
        scan: Vec<u16>,
    },
    Done,
}

/// The GETKEYSINSLOT limit for a slot counted with `n` keys: room for keys added since the count.
fn slot_limit(n: u64) -> u64 {
    n + n / 4 + 16
}

#[derive(Clone)]
struct Node {
    /// `host:port`, as the cluster names it.
    addr: String,
    source: Source,
}

/// One node, or the primaries of a cluster, with the slot map routing keys to them.
#[derive(Clone)]
pub struct Nodes {
    /// The URL nodes' URLs are made from (scheme, user, password, database): the seed's.
    seed_url: String,
    tls: RedisTls,
    timeout: Duration,
    nodes: Vec<Node>,
    /// `nodes[..primaries]` are SCANned; nodes met later through redirections only serve reads.
    primaries: usize,
    /// Slot -> index in `nodes`; empty for a single node (it owns every slot).
    owner: Vec<u16>,
    deadline: Option<Instant>,
    /// Each node's pacing (its budget already its share of the run's).
    pacing: Pacing,
}

/// Where a key's reply says to go instead.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    Moved(String),
    Ask(String),
}

impl Nodes {
    /// Connects to `urls`: one node, or with `cluster`, any nodes of a cluster (comma-separated
    /// seeds, tried in turn) from which every primary is found and connected.
    pub async fn connect(
        urls: &str,
        tls: &RedisTls,
        timeout: Duration,
        cluster: bool,
    ) -> Result<Nodes> {
        let seeds: Vec<&str> = urls.split(',').map(str::trim).collect();
        if !cluster {
            if seeds.len() > 1 {
                return Err(Error::Usage(
                    "several Redis URLs are seeds of a cluster: add --redis-cluster".into(),
                ));
            }
            let source = Source::connect(urls, tls, timeout).await?;
            if source.is_cluster_node().await {
                return Err(Error::Usage(format!(
                    "Redis at {} is a cluster node: sweep the cluster with --redis-cluster (alone it would sweep this node's keys only)",
                    redact_url(urls)
                )));
            }
            return Ok(Nodes {
                seed_url: urls.to_string(),
                tls: tls.clone(),
                timeout,
                nodes: vec![Node {
                    addr: host_port(urls),
                    source,
                }],
                primaries: 1,
                owner: Vec::new(),
                deadline: None,
                pacing: Pacing::default(),
            });
        }
        let mut last = None;
        for seed in &seeds {
            let attempt = async {
                let mut source = Source::connect(seed, tls, timeout).await?;
                let slots = source.cluster_slots().await?;
                Ok::<_, Error>((source, slots))
            };
            match attempt.await {
                Ok((source, slots)) => {
                    let mut nodes = Nodes {
                        seed_url: seed.to_string(),
                        tls: tls.clone(),
                        timeout,
                        nodes: vec![Node {
                            addr: host_port(seed),
                            source,
                        }],
                        primaries: 0,
                        owner: Vec::new(),
                        deadline: None,
                        pacing: Pacing::default(),
                    };
                    nodes.set_topology(slots).await?;
                    return Ok(nodes);
                }
                Err(e) => {
                    tracing::warn!(seed = %redact_url(seed), error = %e, "cluster seed unusable");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Usage("--redis-url is empty".into())))
    }

    /// Takes a `CLUSTER SLOTS` map: connects every primary (sorted by address, scanned in that
    /// order) and routes each slot to its owner.
    async fn set_topology(&mut self, slots: Vec<SlotRange>) -> Result<()> {
        let mut owner = vec![u16::MAX; SLOTS as usize];
        let mut addrs: Vec<&str> = slots.iter().map(|s| s.addr.as_str()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        // Primaries first, in address order; connections to other nodes are kept after them.
        let mut ordered = Vec::with_capacity(self.nodes.len().max(addrs.len()));
        for addr in &addrs {
            let i = self.node(addr).await?;
            ordered.push(self.nodes[i].clone());
        }
        let primaries = ordered.len();
        for n in &self.nodes {
            if !addrs.contains(&n.addr.as_str()) {
                ordered.push(n.clone());
            }
        }
        self.nodes = ordered;
        if self.primaries == 0 {
            self.primaries = primaries;
        }
        for s in &slots {
            let i = self
                .nodes
                .iter()
                .position(|n| n.addr == s.addr)
                .expect("connected") as u16;
            for slot in s.start..=s.end.min(SLOTS as u16 - 1) {
                owner[slot as usize] = i;
            }
        }
        if let Some(slot) = owner.iter().position(|o| *o == u16::MAX) {
            return Err(Error::Redis {
                url: redact_url(&self.seed_url),
                source: client_error(format!(
                    "the cluster does not cover every slot (slot {slot} has no primary): is it created and healthy?"
                )),
            });
        }
        self.owner = owner;
        Ok(())
    }

    /// Reads the slot map again from a primary that answers (after a MOVED).
    async fn refresh(&mut self) -> Result<()> {
        let mut last = None;
        for i in 0..self.primaries {
            match self.nodes[i].source.cluster_slots().await {
                Ok(slots) => return self.set_topology(slots).await,
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a cluster has primaries"))
    }

    /// The index of the node at `addr`, connected now if it is new.
    async fn node(&mut self, addr: &str) -> Result<usize> {
        if let Some(i) = self.nodes.iter().position(|n| n.addr == addr) {
            return Ok(i);
        }
        let url = node_url(&self.seed_url, addr)?;
        let mut source = Source::connect(&url, &self.tls, self.timeout).await?;
        source.set_deadline(self.deadline);
        source.set_pacing(self.pacing);
        self.nodes.push(Node {
            addr: addr.to_string(),
            source,
        });
        Ok(self.nodes.len() - 1)
    }

    fn owner_of(&self, key: &[u8]) -> usize {
        match self.owner.is_empty() {
            true => 0,
            false => self.owner[key_slot(key) as usize] as usize,
        }
    }

    /// The nodes to SCAN: the primaries.
    pub fn primaries(&self) -> usize {
        self.primaries
    }

    /// What a sweep reads, primary by primary: every key of every primary, or for a shard only
    /// the primaries owning its slots, and of those only its slots, plus the shard's slots a
    /// primary is importing (half-migrated: some of their keys are there already). On a single
    /// node the shard's keys are picked by the caller from a SCAN of all.
    pub async fn walks(&mut self, shard: Option<Shard>) -> Result<Vec<Walk>> {
        let scan = |addr: &str| Walk {
            addr: addr.to_string(),
            step: Step::Scan {
                cursor: None,
                only: None,
            },
        };
        let slots = |slots: VecDeque<u16>| Step::Slots {
            uncounted: slots,
            counted: VecDeque::new(),
            scan: Vec::new(),
        };
        let Some(shard) = shard.filter(|_| !self.owner.is_empty()) else {
            // Every primary whole: a SCAN sees importing slots' keys too.
            return Ok((0..self.primaries)
                .map(|node| scan(&self.nodes[node].addr))
                .collect());
        };
        let range = shard.slots();
        let mut walks: Vec<Walk> = (0..self.primaries)
            .filter_map(|node| {
                let held = (0..SLOTS as u16).filter(|s| self.owner[*s as usize] as usize == node);
                let (mine, others): (Vec<u16>, Vec<u16>) =
                    held.partition(|s| range.contains(&(*s as u32)));
                let addr = &self.nodes[node].addr;
                match (mine.is_empty(), others.is_empty()) {
                    (true, _) => None,
                    (false, true) => Some(scan(addr)),
                    (false, false) => Some(Walk {
                        addr: addr.clone(),
                        step: slots(mine.into()),
                    }),
                }
            })
            .collect();
        for node in 0..self.primaries {
            let addr = self.nodes[node].addr.clone();
            let importing = self.nodes[node].source.importing_slots().await?;
            for slot in importing {
                if !range.contains(&(slot as u32)) {
                    continue;
                }
                match walks.iter_mut().find(|w| w.addr == addr) {
                    // Its SCAN sees them (and the shard keeps its own).
                    Some(Walk {
                        step: Step::Scan { .. },
                        ..
                    }) => {}
                    Some(Walk {
                        step: Step::Slots { uncounted, .. },
                        ..
                    }) => uncounted.push_back(slot),
                    _ => walks.push(Walk {
                        addr: addr.clone(),
                        step: slots([slot].into()),
                    }),
                }
            }
        }
        Ok(walks)
    }

    /// The next page of keys matching `pattern` (about `count` of them) of a walk; None when it
    /// is done.
    pub async fn next_page(
        &mut self,
        walk: &mut Walk,
        pattern: &str,
        count: usize,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let node = self.node(&walk.addr).await?;
        let source = &mut self.nodes[node].source;
        let count = count.min(source.max_pipeline()).max(1);
        loop {
            match &mut walk.step {
                Step::Done => return Ok(None),
                Step::Scan {
                    cursor: Some(0), ..
                } => walk.step = Step::Done,
                Step::Scan { cursor, only } => {
                    let (next, mut keys) = source
                        .scan_page(cursor.unwrap_or(0), pattern, count)
                        .await?;
                    *cursor = Some(next);
                    if let Some(only) = only {
                        keys.retain(|k| only[key_slot(k) as usize]);
                    }
                    return Ok(Some(keys));
                }
                Step::Slots {
                    uncounted,
                    counted,
                    scan,
                } if counted.is_empty() => {
                    if uncounted.is_empty() {
                        walk.step = match scan.is_empty() {
                            true => Step::Done,
                            false => {
                                let mut only = vec![false; SLOTS as usize];
                                for s in scan.iter() {
                                    only[*s as usize] = true;
                                }
                                Step::Scan {
                                    cursor: None,
                                    only: Some(only),
                                }
                            }
                        };
                        continue;
                    }
                    let n = uncounted.len().min(COUNT_BATCH).min(source.max_pipeline());
                    let slots: Vec<u16> = uncounted.drain(..n).collect();
                    let mut pipe = redis::pipe();
                    for s in &slots {
                        pipe.cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s);
                    }
                    let counts: Vec<u64> = source.query(&pipe).await?;
                    for (s, n) in slots.into_iter().zip(counts) {
                        match n {
                            0 => {}
                            n if n > SLOT_KEYS_MAX => scan.push(s),
                            n => counted.push_back((s, n)),
                        }
                    }
                }
                Step::Slots { counted, scan, .. } => {
                    // Whole slots up to `count` keys (at least one slot).
                    let mut page = Vec::new();
                    let mut total = 0;
                    while let Some(&(s, n)) = counted.front() {
                        if !page.is_empty() && (total + n > count as u64 || page.len() >= count) {
                            break;
                        }
                        page.push((s, slot_limit(n)));
                        total += n;
                        counted.pop_front();
                    }
                    let mut pipe = redis::pipe();
                    for (s, limit) in &page {
                        pipe.cmd("CLUSTER").arg("GETKEYSINSLOT").arg(s).arg(limit);
                    }
                    let replies: Vec<Vec<Vec<u8>>> = source.query(&pipe).await?;
                    let mut keys = Vec::with_capacity(total as usize);
                    for ((s, limit), got) in page.into_iter().zip(replies) {
                        match got.len() as u64 >= limit {
                            // Grown past the limit while read: maybe more keys than returned.
                            true => scan.push(s),
                            false => keys.extend(
                                got.into_iter()
                                    .filter(|k| crate::glob::matches(pattern.as_bytes(), k)),
                            ),
                        }
                    }
                    return Ok(Some(keys));
                }
            }
        }
    }

    /// Retries give up rather than pause past this instant.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        for n in &mut self.nodes {
            n.source.set_deadline(deadline);
        }
    }

    /// How fast to talk to each node (see [`crate::pace`]). The primaries are read in turn, so
    /// each gets its share of the time budget.
    pub fn set_pacing(&mut self, pacing: Pacing) {
        let share = pacing.budget.map(|b| b / self.primaries.max(1) as u32);
        self.pacing = Pacing {
            budget: share,
            ..pacing
        };
        for n in &mut self.nodes {
            n.source.set_pacing(self.pacing);
        }
    }

    /// Time spent at the busy pace because other clients were using a node.
    pub fn yielded(&self) -> Duration {
        self.nodes.iter().map(|n| n.source.pace().yielded()).sum()
    }

    /// Pipelines sent so far, to every node.
    pub fn round_trips(&self) -> u64 {
        self.nodes.iter().map(|n| n.source.round_trips()).sum()
    }

    /// Commands per pipeline at most.
    pub fn max_pipeline(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.source.max_pipeline())
            .min()
            .unwrap_or(usize::MAX)
    }

    /// One SCAN step on primary `node`.
    pub async fn scan_page(
        &mut self,
        node: usize,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        self.nodes[node]
            .source
            .scan_page(cursor, pattern, count)
            .await
    }

    /// Sends each key's commands to the node owning it, following redirections; returns each
    /// key's replies. Keys with no command get none.
    pub(crate) async fn per_key(
        &mut self,
        keys: &[Vec<u8>],
        queue: impl Fn(&mut Pipeline, usize),
    ) -> Result<Vec<Vec<Value>>> {
        let mut out = vec![Vec::new(); keys.len()];
        // (key index, where to send it: None for the slot's owner, or a node and ASKING).
        let mut pending: Vec<(usize, Option<(String, bool)>)> =
            (0..keys.len()).map(|i| (i, None)).collect();
        let mut moved = false;
        for _ in 0..=MAX_REDIRECTS {
            if pending.is_empty() {
                break;
            }
            let mut groups: BTreeMap<(usize, bool), Vec<usize>> = BTreeMap::new();
            for (i, to) in std::mem::take(&mut pending) {
                let (node, asking) = match to {
                    None => (self.owner_of(&keys[i]), false),
                    Some((addr, asking)) => (self.node(&addr).await?, asking),
                };
                groups.entry((node, asking)).or_default().push(i);
            }
            for ((node, asking), idx) in groups {
                let max = self.nodes[node].source.max_pipeline();
                let mut start = 0;
                while start < idx.len() {
                    // A run of keys whose commands fit in one pipeline (at least one key).
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    let mut counts = Vec::new();
                    let mut end = start;
                    while end < idx.len() && (end == start || pipe.len() < max) {
                        if asking {
                            // ASKING goes before each command of the key (it holds for one).
                            let mut own = redis::pipe();
                            queue(&mut own, idx[end]);
                            counts.push(own.len());
                            for c in own.cmd_iter() {
                                pipe.cmd("ASKING");
                                pipe.add_command(c.clone());
                            }
                        } else {
                            let before = pipe.len();
                            queue(&mut pipe, idx[end]);
                            counts.push(pipe.len() - before);
                        }
                        end += 1;
                    }
                    let mut replies = match pipe.is_empty() {
                        true => Vec::new().into_iter(),
                        false => self.nodes[node]
                            .source
                            .query::<Vec<Value>>(&pipe)
                            .await?
                            .into_iter(),
                    };
                    for (&i, n) in idx[start..end].iter().zip(counts) {
                        let mut mine = Vec::with_capacity(n);
                        for _ in 0..n {
                            if asking {
                                replies.next();
                            }
                            mine.push(replies.next().unwrap_or(Value::Nil));
                        }
                        match redirect(&mine) {
                            Some(Redirect::Moved(addr)) => {
                                moved = true;
                                pending.push((i, Some((addr, false))));
                            }
                            Some(Redirect::Ask(addr)) => pending.push((i, Some((addr, true)))),
                            None => out[i] = mine,
                        }
                    }
                    start = end;
                }
            }
        }
        if let Some((i, _)) = pending.first() {
            return Err(Error::Redis {
                url: redact_url(&self.seed_url),
                source: client_error(format!(
                    "key {} still redirected after {MAX_REDIRECTS} hops",
                    crate::source::display_key(&keys[*i])
                )),
            });
        }
        if moved {
            // Slots have moved: later pages go straight to their new owners.
            self.refresh().await?;
        }
        Ok(out)
    }

    /// PTTL of every key: milliseconds left, -1 without TTL, -2 gone.
    pub async fn pttls(&mut self, keys: &[Vec<u8>]) -> Result<Vec<i64>> {
        let replies = self
            .per_key(keys, |pipe, i| {
                pipe.cmd("PTTL").arg(&keys[i]);
            })
            .await?;
        Ok(replies
            .into_iter()
            .map(|r| match r.first() {
                Some(Value::Int(n)) => *n,
                _ => -2,
            })
            .collect())
    }

    /// The type and size of each key: what may be fetched, and how much memory it takes.
    pub async fn probe(
        &mut self,
        layout: Layout,
        keys: &[Vec<u8>],
        max_value_bytes: u64,
    ) -> Result<Vec<Probe>> {
        let replies = self
            .per_key(keys, |pipe, i| layout.queue_probe(pipe, &keys[i]))
            .await?;
        Ok(replies
            .iter()
            .map(|r| layout.probe_result(r, max_value_bytes))
            .collect())
    }

    /// Reads keys of a layout that [reads inline](Layout::reads_inline) in one bounded command
    /// each: the value when that read settles it, None for the keys to probe.
    pub async fn read_inline(
        &mut self,
        keys: &[Vec<u8>],
        max_value_bytes: u64,
    ) -> Result<Vec<Option<Fetched>>> {
        let replies = self
            .per_key(keys, |pipe, i| Layout::queue_read_inline(pipe, &keys[i]))
            .await?;
        Ok(replies
            .into_iter()
            .map(|r| Layout::read_inline_result(r.into_iter().next(), max_value_bytes))
            .collect())
    }

    /// Whether commands are spaced now (`--max-redis-ops-per-sec`, or other clients are busy).
    pub fn throttled(&self) -> bool {
        self.nodes.iter().any(|n| n.source.pace().paced())
    }

    /// Fetches probed keys. Keep the sizes of one call within a memory budget (see
    /// [`fetch_chunks`]). Per-key problems come back as [`Fetched`] variants.
    pub async fn fetch(&mut self, keys: &[Vec<u8>], probes: &[Probe]) -> Result<Vec<Fetched>> {
        let replies = self
            .per_key(keys, |pipe, i| {
                Layout::queue_fetch(pipe, &keys[i], &probes[i]);
            })
            .await?;
        Ok(probes
            .iter()
            .zip(replies)
            .map(|(p, r)| Layout::fetched(p.clone(), r.into_iter().next()))
            .collect())
    }

    /// Probes and fetches in one go (for callers that hold few keys at a time).
    pub async fn read(
        &mut self,
        layout: Layout,
        keys: &[Vec<u8>],
        max_value_bytes: u64,
    ) -> Result<Vec<Fetched>> {
        let probes = self.probe(layout, keys, max_value_bytes).await?;
        let mut out = Vec::with_capacity(keys.len());
        for r in fetch_chunks(&probes, self.max_pipeline()) {
            out.extend(self.fetch(&keys[r.clone()], &probes[r]).await?);
        }
        Ok(out)
    }

    /// Raises the TTL of `keys` to `ttl`, never lowering it (PEXPIRE GT: a key without TTL or
    /// with more left is untouched). Returns how many keys were raised.
    pub async fn protect(&mut self, keys: &[Vec<u8>], ttl: Duration) -> Result<u64> {
        let replies = self
            .per_key(keys, |pipe, i| {
                pipe.cmd("PEXPIRE")
                    .arg(&keys[i])
                    .arg(ttl.as_millis() as u64)
                    .arg("GT");
            })
            .await?;
        Ok(replies
            .iter()
            .filter(|r| matches!(r.first(), Some(Value::Int(1))))
            .count() as u64)
    }
}

impl Nodes {
    /// Writes values with their TTLs, each to the node owning its key (`simulate`). `entries`
    /// are key, value, TTL in milliseconds.
    pub async fn set_all(&mut self, entries: &[(Vec<u8>, String, u64)]) -> Result<()> {
        let keys: Vec<Vec<u8>> = entries.iter().map(|(k, _, _)| k.clone()).collect();
        self.per_key(&keys, |pipe, i| {
            let (key, value, ttl_ms) = &entries[i];
            pipe.cmd("SET").arg(key).arg(value).arg("PX").arg(*ttl_ms);
        })
        .await?;
        Ok(())
    }

    /// Writes a checkpoint back with a TTL (`restore`): only when the key does not exist,
    /// unless `replace`. Returns whether it was written; when it was not, the TTL the live key
    /// has left (ms, -1 without TTL).
    pub async fn put_back(
        &mut self,
        key: &str,
        value: &str,
        ttl: Duration,
        replace: bool,
    ) -> Result<std::result::Result<(), i64>> {
        let keys = [key.as_bytes().to_vec()];
        let replies = self
            .per_key(&keys, |pipe, _| {
                let set = pipe
                    .cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64);
                if !replace {
                    set.arg("NX");
                }
                pipe.cmd("PTTL").arg(key);
            })
            .await?;
        Ok(match replies[0].as_slice() {
            [Value::Nil, Value::Int(pttl)] => Err(*pttl),
            _ => Ok(()),
        })
    }
}

/// One range of `CLUSTER SLOTS`: slots `start..=end` served by the primary at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub addr: String,
}

/// Parses a `CLUSTER SLOTS` reply: `[[start, end, [ip, port, id, ...], replica...], ...]`. The
/// first node of a range is its primary; an empty or `?` ip means the node we asked.
pub fn parse_cluster_slots(reply: &Value, asked: &str) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(items) = r else { return None };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (items.first(), items.get(1), items.get(2))
        else {
            return None;
        };
        let host = match primary.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let host = match host.as_str() {
            "" | "?" => asked_host.to_string(),
            _ => host,
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            return None;
        };
        out.push(SlotRange {
            start: u16::try_from(*start).ok()?,
            end: u16::try_from(*end).ok()?,
            addr: format!("{host}:{port}"),
        });
    }
    Some(out)
}

/// The slots a node is importing, from its `CLUSTER NODES`: its own line (flag `myself`) lists
/// them as `[slot-<-source id]`.
pub fn parse_importing(nodes: &str) -> Vec<u16> {
    nodes
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
        })
        .flat_map(|l| l.split_whitespace().skip(8))
        .filter_map(|s| s.strip_prefix('[')?.split_once("-<-")?.0.parse().ok())
        .collect()
}

/// A MOVED or ASK among one key's replies.
fn redirect(replies: &[Value]) -> Option<Redirect> {
    replies.iter().find_map(|v| match v {
        Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK") => {
            // "MOVED 3999 127.0.0.1:6381": the code, the slot, the address.
            let addr = e.details()?.split_whitespace().nth(1)?.to_string();
            Some(match e.code() {
                "MOVED" => Redirect::Moved(addr),
                _ => Redirect::Ask(addr),
            })
        }
        _ => None,
    })
}

/// `host:port` of a URL, as the cluster names nodes.
fn host_port(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or("127.0.0.1"),
            u.port().unwrap_or(6379)
        ),
        Err(_) => url.to_string(),
    }
}

/// The URL of the node at `addr`: the seed's, with another host and port (same scheme,
/// credentials and TLS).
fn node_url(seed: &str, addr: &str) -> Result<String> {
    let bad = || Error::Usage(format!("invalid --redis-url {}", redact_url(seed)));
    let mut u = url::Url::parse(seed).map_err(|_| bad())?;
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    u.set_host(Some(host)).map_err(|_| bad())?;
    u.set_port(Some(port)).map_err(|_| bad())?;
    Ok(u.to_string())
}

fn client_error(detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "cluster", detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_give_each_range_its_primary() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7001), bulk("id1")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7004), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7002), bulk("id2")]),
            ]),
        ]);
        assert_eq!(
            parse_cluster_slots(&reply, "10.0.0.9:7002").unwrap(),
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    addr: "127.0.0.1:7001".into()
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    addr: "10.0.0.9:7002".into()
                },
            ]
        );
        assert!(parse_cluster_slots(&Value::Nil, "x:1").is_none());
    }

    #[test]
    fn importing_slots_are_read_from_the_nodes_own_line() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 master - 0 1 4 connected 11000-16383 [93-<-292f8b36]
e7d1 127.0.0.1:30002@31002 myself,master - 0 0 2 connected 5461-10922 [93-<-292f8b36] [94->-07c3] [95-<-07c3]
292f 127.0.0.1:30001@31001 master - 0 1 1 connected 0-5460
";
        assert_eq!(parse_importing(nodes), vec![93, 95]);
        assert!(parse_importing("").is_empty());
    }

    #[test]
    fn redirections_are_read_from_error_replies() {
        // As the server sends them.
        let parse = |wire: &str| redis::parse_redis_value(wire.as_bytes()).unwrap();
        assert_eq!(
            redirect(&[parse("-MOVED 3999 127.0.0.1:6381\r\n")]),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(&[Value::Int(1), parse("-ASK 3999 127.0.0.1:6382\r\n")]),
            Some(Redirect::Ask("127.0.0.1:6382".into()))
        );
        assert_eq!(redirect(&[parse("-WRONGTYPE no\r\n")]), None);
        assert_eq!(redirect(&[]), None);
    }

    #[test]
    fn node_urls_keep_the_seeds_scheme_and_credentials() {
        assert_eq!(
            node_url("rediss://sweeper:pw@10.0.0.1:7000/0", "10.0.0.2:7001").unwrap(),
            "rediss://sweeper:pw@10.0.0.2:7001/0"
        );
        assert_eq!(host_port("redis://127.0.0.1:7000/"), "127.0.0.1:7000");
    }
}
