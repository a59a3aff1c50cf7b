//! The PostgreSQL schema sweeper's tables, views and functions live in (`--schema`, `sweeper` by
//! default), so that they sit beside a chat service's own `conversations` and `messages` in its
//! database. Every transaction puts it first in `search_path` (`SET LOCAL`; nothing is set for
//! the session, which a pooler in transaction mode would hand to its next client): the SQL and
//! the migrations name their tables unqualified.
//!
//! `public` stays on the path after it: LangGraph's PostgresSaver tables are there, where a
//! LangGraph app (connecting with the default search_path) reads them.

use std::fmt;

/// The default `--schema`.
pub const DEFAULT: &str = "sweeper";

/// A schema name: a plain identifier, so that it reads the same quoted or not in every tool an
/// operator uses (psql, GRANT statements, the docs' snippets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

impl Default for Schema {
    fn default() -> Self {
        Schema(DEFAULT.into())
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Schema {
    /// `--schema`'s parser: lower-case letters, digits and `_`, not starting with a digit, at
    /// most 63 bytes (PostgreSQL's limit, past which it silently truncates), not `pg_*`
    /// (reserved for the system).
    pub fn parse(name: &str) -> Result<Schema, String> {
        let plain = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let starts = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if !plain || !starts || name.len() > 63 {
            return Err(format!(
                "{name:?} is not a plain schema name (a-z, 0-9 and _, not starting with a digit, at most 63 bytes)"
            ));
        }
        if name.starts_with("pg_") {
            return Err(format!("{name:?}: names starting pg_ are PostgreSQL's own"));
        }
        Ok(Schema(name.into()))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The value of `search_path`: this schema, then `public` (LangGraph's tables).
    pub fn search_path(&self) -> String {
        if self.0 == "public" {
            "public".into()
        } else {
            format!("{}, public", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_taken_and_others_refused() {
        assert_eq!(Schema::parse("sweeper").unwrap().name(), "sweeper");
        assert_eq!(Schema::parse("_s2").unwrap().search_path(), "_s2, public");
        assert_eq!(Schema::parse("public").unwrap().search_path(), "public");
        for bad in [
            "",
            "Sweeper",
            "2s",
            "a-b",
            "a b",
            "a\"b",
            "pg_temp",
            &"s".repeat(64),
        ] {
            assert!(Schema::parse(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(Schema::default().name(), DEFAULT);
    }
}
