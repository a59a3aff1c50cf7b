//! The message rows of a batch (`message_rows`): as columns for `COPY` and `unnest`, each text
//! left out where the conversation's document holds it (see docs/architecture.md, "Message text
//! stored once").

use std::collections::{HashMap, HashSet};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Messages as columns for `unnest`, each (conversation, identity) once. `pos` keeps the order
/// messages had in their checkpoints; `seq` numbers each conversation's messages from 0.
#[derive(Default)]
pub(super) struct MessageColumns<'a> {
    pub(super) conversation: Vec<i64>,
    /// The identity as the 32 hex digits of `message_rows.message_key` (see [`message_key`]).
    pub(super) message_key: Vec<String>,
    pos: Vec<i32>,
    pub(super) seq: Vec<i32>,
    message_id: Vec<Option<&'a str>>,
    role: Vec<&'a str>,
    /// None: the text is in the conversation's document, at `messages[seq]`.
    pub(super) content: Vec<Option<&'a str>>,
    /// Where the conversation's newest checkpoint holds the message, or -1.
    at: Vec<i32>,
    created_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    /// One key per message: the key and value it was read from (None otherwise).
    redis_key: Vec<Option<&'a str>>,
    element: Vec<Option<&'a str>>,
}

impl<'a> MessageColumns<'a> {
    /// `documents`: the checkpoint each conversation's row will hold. `at` is where it holds each
    /// message (same identity, same text), or -1; with `leave_out` (conversations not stored yet)
    /// a message held at its own `seq` is written without its text.
    pub(super) fn of(
        checkpoints: impl Iterator<Item = &'a Checkpoint>,
        ids: &HashMap<String, i64>,
        documents: &HashMap<&str, &'a Checkpoint>,
        leave_out: bool,
    ) -> Self {
        let mut cols = MessageColumns::default();
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut next_seq: HashMap<&str, i32> = HashMap::new();
        // Each document's messages by identity (the first of each), built when first needed.
        let mut positions: HashMap<&str, HashMap<&str, usize>> = HashMap::new();
        for c in checkpoints {
            let doc = documents
                .get(c.conversation_id.as_str())
                .filter(|d| d.texts_in_document);
            for m in &c.messages {
                if !seen.insert((&c.conversation_id, &m.identity)) {
                    continue;
                }
                let seq = next_seq.entry(&c.conversation_id).or_default();
                let at = doc.and_then(|d| {
                    let by_identity = positions.entry(&c.conversation_id).or_insert_with(|| {
                        let mut p = HashMap::new();
                        for (i, dm) in d.messages.iter().enumerate() {
                            p.entry(dm.identity.as_str()).or_insert(i);
                        }
                        p
                    });
                    by_identity
                        .get(m.identity.as_str())
                        .filter(|&&i| d.messages[i].content == m.content)
                        .map(|&i| i as i32)
                });
                let held = leave_out && at == Some(*seq);
                cols.content.push((!held).then_some(m.content.as_str()));
                cols.at.push(at.unwrap_or(-1));
                cols.seq.push(*seq);
                *seq += 1;
                cols.pos.push(cols.conversation.len() as i32);
                cols.conversation.push(ids[&c.conversation_id]);
                cols.message_key.push(message_key(&m.identity));
                cols.message_id.push(m.id.as_deref());
                cols.role.push(&m.role);
                cols.created_at.push(m.created_at);
                let source = m.source.as_deref();
                cols.redis_key.push(source.map(|s| s.redis_key.as_str()));
                cols.element.push(source.map(|s| s.element.as_str()));
            }
        }
        cols
    }

    /// COPYs the messages in (text format); returns how many rows went in. Only for messages of
    /// conversations not stored yet, checked under the batch lock: nothing can conflict.
    pub(super) async fn copy_in(
        &self,
        run_id: Option<i64>,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<usize> {
        use std::fmt::Write as _;
        let run = run_id.map_or("\\N".to_string(), |r| r.to_string());
        let mut data = String::with_capacity(
            self.content
                .iter()
                .map(|c| c.map_or(0, str::len) + 96)
                .sum(),
        );
        for i in 0..self.message_key.len() {
            let _ = write!(
                data,
                "{}\t{}\t{}\t",
                self.conversation[i], self.message_key[i], self.seq[i]
            );
            match self.message_id[i] {
                Some(id) => copy_text(&mut data, id),
                None => data.push_str("\\N"),
            }
            data.push('\t');
            copy_text(&mut data, self.role[i]);
            data.push('\t');
            match self.content[i] {
                Some(text) => copy_text(&mut data, text),
                None => data.push_str("\\N"),
            }
            data.push('\t');
            match self.created_at[i] {
                Some(t) => data.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                None => data.push_str("\\N"),
            }
            let _ = write!(data, "\t{run}");
            for v in [self.redis_key[i], self.element[i]] {
                data.push('\t');
                match v {
                    Some(v) => copy_text(&mut data, v),
                    None => data.push_str("\\N"),
                }
            }
            data.push('\n');
        }
        let mut copy = tx
            .copy_in_raw(
                "COPY message_rows (conversation, message_key, seq, message_id, role, content, created_at, run_id, redis_key, element) FROM STDIN",
            )
            .await
            .map_err(Error::postgres("copy messages"))?;
        copy.send(data.into_bytes())
            .await
            .map_err(Error::postgres("copy messages"))?;
        let rows = copy
            .finish()
            .await
            .map_err(Error::postgres("copy messages"))?;
        Ok(rows as usize)
    }

    /// Merges the messages of conversations already stored (insert_messages.sql numbers the new
    /// ones after the stored); returns the conversation of each message added.
    pub(super) async fn merge_in(
        &self,
        run_id: Option<i64>,
        newest: &[&Checkpoint],
        ids: &HashMap<String, i64>,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<Vec<i64>> {
        crate::store::query_scalar(include_str!("../insert_messages.sql"))
            .bind(&self.conversation)
            .bind(&self.message_key)
            .bind(&self.pos)
            .bind(&self.message_id)
            .bind(&self.role)
            .bind(&self.content)
            .bind(&self.created_at)
            .bind(run_id)
            .bind(&self.redis_key)
            .bind(&self.element)
            .bind(&self.at)
            .bind(super::column(newest, |c| ids[&c.conversation_id]))
            .bind(super::column(newest, |c| c.updated_at))
            .bind(super::column(newest, |c| c.message_count() as i32))
            .bind(super::column(newest, |c| c.content_hash.to_vec()))
            .fetch_all(&mut **tx)
            .await
            .map_err(Error::postgres("insert messages"))
    }
}

/// A message identity as `message_rows.message_key` takes it (32 hex digits of a uuid): the
/// hash of an `h:` identity, the first 16 bytes of SHA-256 of an `id:` one. As
/// `sweeper_message_key` computes it in SQL.
pub(super) fn message_key(identity: &str) -> String {
    use sha2::{Digest, Sha256};
    match identity.strip_prefix("h:") {
        Some(h) if h.len() == 32 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            h.to_string()
        }
        _ => crate::checkpoint::hex(&Sha256::digest(identity.as_bytes())[..16]),
    }
}

/// Appends `s` escaped for COPY's text format. Runs between the bytes to escape are copied
/// whole (it was 12% of a sweep's CPU char by char); the escaped bytes are ASCII, so the runs
/// are whole UTF-8 sequences.
fn copy_text(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use super::super::tests::cp;
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_specially_and_keeps_the_rest() {
        let mut out = String::new();
        copy_text(&mut out, "a\\b\tc\nd\re — ünï\\\\");
        assert_eq!(out, "a\\\\b\\tc\\nd\\re — ünï\\\\\\\\");
        out.clear();
        copy_text(&mut out, "plain");
        assert_eq!(out, "plain");
    }

    #[test]
    fn message_keys_are_the_hash_of_h_identities_and_a_digest_of_the_others() {
        let h = "h:0123456789abcdef0123456789abcdef";
        assert_eq!(message_key(h), &h[2..]);
        let id = message_key("id:m1");
        assert_eq!(id.len(), 32);
        assert_ne!(id, message_key("id:m2"));
        // Not 32 lowercase hex digits: digested like any other identity.
        assert_eq!(message_key("h:XYZ").len(), 32);
    }

    #[test]
    fn a_text_stays_in_the_document_only_where_the_document_holds_it() {
        let c = cp(
            "a",
            r#"{"messages": [{"id": "1", "role": "u", "content": "x"}, {"id": "1", "role": "u", "content": "y"},
                             {"id": "2", "role": "u", "content": "z"}]}"#,
        );
        let ids: HashMap<String, i64> = [("a".to_string(), 1)].into();
        let documents: HashMap<&str, &Checkpoint> = [("a", &c)].into();
        let m = MessageColumns::of([&c].into_iter(), &ids, &documents, true);
        // The repeated id is one message: "z" is numbered 1 but the document's [1] is "y".
        assert_eq!(m.content, vec![None, Some("z")]);
        let mut mapped = c.clone();
        mapped.texts_in_document = false;
        let documents: HashMap<&str, &Checkpoint> = [("a", &mapped)].into();
        let m = MessageColumns::of([&mapped].into_iter(), &ids, &documents, true);
        assert_eq!(m.content, vec![Some("x"), Some("z")]);
    }
}
