//! The documentation as shipped: the README stays a front page whose first lines give the two
//! commands a newcomer types, every page of `docs/` is reachable from it, and every relative link
//! between pages (file and `#anchor`) resolves, and the Redis ACL list an operator is given holds
//! every command the ACL test grants. No server needed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const PAGES: &[&str] = &[
    "docs/operating.md",
    "docs/deploying.md",
    "docs/layouts.md",
    "docs/scale-out.md",
    "docs/performance.md",
    "docs/architecture.md",
    "docs/reference.md",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The lines outside fenced code blocks, where Markdown reads links and headings.
fn prose(doc: &str) -> Vec<&str> {
    let mut fenced = false;
    doc.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens; a repeated
/// heading gets `-1`, `-2`, ...
fn anchors(doc: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for line in prose(doc) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')) else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the `[text](target)` links in the prose, inline code left out.
fn links(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(doc) {
        // Text between backticks is code, not a link.
        let text: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').expect("a link's closing parenthesis");
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// Every relative link of `page` names a file that exists and, with `#anchor`, a heading in it.
fn check_links(page: &str) {
    let doc = read(page);
    let dir = Path::new(page).parent().unwrap();
    for link in links(&doc) {
        if link.starts_with("http://") || link.starts_with("https://") {
            continue;
        }
        let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
        let target = if file.is_empty() {
            PathBuf::from(page)
        } else {
            normalize(&dir.join(file))
        };
        let path = root().join(&target);
        assert!(
            path.exists(),
            "{page}: link {link}: no {}",
            target.display()
        );
        if !anchor.is_empty() {
            let text = read(target.to_str().unwrap());
            assert!(
                anchors(&text).iter().any(|a| a == anchor),
                "{page}: link {link}: no heading #{anchor} in {}; there are {:?}",
                target.display(),
                anchors(&text)
            );
        }
    }
}

/// `docs/../README.md` as `README.md`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                assert!(out.pop(), "{} leaves the repository", path.display())
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_readme_is_a_front_page_opening_with_make_demo_and_make_test() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines, at most 250: move detail to docs/"
    );
    let head: Vec<&str> = readme.lines().take(10).collect();
    for command in ["make demo", "make test"] {
        assert!(
            head.iter().any(|l| l.trim_start().starts_with(command)),
            "the README's first lines give `{command}`: {head:#?}"
        );
    }
    // And both stay true: the Makefile has the targets.
    let makefile = read("Makefile");
    for target in ["demo:", "test:"] {
        assert!(
            makefile.lines().any(|l| l.starts_with(target)),
            "no `{target}` target in the Makefile"
        );
    }
}

#[test]
fn every_link_between_pages_resolves() {
    check_links("README.md");
    for page in PAGES {
        check_links(page);
    }
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = read("README.md");
    let linked = links(&readme);
    for page in PAGES {
        assert!(
            linked.iter().any(|l| l.split('#').next() == Some(*page)),
            "README.md links no {page}"
        );
    }
}

#[test]
fn operators_read_what_to_alert_on_first() {
    let doc = read("docs/operating.md");
    let first = prose(&doc)
        .into_iter()
        .find(|l| l.starts_with("## "))
        .expect("a section in docs/operating.md");
    assert_eq!(first, "## What to alert on");
}

#[test]
fn anchors_follow_github() {
    let doc = "# A run's result\n## Live chat first: the pace\n```\n# not a heading\n```\n## `sweeper status`\n## Live chat first: the pace\n";
    assert_eq!(
        anchors(doc),
        [
            "a-runs-result",
            "live-chat-first-the-pace",
            "sweeper-status",
            "live-chat-first-the-pace-1"
        ]
    );
    assert_eq!(
        links("see [a](x.md#y) and `[b](not-a-link)` then [c](../z.md)"),
        ["x.md#y", "../z.md"]
    );
}

/// tests/cluster.rs runs a sharded cluster sweep with exactly the commands `sweeper grants` gives
/// it; each must be one the documentation lists for an operator.
#[test]
fn the_acl_commands_tested_are_the_documented_ones() {
    let doc = read("docs/deploying.md");
    let section: String = doc
        .split("### Redis ACL")
        .nth(1)
        .expect("a Redis ACL section in docs/deploying.md")
        .split("\n## ")
        .next()
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .args(["grants", "run", "--redis-cluster", "--shard", "0/3"])
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<String> = printed
        .lines()
        .find(|l| l.starts_with("ACL SETUSER"))
        .expect("an ACL rule")
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('+'))
        .map(|c| c.replace('|', " ").to_uppercase())
        .collect();
    assert!(commands.len() > 10, "{commands:?}");
    for command in commands {
        assert!(
            section.contains(&format!("`{command}")),
            "`sweeper grants` gives {command}, which docs/deploying.md does not list"
        );
    }
}
