//! `--format langgraph` against the real LangGraph client: a chatbot graph on RedisSaver
//! (langgraph-checkpoint-redis 0.5.2, on a Redis Stack server), swept, then read and continued by
//! PostgresSaver (langgraph-checkpoint-postgres 3.2.0); and the tables `sweeper migrate --format
//! langgraph` creates against those of `PostgresSaver.setup()`. tests/langgraph/setup.sh provides
//! the venv and the server (cached); without them the tests skip, saying why.

mod common;

use common::langgraph::{harness, proof};
use common::stack::Stack;
use common::*;
use sqlx::PgPool;

fn sweep(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let out = env
        .command()
        .args(["run", "--format", "langgraph", "--output", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "sweep failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every key of the Redis Stack, with SCAN.
async fn all_keys(env: &TestEnv) -> Vec<String> {
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, page): (u64, Vec<String>) = env
            .redis_cmd(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000))
            .await;
        keys.extend(page);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

async fn rows(pg: &PgPool) -> Vec<i64> {
    let mut out = Vec::new();
    for t in ["checkpoints", "checkpoint_blobs", "checkpoint_writes"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
            .fetch_one(pg)
            .await
            .unwrap();
        out.push(n);
    }
    out
}

#[tokio::test]
async fn postgres_saver_resumes_the_threads_redis_saver_wrote() {
    let h = match harness() {
        Ok(h) => h,
        Err(why) => {
            return skip("postgres_saver_resumes_the_threads_redis_saver_wrote", &why);
        }
    };
    let stack = Stack::start(&h);
    let admin = std::env::var("SWEEPER_TEST_PG_ADMIN").expect("run through `make test`");
    let env = TestEnv::on("langgraph", &stack.url, &admin).await;
    let state = std::env::temp_dir().join(format!("sweeper-langgraph-{}.json", std::process::id()));
    // Four chat threads of one to three turns, a fan-out (v4 and v3) and a subgraph, TTL 30m.
    proof(&h, &["write", &stack.url, state.to_str().unwrap()]);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    // Threads by namespace (a subgraph's is one more), and checkpoints, as RedisSaver left them.
    let (threads, checkpoints) = (
        saved["counts"]["latest"].as_u64().unwrap(),
        saved["counts"]["checkpoints"].as_u64().unwrap(),
    );
    assert_eq!(threads, 9, "{saved}");
    let refused_keys = saved["counts"]["refused_keys"].as_u64().unwrap();

    let out = env
        .command()
        .args(["migrate", "--format", "langgraph"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // 30 minutes left: not due under the default 10m (nor under 31m once protected to 45m:
    // the due sweeps below use 46m).
    let s = sweep(&env, &[]);
    assert_eq!(
        (s["scanned"].as_u64(), s["due"].as_u64()),
        (Some(threads), Some(0)),
        "{s}"
    );

    // PostgreSQL down: every key of every due thread outlives the outage, not only the latest.
    let down = format!("postgres://postgres@127.0.0.1:{}/x", closed_port());
    let out = env
        .command()
        .env("DATABASE_URL", &down)
        .args([
            "run",
            "--format",
            "langgraph",
            "--threshold",
            "31m",
            "--protect-ttl",
            "45m",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // Every key RedisSaver wrote (the stack holds nothing else): checkpoints, writes, latest
    // keys and the write registries (write_keys_zset:).
    let keys = all_keys(&env).await;
    for k in &keys {
        let ttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(k)).await;
        assert!(ttl > 40 * 60_000, "{k} not protected: {ttl}ms left");
    }
    let zsets = keys
        .iter()
        .filter(|k| k.starts_with("write_keys_zset:"))
        .count();
    assert!(keys.len() > 80 && zsets > 10, "{keys:?}");

    let latest = "checkpoint_latest:t-1:__empty__";
    let before: i64 = env.redis_cmd(redis::cmd("PTTL").arg(latest)).await;
    let due = ["--threshold", "46m", "--protect-ttl", "50m"];

    // A dry run lists every due thread (by its latest key, with its checkpoints) and writes
    // nothing: no LangGraph row, no reject, no run, no TTL raised.
    let runs = env.count("SELECT count(*) FROM sweep_runs").await;
    let mut want: Vec<String> = all_keys(&env)
        .await
        .into_iter()
        .filter(|k| k.starts_with("checkpoint_latest:"))
        .collect();
    want.sort();
    let dry = sweep(&env, &[&due[..], &["--dry-run"]].concat());
    let mut listed: Vec<String> = dry["due_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert!(k["messages"].as_u64().unwrap() >= 1, "{k}");
            k["key"].as_str().unwrap().to_string()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, want, "{dry}");
    assert_eq!(dry["due"].as_u64(), Some(threads), "{dry}");
    let text = env
        .command()
        .args(["run", "--format", "langgraph", "--dry-run"])
        .args(due)
        .output()
        .unwrap();
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        want.iter().all(|k| text.contains(k.as_str())) && text.contains("nothing was written"),
        "{text}"
    );
    assert_eq!(rows(&env.pg).await, vec![0, 0, 0]);
    assert_eq!(env.count("SELECT count(*) FROM sweep_rejects").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM sweep_runs").await, runs);
    let after: i64 = env.redis_cmd(redis::cmd("PTTL").arg(latest)).await;
    assert!(
        after <= before,
        "a dry run raised a TTL: {before} -> {after}"
    );

    let out = env
        .command()
        .args(["run", "--format", "langgraph", "--output", "json"])
        .args(due)
        .output()
        .unwrap();
    assert!(out.status.success(), "sweep failed: {}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // All but the thread PostgreSQL refuses (its batch with them): that one is set aside.
    assert_eq!(
        (
            s["status"].as_str(),
            s["due"].as_u64(),
            s["persisted"].as_u64(),
            s["rejected"].as_u64()
        ),
        (Some("ok"), Some(threads), Some(threads - 1), Some(1)),
        "{s}"
    );
    assert!(
        stderr(&out).contains("LangGraph thread rejected") && stderr(&out).contains("t-nul"),
        "{}",
        stderr(&out)
    );
    let (reason, raw): (String, Vec<u8>) =
        sqlx::query_as("SELECT reason, raw FROM sweep_rejects WHERE redis_key = $1")
            .bind("checkpoint_latest:t-nul:__empty__")
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert!(reason.starts_with("postgres_refused"), "{reason}");
    assert!(String::from_utf8_lossy(&raw).contains("nul\\u0000here"));
    let none: i64 =
        sqlx::query_scalar("SELECT count(*) FROM checkpoints WHERE thread_id = 't-nul'")
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert_eq!(none, 0);
    // Its keys are left in Redis, for inspection.
    let left = all_keys(&env).await;
    let left = left.iter().filter(|k| k.contains(":t-nul:")).count();
    assert_eq!(left as u64, refused_keys);
    let after: i64 = env.redis_cmd(redis::cmd("PTTL").arg(latest)).await;
    assert!(
        after > 0 && after <= before,
        "a sweep refreshed a TTL: {before} -> {after}"
    );
    let written = rows(&env.pg).await;
    assert_eq!(written[0], checkpoints as i64, "{written:?}");

    // Re-sweeping changes nothing.
    let s = sweep(&env, &due);
    assert_eq!(
        (
            s["persisted"].as_u64(),
            s["unchanged"].as_u64(),
            s["rejected"].as_u64()
        ),
        (Some(0), Some(threads - 1), Some(1)),
        "{s}"
    );
    assert_eq!(rows(&env.pg).await, written);

    // PostgresSaver: same state, checkpoint ids, history; and the conversation goes on.
    proof(&h, &["check", &env.database_url, state.to_str().unwrap()]);
    let _ = std::fs::remove_file(state);
}

/// The schema of a database, as text that two schemas can be compared by.
async fn schema(pg: &PgPool) -> Vec<String> {
    let mut out: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', table_name, column_name, data_type, is_nullable, column_default, ordinal_position) \
         FROM information_schema.columns WHERE table_schema = 'public' AND table_name LIKE 'checkpoint%' \
         ORDER BY table_name, column_name",
    )
    .fetch_all(pg)
    .await
    .unwrap();
    let more: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename LIKE 'checkpoint%' \
         UNION ALL SELECT 'migration ' || v FROM checkpoint_migrations ORDER BY 1",
    )
    .fetch_all(pg)
    .await
    .unwrap();
    out.extend(more);
    out
}

#[tokio::test]
async fn migrate_creates_the_tables_postgres_saver_setup_creates() {
    let h = match harness() {
        Ok(h) => h,
        Err(why) => {
            return skip(
                "migrate_creates_the_tables_postgres_saver_setup_creates",
                &why,
            );
        }
    };
    let redis = std::env::var("REDIS_URL").expect("run through `make test`");
    let admin = std::env::var("SWEEPER_TEST_PG_ADMIN").expect("run through `make test`");
    let by_langgraph = TestEnv::on("lg_setup", &redis, &admin).await;
    let by_sweeper = TestEnv::on("lg_migrate", &redis, &admin).await;
    proof(&h, &["setup", &by_langgraph.database_url]);
    for _ in 0..2 {
        // Twice: idempotent.
        let out = by_sweeper
            .command()
            .args(["migrate", "--format", "langgraph"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let want = schema(&by_langgraph.pg).await;
    assert!(want.len() > 25, "{want:?}");
    assert_eq!(schema(&by_sweeper.pg).await, want);
    // And setup() on sweeper's tables finds nothing to do.
    proof(&h, &["setup", &by_sweeper.database_url]);
    assert_eq!(schema(&by_sweeper.pg).await, want);
}

#[tokio::test]
async fn langgraph_on_a_redis_cluster_is_refused_as_a_usage_error() {
    let env = TestEnv::new("lg_cluster").await;
    for extra in [&[][..], &["--dry-run"]] {
        let out = env
            .command()
            .args(["--redis-cluster", "run", "--format", "langgraph"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let line = error_line(&out);
        assert!(
            line.contains("--format langgraph") && line.contains("--redis-cluster"),
            "{line}"
        );
        assert!(out.stdout.is_empty());
    }
}
