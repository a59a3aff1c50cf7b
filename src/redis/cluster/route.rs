//! Per-key commands sent to the node owning each key, MOVED and ASK followed.

use std::collections::BTreeMap;

use redis::{Pipeline, Value};

use super::{Nodes, client_error};
use crate::error::{Error, Result};
use crate::redact::redact_url;

/// Redirections followed for one key before the read fails (a slot moving back and forth).
const MAX_REDIRECTS: usize = 5;

/// Where a key's reply says to go instead.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    Moved(String),
    Ask(String),
}

impl Nodes {
    /// Sends each key's commands to the node owning it, following redirections; returns each
    /// key's replies. Keys with no command get none.
    pub(crate) async fn per_key(
        &mut self,
        keys: &[Vec<u8>],
        queue: impl Fn(&mut Pipeline, usize),
    ) -> Result<Vec<Vec<Value>>> {
        let mut out = vec![Vec::new(); keys.len()];
        // (key index, where to send it: None for the slot's owner, or a node and ASKING).
        let mut pending: Vec<(usize, Option<(String, bool)>)> =
            (0..keys.len()).map(|i| (i, None)).collect();
        let mut moved = false;
        for _ in 0..=MAX_REDIRECTS {
            if pending.is_empty() {
                break;
            }
            let mut groups: BTreeMap<(usize, bool), Vec<usize>> = BTreeMap::new();
            for (i, to) in std::mem::take(&mut pending) {
                let (node, asking) = match to {
                    None => (self.owner_of(&keys[i]), false),
                    Some((addr, asking)) => (self.node(&addr).await?, asking),
                };
                groups.entry((node, asking)).or_default().push(i);
            }
            for ((node, asking), idx) in groups {
                let max = self.nodes[node].source.max_pipeline();
                let mut start = 0;
                while start < idx.len() {
                    // A run of keys whose commands fit in one pipeline (at least one key).
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    let mut counts = Vec::new();
                    let mut end = start;
                    while end < idx.len() && (end == start || pipe.len() < max) {
                        if asking {
                            // ASKING goes before each command of the key (it holds for one).
                            let mut own = redis::pipe();
                            queue(&mut own, idx[end]);
                            counts.push(own.len());
                            for c in own.cmd_iter() {
                                pipe.cmd("ASKING");
                                pipe.add_command(c.clone());
                            }
                        } else {
                            let before = pipe.len();
                            queue(&mut pipe, idx[end]);
                            counts.push(pipe.len() - before);
                        }
                        end += 1;
                    }
                    let mut replies = match pipe.is_empty() {
                        true => Vec::new().into_iter(),
                        false => self.nodes[node]
                            .source
                            .query::<Vec<Value>>(&pipe)
                            .await?
                            .into_iter(),
                    };
                    for (&i, n) in idx[start..end].iter().zip(counts) {
                        let mut mine = Vec::with_capacity(n);
                        for _ in 0..n {
                            if asking {
                                replies.next();
                            }
                            mine.push(replies.next().unwrap_or(Value::Nil));
                        }
                        match redirect(&mine) {
                            Some(Redirect::Moved(addr)) => {
                                moved = true;
                                pending.push((i, Some((addr, false))));
                            }
                            Some(Redirect::Ask(addr)) => pending.push((i, Some((addr, true)))),
                            None => out[i] = mine,
                        }
                    }
                    start = end;
                }
            }
        }
        if let Some((i, _)) = pending.first() {
            return Err(Error::Redis {
                url: redact_url(&self.seed_url),
                source: client_error(format!(
                    "key {} still redirected after {MAX_REDIRECTS} hops",
                    crate::redis::node::display_key(&keys[*i])
                )),
            });
        }
        if moved {
            // Slots have moved: later pages go straight to their new owners.
            self.refresh().await?;
        }
        Ok(out)
    }
}

/// A MOVED or ASK among one key's replies.
fn redirect(replies: &[Value]) -> Option<Redirect> {
    replies.iter().find_map(|v| match v {
        Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK") => {
            // "MOVED 3999 127.0.0.1:6381": the code, the slot, the address.
            let addr = e.details()?.split_whitespace().nth(1)?.to_string();
            Some(match e.code() {
                "MOVED" => Redirect::Moved(addr),
                _ => Redirect::Ask(addr),
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_read_from_error_replies() {
        // As the server sends them.
        let parse = |wire: &str| redis::parse_redis_value(wire.as_bytes()).unwrap();
        assert_eq!(
            redirect(&[parse("-MOVED 3999 127.0.0.1:6381\r\n")]),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(&[Value::Int(1), parse("-ASK 3999 127.0.0.1:6382\r\n")]),
            Some(Redirect::Ask("127.0.0.1:6382".into()))
        );
        assert_eq!(redirect(&[parse("-WRONGTYPE no\r\n")]), None);
        assert_eq!(redirect(&[]), None);
    }
}
