//! Migrations that convert stored rows: a database filled under the previous schema reads the same
//! after `sweeper migrate` (every row of `messages` and `conversations`, and what restore puts
//! back), and sweeps go on from there.

mod common;

use std::borrow::Cow;

use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sweeper::checkpoint::decode;

/// The last migration before message text was stored once.
const BEFORE_TEXT_ONCE: i64 = 20261201000001;

/// Applies this crate's migrations up to `last`, as a binary of that time did.
async fn migrate_to(pg: &PgPool, last: i64) {
    let all = sqlx::migrate!();
    let upto = Migrator {
        migrations: Cow::Owned(all.iter().filter(|m| m.version <= last).cloned().collect()),
        ..sqlx::migrate!()
    };
    upto.run(pg).await.unwrap();
}

/// Stores `raw` as the sweep of the previous schema did (insert_messages.sql and
/// upsert_conversations.sql of that time): the checkpoint whole, then each message not stored yet
/// numbered after the stored ones. `element` keeps one key per message.
async fn store_old(env: &TestEnv, id: &str, raw: &str, run: i64, element: bool) {
    let pg = &env.pg;
    let c = decode(&env.key(id), id, raw.as_bytes()).unwrap();
    sqlx::query(
        "INSERT INTO conversations AS c (conversation_id, user_id, redis_key, checkpoint, checkpoint_messages,
                                         message_count, content_hash, started_at, updated_at, last_run_id)
         VALUES ($1, $2, $3, $4::jsonb, $5, 0, $6, $7, $8, $9)
         ON CONFLICT (conversation_id) DO UPDATE SET checkpoint = excluded.checkpoint,
             checkpoint_messages = excluded.checkpoint_messages, content_hash = excluded.content_hash,
             updated_at = excluded.updated_at, last_run_id = excluded.last_run_id",
    )
    .bind(id)
    .bind(&c.user_id)
    .bind(&c.redis_key)
    .bind(raw)
    .bind(c.messages.len() as i32)
    .bind(c.content_hash.to_vec())
    .bind(c.started_at)
    .bind(c.updated_at)
    .bind(run)
    .execute(pg)
    .await
    .unwrap();
    for m in &c.messages {
        let (key, value) = match element {
            true => (
                Some(format!("msg:{id}:{}", m.identity)),
                Some(json!({"text": m.content}).to_string()),
            ),
            false => (None, None),
        };
        sqlx::query(
            "INSERT INTO messages (conversation_id, message_key, seq, message_id, role, content, created_at,
                                   run_id, redis_key, element)
             SELECT $1, $2, coalesce((SELECT max(seq) + 1 FROM messages WHERE conversation_id = $1), 0),
                    $3, $4, $5, $6, $7, $8, $9::jsonb
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&m.identity)
        .bind(&m.id)
        .bind(&m.role)
        .bind(&m.content)
        .bind(m.created_at)
        .bind(run)
        .bind(key)
        .bind(value)
        .execute(pg)
        .await
        .unwrap();
    }
    sqlx::query(
        "UPDATE conversations SET message_count = (SELECT count(*) FROM messages WHERE conversation_id = $1)
         WHERE conversation_id = $1",
    )
    .bind(id)
    .execute(pg)
    .await
    .unwrap();
}

/// Every column of the old `messages` and `conversations`, as text, in a stable order.
async fn rows(pg: &PgPool) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    let text = |sql: &'static str| async move {
        let rows: Vec<(Vec<Option<String>>,)> = sqlx::query_as(sql).fetch_all(pg).await.unwrap();
        rows.into_iter().map(|(r,)| r).collect::<Vec<_>>()
    };
    (
        text(
            "SELECT ARRAY[conversation_id, message_key, seq::text, message_id, role, content,
                          created_at::text, run_id::text, redis_key, element::text]
             FROM messages ORDER BY conversation_id, seq",
        )
        .await,
        text(
            "SELECT ARRAY[conversation_id, user_id, redis_key, checkpoint::text, checkpoint_messages::text,
                          message_count::text, encode(content_hash, 'hex'), started_at::text,
                          updated_at::text, first_persisted_at::text, last_persisted_at::text,
                          last_run_id::text]
             FROM conversations ORDER BY conversation_id",
        )
        .await,
    )
}

/// Row by row, so that a difference names its row.
fn same(after: &[Vec<Option<String>>], before: &[Vec<Option<String>>], what: &str) {
    assert_eq!(after.len(), before.len(), "{what}: rows");
    for (a, b) in after.iter().zip(before) {
        assert_eq!(a, b, "{what}");
    }
}

fn text(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

#[tokio::test]
async fn rows_stored_under_the_previous_schema_read_the_same_after_the_migration() {
    let env = TestEnv::new("migrate_text_once").await;
    migrate_to(&env.pg, BEFORE_TEXT_ONCE).await;
    let run: i64 = sqlx::query_scalar(
        "INSERT INTO sweep_runs (match_pattern, threshold_ms, version) VALUES ('checkpoint:*', 600000, 'old') RETURNING id",
    )
    .fetch_one(&env.pg)
    .await
    .unwrap();

    // Simulated conversations, as the chat service writes them.
    let mut rng = fastrand::Rng::with_seed(7);
    let now = chrono::Utc::now();
    let mut simulated = Vec::new();
    for i in 0..20 {
        let id = format!("sim-{i:02}");
        let d = sweeper::cmd::simulate::conversation(&mut rng, &id, 3 + i % 7, now);
        store_old(&env, &id, &text(&d), run, false).await;
        simulated.push((id, text(&d)));
    }
    // Started again after its key expired: older messages are in no document.
    store_old(
        &env,
        "restarted",
        &text(&doc(Some("2026-11-22T10:00:00Z"), &["a", "b", "c"])),
        run,
        false,
    )
    .await;
    store_old(
        &env,
        "restarted",
        &text(&doc(Some("2026-11-23T10:00:00Z"), &["d", "e"])),
        run,
        false,
    )
    .await;
    // A message edited in a newer checkpoint: its row keeps the text first seen.
    let mut edited = doc(Some("2026-11-22T11:00:00Z"), &["m1", "m2"]);
    store_old(&env, "edited", &text(&edited), run, false).await;
    edited["messages"][0]["content"] = json!("edited");
    edited["updated_at"] = json!("2026-11-22T12:00:00Z");
    store_old(&env, "edited", &text(&edited), run, false).await;
    // Without ids (hashed identities, two identical), a numeric id, escapes and other fields.
    let odd = json!({"updated_at": "2026-11-22T10:00:00Z", "messages": [
        {"role": "user", "content": "ok"}, {"role": "user", "content": "ok"},
        {"id": 12, "role": "assistant", "content": "tab\there \"quoted\" \\ é 🎉", "ts": "2026-11-22T10:00:00.5+01:00", "x": [1]},
        {"role": "user", "content": ""}]});
    store_old(&env, "odd", &text(&odd), run, false).await;
    // One key per message: each message's key and element kept.
    store_old(
        &env,
        "per-message",
        &text(&doc(None, &["p1", "p2"])),
        run,
        true,
    )
    .await;

    let before = rows(&env.pg).await;
    assert_eq!(before.0.len(), 117 + 5 + 2 + 4 + 2, "messages stored");

    let env = env.migrate();
    let after = rows(&env.pg).await;
    same(&after.0, &before.0, "every message reads the same");
    same(&after.1, &before.1, "every conversation reads the same");
    // Text stored once: only where no document holds it at the row's position.
    let kept: Vec<(String, i32)> = sqlx::query_as(
        "SELECT c.conversation_id, m.seq FROM message_rows m JOIN conversations c ON c.id = m.conversation
         WHERE m.content IS NOT NULL ORDER BY 1, 2",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    let kept: Vec<(&str, i32)> = kept.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    assert_eq!(
        kept,
        vec![
            ("edited", 0),
            ("restarted", 0),
            ("restarted", 1),
            ("restarted", 2),
            ("restarted", 3),
            ("restarted", 4)
        ]
    );

    // Restore puts back the same documents.
    for id in ["odd", "edited", "restarted", "sim-05"] {
        let out = env.sweeper(&["restore", "--conversation", id]);
        assert!(out.status.success(), "{}", stderr(&out));
        let restored: String = env.redis_cmd(redis::cmd("GET").arg(env.key(id))).await;
        let () = env.redis_cmd(redis::cmd("DEL").arg(env.key(id))).await;
        let stored = before
            .1
            .iter()
            .find(|r| r[0].as_deref() == Some(id))
            .unwrap();
        assert_eq!(Some(restored), stored[3], "{id}");
    }

    // Sweeps go on: an unchanged checkpoint writes nothing, and a conversation started again
    // keeps its older messages' text though its document no longer holds it.
    let (id, raw) = &simulated[3];
    env.set_raw(id, raw.as_str(), SOON).await;
    env.set("sim-04", &doc(Some("2030-01-01T00:00:00Z"), &["new"]), SOON)
        .await;
    let s = env.run_json(&[]);
    assert_eq!(
        (s["persisted"].as_u64(), s["unchanged"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let old_04: Vec<_> = before
        .0
        .iter()
        .filter(|r| r[0].as_deref() == Some("sim-04"))
        .collect();
    let (now_rows, _) = rows(&env.pg).await;
    let now_04: Vec<_> = now_rows
        .iter()
        .filter(|r| r[0].as_deref() == Some("sim-04"))
        .collect();
    assert_eq!(
        now_04[..old_04.len()],
        old_04[..],
        "older messages keep their text"
    );
    assert_eq!(now_04.len(), old_04.len() + 1);
}

/// A message row must name a stored conversation (checked at commit: the race that draws an id
/// for a conversation another writer created is retried on it), but not a stored run: that
/// check, a trigger per message row, was a sixth of a first sweep's time.
#[tokio::test]
async fn message_rows_reference_their_conversation_and_name_their_run() {
    let env = TestEnv::migrated("msgkeys").await;
    env.seed(1, 300_000).await;
    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], 1, "{s}");
    let id: i64 = sqlx::query_scalar("SELECT id FROM conversations")
        .fetch_one(&env.pg)
        .await
        .unwrap();
    let insert = |conversation: i64, run: i64| {
        let pg = env.pg.clone();
        async move {
            sqlx::query(
                "INSERT INTO message_rows (conversation, message_key, run_id, seq, role, content)
                 VALUES ($1, gen_random_uuid(), $2, 99, 'user', 'x')",
            )
            .bind(conversation)
            .bind(run)
            .execute(&pg)
            .await
        }
    };
    // A run that is not (or no longer) in sweep_runs: accepted.
    insert(id, 987_654).await.unwrap();
    // A conversation that is not stored: refused.
    let e = insert(id + 987_654, 1).await.unwrap_err();
    let code = e.as_database_error().and_then(|d| d.code()).unwrap();
    assert_eq!(code, "23503", "{e}");
}
