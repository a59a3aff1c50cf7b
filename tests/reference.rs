//! The documentation against the binary: every flag, environment variable and exit code the docs
//! name is one the binary has, and docs/reference.md lists every flag and environment variable
//! of every subcommand, as the binary's `--help` shows them. No server needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use clap::CommandFactory;
use sweeper::cli::Cli;

const PAGES: &[&str] = &[
    "README.md",
    "docs/operating.md",
    "docs/deploying.md",
    "docs/installing.md",
    "docs/layouts.md",
    "docs/scale-out.md",
    "docs/performance.md",
    "docs/architecture.md",
    "docs/reference.md",
];

/// Flags of other tools the docs show (kubectl, helm, redis-server, cargo, the linters...), each
/// with the tool: a doc naming one of these is not naming sweeper's.
const OTHER_TOOLS: &[(&str, &str)] = &[
    ("--namespace", "helm, kubectl"),
    ("--set", "helm"),
    ("--reuse-values", "helm upgrade"),
    ("--strict", "helm lint, kubernetes-validate"),
    ("--tls-port", "redis-server"),
    ("--tls-auth-clients", "redis-server"),
    ("--cluster-enabled", "redis-server"),
    ("--cluster", "redis-cli"),
    ("--open", "cargo doc"),
    ("--pkgs", "pyflyte"),
    ("--archive", "flytectl"),
    ("--no-fetch", "cargo audit"),
    ("--stale", "cargo audit"),
    ("--naive", "the bench, tests/bench/sweep.rs"),
    ("--curve", "the bench"),
    ("--sizes", "the bench"),
    ("--storage", "the bench"),
];

/// Environment variables the docs name that are not the binary's: the DAGs', the test harness's
/// and the scripts'. Each must appear in the repository outside the docs.
const NOT_THE_BINARYS: &[&str] = &[
    "SWEEPER_BIN",
    "SWEEPER_IMAGE",
    "SWEEPER_NAMESPACE",
    "SWEEPER_ASSET_URI",
    "SWEEPER_DAG_SHARDS",
    "SWEEPER_MIGRATE_SECRET",
    "SWEEPER_MIGRATE_DATABASE_URL",
    "SWEEPER_NO_SKIP",
    "SWEEPER_TOOLS_ROOT",
    "SWEEPER_TEST_PG_ADMIN",
    "SWEEPER_TEST_DUE",
    "SWEEPER_BENCH_KEYS",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every subcommand's flags (`--long`, and `-s` short forms) and their environment variables, as
/// the CLI definition has them; each checked to appear in the subcommand's own `--help`.
fn binary() -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let mut flags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // A flag's variable may differ by command (`restore --conversation`, `forget --conversation`).
    let mut envs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let cli = Cli::command();
    for sub in cli.get_subcommands() {
        let name = sub.get_name().to_string();
        let help = Command::new(env!("CARGO_BIN_EXE_sweeper"))
            .args([name.as_str(), "--help"])
            .output()
            .unwrap();
        // Wrapped at 100 columns: one space for every run of white space.
        let help = String::from_utf8_lossy(&help.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for arg in sub.get_arguments().chain(cli.get_arguments()) {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            if ["--help", "--version"].contains(&flag.as_str()) {
                // clap's own, on every command: no variable, not in the table.
                continue;
            }
            assert!(
                help.contains(&flag),
                "{flag} not in `sweeper {name} --help`"
            );
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            if let Some(e) = &env {
                assert!(
                    help.contains(&format!("env: {e}")),
                    "{e} not in `sweeper {name} --help`"
                );
            }
            flags.entry(flag.clone()).or_default().insert(name.clone());
            envs.entry(flag).or_default().extend(env);
        }
    }
    (flags, envs)
}

/// The code spans of a page and the lines of its fenced blocks.
fn code(doc: &str) -> (Vec<String>, Vec<String>) {
    let (mut spans, mut blocks) = (Vec::new(), Vec::new());
    let mut fenced = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if fenced {
            blocks.push(line.to_string());
        } else {
            spans.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    (spans, blocks)
}

/// `--word` tokens of `text`.
fn flags_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && w.as_bytes()[2].is_ascii_lowercase())
        .map(|w| w.trim_end_matches('-').to_string())
        .collect()
}

/// `SWEEPER_WORD` tokens of `text`.
fn envs_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("SWEEPER_") && w.len() > 8)
        .map(|w| w.trim_end_matches('_').to_string())
        .collect()
}

#[test]
fn the_docs_name_only_flags_and_variables_the_binary_has() {
    let (flags, envs) = binary();
    let known_envs: BTreeSet<String> = envs.values().flatten().cloned().collect();
    let mut others: BTreeSet<&str> = OTHER_TOOLS.iter().map(|(f, _)| *f).collect();
    others.extend(["--help", "--version"]);
    let mut wrong = Vec::new();
    for page in PAGES {
        let doc = read(page);
        let (spans, blocks) = code(&doc);
        // Flags: in code spans, and on the block lines that run sweeper.
        let mut named: Vec<String> = spans.iter().flat_map(|s| flags_in(s)).collect();
        for line in &blocks {
            if line.trim_start().starts_with("sweeper ") || line.contains("/sweeper ") {
                named.extend(flags_in(line));
            }
        }
        for f in named {
            if !flags.contains_key(&f) && !others.contains(f.as_str()) {
                wrong.push(format!("{page}: {f} is no flag of sweeper"));
            }
        }
        for e in envs_in(&doc) {
            if !known_envs.contains(&e) && !NOT_THE_BINARYS.contains(&e.as_str()) {
                wrong.push(format!("{page}: {e} is no variable of sweeper"));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_other_tools_and_variables_listed_are_real() {
    // Each exception is used somewhere outside the docs, or it is a stale excuse.
    let mut everything = String::new();
    for dir in ["dags", "tests", "k8s", "deb", ".ci"] {
        collect(&root().join(dir), &mut everything);
    }
    everything.push_str(&read("Makefile"));
    for e in NOT_THE_BINARYS {
        assert!(
            everything.contains(e),
            "{e} is used nowhere outside the docs"
        );
    }
    let docs: String = PAGES.iter().map(|p| read(p)).collect();
    for (f, tool) in OTHER_TOOLS {
        assert!(
            docs.contains(f),
            "{f} ({tool}) is named by no page: drop it"
        );
    }
}

fn collect(dir: &Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            out.push_str(&text);
        }
    }
}

/// docs/reference.md's table: one row per flag, `| `--flag` | `ENV` or none | commands |`.
fn reference_rows() -> BTreeMap<String, (String, String)> {
    read("docs/reference.md")
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            (
                cells[0].trim_matches('`').to_string(),
                (cells[1].clone(), cells[2].clone()),
            )
        })
        .collect()
}

/// The row the binary gives a flag.
fn row(flag: &str, env: &BTreeSet<String>, subs: &BTreeSet<String>, all: usize) -> String {
    let env = match env.is_empty() {
        true => "none".to_string(),
        false => env
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let subs = if subs.len() == all {
        "every command".to_string()
    } else {
        subs.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("| `{flag}` | {env} | {subs} |")
}

#[test]
fn the_reference_lists_every_flag_with_its_variable_and_commands() {
    let (flags, envs) = binary();
    let all = Cli::command().get_subcommands().count();
    let want: Vec<String> = flags
        .iter()
        .map(|(f, subs)| row(f, &envs[f], subs, all))
        .collect();
    // The house's rule, as the README states it: every flag but the two counters has a twin.
    let without: Vec<&String> = envs
        .iter()
        .filter(|(_, e)| e.is_empty())
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        without,
        ["--quiet", "--verbose"],
        "flags without an environment twin"
    );
    let have = reference_rows();
    let mut wrong = Vec::new();
    for (line, (f, _)) in want.iter().zip(&flags) {
        match have.get(f) {
            None => wrong.push(format!("missing: {line}")),
            Some((env, subs)) if format!("| `{f}` | {env} | {subs} |") != *line => {
                wrong.push(format!("differs, the binary says: {line}"))
            }
            _ => {}
        }
    }
    for f in have.keys() {
        if !flags.contains_key(f) {
            wrong.push(format!("{f} is listed but the binary has no such flag"));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/reference.md:\n{}\n\nthe whole table:\n{}",
        wrong.join("\n"),
        want.join("\n")
    );
}

#[test]
fn the_exit_codes_documented_are_the_binarys() {
    let help = Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let binary: BTreeSet<String> = help
        .split("Exit codes:")
        .nth(1)
        .expect("an exit codes section in --help")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    // 130 is listed as "130 interrupted by SIGINT, 143 by SIGTERM".
    let mut binary = binary;
    binary.insert("143".into());
    let doc = read("docs/operating.md");
    let table = doc
        .split("## Exit codes")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let documented: BTreeSet<String> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| code"))
        .flat_map(|l| {
            l.trim_matches('|')
                .split('|')
                .next()
                .unwrap()
                .split(',')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|c| c.chars().all(|c| c.is_ascii_digit()) && !c.is_empty())
        .collect();
    assert_eq!(documented, binary, "docs/operating.md's exit codes");
}
