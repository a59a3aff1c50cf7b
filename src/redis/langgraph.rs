//! Reads due LangGraph threads from Redis, whole: from each due `checkpoint_latest:` key to every
//! checkpoint and pending write of its thread and namespace. Three pipelined round trips per
//! batch of threads (GET the latest keys; JSON.GET their documents' thread and namespace;
//! FT.SEARCH both indexes), more only for a thread with over [`PAGE`] documents. None of these
//! commands touches a TTL.

use redis::Value;

use crate::checkpoint::Reject;
use crate::error::Result;
use crate::langgraph::{Thread, checkpoint_rows, indexes, pg_namespace, write_row};
use crate::redis::cluster::Nodes;
use crate::redis::node::display_key;

/// The prefix of RedisSaver's per-checkpoint write registries (`write_keys_zset:{thread}:{ns}:
/// {checkpoint_id}`, a sorted set of that checkpoint's write keys): fixed in its key_registry, not
/// derived from the checkpoint prefix.
const WRITE_KEYS_ZSET: &str = "write_keys_zset:";

/// Documents asked of FT.SEARCH at a time.
pub const PAGE: usize = 1000;

/// A key and its JSON document, as FT.SEARCH gives them.
type Doc = (Vec<u8>, Vec<u8>);

/// What reading one due latest key gave.
#[derive(Debug, Clone, PartialEq)]
pub enum ThreadRead {
    Thread(Thread),
    /// Set aside: `raw` is what was read, for `sweep_rejects`.
    Rejected {
        key: String,
        reason: Reject,
        raw: Vec<u8>,
    },
    /// Expired (or deleted) between its TTL and its read.
    Gone {
        key: String,
    },
}

/// The write registry of a checkpoint key: RedisSaver builds both from the same parts
/// (`{prefix}:{thread}:{ns}:{checkpoint_id}`), so the registry's is the checkpoint key with its
/// prefix replaced.
pub fn write_keys_zset(checkpoint_key: &[u8], checkpoint_prefix: &str) -> Option<Vec<u8>> {
    let rest = checkpoint_key
        .strip_prefix(checkpoint_prefix.as_bytes())?
        .strip_prefix(b":")?;
    Some([WRITE_KEYS_ZSET.as_bytes(), rest].concat())
}

/// A TAG query value: every character but letters, digits and `_` escaped, as RediSearch needs.
pub fn escape_tag(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if !(c.is_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// An FT.SEARCH reply (RESP2): the total, then each key and its fields (`$`: the JSON document).
fn search_docs(reply: &Value) -> Option<(usize, Vec<Doc>)> {
    let Value::Array(items) = reply else {
        return None;
    };
    let total = match items.first()? {
        Value::Int(n) => *n as usize,
        _ => return None,
    };
    let mut docs = Vec::new();
    let mut it = items[1..].iter();
    while let (Some(key), Some(fields)) = (it.next(), it.next()) {
        let key = bytes(key)?.to_vec();
        let Value::Array(fields) = fields else {
            return None;
        };
        let doc = fields
            .chunks(2)
            .find(|f| f.len() == 2 && bytes(&f[0]) == Some(b"$"))
            .and_then(|f| bytes(&f[1]))?;
        docs.push((key, doc.to_vec()));
    }
    Some((total, docs))
}

fn search(index: &str, query: &str, offset: usize) -> redis::Cmd {
    let mut c = redis::cmd("FT.SEARCH");
    c.arg(index)
        .arg(query)
        .arg("LIMIT")
        .arg(offset)
        .arg(PAGE)
        .arg("DIALECT")
        .arg(2);
    c
}

/// Reads the threads of `latest_keys` (due `checkpoint_latest:` keys), one result per key.
pub async fn read_threads(
    source: &mut Nodes,
    latest_keys: &[Vec<u8>],
    latest_prefix: &str,
) -> Result<Vec<ThreadRead>> {
    let (cp_index, write_index) = indexes(latest_prefix).unwrap_or_default();
    let mut out = Reads {
        out: vec![None; latest_keys.len()],
        shown: latest_keys.iter().map(|k| display_key(k)).collect(),
    };
    let newest = newest_checkpoints(source, latest_keys, &mut out).await?;
    let threads = threads_of(source, &newest, &mut out).await?;
    let docs = search_threads(source, latest_keys, &threads, &cp_index, &write_index).await?;
    let (mut out, shown) = (out.out, out.shown);
    for ((i, thread_id, ns), [cps, writes]) in threads.into_iter().zip(docs) {
        out[i] = Some(assemble(
            &shown[i],
            &latest_keys[i],
            thread_id,
            &ns,
            &cp_index,
            cps,
            writes,
        ));
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or(ThreadRead::Gone {
                key: shown[i].clone(),
            })
        })
        .collect())
}

/// The results so far, one per latest key, and the keys as logs show them.
struct Reads {
    out: Vec<Option<ThreadRead>>,
    shown: Vec<String>,
}

impl Reads {
    fn gone(&mut self, i: usize) {
        self.out[i] = Some(ThreadRead::Gone {
            key: self.shown[i].clone(),
        });
    }

    fn reject(&mut self, i: usize, reason: Reject, raw: &[u8]) {
        self.out[i] = Some(ThreadRead::Rejected {
            key: self.shown[i].clone(),
            reason,
            raw: raw.to_vec(),
        });
    }
}

/// Step 1: the newest checkpoint's key, from each latest key: (index of the latest key, its value).
async fn newest_checkpoints(
    source: &mut Nodes,
    latest_keys: &[Vec<u8>],
    out: &mut Reads,
) -> Result<Vec<(usize, Vec<u8>)>> {
    let replies = source
        .per_key(latest_keys, |pipe, i| {
            pipe.cmd("GET").arg(&latest_keys[i]);
        })
        .await?;
    let mut newest: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        match r.first() {
            Some(Value::Nil) | None => out.gone(i),
            Some(Value::ServerError(_)) => out.reject(
                i,
                Reject::WrongType {
                    found: "non-string".into(),
                    expected: "string naming a LangGraph checkpoint",
                },
                b"",
            ),
            Some(v) => newest.push((i, bytes(v).unwrap_or_default().to_vec())),
        }
    }

    Ok(newest)
}

/// Step 2: each newest checkpoint's thread and namespace, as RedisSaver stored them (a key's parts can
/// hold `:`): (index of the latest key, thread, namespace).
async fn threads_of(
    source: &mut Nodes,
    newest: &[(usize, Vec<u8>)],
    out: &mut Reads,
) -> Result<Vec<(usize, String, String)>> {
    let keys: Vec<Vec<u8>> = newest.iter().map(|(_, k)| k.clone()).collect();
    let replies = source
        .per_key(&keys, |pipe, j| {
            pipe.cmd("JSON.GET")
                .arg(&keys[j])
                .arg("$.thread_id")
                .arg("$.checkpoint_ns");
        })
        .await?;
    let mut threads: Vec<(usize, String, String)> = Vec::new();
    for ((i, key), r) in newest.iter().zip(&replies) {
        let parsed = r
            .first()
            .and_then(bytes)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        match (r.first(), parsed) {
            (Some(Value::Nil) | None, _) => out.gone(*i),
            (_, Some(v)) => {
                let s = |p: &str| v[p][0].as_str().map(str::to_string);
                match (s("$.thread_id"), s("$.checkpoint_ns")) {
                    (Some(t), Some(ns)) => threads.push((*i, t, ns)),
                    _ => out.reject(
                        *i,
                        Reject::BadField {
                            field: "thread_id",
                            problem: "or checkpoint_ns missing from the newest checkpoint".into(),
                        },
                        key,
                    ),
                }
            }
            (Some(_), None) => out.reject(
                *i,
                Reject::WrongType {
                    found: "non-JSON value".into(),
                    expected: "RedisJSON checkpoint",
                },
                key,
            ),
        }
    }

    Ok(threads)
}

/// Step 3: every checkpoint and write of each thread, paged when there are many: per thread, its
/// checkpoint documents and its write documents.
async fn search_threads(
    source: &mut Nodes,
    latest_keys: &[Vec<u8>],
    threads: &[(usize, String, String)],
    cp_index: &str,
    write_index: &str,
) -> Result<Vec<[Vec<Doc>; 2]>> {
    let queries: Vec<String> = threads
        .iter()
        .map(|(_, t, ns)| {
            format!(
                "@thread_id:{{{}}} @checkpoint_ns:{{{}}}",
                escape_tag(t),
                escape_tag(ns)
            )
        })
        .collect();
    let route: Vec<Vec<u8>> = threads
        .iter()
        .map(|(i, _, _)| latest_keys[*i].clone())
        .collect();
    let mut docs: Vec<[Vec<Doc>; 2]> = vec![Default::default(); threads.len()];
    let mut pending: Vec<(usize, usize, usize)> = (0..threads.len())
        .flat_map(|j| [(j, 0, 0), (j, 1, 0)])
        .collect();
    while !pending.is_empty() {
        let keys: Vec<Vec<u8>> = pending.iter().map(|(j, _, _)| route[*j].clone()).collect();
        let replies = source
            .per_key(&keys, |pipe, p| {
                let (j, which, offset) = pending[p];
                let index = if which == 0 { cp_index } else { write_index };
                pipe.add_command(search(index, &queries[j], offset));
            })
            .await?;
        let mut next = Vec::new();
        for ((j, which, offset), r) in pending.iter().zip(replies) {
            let Some((total, found)) = r.first().and_then(search_docs) else {
                let why = match r.first() {
                    Some(Value::ServerError(e)) => format!("FT.SEARCH: {e:?}"),
                    _ => "FT.SEARCH gave no documents".into(),
                };
                return Err(crate::Error::Other(format!(
                    "reading LangGraph thread {} (are RedisSaver's indexes `{cp_index}` and `{write_index}` there?): {why}",
                    threads[*j].1
                )));
            };
            let got = found.len();
            docs[*j][*which].extend(found);
            if got > 0 && offset + got < total {
                next.push((*j, *which, offset + got));
            }
        }
        pending = next;
    }

    Ok(docs)
}

/// One thread's rows from its documents; the first document that is not LangGraph's rejects the
/// whole thread (half a thread would resume wrong). Its keys are the documents' and each
/// checkpoint's write registry: the registries are not read (FT.SEARCH finds every write, as
/// RedisSaver's own fallback does) but expire with the thread, so they are protected with it.
fn assemble(
    shown: &str,
    latest_key: &[u8],
    thread_id: String,
    redis_ns: &str,
    checkpoint_prefix: &str,
    checkpoints: Vec<Doc>,
    writes: Vec<Doc>,
) -> ThreadRead {
    let mut t = Thread {
        latest_key: shown.to_string(),
        thread_id,
        checkpoint_ns: pg_namespace(redis_ns),
        keys: vec![latest_key.to_vec()],
        ..Thread::default()
    };
    if checkpoints.is_empty() {
        return ThreadRead::Gone {
            key: shown.to_string(),
        };
    }
    for (key, doc) in checkpoints {
        t.bytes += doc.len();
        match checkpoint_rows(&doc) {
            Ok((row, blobs)) => {
                t.checkpoints.push(row);
                t.blobs.extend(blobs);
            }
            Err(reason) => return rejected(&key, reason, doc),
        }
        // (A registry that does not exist costs one PEXPIRE that raises nothing.)
        t.keys.extend(write_keys_zset(&key, checkpoint_prefix));
        t.keys.push(key);
    }
    for (key, doc) in writes {
        t.bytes += doc.len();
        match write_row(&doc) {
            Ok(w) => t.writes.push(w),
            Err(reason) => return rejected(&key, reason, doc),
        }
        t.keys.push(key);
    }
    // Stable order: the same thread read twice gives the same rows.
    t.checkpoints
        .sort_by(|a, b| a.checkpoint_id.cmp(&b.checkpoint_id));
    t.blobs
        .sort_by(|a, b| (&a.channel, &a.version).cmp(&(&b.channel, &b.version)));
    t.blobs
        .dedup_by(|a, b| a.channel == b.channel && a.version == b.version);
    t.writes.sort_by(|a, b| {
        (&a.checkpoint_id, &a.task_id, a.idx).cmp(&(&b.checkpoint_id, &b.task_id, b.idx))
    });
    ThreadRead::Thread(t)
}

fn rejected(key: &[u8], reason: Reject, raw: Vec<u8>) -> ThreadRead {
    ThreadRead::Rejected {
        key: display_key(key),
        reason,
        raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_come_from_the_latest_keys_prefix() {
        assert_eq!(
            indexes("checkpoint_latest:"),
            Some(("checkpoint".into(), "checkpoint_write".into()))
        );
        assert_eq!(
            indexes("app_latest:"),
            Some(("app".into(), "app_write".into()))
        );
        assert_eq!(indexes("checkpoint:"), None);
    }

    #[test]
    fn a_checkpoints_write_registry_shares_its_key_parts() {
        assert_eq!(
            write_keys_zset(b"checkpoint:user:42/chat:__empty__:1f1e", "checkpoint"),
            Some(b"write_keys_zset:user:42/chat:__empty__:1f1e".to_vec())
        );
        assert_eq!(
            write_keys_zset(b"checkpoint_write:t:ns:c", "checkpoint"),
            None
        );
    }

    #[test]
    fn tag_values_are_escaped() {
        assert_eq!(escape_tag("t1"), "t1");
        assert_eq!(escape_tag("a-b:c d{}"), "a\\-b\\:c\\ d\\{\\}");
        assert_eq!(escape_tag("__empty__"), "__empty__");
    }

    #[test]
    fn search_replies_give_keys_and_documents() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Int(3),
            b("checkpoint:a"),
            Value::Array(vec![b("$"), b("{}")]),
        ]);
        let (total, docs) = search_docs(&reply).unwrap();
        assert_eq!(total, 3);
        assert_eq!(docs, vec![(b"checkpoint:a".to_vec(), b"{}".to_vec())]);
        assert!(search_docs(&Value::Nil).is_none());
    }
}
