//! Numbers on the command line are checked against their rules
//! (`nnc_compiler::elaborate::range`), and the reference's table of valid
//! numbers is the rules' own. (Numbers in sources have golden cases in `tests/ui`.)

mod common;

use common::nnc;
use nnc_compiler::elaborate::range;

/// `nnc ARGS` must exit with 1 and say `message` on stderr.
fn refused(args: &[&str], message: &str) {
    let out = nnc(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "nnc {args:?} should exit with 1:\n{stderr}");
    assert!(stderr.contains(message), "nnc {args:?} should say {message:?}, said:\n{stderr}");
}

#[test]
fn sample_flags_out_of_range_are_refused() {
    // Each of these was accepted: NaN sampled from NaN probabilities, 0 beams or top-0 produced nothing.
    let base = ["sample", "examples/gpt_charlm.nn", "--checkpoint", "gpt_charlm.safetensors"];
    let cases = [
        (["--temperature", "NaN"], "`--temperature` must be a number above 0, found NaN"),
        (["--temperature", "0"], "`--temperature` must be a number above 0, found 0"),
        (["--k", "0"], "`--k` must be a whole number of at least 1, found 0"),
        (["--width", "0"], "`--width` must be a whole number from 1 to 256, found 0"),
        (["--width", "1.5"], "`--width` must be a whole number from 1 to 256, found 1.5, which is not a whole number"),
        (["--tokens=-3", "--seed=0"], "`--tokens` must be a whole number of at least 1, found -3"),
    ];
    for (flag, message) in cases {
        let args: Vec<&str> = base.iter().copied().chain(flag).collect();
        refused(&args, message);
    }
}

#[test]
fn zero_epochs_are_refused() {
    // `--epochs 0` exited with 0, a loss of NaN and an empty plot.
    refused(&["run", "examples/mlp_digits.nn", "--epochs", "0"], "`--epochs` must be a whole number of at least 1, found 0");
    refused(&["run", "examples/mlp_digits.nn", "--epochs", "1e400"], "`--epochs` must be a whole number of at least 1, found inf");
}

#[test]
fn usage_errors_exit_with_one() {
    refused(&["run", "examples/mlp_digits.nn", "--epoch", "2"], "unexpected argument '--epoch'");
}

#[test]
fn the_reference_lists_every_rule() {
    let reference = std::fs::read_to_string(common::root().join("docs").join("language.md")).expect("docs/language.md");
    let table = range::table();
    assert!(reference.contains(&table), "docs/language.md's \"Valid numbers\" table is not the rules' own; replace it with:\n\n{table}");
}
