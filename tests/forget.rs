//! `sweeper forget` and `sweeper prune`: erasure that stays erased (a late write, a newer
//! checkpoint, a restore, a sweep racing the forget never bring a conversation back), receipts
//! without ids in clear, and the failures (PostgreSQL down, Redis down, a role without DELETE)
//! that delete nothing anywhere.

mod common;

use common::*;
use serde_json::Value;
use sqlx::AssertSqlSafe;

/// `sweeper forget --match PATTERN ARGS`.
fn forget(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let pattern = env.pattern();
    let mut all = vec!["forget", "--match", pattern.as_str()];
    all.extend_from_slice(args);
    env.sweeper(&all)
}

/// A sweep that must count `n` erased keys and save nothing.
fn sweep_finds_erased(env: &TestEnv, n: u64) {
    let s = env.run_json(&[]);
    assert_eq!(
        (s["erased"].as_u64(), s["persisted"].as_u64()),
        (Some(n), Some(0)),
        "{s}"
    );
}

/// `forget --conversation ID` with one setting of the environment replaced (`(name, value)`).
fn forget_as(env: &TestEnv, id: &str, (var, value): (&str, &str)) -> std::process::Output {
    let mut cmd = env.command();
    cmd.args(["forget", "--match", &env.pattern(), "--conversation", id]);
    cmd.env(var, value).output().unwrap()
}

/// `forget ... --output json`, which must succeed; its report.
fn forget_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = forget(env, &all);
    assert!(out.status.success(), "forget failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes conversation `id` of user `user`, updated on November `day`, with messages `ids`.
async fn put(env: &TestEnv, (id, user): (&str, &str), day: u32, ids: &[&str], ttl: Option<u64>) {
    let mut d = doc(Some(&format!("2026-11-{day}T10:00:00Z")), ids);
    d["user_id"] = user.into();
    env.set(id, &d, ttl).await;
}

async fn exists(env: &TestEnv, id: &str) -> bool {
    env.redis_cmd::<i64>(redis::cmd("EXISTS").arg(env.key(id)))
        .await
        == 1
}

/// Rows of `erasures` and `erased` holding `text` anywhere (an id in clear).
async fn in_clear(env: &TestEnv, text: &str) -> i64 {
    let like = format!("%{text}%");
    let mut n = 0;
    for table in ["erasures", "erased"] {
        n += sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} t WHERE row_to_json(t)::text LIKE $1 \
             OR encode(convert_to(row_to_json(t)::text, 'UTF8'), 'hex') LIKE $2"
        )))
        .bind(&like)
        .bind(format!("%{}%", hex(text)))
        .fetch_one(&env.pg)
        .await
        .unwrap();
    }
    n
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_forgotten_conversation_never_comes_back() {
    let env = TestEnv::migrated("forget_one").await;
    put(&env, ("conv-alpha", "user-alpha"), 22, &["m1", "m2"], SOON).await;
    put(&env, ("conv-beta", "user-alpha"), 22, &["m1"], SOON).await;
    assert_eq!(env.run_json(&[])["persisted"], 2);

    let r = forget_json(
        &env,
        &["--conversation", "conv-alpha", "--reason", "TICKET-7"],
    );
    assert_eq!(r["conversations"], 1, "{r}");
    assert_eq!(r["messages"], 2, "{r}");
    assert_eq!(r["redis_keys"], 1, "{r}");
    assert_eq!(r["dry_run"], false);
    let receipt = r["receipt"].as_str().unwrap().to_string();
    assert!(!exists(&env, "conv-alpha").await);
    assert!(
        exists(&env, "conv-beta").await,
        "another conversation untouched"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE conversation_id = 'conv-alpha'")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM conversation_ids WHERE conversation_id = 'conv-alpha'")
            .await,
        0
    );
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 1);
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM erasures WHERE receipt = '{receipt}' AND action = 'forget' \
             AND scope = 'conversation' AND reason = 'TICKET-7' AND redis_keys = 1 \
             AND finished_at IS NOT NULL AND host IS NOT NULL AND os_user IS NOT NULL"
        ))
        .await,
        1
    );
    assert_eq!(in_clear(&env, "conv-alpha").await, 0, "no id in clear");
    assert_eq!(in_clear(&env, "user-alpha").await, 0, "no user in clear");

    // The tombstones survive `migrate` (the salt is made once, kept).
    let salt = "SELECT encode(salt, 'hex') FROM erasure_salt";
    let before: String = sqlx::query_scalar(salt).fetch_one(&env.pg).await.unwrap();
    let out = env.sweeper(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after: String = sqlx::query_scalar(salt).fetch_one(&env.pg).await.unwrap();
    assert_eq!(before, after);

    // A late write of the key, then a newer checkpoint under the same id: never saved again.
    put(&env, ("conv-alpha", "user-alpha"), 22, &["m1", "m2"], SOON).await;
    sweep_finds_erased(&env, 1);
    put(
        &env,
        ("conv-alpha", "user-alpha"),
        23,
        &["m1", "m2", "m3"],
        SOON,
    )
    .await;
    let s = env.run_json(&[]);
    assert_eq!(s["erased"], 1, "{s}");
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE conversation_id = 'conv-alpha'")
            .await,
        0
    );
    assert!(exists(&env, "conv-alpha").await, "left to its TTL");
    assert_eq!(
        env.count("SELECT erased FROM sweep_runs ORDER BY id DESC LIMIT 1")
            .await,
        1
    );

    // Nor through restore.
    let out = env.sweeper(&["restore", "--conversation", "conv-alpha", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(error_line(&out).contains("erased"), "{}", stderr(&out));

    // Forgetting it again deletes the late key; once more, there is nothing left: zeros.
    let r = forget_json(&env, &["--conversation", "conv-alpha"]);
    assert_eq!(
        (r["conversations"].as_u64(), r["redis_keys"].as_u64()),
        (Some(0), Some(1))
    );
    let r = forget_json(&env, &["--conversation", "conv-alpha"]);
    assert_eq!(
        (
            r["conversations"].as_u64(),
            r["messages"].as_u64(),
            r["redis_keys"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );

    // A conversation first seen after the erasure, of the same user, is saved as usual.
    put(&env, ("conv-gamma", "user-alpha"), 24, &["m1"], SOON).await;
    assert_eq!(env.run_json(&[])["persisted"], 1);

    // status shows the receipts; a restore is recorded too.
    let out = env.sweeper(&["restore", "--conversation", "conv-beta", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.sweeper(&["status", "--output", "json"]);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<&str> = st["erasures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["restore", "forget", "forget", "forget"], "{st}");
    let text = String::from_utf8(env.sweeper(&["status"]).stdout).unwrap();
    assert!(text.contains(&receipt), "{text}");
}

#[tokio::test]
async fn a_user_is_forgotten_across_conversations_even_those_only_in_redis() {
    let env = TestEnv::migrated("forget_user").await;
    put(&env, ("saved-one", "user-nine"), 22, &["m1", "m2"], SOON).await;
    put(&env, ("someone-else", "user-ten"), 22, &["m1"], SOON).await;
    assert_eq!(env.run_json(&[])["persisted"], 2);
    // Not due yet: only Redis holds it.
    put(&env, ("live-one", "user-nine"), 22, &["m1"], FAR).await;

    let dry = forget_json(&env, &["--user", "user-nine", "--dry-run"]);
    assert_eq!(
        (
            dry["conversations"].as_u64(),
            dry["messages"].as_u64(),
            dry["redis_keys"].as_u64()
        ),
        (Some(2), Some(2), Some(2)),
        "{dry}"
    );
    assert!(dry["receipt"].is_null());
    assert!(exists(&env, "live-one").await, "a dry run deletes nothing");
    assert_eq!(env.count("SELECT count(*) FROM erasures").await, 0);

    let r = forget_json(&env, &["--user", "user-nine", "--user", "user-unknown"]);
    assert_eq!(
        (
            r["conversations"].as_u64(),
            r["messages"].as_u64(),
            r["redis_keys"].as_u64()
        ),
        (Some(2), Some(2), Some(2)),
        "{r}"
    );
    assert!(!exists(&env, "live-one").await && !exists(&env, "saved-one").await);
    assert!(exists(&env, "someone-else").await);
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM erasures WHERE scope = 'user'")
            .await,
        1
    );
    assert_eq!(in_clear(&env, "user-nine").await, 0);

    // The chat service writes the live one late: never saved.
    put(&env, ("live-one", "user-nine"), 23, &["m1", "m2"], SOON).await;
    sweep_finds_erased(&env, 1);
}

#[tokio::test]
async fn bad_usage_and_servers_down_delete_nothing_anywhere() {
    let env = TestEnv::migrated("forget_down").await;
    env.set("kept", &doc(None, &["m1"]), SOON).await;
    assert_eq!(env.run_json(&[])["persisted"], 1);

    let out = forget(&env, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(error_line(&out).contains("--conversation"));
    let out = forget(
        &env,
        &[
            "--conversation",
            "kept",
            "--format",
            "langgraph",
            "--user",
            "u",
        ],
    );
    assert_eq!(out.status.code(), Some(2));

    let closed = format!("postgres://postgres@127.0.0.1:{}/x", closed_port());
    let out = forget_as(&env, "kept", ("DATABASE_URL", &closed));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    error_line(&out);
    assert!(exists(&env, "kept").await, "PostgreSQL down: the key stays");

    let closed = format!("redis://127.0.0.1:{}/", closed_port());
    let out = forget_as(&env, "kept", ("REDIS_URL", &closed));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    error_line(&out);
    assert_eq!(
        env.count("SELECT count(*) FROM conversations").await,
        1,
        "Redis down: the rows stay"
    );
    assert_eq!(env.count("SELECT count(*) FROM erased").await, 0);
}

#[tokio::test]
async fn a_sweep_role_without_delete_sweeps_but_cannot_forget() {
    let env = TestEnv::migrated("forget_grants").await;
    let role = format!("sweep_{}", std::process::id());
    // The schema the tables are in (public, or sweeper's own).
    let schema = sqlx::query_scalar::<_, String>(
        "SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'conversations'",
    )
    .fetch_one(&env.pg)
    .await
    .unwrap();
    for sql in [
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        // Making message_rows' next partitions (as the tables' owner: no CREATE).
        format!("GRANT EXECUTE ON FUNCTION {schema}.sweeper_extend_message_partitions() TO {role}"),
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(&env.pg)
            .await
            .unwrap();
    }
    let as_role = env
        .database_url
        .replacen("postgres@", &format!("{role}@"), 1);
    env.set("granted", &doc(None, &["m1"]), SOON).await;
    let out = env
        .command()
        .args(["run", "--match", &env.pattern(), "--output", "json"])
        .env("DATABASE_URL", &as_role)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["persisted"], 1);
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));

    let out = forget_as(&env, "granted", ("DATABASE_URL", &as_role));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("permission denied") && line.contains("DELETE privilege"),
        "{line}"
    );
    assert!(exists(&env, "granted").await, "nothing deleted in Redis");
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(env.count("SELECT count(*) FROM erased").await, 0);
    let _ = sqlx::query(AssertSqlSafe(format!("DROP OWNED BY {role}")))
        .execute(&env.pg)
        .await;
}

#[tokio::test]
async fn redis_failing_after_postgresql_leaves_nothing_a_sweep_brings_back_and_a_rerun_finishes() {
    let env = TestEnv::migrated("forget_half").await;
    put(&env, ("half-done", "user-h"), 22, &["m1", "m2"], SOON).await;
    assert_eq!(env.run_json(&[])["persisted"], 1);
    // A Redis user that may read but not delete: the forget fails between PostgreSQL and Redis.
    let user = format!("noforget{}", std::process::id());
    let () = env
        .redis_cmd(redis::cmd("ACL").arg(
            &[
                "SETUSER", &user, "on", ">pw", "~*", "&*", "+@all", "-unlink",
            ][..],
        ))
        .await;
    let url = env
        .redis_url
        .replacen("redis://", &format!("redis://{user}:pw@"), 1);
    let out = forget_as(&env, "half-done", ("REDIS_URL", &url));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    error_line(&out);
    assert!(exists(&env, "half-done").await, "the key is still there");
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM erasures WHERE redis_keys IS NULL AND finished_at IS NULL")
            .await,
        1,
        "the receipt says it is not finished"
    );
    // What is left in Redis is never saved again.
    sweep_finds_erased(&env, 1);
    // The same command again finishes the job.
    let r = forget_json(&env, &["--conversation", "half-done"]);
    assert_eq!(
        (r["conversations"].as_u64(), r["redis_keys"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    assert!(!exists(&env, "half-done").await);
    let () = env
        .redis_cmd(redis::cmd("ACL").arg(&["DELUSER", &user][..]))
        .await;
}
