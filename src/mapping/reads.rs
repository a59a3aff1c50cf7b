//! What a mapping reads of a value: its paths, and the [`Want`] tree a parse keeps of each list
//! element and each document ([`super::json::Json::parse_wanted`]).

use super::json::Want;
use super::path::{Path, Step};
use super::{IdSource, Mapping, Unit, Wants};

impl Mapping {
    /// Every path the mapping reads from a message or document.
    pub(super) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.message_paths()
            .chain([&self.messages])
            .chain(self.conversation_paths())
    }

    /// The paths read from each message.
    fn message_paths(&self) -> impl Iterator<Item = &Path> {
        let m = &self.message;
        m.role
            .iter()
            .chain(&m.content)
            .chain(&m.id)
            .chain(&m.ts)
            .chain(m.keep.as_ref().map(|k| &k.0))
    }

    /// The paths read from the document (or the message of a key of its own) for the
    /// conversation.
    fn conversation_paths(&self) -> impl Iterator<Item = &Path> {
        let c = &self.conversation;
        let id = match &self.conversation_id {
            IdSource::Field(p) => Some(p),
            IdSource::Key(_) => None,
        };
        id.into_iter()
            .chain(c.user_id.iter().chain(&c.started_at).chain(&c.updated_at))
    }

    /// What a decode reads of a list element (a message) and of a document: the message's
    /// paths (under the message array's, in a conversation's document) and the conversation's.
    pub(super) fn reads(&self) -> Wants {
        let in_document: Vec<Path> = self
            .message_paths()
            .map(|p| match self.unit {
                Unit::Message => p.clone(),
                Unit::Conversation => Path {
                    text: p.text.clone(),
                    steps: self
                        .messages
                        .steps
                        .iter()
                        .chain(&p.steps)
                        .cloned()
                        .collect(),
                },
            })
            .collect();
        Wants {
            element: want_of(self.message_paths()),
            document: want_of(in_document.iter().chain(self.conversation_paths())),
        }
    }
}

/// What `paths` read of a value: the fields on their way (a `[]` step reads every element
/// alike), each path's end whole.
fn want_of<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Want {
    let mut want = Want::Fields(Vec::new());
    for p in paths {
        let mut node = &mut want;
        for step in &p.steps {
            let Step::Field(f) = step else { continue };
            let Want::Fields(fields) = node else { break };
            let i = match fields.iter().position(|(k, _)| k == f) {
                Some(i) => i,
                None => {
                    fields.push((f.clone(), Want::Fields(Vec::new())));
                    fields.len() - 1
                }
            };
            node = &mut fields[i].1;
        }
        *node = Want::All;
    }
    want
}
