//! The privileges `sweeper grants` gives each step (docs/deploying.md shows them), run as
//! printed: the administrator's statements, `migrate` as the schema's owner, its grants, then each
//! command as a role with exactly those rights; and what a role without them cannot do.

mod common;

use common::grants::{exec, login_role, pg_as as as_user, postgres, printed};
use common::*;
use sqlx::PgPool;

/// The PostgreSQL statements `sweeper grants COMMAND` prints for the test's database: the
/// administrator's, then the schema owner's.
fn grants(env: &TestEnv, command: &str) -> (String, String) {
    postgres(&printed(env, &[command]))
}

#[tokio::test]
async fn each_step_runs_with_the_documented_privileges_and_no_more() {
    let env = TestEnv::new("privileges").await;
    let steps: Vec<(String, String)> = ["migrate", "run", "restore", "forget"]
        .iter()
        .map(|c| grants(&env, c))
        .collect();
    // The roles, as the administrator creates them (cluster-wide: kept across runs).
    for role in [
        "sweeper_migrate",
        "sweeper_run",
        "sweeper_restore",
        "sweeper_eraser",
    ] {
        login_role(&env.pg, role).await;
    }
    for (admin, _) in &steps {
        exec(&env.pg, admin).await;
    }
    let url = |role: &str| as_user(&env.database_url, role);
    let as_role = |role: &str, args: &[&str]| {
        let mut cmd = env.command();
        cmd.env("DATABASE_URL", url(role)).args(args);
        if args[0] == "run" {
            cmd.args(["--match", &env.pattern(), "--output", "json"]);
        }
        cmd.output().unwrap()
    };

    let out = as_role("sweeper_migrate", &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let owner = PgPool::connect(&url("sweeper_migrate")).await.unwrap();
    for (_, grants) in &steps {
        exec(&owner, grants).await;
    }

    env.set("a", &doc(Some("2026-11-22T10:00:00Z"), &["m1"]), SOON)
        .await;
    let out = as_role("sweeper_run", &["run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A newer document: the update, and the trigger keeping a replaced text.
    env.set("a", &doc(Some("2026-11-22T11:00:00Z"), &["m0", "m1"]), SOON)
        .await;
    let out = as_role("sweeper_run", &["run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["persisted"], 1, "{summary}");
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_leases WHERE expires_at > now()")
            .await,
        0,
        "the lease is released (expired: the sweep's role has no DELETE)"
    );
    for args in [
        &["status"][..],
        &["restore", "--conversation", "a", "--force"],
    ] {
        let out = as_role("sweeper_restore", args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }

    // The sweep's role makes message_rows' partitions (through the function that does it as
    // the owner), and cannot empty or drop one: only the eraser prunes.
    let sweep_role = PgPool::connect(&url("sweeper_run")).await.unwrap();
    let made: i32 = sqlx::query_scalar("SELECT sweeper.sweeper_extend_message_partitions()")
        .fetch_one(&sweep_role)
        .await
        .unwrap();
    assert!(made >= 0, "{made}");
    for sql in [
        "TRUNCATE sweeper.message_rows_0",
        "SELECT * FROM sweeper.sweeper_prune_message_partition(0, now(), 0.1)",
        "SELECT sweeper.sweeper_drop_empty_message_partitions()",
        "SELECT sweeper.sweeper_make_message_partition(-100, 0)",
    ] {
        let e = sqlx::raw_sql(sql).execute(&sweep_role).await.unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{sql}: {e}");
    }

    // And no more: the sweep's role cannot migrate, the reader's cannot sweep.
    let out = as_role("sweeper_run", &["migrate"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    let out = as_role("sweeper_restore", &["run"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 2);

    // Only the eraser deletes: the sweep's role cannot forget, the eraser's can, and prunes.
    let forget = ["forget", "--conversation", "a", "--match", &env.pattern()];
    let out = as_role("sweeper_run", &forget);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(error_line(&out).contains("DELETE"), "{}", stderr(&out));
    let out = as_role("sweeper_eraser", &forget);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 0);
    let out = as_role("sweeper_eraser", &["prune", "--older-than", "365d"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
