//! The keys Redis holds of the conversations to forget: named by their id where the layout says
//! which key holds a conversation, else found by reading the keyspace once (a user's
//! conversations, one key per message, LangGraph threads), decoded as a sweep decodes it.

use std::collections::HashSet;

use crate::config::SweepConfig;
use crate::error::Result;
use crate::mapping::Unit;
use crate::redis::Nodes;
use crate::redis::langgraph::{ThreadRead, read_threads};
use crate::redis::layout::Layout;

/// Keys found, and the conversations they hold.
#[derive(Debug, Default)]
pub struct Live {
    pub keys: Vec<Vec<u8>>,
    pub ids: Vec<String>,
}

/// The key of conversation `id` where the layout names one key per conversation; None when only
/// reading the keyspace can tell (one key per message, LangGraph threads, a key template with
/// more than the id).
pub fn key_of(cfg: &SweepConfig, id: &str) -> Option<String> {
    match &cfg.mapping {
        _ if cfg.layout == Layout::LangGraph => None,
        Some(m) if m.unit == Unit::Message => None,
        Some(m) => m.key_for(id),
        None => Some(format!("{}{id}", cfg.prefix)),
    }
}

/// Whether the keyspace must be read: users named, or a conversation named whose key the layout
/// cannot name.
pub fn must_scan(cfg: &SweepConfig, ids: &[String], users: &[String]) -> bool {
    !users.is_empty() || ids.iter().any(|id| key_of(cfg, id).is_none())
}

/// Reads every key matching the pattern once, page by page, and keeps those of `ids` or of
/// `users`: the next page is scanned on a connection of its own while this one is read and
/// decoded, as a dry run overlaps them; one read of the keyspace whatever the number of requests.
pub async fn scan(
    source: &mut Nodes,
    cfg: &SweepConfig,
    ids: &HashSet<&str>,
    users: &HashSet<&str>,
) -> Result<Live> {
    let mut scanner = source.clone();
    scanner.detach().await;
    let (tx, mut pages) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(2);
    let (pattern, count) = (cfg.pattern.clone(), cfg.scan_count);
    let scanning = async move {
        for mut walk in scanner.walks(None).await? {
            while let Some(page) = scanner.next_page(&mut walk, &pattern, count).await? {
                if !page.is_empty() && tx.send(page).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok::<_, crate::error::Error>(())
    };
    let reading = async {
        let mut out = Live::default();
        while let Some(page) = pages.recv().await {
            keep(source, cfg, page, ids, users, &mut out).await?;
        }
        Ok::<_, crate::error::Error>(out)
    };
    let (scanned, read) = tokio::join!(scanning, reading);
    scanned?;
    let mut out = read?;
    out.ids.sort();
    out.ids.dedup();
    Ok(out)
}

/// Reads one page of keys and keeps those of `ids` or `users` in `out`.
async fn keep(
    source: &mut Nodes,
    cfg: &SweepConfig,
    page: Vec<Vec<u8>>,
    ids: &HashSet<&str>,
    users: &HashSet<&str>,
    out: &mut Live,
) -> Result<()> {
    if cfg.layout == Layout::LangGraph {
        for t in read_threads(source, &page, &cfg.prefix).await? {
            if let ThreadRead::Thread(t) = t
                && ids.contains(t.thread_id.as_str())
            {
                out.keys.extend(t.keys);
                out.ids.push(t.thread_id);
            }
        }
        return Ok(());
    }
    let fetched = source.read(cfg.layout, &page, cfg.max_value_bytes).await?;
    let owners = crate::sweep::decode::decode_owners(cfg, &page, fetched);
    for (key, owner) in page.into_iter().zip(owners) {
        let Some((id, user)) = owner else { continue };
        if ids.contains(id.as_str()) || user.is_some_and(|u| users.contains(u.as_str())) {
            out.keys.push(key);
            out.ids.push(id);
        }
    }
    Ok(())
}
