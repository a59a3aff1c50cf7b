//! LangGraph threads (`--format langgraph`): a LangGraph app's checkpoints, as
//! `langgraph-checkpoint-redis` 0.5 keeps them in Redis, saved into the tables of LangGraph's own
//! `PostgresSaver` (`langgraph-checkpoint-postgres` 3.x), so that saver resumes a thread as if it
//! had been there all along.
//!
//! What RedisSaver writes (seen from a real graph; tests/langgraph/proof.py runs one), every key
//! with the TTL the app configured, refreshed on each write:
//!
//! - `checkpoint:{thread}:{ns}:{checkpoint_id}`: a RedisJSON document per checkpoint:
//!   `thread_id`, `checkpoint_ns` (`__empty__` for the root graph's ""), `checkpoint_id`,
//!   `parent_checkpoint_id` ("" for none), `checkpoint` (LangGraph's checkpoint, channel values
//!   inline as JSON, LangChain messages in their `{"lc": 1, "type": "constructor", ...}` form,
//!   plus `type` and `pending_sends` of its own), `metadata` (a JSON *string*), `step`, `source`...
//! - `checkpoint_write:{thread}:{ns}:{checkpoint_id}:{task_id}:{idx}`: a pending write, as
//!   RedisJSON: `task_id`, `task_path`, `idx`, `channel`, `type` and `blob` (the serializer's
//!   bytes, base64);
//! - `write_keys_zset:{thread}:{ns}:{checkpoint_id}`: a sorted set of that checkpoint's write
//!   keys, RedisSaver's fast path to them. Not read (FT.SEARCH finds every write), but protected
//!   with the thread;
//! - `checkpoint_latest:{thread}:{ns}`: a string naming the newest checkpoint's key; its TTL is
//!   the newest checkpoint's. This is the key a sweep SCANs: a thread (with its namespace) is due
//!   when it is.
//!
//! RediSearch indexes both document kinds (indexes `checkpoint` and `checkpoint_write`, which
//! RedisSaver's `setup()` creates): a due thread's documents are found with `FT.SEARCH` on its
//! `thread_id` and `checkpoint_ns` tags, so no key of another thread is read, and nothing read
//! refreshes a TTL (GET, JSON.GET and FT.SEARCH do not).
//!
//! What PostgresSaver reads back: `checkpoints` (one row per checkpoint; `checkpoint` JSONB holds
//! only the primitive channel values, `metadata` JSONB), `checkpoint_blobs` (the other channel
//! values, one row per channel and version, as (type, bytes) of LangGraph's serializer) and
//! `checkpoint_writes`. Channel values go to blobs as type `json` (the value's JSON, LangChain's
//! constructor form included), which LangGraph's `JsonPlusSerializer` reads back; pending writes
//! keep the (type, bytes) RedisSaver stored. The pure conversion is here; [`crate::redis::langgraph`] speaks Redis
//! and [`crate::store::langgraph`] PostgreSQL.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::checkpoint::Reject;

/// What RedisSaver writes for the root graph's namespace, "" in PostgreSQL.
const EMPTY_NS: &str = "__empty__";

/// One LangGraph thread (one namespace of it), read whole from Redis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thread {
    /// The `checkpoint_latest:` key that made it due.
    pub latest_key: String,
    pub thread_id: String,
    /// "" for the root graph.
    pub checkpoint_ns: String,
    pub checkpoints: Vec<CheckpointRow>,
    pub blobs: Vec<BlobRow>,
    pub writes: Vec<WriteRow>,
    /// Every key of the thread (the latest key, checkpoints, their write registries, writes):
    /// what is protected when PostgreSQL cannot take the thread.
    pub keys: Vec<Vec<u8>>,
    /// Bytes read, for batch sizing.
    pub bytes: usize,
}

impl Thread {
    /// What `sweep_rejects` keeps of a thread PostgreSQL refused: its rows as JSON (checkpoints
    /// whole, blobs and writes counted), to see which value it was.
    pub fn inspection(&self) -> Vec<u8> {
        let checkpoints: Vec<Value> = self
            .checkpoints
            .iter()
            .map(|c| {
                let json = |text: &str| {
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()))
                };
                serde_json::json!({
                    "checkpoint_id": c.checkpoint_id,
                    "parent_checkpoint_id": c.parent_checkpoint_id,
                    "checkpoint": json(&c.checkpoint),
                    "metadata": json(&c.metadata),
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "thread_id": self.thread_id,
            "checkpoint_ns": self.checkpoint_ns,
            "checkpoints": checkpoints,
            "blobs": self.blobs.len(),
            "writes": self.writes.len(),
        }))
        .expect("a JSON value serializes")
    }
}

/// A row of `checkpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRow {
    pub checkpoint_id: String,
    pub parent_checkpoint_id: Option<String>,
    /// JSON text of the `checkpoint` column: primitive channel values only.
    pub checkpoint: String,
    /// JSON text of the `metadata` column.
    pub metadata: String,
}

/// A row of `checkpoint_blobs`: a channel's value at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobRow {
    pub channel: String,
    pub version: String,
    pub kind: String,
    pub blob: Option<Vec<u8>>,
}

/// A row of `checkpoint_writes`.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRow {
    pub checkpoint_id: String,
    pub task_id: String,
    pub task_path: String,
    pub idx: i32,
    pub channel: String,
    pub kind: String,
    pub blob: Vec<u8>,
}

/// The RediSearch index names of RedisSaver's checkpoints and writes, from the literal prefix of
/// the latest keys' pattern: `checkpoint_latest:` gives `checkpoint` and `checkpoint_write`.
pub fn indexes(latest_prefix: &str) -> Option<(String, String)> {
    let base = latest_prefix.strip_suffix("_latest:")?;
    (!base.is_empty()).then(|| (base.to_string(), format!("{base}_write")))
}

/// The PostgreSQL namespace of a RedisSaver one.
pub fn pg_namespace(redis_ns: &str) -> String {
    if redis_ns == EMPTY_NS {
        String::new()
    } else {
        redis_ns.to_string()
    }
}

fn field<'a>(doc: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, Reject> {
    doc.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Reject::BadField {
            field: name,
            problem: "is missing or not a string".into(),
        })
}

fn object(raw: &[u8]) -> Result<Map<String, Value>, Reject> {
    let text = std::str::from_utf8(raw).map_err(|e| Reject::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    // (A \u0000 in a string is not refused here: in a blob it is stored as it is (bytea), and in
    // the JSONB columns PostgreSQL refuses it and the sweep sets that one thread aside.)
    match serde_json::from_str::<Value>(text).map_err(|e| Reject::NotJson(e.to_string()))? {
        Value::Object(m) => Ok(m),
        _ => Err(Reject::NotObject("non-object")),
    }
}

/// RedisSaver's serializer (`JsonPlusRedisSerializer`) writes some LangGraph objects with markers
/// of its own that LangGraph's `JsonPlusSerializer`, which PostgresSaver reads with, does not
/// know: `{"__send__": true, "node", "arg"}` for a `Send` (a fan-out's pending task) and
/// `{"__interrupt__": true, "value", "id"}` for an `Interrupt`. Both are rewritten in the
/// constructor form that serializer revives (`langgraph.types` is on its allowlist), so
/// PostgresSaver reads a `Send` where RedisSaver read one, not a dict. Bytes (`__bytes__`) and
/// delta snapshots (`__delta_snapshot__`) have no JSON form PostgresSaver reads: a thread holding
/// one is set aside rather than resumed wrong. Returns whether anything changed.
fn to_postgres_json(v: &mut Value, field: &'static str) -> Result<bool, Reject> {
    let mut changed = false;
    match v {
        Value::Array(items) => {
            for item in items {
                changed |= to_postgres_json(item, field)?;
            }
        }
        Value::Object(m) => {
            for item in m.values_mut() {
                changed |= to_postgres_json(item, field)?;
            }
            let flag = |k: &str| m.get(k) == Some(&Value::Bool(true));
            let unreadable = if m.len() == 1 && m.contains_key("__bytes__") {
                Some("__bytes__")
            } else if flag("__delta_snapshot__") && m.len() == 2 && m.contains_key("value") {
                Some("__delta_snapshot__")
            } else {
                None
            };
            if let Some(marker) = unreadable {
                return Err(Reject::BadField {
                    field,
                    problem: format!(
                        "holds RedisSaver's `{marker}` marker, which PostgresSaver's json type cannot read"
                    ),
                });
            }
            let class = if flag("__send__")
                && m.len() == 3
                && m.contains_key("node")
                && m.contains_key("arg")
            {
                m.remove("__send__");
                Some("Send")
            } else if flag("__interrupt__") && m.contains_key("value") {
                m.remove("__interrupt__");
                Some("Interrupt")
            } else {
                None
            };
            if let Some(class) = class {
                let kwargs = std::mem::take(m);
                *v = serde_json::json!({
                    "lc": 2,
                    "type": "constructor",
                    "id": ["langgraph", "types", class],
                    "kwargs": kwargs,
                });
                changed = true;
            }
        }
        _ => {}
    }
    Ok(changed)
}

/// Whether PostgresSaver keeps a channel value inline in the checkpoint (None, str, int, float,
/// bool in Python) rather than in `checkpoint_blobs`.
fn is_primitive(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

/// A RedisSaver checkpoint document as PostgresSaver's rows: the checkpoint (its primitive
/// channel values inline, RedisSaver's own fields dropped) and a blob per other channel value.
pub fn checkpoint_rows(raw: &[u8]) -> Result<(CheckpointRow, Vec<BlobRow>), Reject> {
    let doc = object(raw)?;
    let checkpoint_id = field(&doc, "checkpoint_id")?.to_string();
    let parent = doc
        .get("parent_checkpoint_id")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let Some(Value::Object(checkpoint)) = doc.get("checkpoint") else {
        return Err(Reject::BadField {
            field: "checkpoint",
            problem: "is missing or not an object".into(),
        });
    };
    let mut checkpoint = checkpoint.clone();
    // RedisSaver's additions: the serializer's type tag, and `pending_sends` (always [] as
    // stored). A checkpoint older than v4 has its sends as its parent's writes to the tasks
    // channel: those are carried as `checkpoint_writes` rows, from which PostgresSaver rebuilds
    // them itself (its SELECT_PENDING_SENDS_SQL), as RedisSaver does from its own.
    checkpoint.remove("type");
    checkpoint.remove("pending_sends");
    let versions = checkpoint
        .get("channel_versions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut blobs = Vec::new();
    if let Some(Value::Object(values)) = checkpoint.get_mut("channel_values") {
        let channels: Vec<String> = values
            .iter()
            .filter(|(_, v)| !is_primitive(v))
            .map(|(k, _)| k.clone())
            .collect();
        for channel in channels {
            let mut value = values.remove(&channel).expect("listed");
            to_postgres_json(&mut value, "channel_values")?;
            // PostgresSaver stores a value under the version it was written at; one without a
            // version is not read back by it either.
            let Some(version) = versions.get(&channel) else {
                continue;
            };
            let version = match version {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            blobs.push(BlobRow {
                channel,
                version,
                kind: "json".into(),
                blob: Some(serde_json::to_vec(&value).expect("a JSON value serializes")),
            });
        }
    }
    let metadata = match doc.get("metadata") {
        Some(Value::String(s)) => {
            let m: Value =
                serde_json::from_str(s).map_err(|e| Reject::NotJson(format!("`metadata`: {e}")))?;
            m.to_string()
        }
        Some(m @ Value::Object(_)) => m.to_string(),
        _ => "{}".into(),
    };
    Ok((
        CheckpointRow {
            checkpoint_id,
            parent_checkpoint_id: parent,
            checkpoint: Value::Object(checkpoint).to_string(),
            metadata,
        },
        blobs,
    ))
}

/// A RedisSaver pending-write document as a `checkpoint_writes` row.
pub fn write_row(raw: &[u8]) -> Result<WriteRow, Reject> {
    let doc = object(raw)?;
    let idx = doc
        .get("idx")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| Reject::BadField {
            field: "idx",
            problem: "is missing or not an integer".into(),
        })?;
    let mut blob = base64::engine::general_purpose::STANDARD
        .decode(field(&doc, "blob")?)
        .map_err(|e| Reject::BadField {
            field: "blob",
            problem: format!("is not base64: {e}"),
        })?;
    let kind = field(&doc, "type")?;
    // A `Send` written to the tasks channel is what PostgresSaver turns into an older
    // checkpoint's pending sends: it must read back as one. Other values keep their bytes.
    if kind == "json"
        && let Ok(mut value) = serde_json::from_slice::<Value>(&blob)
        && to_postgres_json(&mut value, "blob")?
    {
        blob = serde_json::to_vec(&value).expect("a JSON value serializes");
    }
    Ok(WriteRow {
        checkpoint_id: field(&doc, "checkpoint_id")?.to_string(),
        task_id: field(&doc, "task_id")?.to_string(),
        task_path: doc
            .get("task_path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        idx,
        channel: field(&doc, "channel")?.to_string(),
        kind: kind.to_string(),
        blob,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint document as RedisSaver 0.5.2 wrote it (from tests/langgraph/proof.py's graph).
    const CHECKPOINT: &str = r#"{"thread_id":"t1","run_id":"","checkpoint_ns":"__empty__","checkpoint_id":"1f1e7229-3d05-62f1-8001-05b88bc3d3d6","parent_checkpoint_id":"1f1e7229-3cf9-603e-8000-1cd620f5d5a7","checkpoint_ts":1795427112002.36,"checkpoint":{"type":"json","v":4,"ts":"2026-11-23T09:45:12.000369+00:00","id":"1f1e7229-3d05-62f1-8001-05b88bc3d3d6","channel_values":{"messages":[{"lc":1,"type":"constructor","id":["langchain","schema","messages","HumanMessage"],"kwargs":{"content":"hi","type":"human","id":"h1"}}],"turns":1,"branch:to:bot":null},"channel_versions":{"__start__":"00000000000000000000000000000002.0.36948121233050757","messages":"00000000000000000000000000000003.0.08742255681817179","turns":"00000000000000000000000000000003.0.08742255681817179"},"versions_seen":{"__input__":{}},"updated_channels":["messages","turns"],"pending_sends":[]},"metadata":"{\"source\":\"loop\",\"step\":1,\"parents\":{}}","has_writes":false,"source":"loop","step":1}"#;

    #[test]
    fn a_checkpoint_keeps_primitives_inline_and_the_rest_as_json_blobs() {
        let (row, blobs) = checkpoint_rows(CHECKPOINT.as_bytes()).unwrap();
        assert_eq!(row.checkpoint_id, "1f1e7229-3d05-62f1-8001-05b88bc3d3d6");
        assert_eq!(
            row.parent_checkpoint_id.as_deref(),
            Some("1f1e7229-3cf9-603e-8000-1cd620f5d5a7")
        );
        let cp: Value = serde_json::from_str(&row.checkpoint).unwrap();
        assert_eq!(
            cp["channel_values"],
            serde_json::json!({"turns": 1, "branch:to:bot": null})
        );
        assert!(cp.get("type").is_none() && cp.get("pending_sends").is_none());
        assert_eq!(cp["v"], 4);
        let md: Value = serde_json::from_str(&row.metadata).unwrap();
        assert_eq!(
            md,
            serde_json::json!({"source": "loop", "step": 1, "parents": {}})
        );
        assert_eq!(blobs.len(), 1);
        assert_eq!(blobs[0].channel, "messages");
        assert_eq!(
            blobs[0].version,
            "00000000000000000000000000000003.0.08742255681817179"
        );
        assert_eq!(blobs[0].kind, "json");
        let v: Value = serde_json::from_slice(blobs[0].blob.as_ref().unwrap()).unwrap();
        assert_eq!(v[0]["kwargs"]["content"], "hi");
    }

    #[test]
    fn the_first_checkpoint_has_no_parent_and_the_root_namespace_is_empty() {
        let doc = CHECKPOINT.replace(
            r#""parent_checkpoint_id":"1f1e7229-3cf9-603e-8000-1cd620f5d5a7""#,
            r#""parent_checkpoint_id":"""#,
        );
        let (row, _) = checkpoint_rows(doc.as_bytes()).unwrap();
        assert_eq!(row.parent_checkpoint_id, None);
        assert_eq!(pg_namespace("__empty__"), "");
        assert_eq!(pg_namespace("sub:1"), "sub:1");
    }

    #[test]
    fn a_pending_write_keeps_its_serialized_bytes() {
        let w = write_row(br#"{"thread_id":"t1","checkpoint_ns":"__empty__","checkpoint_id":"c1","task_id":"k","task_path":"~__pregel_pull, bot","idx":1,"channel":"turns","type":"json","blob":"MQ=="}"#).unwrap();
        assert_eq!(
            (w.idx, w.kind.as_str(), w.blob.as_slice()),
            (1, "json", &b"1"[..])
        );
        assert_eq!(w.task_path, "~__pregel_pull, bot");
        let null = write_row(br#"{"checkpoint_id":"c1","task_id":"k","idx":-1,"channel":"__error__","type":"null","blob":""}"#).unwrap();
        assert_eq!((null.idx, null.blob.len()), (-1, 0));
    }

    #[test]
    fn sends_and_interrupts_become_constructors_postgres_saver_revives() {
        let doc = CHECKPOINT.replace(
            r#""turns":1,"#,
            r#""turns":1,"__pregel_tasks":[{"__send__":true,"node":"work","arg":{"item":"a"}}],"#,
        )
        .replace(
            r#""turns":"00000000000000000000000000000003.0.08742255681817179""#,
            r#""turns":"00000000000000000000000000000003.0.08742255681817179","__pregel_tasks":"00000000000000000000000000000003.0.08742255681817179""#,
        );
        let (_, blobs) = checkpoint_rows(doc.as_bytes()).unwrap();
        let tasks = blobs
            .iter()
            .find(|b| b.channel == "__pregel_tasks")
            .unwrap();
        let v: Value = serde_json::from_slice(tasks.blob.as_ref().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"lc": 2, "type": "constructor", "id": ["langgraph", "types", "Send"],
                "kwargs": {"node": "work", "arg": {"item": "a"}}}])
        );

        // A send written to the tasks channel, base64 of {"__send__":true,"node":"w","arg":1}.
        let w = write_row(br#"{"checkpoint_id":"c","task_id":"k","idx":0,"channel":"__pregel_tasks","type":"json","blob":"eyJfX3NlbmRfXyI6dHJ1ZSwibm9kZSI6InciLCJhcmciOjF9"}"#).unwrap();
        let v: Value = serde_json::from_slice(&w.blob).unwrap();
        assert_eq!(v["id"][2], "Send");
        assert_eq!(v["kwargs"], serde_json::json!({"node": "w", "arg": 1}));

        let mut i = serde_json::json!({"x": [{"__interrupt__": true, "value": "ok?", "id": "i1"}]});
        assert!(to_postgres_json(&mut i, "blob").unwrap());
        assert_eq!(
            i["x"][0]["kwargs"],
            serde_json::json!({"value": "ok?", "id": "i1"})
        );
        // Plain values, and dicts that only look alike, are left as they are.
        let mut plain = serde_json::json!({"__send__": true, "node": "w"});
        assert!(!to_postgres_json(&mut plain, "blob").unwrap());
        let mut bytes = serde_json::json!([{"__bytes__": "AA=="}]);
        assert!(matches!(
            to_postgres_json(&mut bytes, "blob"),
            Err(Reject::BadField { field: "blob", .. })
        ));
    }

    #[test]
    fn broken_documents_are_rejected_with_a_reason() {
        assert!(matches!(
            checkpoint_rows(b"{}"),
            Err(Reject::BadField {
                field: "checkpoint_id",
                ..
            })
        ));
        assert!(matches!(checkpoint_rows(b"[1]"), Err(Reject::NotObject(_))));
        // A NUL goes on to PostgreSQL: in a blob it is bytes like any other.
        let nul = CHECKPOINT.replace(r#""content":"hi""#, r#""content":"h\u0000i""#);
        let (_, blobs) = checkpoint_rows(nul.as_bytes()).unwrap();
        assert!(String::from_utf8_lossy(blobs[0].blob.as_ref().unwrap()).contains("h\\u0000i"));
        assert!(matches!(
            write_row(br#"{"checkpoint_id":"c","task_id":"k","idx":0,"channel":"m","type":"json","blob":"@@"}"#),
            Err(Reject::BadField { field: "blob", .. })
        ));
    }
}
