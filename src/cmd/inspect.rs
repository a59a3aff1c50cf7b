//! `sweeper inspect`: what an operator looks at before trusting a sweep. How many keys match,
//! their types, how many have no TTL (never saved), how TTLs left spread around the threshold,
//! the largest values and a few sample keys, decoded as a sweep with the same `--format` or
//! `--mapping` would (a chat library's keys, a mapping file being written: does it fit?). Reads
//! types, sizes and TTLs, and the values of the sample keys only; memory stays bounded (counts, a
//! top-N and a fixed-size sample).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::SweepConfig;
use crate::error::Result;
use crate::progress::Progress;
use crate::redis::cluster::Nodes;
use crate::redis::layout::{Layout, Probe};
use crate::redis::node::display_key;
use crate::select::{Ttl, classify};

#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub pattern: String,
    pub threshold: Duration,
    pub scan_count: usize,
    /// How many of the largest values to list.
    pub top: usize,
    /// How many keys to pick at random as samples.
    pub samples: usize,
    /// How a sweep would read and decode the keys (its layout, mapping, prefix and size limit):
    /// the samples are decoded so. None: not decoded (LangGraph threads are read whole).
    pub decode: Option<SweepConfig>,
}

/// A sample key decoded as a sweep would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decoded {
    pub key: String,
    pub conversation_id: Option<String>,
    pub messages: Option<usize>,
    /// Why a sweep would set it aside (the reason `sweep_rejects` would hold).
    pub reject: Option<String>,
}

/// Keys whose TTL left is in `[from_ms, to_ms)` (no upper bound: `to_ms` None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TtlBucket {
    pub from_ms: u64,
    pub to_ms: Option<u64>,
    pub keys: u64,
    /// Under the threshold: a sweep now would save these.
    pub due: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeySize {
    pub key: String,
    pub bytes: u64,
    /// Milliseconds left, None without TTL.
    pub ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    #[serde(rename = "match")]
    pub pattern: String,
    pub threshold_ms: u64,
    /// Keys SCAN returned (a key moved during the scan may be counted twice).
    pub keys: u64,
    /// Keys by Redis type.
    pub types: BTreeMap<String, u64>,
    pub due: u64,
    /// Keys without a TTL: never due, so never saved.
    pub no_ttl: u64,
    /// Keys gone between SCAN and the TTL read.
    pub gone: u64,
    /// Bytes of the string values.
    pub string_bytes: u64,
    pub ttl_histogram: Vec<TtlBucket>,
    pub largest: Vec<KeySize>,
    pub samples: Vec<String>,
    /// The samples decoded (gone ones left out).
    pub decoded: Vec<Decoded>,
    pub duration_ms: u64,
    pub redis_round_trips: u64,
}

/// Bucket bounds in milliseconds: a few fixed steps, with the threshold among them so the
/// histogram shows exactly what is due.
pub fn bucket_bounds(threshold: Duration) -> Vec<u64> {
    let minute = 60_000;
    let mut bounds = vec![
        minute,
        5 * minute,
        15 * minute,
        30 * minute,
        60 * minute,
        6 * 60 * minute,
        24 * 60 * minute,
        7 * 24 * 60 * minute,
    ];
    bounds.push(threshold.as_millis() as u64);
    bounds.retain(|b| *b > 0);
    bounds.sort_unstable();
    bounds.dedup();
    bounds
}

fn empty_histogram(bounds: &[u64], threshold_ms: u64) -> Vec<TtlBucket> {
    let mut from = 0;
    let mut out = Vec::with_capacity(bounds.len() + 1);
    for to in bounds.iter().copied().map(Some).chain([None]) {
        out.push(TtlBucket {
            from_ms: from,
            to_ms: to,
            keys: 0,
            due: to.is_some_and(|t| t <= threshold_ms),
        });
        from = to.unwrap_or(from);
    }
    out
}

/// The bucket of a TTL: the first whose upper bound is above it.
pub fn bucket_of(bounds: &[u64], ttl_ms: u64) -> usize {
    bounds.partition_point(|b| *b <= ttl_ms)
}

/// Keeps the `n` largest values seen.
struct Largest {
    n: usize,
    heap: BinaryHeap<Reverse<(u64, String, Option<u64>)>>,
}

impl Largest {
    fn offer(&mut self, bytes: u64, key: &[u8], ttl_ms: Option<u64>) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() == self.n && self.heap.peek().is_some_and(|Reverse(min)| min.0 >= bytes)
        {
            return;
        }
        self.heap.push(Reverse((bytes, display_key(key), ttl_ms)));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    fn into_sorted(self) -> Vec<KeySize> {
        let mut v: Vec<KeySize> = self
            .heap
            .into_iter()
            .map(|Reverse((bytes, key, ttl_ms))| KeySize { key, bytes, ttl_ms })
            .collect();
        v.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
        v
    }
}

/// A uniform random sample of `n` keys out of however many pass by (reservoir sampling).
struct Sample {
    n: usize,
    seen: u64,
    keys: Vec<Vec<u8>>,
}

impl Sample {
    fn offer(&mut self, key: &[u8]) {
        self.seen += 1;
        if self.keys.len() < self.n {
            self.keys.push(key.to_vec());
        } else if self.n > 0 {
            let slot = fastrand::u64(..self.seen) as usize;
            if slot < self.n {
                self.keys[slot] = key.to_vec();
            }
        }
    }
}

/// The sample keys read and decoded as a sweep configured by `cfg` would.
async fn decode_samples(
    source: &mut Nodes,
    cfg: &SweepConfig,
    keys: &[Vec<u8>],
) -> Result<Vec<Decoded>> {
    let fetched = source.read(cfg.layout, keys, cfg.max_value_bytes).await?;
    Ok(keys
        .iter()
        .zip(fetched)
        .filter_map(|(key, f)| {
            let got = crate::sweep::decode::decode_sample(cfg, key, f)?;
            Some(match got {
                Ok((id, n)) => Decoded {
                    key: display_key(key),
                    conversation_id: Some(id),
                    messages: Some(n),
                    reject: None,
                },
                Err(reason) => Decoded {
                    key: display_key(key),
                    conversation_id: None,
                    messages: None,
                    reject: Some(reason),
                },
            })
        })
        .collect())
}

/// Scans the keys matching the pattern and sums them up.
pub async fn inspect(
    source: &mut Nodes,
    cfg: &InspectConfig,
    progress: &Progress,
) -> Result<InspectReport> {
    let started = Instant::now();
    let threshold_ms = cfg.threshold.as_millis() as u64;
    let bounds = bucket_bounds(cfg.threshold);
    let mut report = InspectReport {
        pattern: cfg.pattern.clone(),
        threshold_ms,
        keys: 0,
        types: BTreeMap::new(),
        due: 0,
        no_ttl: 0,
        gone: 0,
        string_bytes: 0,
        ttl_histogram: empty_histogram(&bounds, threshold_ms),
        largest: Vec::new(),
        samples: Vec::new(),
        decoded: Vec::new(),
        duration_ms: 0,
        redis_round_trips: 0,
    };
    let mut largest = Largest {
        n: cfg.top,
        heap: BinaryHeap::new(),
    };
    let mut sample = Sample {
        n: cfg.samples,
        seen: 0,
        keys: Vec::new(),
    };
    // Every primary in turn (one node, or each primary of a cluster), walked as a sweep walks.
    for mut walk in source.walks(None).await? {
        while let Some(keys) = source
            .next_page(&mut walk, &cfg.pattern, cfg.scan_count)
            .await?
        {
            report.keys += keys.len() as u64;
            let pttls = source.pttls(&keys).await?;
            // Every size is wanted, however large: the limit only decides what a sweep would read.
            let probes = source.probe(Layout::default(), &keys, u64::MAX).await?;
            for ((key, pttl), probe) in keys.iter().zip(pttls).zip(probes) {
                let ttl_ms = match classify(pttl, cfg.threshold) {
                    Ttl::Gone => {
                        report.gone += 1;
                        continue;
                    }
                    Ttl::NoTtl => {
                        report.no_ttl += 1;
                        None
                    }
                    Ttl::Due { ttl_ms } => {
                        report.due += 1;
                        Some(ttl_ms)
                    }
                    Ttl::NotDue => Some(pttl as u64),
                };
                if let Some(ms) = ttl_ms {
                    report.ttl_histogram[bucket_of(&bounds, ms)].keys += 1;
                }
                let kind = match probe {
                    Probe::Read { size, .. } | Probe::Sample { size, .. } => {
                        report.string_bytes += size;
                        largest.offer(size, key, ttl_ms);
                        "string".to_string()
                    }
                    Probe::WrongType(t) => t,
                    Probe::Gone => {
                        report.gone += 1;
                        continue;
                    }
                };
                *report.types.entry(kind).or_default() += 1;
                sample.offer(key);
            }
            progress.update(report.keys, report.due);
        }
    }
    progress.finish();
    report.largest = largest.into_sorted();
    if let Some(d) = &cfg.decode {
        report.decoded = decode_samples(source, d, &sample.keys).await?;
    }
    report.samples = sample.keys.iter().map(|k| display_key(k)).collect();
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.redis_round_trips = source.round_trips();
    Ok(report)
}

impl InspectReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    pub fn to_text(&self) -> String {
        let ms = |v: u64| crate::config::format_duration(Duration::from_millis(v));
        let mut out = String::new();
        let types: Vec<String> = self.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        let _ = writeln!(
            out,
            "{} keys match {:?} ({}), {} bytes in strings ({} ms, {} Redis round trips)",
            self.keys,
            self.pattern,
            if types.is_empty() {
                "none".to_string()
            } else {
                types.join(", ")
            },
            self.string_bytes,
            self.duration_ms,
            self.redis_round_trips
        );
        let _ = writeln!(out, "\nTTL left            keys");
        for b in &self.ttl_histogram {
            let range = match b.to_ms {
                Some(to) => format!("{} to {}", ms(b.from_ms), ms(to)),
                None => format!("{} and more", ms(b.from_ms)),
            };
            let note = if b.to_ms == Some(self.threshold_ms) {
                "  due  <- threshold"
            } else if b.due {
                "  due"
            } else {
                ""
            };
            let _ = writeln!(out, "{range:<18} {:>5}{note}", b.keys);
        }
        let _ = writeln!(out, "{:<18} {:>5}  never saved", "no TTL", self.no_ttl);
        if self.gone > 0 {
            let _ = writeln!(out, "{:<18} {:>5}", "gone meanwhile", self.gone);
        }
        let _ = writeln!(
            out,
            "\n{} due now (TTL under {}): a sweep now would save them.",
            self.due,
            ms(self.threshold_ms)
        );
        if !self.largest.is_empty() {
            let _ = writeln!(out, "\nlargest values:");
            for k in &self.largest {
                let ttl = k
                    .ttl_ms
                    .map_or("no TTL".to_string(), |t| format!("TTL {}", ms(t)));
                let _ = writeln!(out, "  {:>10} bytes  {ttl:<14} {}", k.bytes, k.key);
            }
        }
        if !self.samples.is_empty() {
            let _ = writeln!(out, "\nsample keys:");
            for k in &self.samples {
                match self.decoded.iter().find(|d| d.key == *k) {
                    Some(Decoded {
                        conversation_id: Some(id),
                        messages: Some(n),
                        ..
                    }) => {
                        let _ = writeln!(out, "  {k}  -> conversation {id:?}, {n} messages");
                    }
                    Some(Decoded {
                        reject: Some(r), ..
                    }) => {
                        let _ = writeln!(out, "  {k}  -> rejected: {r}");
                    }
                    _ => {
                        let _ = writeln!(out, "  {k}");
                    }
                }
            }
        }
        out
    }
}

/// `sweeper inspect`.
pub async fn execute(g: &crate::cli::GlobalOpts, i: &crate::cli::InspectArgs) -> Result<u8> {
    let mapping = super::formats::resolve(&i.layout)?;
    let pattern = super::formats::pattern(i.layout.format, mapping.as_ref(), &i.select.pattern)?;
    let layout = match &mapping {
        Some(m) => super::formats::layout(m),
        None => i.layout.format.into(),
    };
    // The samples are decoded as a sweep of the same settings would decode them.
    let decode = (layout != Layout::LangGraph)
        .then(|| {
            SweepConfig {
                pattern: pattern.clone(),
                layout,
                mapping: mapping.map(std::sync::Arc::new),
                ..SweepConfig::default()
            }
            .validate()
        })
        .transpose()?;
    let cfg = InspectConfig {
        pattern,
        threshold: i.select.threshold.threshold,
        scan_count: i.select.scan_count as usize,
        top: i.top,
        samples: i.samples,
        decode,
    };
    let mut source = super::connect_redis(g).await?;
    if let Some(e) = source
        .evictions()
        .await
        .filter(|e| e.can_evict() && e.evicted > 0)
    {
        tracing::warn!(
            evicted = e.evicted,
            maxmemory_policy = %e.policy,
            "Redis has evicted keys to stay under maxmemory since it started: conversations may be lost before their TTL runs out (volatile-ttl evicts the due ones first); raise maxmemory, or set maxmemory-policy noeviction"
        );
    }
    source.set_pacing(crate::redis::pace::Pacing {
        max_ops_per_sec: i.pace.max_redis_ops_per_sec,
        busy_ops_per_sec: i.pace.busy_redis_ops_per_sec,
        budget: None,
    });
    let report = inspect(&mut source, &cfg, &Progress::on_terminal()).await?;
    super::emit(i.out.output, || report.to_json(), || report.to_text())?;
    Ok(crate::error::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_a_bucket_bound_and_marks_what_is_due() {
        let bounds = bucket_bounds(Duration::from_secs(600));
        assert_eq!(bounds[..3], [60_000, 300_000, 600_000]);
        let h = empty_histogram(&bounds, 600_000);
        assert_eq!(h.len(), bounds.len() + 1);
        assert!(h[2].due && h[2].to_ms == Some(600_000));
        assert!(!h[3].due);
        assert_eq!(h.last().unwrap().to_ms, None);
        // A threshold already among the steps is not repeated.
        assert_eq!(
            bucket_bounds(Duration::from_secs(300)).len(),
            bucket_bounds(Duration::from_secs(600)).len() - 1
        );
    }

    #[test]
    fn a_ttl_lands_in_the_half_open_bucket() {
        let bounds = bucket_bounds(Duration::from_secs(600));
        assert_eq!(bucket_of(&bounds, 0), 0);
        assert_eq!(bucket_of(&bounds, 59_999), 0);
        assert_eq!(bucket_of(&bounds, 60_000), 1);
        assert_eq!(bucket_of(&bounds, 599_999), 2);
        assert_eq!(bucket_of(&bounds, 600_000), 3);
        assert_eq!(bucket_of(&bounds, u64::MAX), bounds.len());
    }

    #[test]
    fn the_largest_are_kept_in_order() {
        let mut l = Largest {
            n: 2,
            heap: BinaryHeap::new(),
        };
        for (size, key) in [(5, "a"), (50, "b"), (1, "c"), (20, "d")] {
            l.offer(size, key.as_bytes(), None);
        }
        let top: Vec<_> = l
            .into_sorted()
            .into_iter()
            .map(|k| (k.bytes, k.key))
            .collect();
        assert_eq!(top, [(50, "b".to_string()), (20, "d".to_string())]);
    }

    #[test]
    fn the_sample_stays_small_and_draws_from_everything() {
        let mut hits = [0u32; 10];
        for _ in 0..2000 {
            let mut s = Sample {
                n: 2,
                seen: 0,
                keys: Vec::new(),
            };
            for i in 0..10 {
                s.offer(format!("k{i}").as_bytes());
            }
            assert_eq!(s.keys.len(), 2);
            for k in s.keys {
                hits[std::str::from_utf8(&k[1..])
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()] += 1;
            }
        }
        // Each key is drawn 2/10 of the time: 400 of 2000, give or take.
        assert!(hits.iter().all(|h| (250..550).contains(h)), "{hits:?}");
    }
}
