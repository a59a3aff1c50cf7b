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

/// The last migration before sweeper's tables had a schema of their own.
const BEFORE_OWN_SCHEMA: i64 = 20261203000001;

/// Every row of `schema.table`, as text, sorted.
async fn table_rows(pg: &PgPool, schema: &str, table: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(array_agg(t::text ORDER BY t::text), '{{}}') FROM {schema}.{table} t"
    )))
    .fetch_one(pg)
    .await
    .unwrap()
}

/// The columns of `schema.table`, as a SELECT lists them.
async fn columns(pg: &PgPool, schema: &str, table: &str) -> String {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(attname) FROM pg_attribute \
         WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass AND attnum > 0 \
         AND NOT attisdropped ORDER BY attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pg)
    .await
    .unwrap();
    names.join(", ")
}

/// The rows of `schema.table` with `columns` only, sorted (as [`table_rows`] gives them whole).
async fn rows_of(pg: &PgPool, schema: &str, table: &str, columns: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(array_agg(r::text ORDER BY r::text), '{{}}') FROM (SELECT {columns} FROM {schema}.{table}) r"
    )))
    .fetch_one(pg)
    .await
    .unwrap()
}

/// The relations and functions named in `schema`, sorted.
async fn objects_in(pg: &PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relnamespace = $1::regnamespace
         UNION ALL SELECT proname::text || '()' FROM pg_proc WHERE pronamespace = $1::regnamespace
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pg)
    .await
    .unwrap()
}

/// A chat service's database as it is before sweeper: its own `conversations` and `messages`,
/// and its own sqlx migrations table. Returns each table's rows.
async fn chat_service_tables(pg: &PgPool) -> Vec<Vec<String>> {
    sqlx::raw_sql(
        "CREATE TABLE conversations (id serial PRIMARY KEY, title text NOT NULL);
         CREATE TABLE messages (id serial PRIMARY KEY, conversation_id int REFERENCES conversations, body text);
         CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL,
             installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL,
             checksum bytea NOT NULL, execution_time bigint NOT NULL);
         INSERT INTO conversations (title) VALUES ('support'), ('sales');
         INSERT INTO messages (conversation_id, body) VALUES (1, 'hi'), (2, 'hello');
         INSERT INTO _sqlx_migrations VALUES (20240101000000, 'chat', now(), true, '\\x00', 1)",
    )
    .execute(pg)
    .await
    .unwrap();
    let mut all = Vec::new();
    for t in ["conversations", "messages", "_sqlx_migrations"] {
        all.push(table_rows(pg, "public", t).await);
    }
    all
}

/// `migrate` in the chat service's own database: sweeper's tables go to their schema (`--schema`
/// or SWEEPER_SCHEMA), the service's tables and its sqlx migrations stay as they were, and sweeps
/// write to sweeper's.
#[tokio::test]
async fn migrate_beside_a_chat_services_own_conversations_and_messages() {
    let env = TestEnv::new("schema_beside").await;
    // The service's connection: the default search_path.
    let app = PgPool::connect(&env.database_url).await.unwrap();
    let before = chat_service_tables(&app).await;
    for _ in 0..2 {
        let out = env.sweeper(&["migrate"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    env.set("a", &doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]), SOON)
        .await;
    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], 1, "{s}");
    assert_eq!(env.count("SELECT count(*) FROM sweeper.messages").await, 2);
    let status = env.sweeper(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let mut after = Vec::new();
    for t in ["conversations", "messages", "_sqlx_migrations"] {
        after.push(table_rows(&app, "public", t).await);
    }
    assert_eq!(after, before, "the chat service's tables changed");
    assert_eq!(
        objects_in(&app, "public").await,
        [
            "_sqlx_migrations",
            "_sqlx_migrations_pkey",
            "conversations",
            "conversations_id_seq",
            "conversations_pkey",
            "messages",
            "messages_id_seq",
            "messages_pkey"
        ]
    );

    // Another schema, by its environment twin: a database of its own, as far as sweeper sees.
    let other = env
        .command()
        .env("SWEEPER_SCHEMA", "chat_archive")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", stderr(&other));
    let status = env
        .command()
        .args(["status", "--schema", "chat_archive", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        status.status.code(),
        Some(1),
        "no run yet: {}",
        stderr(&status)
    );
    assert_eq!(
        objects_in(&app, "chat_archive").await,
        objects_in(&app, "sweeper").await
    );
    let bad = env.sweeper(&["status", "--schema", "Bad-Name"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

/// An install migrated before the schema of its own: a sweep refuses it until `migrate` moves
/// every table, view, function and sequence to the schema, each row as it was, LangGraph's
/// tables left where LangGraph reads them; sweeps go on from the same ids.
#[tokio::test]
async fn an_install_in_public_moves_to_its_schema_without_losing_a_row() {
    let env = TestEnv::new("schema_move").await;
    let plain = PgPool::connect(&env.database_url).await.unwrap();
    migrate_to(&plain, BEFORE_OWN_SCHEMA).await;
    // Rows in every table, as sweeps of that version wrote them (a message's text kept in its
    // row, another in the document only).
    sqlx::raw_sql(
        r#"INSERT INTO sweep_runs (match_pattern, threshold_ms, version, status) VALUES ('checkpoint:*', 600000, 'old', 'ok');
           INSERT INTO conversations (conversation_id, redis_key, checkpoint, checkpoint_messages, message_count, content_hash, last_run_id)
               VALUES ('c1', 'checkpoint:c1', '{"messages": [{"id": "m0", "role": "user", "content": "older"},
                                                 {"id": "m1", "role": "user", "content": "hi"}]}', 2, 2, '\x01', 1);
           INSERT INTO message_rows (conversation, message_key, run_id, seq, message_id, role, content)
               SELECT id, sweeper_message_key('id:m0'), 1, 0, 'm0', 'user', 'older' FROM conversations;
           INSERT INTO message_rows (conversation, message_key, run_id, seq, message_id, role, content)
               SELECT id, sweeper_message_key('id:m1'), 1, 1, 'm1', 'user', NULL FROM conversations;
           INSERT INTO sweep_rejects (redis_key, value_hash, reason, raw, raw_size) VALUES ('checkpoint:bad', '\x02', 'not_json', 'x', 1);
           INSERT INTO sweep_leases (lock_key, name, owner, expires_at) VALUES (1, 'checkpoint:*', 'h 1 2', now());
           CREATE TABLE checkpoint_migrations (v integer PRIMARY KEY);
           INSERT INTO checkpoint_migrations VALUES (0);"#,
    )
    .execute(&plain)
    .await
    .unwrap();
    let tables = [
        "_sqlx_migrations",
        "sweep_runs",
        "conversations",
        "message_rows",
        "messages",
        "sweep_rejects",
        "sweep_leases",
    ];
    let mut before = Vec::new();
    for t in tables {
        let cols = columns(&plain, "public", t).await;
        before.push((table_rows(&plain, "public", t).await, cols));
    }

    let refused = env.sweeper(&["run"]);
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert!(
        error_line(&refused).contains("sweeper migrate"),
        "{}",
        stderr(&refused)
    );
    let out = env.sweeper(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The move, and the migrations written after it.
    let later = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|f| f.as_ref().unwrap().file_name().to_string_lossy()[..14] > *"20261203000001")
        .count();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("({later} migration(s) applied now)")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (t, (rows, cols)) in tables.iter().zip(&before) {
        // The columns the table had: a later migration may add one (sweep_runs.erased).
        let mut moved = rows_of(&plain, "sweeper", t, cols).await;
        if *t == "_sqlx_migrations" {
            moved.truncate(rows.len()); // the move and the migrations after it
        }
        assert_eq!(&moved, rows, "{t}");
    }
    assert_eq!(
        objects_in(&plain, "public").await,
        ["checkpoint_migrations", "checkpoint_migrations_pkey"],
        "left behind"
    );

    // A sweep goes on: a new conversation draws the next id, the stored one takes a new message.
    env.set(
        "c1",
        &doc(Some("2030-01-01T00:00:00Z"), &["m1", "m2"]),
        SOON,
    )
    .await;
    env.set("c2", &doc(None, &["x"]), SOON).await;
    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], 2, "{s}");
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM conversations ORDER BY id")
        .fetch_all(&env.pg)
        .await
        .unwrap();
    assert_eq!(ids, [1, 2]);
    // The trigger keeps a replaced text for whoever updates a conversation, whatever their
    // search_path.
    sqlx::query("UPDATE sweeper.conversations SET checkpoint = '{\"messages\": []}' WHERE id = 1")
        .execute(&plain)
        .await
        .unwrap();
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT content FROM sweeper.messages WHERE conversation_id = 'c1' ORDER BY seq",
    )
    .fetch_all(&plain)
    .await
    .unwrap();
    assert_eq!(texts, ["older", "hi", "text of m2"]);
}

/// The last migration before `message_rows` was cut in partitions.
const BEFORE_PARTITIONS: i64 = 20261206000100;

/// `message_rows` becomes partitioned by conversation id: every row stored before lands in the
/// partition of its id (none in the DEFAULT one), the grants on the table stay, the key to
/// `conversations` holds, and the partitions the next ids need are made.
#[tokio::test]
async fn message_rows_move_into_partitions_without_losing_a_row() {
    let env = TestEnv::new("partitions_migration").await;
    sqlx::raw_sql("CREATE SCHEMA sweeper")
        .execute(&env.pg)
        .await
        .unwrap();
    migrate_to(&env.pg, BEFORE_PARTITIONS).await;
    sqlx::raw_sql(
        r#"INSERT INTO conversations (id, conversation_id, redis_key, checkpoint, checkpoint_messages, message_count, content_hash)
               SELECT i, 'c' || i, 'checkpoint:c' || i, '{"messages": []}', 0, 3, '\x01'
               FROM unnest(ARRAY[1, 20001, 45000]) i;
           INSERT INTO message_rows (conversation, message_key, seq, message_id, role, content)
               SELECT c.id, sweeper_message_key('id:m' || j), j, 'm' || j, 'user', 'text ' || j
               FROM conversations c, generate_series(0, 2) j;
           DO $$ BEGIN CREATE ROLE sweeper_partition_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
           GRANT SELECT, INSERT ON message_rows TO sweeper_partition_reader;"#,
    )
    .execute(&env.pg)
    .await
    .unwrap();
    let cols = columns(&env.pg, "sweeper", "message_rows").await;
    let before = rows_of(&env.pg, "sweeper", "message_rows", &cols).await;
    assert_eq!(before.len(), 9);

    let out = env.sweeper(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        rows_of(&env.pg, "sweeper", "message_rows", &cols).await,
        before
    );
    let placed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, count(*) FROM message_rows GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    let expected = [
        ("message_rows_0", 3),
        ("message_rows_20000", 3),
        ("message_rows_40000", 3),
    ];
    assert_eq!(placed, expected.map(|(p, n)| (p.to_string(), n)).to_vec());
    assert_eq!(
        env.count("SELECT count(*) FROM sweeper_message_partitions() WHERE lo > 45000")
            .await,
        2,
        "two spans made past the newest id"
    );
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 9);
    let privileges: (bool, bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege('sweeper_partition_reader', 'sweeper.message_rows', 'SELECT'),
                has_table_privilege('sweeper_partition_reader', 'sweeper.message_rows', 'INSERT'),
                has_table_privilege('sweeper_partition_reader', 'sweeper.message_rows', 'DELETE')",
    )
    .fetch_one(&env.pg)
    .await
    .unwrap();
    assert_eq!(privileges, (true, true, false));
    // The key to conversations holds: a row of no conversation is refused at commit.
    let orphan = sqlx::raw_sql(
        "BEGIN; INSERT INTO message_rows (conversation, message_key, seq, role) \
         VALUES (7, gen_random_uuid(), 0, 'user'); COMMIT;",
    )
    .execute(&env.pg)
    .await
    .unwrap_err();
    assert!(orphan.to_string().contains("foreign key"), "{orphan}");
}

/// The last migration before `conversations` was cut in partitions.
const BEFORE_CONVERSATION_PARTITIONS: i64 = 20261206000200;

/// `conversations` becomes partitioned by id beside `message_rows`: every row keeps its id and
/// lands in its range's partition, `conversation_ids` holds each id once, the grants and the id
/// sequence carry over, and the next sweep saves a new conversation under a fresh id and a
/// changed one under its own.
#[tokio::test]
async fn conversations_move_into_partitions_and_sweeps_go_on() {
    let env = TestEnv::new("conversation_partitions_migration").await;
    sqlx::raw_sql("CREATE SCHEMA sweeper")
        .execute(&env.pg)
        .await
        .unwrap();
    migrate_to(&env.pg, BEFORE_CONVERSATION_PARTITIONS).await;
    let ids = [1, 20001, 45000];
    for id in ids {
        sqlx::query(
            r#"INSERT INTO conversations (id, conversation_id, redis_key, checkpoint, checkpoint_messages,
                                          message_count, content_hash, updated_at)
               VALUES ($1, $2, $3, '{"messages": []}', 0, 0, '\x01', '2026-12-01T00:00:00Z')"#,
        )
        .bind(id)
        .bind(format!("c{id}"))
        .bind(env.key(&format!("c{id}")))
        .execute(&env.pg)
        .await
        .unwrap();
    }
    sqlx::raw_sql(
        "SELECT setval('conversations_id_seq', 45000);
         DO $$ BEGIN CREATE ROLE sweeper_conversation_writer; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT SELECT, INSERT, UPDATE ON conversations TO sweeper_conversation_writer;
         GRANT USAGE ON SEQUENCE conversations_id_seq TO sweeper_conversation_writer;",
    )
    .execute(&env.pg)
    .await
    .unwrap();
    let cols = columns(&env.pg, "sweeper", "conversations").await;
    let before = rows_of(&env.pg, "sweeper", "conversations", &cols).await;

    let out = env.sweeper(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        rows_of(&env.pg, "sweeper", "conversations", &cols).await,
        before
    );
    let placed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, count(*) FROM conversations GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    let expected = [
        ("conversations_0", 1),
        ("conversations_20000", 1),
        ("conversations_40000", 1),
    ];
    assert_eq!(placed, expected.map(|(p, n)| (p.to_string(), n)).to_vec());
    assert_eq!(
        env.count("SELECT count(*) FROM conversation_ids d JOIN conversations c USING (id, conversation_id)")
            .await,
        3
    );
    let privileges: (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege('sweeper_conversation_writer', 'sweeper.conversations', 'UPDATE'),
                has_table_privilege('sweeper_conversation_writer', 'sweeper.conversation_ids', 'INSERT'),
                has_table_privilege('sweeper_conversation_writer', 'sweeper.conversations', 'DELETE'),
                has_sequence_privilege('sweeper_conversation_writer', 'sweeper.conversations_id_seq', 'USAGE')",
    )
    .fetch_one(&env.pg)
    .await
    .unwrap();
    assert_eq!(privileges, (true, true, false, true));

    // A new conversation and a newer checkpoint of a stored one.
    env.set("fresh", &doc(Some("2026-12-06T09:00:00Z"), &["m1"]), SOON)
        .await;
    env.set(
        "c20001",
        &doc(Some("2026-12-06T10:00:00Z"), &["m1", "m2"]),
        SOON,
    )
    .await;
    let summary = env.run_json(&[]);
    assert_eq!(summary["persisted"], 2, "{summary}");
    let saved: Vec<(String, i64, String, i32)> = sqlx::query_as(
        "SELECT conversation_id, id, tableoid::regclass::text, message_count FROM conversations \
         WHERE conversation_id IN ('fresh', 'c20001') ORDER BY 1",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    assert_eq!(
        saved[0],
        ("c20001".into(), 20001, "conversations_20000".into(), 2)
    );
    assert_eq!(saved[1].0, "fresh");
    assert!(
        saved[1].1 > 45000,
        "a fresh id after the stored ones: {saved:?}"
    );
    assert_eq!(saved[1].2, "conversations_40000");
    assert_eq!(env.count("SELECT count(*) FROM conversation_ids").await, 4);
}
