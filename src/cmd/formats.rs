//! `sweeper formats`: the chat libraries' layouts built in; and how the commands that read
//! conversation keys turn `--format` / `--mapping` into a mapping.

use std::path::Path;

use crate::cli::{Format, LayoutArgs};
use crate::config::defaults;
use crate::error::{Error, Result};
use crate::mapping::{Mapping, PRESETS, RedisType, preset_text};
use crate::redis::layout::Layout;

/// The mapping `--mapping FILE` or a chat library's `--format` names; None for the native formats.
pub fn resolve(l: &LayoutArgs) -> Result<Option<Mapping>> {
    mapping(l.format, l.mapping.as_deref())
}

fn mapping(format: Format, file: Option<&Path>) -> Result<Option<Mapping>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("--mapping {}: {e}", path.display())))?;
        let m = Mapping::from_toml(&text)
            .map_err(|e| Error::Usage(format!("--mapping {}: {e}", path.display())))?;
        return Ok(Some(m));
    }
    Ok(format.preset().and_then(Mapping::preset))
}

/// The `--match` of a command reading a layout's keys: the one given, or when it is the default,
/// the layout's own (a mapping's key template; LangGraph's `checkpoint_latest:*`). A template
/// with no word of its own (LlamaIndex's `{id}`, RedisVL's `{name}:{session}:{ts}:{uuid}`)
/// matches every application's keys: a sweep of those would read them all and reject what is
/// not a conversation, so it needs a `--match` of the user's.
pub fn pattern(format: Format, mapping: Option<&Mapping>, given: &str) -> Result<String> {
    Ok(match (mapping, format, given) {
        (Some(m), _, defaults::MATCH) if !m.pattern().contains(char::is_alphanumeric) => {
            let what = match format.preset() {
                Some(name) => format!("--format {name}"),
                None => "this --mapping".to_string(),
            };
            return Err(Error::Usage(format!(
                "{what} has no key prefix of its own (its keys are {}, any application's keys): give --match the pattern of your conversation keys, e.g. --match 'chat:*'",
                m.pattern()
            )));
        }
        (Some(m), _, defaults::MATCH) => m.pattern(),
        (None, Format::Langgraph, defaults::MATCH) => "checkpoint_latest:*".into(),
        _ => given.into(),
    })
}

/// How the sweep reads a mapping's keys.
pub fn layout(m: &Mapping) -> Layout {
    match m.redis_type {
        RedisType::String => Layout::Json,
        RedisType::Json => Layout::ReJson,
        RedisType::List => Layout::RawList,
        RedisType::Hash => Layout::RawHash,
    }
}

/// `sweeper formats [NAME]`.
pub fn execute(name: Option<&str>) -> Result<u8> {
    let out = match name {
        Some(n) => preset_text(n)
            .ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                Error::Usage(format!("no format `{n}`: one of {}", names.join(", ")))
            })?
            .to_string(),
        None => {
            let mut out = String::new();
            for (n, _) in PRESETS {
                let m = Mapping::preset(n).expect("presets parse (tested)");
                let about = m.description.as_deref().unwrap_or("");
                out.push_str(&format!("{n:<20} {:<30} {about}\n", m.pattern()));
            }
            out.push_str("\nsweeper formats NAME prints one as a mapping file (--mapping FILE).\n");
            out
        }
    };
    super::print(&out)?;
    Ok(crate::error::exit::OK)
}
