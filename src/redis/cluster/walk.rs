//! The walk of a sweep over a primary: SCAN pages, or the slots of a shard one by one (see the
//! module documentation of [`crate::redis::cluster`]).

use std::collections::VecDeque;

use super::Nodes;
use crate::error::Result;
use crate::shard::{SLOTS, Shard, key_slot};

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

impl Nodes {
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
                            false => keys
                                .extend(got.into_iter().filter(|k| {
                                    crate::redis::glob::matches(pattern.as_bytes(), k)
                                })),
                        }
                    }
                    return Ok(Some(keys));
                }
            }
        }
    }
}
