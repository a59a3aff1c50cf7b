//! How a checkpoint is laid out in Redis, and how it is read back without surprises.
//!
//! Reading is two pipelined phases per page of due keys, so that a huge or foreign value is never
//! pulled whole: a *probe* (size of each key, and its type where one layout reads several), then a
//! *fetch* of what the probe allowed. A key of another type than the layout's is told by the
//! fetch's WRONGTYPE, and its type asked then ([`OTHER_TYPE`]): such keys are rare, and a TYPE
//! per due key was a tenth of a list layout's reading.
//! A `json` key is first read in one bounded command instead (GETRANGE of its first
//! [`INLINE_BYTES`]): only the keys that read cannot settle are probed and fetched.
//! Every layout is turned here into the same JSON document, which [`crate::checkpoint`] decodes:
//!
//! - `json`: a string holding the document (`SET checkpoint:{id} '{...}'`);
//! - `hash`: the document's fields as hash fields; `messages` (a JSON array) and any field holding
//!   a JSON object or array are parsed, every other field is a string;
//! - `list`: one message JSON object per element, newest last; the document is `{"messages": [...]}`;
//! - `rejson`: a RedisJSON document (`JSON.SET`), read with `JSON.GET`;
//! - `auto`: any of these, decided per key by its Redis TYPE.
//!
//! None of the commands used (TYPE, STRLEN, MEMORY USAGE, GET, GETRANGE, HGETALL, HKEYS, LRANGE,
//! JSON.GET, JSON.OBJKEYS) touches a key's TTL.

use redis::{Pipeline, Value};

mod acl;
mod document;

pub use document::{hash_document, list_document, lossy_json_array};

use crate::checkpoint::Reject;

/// How much of a rejected value is kept for inspection in `sweep_rejects.raw`.
pub const REJECT_SAMPLE_BYTES: u64 = 64 * 1024;

/// String values shorter than this are read whole in one command, without a probe: a checkpoint
/// is typically a few KB. A pipeline of these reads holds at most this much per key.
pub const INLINE_BYTES: u64 = REJECT_SAMPLE_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Whichever of the others the key's TYPE says.
    Auto,
    /// A Redis string holding the JSON document.
    #[default]
    Json,
    /// A Redis hash of the document's fields.
    Hash,
    /// A Redis list of message JSON objects, newest last.
    List,
    /// A RedisJSON document.
    ReJson,
    /// A LangGraph thread, as langgraph-checkpoint-redis keeps it: due by its
    /// `checkpoint_latest:` key, read whole by [`crate::redis::langgraph`], not probed here.
    LangGraph,
    /// A list read as it is, its elements for a [mapping](crate::mapping) to decode.
    RawList,
    /// A hash read as it is, its fields for a [mapping](crate::mapping) to decode.
    RawHash,
}

/// What the probe learnt of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Readable as `layout` (never `Auto`), `size` bytes.
    Read { layout: Layout, size: u64 },
    /// Over the size limit: only a sample is fetched, for the reject.
    Sample { layout: Layout, size: u64 },
    /// Of another Redis type (the one named): nothing to fetch.
    WrongType(String),
    /// Expired or deleted since its TTL was read.
    Gone,
}

impl Probe {
    fn sized(layout: Layout, size: u64, max_value_bytes: u64) -> Probe {
        match size > max_value_bytes {
            true => Probe::Sample { layout, size },
            false => Probe::Read { layout, size },
        }
    }
}

/// What [`Fetched::WrongType`] holds for a key found of another type by its fetch, until its
/// TYPE is asked ([`crate::redis::Nodes::fetch`]).
pub const OTHER_TYPE: &str = "value of another type";

/// What the fetch gave for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The JSON document, for [`crate::checkpoint::decode`].
    Value(Vec<u8>),
    TooLarge {
        size: u64,
        sample: Vec<u8>,
    },
    /// Of another Redis type (the one named).
    WrongType(String),
    /// A list's elements in list order (`RawList`).
    List(Vec<Vec<u8>>),
    /// A hash's field and value pairs (`RawHash`).
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    /// Read, but its parts do not make a document (a hash field or list element that is not
    /// JSON); `raw` is what was read, for the reject.
    Invalid {
        reject: Reject,
        raw: Vec<u8>,
    },
    Gone,
}

impl Layout {
    /// The layout a key of this Redis TYPE has.
    fn of_type(redis_type: &str) -> Option<Layout> {
        match redis_type {
            "string" => Some(Layout::Json),
            "hash" => Some(Layout::Hash),
            "list" => Some(Layout::List),
            "ReJSON-RL" => Some(Layout::ReJson),
            _ => None,
        }
    }

    /// What a key must be, for wrong-type rejects: "a Redis set, not {expected}".
    pub fn expected(self) -> &'static str {
        match self {
            Layout::Auto => "string, hash, list or RedisJSON document",
            Layout::Json => "string",
            Layout::Hash => "hash",
            Layout::List => "list",
            Layout::ReJson => "RedisJSON document",
            Layout::LangGraph => "string naming a LangGraph checkpoint",
            Layout::RawList => "list",
            Layout::RawHash => "hash",
        }
    }

    /// The layout a probe's TYPE is compared with: a raw read is of the same Redis type.
    fn kind(self) -> Layout {
        match self {
            Layout::RawList => Layout::List,
            Layout::RawHash => Layout::Hash,
            l => l,
        }
    }

    /// Replies the probe of one key gets.
    pub fn probe_replies(self) -> usize {
        match self {
            Layout::Auto => 3,
            Layout::Json | Layout::ReJson => 2,
            _ => 1,
        }
    }

    /// Whether the probe asks the key's TYPE: for `auto` (which layout to read), `json` (a
    /// string's STRLEN answers for any type) and `rejson` (JSON.GET of another type fails with
    /// RedisJSON's own error, not WRONGTYPE); lists and hashes learn a wrong type from the fetch.
    fn probes_type(self) -> bool {
        matches!(self, Layout::Json | Layout::Auto | Layout::ReJson)
    }

    /// Queues the probe commands for one key ([`Layout::probe_replies`] replies): its TYPE where
    /// [needed](Layout::probes_type) and its size (STRLEN for a string: exact and cheap; MEMORY
    /// USAGE for the others, the only size Redis gives of a whole hash, list or RedisJSON
    /// document).
    pub fn queue_probe(self, pipe: &mut Pipeline, key: &[u8]) {
        if self.probes_type() {
            pipe.cmd("TYPE").arg(key);
        }
        if matches!(self, Layout::Json | Layout::Auto) {
            pipe.cmd("STRLEN").arg(key);
        }
        if self != Layout::Json {
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0);
        }
    }

    /// Whether keys of this layout are first read in one bounded command, and probed only when
    /// that read cannot settle them (see [`Layout::queue_read_inline`]).
    pub fn reads_inline(self) -> bool {
        self == Layout::Json
    }

    /// Queues a read of the first [`INLINE_BYTES`] of one key (GETRANGE never reads more,
    /// whatever the value's size): one command for what is, nearly always, the whole checkpoint.
    pub fn queue_read_inline(pipe: &mut Pipeline, key: &[u8]) {
        pipe.cmd("GETRANGE").arg(key).arg(0).arg(INLINE_BYTES - 1);
    }

    /// Reads the reply of [`Layout::queue_read_inline`]: the value, when the read holds all of it
    /// (shorter than the read), or a too-large reject when it is over `max_value_bytes`. None
    /// when only a probe can tell: a value as long as the read (maybe longer), an empty reply
    /// (an empty string, or a key gone), another type (WRONGTYPE).
    pub fn read_inline_result(reply: Option<Value>, max_value_bytes: u64) -> Option<Fetched> {
        let value = match reply {
            Some(Value::BulkString(b)) if !b.is_empty() && (b.len() as u64) < INLINE_BYTES => b,
            _ => return None,
        };
        let size = value.len() as u64;
        if size <= max_value_bytes {
            return Some(Fetched::Value(value));
        }
        let mut sample = value;
        sample.truncate(REJECT_SAMPLE_BYTES as usize);
        Some(Fetched::TooLarge { size, sample })
    }

    /// Reads the probe's replies for one key.
    pub fn probe_result(self, replies: &[Value], max_value_bytes: u64) -> Probe {
        if !self.probes_type() {
            return match replies.first() {
                Some(Value::Int(n)) => Probe::sized(self, (*n).max(0) as u64, max_value_bytes),
                // MEMORY USAGE of a key that is gone.
                _ => Probe::Gone,
            };
        }
        let kind = match &replies[0] {
            Value::SimpleString(s) => s.as_str(),
            Value::Okay => "string",
            _ => "unknown",
        };
        if kind == "none" {
            return Probe::Gone;
        }
        let layout = match (self, Layout::of_type(kind)) {
            (Layout::Auto, Some(l)) => l,
            (l, Some(k)) if l.kind() == k => l,
            _ => return Probe::WrongType(kind.to_string()),
        };
        // STRLEN is the second reply; MEMORY USAGE the last.
        let size_reply = match layout {
            Layout::Json => &replies[1],
            _ => &replies[replies.len() - 1],
        };
        match size_reply {
            Value::Int(n) => Probe::sized(layout, (*n).max(0) as u64, max_value_bytes),
            // MEMORY USAGE of a key gone in between.
            _ => Probe::Gone,
        }
    }

    /// Queues the one fetch command for a probed key, or nothing when there is nothing to fetch.
    pub fn queue_fetch(pipe: &mut Pipeline, key: &[u8], probe: &Probe) -> bool {
        match probe {
            Probe::Read { layout, .. } => match layout {
                Layout::Json => pipe.cmd("GET").arg(key),
                Layout::Hash | Layout::RawHash => pipe.cmd("HGETALL").arg(key),
                Layout::List | Layout::RawList => pipe.cmd("LRANGE").arg(key).arg(0).arg(-1),
                Layout::ReJson | Layout::Auto | Layout::LangGraph => pipe.cmd("JSON.GET").arg(key),
            },
            // Samples that stay small whatever the value's size: its first bytes; a hash's field
            // names; a list's first (oldest) message; a RedisJSON document's top-level keys.
            Probe::Sample { layout, .. } => match layout {
                Layout::Json => pipe
                    .cmd("GETRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(REJECT_SAMPLE_BYTES - 1),
                Layout::Hash | Layout::RawHash => pipe.cmd("HKEYS").arg(key),
                Layout::List | Layout::RawList => pipe.cmd("LRANGE").arg(key).arg(0).arg(0),
                Layout::ReJson | Layout::Auto | Layout::LangGraph => {
                    pipe.cmd("JSON.OBJKEYS").arg(key)
                }
            },
            Probe::WrongType(_) | Probe::Gone => return false,
        };
        true
    }

    /// Turns a probe and its fetch reply (if one was queued) into what the sweep decodes.
    pub fn fetched(probe: Probe, reply: Option<Value>) -> Fetched {
        match (probe, reply) {
            (Probe::WrongType(t), _) => Fetched::WrongType(t),
            (Probe::Gone, _) => Fetched::Gone,
            // The key was replaced by another type between probe and fetch; the next sweep
            // sees which.
            (Probe::Read { .. } | Probe::Sample { .. }, Some(Value::ServerError(e)))
                if e.code() == "WRONGTYPE" =>
            {
                Fetched::WrongType(OTHER_TYPE.into())
            }
            (Probe::Read { layout, .. }, Some(v)) => match layout {
                Layout::Json | Layout::ReJson | Layout::Auto | Layout::LangGraph => match v {
                    Value::BulkString(b) => Fetched::Value(b),
                    _ => Fetched::Gone,
                },
                Layout::Hash => match pairs(v) {
                    Some(p) if !p.is_empty() => hash_document(p),
                    _ => Fetched::Gone,
                },
                Layout::List => match items(v) {
                    Some(i) if !i.is_empty() => list_document(i),
                    _ => Fetched::Gone,
                },
                Layout::RawList => match items(v) {
                    Some(i) if !i.is_empty() => Fetched::List(i),
                    _ => Fetched::Gone,
                },
                Layout::RawHash => match pairs(v) {
                    Some(p) if !p.is_empty() => Fetched::Hash(p),
                    _ => Fetched::Gone,
                },
            },
            (Probe::Sample { size, layout }, Some(v)) => {
                let mut sample = match (layout, v) {
                    (Layout::Json, Value::BulkString(b)) => b,
                    (_, v) => match items(v) {
                        Some(i) if !i.is_empty() => match layout {
                            Layout::List | Layout::RawList => {
                                i.into_iter().next().unwrap_or_default()
                            }
                            _ => lossy_json_array(&i),
                        },
                        _ => return Fetched::Gone,
                    },
                };
                sample.truncate(REJECT_SAMPLE_BYTES as usize);
                Fetched::TooLarge { size, sample }
            }
            // Nil: the key expired between probe and fetch.
            (Probe::Read { .. } | Probe::Sample { .. }, None) => Fetched::Gone,
        }
    }
}

/// The elements of an array reply (bulk strings; a nested array, as JSON.OBJKEYS may give, is
/// flattened).
fn items(v: Value) -> Option<Vec<Vec<u8>>> {
    match v {
        Value::Array(a) => Some(
            a.into_iter()
                .flat_map(|x| match x {
                    Value::BulkString(b) => vec![b],
                    Value::SimpleString(s) => vec![s.into_bytes()],
                    Value::Array(_) => items(x).unwrap_or_default(),
                    _ => Vec::new(),
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Field-value pairs of an HGETALL reply (an array in RESP2, a map in RESP3).
fn pairs(v: Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let bytes = |v: Value| match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        _ => Vec::new(),
    };
    match v {
        Value::Map(m) => Some(m.into_iter().map(|(k, v)| (bytes(k), bytes(v))).collect()),
        Value::Array(_) => {
            let flat = items(v)?;
            let mut it = flat.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(layout: Layout, kind: &str, len: i64) -> Probe {
        let mut replies = Vec::new();
        if layout.probes_type() {
            replies.push(Value::SimpleString(kind.into()));
        }
        let sizes = layout.probe_replies() - replies.len();
        replies.extend(std::iter::repeat_n(Value::Int(len), sizes));
        layout.probe_result(&replies, 100)
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn probe_sorts_keys_by_type_and_size() {
        let json = Layout::Json;
        assert_eq!(
            probe(json, "string", 100),
            Probe::Read {
                layout: json,
                size: 100
            }
        );
        assert_eq!(
            probe(json, "string", 101),
            Probe::Sample {
                layout: json,
                size: 101
            }
        );
        assert_eq!(probe(json, "hash", 0), Probe::WrongType("hash".into()));
        assert_eq!(probe(json, "none", 0), Probe::Gone);
        assert_eq!(
            probe(Layout::Hash, "hash", 5),
            Probe::Read {
                layout: Layout::Hash,
                size: 5
            }
        );
        // A hash layout asks no TYPE: a key of another type is found by its fetch.
        assert_eq!(
            Layout::Hash.probe_result(&[Value::Int(5)], 100),
            Probe::Read {
                layout: Layout::Hash,
                size: 5
            }
        );
        assert_eq!(
            Layout::Auto.probe_result(
                &[
                    Value::SimpleString("set".into()),
                    Value::Int(0),
                    Value::Int(5)
                ],
                100
            ),
            Probe::WrongType("set".into())
        );
        // MEMORY USAGE of a key that is gone.
        assert_eq!(Layout::List.probe_result(&[Value::Nil], 100), Probe::Gone);
        assert_eq!(
            Layout::List.probe_result(&[Value::Int(101)], 100),
            Probe::Sample {
                layout: Layout::List,
                size: 101
            }
        );
    }

    #[test]
    fn small_values_are_read_in_one_command_and_the_rest_is_probed() {
        let inline = |read: Value, max: u64| Layout::read_inline_result(Some(read), max);
        // Shorter than the read: the whole value.
        assert_eq!(
            inline(bulk("{\"a\"}"), 100),
            Some(Fetched::Value(b"{\"a\"}".to_vec()))
        );
        // Whole, but over the limit: a reject with its sample.
        assert_eq!(
            inline(bulk("{\"a\"}"), 4),
            Some(Fetched::TooLarge {
                size: 5,
                sample: b"{\"a\"}".to_vec()
            })
        );
        // As long as the read: maybe longer, so probed.
        let first = bulk(&"x".repeat(INLINE_BYTES as usize));
        assert_eq!(inline(first, u64::MAX), None);
        assert_eq!(
            inline(bulk(&"x".repeat(INLINE_BYTES as usize - 1)), u64::MAX)
                .map(|f| matches!(f, Fetched::Value(_))),
            Some(true)
        );
        // Empty (an empty string, or gone), another type, or no reply: probed.
        assert_eq!(inline(bulk(""), 100), None);
        let wrong = redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n").unwrap();
        assert_eq!(inline(wrong, 100), None);
        assert_eq!(inline(Value::Nil, 100), None);
        assert_eq!(Layout::read_inline_result(None, 100), None);
    }

    #[test]
    fn auto_decides_by_type() {
        for (kind, layout) in [
            ("string", Layout::Json),
            ("hash", Layout::Hash),
            ("list", Layout::List),
            ("ReJSON-RL", Layout::ReJson),
        ] {
            assert_eq!(
                probe(Layout::Auto, kind, 7),
                Probe::Read { layout, size: 7 },
                "{kind}"
            );
        }
        assert_eq!(
            probe(Layout::Auto, "zset", 7),
            Probe::WrongType("zset".into())
        );
        // A string's size is its STRLEN, not its MEMORY USAGE.
        let replies = [
            Value::SimpleString("string".into()),
            Value::Int(3),
            Value::Int(500),
        ];
        assert_eq!(
            Layout::Auto.probe_result(&replies, 100),
            Probe::Read {
                layout: Layout::Json,
                size: 3
            }
        );
    }

    #[test]
    fn fetch_replies_become_values_samples_or_gone() {
        let read = |layout| Probe::Read { layout, size: 2 };
        assert_eq!(
            Layout::fetched(read(Layout::Json), Some(bulk("{}"))),
            Fetched::Value(b"{}".to_vec())
        );
        assert_eq!(
            Layout::fetched(read(Layout::ReJson), Some(bulk("{}"))),
            Fetched::Value(b"{}".to_vec())
        );
        assert_eq!(
            Layout::fetched(read(Layout::Json), Some(Value::Nil)),
            Fetched::Gone
        );
        // HGETALL and LRANGE of a key gone in between: empty.
        assert_eq!(
            Layout::fetched(read(Layout::Hash), Some(Value::Array(vec![]))),
            Fetched::Gone
        );
        assert_eq!(
            Layout::fetched(read(Layout::List), Some(Value::Array(vec![]))),
            Fetched::Gone
        );
        assert_eq!(
            Layout::fetched(
                Probe::Sample {
                    layout: Layout::Json,
                    size: 9
                },
                Some(bulk("abc"))
            ),
            Fetched::TooLarge {
                size: 9,
                sample: b"abc".to_vec()
            }
        );
        assert_eq!(
            Layout::fetched(
                Probe::Sample {
                    layout: Layout::Hash,
                    size: 9
                },
                Some(Value::Array(vec![bulk("messages"), bulk("user_id")]))
            ),
            Fetched::TooLarge {
                size: 9,
                sample: br#"["messages","user_id"]"#.to_vec()
            }
        );
        assert_eq!(
            Layout::fetched(Probe::WrongType("set".into()), None),
            Fetched::WrongType("set".into())
        );
        let mut pipe = redis::pipe();
        assert!(!Layout::queue_fetch(&mut pipe, b"k", &Probe::Gone));
        assert!(Layout::queue_fetch(&mut pipe, b"k", &read(Layout::List)));
    }
}
