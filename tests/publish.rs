//! What orchestrators and monitoring read besides stdout: the summary file (Airflow's XCom), the
//! outputs folder (Flyte), the metrics textfile and the Pushgateway push, on success and failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::*;
use serde_json::Value;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sweeper-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The value of an unlabelled or labelled sample line `name{labels} value`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn a_sweep_writes_its_summary_outputs_and_metrics_files() {
    let env = TestEnv::migrated("publish_ok").await;
    for i in 0..4 {
        env.set(&format!("due{i}"), &doc(None, &["a", "b"]), SOON)
            .await;
    }
    env.set("later", &doc(None, &["a"]), FAR).await;
    let dir = temp_dir("publish-ok");
    let (summary_file, outputs, metrics) = (
        dir.join("return.json"),
        dir.join("outputs"),
        dir.join("sweeper.prom"),
    );
    let printed = env.run_json(&[
        "--summary-file",
        summary_file.to_str().unwrap(),
        "--outputs-dir",
        outputs.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    assert_eq!(
        json_file(&summary_file),
        printed,
        "the file holds what was printed"
    );
    assert_eq!(printed["persisted"], 4);
    let read = |name: &str| std::fs::read_to_string(outputs.join(name)).unwrap();
    assert_eq!(read("status"), "ok");
    assert_eq!(read("persisted"), "4");
    assert_eq!(read("not_due"), "1");
    assert_eq!(read("run_id"), printed["run_id"].to_string());

    let m = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        sample(&m, "sweeper_runs_total{status=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "sweeper_last_run_status{status=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&m, "sweeper_last_run_persisted_keys"), Some(4.0));
    assert_eq!(sample(&m, "sweeper_last_run_scanned_keys"), Some(5.0));
    let last_success = sample(&m, "sweeper_last_success_timestamp_seconds").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last_success).abs() < 60.0, "{last_success} vs {now}");

    // Redis down: exit 3, and the files say `failed` with the error, without the password. The
    // last success stays what the earlier run left.
    let down = format!("redis://:hunter2@127.0.0.1:{}/", closed_port());
    let out = env
        .command()
        .args(["--redis-url", &down, "run", "--match", &env.pattern()])
        .args(["--summary-file", summary_file.to_str().unwrap()])
        .args(["--outputs-dir", outputs.to_str().unwrap()])
        .args(["--metrics-file", metrics.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    error_line(&out);
    let failed = json_file(&summary_file);
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("Redis") && !error.contains("hunter2"),
        "{error}"
    );
    assert_eq!(read("status"), "failed");
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        sample(&m, "sweeper_last_run_status{status=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sweeper_last_run_status{status=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "sweeper_last_success_timestamp_seconds"),
        Some(last_success)
    );
    assert!(!m.contains("hunter2"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_refused_setting_still_writes_the_summary_file() {
    let env = TestEnv::migrated("publish_usage").await;
    let dir = temp_dir("publish-usage");
    let file = dir.join("return.json");
    let out = env.sweeper(&[
        "run",
        "--schedule",
        "*/5 * * * *",
        "--threshold",
        "5m",
        "--summary-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(error_line(&out).contains("--threshold"));
    assert!(out.stdout.is_empty(), "usage errors print no summary");
    let s = json_file(&file);
    assert_eq!(s["status"], "failed");
    assert!(s["error"].as_str().unwrap().contains("--threshold"), "{s}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_summary_file_that_cannot_be_written_fails_the_run_with_one_line() {
    let env = TestEnv::migrated("publish_unwritable").await;
    env.set("c1", &doc(None, &["a"]), SOON).await;
    let out = env.sweeper(&["run", "--summary-file", "/nonexistent-dir/return.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(error_line(&out).contains("/nonexistent-dir/return.json"));
    // The sweep itself was done.
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 1);
}

/// A one-shot HTTP server: answers `status` to the first request and hands it back.
fn http_server(status: u16) -> (String, std::thread::JoinHandle<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        (
            request_line.trim().to_string(),
            String::from_utf8(body).unwrap(),
        )
    });
    (url, handle)
}

#[tokio::test]
async fn metrics_are_pushed_to_a_pushgateway_and_a_failed_push_only_warns() {
    let env = TestEnv::migrated("publish_push").await;
    env.set("c1", &doc(None, &["a"]), SOON).await;
    let (url, server) = http_server(200);
    let s = env.run_json(&["--pushgateway", &url]);
    assert_eq!(s["persisted"], 1);
    let (request, body) = server.join().unwrap();
    // The sweep's group: its pattern (base64, the Pushgateway's escape for `*`).
    let pattern = base64::engine::general_purpose::URL_SAFE.encode(s["match"].as_str().unwrap());
    assert_eq!(
        request,
        format!("POST /metrics/job/sweeper/match@base64/{pattern} HTTP/1.1")
    );
    assert_eq!(
        sample(&body, "sweeper_last_run_persisted_keys"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "sweeper_runs_total{status=\"ok\"}"),
        Some(1.0)
    );

    // A Pushgateway that answers 500, then none at all: the sweep still succeeds, with a warning.
    let (url, server) = http_server(500);
    let out = env.sweeper(&["run", "--pushgateway", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not push the metrics"),
        "{}",
        stderr(&out)
    );
    server.join().unwrap();
    // Credentials in the Pushgateway's URL never show in the warning.
    let out = env.sweeper(&[
        "run",
        "--pushgateway",
        &format!("http://push:s3cret@127.0.0.1:{}", closed_port()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("could not push the metrics"));
    assert!(
        !stderr(&out).contains("s3cret") && stderr(&out).contains("push:***@"),
        "{}",
        stderr(&out)
    );
}
