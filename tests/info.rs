//! `nnc info`: the layer table of each training run's model, through the real
//! binary. Every number below is worked out by hand in the comments.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn nnc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nnc")).args(args).current_dir(root()).output().expect("run nnc")
}

/// `nnc info FILE --json`, parsed.
fn info_json(file: &str) -> Value {
    let out = nnc(&["info", file, "--json"]);
    assert!(out.status.success(), "nnc info {file} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("valid JSON")
}

/// The layer with this path (`""` is the model itself).
fn layer<'a>(run: &'a Value, path: &str) -> &'a Value {
    run["layers"].as_array().expect("layers").iter().find(|l| l["path"] == path).unwrap_or_else(|| panic!("no layer `{path}` in {run}"))
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The receptive field `[h, w]`, or `None` for `null`.
fn field(l: &Value) -> Option<[u64; 2]> {
    l["receptive_field"].as_array().map(|a| [int(&a[0]), int(&a[1])])
}

fn output(l: &Value) -> String {
    l["output"].to_string()
}

/// A scratch `.nn` file (its data path made absolute), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, text: &str) -> Scratch {
        let digits = root().join("examples/data/digits.csv").display().to_string();
        let path = std::env::temp_dir().join(format!("nnc-info-{name}-{}.nn", std::process::id()));
        std::fs::write(&path, text.replace("data/digits.csv", &digits)).expect("write .nn");
        Scratch(path)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn cnn_digits_parameters_shapes_fields_and_flops() {
    let v = info_json("examples/cnn_digits.nn");
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["run"], "cnn");
    assert_eq!(run["data"], "digits.train");
    assert_eq!(run["input"].to_string(), r#"["B",64]"#);

    let paths: Vec<&str> = run["layers"].as_array().unwrap().iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["", "c1", "c2", "l1", "l2"], "one row per module call, in call order");

    let (c1, c2, l1, l2) = (layer(run, "c1"), layer(run, "c2"), layer(run, "l1"), layer(run, "l2"));
    // Parameters: weights plus biases.
    assert_eq!(int(&c1["params"]), 32 * 9 + 32); // 320
    assert_eq!(int(&c2["params"]), 64 * 32 * 9 + 64); // 18496
    assert_eq!(int(&l1["params"]), 1024 * 128 + 128);
    assert_eq!(int(&l2["params"]), 128 * 10 + 10);
    let total = 320 + 18496 + (1024 * 128 + 128) + (128 * 10 + 10);
    assert_eq!(int(&run["total_params"]), total);
    assert_eq!(int(&layer(run, "")["params"]), total, "the model's row covers its submodules");

    // Output shapes, with the batch symbolic.
    assert_eq!(output(c1), r#"["B",32,8,8]"#);
    assert_eq!(output(c2), r#"["B",64,8,8]"#);
    assert_eq!(output(l1), r#"["B",128]"#);
    assert_eq!(output(layer(run, "")), r#"["B",10]"#);

    // Receptive fields: 3x3 → 3, another 3x3 → 5, the 2x2/2 max pool → 6,
    // kept after flattening.
    assert_eq!(field(c1), Some([3, 3]));
    assert_eq!(field(c2), Some([5, 5]));
    assert_eq!(field(l1), Some([6, 6]));
    assert_eq!(field(l2), Some([6, 6]));
    assert_eq!(field(layer(run, "")), Some([6, 6]));

    // c1: [32, 9] @ [9, 64 positions] = 2·32·9·64, plus the bias added to 32·64 outputs.
    assert_eq!(int(&c1["flops"]), 2 * 32 * 9 * 64 + 32 * 64);
    // c2: [64, 288] @ [288, 64] and its bias.
    assert_eq!(int(&c2["flops"]), 2 * 64 * 288 * 64 + 64 * 64);
    // l1: [1, 1024] @ [1024, 128] and its bias.
    assert_eq!(int(&l1["flops"]), 2 * 1024 * 128 + 128);
    assert_eq!(int(&l2["flops"]), 2 * 128 * 10 + 10);
    // The whole forward adds the two ReLUs after the convolutions (32·64 and
    // 64·64 elements), the max pool's reduction (it reads all 4·1024 window
    // elements) and the ReLU after l1.
    let children: u64 = [c1, c2, l1, l2].iter().map(|l| int(&l["flops"])).sum();
    let glue = 32 * 64 + 64 * 64 + 4 * 1024 + 128;
    assert_eq!(int(&run["total_flops"]), children + glue);
    assert_eq!(int(&layer(run, "")["flops"]), children + glue);
}

#[test]
fn cnn_digits_table_is_readable() {
    let out = nnc(&["info", "examples/cnn_digits.nn"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "train cnn: Cnn on digits.train, input x: [B, 64]");
    assert!(lines[1].starts_with("layer") && lines[1].contains("receptive field"), "{text}");
    // The model's row, then its submodules indented under it.
    assert!(lines[2].starts_with("(model)") && lines[2].contains("Cnn"), "{text}");
    let c1: Vec<&str> = lines[3].split_whitespace().collect();
    assert!(lines[3].starts_with("  c1 "), "{text}");
    assert_eq!(c1, ["c1", "Conv3x3", "[B,", "32,", "8,", "8]", "320", "3x3", "38912"]);
    assert!(lines[4].contains("18496") && lines[4].contains("5x5"), "{text}");
    assert!(lines[5].starts_with("  l1 ") && lines[5].contains("6x6"), "{text}");
    assert_eq!(*lines.last().unwrap(), format!("total: 151306 parameters, {} FLOPs per example (2.68 M)", total_flops()));
}

/// cnn_digits' total, as derived in the test above.
fn total_flops() -> u64 {
    (2 * 32 * 9 * 64 + 32 * 64)
        + (2 * 64 * 288 * 64 + 64 * 64)
        + (2 * 1024 * 128 + 128)
        + (2 * 128 * 10 + 10)
        + (32 * 64 + 64 * 64 + 4 * 1024 + 128)
}

#[test]
fn mlp_digits_has_no_receptive_field() {
    let v = info_json("examples/mlp_digits.nn");
    let run = &v["runs"][0];
    assert_eq!(run["run"], "mlp");
    for (path, params) in [("l1", 64 * 256 + 256), ("l2", 256 * 256 + 256), ("l3", 256 * 10 + 10)] {
        let l = layer(run, path);
        assert_eq!(int(&l["params"]), params, "{path}");
        assert_eq!(l["depth"], 1);
        assert_eq!(field(l), None, "{path}: no window anywhere, so no receptive field");
    }
    assert_eq!(int(&run["total_params"]), 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
    assert_eq!(int(&layer(run, "l2")["flops"]), 2 * 256 * 256 + 256);
    // Three products, three biases, two ReLUs.
    let flops = 2 * (64 * 256 + 256 * 256 + 256 * 10) + (256 + 256 + 10) + (256 + 256);
    assert_eq!(int(&run["total_flops"]), flops);
    let out = nnc(&["info", "examples/mlp_digits.nn"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("  l1 ") && l.contains(" - ")), "{text}");
}

/// Stride, dilation, a stack of residual blocks and a flattened head.
const STRIDED: &str = r#"
module Conv(cin: int, cout: int, k: int, s: int, p: int, d: int) {
  param K: [cout, cin, k, k] = he_normal
  param b: [cout]            = zeros
  fn forward(x: [B, cin, H, W]) -> [B, cout, OH, OW] =
    conv2d(x, K, stride: s, padding: p, dilation: d) + reshape(b, [cout, 1, 1])
}

module Linear(in: int, out: int) {
  param W: [in, out] = he_normal
  param b: [out]     = zeros
  fn forward(x: [B, in]) -> [B, out] = x @ W + b
}

module Res(c: int) {
  first  = Conv(c, c, 3, 1, 1, 1)
  second = Conv(c, c, 3, 1, 1, 1)
  fn forward(x: [B, c, H, W]) -> [B, c, H, W] = x + second(relu(first(x)))
}

module Net {
  stem   = Conv(1, 4, 3, 2, 1, 1)    // stride 2: 8x8 -> 4x4
  blocks = [Res(4); 2]
  wide   = Conv(4, 4, 3, 1, 2, 2)    // dilation 2: spans 5 pixels
  head   = Linear(64, 10)
  fn forward(x: [B, 64]) -> [B, 10] =
    reshape(x, [B, 1, 8, 8]) |> stem |> relu |> blocks |> wide |> flatten |> head
}

data digits = csv("data/digits.csv", label: "label", scale: 1/16) {
  train = rows[0..1437]
  test  = rows[1437..]
}

train net = Net on digits.train { loss = cross_entropy, optimizer = adam, batch = 32, epochs = 1 }
"#;

#[test]
fn stride_dilation_and_residual_branches() {
    let scratch = Scratch::new("strided", STRIDED);
    let file = scratch.path();
    let v = info_json(&file);
    let run = &v["runs"][0];
    let paths: Vec<(&str, u64)> =
        run["layers"].as_array().unwrap().iter().map(|l| (l["path"].as_str().unwrap(), int(&l["depth"]))).collect();
    #[rustfmt::skip]
    let expected = [
        ("", 0), ("stem", 1), ("blocks", 1),
        ("blocks.0", 2), ("blocks.0.first", 3), ("blocks.0.second", 3),
        ("blocks.1", 2), ("blocks.1.first", 3), ("blocks.1.second", 3),
        ("wide", 1), ("head", 1),
    ];
    assert_eq!(paths, expected);
    assert_eq!(layer(run, "blocks")["module"], "[Res; 2]");

    // r ← r + (k_eff − 1)·j, j ← j·s. The stem: 1 + 2·1 = 3, then j = 2.
    assert_eq!(field(layer(run, "stem")), Some([3, 3]));
    assert_eq!(output(layer(run, "stem")), r#"["B",4,4,4]"#);
    // Each 3x3 conv after it adds 2·2 = 4; a block's sum takes the larger branch.
    assert_eq!(field(layer(run, "blocks.0.first")), Some([7, 7]));
    assert_eq!(field(layer(run, "blocks.0.second")), Some([11, 11]));
    assert_eq!(field(layer(run, "blocks.0")), Some([11, 11]));
    assert_eq!(field(layer(run, "blocks.1")), Some([19, 19]));
    assert_eq!(field(layer(run, "blocks")), Some([19, 19]));
    // Dilation 2: k_eff = 2·(3 − 1) + 1 = 5, so 19 + 4·2 = 27; kept by the flattened head.
    assert_eq!(field(layer(run, "wide")), Some([27, 27]));
    assert_eq!(output(layer(run, "wide")), r#"["B",4,4,4]"#);
    assert_eq!(field(layer(run, "head")), Some([27, 27]));

    // Parameters: a 4→4 3x3 conv has 4·4·9 + 4 = 148.
    assert_eq!(int(&layer(run, "stem")["params"]), 4 * 9 + 4);
    assert_eq!(int(&layer(run, "blocks.0")["params"]), 2 * 148);
    assert_eq!(int(&layer(run, "blocks")["params"]), 4 * 148);
    assert_eq!(int(&run["total_params"]), 40 + 4 * 148 + 148 + 650);

    // FLOPs: the stem is [4, 9] @ [9, 16 positions] plus its bias on 4·16 outputs.
    assert_eq!(int(&layer(run, "stem")["flops"]), 2 * 4 * 9 * 16 + 4 * 16);
    // A block: two [4, 36] @ [36, 16] convs with biases, a ReLU and the residual sum.
    let conv = 2 * 4 * 36 * 16 + 64;
    assert_eq!(int(&layer(run, "blocks.0.first")["flops"]), conv);
    assert_eq!(int(&layer(run, "blocks.0")["flops"]), 2 * conv + 64 + 64);
    assert_eq!(int(&layer(run, "blocks")["flops"]), 2 * (2 * conv + 64 + 64));

    // The text table indents each level by two spaces.
    let out = nnc(&["info", &file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("      blocks.0.first ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("    blocks.1 ") && l.contains("19x19")), "{text}");
}

#[test]
fn errors_are_diagnostics() {
    let out = nnc(&["info", "examples/does_not_exist.nn"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    let bad = STRIDED.replace("head   = Linear(64, 10)", "head   = Linear(63, 10)");
    let scratch = Scratch::new("bad", &bad);
    let file = scratch.path();
    let out = nnc(&["info", &file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("63"), "the shape error is reported:\n{stderr}");
    assert!(out.stdout.is_empty(), "no table for a broken model");
}

#[test]
fn language_reference_shows_the_real_table() {
    let out = nnc(&["info", "examples/cnn_digits.nn"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let doc = std::fs::read_to_string(root().join("docs/language.md")).expect("docs/language.md");
    assert!(doc.contains(&format!("```text\n{table}```")), "docs/language.md's `nnc info` example differs from:\n{table}");
}
