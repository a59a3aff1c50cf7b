//! `sweeper forget`: erasure on request. The conversations named (or all of a user's) are
//! deleted in PostgreSQL with their tombstones and receipt in one transaction, then their keys in
//! Redis. PostgreSQL first: a forget stopped in between leaves tombstones, so no sweep brings
//! the conversations back, and a re-run deletes the keys left.

use std::collections::HashSet;

use serde::Serialize;

use crate::cli::{ForgetArgs, Format, GlobalOpts};
use crate::config::SweepConfig;
use crate::error::{Error, Result, exit};
use crate::redis::layout::Layout;
use crate::store::erase::{Request, Targets};

mod live;

/// What a forget did (or would do, on a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Forgotten {
    /// The receipt's id in `erasures`; None on a dry run.
    pub receipt: Option<String>,
    pub conversations: u64,
    pub messages: u64,
    pub redis_keys: u64,
    pub dry_run: bool,
}

impl Forgotten {
    fn to_text(&self) -> String {
        let (verb, receipt) = match &self.receipt {
            Some(r) => ("forgot", format!("; receipt {r}")),
            None => ("dry run: would forget", "; nothing deleted".to_string()),
        };
        format!(
            "{verb} {} conversations ({} messages in PostgreSQL, {} Redis keys){receipt}\n",
            self.conversations, self.messages, self.redis_keys
        )
    }
}

/// `sweeper forget`.
pub async fn execute(g: &GlobalOpts, f: &ForgetArgs) -> Result<u8> {
    let (cfg, request) = settings(f)?;
    // Redis first: when it is down, nothing is deleted anywhere.
    let mut source = super::connect_redis(g).await?;
    let store = super::connect_store(g).await?;
    store.ensure_migrated().await?;
    if cfg.layout == Layout::LangGraph {
        store.ensure_langgraph().await?;
    }
    let named: HashSet<&str> = f.conversations.iter().map(String::as_str).collect();
    let users: HashSet<&str> = f.users.iter().map(String::as_str).collect();
    let found = match live::must_scan(&cfg, &f.conversations, &f.users) {
        true => live::scan(&mut source, &cfg, &named, &users).await?,
        false => live::Live::default(),
    };
    let lossy = |k: &Vec<u8>| String::from_utf8_lossy(k).into_owned();
    let targets = Targets {
        ids: f.conversations.iter().chain(&found.ids).cloned().collect(),
        users: f.users.clone(),
        live_keys: found.keys.iter().map(lossy).collect(),
        live_ids: found.ids.clone(),
        langgraph: cfg.layout == Layout::LangGraph,
    };
    let erased = store.erase(&targets, &request, f.dry_run).await?;
    // The keys the rows named, those found live, and the key of each conversation erased.
    let mut keys: Vec<Vec<u8>> = erased
        .keys
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .chain(found.keys)
        .chain(
            erased
                .ids
                .iter()
                .chain(&targets.ids)
                .filter_map(|id| live::key_of(&cfg, id))
                .map(String::into_bytes),
        )
        .collect();
    keys.sort();
    keys.dedup();
    let redis_keys = match &erased.receipt {
        None => source
            .pttls(&keys)
            .await?
            .iter()
            .filter(|&&t| t != -2)
            .count() as u64,
        Some(receipt) => {
            let n = source.delete(&keys).await?;
            store.finish_receipt(receipt, n).await?;
            n
        }
    };
    let out = Forgotten {
        receipt: erased.receipt,
        conversations: erased.conversations,
        messages: erased.messages,
        redis_keys,
        dry_run: f.dry_run,
    };
    tracing::info!(
        receipt = out.receipt.as_deref(),
        conversations = out.conversations,
        messages = out.messages,
        redis_keys = out.redis_keys,
        dry_run = out.dry_run,
        "forget finished"
    );
    let json = || serde_json::to_string(&out).expect("always serializes");
    super::emit(f.out.output, json, || out.to_text())?;
    Ok(exit::OK)
}

/// The flags checked and turned into the layout's settings and the receipt's request.
fn settings(f: &ForgetArgs) -> Result<(SweepConfig, Request)> {
    if f.conversations.is_empty() && f.users.is_empty() {
        return Err(Error::Usage(
            "name what to forget: --conversation ID or --user ID (repeatable)".into(),
        ));
    }
    if f.conversations.iter().chain(&f.users).any(|s| s.is_empty()) {
        return Err(Error::Usage(
            "--conversation and --user must not be empty".into(),
        ));
    }
    if !f.users.is_empty() && f.layout.format == Format::Langgraph {
        return Err(Error::Usage(
            "--user cannot be used with --format langgraph: LangGraph threads name no user; name each thread with --conversation".into(),
        ));
    }
    let mapping = super::formats::resolve(&f.layout)?;
    let pattern = super::formats::pattern(f.layout.format, mapping.as_ref(), &f.pattern)?;
    let layout = match &mapping {
        Some(m) => super::formats::layout(m),
        None => f.layout.format.into(),
    };
    let cfg = SweepConfig {
        pattern,
        layout,
        mapping: mapping.map(std::sync::Arc::new),
        ..SweepConfig::default()
    }
    .validate()?;
    let request = Request {
        action: "forget",
        scope: if f.users.is_empty() {
            "conversation"
        } else {
            "user"
        },
        requested: f.conversations.len() + f.users.len(),
        older_than_s: None,
        reason: f.reason.clone(),
    };
    Ok((cfg, request))
}
