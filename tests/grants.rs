//! `sweeper grants`: each command run as a Redis user allowed exactly the rule it prints, for
//! each native layout, `--save-idle`, `inspect` and `restore`; and docs/deploying.md shows its
//! output.

mod common;

use common::grants::{printed, redis_user};
use common::layouts::{Kind, write};
use common::*;

/// `sweeper ARGS` as the Redis user at `url`; must succeed, with no permission refused.
fn as_user(env: &TestEnv, url: &str, args: &[&str]) -> String {
    let out = env
        .command()
        .env("REDIS_URL", url)
        .args(args)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{args:?}: {err}");
    assert!(
        !err.contains("NOPERM"),
        "{args:?} was refused a command: {err}"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn each_layout_sweeps_inspects_and_restores_with_exactly_its_printed_rule() {
    let env = TestEnv::migrated("grants").await;
    let pattern = env.pattern();
    for (i, kind) in [Kind::Json, Kind::Hash, Kind::List].into_iter().enumerate() {
        let format = kind.format();
        let id = format!("c-{format}");
        let d = doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]);
        write(&env, kind, &id, &d, 120_000).await;
        // One key of another type among them: its TYPE is asked, and it is rejected.
        let other = if kind == Kind::Json {
            Kind::List
        } else {
            Kind::Json
        };
        write(&env, other, &format!("x-{format}"), &d, 120_000).await;
        let select = ["--format", format, "--match", &pattern];

        let run = printed(
            &env,
            &[&["run"][..], &select, &["--save-idle", "30m"]].concat(),
        );
        let user = format!("g-run-{i}-{}", std::process::id());
        let url = redis_user(&env, &run, &user).await;
        // A key without TTL: --save-idle asks how long it sat idle.
        env.set_raw("no-ttl", "{}", None).await;
        let summary = as_user(
            &env,
            &url,
            &[
                &["run", "--output", "json", "--save-idle", "30m"][..],
                &select,
            ]
            .concat(),
        );
        let s: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
        assert_eq!(s["status"], "ok", "{format}: {s}");
        assert!(s["persisted"].as_u64() >= Some(1), "{format}: {s}");
        assert!(s["rejected"].as_u64() >= Some(1), "{format}: {s}");

        let inspect = printed(&env, &[&["inspect"][..], &select].concat());
        let url = redis_user(
            &env,
            &inspect,
            &format!("g-inspect-{i}-{}", std::process::id()),
        )
        .await;
        as_user(
            &env,
            &url,
            &[&["inspect", "--samples", "5"][..], &select].concat(),
        );

        let restore = printed(&env, &[&["restore"][..], &select].concat());
        let url = redis_user(
            &env,
            &restore,
            &format!("g-restore-{i}-{}", std::process::id()),
        )
        .await;
        let () = env.redis_cmd(redis::cmd("DEL").arg(env.key(&id))).await;
        as_user(
            &env,
            &url,
            &["restore", "--conversation", &id, "--format", format],
        );
        let back: i64 = env.redis_cmd(redis::cmd("EXISTS").arg(env.key(&id))).await;
        assert_eq!(back, 1, "{format}: restored");
        let () = env
            .redis_cmd(redis::cmd("DEL").arg(env.key("no-ttl")))
            .await;
    }
    // A rule short of one read the layout needs is refused, not passed off as bad keys.
    let short =
        printed(&env, &["run", "--format", "hash", "--match", &pattern]).replace(" +hgetall", "");
    let url = redis_user(&env, &short, &format!("g-short-{}", std::process::id())).await;
    write(&env, Kind::Hash, "h-short", &doc(None, &["a"]), 120_000).await;
    let out = env
        .command()
        .env("REDIS_URL", &url)
        .args(["run", "--format", "hash", "--match", &pattern])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// docs/deploying.md gives the PostgreSQL statements as `sweeper grants` prints them.
#[test]
fn the_docs_show_what_grants_prints() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploying.md")).unwrap();
    for command in ["migrate", "run", "restore"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sweeper"))
            .args(["grants", command])
            .env("DATABASE_URL", "postgres://sweeper@db/chat")
            .env_remove("SWEEPER_SCHEMA")
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let sql: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# PostgreSQL"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            page.contains(&format!("$ sweeper grants {command}\n")) && page.contains(&sql),
            "docs/deploying.md does not show `sweeper grants {command}`'s PostgreSQL part:\n{sql}"
        );
    }
}
