//! The decode stage of a sweep: values read from Redis become batches of checkpoints and rejects
//! for the writers.
//!
//! It runs as its own task between the Redis reader and the PostgreSQL writers, so decoding (half
//! of the sweeper's CPU in a dry run) overlaps the reader's round trips instead of waiting between
//! them. The channels on both sides are bounded: memory stays bounded by the batch size.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::checkpoint::{self, Checkpoint, Reject};
use crate::config::SweepConfig;
use crate::logs::per_key::{self, Kind};
use crate::mapping::{Raw, Unit};
use crate::redis::cluster::Protected;
use crate::redis::langgraph::ThreadRead;
use crate::redis::layout::{Fetched, lossy_json_array};
use crate::redis::node::display_key;
use crate::redis::read::Read;
use crate::run::{Counters, DueKey};
use crate::store::{Batch, RejectRecord};

/// A batch is also sent once its checkpoints hold this many bytes, whatever their number.
const BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Counts and warns of a due key that expired before its value was read: the reader finds it
/// by its TTL, the decoder by its missing value.
pub(crate) fn expired(counters: &mut Counters, key: &[u8]) {
    counters.expired_before_read += 1;
    if per_key::show(Kind::Expired) {
        tracing::warn!(key = %display_key(key), "key expired before it could be read: its last state was not saved");
    }
}

/// Counts a protection of the due keys `due`: the keys kept as `protected`, a due key gone
/// before it could be protected as `expired_before_read`, with its warning (its last state may
/// not be saved). Returns how many due keys were gone, for the caller to take off `due` (the
/// writers' counts are merged with the decoder's, which counted them due), so the summary still
/// adds up. (Other keys protected with them, a LangGraph thread's older ones, are not due keys.)
pub(crate) fn count_protected(counters: &mut Counters, p: Protected, due: &[Vec<u8>]) -> u64 {
    counters.protected += p.kept;
    let mut gone = 0;
    for key in p.gone.iter().filter(|k| due.contains(k)) {
        expired(counters, key);
        gone += 1;
    }
    gone
}

/// Values decoded between two yields to the reader's tasks.
const YIELD_EVERY: usize = 8;

/// A fetched value decoded (see [`Decoder::decode_fetched`]).
type DecodedValue = (Result<(usize, Option<Checkpoint>), Reject>, Vec<u8>, u64);

/// One value decoded as a sweep decodes it (the same rejects), for `inspect`'s samples: the
/// conversation id and message count, or the reject's reason. None: the key was gone.
pub fn decode_sample(
    cfg: &SweepConfig,
    key: &[u8],
    fetched: Fetched,
) -> Option<Result<(String, usize), String>> {
    let cfg = SweepConfig {
        dry_run: false,
        ..cfg.clone()
    };
    let (decoded, _, _) = Decoder::new(cfg).decode_fetched(key, fetched)?;
    Some(match decoded {
        Ok((n, Some(c))) => Ok((c.conversation_id, n)),
        Ok((n, None)) => Ok((String::new(), n)),
        Err(reject) => Err(reject.to_string()),
    })
}

/// The conversation and user each value belongs to, decoded as a sweep decodes it (`forget`
/// finding a user's live keys). None: gone or not a conversation.
pub fn decode_owners(
    cfg: &SweepConfig,
    keys: &[Vec<u8>],
    fetched: Vec<Fetched>,
) -> Vec<Option<(String, Option<String>)>> {
    let decoder = Decoder::new(SweepConfig {
        dry_run: false,
        ..cfg.clone()
    });
    keys.iter()
        .zip(fetched)
        .map(|(key, f)| match decoder.decode_fetched(key, f)? {
            (Ok((_, Some(c))), _, _) => Some((c.conversation_id, c.user_id)),
            _ => None,
        })
        .collect()
}

/// What the writers receive.
pub(crate) struct ReadBatch {
    pub batch: Batch,
    /// Filled on dry runs only: what the table shows.
    pub due_keys: Vec<DueKey>,
    /// The keys of the batch's checkpoints and threads with a TTL, and when each runs out: a
    /// write slower than usual has those about to run out shielded.
    pub expiring: Vec<(Instant, Vec<u8>)>,
}

impl ReadBatch {
    fn new() -> ReadBatch {
        ReadBatch {
            batch: Batch::default(),
            due_keys: Vec::new(),
            expiring: Vec::new(),
        }
    }
}

pub(crate) struct Decoder {
    cfg: SweepConfig,
    /// `due`, `rejected` and `expired_before_read` of the keys decoded here.
    counters: Counters,
    current: ReadBatch,
    current_bytes: usize,
    /// Values in the current batch: on dry runs, which build no checkpoints, more than it holds.
    taken: usize,
}

impl Decoder {
    pub fn new(cfg: SweepConfig) -> Decoder {
        Decoder {
            cfg,
            counters: Counters::default(),
            current: ReadBatch::new(),
            current_bytes: 0,
            taken: 0,
        }
    }

    /// Decodes what the reader sends until it is done, sending each batch as it fills and the
    /// last one at the end. Returns early when the writers have gone (the reader sees this
    /// stage gone in turn).
    pub async fn run(
        mut self,
        mut reads: mpsc::Receiver<Vec<Read>>,
        tx: mpsc::Sender<ReadBatch>,
    ) -> Counters {
        while let Some(chunk) = reads.recv().await {
            // An empty run: the reader protects due keys instead of reading them, so the batch
            // will not fill; what it holds goes on now.
            if chunk.is_empty() && !self.send(&tx).await {
                return self.counters;
            }
            for (i, read) in chunk.into_iter().enumerate() {
                // The runtime has one thread: decoding a whole chunk at once would leave
                // Redis's replies waiting unread, and Redis idle, meanwhile.
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    tokio::task::yield_now().await;
                }
                self.take(read);
                let full = self.taken >= self.cfg.batch_size || self.current_bytes >= BATCH_BYTES;
                if full && !self.send(&tx).await {
                    return self.counters;
                }
            }
        }
        self.send(&tx).await;
        self.counters
    }

    fn take(&mut self, read: Read) {
        let b = &self.current.batch;
        let (checkpoints, threads) = (b.checkpoints.len(), b.threads.len());
        let expires = match read {
            Read::Value {
                key,
                ttl_ms,
                expires,
                fetched,
            } => {
                self.take_value(key, ttl_ms, fetched);
                expires
            }
            Read::Thread {
                key,
                ttl_ms,
                expires,
                read,
            } => {
                self.take_thread(&key, ttl_ms, read);
                expires
            }
        };
        let (Some(at), false) = (expires, self.cfg.dry_run) else {
            return;
        };
        // The keys a write of this batch would protect: its checkpoints' and threads'.
        let b = &self.current.batch;
        let keys = b.checkpoints[checkpoints..]
            .iter()
            .map(|c| c.redis_key.clone().into_bytes())
            .chain(b.threads[threads..].iter().flat_map(|t| t.keys.clone()));
        self.current.expiring.extend(keys.map(|k| (at, k)));
    }

    /// Decodes one fetched value into the current batch, as a checkpoint or a reject. A dry run
    /// writes nothing, so it only checks each value as a sweep would (the same rejects) and
    /// counts its messages: building the rows took most of its CPU.
    fn take_value(&mut self, key: Vec<u8>, ttl_ms: u64, fetched: Fetched) {
        let shown = display_key(&key);
        let Some((decoded, value, size)) = self.decode_fetched(&key, fetched) else {
            return expired(&mut self.counters, &key);
        };
        self.counters.due += 1;
        self.taken += 1;
        if self.cfg.dry_run {
            self.current.due_keys.push(DueKey {
                key: shown.clone(),
                ttl_ms,
                bytes: size,
                messages: decoded.as_ref().ok().map(|(n, _)| *n),
                reject: decoded.as_ref().err().map(|r| r.to_string()),
            });
        }
        match decoded {
            Ok((_, Some(c))) => {
                self.current_bytes += c.document.len();
                self.current.batch.checkpoints.push(c);
            }
            Ok((_, None)) => self.current_bytes += size as usize,
            Err(reason) => {
                self.counters.rejected += 1;
                if per_key::show(Kind::Rejected) {
                    tracing::warn!(key = %shown, %reason, "checkpoint rejected: set aside in sweep_rejects");
                }
                self.current
                    .batch
                    .rejects
                    .push(RejectRecord::new(shown, reason, &value, size));
            }
        }
    }

    /// What a fetch gave, decoded: the message count and the checkpoint to write (None on dry
    /// runs) or the reject, with the value as a reject keeps it and its size. None: the key was
    /// gone.
    fn decode_fetched(&self, key: &[u8], fetched: Fetched) -> Option<DecodedValue> {
        Some(match fetched {
            Fetched::Gone => return None,
            Fetched::WrongType(found) => (
                Err(Reject::WrongType {
                    expected: self.cfg.layout.expected(),
                    found: found.clone(),
                }),
                found.into_bytes(),
                0,
            ),
            Fetched::Invalid { reject, raw } => {
                let size = raw.len() as u64;
                (Err(reject), raw, size)
            }
            Fetched::TooLarge { size, sample } => (
                Err(Reject::TooLarge {
                    size,
                    limit: self.cfg.max_value_bytes,
                }),
                sample,
                size,
            ),
            Fetched::Value(v) => {
                let decoded = self.decode(key, Raw::Text(&v));
                let size = v.len() as u64;
                (decoded, v, size)
            }
            // A reject keeps the elements or fields as a JSON array of strings; a value decoded
            // is sized as it is stored (the elements in a JSON array), without building that.
            Fetched::List(items) => {
                let decoded = self.decode(key, Raw::List(&items));
                let (value, size) = match &decoded {
                    Ok(_) => (
                        Vec::new(),
                        items.iter().map(|e| e.len() as u64 + 1).sum::<u64>() + 1,
                    ),
                    Err(_) => {
                        let value = lossy_json_array(&items);
                        let size = value.len() as u64;
                        (value, size)
                    }
                };
                (decoded, value, size)
            }
            Fetched::Hash(pairs) => {
                let decoded = self.decode(key, Raw::Hash(&pairs));
                let (value, size) = match &decoded {
                    Ok(_) => (
                        Vec::new(),
                        pairs.iter().map(|(f, v)| (f.len() + v.len()) as u64).sum(),
                    ),
                    Err(_) => {
                        let flat: Vec<Vec<u8>> =
                            pairs.iter().flat_map(|(f, v)| [f, v]).cloned().collect();
                        let value = lossy_json_array(&flat);
                        let size = value.len() as u64;
                        (value, size)
                    }
                };
                (decoded, value, size)
            }
        })
    }

    /// A value decoded: its message count, and the checkpoint to write (None on dry runs of the
    /// native document, which only check it). A mapping decodes lists and hashes as they are.
    fn decode(&self, key: &[u8], raw: Raw) -> Result<(usize, Option<Checkpoint>), Reject> {
        let key = std::str::from_utf8(key).map_err(|_| Reject::KeyNotUtf8)?;
        if let Some(m) = &self.cfg.mapping {
            if self.cfg.dry_run {
                return m.check(key, raw).map(|n| (n, None));
            }
            // Messages are built by the store for the conversations it writes.
            let d = m.decode_packed(key, raw)?;
            return Ok((d.checkpoint.message_count(), Some(d.checkpoint)));
        }
        let Raw::Text(v) = raw else {
            return Err(Reject::NotJson("a list or hash needs a mapping".into()));
        };
        let id = checkpoint::conversation_id(key, &self.cfg.prefix)?;
        match self.cfg.dry_run {
            true => checkpoint::check(v).map(|n| (n, None)),
            // Messages are built by the store for the conversations it writes (not for those
            // it already holds as they are).
            false => checkpoint::decode_packed(key, id, v).map(|c| (c.message_count(), Some(c))),
        }
    }

    /// One thread read into the current batch, as a thread or a reject.
    fn take_thread(&mut self, key: &[u8], ttl_ms: u64, read: ThreadRead) {
        let (shown, bytes, checkpoints, reject) = match read {
            ThreadRead::Gone { .. } => return expired(&mut self.counters, key),
            ThreadRead::Thread(t) => {
                let out = (t.latest_key.clone(), t.bytes as u64, t.checkpoints.len());
                self.current_bytes += t.bytes;
                self.current.batch.threads.push(t);
                (out.0, out.1, Some(out.2), None)
            }
            ThreadRead::Rejected { key, reason, raw } => {
                self.counters.rejected += 1;
                if per_key::show(Kind::Rejected) {
                    tracing::warn!(key = %key, %reason, "LangGraph thread rejected: set aside in sweep_rejects");
                }
                let size = raw.len() as u64;
                let why = reason.to_string();
                self.current
                    .batch
                    .rejects
                    .push(RejectRecord::new(key.clone(), reason, &raw, size));
                (key, size, None, Some(why))
            }
        };
        self.counters.due += 1;
        self.taken += 1;
        if self.cfg.dry_run {
            // `messages` shows a thread's checkpoints.
            self.current.due_keys.push(DueKey {
                key: shown,
                ttl_ms,
                bytes,
                messages: checkpoints,
                reject,
            });
        }
    }

    /// Sends the current batch; false when the writers have gone.
    async fn send(&mut self, tx: &mpsc::Sender<ReadBatch>) -> bool {
        if self.taken == 0 {
            return true;
        }
        let mut full = std::mem::replace(&mut self.current, ReadBatch::new());
        if self
            .cfg
            .mapping
            .as_ref()
            .is_some_and(|m| m.unit == Unit::Message)
        {
            // One key per message: the store numbers a conversation's new messages in batch
            // order, so they go in time order (then by key, a sortable id in the presets).
            full.batch.checkpoints.sort_by(|a, b| {
                let at = |c: &Checkpoint| c.messages.first().and_then(|m| m.created_at);
                (&a.conversation_id, at(a), &a.redis_key).cmp(&(
                    &b.conversation_id,
                    at(b),
                    &b.redis_key,
                ))
            });
        }
        self.current_bytes = 0;
        self.taken = 0;
        tx.send(full).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SweepConfig;

    #[test]
    fn a_due_key_gone_before_protection_is_counted_expired_not_protected() {
        let mut c = Counters::default();
        let due = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        let p = Protected {
            kept: 2,
            // "old" was protected with the due keys (a thread's older key): not a due key.
            gone: vec![b"c".to_vec(), b"old".to_vec()],
        };
        assert_eq!(count_protected(&mut c, p, &due), 1);
        assert_eq!((c.protected, c.expired_before_read), (2, 1));
    }

    fn decoder(dry_run: bool) -> Decoder {
        let cfg = SweepConfig {
            batch_size: 10,
            max_value_bytes: 100,
            dry_run,
            ..SweepConfig::default()
        }
        .validate()
        .unwrap();
        Decoder::new(cfg)
    }

    #[test]
    fn a_key_gone_before_its_value_was_read_is_counted_not_saved() {
        let mut r = decoder(false);
        r.take_value(b"checkpoint:a".to_vec(), 5, Fetched::Gone);
        assert_eq!(r.counters.expired_before_read, 1);
        assert_eq!(r.counters.due, 0);
        assert!(r.current.batch.is_empty());
    }

    #[tokio::test]
    async fn an_empty_run_hands_over_the_batch_held_without_waiting_for_it_to_fill() {
        let (reads_tx, reads) = mpsc::channel(4);
        let (tx, mut batches) = mpsc::channel(4);
        let decoding = tokio::spawn(decoder(false).run(reads, tx));
        let read = |id: &str| Read::Value {
            key: format!("checkpoint:{id}").into_bytes(),
            ttl_ms: 5,
            expires: None,
            fetched: Fetched::Value(br#"{"messages": []}"#.to_vec()),
        };
        reads_tx.send(vec![read("a"), read("b")]).await.unwrap();
        reads_tx.send(Vec::new()).await.unwrap();
        let held = tokio::time::timeout(std::time::Duration::from_secs(5), batches.recv())
            .await
            .expect("handed over while the reads go on")
            .unwrap();
        assert_eq!(held.batch.checkpoints.len(), 2, "batches of 10: not full");
        reads_tx.send(Vec::new()).await.unwrap();
        reads_tx.send(vec![read("c")]).await.unwrap();
        drop(reads_tx);
        let rest = batches.recv().await.unwrap();
        assert_eq!(
            rest.batch.checkpoints.len(),
            1,
            "nothing held: nothing sent"
        );
        assert_eq!(decoding.await.unwrap().due, 3);
    }

    #[test]
    fn values_become_checkpoints_or_rejects() {
        let mut r = decoder(false);
        r.take_value(
            b"checkpoint:a".to_vec(),
            5,
            Fetched::Value(br#"{"messages": []}"#.to_vec()),
        );
        r.take_value(
            b"checkpoint:b".to_vec(),
            6,
            Fetched::WrongType("hash".into()),
        );
        r.take_value(
            b"checkpoint:c".to_vec(),
            7,
            Fetched::TooLarge {
                size: 500,
                sample: b"{".to_vec(),
            },
        );
        r.take_value(
            b"checkpoint:".to_vec(),
            8,
            Fetched::Value(br#"{"messages": []}"#.to_vec()),
        );
        assert_eq!(r.counters.due, 4);
        assert_eq!(r.counters.rejected, 3);
        assert_eq!(r.current.batch.checkpoints.len(), 1);
        assert_eq!(r.current.batch.checkpoints[0].conversation_id, "a");
        let reasons: Vec<&str> = r
            .current
            .batch
            .rejects
            .iter()
            .map(|x| x.reason.split(':').next().unwrap())
            .collect();
        assert_eq!(
            reasons,
            ["wrong_type", "too_large", "empty_conversation_id"]
        );
        assert_eq!(r.current.batch.rejects[1].raw_size, 500);
        assert!(r.current.due_keys.is_empty(), "listed on dry runs only");
    }

    #[test]
    fn a_dry_run_lists_every_due_key_and_builds_no_checkpoint() {
        let mut r = decoder(true);
        let doc = br#"{"messages": [{"role": "user", "content": "hi"}]}"#;
        r.take_value(b"checkpoint:a".to_vec(), 5, Fetched::Value(doc.to_vec()));
        r.take_value(
            b"checkpoint:b".to_vec(),
            6,
            Fetched::Value(b"{\"messages\": 1}".to_vec()),
        );
        r.take_value(b"checkpoint:c".to_vec(), 7, Fetched::Gone);
        assert_eq!((r.counters.due, r.counters.rejected), (2, 1));
        assert!(r.current.batch.checkpoints.is_empty());
        assert_eq!(r.current.batch.rejects.len(), 1);
        let keys = &r.current.due_keys;
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (keys[0].messages, keys[0].bytes),
            (Some(1), doc.len() as u64)
        );
        assert!(
            keys[1]
                .reject
                .as_deref()
                .unwrap()
                .starts_with("bad_messages")
        );
        assert_eq!(r.taken, 2, "what fills a batch");
    }

    fn values(ids: std::ops::Range<usize>) -> Vec<Read> {
        ids.map(|i| Read::Value {
            key: format!("checkpoint:c{i}").into_bytes(),
            ttl_ms: 1,
            expires: None,
            fetched: Fetched::Value(br#"{"messages": []}"#.to_vec()),
        })
        .collect()
    }

    #[tokio::test]
    async fn batches_fill_to_the_batch_size_and_the_rest_goes_when_reading_ends() {
        let (reads_tx, reads_rx) = mpsc::channel(2);
        let (tx, mut rx) = mpsc::channel(10);
        let task = tokio::spawn(decoder(false).run(reads_rx, tx));
        reads_tx.send(values(0..15)).await.unwrap();
        reads_tx.send(values(15..23)).await.unwrap();
        drop(reads_tx);
        let counters = task.await.unwrap();
        let sizes: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|b| b.batch.len())
            .collect();
        assert_eq!(sizes, [10, 10, 3]);
        assert_eq!(counters.due, 23);
    }

    #[tokio::test]
    async fn decoding_stops_when_the_writers_have_gone_and_the_reader_sees_it() {
        let (reads_tx, reads_rx) = mpsc::channel(2);
        let (tx, rx) = mpsc::channel(10);
        drop(rx);
        let task = tokio::spawn(decoder(false).run(reads_rx, tx));
        reads_tx.send(values(0..15)).await.unwrap();
        let counters = task.await.unwrap();
        assert_eq!(
            counters.due, 10,
            "stopped at the first batch it could not send"
        );
        assert!(reads_tx.send(values(15..16)).await.is_err());
    }
}
