//! Plays the chat service: writes realistic checkpoints with TTLs spread over a range. The seed
//! data of `make demo`, the tests and the benchmarks. Writes go through [`Nodes`], so on a
//! cluster each key goes to the node owning it.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::error::Result;
use crate::redis::cluster::Nodes;

/// Keys written per pipeline.
const PIPELINE: usize = 500;

#[derive(Debug, Clone)]
pub struct SimulateConfig {
    pub conversations: u64,
    /// Keys are `{prefix}{conversation_id}`.
    pub prefix: String,
    /// TTLs are spread uniformly over this range.
    pub ttl_min: Duration,
    pub ttl_max: Duration,
    /// Messages per conversation, spread uniformly over this range.
    pub messages_min: usize,
    pub messages_max: usize,
    pub seed: u64,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            conversations: 100,
            prefix: "checkpoint:".into(),
            ttl_min: Duration::ZERO,
            ttl_max: Duration::from_secs(30 * 60),
            messages_min: 2,
            messages_max: 20,
            seed: 1,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimulateReport {
    pub written: u64,
    pub bytes: u64,
    pub messages: u64,
}

/// Writes `cfg.conversations` checkpoints.
pub async fn simulate(source: &mut Nodes, cfg: &SimulateConfig) -> Result<SimulateReport> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let now = Utc::now();
    let mut report = SimulateReport::default();
    let mut i = 0;
    while i < cfg.conversations {
        let mut entries = Vec::with_capacity(PIPELINE);
        for _ in 0..PIPELINE.min((cfg.conversations - i) as usize) {
            let id = format!("sim-{}-{i:07}", cfg.seed);
            let n = rng.usize(cfg.messages_min..=cfg.messages_max);
            let doc = conversation(&mut rng, &id, n, now).to_string();
            let ttl_ms = rng
                .u64(cfg.ttl_min.as_millis() as u64..=cfg.ttl_max.as_millis() as u64)
                .max(1);
            report.bytes += doc.len() as u64;
            report.messages += n as u64;
            entries.push((format!("{}{id}", cfg.prefix).into_bytes(), doc, ttl_ms));
            i += 1;
        }
        // Each key to the node owning it, on a cluster.
        source.set_all(&entries).await?;
    }
    report.written = cfg.conversations;
    Ok(report)
}

const WORDS: &[&str] = &[
    "the", "order", "shipping", "refund", "account", "password", "thanks", "please", "could",
    "you", "help", "with", "my", "invoice", "delivery", "tomorrow", "status", "update", "sure",
    "here", "is", "what", "I", "found", "about", "your", "request", "let", "me", "check", "that",
    "for", "great", "works", "now", "again", "error", "page", "settings", "email", "address",
    "changed",
];

/// One conversation's checkpoint, as the chat service writes it.
pub fn conversation(
    rng: &mut fastrand::Rng,
    id: &str,
    messages: usize,
    now: DateTime<Utc>,
) -> serde_json::Value {
    // Turns a few seconds to a minute and a half apart, the last one up to two minutes ago.
    let gaps: Vec<i64> = (0..messages).map(|_| rng.i64(2..90)).collect();
    let updated = now - chrono::Duration::seconds(rng.i64(0..120));
    let started = updated - chrono::Duration::seconds(gaps.iter().sum::<i64>());
    let mut ts = started;
    let msgs: Vec<_> = gaps
        .iter()
        .enumerate()
        .map(|(m, gap)| {
            ts += chrono::Duration::seconds(*gap);
            let words = rng.usize(4..60);
            let content: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.usize(..WORDS.len())])
                .collect();
            json!({
                "id": format!("{id}-m{m}"),
                "role": if m % 2 == 0 { "user" } else { "assistant" },
                "content": content.join(" "),
                "ts": ts.to_rfc3339_opts(SecondsFormat::Millis, true),
            })
        })
        .collect();
    let channel = ["web", "ios", "android"][rng.usize(..3)];
    json!({
        "conversation_id": id,
        "user_id": format!("u-{}", rng.u32(1..5000)),
        "started_at": started.to_rfc3339_opts(SecondsFormat::Millis, true),
        "updated_at": ts.to_rfc3339_opts(SecondsFormat::Millis, true),
        "messages": msgs,
        "metadata": {"channel": channel, "model": "chat-large"},
    })
}

/// `sweeper simulate`.
pub async fn execute(g: &crate::cli::GlobalOpts, s: &crate::cli::SimulateArgs) -> Result<u8> {
    let mut source = super::connect_redis(g).await?;
    let cfg = SimulateConfig {
        conversations: s.conversations,
        prefix: s.match_prefix.clone(),
        ttl_min: s.ttl_spread.0,
        ttl_max: s.ttl_spread.1,
        messages_min: s.messages.0,
        messages_max: s.messages.1,
        seed: s.seed,
    };
    let report = simulate(&mut source, &cfg).await?;
    super::print(&format!(
        "wrote {} checkpoints under {}* ({} messages, {} bytes), TTLs {} to {}\n",
        report.written,
        cfg.prefix,
        report.messages,
        report.bytes,
        humantime::format_duration(cfg.ttl_min),
        humantime::format_duration(cfg.ttl_max)
    ))?;
    Ok(crate::error::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::decode;

    #[test]
    fn simulated_conversations_are_valid_checkpoints() {
        let mut rng = fastrand::Rng::with_seed(3);
        let doc = conversation(&mut rng, "c-1", 10, Utc::now()).to_string();
        let c = decode("checkpoint:c-1", "c-1", doc.as_bytes()).unwrap();
        assert_eq!(c.messages.len(), 10);
        assert!(c.updated_at.unwrap() >= c.started_at.unwrap());
        assert!(
            c.updated_at.unwrap() <= Utc::now(),
            "no message from the future"
        );
        assert_eq!(c.messages.last().unwrap().created_at, c.updated_at);
        assert!((500..8000).contains(&doc.len()), "a few KB: {}", doc.len());
    }
}
