//! The deploy files as shipped: the Kubernetes manifests keep our own policy (schedule, no overlap,
//! deadlines under the gap, locked-down pods, URLs from a Secret) and the schedule passes
//! `sweeper check-schedule`; the Dockerfile names files that exist. No server needed.

use std::path::Path;
use std::process::Command;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The value of the first `key: value` line (quotes stripped), at any indentation.
fn value(doc: &str, key: &str) -> String {
    doc.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no `{key}:` in the manifest"))
        .trim()
        .trim_matches('"')
        .to_string()
}

/// The value of the env entry `name`.
fn env_value(doc: &str, name: &str) -> String {
    let lines: Vec<&str> = doc.lines().map(str::trim).collect();
    let at = lines
        .iter()
        .position(|l| *l == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no env {name}"));
    lines[at + 1]
        .strip_prefix("value:")
        .expect("value line")
        .trim()
        .trim_matches('"')
        .to_string()
}

fn has(doc: &str, line: &str) -> bool {
    doc.lines().any(|l| l.trim() == line)
}

/// Our policy for a sweeping CronJob (k8s/cronjob.yaml and k8s/cronjob-sharded.yaml alike).
fn keeps_the_policy(doc: &str) {
    let doc = doc.to_string();
    assert_eq!(value(&doc, "kind"), "CronJob");
    assert_eq!(value(&doc, "schedule"), "*/5 * * * *");
    assert_eq!(value(&doc, "concurrencyPolicy"), "Forbid");
    assert!(!value(&doc, "timeZone").is_empty());
    let starting: u64 = value(&doc, "startingDeadlineSeconds").parse().unwrap();
    let active: u64 = value(&doc, "activeDeadlineSeconds").parse().unwrap();
    assert!(
        starting < 300 && active < 300,
        "deadlines under the 5-minute gap: {starting}, {active}"
    );
    assert!(value(&doc, "backoffLimit").parse::<u32>().unwrap() <= 2);
    assert!(
        value(&doc, "successfulJobsHistoryLimit")
            .parse::<u32>()
            .is_ok()
    );
    assert!(value(&doc, "failedJobsHistoryLimit").parse::<u32>().is_ok());
    for line in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "automountServiceAccountToken: false",
        "restartPolicy: Never",
    ] {
        assert!(has(&doc, line), "missing `{line}`");
    }
    for key in [
        "requests:",
        "limits:",
        "memory: 256Mi",
        "secretName: sweeper",
    ] {
        assert!(doc.contains(key), "missing `{key}`");
    }
    // URLs come from the mounted Secret, never from literal values.
    assert_eq!(
        env_value(&doc, "SWEEPER_REDIS_URL_FILE"),
        "/secrets/redis-url"
    );
    assert_eq!(
        env_value(&doc, "SWEEPER_DATABASE_URL_FILE"),
        "/secrets/database-url"
    );
    assert!(!doc.contains("redis://") && !doc.contains("postgres://"));
    // The run's own deadline ends it before Kubernetes does, so it saves what it read.
    let run_deadline = humantime::parse_duration(&env_value(&doc, "SWEEPER_DEADLINE")).unwrap();
    assert!(
        run_deadline.as_secs() < active,
        "--deadline {run_deadline:?} under activeDeadlineSeconds {active}"
    );
    assert_eq!(
        env_value(&doc, "SWEEPER_SCHEDULE"),
        value(&doc, "schedule"),
        "the run checks the schedule it runs on"
    );
}

#[test]
fn the_cronjob_keeps_the_policy() {
    keeps_the_policy(&read("k8s/cronjob.yaml"));
}

#[test]
fn the_sharded_cronjob_keeps_the_policy_and_runs_one_pod_per_shard() {
    let doc = read("k8s/cronjob-sharded.yaml");
    keeps_the_policy(&doc);
    // Not the unsharded CronJob's name: both may be applied in turn while switching.
    assert_eq!(value(&doc, "name"), "sweeper-sharded");
    // An Indexed Job: Kubernetes sets JOB_COMPLETION_INDEX (0..completions) in each pod, which
    // `--shards N` reads; one pod per shard, all at once, so each shard has the whole deadline.
    assert_eq!(value(&doc, "completionMode"), "Indexed");
    let completions: u32 = value(&doc, "completions").parse().unwrap();
    let parallelism: u32 = value(&doc, "parallelism").parse().unwrap();
    let args = doc
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("args:"))
        .expect("args");
    let args: Vec<String> = args
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|a| a.trim().trim_matches('"').to_string())
        .collect();
    assert_eq!(args[0], "run");
    let at = args
        .iter()
        .position(|a| a == "--shards")
        .expect("--shards in args");
    let shards: u32 = args[at + 1].parse().unwrap();
    assert!(shards > 1, "{shards} shards");
    assert_eq!(completions, shards, "one completion index per shard");
    assert_eq!(parallelism, shards, "every shard runs at once");
    // The index comes from Kubernetes, not from a fixed --shard I/N or SWEEPER_SHARD.
    assert!(!args.iter().any(|a| a == "--shard") && !doc.contains("name: SWEEPER_SHARD"));
    assert!(!doc.contains("name: JOB_COMPLETION_INDEX"));
}

#[test]
fn the_cronjob_schedules_save_every_key() {
    for file in ["k8s/cronjob.yaml", "k8s/cronjob-sharded.yaml"] {
        schedule_saves_every_key(&read(file));
    }
}

fn schedule_saves_every_key(doc: &str) {
    let doc = doc.to_string();
    let active: u64 = value(&doc, "activeDeadlineSeconds").parse().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .args(["check-schedule", "--schedule", &value(&doc, "schedule")])
        .args(["--threshold", &env_value(&doc, "SWEEPER_THRESHOLD")])
        .args(["--max-runtime", &format!("{active}s")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_migrate_job_and_kustomization_tie_together() {
    let job = read("k8s/migrate-job.yaml");
    assert_eq!(value(&job, "kind"), "Job");
    // Named after the release it runs, so applying the next release's files makes a new Job
    // (a Job's template cannot change) instead of failing while the old one lives.
    let image = value(&job, "image");
    let tag = image.rsplit_once(':').unwrap().1;
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{image}");
    assert_eq!(
        value(&job, "name"),
        format!("sweeper-migrate-{}", tag.replace('.', "-"))
    );
    assert!(job.contains(r#"args: ["migrate""#));
    assert!(has(&job, "runAsNonRoot: true") && has(&job, "readOnlyRootFilesystem: true"));
    let kustomization = read("k8s/kustomization.yaml");
    for file in ["migrate-job.yaml", "cronjob.yaml"] {
        assert!(
            has(&kustomization, &format!("- {file}")),
            "{file} not in the kustomization"
        );
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("k8s")
                .join(file)
                .exists()
        );
    }
    // The sharded CronJob replaces cronjob.yaml when chosen, never runs beside it: listed both,
    // the unsharded sweep and the shards would sweep the same keys.
    assert!(
        !has(&kustomization, "- cronjob-sharded.yaml"),
        "the kustomization lists the sharded CronJob too"
    );
    assert!(
        kustomization.contains("cronjob-sharded.yaml"),
        "the alternative is named"
    );
}

#[test]
fn the_dockerfile_names_files_that_exist_and_runs_as_non_root() {
    let doc = read("Dockerfile");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for line in doc
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "{line}: {src} does not exist");
        }
    }
    assert!(
        doc.lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0"))
    );
    assert!(doc.contains(r#"ENTRYPOINT ["/usr/local/bin/sweeper"]"#));
    assert!(doc.contains("--bin sweeper"));
}

#[test]
fn the_retention_cronjob_prunes_daily_as_the_eraser_without_redis() {
    let doc = read("k8s/retention-cronjob.yaml");
    assert_eq!(value(&doc, "kind"), "CronJob");
    assert_eq!(value(&doc, "schedule"), "17 3 * * *");
    assert_eq!(value(&doc, "concurrencyPolicy"), "Forbid");
    assert!(doc.contains(r#"args: ["prune""#));
    assert_eq!(env_value(&doc, "SWEEPER_OLDER_THAN"), "365d");
    // The eraser's Secret, not the sweep's; and no Redis at all.
    assert!(has(&doc, "secretName: sweeper-eraser"));
    assert!(!doc.contains("redis") && !doc.contains("secretName: sweeper\n"));
    assert!(has(&doc, "runAsNonRoot: true") && has(&doc, "readOnlyRootFilesystem: true"));
    // What it runs parses: the flags and their environment twins exist.
    let out = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .args(["prune", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("SWEEPER_OLDER_THAN"), "{help}");
    // Named in the kustomization, commented out until the eraser's Secret exists.
    assert!(read("k8s/kustomization.yaml").contains("# - retention-cronjob.yaml"));
}

/// The commands of the binary (`sweeper --help`'s list).
fn subcommands() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .arg("--help")
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .lines()
        .take_while(|l| !l.trim().is_empty() || l.is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// What the image promises whoever runs it (docs/deploying.md, "The image"), held against every
/// file that runs it. No image is built here (its base images come from registries this machine
/// cannot reach), so its last stage is read: the binary at the path ENTRYPOINT names, which the
/// Flyte task names as its command; the user every manifest and the chart run as; no manifest
/// replaces the entrypoint, and each one's arguments start with a command of the binary; the
/// default command is the documented one.
#[test]
fn the_image_runs_as_the_manifests_and_the_chart_expect() {
    let doc = read("Dockerfile");
    let runtime = doc.rsplit_once("\nFROM ").expect("a last stage").1;
    let bin = runtime
        .lines()
        .find(|l| l.starts_with("COPY --from=build "))
        .and_then(|l| l.split_whitespace().last())
        .expect("the binary copied from the build stage");
    assert!(
        runtime.contains(&format!("ENTRYPOINT [\"{bin}\"]")),
        "{runtime}"
    );
    assert!(
        read("dags/sweeper_flyte.py").contains(&format!("\"{bin}\",")),
        "the Flyte task's command is {bin}"
    );
    assert!(runtime.contains(r#"CMD ["run", "--output", "json", "--log-format", "json"]"#));
    assert!(read("docs/deploying.md").contains("`run --output json --log-format json`"));
    let (uid, gid) = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .and_then(|u| u.split_once(':'))
        .expect("USER uid:gid");
    assert!(read("docs/deploying.md").contains(&format!("non-root user {uid}")));
    let commands = subcommands();
    for path in [
        "k8s/cronjob.yaml",
        "k8s/cronjob-sharded.yaml",
        "k8s/migrate-job.yaml",
        "k8s/retention-cronjob.yaml",
        "k8s/forget/job.yaml",
        "k8s/helm/sweeper/values.yaml",
    ] {
        let m = read(path);
        assert_eq!(value(&m, "runAsUser"), uid, "{path}");
        assert_eq!(value(&m, "runAsGroup"), gid, "{path}");
        assert!(has(&m, "runAsNonRoot: true"), "{path}");
    }
    let templates =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/helm/sweeper/templates"))
            .unwrap()
            .map(|e| {
                format!(
                    "k8s/helm/sweeper/templates/{}",
                    e.unwrap().file_name().to_string_lossy()
                )
            })
            .filter(|p| p.ends_with(".yaml"));
    let manifests = [
        "k8s/cronjob.yaml",
        "k8s/cronjob-sharded.yaml",
        "k8s/migrate-job.yaml",
        "k8s/retention-cronjob.yaml",
        "k8s/forget/job.yaml",
    ];
    for path in manifests.iter().map(|p| p.to_string()).chain(templates) {
        let m = read(&path);
        let lines: Vec<&str> = m.lines().map(str::trim).collect();
        assert!(
            !lines.iter().any(|l| l.starts_with("command:")),
            "{path} replaces the image's entrypoint"
        );
        for (i, l) in lines.iter().enumerate() {
            let Some(rest) = l.strip_prefix("args:") else {
                continue;
            };
            // Inline (`args: ["run", ...]`) or a list whose first item is on the next line.
            let first = match rest.trim() {
                "" => lines[i + 1].trim_start_matches("- "),
                inline => inline.trim_start_matches('[').split(',').next().unwrap(),
            };
            let first = first.trim().trim_matches('"');
            assert!(
                commands.iter().any(|c| c == first),
                "{path}: args start with {first:?}, no command of sweeper ({commands:?})"
            );
        }
    }
}

/// The Dockerfile's build stage has every file `cargo build --locked --bin sweeper` needs: its
/// COPY lines, copied alone into a directory of their own, check as the crate (`cargo check`, on
/// this build's target directory, offline). A source the crate comes to read from outside them
/// (an `include_str!` of docs/, a new top-level folder) fails here, as the image build would.
#[test]
fn the_dockerfile_build_stage_copies_what_the_build_needs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ctx = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-context");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).unwrap();
    let doc = read("Dockerfile");
    let build = doc.split("\nFROM ").nth(1).expect("the build stage");
    for line in build.lines().filter(|l| l.starts_with("COPY ")) {
        let parts: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (dest, sources) = parts.split_last().unwrap();
        for src in sources {
            let to = if dest.ends_with('/') {
                ctx.join(dest).join(Path::new(src).file_name().unwrap())
            } else {
                ctx.join(dest)
            };
            let out = Command::new("cp")
                .arg("-r")
                .arg(root.join(src))
                .arg(&to)
                .output()
                .unwrap();
            assert!(out.status.success(), "{line}: {out:?}");
        }
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let out = Command::new(env!("CARGO"))
        .args([
            "check",
            "--locked",
            "--offline",
            "--quiet",
            "--bin",
            "sweeper",
        ])
        .current_dir(&ctx)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Dockerfile's build context does not build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
