//! `--shard I/N`: N workers split the keyspace with no overlap and no gap. The union of N shard
//! runs is one unsharded run: the same conversations, messages and rejects, the same counters.

mod common;

use common::*;
use serde_json::Value;

const COUNTERS: [&str; 8] = [
    "scanned",
    "due",
    "not_due",
    "no_ttl",
    "persisted",
    "unchanged",
    "rejected",
    "messages_added",
];

/// What a database holds after sweeps: every conversation with its messages, and the rejects.
async fn contents(env: &TestEnv) -> (Vec<(String, i32, String)>, Vec<(String, String)>) {
    let convs = sqlx::query_as(
        "SELECT c.conversation_id, c.message_count, \
                string_agg(m.message_key || '=' || m.content, ',' ORDER BY m.seq) \
         FROM conversations c JOIN messages m USING (conversation_id) \
         GROUP BY c.conversation_id, c.message_count ORDER BY 1",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    let rejects = sqlx::query_as("SELECT redis_key, reason FROM sweep_rejects ORDER BY 1")
        .fetch_all(&env.pg)
        .await
        .unwrap();
    (convs, rejects)
}

fn sum(runs: &[Value], counter: &str) -> u64 {
    runs.iter().map(|r| r[counter].as_u64().unwrap()).sum()
}

#[tokio::test]
async fn the_union_of_n_shard_runs_is_one_unsharded_run() {
    let whole = TestEnv::migrated("shards_whole").await;
    // 600 conversations, a third due; some without TTL; some bad values; hash tags.
    whole.seed(400, 3_600_000).await;
    for i in 0..200 {
        whole
            .set(
                &format!("due{i:03}"),
                &doc(Some("2026-11-22T10:00:00Z"), &["a", "b"]),
                SOON,
            )
            .await;
    }
    for i in 0..20 {
        whole.set_raw(&format!("bad{i}"), "not json", SOON).await;
        whole
            .set(&format!("nottl{i}"), &doc(None, &["a"]), None)
            .await;
        whole
            .set(&format!("{{tag}}{i}"), &doc(None, &["a"]), SOON)
            .await;
    }
    let reference = whole.run_json(&[]);
    assert_eq!(reference["persisted"], 220, "{reference}");
    assert_eq!(reference["rejected"], 20, "{reference}");
    assert!(reference.get("shard").is_none(), "{reference}");
    let expected = contents(&whole).await;

    for n in [1u32, 3, 8] {
        let mut env = TestEnv::migrated(&format!("shards_{n}")).await;
        env.prefix = whole.prefix.clone();
        let runs: Vec<Value> = (0..n)
            .map(|i| env.run_json(&["--shard", &format!("{i}/{n}")]))
            .collect();
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(r["status"], "ok", "{r}");
            assert_eq!(r["shard"], format!("{i}/{n}"), "{r}");
        }
        for c in COUNTERS {
            assert_eq!(
                sum(&runs, c),
                reference[c].as_u64().unwrap(),
                "{c} over {n} shards: {runs:?}"
            );
        }
        if n > 1 {
            assert!(
                runs.iter().all(|r| r["scanned"].as_u64().unwrap() < 640),
                "each shard has a part: {runs:?}"
            );
        }
        assert_eq!(contents(&env).await, expected, "{n} shards");
        // Each shard recorded its own run.
        let recorded: Vec<(Option<i32>, Option<i32>, String)> =
            sqlx::query_as("SELECT shard_index, shard_count, status FROM sweep_runs ORDER BY id")
                .fetch_all(&env.pg)
                .await
                .unwrap();
        let want: Vec<_> = (0..n as i32)
            .map(|i| (Some(i), Some(n as i32), "ok".to_string()))
            .collect();
        assert_eq!(recorded, want);
    }
}

#[tokio::test]
async fn an_indexed_job_pod_sweeps_the_shard_of_its_completion_index() {
    let env = TestEnv::migrated("shards_job").await;
    env.seed(50, 120_000).await;
    let mut total = 0;
    for i in 0..3 {
        let out = env
            .command()
            .env("JOB_COMPLETION_INDEX", i.to_string())
            .env("SWEEPER_SHARDS", "3")
            .args(["run", "--output", "json", "--match", &env.pattern()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["shard"], format!("{i}/3"));
        total += s["persisted"].as_u64().unwrap();
    }
    assert_eq!(total, 50);
    // SWEEPER_SHARD is --shard's twin.
    let out = env
        .command()
        .env("SWEEPER_SHARD", "2/3")
        .args([
            "run",
            "--dry-run",
            "--output",
            "json",
            "--match",
            &env.pattern(),
        ])
        .output()
        .unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["shard"], "2/3");
}

#[tokio::test]
async fn bad_shards_are_usage_errors() {
    let env = TestEnv::migrated("shards_bad").await;
    let usage = |out: std::process::Output, what: &str| {
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        let line = error_line(&out);
        assert!(out.stdout.is_empty(), "{what}");
        line
    };
    for bad in ["3/3", "4/3", "3/0", "0/0", "x", "-1/3", "1/3/3", "0/16385"] {
        let line = usage(env.sweeper(&["run", &format!("--shard={bad}")]), bad);
        assert!(line.contains("--shard"), "{bad}: {line}");
    }
    let line = usage(env.sweeper(&["run", "--shards", "3"]), "no index");
    assert!(line.contains("JOB_COMPLETION_INDEX"), "{line}");
    for index in ["3", "x", "-1"] {
        let out = env
            .command()
            .env("JOB_COMPLETION_INDEX", index)
            .args(["run", "--shards", "3"])
            .output()
            .unwrap();
        usage(out, index);
    }
    usage(
        env.sweeper(&["run", "--shard", "0/3", "--shards", "3"]),
        "both",
    );
    assert_eq!(env.count("SELECT count(*) FROM sweep_runs").await, 0);
}

#[tokio::test]
async fn status_alarms_until_every_shard_has_succeeded() {
    let env = TestEnv::migrated("shards_status").await;
    env.seed(30, 120_000).await;
    let status = || {
        let out = env.sweeper(&["status", "--max-age", "15m", "--output", "json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report)
    };
    for i in 0..2 {
        env.run_json(&["--shard", &format!("{i}/3")]);
    }
    // Two shards of three: a third of the keys never swept.
    let (code, report) = status();
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["runs"][0]["shard_index"], 1, "{report}");
    assert_eq!(report["runs"][0]["shard_count"], 3, "{report}");
    env.run_json(&["--shard", "2/3"]);
    let (code, report) = status();
    assert_eq!(code, Some(0), "{report}");
}
