//! The Redis a sweep reads: one node, or every primary of a Redis Cluster (`--redis-cluster`).
//! With [`crate::redis::node`] (one node's connection), the only code that speaks Redis.
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
//!   ([`crate::redis::glob`]: GETKEYSINSLOT has no MATCH). GETKEYSINSLOT has no cursor either (the same
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

mod erase;
mod keys;
mod route;
mod walk;

pub use keys::Protected;
pub use walk::{SLOT_KEYS_MAX, Walk};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::redis::node::Source;
use crate::redis::pace::Pacing;
use crate::redis::slots::SlotRange;
use crate::redis::tls::RedisTls;
use crate::shard::{SLOTS, key_slot};

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
    timeout: Timeouts,
    nodes: Vec<Node>,
    /// `nodes[..primaries]` are SCANned; nodes met later through redirections only serve reads.
    primaries: usize,
    /// Slot -> index in `nodes`; empty for a single node (it owns every slot).
    owner: Vec<u16>,
    deadline: Option<Instant>,
    /// Each node's pacing (its budget already its share of the run's).
    pacing: Pacing,
    /// False on a handle whose commands do not wait for the pace (see [`Nodes::unpaced`]).
    paced: bool,
    /// Set when a node refused `PEXPIRE ... GT` (before Redis 7.0): protection raises TTLs with
    /// a script instead ([`Nodes::protect`]).
    raise_by_script: bool,
}

impl Nodes {
    /// Connects to `urls`: one node, or with `cluster`, any nodes of a cluster (comma-separated
    /// seeds, tried in turn) from which every primary is found and connected.
    pub async fn connect(
        urls: &str,
        tls: &RedisTls,
        timeout: Timeouts,
        cluster: bool,
    ) -> Result<Nodes> {
        // A sentinel URL lists sentinels, not seeds: one source follows the primary they name.
        let seeds: Vec<&str> = match crate::redis::sentinel::is_sentinel_url(urls) {
            true => vec![urls.trim()],
            false => urls.split(',').map(str::trim).collect(),
        };
        if !cluster {
            if seeds.len() > 1 {
                return Err(Error::Usage(
                    "several Redis URLs are seeds of a cluster: add --redis-cluster".into(),
                ));
            }
            let source = Source::connect(urls, tls, timeout).await?;
            source.refuse_sentinel().await?;
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
                paced: true,
                raise_by_script: false,
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
                        paced: true,
                        raise_by_script: false,
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
        let mut source = match by_name(&self.seed_url, addr) {
            // A TLS node announced by its address (ElastiCache, Azure): its certificate names the
            // host the operator configured, not the address. Dialled at the address, checked
            // against that name; against the address when its certificate names that instead.
            Some((named, dial)) => {
                match Source::connect_via(&named, &self.tls, self.timeout, Some(dial)).await {
                    Err(e) if e.is_certificate_name_refusal() => {
                        Source::connect(&url, &self.tls, self.timeout).await?
                    }
                    connected => connected?,
                }
            }
            None => Source::connect(&url, &self.tls, self.timeout).await?,
        };
        source.set_deadline(self.deadline);
        source.set_pacing(self.pacing);
        source.set_paced(self.paced);
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

    /// Evictions on the primaries, summed; the policy of the first that may evict, else the
    /// first's. None when no primary would say.
    pub async fn evictions(&self) -> Option<crate::redis::node::Evictions> {
        let mut all = Vec::new();
        for n in &self.nodes[..self.primaries.max(1).min(self.nodes.len())] {
            all.extend(n.source.evictions().await);
        }
        let first = all.iter().find(|e| e.can_evict()).or(all.first())?.clone();
        Some(crate::redis::node::Evictions {
            evicted: all.iter().map(|e| e.evicted).sum(),
            ..first
        })
    }

    /// The nodes to SCAN: the primaries.
    pub fn primaries(&self) -> usize {
        self.primaries
    }

    /// Retries give up rather than pause past this instant.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        for n in &mut self.nodes {
            n.source.set_deadline(deadline);
        }
    }

    /// How fast to talk to each node (see [`crate::redis::pace`]). The primaries are read in turn, so
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

    /// This handle's commands do not wait for the pace (they are still counted as the sweep's
    /// own): for protecting the few batches already read when PostgreSQL stalls, which would
    /// otherwise push the scan behind the pace of a healthy run.
    pub fn unpaced(&mut self) {
        self.paced = false;
        for n in &mut self.nodes {
            n.source.set_paced(false);
        }
    }

    /// Time spent at the busy pace because other clients were using a node.
    pub fn yielded(&self) -> Duration {
        self.nodes.iter().map(|n| n.source.pace().yielded()).sum()
    }

    /// Pipelines sent so far, to every node.
    /// These nodes on connections of their own (see [`Source::detach`]).
    pub async fn detach(&mut self) {
        for n in &mut self.nodes {
            n.source.detach().await;
        }
    }

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

    /// Whether commands are spaced now (`--max-redis-ops-per-sec`, or other clients are busy).
    pub fn throttled(&self) -> bool {
        self.nodes.iter().any(|n| n.source.pace().paced())
    }
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

/// For a `rediss://` seed named by a host name and a node announced by an IP address: the node's
/// URL under the seed's host name, and the address to dial.
fn by_name(seed: &str, addr: &str) -> Option<(String, SocketAddr)> {
    let seed_url = url::Url::parse(seed).ok()?;
    // `rediss` is no special scheme to the url crate: its hosts are not parsed as addresses.
    let host = seed_url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let named = seed_url.scheme() == "rediss" && host.parse::<std::net::IpAddr>().is_err();
    let dial: SocketAddr = addr.parse().ok()?;
    let port = dial.port();
    let mut u = seed_url;
    u.set_port(Some(port)).ok()?;
    named.then(|| (u.to_string(), dial))
}

fn client_error(detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "cluster", detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_keep_the_seeds_scheme_and_credentials() {
        assert_eq!(
            node_url("rediss://sweeper:pw@10.0.0.1:7000/0", "10.0.0.2:7001").unwrap(),
            "rediss://sweeper:pw@10.0.0.2:7001/0"
        );
        assert_eq!(host_port("redis://127.0.0.1:7000/"), "127.0.0.1:7000");
    }

    #[test]
    fn tls_nodes_announced_by_address_keep_the_seeds_host_name() {
        let (url, dial) = by_name("rediss://u:pw@cfg.example.com:6379/0", "10.0.0.2:6380").unwrap();
        assert_eq!(url, "rediss://u:pw@cfg.example.com:6380/0");
        assert_eq!(dial, "10.0.0.2:6380".parse().unwrap());
        // Without TLS, with a seed that is an address, or a node announced by name: as announced.
        assert!(by_name("redis://cfg.example.com:6379/", "10.0.0.2:6380").is_none());
        assert!(by_name("rediss://10.0.0.1:6379/", "10.0.0.2:6380").is_none());
        assert!(by_name("rediss://[::1]:6379/", "10.0.0.2:6380").is_none());
        assert!(by_name("rediss://cfg.example.com:6379/", "node-2.example.com:6380").is_none());
    }
}
