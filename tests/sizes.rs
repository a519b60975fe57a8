//! Sizes are checked arithmetic (issue 17, part 1), end to end through the
//! real `nnc` binary: what `nnc check` reports is in `tests/ui/size_*`; these
//! are the cases `nnc run` used to crash on or get wrong, and the batch size
//! that only a training run substitutes.

mod common;
use common::nnc;

/// `nnc run FILE`, which must fail with exit code 1 and a first line `title`.
fn run_fails_with(file: &str, title: &str) -> String {
    let out = nnc(&["run", file]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "nnc run {file} should fail with exit code 1 ({}):\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "nnc run {file} panicked:\n{stderr}");
    assert_eq!(stderr.lines().next(), Some(title), "nnc run {file}:\n{stderr}");
    stderr
}

#[test]
fn a_reshape_whose_count_wraps_is_refused_before_training() {
    // On main the product wrapped to 64, the shape check passed and the
    // compiled step read outside its buffers (SIGSEGV, or SIGBUS here).
    run_fails_with(
        "tests/ui/size_reshape_product_wraps.nn",
        "Error: [B, 148684, 135984, 1824726041] has B × about 3.7e19 elements, more than a tensor can hold",
    );
}

#[test]
fn a_count_too_large_once_the_batch_is_known_is_refused_at_its_op() {
    // `nnc check` sees this with B = 8 (its gradient check's batch); training
    // substitutes the real batch, 64, before any buffer is planned.
    let stderr = run_fails_with(
        "tests/ui/size_batch_times_size_too_large.nn",
        "Error: [B, 30000, 30000] has about 5.8e10 elements with B = 64, more than a tensor can hold",
    );
    assert!(stderr.contains("size_batch_times_size_too_large.nn:6:13"), "the error points at the `+`:\n{stderr}");
}

#[test]
fn a_report_of_a_count_that_wraps_prints_nothing_wrong() {
    // On main this printed `count: 23040.000000`.
    let stderr = run_fails_with(
        "tests/ui/size_ones_count_wraps.nn",
        "Error: [2974136, 2418296, 2564776] has about 1.8e19 elements, more than a tensor can hold",
    );
    assert!(!stderr.contains("23040"), "{stderr}");
}
