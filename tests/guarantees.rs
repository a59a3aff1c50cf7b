//! What PostgreSQL holds after sweeps: unchanged writes nothing, newest wins, every message once.

mod common;

use common::*;
use serde_json::json;
use sweeper::checkpoint::{decode, decode_packed};
use sweeper::store::{Batch, Store};

async fn conversation(env: &TestEnv, id: &str) -> (serde_json::Value, i32, String) {
    sqlx::query_as("SELECT checkpoint, message_count, last_persisted_at::text FROM conversations WHERE conversation_id = $1")
        .bind(id)
        .fetch_one(&env.pg)
        .await
        .unwrap()
}

async fn message_keys(env: &TestEnv, id: &str) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT seq, message_key FROM messages WHERE conversation_id = $1 ORDER BY seq")
        .bind(id)
        .fetch_all(&env.pg)
        .await
        .unwrap()
}

#[tokio::test]
async fn re_sweeping_an_unchanged_checkpoint_writes_nothing() {
    let env = TestEnv::migrated("unchanged").await;
    env.set(
        "c",
        &doc(Some("2026-11-22T10:07:31Z"), &["m1", "m2", "m3"]),
        SOON,
    )
    .await;
    let first = env.run_json(&[]);
    assert_eq!(
        (first["persisted"].as_u64(), first["unchanged"].as_u64()),
        (Some(1), Some(0))
    );
    let before = conversation(&env, "c").await;
    let xmin_before: String =
        sqlx::query_scalar("SELECT xmin::text FROM conversations WHERE conversation_id = 'c'")
            .fetch_one(&env.pg)
            .await
            .unwrap();

    let second = env.run_json(&[]);
    assert_eq!(second["persisted"], 0);
    assert_eq!(second["unchanged"], 1);
    assert_eq!(second["messages_added"], 0);
    // One batch, all unchanged: its lookup alone (BEGIN, the ids, the hashes, COMMIT), nothing
    // written.
    assert_eq!(second["pg_statements"], 4, "{second}");
    assert_eq!(conversation(&env, "c").await, before);
    let xmin_after: String =
        sqlx::query_scalar("SELECT xmin::text FROM conversations WHERE conversation_id = 'c'")
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert_eq!(xmin_before, xmin_after, "the row was rewritten");
    assert_eq!(message_keys(&env, "c").await.len(), 3);
}

#[tokio::test]
async fn the_newest_checkpoint_wins_and_an_older_one_never_overwrites_it() {
    let env = TestEnv::migrated("newest").await;
    let newer = doc(Some("2026-11-22T10:10:00Z"), &["m1", "m2"]);
    env.set("c", &newer, SOON).await;
    env.run_json(&[]);

    // An older checkpoint (earlier updated_at, longer list) arrives: the row keeps the newer one,
    // but its message nobody stored yet is added.
    let older = doc(Some("2026-11-22T10:05:00Z"), &["m1", "m2", "m0"]);
    env.set("c", &older, SOON).await;
    let s = env.run_json(&[]);
    assert_eq!(s["messages_added"], 1);
    let (stored, count, _) = conversation(&env, "c").await;
    assert_eq!(stored, newer);
    assert_eq!(count, 3);

    // Without updated_at a document is older than any that has one.
    env.set("c", &doc(None, &["m1", "m2", "m3", "m4"]), SOON)
        .await;
    env.run_json(&[]);
    assert_eq!(conversation(&env, "c").await.0, newer);

    // Same updated_at: the longer message list wins.
    let longer = doc(Some("2026-11-22T10:10:00Z"), &["m1", "m2", "m5"]);
    env.set("c", &longer, SOON).await;
    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], 1);
    assert_eq!(conversation(&env, "c").await.0, longer);

    // A later updated_at wins even with fewer messages.
    let latest = doc(Some("2026-11-22T11:00:00Z"), &["m9"]);
    env.set("c", &latest, SOON).await;
    env.run_json(&[]);
    let (stored, count, _) = conversation(&env, "c").await;
    assert_eq!(stored, latest);
    // m0..m5 and m9, each once.
    assert_eq!(count, 7);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 7);
    let updated: String = sqlx::query_scalar("SELECT updated_at::text FROM conversations")
        .fetch_one(&env.pg)
        .await
        .unwrap();
    assert_eq!(updated, "2026-11-22 11:00:00+00");
}

#[tokio::test]
async fn a_conversation_restarted_after_expiry_keeps_its_old_messages() {
    let env = TestEnv::migrated("restart").await;
    env.set(
        "c",
        &doc(Some("2026-11-22T10:10:00Z"), &["m1", "m2", "m3"]),
        SOON,
    )
    .await;
    env.run_json(&[]);
    // The key expired; the user came back; the chat service starts over with only the new turns.
    let () = env.redis_cmd(redis::cmd("DEL").arg(env.key("c"))).await;
    let restarted = doc(Some("2026-11-23T09:00:00Z"), &["m4", "m5"]);
    env.set("c", &restarted, SOON).await;
    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], 1);
    assert_eq!(s["messages_added"], 2);

    let (stored, count, _) = conversation(&env, "c").await;
    assert_eq!(stored, restarted);
    assert_eq!(count, 5);
    let keys = message_keys(&env, "c").await;
    assert_eq!(
        keys,
        vec![
            (0, "id:m1".to_string()),
            (1, "id:m2".into()),
            (2, "id:m3".into()),
            (3, "id:m4".into()),
            (4, "id:m5".into())
        ]
    );
}

#[tokio::test]
async fn messages_without_ids_are_stored_once_across_sweeps() {
    let env = TestEnv::migrated("idless").await;
    let turn = |role: &str, content: &str| json!({"role": role, "content": content});
    let v1 = json!({"messages": [turn("user", "hi"), turn("assistant", "ok"), turn("user", "ok")]});
    env.set("c", &v1, SOON).await;
    env.run_json(&[]);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 3);

    let v2 = json!({"messages": [turn("user", "hi"), turn("assistant", "ok"), turn("user", "ok"),
                                  turn("assistant", "ok"), turn("user", "bye")]});
    env.set("c", &v2, SOON).await;
    let s = env.run_json(&[]);
    assert_eq!(s["messages_added"], 2);
    let rows: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT seq, role, content FROM messages ORDER BY seq")
            .fetch_all(&env.pg)
            .await
            .unwrap();
    let got: Vec<(i32, &str, &str)> = rows
        .iter()
        .map(|(s, r, c)| (*s, r.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, "user", "hi"),
            (1, "assistant", "ok"),
            (2, "user", "ok"),
            (3, "assistant", "ok"),
            (4, "user", "bye")
        ]
    );
    let (_, count, _) = conversation(&env, "c").await;
    assert_eq!(count, 5);
}

/// The library's store on the test's database, in the default schema.
async fn store(env: &TestEnv) -> Store {
    Store::connect(
        &env.database_url,
        &Default::default(),
        sweeper::config::Timeouts::default(),
        1,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_holding_one_conversation_twice_neither_fails_nor_double_counts() {
    let env = TestEnv::migrated("dupbatch").await;
    let store = store(&env).await;
    let old = doc(Some("2026-11-22T10:00:00Z"), &["m1"]).to_string();
    let new = doc(Some("2026-11-22T10:05:00Z"), &["m1", "m2"]).to_string();
    let mut batch = Batch {
        checkpoints: vec![
            decode("checkpoint:c", "c", new.as_bytes()).unwrap(),
            decode("checkpoint:c", "c", old.as_bytes()).unwrap(),
            decode("checkpoint:c", "c", new.as_bytes()).unwrap(),
        ],
        ..Batch::default()
    };
    let out = store.write_batch(None, &mut batch).await.unwrap();
    // One row, the newest, its messages once; the two other reads of the key (SCAN may return
    // a key twice) count as unchanged, so each key read is accounted for once.
    assert_eq!(out.persisted, 1);
    assert_eq!(out.unchanged, 2);
    assert_eq!(out.messages_added, 2);
    let (stored, count, _) = conversation(&env, "c").await;
    assert_eq!(stored.to_string(), new);
    assert_eq!(count, 2);
    // Written again, the same batch changes nothing.
    let again = store.write_batch(None, &mut batch).await.unwrap();
    assert_eq!(
        (again.persisted, again.unchanged, again.messages_added),
        (0, 3, 0)
    );
}

/// A sweep reads checkpoints packed (messages counted, not built) and the store builds messages
/// only for what it writes: a copy stored as it is beside a changed one of the same
/// conversation, and an unchanged conversation beside a new one, lose nothing.
#[tokio::test]
async fn packed_checkpoints_build_messages_only_where_they_are_written() {
    let env = TestEnv::migrated("packed").await;
    let store = store(&env).await;
    let old = doc(Some("2026-11-22T10:00:00Z"), &["m1"]).to_string();
    let new = doc(Some("2026-11-22T10:05:00Z"), &["m1", "m2", "m3"]).to_string();
    let packed =
        |id: &str, d: &str| decode_packed(&format!("checkpoint:{id}"), id, d.as_bytes()).unwrap();
    let mut first = Batch {
        checkpoints: vec![packed("c", &old), packed("u", &old)],
        ..Batch::default()
    };
    let out = store.write_batch(None, &mut first).await.unwrap();
    assert_eq!((out.persisted, out.messages_added), (2, 2));

    let mut batch = Batch {
        checkpoints: vec![
            packed("c", &old),
            packed("c", &new),
            packed("u", &old),
            packed("n", &new),
        ],
        ..Batch::default()
    };
    let out = store.write_batch(None, &mut batch).await.unwrap();
    assert_eq!(
        (out.persisted, out.unchanged, out.messages_added),
        (2, 2, 5),
        "c changed (m2, m3 added; its older read counted unchanged), u unchanged, n new (3 messages)"
    );
    let packed_left: Vec<_> = batch
        .checkpoints
        .iter()
        .map(|c| (c.conversation_id.as_str(), c.packed.is_some()))
        .collect();
    assert_eq!(
        packed_left,
        [("c", true), ("c", false), ("u", true), ("n", false)]
    );
    for (id, want) in [("c", &new), ("u", &old), ("n", &new)] {
        let (stored, count, _) = conversation(&env, id).await;
        assert_eq!(&stored.to_string(), want, "{id}");
        assert_eq!(
            count as usize,
            decode("k", id, want.as_bytes()).unwrap().messages.len(),
            "{id}"
        );
    }
}

#[tokio::test]
async fn tiny_pages_and_batches_save_every_key_once() {
    let env = TestEnv::migrated("rescan").await;
    for i in 0..300 {
        env.set(&format!("c{i:03}"), &doc(None, &["a"]), SOON).await;
    }
    let s = env.run_json(&["--scan-count", "3", "--batch-size", "7"]);
    let due = s["due"].as_u64().unwrap();
    assert_eq!(due, 300);
    assert_eq!(
        s["persisted"].as_u64().unwrap() + s["unchanged"].as_u64().unwrap(),
        due
    );
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 300);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 300);
}

/// Each message's text is stored once, in its conversation's document where that holds it: when
/// a newer document no longer holds it there (a conversation started again, a window of recent
/// messages, an edit), the message keeps the text it was first saved with.
#[tokio::test]
async fn a_message_keeps_its_text_when_the_document_no_longer_holds_it() {
    let env = TestEnv::migrated("textonce").await;
    let texts = |env: &TestEnv| {
        let pg = env.pg.clone();
        async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT message_key, content FROM messages ORDER BY seq")
                    .fetch_all(&pg)
                    .await
                    .unwrap();
            rows
        }
    };
    let want = |ids: &[&str]| -> Vec<(String, String)> {
        ids.iter()
            .map(|i| (format!("id:{i}"), format!("text of {i}")))
            .collect()
    };
    env.set(
        "c",
        &doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2", "m3"]),
        SOON,
    )
    .await;
    env.run_json(&[]);
    assert_eq!(texts(&env).await, want(&["m1", "m2", "m3"]));
    let in_document: i64 = env
        .count("SELECT count(*) FROM message_rows WHERE content IS NULL")
        .await;
    assert_eq!(in_document, 3, "stored once: in the document");

    // The user came back: the added message's text is in the newer document alone too.
    env.set(
        "c",
        &doc(Some("2026-11-22T10:30:00Z"), &["m1", "m2", "m3", "m4"]),
        SOON,
    )
    .await;
    env.run_json(&[]);
    assert_eq!(texts(&env).await, want(&["m1", "m2", "m3", "m4"]));
    let in_document: i64 = env
        .count("SELECT count(*) FROM message_rows WHERE content IS NULL")
        .await;
    assert_eq!(in_document, 4, "the added message too");

    // A window of the recent messages: m1 drops out, every position shifts.
    env.set(
        "c",
        &doc(Some("2026-11-22T11:00:00Z"), &["m2", "m3", "m4"]),
        SOON,
    )
    .await;
    env.run_json(&[]);
    assert_eq!(texts(&env).await, want(&["m1", "m2", "m3", "m4"]));
    // Edited: the message keeps the text it was first saved with, as before.
    let mut edited = doc(Some("2026-11-22T12:00:00Z"), &["m2", "m3", "m4"]);
    edited["messages"][0]["content"] = json!("edited");
    env.set("c", &edited, SOON).await;
    env.run_json(&[]);
    assert_eq!(texts(&env).await, want(&["m1", "m2", "m3", "m4"]));
    // Started again after expiry, with only the new turns.
    env.set("c", &doc(Some("2026-11-23T09:00:00Z"), &["m5"]), SOON)
        .await;
    env.run_json(&[]);
    assert_eq!(texts(&env).await, want(&["m1", "m2", "m3", "m4", "m5"]));
}

/// Conversations are keyed by an integer id drawn from a sequence; one drawn that another
/// conversation already holds (the sequence behind the stored ids, as after a partial restore of
/// a dump) would merge two conversations into one row. The batch fails instead, nothing written,
/// with one line saying how to move the sequence on; once moved, the sweep saves it.
#[tokio::test]
async fn an_id_sequence_behind_the_stored_ids_merges_nothing_and_says_how_to_fix_it() {
    let env = TestEnv::migrated("id_clash").await;
    env.set(
        "first",
        &json!({"messages": [{"id": "m1", "role": "user", "content": "hi"}]}),
        SOON,
    )
    .await;
    assert_eq!(env.run_json(&[])["persisted"], 1);
    sqlx::query("SELECT setval('conversations_id_seq', 1, false)")
        .execute(&env.pg)
        .await
        .unwrap();
    env.set(
        "second",
        &json!({"messages": [{"id": "m9", "role": "user", "content": "yo"}]}),
        SOON,
    )
    .await;
    let out = env.sweeper(&["run", "--output", "json"]);
    common::runs::assert_exit(&out, 4);
    let err = stderr(&out);
    assert!(
        err.contains("conversations_id_seq is behind the stored ids") && err.contains("setval"),
        "{err}"
    );
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM messages WHERE conversation_id = 'first'")
            .await,
        1
    );
    sqlx::query("SELECT setval('conversations_id_seq', (SELECT max(id) FROM conversation_ids))")
        .execute(&env.pg)
        .await
        .unwrap();
    // (The failed run protected the key: its TTL raised past the threshold.)
    assert_eq!(
        env.run_json(&["--threshold", "1h", "--protect-ttl", "2h"])["persisted"],
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 2);
}
