//! `nnc run --bounds-checked`: examples trained for one epoch with every load
//! and store of the compiled steps compared with its buffer's extent. No
//! access may leave its buffer (that would be an error, exit code 1), and the
//! results are those of the unchecked build, bit for bit (the checks only
//! add comparisons). The examples here train an epoch in under 2 s each on 2
//! cores; the others (MNIST, the language models, norms) take minutes per
//! epoch and are left out until `nnc run` can stop after a few steps.

mod common;
use common::*;

/// `nnc run EXAMPLE --epochs 1 [--bounds-checked] --quiet`, which must
/// succeed: its result lines (on stderr).
fn one_epoch(example: &str, checked: bool) -> String {
    let file = format!("examples/{example}.nn");
    let mut args = vec!["run", file.as_str(), "--epochs", "1", "--quiet"];
    if checked {
        args.push("--bounds-checked");
    }
    let out = nnc(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nnc {args:?} failed ({}):\n{stderr}", out.status);
    assert!(stderr.contains("final train loss"), "{stderr}");
    stderr.into_owned()
}

#[test]
fn small_examples_train_bounds_checked_as_unchecked() {
    for example in ["mlp_digits", "cnn_digits", "ridge_diabetes", "optimizers"] {
        assert_eq!(one_epoch(example, true), one_epoch(example, false), "{example}");
    }
}
