//! `sweeper forget` in the layouts conversations are kept in: a LangChain list
//! (RedisChatMessageHistory, newest first), RedisVL's one hash per message; each forgotten
//! conversation's keys deleted, its rows gone, and a late write by the library never saved.

mod common;

use common::*;
use serde_json::{Value, json};

/// `sweeper ARGS... --output json`, which must succeed.
fn json_of(env: &TestEnv, args: &[&str]) -> Value {
    let out = env
        .command()
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// LPUSHes LangChain messages (as `RedisChatMessageHistory.add_message` writes them) to `key`.
async fn langchain_push(env: &TestEnv, key: &str, texts: &[&str]) {
    for (i, text) in texts.iter().enumerate() {
        let kind = if i % 2 == 0 { "human" } else { "ai" };
        let m = json!({"type": kind, "data": {"content": text, "additional_kwargs": {},
                       "response_metadata": {}, "type": kind, "name": null, "id": null}});
        let () = env
            .redis_cmd(redis::cmd("LPUSH").arg(key).arg(m.to_string()))
            .await;
    }
    let () = env
        .redis_cmd(redis::cmd("PEXPIRE").arg(key).arg(SOON.unwrap()))
        .await;
}

#[tokio::test]
async fn a_langchain_list_is_forgotten_and_a_late_push_is_not_saved() {
    let env = TestEnv::migrated("forget_langchain").await;
    let tag = format!("fl{}", std::process::id());
    let (gone, kept) = (format!("{tag}-gone"), format!("{tag}-kept"));
    let pattern = format!("message_store:{tag}-*");
    let layout = ["--format", "langchain", "--match", pattern.as_str()];
    langchain_push(
        &env,
        &format!("message_store:{gone}"),
        &["hi", "hello", "bye"],
    )
    .await;
    langchain_push(&env, &format!("message_store:{kept}"), &["hey"]).await;
    let s = json_of(&env, &[&["run"][..], &layout].concat());
    assert_eq!(s["persisted"], 2, "{s}");

    let r = json_of(
        &env,
        &[&["forget", "--conversation", &gone][..], &layout].concat(),
    );
    assert_eq!(
        (
            r["conversations"].as_u64(),
            r["messages"].as_u64(),
            r["redis_keys"].as_u64()
        ),
        (Some(1), Some(3), Some(1)),
        "{r}"
    );
    let left: Vec<String> = env.redis_cmd(redis::cmd("KEYS").arg(&pattern)).await;
    assert_eq!(left, [format!("message_store:{kept}")]);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 1);

    // The app's history object outlived the erasure and adds a message.
    langchain_push(&env, &format!("message_store:{gone}"), &["still there?"]).await;
    let s = json_of(&env, &[&["run"][..], &layout].concat());
    assert_eq!(
        (s["erased"].as_u64(), s["persisted"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 1);
}

/// HSETs one RedisVL message (as `MessageHistory.add_message` writes it) under `name`.
async fn redisvl_message(env: &TestEnv, name: &str, session: &str, n: u32, text: &str) -> String {
    let ts = format!("1796058976.{n}");
    let key = format!("{name}:{session}:{ts}:ab12cd3{n}");
    let entry = format!("{session}:{ts}:ab12cd3{n}");
    let role = if n.is_multiple_of(2) { "user" } else { "llm" };
    let () = env
        .redis_cmd(
            redis::cmd("HSET")
                .arg(&key)
                .arg(&["entry_id", &entry, "role", role, "content", text][..])
                .arg(&["session_tag", session, "timestamp", &ts][..]),
        )
        .await;
    let () = env
        .redis_cmd(redis::cmd("PEXPIRE").arg(&key).arg(SOON.unwrap()))
        .await;
    key
}

#[tokio::test]
async fn one_key_per_message_is_forgotten_key_by_key() {
    let env = TestEnv::migrated("forget_redisvl").await;
    let name = format!("fl{}hist", std::process::id());
    let pattern = format!("{name}:*");
    let layout = ["--format", "redisvl", "--match", pattern.as_str()];
    for (n, text) in ["hi", "hello", "how are you"].iter().enumerate() {
        redisvl_message(&env, &name, "s-gone", n as u32, text).await;
    }
    let kept = redisvl_message(&env, &name, "s-kept", 0, "hey").await;
    let s = json_of(&env, &[&["run"][..], &layout].concat());
    assert_eq!(s["messages_added"], 4, "{s}");

    let r = json_of(
        &env,
        &[&["forget", "--conversation", "s-gone"][..], &layout].concat(),
    );
    assert_eq!(
        (
            r["conversations"].as_u64(),
            r["messages"].as_u64(),
            r["redis_keys"].as_u64()
        ),
        (Some(1), Some(3), Some(3)),
        "{r}"
    );
    let left: Vec<String> = env.redis_cmd(redis::cmd("KEYS").arg(&pattern)).await;
    assert_eq!(left, [kept]);
    assert_eq!(
        env.count("SELECT count(*) FROM messages WHERE conversation_id = 's-gone'")
            .await,
        0
    );

    // A late message of the forgotten session: never saved.
    redisvl_message(&env, &name, "s-gone", 7, "anyone?").await;
    let s = json_of(&env, &[&["run"][..], &layout].concat());
    assert!(s["erased"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["messages_added"], 0, "{s}");
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE conversation_id = 's-gone'")
            .await,
        0
    );
}

#[tokio::test]
async fn on_a_cluster_each_key_is_forgotten_on_its_node() {
    let cluster = common::servers::PrivateCluster::start(3);
    let env = TestEnv::with_cluster("forget_cluster", &cluster).await;
    let ids: Vec<String> = (0..60).map(|i| format!("k{i:02}")).collect();
    seed_cluster(&cluster, &env, &ids[..30], SOON.unwrap()).await;
    seed_cluster(&cluster, &env, &ids[30..], FAR.unwrap()).await;
    let cluster_env = |cmd: &mut std::process::Command| {
        cmd.env("SWEEPER_REDIS_CLUSTER", "true");
    };
    let mut cmd = env.command();
    cluster_env(&mut cmd);
    let out = cmd
        .args(["run", "--output", "json", "--match", &env.pattern()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Every conversation is user u-1's (common::doc): half saved, half only on the nodes.
    let mut cmd = env.command();
    cluster_env(&mut cmd);
    let out = cmd
        .args([
            "forget",
            "--user",
            "u-1",
            "--match",
            &env.pattern(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["conversations"].as_u64(), r["redis_keys"].as_u64()),
        (Some(60), Some(60)),
        "{r}"
    );
    let owner = slot_owners(&cluster).await;
    for id in &ids {
        let key = env.key(id);
        let port = owner[sweeper::shard::key_slot(key.as_bytes()) as usize];
        let n: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut node_conn(port).await)
            .await
            .unwrap();
        assert_eq!(n, 0, "{key} on :{port}");
    }
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 0);
}
