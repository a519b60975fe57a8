//! Class labels outside the classes of the logits stop a run with an error at
//! the op that takes them (`Op::CheckIndex`, and the `accuracy` metric), as
//! an embedding's ids outside its table do: before, `cross_entropy`,
//! `one_hot` and `gather` silently matched no class (a loss of 0.0) and
//! `accuracy` counted the row as wrong.

mod common;
use common::*;

/// A linear classifier with `outputs` logits on 256 digits, trained one epoch
/// with the loss `loss` (a function of `m`, `x`, `y`) and `metrics`.
fn program(loss: &str, outputs: usize, metrics: &str) -> String {
    let digits = root().join("examples/data/digits.csv");
    format!(
        "module Linear(in: int, out: int) {{\n  param W: [in, out] = he_normal\n  param b: [out] = zeros\n  fn forward(x: [B, in]) -> [B, out] = x @ W + b\n}}\n\
         data digits = csv(\"{}\", label: \"label\", scale: 1/16) {{ train = rows[0..256], test = rows[1437..1500] }}\n\
         fn loss(m: Linear, x: [B, 64], y: [B] int) -> scalar = {loss}\n\
         train net = Linear(64, {outputs}) on digits.train {{ loss = loss, optimizer = sgd(lr: 0.1), batch = 64, epochs = 1{metrics} }}\n",
        digits.display()
    )
}

/// `nnc run` on `source` (written to a scratch file named `name.nn`): its exit
/// code and stderr.
fn run(name: &str, source: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("nnc-labels-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let file = dir.join(format!("{name}.nn"));
    std::fs::write(&file, source).expect("write");
    let out = nnc(&["run", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The lines of `program` that hold the loss and the `train` block.
const LOSS_LINE: usize = 7;
const TRAIN_LINE: usize = 8;

/// Exit code 1 and a message with the bad label (any, if `None`), the
/// classes, and the program's line `line` (where the op is).
fn assert_refused(name: &str, source: &str, label: Option<&str>, classes: usize, line: usize) {
    let (code, stderr) = run(name, source);
    assert_eq!(code, Some(1), "{stderr}");
    let range = format!("is not a class: the classes here are 0..{classes}");
    assert!(stderr.contains(&range), "expected `{range}`:\n{stderr}");
    if let Some(label) = label {
        assert!(stderr.contains(&format!("label {label} {range}")), "expected label {label}:\n{stderr}");
    }
    assert!(stderr.contains(&format!("{name}.nn:{line}:")), "the error points at line {line}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cross_entropy_with_labels_past_the_classes_is_an_error() {
    let source = program("cross_entropy(m(x), y + 20)", 10, "");
    assert_refused("cross_entropy", &source, Some("20"), 10, LOSS_LINE);
}

#[test]
fn one_hot_of_labels_past_the_classes_is_an_error() {
    let source = program("mse(softmax(m(x)), one_hot(y + 20, 10))", 10, "");
    assert_refused("one_hot", &source, Some("20"), 10, LOSS_LINE);
}

#[test]
fn gather_of_labels_past_the_classes_is_an_error() {
    let source = program("-mean(gather(log_softmax(m(x)), y + 20))", 10, "");
    assert_refused("gather", &source, Some("20"), 10, LOSS_LINE);
}

/// One logit per row: the digits' labels 1-9 are not among its classes.
#[test]
fn accuracy_with_labels_past_the_logits_is_an_error() {
    let source = program("mean(m(x) * m(x))", 1, ", metrics = [accuracy on digits.test]");
    assert_refused("accuracy", &source, None, 1, TRAIN_LINE);
}

#[test]
fn negative_labels_are_an_error() {
    let source = program("cross_entropy(m(x), y - 1)", 10, "");
    assert_refused("negative", &source, Some("-1"), 10, LOSS_LINE);
}

/// The positions a mask skips may hold any label (PyTorch's ignore_index,
/// -100); where the mask keeps them they are checked.
#[test]
fn a_mask_exempts_the_labels_it_skips() {
    let skipped = program("cross_entropy(m(x), y * 0 - 100, mask: padding_mask(y * 0 - 100, -100))", 10, "");
    let (code, stderr) = run("masked", &skipped);
    assert_eq!(code, Some(0), "{stderr}");
    let kept = program("cross_entropy(m(x), y * 0 - 100, mask: padding_mask(y, 100))", 10, "");
    assert_refused("kept", &kept, Some("-100"), 10, LOSS_LINE);
}
