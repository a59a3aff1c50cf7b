//! `sweeper forget` against what runs beside it: forgets racing a sweep of thousands of due keys
//! (the sweep has read keys the forget then erases: the check in the batch's transaction keeps
//! them out), and forgets SIGKILLed at random points and run again.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

/// `forget --match PATTERN --conversation ID...` (or other ARGS) as a child process.
fn spawn_forget(env: &TestEnv, args: &[String]) -> std::process::Child {
    env.command()
        .args(["forget", "--match", &env.pattern()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn named(ids: &[String]) -> Vec<String> {
    ids.iter()
        .flat_map(|id| ["--conversation".to_string(), id.clone()])
        .collect()
}

/// Stored conversations among `ids`.
async fn stored_among(env: &TestEnv, ids: &[String]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM conversations WHERE conversation_id = ANY($1)")
        .bind(ids)
        .fetch_one(&env.pg)
        .await
        .unwrap()
}

#[tokio::test]
async fn forgets_racing_a_sweep_never_let_a_forgotten_conversation_in() {
    let env = TestEnv::migrated("forget_race").await;
    let n = 3000;
    env.seed(n, SOON.unwrap()).await;
    let forgotten: Vec<String> = (0..n).step_by(60).map(|i| format!("c{i:05}")).collect();
    // Small batches, so the forgets land between a batch's read and its write.
    let sweep = env
        .command()
        .args(["run", "--match", &env.pattern(), "--batch-size", "20"])
        .args(["--output", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut forgets = Vec::new();
    for chunk in forgotten.chunks(10) {
        std::thread::sleep(Duration::from_millis(60));
        forgets.push(spawn_forget(&env, &named(chunk)));
    }
    for f in forgets {
        let out = finish(f, Duration::from_secs(60));
        assert!(out.status.success(), "forget: {}", stderr(&out));
    }
    let out = sweep.wait_with_output().unwrap();
    assert!(out.status.success(), "sweep: {}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the racing sweep: {s}");

    // The forgotten keys are written again late; a sweep of everything saves every other one.
    for id in &forgotten {
        env.set(id, &doc(Some("2026-11-23T10:00:00Z"), &["m1"]), SOON)
            .await;
    }
    let s = env.run_json(&[]);
    assert_eq!(s["erased"].as_u64(), Some(forgotten.len() as u64), "{s}");
    assert_eq!(stored_among(&env, &forgotten).await, 0, "none came back");
    assert_eq!(
        env.count("SELECT count(*) FROM conversations").await,
        (n - forgotten.len()) as i64,
        "every other conversation saved"
    );
}

#[tokio::test]
async fn a_forget_killed_at_any_point_and_run_again_finishes() {
    let env = TestEnv::migrated("forget_kill").await;
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..4 {
        let user = format!("user-{round}");
        let ids: Vec<String> = (0..300).map(|i| format!("r{round}-{i:03}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let mut d = doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]);
            d["user_id"] = user.clone().into();
            // Half saved already, half only in Redis.
            env.set(id, &d, if i % 2 == 0 { SOON } else { FAR }).await;
        }
        env.run_json(&[]);
        let mut child = spawn_forget(&env, &["--user".to_string(), user.clone()]);
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        let _ = child.kill();
        let _ = child.wait();
        let out = finish(
            spawn_forget(&env, &["--user".to_string(), user.clone()]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert_eq!(stored_among(&env, &ids).await, 0, "round {round}");
        let left: Vec<String> = env
            .redis_cmd(redis::cmd("KEYS").arg(env.key(&format!("r{round}-*"))))
            .await;
        assert!(left.is_empty(), "round {round}: {left:?}");
        // Late writes of every one of them: none saved.
        for id in &ids {
            env.set(id, &doc(Some("2026-11-23T10:00:00Z"), &["m1"]), SOON)
                .await;
        }
        let s = env.run_json(&[]);
        assert_eq!(
            s["erased"].as_u64(),
            Some(ids.len() as u64),
            "round {round}: {s}"
        );
        assert_eq!(s["persisted"], 0, "round {round}: {s}");
        let () = env
            .redis_cmd(redis::cmd("DEL").arg(ids.iter().map(|i| env.key(i)).collect::<Vec<_>>()))
            .await;
    }
}
