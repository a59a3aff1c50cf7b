//! Why a value is not a checkpoint: the reasons `sweep_rejects` keeps.

use std::fmt;

use super::MAX_ID_BYTES;

/// Why a value is not a checkpoint. `Display` starts with a stable code (`not_json: ...`), which is
/// what `sweep_rejects.reason` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    KeyNotUtf8,
    EmptyConversationId,
    /// A key of another Redis type than the layout reads.
    WrongType {
        found: String,
        expected: &'static str,
    },
    TooLarge {
        size: u64,
        limit: u64,
    },
    NotUtf8 {
        valid_up_to: usize,
    },
    NotJson(String),
    NotObject(&'static str),
    NulCharacter,
    BadMessages(String),
    BadField {
        field: &'static str,
        problem: String,
    },
    TooLong {
        what: &'static str,
        bytes: usize,
    },
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::KeyNotUtf8 => write!(f, "key_not_utf8: the key name is not valid UTF-8"),
            Reject::EmptyConversationId => {
                write!(
                    f,
                    "empty_conversation_id: nothing follows the pattern's prefix"
                )
            }
            Reject::WrongType { found, expected } => {
                write!(f, "wrong_type: a Redis {found}, not a {expected}")
            }
            Reject::TooLarge { size, limit } => {
                write!(f, "too_large: {size} bytes, over --max-value-bytes {limit}")
            }
            Reject::NotUtf8 { valid_up_to } => {
                write!(f, "not_utf8: invalid UTF-8 after byte {valid_up_to}")
            }
            Reject::NotJson(e) => write!(f, "not_json: {e}"),
            Reject::NotObject(kind) => write!(f, "not_object: the document is a JSON {kind}"),
            Reject::NulCharacter => write!(
                f,
                "nul_character: a string holds \\u0000, which PostgreSQL cannot store"
            ),
            Reject::BadMessages(e) => write!(f, "bad_messages: {e}"),
            Reject::BadField { field, problem } => write!(f, "bad_field: `{field}` {problem}"),
            Reject::TooLong { what, bytes } => write!(
                f,
                "too_long: the {what} is {bytes} bytes, over the {MAX_ID_BYTES} PostgreSQL can index"
            ),
        }
    }
}
