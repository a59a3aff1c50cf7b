//! Deleting keys (`sweeper forget`), each on the node owning it. The only command of `sweeper`
//! that deletes anything in Redis.

use redis::Value;

use super::Nodes;
use crate::error::Result;

impl Nodes {
    /// UNLINKs `keys` (freed off the server's main thread: a long list never stalls live chat);
    /// returns how many existed. A key already gone counts nothing, so a re-run is harmless.
    pub async fn delete(&mut self, keys: &[Vec<u8>]) -> Result<u64> {
        let replies = self
            .per_key(keys, |pipe, i| {
                pipe.cmd("UNLINK").arg(&keys[i]);
            })
            .await?;
        Ok(replies
            .iter()
            .map(|r| match r.first() {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            })
            .sum())
    }
}
