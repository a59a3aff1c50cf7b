//! The per-key commands of a sweep (TTLs, probes, reads, protection) and of `simulate` and
//! `restore` (writes), each routed to the node owning its key.

use std::time::Duration;

use redis::Value;

use super::Nodes;
use crate::error::Result;
use crate::redis::layout::{Fetched, Layout, OTHER_TYPE, Probe};
use crate::redis::read::ValueReads;

/// `PEXPIRE key ms GT` for servers without GT: a key gone (-2) or without TTL (-1) is left alone,
/// a TTL already above `ms` is not lowered.
const RAISE_TTL: &str = "local t = redis.call('PTTL', KEYS[1]) \
    if t >= 0 and t < tonumber(ARGV[1]) then return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
    return 0";

/// Whether `e` is a server refusing PEXPIRE's GT option (Redis 6.2: a wrong number of arguments).
fn no_gt_option(e: &crate::error::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("pexpire")
        && (text.contains("wrong number of arguments") || text.contains("unsupported option"))
}

/// What protection did to a set of keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Protected {
    /// Keys whose TTL is now the protection's or more: raised, already above it (the chat
    /// service wrote a turn meanwhile), or without TTL.
    pub kept: u64,
    /// Keys gone before they could be protected: they expired meanwhile.
    pub gone: Vec<Vec<u8>>,
}

impl Protected {
    /// From each key's replies: the raise (1 when raised), then, when not raised, its PTTL.
    fn of(keys: &[Vec<u8>], replies: &[Vec<Value>], ms: u64) -> Protected {
        let mut out = Protected::default();
        for (key, r) in keys.iter().zip(replies) {
            let raised = matches!(r.first(), Some(Value::Int(1)));
            if raised {
                out.kept += 1;
                continue;
            }
            match r.get(1) {
                Some(Value::Int(-2)) if !raised => out.gone.push(key.clone()),
                // Read just after the raise: at least about the protection's TTL when kept.
                Some(Value::Int(t)) if raised || *t == -1 || *t as u64 >= ms / 2 => out.kept += 1,
                // A raise refused (an error reply) on a key with less left: not protected.
                _ => {}
            }
        }
        out
    }
}

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

    /// OBJECT IDLETIME of every key, in seconds; None where Redis keeps none (an LFU
    /// maxmemory-policy answers with an error) or the key is gone.
    pub async fn idle_times(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<u64>>> {
        let replies = self
            .per_key(keys, |pipe, i| {
                pipe.cmd("OBJECT").arg("IDLETIME").arg(&keys[i]);
            })
            .await?;
        Ok(replies
            .into_iter()
            .map(|r| match r.first() {
                Some(Value::Int(n)) if *n >= 0 => Some(*n as u64),
                _ => None,
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
        let mut fetched: Vec<Fetched> = probes
            .iter()
            .zip(replies)
            .map(|(p, r)| Layout::fetched(p.clone(), r.into_iter().next()))
            .collect();
        // Keys the fetch found of another type: their type, for the reject.
        let other: Vec<usize> = (0..fetched.len())
            .filter(|&i| matches!(&fetched[i], Fetched::WrongType(t) if t == OTHER_TYPE))
            .collect();
        if !other.is_empty() {
            let keys: Vec<Vec<u8>> = other.iter().map(|&i| keys[i].clone()).collect();
            let types = self
                .per_key(&keys, |pipe, i| {
                    pipe.cmd("TYPE").arg(&keys[i]);
                })
                .await?;
            for (i, t) in other.into_iter().zip(types) {
                let expected = match &probes[i] {
                    Probe::Read { layout, .. } | Probe::Sample { layout, .. } => layout.expected(),
                    _ => "",
                };
                fetched[i] = match t.first() {
                    Some(Value::SimpleString(t)) if t == "none" => Fetched::Gone,
                    // Replaced twice meanwhile: the next sweep reads what it is then.
                    Some(Value::SimpleString(t)) if t == expected => continue,
                    Some(Value::SimpleString(t)) => Fetched::WrongType(t.clone()),
                    _ => continue,
                };
            }
        }
        Ok(fetched)
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
    /// with more left is untouched), then reads the TTL of each key not raised to tell what
    /// became of it (gone, or kept by a TTL already above). A server older than Redis 7.0 (Redis
    /// 6.2-compatible managed services) has no GT: the same is done by a script, from the first
    /// refusal on. One command per due key, nearly always: under a pace, protecting the rest of
    /// a keyspace costs what reading it does (PTTL and a read, or PTTL and a raise).
    pub async fn protect(&mut self, keys: &[Vec<u8>], ttl: Duration) -> Result<Protected> {
        let ms = ttl.as_millis() as u64;
        let mut replies = match self.raise_by_script {
            false => {
                let gt = self
                    .per_key(keys, |pipe, i| {
                        pipe.cmd("PEXPIRE").arg(&keys[i]).arg(ms).arg("GT");
                    })
                    .await;
                match gt {
                    Err(e) if no_gt_option(&e) => {
                        tracing::info!(
                            "Redis has no PEXPIRE ... GT (before 7.0): protecting with a script that only raises TTLs"
                        );
                        self.raise_by_script = true;
                        self.raise_with_script(keys, ms).await?
                    }
                    other => other?,
                }
            }
            true => self.raise_with_script(keys, ms).await?,
        };
        let unraised: Vec<usize> = (0..keys.len())
            .filter(|&i| !matches!(replies[i].first(), Some(Value::Int(1))))
            .collect();
        if !unraised.is_empty() {
            let asked: Vec<Vec<u8>> = unraised.iter().map(|&i| keys[i].clone()).collect();
            let ttls = self
                .per_key(&asked, |pipe, i| {
                    pipe.cmd("PTTL").arg(&asked[i]);
                })
                .await?;
            for (i, mut t) in unraised.into_iter().zip(ttls) {
                replies[i].append(&mut t);
            }
        }
        Ok(Protected::of(keys, &replies, ms))
    }

    async fn raise_with_script(&mut self, keys: &[Vec<u8>], ms: u64) -> Result<Vec<Vec<Value>>> {
        self.per_key(keys, |pipe, i| {
            pipe.cmd("EVAL").arg(RAISE_TTL).arg(1).arg(&keys[i]).arg(ms);
        })
        .await
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

impl Nodes {
    /// Writes a conversation back in a chat library's layout with a TTL (`restore --format`):
    /// only when the key does not exist, unless `replace`, as [`Nodes::put_back`]. A list or
    /// hash is rebuilt whole (DEL, then RPUSH or HSET), in one MULTI so the library never reads
    /// half of it.
    pub async fn put_back_layout(
        &mut self,
        write: &crate::mapping::Write,
        ttl: Duration,
        replace: bool,
    ) -> Result<std::result::Result<(), i64>> {
        use crate::mapping::Write;
        let key = write.key();
        let keys = [key.as_bytes().to_vec()];
        let live = self
            .per_key(&keys, |pipe, _| {
                pipe.cmd("PTTL").arg(key);
            })
            .await?;
        match live[0].first() {
            Some(Value::Int(pttl)) if *pttl != -2 && !replace => return Ok(Err(*pttl)),
            _ => {}
        }
        let replies = self
            .per_key(&keys, |pipe, _| {
                pipe.cmd("MULTI").cmd("DEL").arg(key);
                match write {
                    Write::Set { value, .. } => pipe.cmd("SET").arg(key).arg(value),
                    Write::JsonSet { value, .. } => {
                        pipe.cmd("JSON.SET").arg(key).arg("$").arg(value)
                    }
                    Write::RPush { values, .. } => pipe.cmd("RPUSH").arg(key).arg(values),
                    Write::HSet { fields, .. } => {
                        let set = pipe.cmd("HSET").arg(key);
                        for (f, v) in fields {
                            set.arg(f).arg(v);
                        }
                        set
                    }
                };
                pipe.cmd("PEXPIRE").arg(key).arg(ttl.as_millis() as u64);
                pipe.cmd("EXEC");
            })
            .await?;
        // Errors come back as replies (queued, or inside EXEC's): JSON.SET without RedisJSON.
        let failed = replies[0].iter().find_map(|r| match r {
            Value::ServerError(e) => Some(e.to_string()),
            Value::Array(a) => a.iter().find_map(|r| match r {
                Value::ServerError(e) => Some(e.to_string()),
                _ => None,
            }),
            _ => None,
        });
        if let Some(e) = failed {
            return Err(crate::error::Error::Other(format!(
                "restoring {key}: Redis answered {e}"
            )));
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protection_tells_kept_keys_from_keys_gone_meanwhile() {
        let keys: Vec<Vec<u8>> = ["raised", "turn", "forever", "gone", "refused"]
            .map(|k| k.as_bytes().to_vec())
            .to_vec();
        let replies = vec![
            vec![Value::Int(1), Value::Int(19_990)],
            // Not raised: a new turn set 30s, above the protection's 20s.
            vec![Value::Int(0), Value::Int(29_000)],
            vec![Value::Int(0), Value::Int(-1)],
            vec![Value::Int(0), Value::Int(-2)],
            // The raise refused (an error reply), and little left: not protected.
            vec![Value::Nil, Value::Int(900)],
        ];
        let p = Protected::of(&keys, &replies, 20_000);
        assert_eq!(p.kept, 3);
        assert_eq!(p.gone, vec![b"gone".to_vec()]);
    }
}
