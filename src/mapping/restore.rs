//! A stored conversation back into the layout its library reads: the inverse of
//! [`Mapping::decode`], from what the store kept (the document, or each message's element and key).

use base64::Engine;
use serde_json::Value;

use super::decode::BASE64_MARKER;
use super::{Mapping, RedisType, Unit};

/// One Redis write of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// SET key value.
    Set { key: String, value: String },
    /// JSON.SET key $ value.
    JsonSet { key: String, value: String },
    /// RPUSH key values... (after DEL: the list is rebuilt in its stored order).
    RPush { key: String, values: Vec<String> },
    /// HSET key field value... (after DEL).
    HSet {
        key: String,
        fields: Vec<(String, Vec<u8>)>,
    },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Set { key, .. }
            | Write::JsonSet { key, .. }
            | Write::RPush { key, .. }
            | Write::HSet { key, .. } => key,
        }
    }
}

impl Mapping {
    /// The write that puts a conversation's stored `document` back under `key` (one key holds
    /// the conversation). Errors name what does not fit, in one line.
    pub fn restore_conversation(&self, key: &str, document: &str) -> Result<Write, String> {
        if self.unit == Unit::Message {
            return Err("this mapping keeps one key per message: restore each message".into());
        }
        self.write(key, document)
    }

    /// The write that puts one message's stored `element` back under its own `key` (one key per
    /// message).
    pub fn restore_message(&self, key: &str, element: &str) -> Result<Write, String> {
        if self.unit == Unit::Conversation {
            return Err("this mapping keeps a conversation per key: restore the document".into());
        }
        self.write(key, element)
    }

    fn write(&self, key: &str, text: &str) -> Result<Write, String> {
        let key = key.to_string();
        let parse = || {
            serde_json::from_str::<Value>(text)
                .map_err(|e| format!("the stored value of {key} is not JSON: {e}"))
        };
        Ok(match self.redis_type {
            RedisType::String => Write::Set {
                key,
                value: text.to_string(),
            },
            RedisType::Json => Write::JsonSet {
                key,
                value: text.to_string(),
            },
            RedisType::List => {
                let Value::Array(items) = parse()? else {
                    return Err(format!(
                        "the stored value of {key} is not a JSON array of list elements"
                    ));
                };
                Write::RPush {
                    values: items.iter().map(Value::to_string).collect(),
                    key,
                }
            }
            RedisType::Hash => {
                let Value::Object(map) = parse()? else {
                    return Err(format!(
                        "the stored value of {key} is not a JSON object of hash fields"
                    ));
                };
                let mut fields = Vec::with_capacity(map.len());
                for (f, v) in map {
                    let bytes = match v {
                        Value::String(s) => s.into_bytes(),
                        Value::Object(o) => match o.get(BASE64_MARKER).and_then(Value::as_str) {
                            Some(b) => base64::engine::general_purpose::STANDARD
                                .decode(b)
                                .map_err(|e| format!("hash field {f} of {key}: bad base64: {e}"))?,
                            None => return Err(format!("hash field {f} of {key} is not text")),
                        },
                        other => other.to_string().into_bytes(),
                    };
                    fields.push((f, bytes));
                }
                Write::HSet { key, fields }
            }
        })
    }
}
