//! `sweeper grants run` for the formats beyond the native layouts, applied as printed to a Redis
//! user and a PostgreSQL role of their own: RedisJSON documents, a mapped layout (`--mapping`)
//! and LangGraph's threads (Redis Stack, LangGraph's tables in `public`). A sweep as them
//! passes; with one privilege taken away (a Redis command, a PostgreSQL grant) it fails in one
//! line naming it, having saved nothing.

mod common;

use common::grants::{exec, login_role, pg_as, postgres, printed, redis_user};
use common::langgraph::{harness, proof};
use common::layouts::{Kind, write};
use common::servers::PrivateRedis;
use common::stack::Stack;
use common::*;
use serde_json::{Value, json};
use std::process::Output;

/// What `sweeper grants run LAYOUT --role ROLE` prints, applied to a Redis user and a PostgreSQL
/// role both named `role` (`layout`: the sweep's --format or --mapping and --match), less the Redis command `no_cmd` and the PostgreSQL statements holding
/// `no_sql`; returns the (Redis, PostgreSQL) URLs as them.
async fn granted(
    env: &TestEnv,
    layout: &[&str],
    role: &str,
    no_cmd: Option<&str>,
    no_sql: Option<&str>,
) -> (String, String) {
    let mut args = vec!["run", "--role", role];
    args.extend_from_slice(layout);
    let mut text = printed(env, &args);
    if let Some(cmd) = no_cmd {
        let before = text.len();
        text = text.replace(&format!(" +{cmd}"), "");
        assert!(text.len() < before, "grants gives no +{cmd}: {text}");
    }
    let (admin, owner) = postgres(&text);
    let keep = |sql: &str| -> String {
        sql.lines()
            .filter(|l| no_sql.is_none_or(|n| !l.contains(n)))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert!(
        no_sql.is_none_or(|n| owner.contains(n) || admin.contains(n)),
        "grants prints no {no_sql:?}: {text}"
    );
    login_role(&env.pg, role).await;
    exec(&env.pg, &keep(&admin)).await;
    exec(&env.pg, &keep(&owner)).await;
    let user = format!("{role}-{}", std::process::id());
    (
        redis_user(env, &text, &user).await,
        pg_as(&env.database_url, role),
    )
}

/// `sweeper run --output json LAYOUT ARGS` as the users at `urls`.
fn run_as(env: &TestEnv, urls: &(String, String), layout: &[&str], args: &[&str]) -> Output {
    env.command()
        .env("REDIS_URL", &urls.0)
        .env("DATABASE_URL", &urls.1)
        .args(["run", "--output", "json"])
        .args(layout)
        .args(args)
        .output()
        .unwrap()
}

/// Exits `code` with one error line naming `what`.
fn refused(out: &Output, code: i32, what: &str) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    let line = error_line(out);
    assert!(line.contains(what), "the error names {what}: {line}");
    line
}

fn passed(out: &Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "ok", "{s}");
    assert!(s["persisted"].as_u64() >= Some(1), "{s}");
    s
}

/// The passing sweep's: its keys are due again after a refused run protected them (15m by
/// default, 50m for LangGraph's).
const SWEEP: &[&str] = &["--threshold", "1h", "--protect-ttl", "2h"];

#[tokio::test]
async fn rejson_sweeps_as_granted_and_not_without_json_get() {
    let test = "rejson_sweeps_as_granted_and_not_without_json_get";
    let module = match rejson_module() {
        Ok(m) => m.to_string_lossy().into_owned(),
        Err(why) => return skip(test, &why),
    };
    let redis = match PrivateRedis::try_start(&["--loadmodule", &module]) {
        Ok(r) => r,
        Err(why) => return skip(test, &format!("Redis cannot load {module}: {why}")),
    };
    let env = TestEnv::with_redis("grants_rejson", &redis).await;
    let d = doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]);
    write(&env, Kind::ReJson, "r1", &d, 120_000).await;
    let layout = ["--format", "rejson", "--match", &env.pattern()];

    let short = granted(&env, &layout, "g_rejson_short", Some("json.get"), None).await;
    let line = refused(&run_as(&env, &short, &layout, &[]), 3, "json.get");
    let all = granted(&env, &layout, "g_rejson", None, None).await;
    let s = passed(&run_as(&env, &all, &layout, SWEEP));
    figure("rejson", &s, &line);
}

#[tokio::test]
async fn a_mapped_layout_sweeps_as_granted_and_not_without_lrange_or_sequences() {
    let env = TestEnv::migrated("grants_mapping").await;
    // LangChain's preset as a mapping file, its keys under the test's prefix.
    let preset = env.sweeper(&["formats", "langchain"]);
    assert!(preset.status.success(), "{}", stderr(&preset));
    let mapping = String::from_utf8(preset.stdout).unwrap().replace(
        "key = \"message_store:{id}\"",
        &format!("key = \"{}{{id}}\"", env.prefix),
    );
    let file = std::env::temp_dir().join(format!("sweeper-grants-{}.toml", std::process::id()));
    std::fs::write(&file, mapping).unwrap();
    let file = file.to_str().unwrap();
    for (id, turns) in [("s1", ["hi", "hello"]), ("s2", ["yes", "no"])] {
        let key = env.key(id);
        for (i, text) in turns.iter().enumerate() {
            let kind = if i % 2 == 0 { "human" } else { "ai" };
            let m = json!({"type": kind, "data": {"content": text}});
            let _: i64 = env
                .redis_cmd(redis::cmd("LPUSH").arg(&key).arg(m.to_string()))
                .await;
        }
        let () = env
            .redis_cmd(redis::cmd("PEXPIRE").arg(&key).arg(120_000))
            .await;
    }
    let layout = ["--mapping", file, "--match", &env.pattern()];

    let short = granted(&env, &layout, "g_map_short", Some("lrange"), None).await;
    let redis_line = refused(&run_as(&env, &short, &layout, &[]), 3, "lrange");
    let no_seq = granted(&env, &layout, "g_map_noseq", None, Some("ON ALL SEQUENCES")).await;
    let pg_line = refused(
        &run_as(&env, &no_seq, &layout, &[]),
        4,
        "permission denied for sequence",
    );
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 0);
    let all = granted(&env, &layout, "g_map", None, None).await;
    let s = passed(&run_as(&env, &all, &layout, SWEEP));
    assert_eq!(s["persisted"], 2, "{s}");
    figure("mapping", &s, &format!("{redis_line} / {pg_line}"));
}

#[tokio::test]
async fn langgraph_sweeps_as_granted_and_not_without_its_tables() {
    let test = "langgraph_sweeps_as_granted_and_not_without_its_tables";
    let h = match harness() {
        Ok(h) => h,
        Err(why) => return skip(test, &why),
    };
    let stack = Stack::start(&h);
    let admin = std::env::var("SWEEPER_TEST_PG_ADMIN").expect("run through `make test`");
    let env = TestEnv::on("grants_langgraph", &stack.url, &admin)
        .await
        .migrate();
    let out = env.sweeper(&["migrate", "--format", "langgraph"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state = std::env::temp_dir().join(format!("sweeper-grants-lg-{}.json", std::process::id()));
    proof(&h, &["write", &stack.url, state.to_str().unwrap()]);
    let layout = ["--format", "langgraph"];

    // RedisSaver's keys have 30 minutes left: due under 46m, and still after a protection.
    let no_tables = granted(
        &env,
        &layout,
        "g_lg_notables",
        None,
        Some("ON checkpoints, checkpoint_blobs"),
    )
    .await;
    let line = refused(
        &run_as(
            &env,
            &no_tables,
            &layout,
            &["--threshold", "46m", "--protect-ttl", "50m"],
        ),
        4,
        "permission denied for table checkpoint",
    );
    assert_eq!(
        env.count("SELECT count(*) FROM public.checkpoints").await,
        0
    );
    let all = granted(&env, &layout, "g_lg", None, None).await;
    let s = passed(&run_as(&env, &all, &layout, SWEEP));
    figure("langgraph", &s, &line);
}

/// What a test saw, past the harness's capture.
fn figure(format: &str, s: &Value, refused: &str) {
    common::runs::figure(
        &format!("grants {format}"),
        format!(
            "as granted: persisted {}; one privilege less: {refused}",
            s["persisted"]
        ),
    );
}
