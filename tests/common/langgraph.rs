//! The LangGraph harness (tests/langgraph/setup.sh: a venv with the real savers, a Redis Stack)
//! and its real-client side, tests/langgraph/proof.py: for tests/langgraph.rs and
//! tests/forget_langgraph.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::stderr;

/// What tests/langgraph/setup.sh printed, or why it could not.
pub fn harness() -> Result<HashMap<String, String>, String> {
    super::setup_script("tests/langgraph/setup.sh")
}

pub fn python(h: &HashMap<String, String>) -> PathBuf {
    Path::new(&h["venv"]).join("bin/python")
}

/// Runs proof.py with `args`, which must succeed.
pub fn proof(h: &HashMap<String, String>, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/langgraph/proof.py");
    let out = Command::new(python(h))
        .arg(script)
        .args(args)
        .output()
        .expect("run proof.py");
    assert!(
        out.status.success(),
        "proof.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}
