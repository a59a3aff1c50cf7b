//! How a chat service keeps a conversation in Redis, as data: a *mapping* (a TOML file, or one of
//! the built-in presets) says which keys hold conversations, of which Redis type, where the
//! messages are in what was read, and which fields of a message are its role, text, id and time.
//! Pure: no I/O. [`decode`] turns what Redis returned for a key into the project's
//! [`Checkpoint`](crate::checkpoint::Checkpoint); [`restore`] turns a stored conversation back
//! into the writes that put it where the library reads it.
//!
//! ```toml
//! key = "chat:recent:{id}"          # the SCAN pattern, and where the conversation id is
//! redis_type = "list"               # string (JSON text) | list | hash | json (RedisJSON)
//! unit = "conversation"             # or "message": one key holds one message
//! conversation_id = "{id}"          # a placeholder of `key`, or a field path
//! messages = "messages"             # the message array in a document ("" = the document is it)
//! order = "oldest_first"            # or "newest_first" (LPUSH)
//! [message]
//! role = "senderId"
//! content = ["content", "content[].text"]   # alternatives: the first that resolves wins
//! id = "messageId"
//! ts = "timestamp"
//! keep = { event = ["user", "bot"] }
//! [roles]
//! human = "user"
//! [conversation]
//! user_id = "user_id"
//! ```

pub mod decode;
pub mod json;
pub mod path;
mod reads;
pub mod restore;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

pub use decode::{Decoded, Raw};
pub use path::Path;
pub use restore::Write;

/// The built-in mappings, by `--format` name: data, the same as a user's mapping file.
pub const PRESETS: &[(&str, &str)] = &[
    ("langchain", include_str!("presets/langchain.toml")),
    (
        "langchain-redis",
        include_str!("presets/langchain-redis.toml"),
    ),
    ("llamaindex", include_str!("presets/llamaindex.toml")),
    ("redisvl", include_str!("presets/redisvl.toml")),
    ("openai-agents", include_str!("presets/openai-agents.toml")),
    (
        "agent-framework",
        include_str!("presets/agent-framework.toml"),
    ),
    ("rasa", include_str!("presets/rasa.toml")),
    (
        "agent-memory-server",
        include_str!("presets/agent-memory-server.toml"),
    ),
];

/// The Redis type a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisType {
    /// A string holding JSON text (GET).
    String,
    /// A list, one JSON element each (LRANGE).
    List,
    /// A hash of text fields (HGETALL).
    Hash,
    /// A RedisJSON document (JSON.GET).
    Json,
}

impl RedisType {
    /// The name Redis' TYPE gives such a key.
    pub fn type_name(self) -> &'static str {
        match self {
            RedisType::String => "string",
            RedisType::List => "list",
            RedisType::Hash => "hash",
            RedisType::Json => "ReJSON-RL",
        }
    }
}

/// What one key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    #[default]
    Conversation,
    Message,
}

/// The order of a list's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    OldestFirst,
    /// LPUSH: the newest element is at index 0.
    NewestFirst,
}

/// Where a conversation's id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// A placeholder of the key template, by name.
    Key(String),
    /// A field of the document (conversation unit) or of the message (message unit).
    Field(Path),
}

/// One part of a key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Hole(String),
}

/// The fields of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageFields {
    pub role: Vec<Path>,
    pub content: Vec<Path>,
    pub id: Vec<Path>,
    pub ts: Vec<Path>,
    /// Only elements whose field holds one of these values are messages.
    pub keep: Option<(Path, Vec<String>)>,
    /// Between the text parts of a path through an array.
    pub join: String,
}

/// Optional conversation-level fields of a document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConversationFields {
    pub user_id: Option<Path>,
    pub started_at: Option<Path>,
    pub updated_at: Option<Path>,
}

/// A validated mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub description: Option<String>,
    pub key: Vec<Part>,
    /// Key forms earlier releases of the library wrote (Agent Framework's `chat_messages:{id}`
    /// before its scoped keys): swept as well, each key read by the first form it fits.
    pub older_keys: Vec<Vec<Part>>,
    pub redis_type: RedisType,
    pub unit: Unit,
    pub conversation_id: IdSource,
    pub messages: Path,
    pub order: Order,
    pub message: MessageFields,
    /// Raw role -> normalized role; a role not here is kept as it is.
    pub roles: BTreeMap<String, String>,
    pub conversation: ConversationFields,
    /// What a decode reads of each list element, and of a document (see [`json::Want`]).
    wants: Wants,
}

#[derive(Debug, Clone, PartialEq)]
struct Wants {
    element: json::Want,
    document: json::Want,
}

/// Why a mapping file is not a mapping: one line naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError(pub String);

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MappingError {}

fn err<T>(msg: impl Into<String>) -> Result<T, MappingError> {
    Err(MappingError(msg.into()))
}

/// A path or alternatives, as the file may give either.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    description: Option<String>,
    key: String,
    #[serde(default)]
    older_keys: Vec<String>,
    redis_type: RedisType,
    #[serde(default)]
    unit: Unit,
    conversation_id: Option<String>,
    #[serde(default)]
    messages: String,
    #[serde(default)]
    order: Order,
    message: MessageFile,
    #[serde(default)]
    roles: BTreeMap<String, String>,
    #[serde(default)]
    conversation: ConversationFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageFile {
    role: OneOrMany,
    content: OneOrMany,
    id: Option<OneOrMany>,
    ts: Option<OneOrMany>,
    keep: Option<BTreeMap<String, Vec<String>>>,
    join: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConversationFile {
    user_id: Option<String>,
    started_at: Option<String>,
    updated_at: Option<String>,
}

impl Mapping {
    /// A mapping from the text of a mapping file.
    pub fn from_toml(text: &str) -> Result<Mapping, MappingError> {
        let file: File = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (a caret under the spot): one line here.
            let msg = e.message().trim().to_string();
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].lines().count().max(1)))
                .unwrap_or_default();
            MappingError(format!("mapping: {msg}{at}"))
        })?;
        Mapping::from_file(file)
    }

    /// A built-in mapping by name, for `--format NAME`.
    pub fn preset(name: &str) -> Option<Mapping> {
        let text = preset_text(name)?;
        // The presets are tested to parse (tests::every_preset_parses).
        Mapping::from_toml(text).ok()
    }

    fn from_file(f: File) -> Result<Mapping, MappingError> {
        let key = parse_template(&f.key)?;
        let older_keys = f
            .older_keys
            .iter()
            .map(|k| parse_template(k))
            .collect::<Result<Vec<_>, _>>()?;
        let conversation_id = match f.conversation_id.as_deref().unwrap_or("{id}") {
            s if s.starts_with('{') && s.ends_with('}') => {
                let name = &s[1..s.len() - 1];
                let forms =
                    std::iter::once((&key, &f.key)).chain(older_keys.iter().zip(&f.older_keys));
                for (parts, text) in forms {
                    if !parts
                        .iter()
                        .any(|p| matches!(p, Part::Hole(h) if h == name))
                    {
                        return err(format!(
                            "mapping: conversation_id {s:?} names no placeholder of key {text:?}"
                        ));
                    }
                }
                IdSource::Key(name.to_string())
            }
            s => IdSource::Field(Path::parse("conversation_id", s)?),
        };
        let messages = Path::parse("messages", &f.messages)?;
        let element_is_message = f.unit == Unit::Message || f.redis_type == RedisType::List;
        if element_is_message && !messages.is_empty() {
            return err(
                "mapping: `messages` must be \"\" when each list element or key is a message",
            );
        }
        if messages.has_each() {
            return err("mapping: `messages` cannot go through an array (`[]`)");
        }
        if f.redis_type == RedisType::List && f.unit == Unit::Conversation {
            if matches!(conversation_id, IdSource::Field(_)) {
                return err(
                    "mapping: a list conversation takes its id from the key: conversation_id = \"{id}\"",
                );
            }
            let c = &f.conversation;
            if c.user_id.is_some() || c.started_at.is_some() || c.updated_at.is_some() {
                return err(
                    "mapping: [conversation] fields need a document (redis_type string, json or hash)",
                );
            }
        }
        let message = MessageFields {
            role: paths("message.role", Some(f.message.role))?,
            content: paths("message.content", Some(f.message.content))?,
            id: paths("message.id", f.message.id)?,
            ts: paths("message.ts", f.message.ts)?,
            keep: keep(f.message.keep)?,
            join: f.message.join.unwrap_or_default(),
        };
        if message.role.is_empty() || message.content.is_empty() {
            return err("mapping: message.role and message.content need at least one path");
        }
        let opt = |name, p: Option<String>| p.map(|p| Path::parse(name, &p)).transpose();
        let mut m = Mapping {
            description: f.description,
            key,
            older_keys,
            redis_type: f.redis_type,
            unit: f.unit,
            conversation_id,
            messages,
            order: f.order,
            message,
            roles: f.roles,
            conversation: ConversationFields {
                user_id: opt("conversation.user_id", f.conversation.user_id)?,
                started_at: opt("conversation.started_at", f.conversation.started_at)?,
                updated_at: opt("conversation.updated_at", f.conversation.updated_at)?,
            },
            wants: Wants {
                element: json::Want::All,
                document: json::Want::All,
            },
        };
        m.wants = m.reads();
        Ok(m)
    }

    /// The SCAN pattern of the key template: each placeholder a `*`, Redis glob characters of the
    /// literal parts escaped. The default `--match`. With older key forms, the literal start they
    /// all share and a `*`: one SCAN finds every form.
    pub fn pattern(&self) -> String {
        if !self.older_keys.is_empty() {
            let start = |parts: &[Part]| match parts.first() {
                Some(Part::Literal(l)) => l.clone(),
                _ => String::new(),
            };
            let mut shared = start(&self.key);
            for form in &self.older_keys {
                let other = start(form);
                let len: usize = shared
                    .chars()
                    .zip(other.chars())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a.len_utf8())
                    .sum();
                shared.truncate(len);
            }
            return glob_of(&[Part::Literal(shared), Part::Hole(String::new())]);
        }
        glob_of(&self.key)
    }

    /// The placeholders of the key template in `key`, by name; None when the key does not fit
    /// the template (nor an older form). An earlier placeholder takes as much as it can
    /// (`chat:{id}:{msg}` reads `chat:a:b:01J` as id `a:b`): the trailing parts of the presets
    /// hold no separator.
    pub fn key_holes<'k>(&self, key: &'k str) -> Option<Vec<(&str, &'k str)>> {
        std::iter::once(&self.key)
            .chain(&self.older_keys)
            .find_map(|form| {
                let mut out = Vec::new();
                match_parts(form, key, &mut out).then_some(out)
            })
    }

    /// The key for conversation `id` (a template with placeholder `{id}` alone), for restore.
    pub fn key_for(&self, id: &str) -> Option<String> {
        let mut out = String::new();
        for part in &self.key {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Hole(h) if matches!(&self.conversation_id, IdSource::Key(k) if k == h) => {
                    out.push_str(id)
                }
                Part::Hole(_) => return None,
            }
        }
        Some(out)
    }

    /// The role stored for a raw role.
    pub fn role<'a>(&'a self, raw: &'a str) -> &'a str {
        self.roles.get(raw).map_or(raw, String::as_str)
    }
}

/// The text of a preset, as `sweeper formats NAME` prints it.
pub fn preset_text(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn paths(name: &str, v: Option<OneOrMany>) -> Result<Vec<Path>, MappingError> {
    let list = match v {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    list.iter()
        .map(|s| {
            let p = Path::parse(name, s)?;
            if p.is_empty() {
                return err(format!("mapping: {name} has an empty path"));
            }
            Ok(p)
        })
        .collect()
}

fn keep(
    v: Option<BTreeMap<String, Vec<String>>>,
) -> Result<Option<(Path, Vec<String>)>, MappingError> {
    let Some(map) = v else { return Ok(None) };
    let mut it = map.into_iter();
    let (Some((field, values)), None) = (it.next(), it.next()) else {
        return err(
            "mapping: message.keep takes exactly one field, e.g. keep = { event = [\"user\", \"bot\"] }",
        );
    };
    let path = Path::parse("message.keep", &field)?;
    if path.has_each() {
        return err("mapping: message.keep cannot go through an array (`[]`)");
    }
    Ok(Some((path, values)))
}

fn parse_template(t: &str) -> Result<Vec<Part>, MappingError> {
    let mut parts = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let Some(end) = rest.find('}') else {
                    return err(format!("mapping: key {t:?} has an unclosed `{{`"));
                };
                let name = &rest[1..end];
                if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return err(format!(
                        "mapping: key {t:?}: `{{{name}}}` is not a placeholder name"
                    ));
                }
                if matches!(parts.last(), Some(Part::Hole(_))) {
                    return err(format!(
                        "mapping: key {t:?}: two placeholders need text between them"
                    ));
                }
                parts.push(Part::Hole(name.to_string()));
                rest = &rest[end + 1..];
            }
            found => {
                let end = found.unwrap_or(rest.len());
                if rest[..end].contains('}') {
                    return err(format!("mapping: key {t:?} has a `}}` without `{{`"));
                }
                parts.push(Part::Literal(rest[..end].to_string()));
                rest = &rest[end..];
            }
        }
    }
    if !parts.iter().any(|p| matches!(p, Part::Hole(_))) {
        return err(format!(
            "mapping: key {t:?} has no placeholder such as {{id}}"
        ));
    }
    Ok(parts)
}

/// A key template as a SCAN pattern: each placeholder a `*`, Redis glob characters escaped.
fn glob_of(parts: &[Part]) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Hole(_) => out.push('*'),
            Part::Literal(l) => {
                for c in l.chars() {
                    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Matches `key` against `parts`, each hole taking at least one character, the earlier ones as
/// many as they can.
fn match_parts<'p, 'k>(parts: &'p [Part], key: &'k str, out: &mut Vec<(&'p str, &'k str)>) -> bool {
    match parts.split_first() {
        None => key.is_empty(),
        Some((Part::Literal(l), rest)) => key
            .strip_prefix(l.as_str())
            .is_some_and(|k| match_parts(rest, k, out)),
        Some((Part::Hole(h), rest)) => {
            let ends: Vec<usize> = key
                .char_indices()
                .map(|(i, _)| i)
                .skip(1)
                .chain([key.len()])
                .collect();
            for &end in ends.iter().rev() {
                let n = out.len();
                out.push((h.as_str(), &key[..end]));
                if match_parts(rest, &key[end..], out) {
                    return true;
                }
                out.truncate(n);
            }
            false
        }
    }
}
