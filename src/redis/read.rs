//! Reading due keys: what the sweep calls for "read these due keys". A layout's strategy decides
//! what that takes: one value per key (read in one bounded command where the layout allows,
//! else probed and fetched in runs of bounded bytes), or a whole LangGraph thread per key. The
//! same strategy names the keys to protect when PostgreSQL cannot take them.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::error::Result;
use crate::redis::Nodes;
use crate::redis::langgraph::{ThreadRead, read_threads};
use crate::redis::layout::{Fetched, Layout, Probe};
use crate::redis::node::fetch_chunks;

/// A due key as the selection found it.
#[derive(Debug, Clone)]
pub struct Due {
    pub key: Vec<u8>,
    /// TTL left when its TTL was read (0 for a key with none, due for being idle).
    pub ttl_ms: u64,
    /// When that TTL runs out, counted from the reply that gave it (so late by at most the
    /// reply's way back); None: no TTL.
    pub expires: Option<Instant>,
}

/// One due key as it was read.
pub enum Read {
    /// A checkpoint's value (or why there is none).
    Value {
        key: Vec<u8>,
        ttl_ms: u64,
        expires: Option<Instant>,
        fetched: Fetched,
    },
    /// `--format langgraph`: a thread, read whole.
    Thread {
        key: Vec<u8>,
        ttl_ms: u64,
        expires: Option<Instant>,
        read: ThreadRead,
    },
}

/// How the due keys of a layout are read.
#[derive(Debug, Clone)]
pub enum DueReader {
    /// Each key holds one conversation's value.
    Values {
        layout: Layout,
        max_value_bytes: u64,
    },
    /// Each key is a LangGraph thread's `checkpoint_latest:` key; the thread is read whole.
    Threads { latest_prefix: String },
}

impl DueReader {
    pub fn new(layout: Layout, max_value_bytes: u64, prefix: &str) -> DueReader {
        match layout {
            Layout::LangGraph => DueReader::Threads {
                latest_prefix: prefix.to_string(),
            },
            layout => DueReader::Values {
                layout,
                max_value_bytes,
            },
        }
    }

    /// Reads due keys (key, TTL left), sending what was read in runs of bounded memory. False
    /// when the receiver has gone.
    pub async fn read(
        &self,
        source: &mut Nodes,
        due: &[Due],
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<bool> {
        let keys: Vec<Vec<u8>> = due.iter().map(|d| d.key.clone()).collect();
        match self {
            DueReader::Values {
                layout,
                max_value_bytes,
            } => {
                let mut reads = ValueReads::new(*layout, &keys, *max_value_bytes);
                while let Some(run) = reads.next(source).await? {
                    let read = run.into_iter().map(|(i, fetched)| Read::Value {
                        key: keys[i].clone(),
                        ttl_ms: due[i].ttl_ms,
                        expires: due[i].expires,
                        fetched,
                    });
                    if tx.send(read.collect()).await.is_err() {
                        return Ok(false);
                    }
                }
            }
            DueReader::Threads { latest_prefix } => {
                let threads = read_threads(source, &keys, latest_prefix).await?;
                let read = due.iter().zip(threads).map(|(due, read)| Read::Thread {
                    key: due.key.clone(),
                    ttl_ms: due.ttl_ms,
                    expires: due.expires,
                    read,
                });
                if tx.send(read.collect()).await.is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Every key holding the conversations of these due keys, to protect: the keys themselves,
    /// or every key of each LangGraph thread (a key whose thread cannot be read stands for
    /// itself).
    pub async fn keys_to_protect(
        &self,
        source: &mut Nodes,
        due: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>> {
        let DueReader::Threads { latest_prefix } = self else {
            return Ok(due);
        };
        let read = read_threads(source, &due, latest_prefix).await?;
        Ok(due
            .into_iter()
            .zip(read)
            .flat_map(|(key, r)| match r {
                ThreadRead::Thread(t) => t.keys,
                _ => vec![key],
            })
            .collect())
    }
}

/// The values of some keys, read run by run: first those one bounded command settles (a `json`
/// key's first 64 KiB), then the others probed (type and size) and fetched in runs of bounded
/// bytes. Each run is (index into the keys, what was read).
pub struct ValueReads<'k> {
    layout: Layout,
    max_value_bytes: u64,
    keys: &'k [Vec<u8>],
    state: State,
}

enum State {
    Start,
    Fetching {
        /// Indexes (into `keys`) of the probed keys, their keys and probes, and the runs left.
        rest: Vec<usize>,
        rest_keys: Vec<Vec<u8>>,
        probes: Vec<Probe>,
        runs: VecDeque<Range<usize>>,
    },
    Done,
}

impl<'k> ValueReads<'k> {
    pub fn new(layout: Layout, keys: &'k [Vec<u8>], max_value_bytes: u64) -> ValueReads<'k> {
        ValueReads {
            layout,
            max_value_bytes,
            keys,
            state: State::Start,
        }
    }

    /// The next run of values; None when every key has been read.
    pub async fn next(&mut self, source: &mut Nodes) -> Result<Option<Vec<(usize, Fetched)>>> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Start => {
                    let inline = match self.layout.reads_inline() {
                        true => source.read_inline(self.keys, self.max_value_bytes).await?,
                        false => vec![None; self.keys.len()],
                    };
                    let (mut read, mut rest) = (Vec::new(), Vec::new());
                    for (i, f) in inline.into_iter().enumerate() {
                        match f {
                            Some(fetched) => read.push((i, fetched)),
                            None => rest.push(i),
                        }
                    }
                    self.state = State::Done;
                    if !rest.is_empty() {
                        let rest_keys: Vec<Vec<u8>> =
                            rest.iter().map(|&i| self.keys[i].clone()).collect();
                        let probes = source
                            .probe(self.layout, &rest_keys, self.max_value_bytes)
                            .await?;
                        let runs = fetch_chunks(&probes, source.max_pipeline()).into();
                        self.state = State::Fetching {
                            rest,
                            rest_keys,
                            probes,
                            runs,
                        };
                    }
                    if !read.is_empty() {
                        return Ok(Some(read));
                    }
                }
                State::Fetching {
                    rest,
                    rest_keys,
                    probes,
                    runs,
                } => {
                    let Some(run) = runs.pop_front() else {
                        self.state = State::Done;
                        continue;
                    };
                    let fetched = source
                        .fetch(&rest_keys[run.clone()], &probes[run.clone()])
                        .await?;
                    return Ok(Some(rest[run].iter().copied().zip(fetched).collect()));
                }
            }
        }
    }
}
