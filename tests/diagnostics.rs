//! Golden tests for error messages: every `tests/ui/<case>.nn` holds one
//! mistake a person might make, and `tests/ui/<case>.stderr` holds exactly
//! what `nnc check tests/ui/<case>.nn` prints for it (without colours).
//!
//! Each case is parsed and checked in-process (parse, data loading,
//! elaboration, gradient check — everything `nnc check` does); the test fails
//! if a case produces no error, panics, has no `.stderr` file, or renders
//! differently from its `.stderr` file.
//!
//! After changing a message on purpose, regenerate the expected files with
//!
//!     UPDATE_GOLDEN=1 cargo test --test diagnostics
//!
//! and read the diff before committing it.

use nnc_compiler::diagnostic::render;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("ui")
}

/// Every case name (file stem of a `.nn` file in `tests/ui`), sorted.
fn cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ui_dir())
        .expect("tests/ui exists")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let stem = path.file_stem()?.to_string_lossy().into_owned();
            (path.extension()? == "nn").then_some(stem)
        })
        .collect();
    names.sort();
    names
}

/// What `nnc check tests/ui/<name>.nn` prints on stderr, computed in-process;
/// `Err` if the case has no error or the compiler panicked.
fn render_case(name: &str) -> Result<String, String> {
    // Relative to the package root, as `nnc check tests/ui/<case>.nn` sees it
    // there: messages that show a resolved data path then match the binary's.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).map_err(|e| format!("cannot enter the package root: {e}"))?;
    let dir = Path::new("tests").join("ui");
    let source = std::fs::read_to_string(dir.join(format!("{name}.nn"))).map_err(|e| format!("cannot read {name}.nn: {e}"))?;
    let diagnostics = std::panic::catch_unwind(|| match nnc_compiler::syntax::parse(&source) {
        Err(d) => d,
        Ok(program) => match nnc_runtime::outputs::check(&program, &dir.join(format!("{name}.nn")), &dir)
            .and_then(|()| nnc_runtime::check::check(&program, &dir))
        {
            Err(d) => d,
            Ok(_) => Vec::new(),
        },
    })
    .map_err(|_| format!("{name}: the compiler panicked"))?;
    if diagnostics.is_empty() {
        return Err(format!("{name}: expected an error, but `nnc check` accepted the program"));
    }
    Ok(render(&diagnostics, &format!("tests/ui/{name}.nn"), &source, false))
}

#[test]
fn ui_cases_match_their_stderr_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0");
    let names = cases();
    assert!(names.len() >= 30, "expected at least 30 cases in tests/ui, found {}", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let actual = match render_case(name) {
            Ok(text) => text,
            Err(why) => {
                failures.push(why);
                continue;
            }
        };
        let path = ui_dir().join(format!("{name}.stderr"));
        if update {
            std::fs::write(&path, &actual).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Err(_) => failures
                .push(format!("{name}: missing tests/ui/{name}.stderr (run with UPDATE_GOLDEN=1 to create it); the output is:\n{actual}")),
            Ok(expected) if expected != actual => {
                failures.push(format!("{name}: output differs from tests/ui/{name}.stderr\n--- expected\n{expected}\n--- actual\n{actual}"))
            }
            Ok(_) => {}
        }
    }
    // A `.stderr` without its `.nn` is a leftover from a renamed case.
    for entry in std::fs::read_dir(ui_dir()).expect("tests/ui exists").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "stderr") && !path.with_extension("nn").exists() {
            failures.push(format!("{} has no matching .nn file", path.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} ui cases failed:\n\n{}", failures.len(), names.len(), failures.join("\n\n"));
}

/// The real binary prints the same text, exits with 1, and never panics.
#[test]
fn nnc_check_binary_prints_the_same_diagnostics() {
    for name in ["matmul_inner_dim_mismatch", "missing_close_paren"] {
        let output = Command::new(env!("CARGO_BIN_EXE_nnc"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("NO_COLOR", "1")
            .args(["check", &format!("tests/ui/{name}.nn")])
            .output()
            .expect("nnc runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stdout.contains("panicked") && !stderr.contains("panicked"), "{name}: nnc panicked:\n{stderr}");
        assert_eq!(output.status.code(), Some(1), "{name}: expected exit code 1\n{stderr}");
        let expected = std::fs::read_to_string(ui_dir().join(format!("{name}.stderr"))).expect("the .stderr file exists");
        assert_eq!(stderr, expected, "{name}: `nnc check` prints something else than the golden file");
    }
}
