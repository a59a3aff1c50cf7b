//! Logging never stalls or floods a sweep: a stderr nobody reads does not stop it (its lines are
//! dropped and counted once it is read again), and a warning about one key is logged for the
//! first few keys of a kind, then counted.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::runs::{assert_exit, n, summary};
use common::*;

/// Conversations swept one per batch: each batch logs a JSON line at -v, about 330 bytes.
const N: usize = 600;
/// Conversations saved while nobody reads the sweep's stderr: their lines, some 165 KB, are past
/// the 64 KiB a pipe holds and as much again as the sweeper queues.
const UNREAD: i64 = 500;

/// A sweep whose stderr is a pipe nobody reads for a while (a stuck log collector) goes on all
/// the same. Logging in place, it blocked in write(2) once the pipe was full, and with it the
/// runtime: no batch was written after the first 200 or so. Read again, the stderr tells how
/// many lines were dropped and ends with the run's last lines; every conversation is saved
/// within the deadline.
#[tokio::test]
async fn a_sweep_whose_stderr_nobody_reads_for_a_while_goes_on_and_saves_everything_in_time() {
    let env = TestEnv::migrated("logs_stall").await;
    env.seed(N, 300_000).await;
    let mut child = env
        .command()
        .args(["-v", "--log-format", "json", "run", "--output", "json"])
        .args(["--match", &env.pattern()])
        .args(["--batch-size", "1", "--deadline", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let saved = "SELECT count(*) FROM conversations";
    // Its output unread meanwhile, on purpose.
    while env.count(saved).await < UNREAD && child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "the sweep stalled while its stderr was not read: {} of {N} saved after 60 s",
                env.count(saved).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = finish(child, Duration::from_secs(60));
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_eq!(s["status"], "ok", "{s}");
    assert_eq!(n(&s, "persisted"), N as u64, "{s}");
    assert_eq!(env.count(saved).await, N as i64);
    let err = stderr(&out);
    let tail = &err[err.len().saturating_sub(3000)..];
    assert!(
        err.contains("log lines dropped: stderr was not read"),
        "no count of the lines dropped: {tail}"
    );
    assert!(
        err.lines().last().unwrap_or("").contains("sweep finished"),
        "the run's last line did not reach stderr: {tail}"
    );
}

/// Keys that expire before they are read, and checkpoints rejected, are warned of one by one for
/// the first ten of each kind, then in one line each that says how many more there were; the
/// summary counts them all.
#[tokio::test]
async fn per_key_warnings_show_the_first_ten_keys_of_a_kind_then_count_the_rest() {
    let env = TestEnv::migrated("logs_per_key").await;
    for i in 0..35 {
        env.set_raw(&format!("bad{i:02}"), "not json", SOON).await;
    }
    env.set("good", &doc(None, &["a"]), SOON).await;
    let out = env.sweeper(&["run", "--output", "json"]);
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_eq!(n(&s, "rejected"), 35, "{s}");
    let err = stderr(&out);
    let each = err
        .lines()
        .filter(|l| l.contains("checkpoint rejected: set aside"))
        .count();
    assert_eq!(each, 10, "{err}");
    assert!(
        err.contains("25 more checkpoints rejected than were logged"),
        "{err}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await,
        35,
        "every reject is kept whatever was logged"
    );
}

/// A daemon whose stdout nobody reads keeps sweeping. Each dry run here prints a table of its
/// 2000 due keys, more than a pipe holds: printed in place, the first sweep's table blocked
/// the daemon in write(2) and no sweep came after it. Read at last, stdout holds every table
/// whole, and the daemon stops on SIGTERM.
#[tokio::test]
async fn a_daemon_whose_stdout_nobody_reads_keeps_sweeping() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let env = TestEnv::migrated("logs_stdout").await;
    env.seed(2000, 300_000).await;
    let mut child = env
        .command()
        .args(["daemon", "--schedule", "* * * * * *", "--dry-run"])
        .args(["--list", "2000", "--match", &env.pattern()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let err = Arc::new(Mutex::new(String::new()));
    let into = err.clone();
    let reading = std::thread::spawn(move || {
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let sweeps = |e: &Mutex<String>| e.lock().unwrap().matches("sweep finished").count();
    let start = Instant::now();
    while sweeps(&err) < 3 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let swept = sweeps(&err);
    let out = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        all
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = finish(child, Duration::from_secs(30)).status;
    let (out, _) = (out.join().unwrap(), reading.join());
    let err = err.lock().unwrap().clone();
    assert!(
        swept >= 3,
        "{swept} sweeps in 30 s while stdout was not read: {}",
        &err[err.len().saturating_sub(2000)..]
    );
    assert_eq!(status.code(), Some(0), "{err}");
    let tables = out.matches("dry run: 2000 keys matching").count();
    assert_eq!(
        tables,
        sweeps(&Mutex::new(err)),
        "every table whole on stdout"
    );
}
