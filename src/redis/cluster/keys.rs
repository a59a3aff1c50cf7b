//! The per-key commands of a sweep (TTLs, probes, reads, protection) and of `simulate` and
//! `restore` (writes), each routed to the node owning its key.

use std::time::Duration;

use redis::Value;

use super::Nodes;
use crate::error::Result;
use crate::redis::layout::{Fetched, Layout, Probe};
use crate::redis::read::ValueReads;

impl Nodes {
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

    /// Fetches probed keys. Keep the sizes of one call within a memory budget (see
    /// [`crate::redis::node::fetch_chunks`]). Per-key problems come back as [`Fetched`] variants.
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

    /// Reads the values of a few keys in one go (see [`ValueReads`]).
    pub async fn read(
        &mut self,
        layout: Layout,
        keys: &[Vec<u8>],
        max_value_bytes: u64,
    ) -> Result<Vec<Fetched>> {
        let mut out: Vec<Option<Fetched>> = vec![None; keys.len()];
        let mut reads = ValueReads::new(layout, keys, max_value_bytes);
        while let Some(run) = reads.next(self).await? {
            for (i, fetched) in run {
                out[i] = Some(fetched);
            }
        }
        Ok(out
            .into_iter()
            .map(|f| f.expect("every key read"))
            .collect())
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
