//! The binary as operators and orchestrators meet it: migrate, exit codes, one-line errors, the
//! JSON summary, dry runs that change nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

#[tokio::test]
async fn migrate_is_idempotent_and_run_refuses_an_unmigrated_database() {
    let env = TestEnv::new("migrate").await;
    env.set("c1", &doc(None, &["m1"]), SOON).await;

    let out = env.sweeper(&["run"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("sweeper migrate"), "{line}");
    // Until someone migrates, the due key is kept alive (raised to --protect-ttl, 15m).
    let ttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(env.key("c1"))).await;
    assert!(ttl > 14 * 60_000, "protected: {ttl}");

    for _ in 0..2 {
        let out = env.sweeper(&["migrate"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        env.count("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .await,
        migrations
    );
    // Due again (a wider threshold stands in for the five minutes until it is).
    let s = env.run_json(&["--threshold", "20m", "--protect-ttl", "30m"]);
    assert_eq!(s["persisted"], 1);
}

#[tokio::test]
async fn a_sweep_saves_exactly_the_due_keys_and_reports_them() {
    let env = TestEnv::migrated("summary").await;
    for i in 0..25 {
        env.set(
            &format!("due{i}"),
            &doc(Some("2026-11-22T10:00:00Z"), &["a", "b", "c"]),
            SOON,
        )
        .await;
    }
    for i in 0..40 {
        env.set(&format!("active{i}"), &doc(None, &["a"]), FAR)
            .await;
    }
    for i in 0..5 {
        env.set(&format!("forever{i}"), &doc(None, &["a"]), None)
            .await;
    }
    // A key of another pattern, due, must not be touched.
    let () = env
        .redis_cmd(
            redis::cmd("SET")
                .arg(format!(
                    "{}other",
                    env.prefix.replace("checkpoint", "session")
                ))
                .arg("{}")
                .arg("PX")
                .arg(1000),
        )
        .await;

    // Small pages and batches: many SCAN steps and several transactions.
    let s = env.run_json(&["--scan-count", "7", "--batch-size", "4"]);
    assert_eq!(s["dry_run"], false);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["scanned"], 70);
    assert_eq!(s["due"], 25);
    assert_eq!(s["not_due"], 40);
    assert_eq!(s["no_ttl"], 5);
    assert_eq!(s["persisted"], 25);
    assert_eq!(s["unchanged"], 0);
    assert_eq!(s["rejected"], 0);
    assert_eq!(s["expired_before_read"], 0);
    assert_eq!(s["messages_added"], 75);
    assert!(
        s["batches"].as_u64().unwrap() >= 7,
        "25 due in batches of 4: {s}"
    );
    assert!(s["duration_ms"].is_u64());
    let run_id = s["run_id"].as_i64().expect("run_id");

    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 25);
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE conversation_id LIKE 'due%'")
            .await,
        25
    );
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 75);
    let (status, persisted, due): (String, i64, i64) =
        sqlx::query_as("SELECT status, persisted, due FROM sweep_runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert_eq!((status.as_str(), persisted, due), ("ok", 25, 25));
    // The document is stored whole: unknown fields included.
    let channel: String =
        sqlx::query_scalar("SELECT checkpoint->'metadata'->>'channel' FROM conversations LIMIT 1")
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert_eq!(channel, "web");

    // The text summary says the same, for people.
    let out = env.sweeper(&["run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("25 due") && text.contains("25 unchanged"),
        "{text}"
    );
}

#[tokio::test]
async fn a_dry_run_shows_the_due_keys_and_changes_nothing() {
    let env = TestEnv::migrated("dryrun").await;
    env.set("soon", &doc(None, &["a", "b"]), Some(60_000)).await;
    env.set("later", &doc(None, &["a"]), FAR).await;
    env.set_raw("bad", "not json", Some(60_000)).await;
    let before: Vec<(Vec<u8>, i64)> = keys_and_ttls(&env).await;

    // Needs only Redis: no database URL at all.
    let out = env
        .command()
        .env_remove("DATABASE_URL")
        .args([
            "run",
            "--dry-run",
            "--output",
            "json",
            "--match",
            &env.pattern(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["dry_run"], true);
    assert!(s.get("run_id").is_none());
    assert_eq!(s["due"], 2);
    assert_eq!(s["rejected"], 1);
    assert_eq!(s["persisted"], 0);
    let due = s["due_keys"].as_array().unwrap();
    assert_eq!(due.len(), 2);
    let soon = due.iter().find(|k| k["key"] == env.key("soon")).unwrap();
    assert_eq!(soon["messages"], 2);
    assert!(soon["ttl_ms"].as_u64().unwrap() <= 60_000);
    assert_eq!(soon["bytes"], doc(None, &["a", "b"]).to_string().len());
    let bad = due.iter().find(|k| k["key"] == env.key("bad")).unwrap();
    assert!(
        bad["reject"].as_str().unwrap().starts_with("not_json"),
        "{bad}"
    );

    // The text form is a table.
    let out = env.sweeper(&["run", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("KEY"), "{text}");
    assert!(
        text.contains(&env.key("soon")) && !text.contains(&env.key("later")),
        "{text}"
    );

    // Nothing written anywhere.
    for table in ["conversations", "messages", "sweep_runs", "sweep_rejects"] {
        assert_eq!(
            env.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    let after = keys_and_ttls(&env).await;
    assert_eq!(before.len(), after.len());
    for ((k1, t1), (k2, t2)) in before.iter().zip(&after) {
        assert_eq!(k1, k2);
        assert!(
            t2 <= t1 && t1 - t2 < 5_000,
            "TTL of {k1:?} changed: {t1} -> {t2}"
        );
    }
}

#[tokio::test]
async fn a_dry_run_lists_the_most_urgent_due_keys_and_counts_the_rest() {
    let env = TestEnv::migrated("dryrunlist").await;
    for (name, ttl) in [("d", 240_000), ("a", 30_000), ("c", 180_000), ("b", 90_000)] {
        env.set(name, &doc(None, &["x"]), Some(ttl)).await;
    }
    let out = env
        .command()
        .env("SWEEPER_LIST", "2")
        .args(["run", "--dry-run", "--output", "json", "--match"])
        .arg(env.pattern())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["due"], 4);
    let listed: Vec<&str> = s["due_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [env.key("a"), env.key("b")]);
    assert_eq!(s["due_keys_omitted"], 2);

    let out = env.sweeper(&["run", "--dry-run", "--list", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&env.key("a")) && !text.contains(&env.key("b")),
        "{text}"
    );
    assert!(
        text.contains("and 3 less urgent due keys not listed"),
        "{text}"
    );
}

async fn keys_and_ttls(env: &TestEnv) -> Vec<(Vec<u8>, i64)> {
    let mut keys: Vec<Vec<u8>> = env.redis_cmd(redis::cmd("KEYS").arg(env.pattern())).await;
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let ttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(&k)).await;
        out.push((k, ttl));
    }
    out
}

#[tokio::test]
async fn bad_flags_and_urls_are_one_line_and_exit_2() {
    let env = TestEnv::new("usage").await;
    let cases: &[&[&str]] = &[
        &["run", "--threshold", "soon"],
        &["run", "--batch-size", "0"],
        &["run", "--no-such-flag"],
        &["run", "--max-value-bytes", "lots"],
        &["frobnicate"],
        &["--redis-url", "not a url", "run", "--dry-run"],
        &["--database-url", "mysql://x", "migrate"],
    ];
    for args in cases {
        let out = env.command().args(*args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        error_line(&out);
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A missing required argument is named, with the subcommand's --help.
    for (args, named) in [
        (
            &["restore"][..],
            "--conversation <CONVERSATION> (see `sweeper restore --help`)",
        ),
        (
            &["check-schedule"][..],
            "--schedule <SCHEDULE> (see `sweeper check-schedule --help`)",
        ),
    ] {
        let out = env.command().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let line = error_line(&out);
        assert!(line.ends_with(named), "{args:?}: {line}");
    }
    // A sweep that writes needs a database.
    let out = env
        .command()
        .env_remove("DATABASE_URL")
        .args(["run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).contains("DATABASE_URL"));
    // --help documents the exit codes.
    let out = env.command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit codes") && help.contains("3  Redis"),
        "{help}"
    );
}

/// PostgreSQL refusing connections: every command that needs it exits 4 with one line naming
/// the address and the cause, not the pool's "timed out while waiting for an open connection".
#[tokio::test]
async fn postgres_down_is_exit_4_and_one_line_naming_the_host_and_the_cause() {
    let env = TestEnv::new("pgdown").await;
    let at = format!("127.0.0.1:{}", closed_port());
    let down = format!("postgres://sweeper:hunter2@{at}/chat");
    for args in [
        &["status"][..],
        &["migrate"],
        &["restore", "--conversation", "c1"],
    ] {
        let out = env
            .command()
            .env("DATABASE_URL", &down)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        let line = error_line(&out);
        assert!(
            line.contains(&at) && line.contains("refused") && !line.contains("pool timed out"),
            "{args:?}: {line}"
        );
        assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    }
}

/// A loopback port nothing listens on.
#[tokio::test]
async fn redis_down_is_exit_3_and_one_line_without_the_password() {
    let env = TestEnv::migrated("down").await;
    env.set("c1", &doc(None, &["a"]), SOON).await;

    let redis_down = format!("redis://:hunter2@127.0.0.1:{}/", closed_port());
    let out = env
        .command()
        .args(["--redis-url", &redis_down, "run", "--match", &env.pattern()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("Redis"), "{line}");
    assert!(
        !stderr(&out).contains("hunter2"),
        "password leaked: {}",
        stderr(&out)
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_runs").await,
        0,
        "nothing recorded"
    );
}

#[tokio::test]
async fn json_logs_are_json_lines_on_stderr() {
    let env = TestEnv::migrated("jsonlogs").await;
    env.set("c1", &doc(None, &["a"]), SOON).await;
    let out = env.sweeper(&["--log-format", "json", "run", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    // stdout stays one JSON object, whatever the logs do.
    let _: Value = serde_json::from_slice(&out.stdout).unwrap();
}

#[tokio::test]
async fn urls_come_from_secret_files_and_passwords_are_never_printed() {
    let env = TestEnv::migrated("secrets").await;
    env.set("c1", &doc(None, &["a"]), SOON).await;
    let dir = std::env::temp_dir().join(format!("sweeper-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The test server trusts every password: this one only has to stay out of the output.
    let db_with_password = env
        .database_url
        .replacen("postgres@", "postgres:Sup3rS3cret@", 1);
    std::fs::write(dir.join("database-url"), format!("{db_with_password}\n")).unwrap();
    std::fs::write(dir.join("redis-url"), format!("{}\n", env.redis_url)).unwrap();

    let out = env
        .command()
        .env_remove("DATABASE_URL")
        .env("REDIS_URL", "redis://127.0.0.1:1/")
        .arg("--database-url-file")
        .arg(dir.join("database-url"))
        .arg("--redis-url-file")
        .arg(dir.join("redis-url"))
        .args(["-vv", "run", "--output", "json", "--match", &env.pattern()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["persisted"], 1);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains("Sup3rS3cret"), "password printed: {all}");

    // A failure names the URL, redacted.
    let down = format!(
        "postgres://postgres:Sup3rS3cret@127.0.0.1:{}/x",
        closed_port()
    );
    std::fs::write(dir.join("bad-db"), down).unwrap();
    let out = env
        .command()
        .arg("--database-url-file")
        .arg(dir.join("bad-db"))
        .args(["--connect-timeout", "1s", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Sup3rS3cret"), "{}", stderr(&out));
    // A missing secret file is bad usage.
    let out = env
        .command()
        .arg("--database-url-file")
        .arg(dir.join("nope"))
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).contains("--database-url-file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_redis_throttle_spaces_the_commands() {
    // A Redis of its own: SCAN walks the whole keyspace, and the shared one holds other tests' keys.
    let redis = common::servers::PrivateRedis::start();
    let env = TestEnv::with_redis("throttle", &redis).await;
    env.seed(400, 3_600_000).await;
    // 400 PTTLs plus the SCAN steps at 1000 commands/s cannot take less than 0.4s.
    let started = Instant::now();
    let s = env.run_json(&["--dry-run", "--max-redis-ops-per-sec", "1000"]);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s["scanned"], 400);
    // Pipelines are cut small under a throttle: many more round trips than unthrottled.
    let free = env.run_json(&["--dry-run"]);
    assert!(
        s["redis_round_trips"].as_u64() > free["redis_round_trips"].as_u64(),
        "{s} vs {free}"
    );
}

/// Another client of Redis: a PING every 2 ms (about 400 commands a second) until dropped.
struct Company {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Company {
    fn join(url: &str) -> Company {
        use std::sync::atomic::Ordering;
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    let () = redis::cmd("PING")
                        .query(&mut conn)
                        .map(|_: String| ())
                        .unwrap();
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                sent
            })
        };
        Company {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops; the commands sent.
    fn leave(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[tokio::test]
async fn a_sweep_slows_down_while_other_clients_use_redis_and_not_otherwise() {
    // A Redis of its own: on the shared one, other tests are company.
    let redis = common::servers::PrivateRedis::start();
    let env = TestEnv::with_redis("company", &redis).await;
    env.seed(3_000, 3_600_000).await;
    let yielding = "other clients are using Redis";
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--dry-run", "--output", "json"];
        all.extend_from_slice(args);
        let started = Instant::now();
        let out = env.sweeper(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["scanned"], 3_000);
        (s, stderr(&out), started.elapsed())
    };

    // Alone: no company seen.
    let (alone, log, _) = run(&[]);
    assert!(!log.contains(yielding), "{log}");

    // With company, at 2000 commands a second: 3000 PTTLs cannot take under 1.5 s.
    let company = Company::join(&env.redis_url);
    let (paced, log, took) = run(&["--busy-redis-ops-per-sec", "2000"]);
    // Asked not to slow down, it does not, company or not.
    let (free, free_log, _) = run(&["--busy-redis-ops-per-sec", "0"]);
    assert!(company.leave() > 100);
    assert!(log.contains(yielding), "{log}");
    assert!(took >= Duration::from_millis(1_400), "{took:?}");
    let yielded = paced["redis_yield_ms"].as_u64().unwrap();
    assert!(yielded >= 1_000, "{paced}");
    assert!(
        yielded > alone["redis_yield_ms"].as_u64().unwrap(),
        "{alone}"
    );
    // Paced pipelines are small: more round trips than at full speed.
    assert!(
        paced["redis_round_trips"].as_u64() > free["redis_round_trips"].as_u64(),
        "{paced} vs {free}"
    );
    assert_eq!(free["redis_yield_ms"], 0, "{free}");
    assert!(!free_log.contains(yielding), "{free_log}");
}

#[tokio::test]
async fn check_schedule_says_whether_a_schedule_can_lose_a_key() {
    let env = TestEnv::new("schedule").await;
    let out = env
        .command()
        .args([
            "check-schedule",
            "--schedule",
            "*/5 * * * *",
            "--threshold",
            "10m",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["safe"], true);
    assert_eq!(v["largest_gap_ms"], 300_000);
    assert_eq!(
        v["margin_ms"], 60_000,
        "10m - (5m gap + 4m default max runtime)"
    );

    // Weekdays only: the weekend is a 3-day gap.
    let out = env
        .command()
        .args([
            "check-schedule",
            "--schedule",
            "*/5 * * * 1-5",
            "--threshold",
            "10m",
            "--max-runtime",
            "2m",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("UNSAFE")
            && text.contains("2days 5m apart")
            && text.contains("Smallest safe --threshold: 2days 7m 1s"),
        "{text}"
    );

    let out = env
        .command()
        .args(["check-schedule", "--schedule", "every five minutes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    error_line(&out);

    // A run told its schedule refuses a threshold the schedule cannot keep.
    let out = env
        .command()
        .args([
            "run",
            "--dry-run",
            "--schedule",
            "*/15 * * * *",
            "--threshold",
            "10m",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).contains("largest gap"), "{}", stderr(&out));
}

#[tokio::test]
async fn status_shows_the_runs_and_alarms_when_sweeps_stopped() {
    let env = TestEnv::migrated("status").await;
    let out = env.sweeper(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no run yet is an alarm: {}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no sweep has ever succeeded"));

    env.set("c1", &doc(None, &["a"]), SOON).await;
    let s = env.run_json(&[]);
    let out = env.sweeper(&["status", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["runs"][0]["id"], s["run_id"]);
    assert_eq!(v["runs"][0]["status"], "ok");
    assert_eq!(v["runs"][0]["persisted"], 1);

    std::thread::sleep(Duration::from_millis(1100));
    let out = env.sweeper(&["status", "--max-age", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ALARM") && text.contains("over --max-age 1s"),
        "{text}"
    );
    assert!(
        text.lines().nth(1).is_some_and(|l| l.contains(" ok ")),
        "{text}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let bin = env!("CARGO_BIN_EXE_sweeper");
    let out = Command::new(bin)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("restore") && script.contains("--summary-file"));
    // Bash loads it and registers the completion.
    let loaded = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p sweeper"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(loaded.status.success(), "{}", stderr(&loaded));
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("_sweeper"));
    for shell in ["zsh", "fish"] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = Command::new(bin).arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(man.contains(".TH sweeper 1"), "{man}");
    for sub in ["daemon", "inspect", "restore", "check\\-schedule"] {
        assert!(man.contains(sub), "{sub} missing from the man page");
    }
    let out = Command::new(bin)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
