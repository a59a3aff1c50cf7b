//! Sharded sweeps: N workers split the keyspace with no overlap and no gap. Pure.
//!
//! A key belongs to a shard by its Redis Cluster hash slot (CRC16 of the key, or of its `{tag}`,
//! mod 16384): shard I of N owns the slots `[I * 16384 / N, (I + 1) * 16384 / N)`. The slot is
//! stable (it never depends on the process, the run or the server), so the same key always goes
//! to the same shard, and the N ranges tile the 16384 slots exactly. Slots rather than another
//! hash so that on a cluster a shard's keys are whole slots (those a node owns).
//!
//! Indexes count from 0, as Kubernetes' `JOB_COMPLETION_INDEX` and Airflow's `map_index` do:
//! `--shard 0/3`, `1/3`, `2/3`.

use std::fmt;
use std::ops::Range;

/// Hash slots of Redis Cluster.
pub const SLOTS: u32 = 16384;

/// Shard `index` of `count` (`index < count <= SLOTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || count > SLOTS {
            return Err(format!("the shard count must be 1 to {SLOTS}, not {count}"));
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range for {count} shards (0 to {})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N` (`--shard`, `SWEEPER_SHARD`).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard like 0/3 (index from 0, then the count)");
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let i: u32 = i.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Shard::new(i, n)
    }

    /// The shard of a Kubernetes Indexed Job pod: `--shards N` and its `JOB_COMPLETION_INDEX`.
    pub fn of_job(count: u32, job_completion_index: &str) -> Result<Shard, String> {
        let i: u32 = job_completion_index.trim().parse().map_err(|_| {
            format!("JOB_COMPLETION_INDEX `{job_completion_index}` is not a number")
        })?;
        Shard::new(i, count)
    }

    /// The hash slots this shard owns.
    pub fn slots(&self) -> Range<u32> {
        let at = |i: u32| (i as u64 * SLOTS as u64 / self.count as u64) as u32;
        at(self.index)..at(self.index + 1)
    }

    pub fn owns(&self, key: &[u8]) -> bool {
        self.slots().contains(&(key_slot(key) as u32))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of the key, or of the part between its
/// first `{` and the next `}` when that part is not empty, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS as u16
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // The check value of CRC-16/XMODEM, and slots `CLUSTER KEYSLOT` gives.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"checkpoint:c-42"), key_slot(b"checkpoint:c-42"));
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn shards_tile_the_slots_with_no_overlap_and_no_gap() {
        for n in [1, 2, 3, 7, 8, 1000, SLOTS] {
            let mut next = 0;
            for i in 0..n {
                let r = Shard::new(i, n).unwrap().slots();
                assert_eq!(r.start, next, "{i}/{n}");
                assert!(!r.is_empty(), "{i}/{n}");
                next = r.end;
            }
            assert_eq!(next, SLOTS, "{n}");
        }
    }

    #[test]
    fn every_key_belongs_to_exactly_one_shard() {
        for n in [1, 3, 8] {
            let shards: Vec<Shard> = (0..n).map(|i| Shard::new(i, n).unwrap()).collect();
            for k in 0..5000 {
                let key = format!("checkpoint:c-{k}");
                let owners = shards.iter().filter(|s| s.owns(key.as_bytes())).count();
                assert_eq!(owners, 1, "{key} in {n} shards");
            }
        }
    }

    #[test]
    fn shards_parse_from_flags_and_job_indexes() {
        assert_eq!(Shard::parse("0/3"), Ok(Shard { index: 0, count: 3 }));
        assert_eq!(Shard::parse(" 2 / 3 "), Ok(Shard { index: 2, count: 3 }));
        for bad in [
            "3/3", "4/3", "0/0", "x", "1", "-1/3", "1/3/3", "", "0/16385",
        ] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Shard::of_job(8, "7"), Ok(Shard { index: 7, count: 8 }));
        assert!(Shard::of_job(8, "8").is_err());
        assert!(Shard::of_job(8, "").is_err());
        assert_eq!(Shard::new(1, 3).unwrap().to_string(), "1/3");
    }
}
