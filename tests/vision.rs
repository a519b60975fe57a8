//! The vision family end to end (issue 4): every example trains to its bar
//! through the real `nnc` binary, and training vs evaluation mode behaves as
//! PyTorch's `train()` / `eval()` do.

use serde_json::Value;
use std::path::PathBuf;

mod common;
use common::{metric, nnc, root, run_json};

fn test_accuracy(v: &Value, run: &str) -> f64 {
    metric(v, run, "accuracy on")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nnc-vision-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Train `file` and check that run `run` reaches `bar` test accuracy.
fn reaches(file: &str, run: &str, bar: f64) {
    let acc = test_accuracy(&run_json(file), run);
    assert!(acc >= bar, "{file}: test accuracy {acc} is below {bar}");
}

/// PyTorch and JAX reach 95.3% with this recipe (issue 4).
#[test]
fn cnn_digits_reaches_95_percent() {
    reaches("examples/cnn_digits.nn", "cnn", 0.950);
}

#[test]
fn cnn_mnist_reaches_98_percent() {
    reaches("examples/cnn_mnist.nn", "cnn", 0.980);
}

#[test]
fn resnet_mnist_reaches_98_3_percent() {
    reaches("examples/resnet_mnist.nn", "resnet", 0.983);
}

/// 98.63% with two blocks per stage, an overlapping stem and a layer norm
/// before the head (docs/examples/vision.md lists the variants tried).
#[test]
fn convnext_mnist_reaches_98_3_percent() {
    reaches("examples/convnext_mnist.nn", "convnext", 0.983);
}

/// Each of the four normalisations trains the same small CNN to 97%, and the
/// run ends with the comparison table.
#[test]
fn every_normalisation_reaches_97_percent() {
    let out = nnc(&["run", "examples/norms.nn"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for run in ["batch_norm", "layer_norm", "instance_norm", "group_norm"] {
        let row =
            stderr.lines().find(|l| l.starts_with(run) && !l.contains(':')).unwrap_or_else(|| panic!("no table row for {run}:\n{stderr}"));
        let pct: f64 = row.split_whitespace().last().and_then(|p| p.trim_end_matches('%').parse().ok()).unwrap_or(0.0);
        assert!(pct >= 97.0, "{run}: {pct}% is below 97% ({row})");
    }
}

/// A model with batch norm and dropout: gradients agree with finite
/// differences (training mode, one fixed dropout mask), the running
/// statistics are saved in the checkpoint and move away from their initial
/// values, and evaluation is deterministic (no dropout, running statistics).
#[test]
fn batch_norm_and_dropout_train_and_evaluate_in_their_modes() {
    let dir = scratch("bn");
    let digits = root().join("examples/data/digits.csv").display().to_string();
    let program = format!(
        r#"
module ConvBn(cin: int, cout: int) {{
  param K: [cout, cin, 3, 3] = he_normal
  param gamma: [cout] = ones
  param beta: [cout] = zeros
  buffer mean: [cout] = zeros
  buffer var: [cout] = ones
  fn forward(x: [B, cin, H, W]) -> [B, cout, H, W] = batch_norm(conv2d(x, K, padding: 1), gamma, beta, mean, var)
}}
module Net {{
  c = ConvBn(1, 8)
  param W: [128, 10] = he_normal
  fn forward(x: [B, 64]) -> [B, 10] = dropout(max_pool(relu(c(reshape(x, [B, 1, 8, 8]))), 2) |> flatten, 0.25) @ W
}}
data digits = csv("{digits}", label: "label", scale: 1/16) {{
  train = rows[0..1437] shuffle(seed: 0)
  test  = rows[1437..]
}}
train net = Net on digits.train {{
  loss = cross_entropy, optimizer = adam(lr: 3e-3), batch = 64, epochs = 10
  metrics = [accuracy on digits.test, loss on digits.test]
  checkpoint = "bn.safetensors"
}}
"#
    );
    let file = dir.join("bn.nn");
    std::fs::write(&file, program).unwrap();
    let file = file.to_str().unwrap();
    let check = nnc(&["check", file]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && text.contains("every gradient agrees"), "{text}{}", String::from_utf8_lossy(&check.stderr));
    assert!(text.contains("c.gamma") && !text.contains("c.mean"), "buffers are not parameters:\n{text}");

    let a = run_json(file);
    let b = run_json(file);
    assert_eq!(a["runs"]["net"]["metrics"], b["runs"]["net"]["metrics"], "training with dropout is deterministic given the seed");
    let acc = test_accuracy(&a, "net");
    assert!(acc > 0.85, "a small conv net with batch norm reaches {acc}");

    // The running statistics were trained and saved: no longer 0 and 1.
    let bytes = std::fs::read(dir.join("bn.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    for (name, untouched) in [("c.mean", 0.0f32), ("c.var", 1.0f32)] {
        let offs = &header[name]["data_offsets"];
        let (s, e) = (offs[0].as_u64().unwrap() as usize, offs[1].as_u64().unwrap() as usize);
        let values: Vec<f32> = data[s..e].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values.len(), 8);
        assert!(values.iter().any(|v| (v - untouched).abs() > 1e-3), "{name} was never updated: {values:?}");
    }
}
