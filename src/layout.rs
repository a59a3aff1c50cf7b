//! How a checkpoint is laid out in Redis, and how it is read back without surprises.
//!
//! Reading is two pipelined phases per page of due keys, so that a huge or foreign value is never
//! pulled whole: a *probe* (type and size of each key), then a *fetch* of what the probe allowed.
//! Other layouts (hashes, lists, RedisJSON) plug in here as new [`Layout`] variants.

use redis::{Pipeline, Value};

/// How much of a rejected value is kept for inspection in `sweep_rejects.raw`.
pub const REJECT_SAMPLE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// A Redis string holding the JSON document (`SET checkpoint:{id} '{...}'`).
    #[default]
    JsonString,
}

/// What the probe learnt of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Readable, `size` bytes.
    Read { size: u64 },
    /// Over the size limit: only its first bytes are fetched, as a sample for the reject.
    Sample { size: u64 },
    /// Of another Redis type: nothing to fetch.
    WrongType(String),
    /// Expired or deleted since its TTL was read.
    Gone,
}

/// What the fetch gave for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Value(Vec<u8>),
    TooLarge { size: u64, sample: Vec<u8> },
    WrongType(String),
    Gone,
}

impl Layout {
    /// Queues the probe commands for one key; [`Layout::PROBE_REPLIES`] replies each.
    pub fn queue_probe(self, pipe: &mut Pipeline, key: &[u8]) {
        match self {
            Layout::JsonString => {
                pipe.cmd("TYPE").arg(key).cmd("STRLEN").arg(key);
            }
        }
    }

    pub const PROBE_REPLIES: usize = 2;

    /// Reads the probe's replies for one key (`PROBE_REPLIES` of them).
    pub fn probe_result(self, replies: &[Value], max_value_bytes: u64) -> Probe {
        match self {
            Layout::JsonString => {
                let kind = match &replies[0] {
                    Value::SimpleString(s) => s.as_str(),
                    Value::Okay => "string",
                    _ => "unknown",
                };
                match kind {
                    "none" => Probe::Gone,
                    "string" => {
                        let size = match replies[1] {
                            Value::Int(n) => n.max(0) as u64,
                            _ => 0,
                        };
                        if size > max_value_bytes {
                            Probe::Sample { size }
                        } else {
                            Probe::Read { size }
                        }
                    }
                    other => Probe::WrongType(other.to_string()),
                }
            }
        }
    }

    /// Queues the one fetch command for a probed key, or nothing when there is nothing to fetch.
    pub fn queue_fetch(self, pipe: &mut Pipeline, key: &[u8], probe: &Probe) -> bool {
        match (self, probe) {
            (Layout::JsonString, Probe::Read { .. }) => {
                pipe.cmd("GET").arg(key);
                true
            }
            (Layout::JsonString, Probe::Sample { .. }) => {
                pipe.cmd("GETRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(REJECT_SAMPLE_BYTES - 1);
                true
            }
            (_, Probe::WrongType(_) | Probe::Gone) => false,
        }
    }

    /// Turns a probe and its fetch reply (if one was queued) into what the sweep decodes.
    pub fn fetched(self, probe: Probe, reply: Option<Value>) -> Fetched {
        match (probe, reply) {
            (Probe::WrongType(t), _) => Fetched::WrongType(t),
            (Probe::Gone, _) => Fetched::Gone,
            (Probe::Read { .. }, Some(Value::BulkString(b))) => Fetched::Value(b),
            (Probe::Sample { size }, Some(Value::BulkString(b))) => {
                Fetched::TooLarge { size, sample: b }
            }
            // Nil: the key expired between probe and fetch. A server error (WRONGTYPE): the key was
            // replaced by another type in between; the next sweep sees it as such.
            (Probe::Read { .. } | Probe::Sample { .. }, Some(Value::ServerError(e)))
                if e.code() == "WRONGTYPE" =>
            {
                Fetched::WrongType("non-string".into())
            }
            (Probe::Read { .. } | Probe::Sample { .. }, _) => Fetched::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: &str, len: i64) -> Probe {
        Layout::JsonString.probe_result(&[Value::SimpleString(kind.into()), Value::Int(len)], 100)
    }

    #[test]
    fn probe_sorts_keys_by_type_and_size() {
        assert_eq!(probe("string", 100), Probe::Read { size: 100 });
        assert_eq!(probe("string", 101), Probe::Sample { size: 101 });
        assert_eq!(probe("hash", 0), Probe::WrongType("hash".into()));
        assert_eq!(probe("none", 0), Probe::Gone);
    }

    #[test]
    fn fetch_replies_become_values_samples_or_gone() {
        let l = Layout::JsonString;
        assert_eq!(
            l.fetched(
                Probe::Read { size: 2 },
                Some(Value::BulkString(b"{}".to_vec()))
            ),
            Fetched::Value(b"{}".to_vec())
        );
        assert_eq!(
            l.fetched(Probe::Read { size: 2 }, Some(Value::Nil)),
            Fetched::Gone
        );
        assert_eq!(
            l.fetched(
                Probe::Sample { size: 9 },
                Some(Value::BulkString(b"abc".to_vec()))
            ),
            Fetched::TooLarge {
                size: 9,
                sample: b"abc".to_vec()
            }
        );
        assert_eq!(
            l.fetched(Probe::WrongType("list".into()), None),
            Fetched::WrongType("list".into())
        );
        let mut pipe = redis::pipe();
        assert!(!l.queue_fetch(&mut pipe, b"k", &Probe::Gone));
        assert!(l.queue_fetch(&mut pipe, b"k", &Probe::Read { size: 1 }));
    }
}
