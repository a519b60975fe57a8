//! Helpers shared by the end-to-end tests that train examples through the
//! real `nnc` binary (`tests/vision.rs`, `tests/sequence.rs`).
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One training process at a time: each already uses both cores, and several
/// at once only oversubscribe the machine (and once ended one without a word:
/// callers print the exit status to tell a signal from an error).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `nnc ARGS` run from the repository root, one at a time.
pub fn nnc(args: &[&str]) -> Output {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(env!("CARGO_BIN_EXE_nnc")).args(args).current_dir(root()).output().expect("run nnc")
}

/// `nnc run FILE --json`, which must succeed, as its JSON summary.
pub fn run_json(file: &str) -> Value {
    let out = nnc(&["run", file, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nnc run {file} failed ({}):\n{stderr}", out.status);
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("valid JSON")
}

/// The value of run `run`'s first metric whose name starts with `prefix`
/// (`"accuracy on"`, `"loss on"`).
pub fn metric(v: &Value, run: &str, prefix: &str) -> f64 {
    v["runs"][run]["metrics"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.starts_with(prefix)))
        .and_then(|(_, v)| v.as_f64())
        .unwrap_or_else(|| panic!("no `{prefix}` metric for run `{run}` in {v}"))
}
