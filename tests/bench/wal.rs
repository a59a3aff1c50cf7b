//! WAL and storage measured on PostgreSQL, for the benches (`live.rs`, `sweep.rs --storage`): WAL
//! positions, WAL bytes by relation (pg_walinspect, which the admin database must have), and the
//! size of the sweeper's tables.

#![allow(dead_code)] // each bench uses its subset

use std::collections::HashMap;

use sqlx::PgPool;

pub async fn lsn(admin: &PgPool) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(admin)
        .await
        .unwrap()
}

/// WAL bytes from `from` to `to`.
pub async fn wal_bytes(admin: &PgPool, from: &str, to: &str) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff($2::pg_lsn, $1::pg_lsn)::int8")
        .bind(from)
        .bind(to)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// A relation's name in `db` by its file node; a TOAST table or index is named by the table it
/// belongs to.
async fn relation_names(db: &PgPool) -> HashMap<i64, String> {
    sqlx::query_as::<_, (i64, String)>(
        "SELECT c.relfilenode::int8, \
                coalesce((SELECT o.relname || ' (TOAST)' FROM pg_class o \
                          WHERE o.reltoastrelid IN (c.oid, (SELECT i.indrelid FROM pg_index i \
                                                             WHERE i.indexrelid = c.oid))), \
                         c.relname)::text \
         FROM pg_class c",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// WAL bytes between two positions by the relation each record touches first.
pub async fn wal_by_table(admin: &PgPool, db: &PgPool, from: &str, to: &str) -> Vec<(String, i64)> {
    let by_node: Vec<(Option<i64>, i64)> = sqlx::query_as(
        "SELECT (regexp_match(block_ref, 'rel \\d+/\\d+/(\\d+)'))[1]::int8, sum(record_length)::int8 \
         FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn) GROUP BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(admin)
    .await
    .unwrap();
    let names = relation_names(db).await;
    let mut out: HashMap<String, i64> = HashMap::new();
    for (node, bytes) in by_node {
        let name = match node {
            None => "(no relation: commits, ...)".to_string(),
            Some(n) => names.get(&n).cloned().unwrap_or_else(|| "(other)".into()),
        };
        *out.entry(name).or_default() += bytes;
    }
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort_by_key(|(_, b)| -b);
    v
}

/// Bytes on disk of each relation of the sweeper's schema (tables, their indexes, TOAST tables
/// and their indexes), largest first.
pub async fn sizes(db: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT CASE WHEN n.nspname = 'pg_toast' \
                     THEN coalesce((SELECT o.relname || ' (TOAST)' FROM pg_class o \
                                    WHERE o.reltoastrelid IN (c.oid, (SELECT i.indrelid FROM pg_index i \
                                                                       WHERE i.indexrelid = c.oid))), \
                                   c.relname) \
                     ELSE c.relname END::text, \
                sum(pg_relation_size(c.oid))::int8 \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'i', 't') \
           AND (n.nspname = 'sweeper' OR (n.nspname = 'pg_toast' AND EXISTS ( \
                SELECT 1 FROM pg_class o JOIN pg_namespace p ON p.oid = o.relnamespace \
                WHERE p.nspname = 'sweeper' AND o.reltoastrelid IN (c.oid, (SELECT i.indrelid FROM pg_index i \
                                                                            WHERE i.indexrelid = c.oid))))) \
         GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(db)
    .await
    .unwrap()
}
