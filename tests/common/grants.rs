//! What `sweeper grants` prints, applied as printed: its Redis ACL rule as a user of the test's
//! own, its PostgreSQL statements by the administrator and the schema's owner, and URLs that
//! connect as those users (tests/grants.rs, tests/privileges.rs, tests/grants_formats.rs).

use sqlx::PgPool;

use super::{TestEnv, stderr};

/// `sweeper grants ARGS` with the test's URLs; its stdout, which must be printed.
pub fn printed(env: &TestEnv, args: &[&str]) -> String {
    let out = env.command().arg("grants").args(args).output().unwrap();
    assert!(out.status.success(), "grants {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The PostgreSQL statements of `printed`: the administrator's, then the schema owner's (with
/// the owner of LangGraph's tables').
pub fn postgres(printed: &str) -> (String, String) {
    let (mut admin, mut owner) = (String::new(), String::new());
    let mut into = None;
    for line in printed.lines() {
        if line.starts_with('#') {
            into = match line {
                l if l.starts_with("# PostgreSQL, as an administrator") => Some(&mut admin),
                l if l.starts_with("# PostgreSQL, as the schema's owner") => Some(&mut owner),
                l if l.starts_with("# PostgreSQL, as the owner of LangGraph's") => Some(&mut owner),
                _ => None,
            };
        } else if let Some(sql) = into.as_deref_mut() {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    (admin, owner)
}

/// Creates the Redis user of the printed rule, named `user`, password `pw`; returns a URL as it.
pub async fn redis_user(env: &TestEnv, printed: &str, user: &str) -> String {
    let rule = printed
        .lines()
        .find(|l| l.starts_with("ACL SETUSER "))
        .unwrap_or_else(|| panic!("no ACL rule in {printed}"));
    let mut cmd = redis::cmd("ACL");
    for (i, word) in rule.split_whitespace().skip(1).enumerate() {
        match (i, word) {
            (1, _) => cmd.arg(user),
            (_, ">PASSWORD") => cmd.arg(">pw"),
            _ => cmd.arg(word),
        };
    }
    let () = env.redis_cmd(&mut cmd).await;
    env.redis_url
        .replacen("redis://", &format!("redis://{user}:pw@"), 1)
}

/// `url` (PostgreSQL) with another user.
pub fn pg_as(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}@{host}")
}

/// Runs `sql` (several statements) on `pg`, which must take it.
pub async fn exec(pg: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pg)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
}

/// Creates the login role `role` (cluster-wide: kept across runs, so made when missing).
pub async fn login_role(pg: &PgPool, role: &str) {
    exec(
        pg,
        &format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ),
    )
    .await;
}
