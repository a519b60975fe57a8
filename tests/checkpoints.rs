//! Checkpoints through the real `nnc` binary: a resumed run continues
//! exactly, a checkpoint holding NaN or a broken file is refused with the
//! tensor or the file named, no output replaces a file the user saved, and
//! `kill -9` mid-write leaves no temporary files behind.

mod common;

use common::{nnc, root};
use nnc_runtime::checkpoint::{self, LoadedTensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A scratch directory for a test's own files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nnc-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn digits() -> String {
    root().join("examples/data/digits.csv").display().to_string()
}

/// A small conv net with batch norm (running statistics: buffers) and
/// dropout (a fresh mask every step), on shuffled digits in batches of 100:
/// 1437 rows make 14 full batches and a partial one of 37.
fn program(optimizer: &str, fields: &str) -> String {
    format!(
        r#"
module Net {{
  param K: [4, 1, 3, 3] = he_normal
  param gamma: [4] = ones
  param beta: [4] = zeros
  buffer mean: [4] = zeros
  buffer var: [4] = ones
  param W: [64, 10] = he_normal
  fn forward(x: [B, 64]) -> [B, 10] =
    dropout(max_pool(relu(batch_norm(conv2d(reshape(x, [B, 1, 8, 8]), K, padding: 1), gamma, beta, mean, var)), 2) |> flatten, 0.25) @ W
}}
data digits = csv("{}", label: "label", scale: 1/16) {{
  train = rows[0..1437] shuffle(seed: 7)
  test  = rows[1437..]
}}
train net = Net on digits.train {{
  loss = cross_entropy, optimizer = {optimizer}, batch = 100, epochs = 3
  {fields}
}}
"#,
        digits()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write program");
    path.display().to_string()
}

fn run_ok(args: &[&str]) -> Output {
    let out = nnc(args);
    assert!(out.status.success(), "nnc {args:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// `nnc ARGS`, which must fail with exit code 1 and no panic: its stderr.
fn run_err(args: &[&str]) -> String {
    let out = nnc(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "nnc {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn tensors(path: &Path) -> (Vec<LoadedTensor>, HashMap<String, String>) {
    checkpoint::load_with_metadata(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether two checkpoints hold the same tensors, bit for bit (so that -0.0
/// and NaN compare exactly); if not, the first difference.
fn difference(a: &[LoadedTensor], b: &[LoadedTensor]) -> Option<String> {
    let names = |t: &[LoadedTensor]| t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect::<Vec<_>>();
    if names(a) != names(b) {
        return Some(format!("different tensors: {:?} and {:?}", names(a), names(b)));
    }
    a.iter().zip(b).find_map(|((name, _, x), (_, _, y))| {
        let at = x.iter().zip(y).position(|(p, q)| p.to_bits() != q.to_bits())?;
        Some(format!("`{name}` differs first at flat index {at}: {} and {}", x[at], y[at]))
    })
}

const OPTIMIZERS: [(&str, &[&str]); 5] = [
    ("sgd(lr: 0.1)", &[]),
    ("momentum(lr: 0.05)", &["opt.velocity.W"]),
    ("nesterov(lr: 0.05)", &["opt.velocity.W"]),
    ("adam(lr: 3e-3)", &["opt.m.W", "opt.v.W"]),
    ("adamw(lr: 3e-3, weight_decay: 0.1)", &["opt.m.W", "opt.v.W"]),
];

/// Three epochs straight, and two epochs then `resume` for the third, end
/// with the same bits in every parameter, buffer and optimizer state, for
/// every optimizer, with shuffling, dropout, batch norm and a step schedule
/// (the learning rate halves every epoch).
#[test]
fn two_epochs_then_resume_equal_three_epochs_straight() {
    let dir = scratch("resume");
    for (optimizer, state) in OPTIMIZERS {
        let schedule = "schedule = step(every: 1, gamma: 0.5)";
        let straight = write(&dir, "straight.nn", &program(optimizer, &format!("{schedule}\n checkpoint = \"straight.safetensors\"")));
        let first = write(&dir, "first.nn", &program(optimizer, &format!("{schedule}\n checkpoint = \"resumed.safetensors\"")));
        let rest = format!("{schedule}\n checkpoint = \"resumed.safetensors\"\n resume = \"resumed.safetensors\"");
        let resumed = write(&dir, "resumed.nn", &program(optimizer, &rest));
        run_ok(&["run", &straight, "--quiet"]);
        run_ok(&["run", &first, "--quiet", "--epochs", "2"]);
        let (after_two, _) = tensors(&dir.join("resumed.safetensors"));
        run_ok(&["run", &resumed, "--quiet"]);

        let (a, meta_a) = tensors(&dir.join("straight.safetensors"));
        let (b, meta_b) = tensors(&dir.join("resumed.safetensors"));
        assert_eq!(difference(&a, &b), None, "{optimizer}: the resumed run differs from the straight one");
        assert!(difference(&after_two, &b).is_some(), "{optimizer}: the third epoch changed nothing");
        assert_eq!((meta_a["epoch"].as_str(), meta_a["step"].as_str()), ("3", "45"), "{optimizer}");
        assert_eq!(meta_a, meta_b, "{optimizer}");
        let names: Vec<&str> = a.iter().map(|(n, _, _)| n.as_str()).collect();
        for s in state {
            assert!(names.contains(s), "{optimizer}: no `{s}` in {names:?}");
        }
        assert!(names.contains(&"mean") && names.contains(&"var"), "{names:?}");
    }
}

/// `load` starts afresh from the parameters (fine-tuning, as PyTorch's
/// `load_state_dict` of the model alone): Adam's moments start at zero and
/// the step count at 0, so its third epoch is not the straight run's.
#[test]
fn load_is_fine_tuning_with_fresh_optimizer_state() {
    let dir = scratch("load");
    let straight = write(&dir, "straight.nn", &program("adam(lr: 3e-3)", "checkpoint = \"straight.safetensors\""));
    let first = write(&dir, "first.nn", &program("adam(lr: 3e-3)", "checkpoint = \"two.safetensors\""));
    let tune = write(&dir, "tune.nn", &program("adam(lr: 3e-3)", "load = \"two.safetensors\"\n checkpoint = \"tuned.safetensors\""));
    run_ok(&["run", &straight, "--quiet"]);
    run_ok(&["run", &first, "--quiet", "--epochs", "2"]);
    run_ok(&["run", &tune, "--quiet", "--epochs", "1"]);
    let (a, _) = tensors(&dir.join("straight.safetensors"));
    let (t, meta) = tensors(&dir.join("tuned.safetensors"));
    assert_eq!(meta["epoch"], "1", "a loaded run counts its own epochs");
    assert!(difference(&a, &t).is_some());
}

/// A checkpoint in the format nnc wrote before optimizer state was saved
/// (parameters and buffers, metadata `model` and `epoch`) still loads; it
/// cannot be resumed, and the error says what to do instead.
#[test]
fn a_parameters_only_checkpoint_still_loads_and_resume_explains_why_not() {
    let dir = scratch("old-format");
    let mut rng = 1u32;
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (rng >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let params: Vec<(String, Vec<usize>, Vec<f32>)> = [("K", vec![4, 1, 3, 3]), ("beta", vec![4]), ("W", vec![64, 10])]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.clone(), values(s.iter().product())))
        .chain([
            ("gamma".to_string(), vec![4], vec![1.0; 4]),
            ("mean".into(), vec![4], vec![0.0; 4]),
            ("var".into(), vec![4], vec![1.0; 4]),
        ])
        .collect();
    let views: Vec<(String, Vec<usize>, &[f32])> = params.iter().map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice())).collect();
    let meta: HashMap<String, String> = [("model".to_string(), "net".to_string()), ("epoch".to_string(), "5".to_string())].into();
    checkpoint::save(&dir.join("old.safetensors"), &views, &meta).unwrap();

    let load = write(&dir, "load.nn", &program("adam", "load = \"old.safetensors\"\n checkpoint = \"new.safetensors\""));
    run_ok(&["run", &load, "--quiet", "--epochs", "1"]);
    assert!(dir.join("new.safetensors").exists());

    let resume = write(&dir, "resume.nn", &program("adam", "resume = \"old.safetensors\""));
    let err = run_err(&["run", &resume]);
    assert!(err.contains("cannot resume from checkpoint") && err.contains("which epoch and step"), "{err}");
    assert!(err.contains("`load = \"...\"` starts a new run"), "{err}");
}

/// What `resume` refuses: a checkpoint of another optimizer, and one whose
/// run is complete.
#[test]
fn resume_refuses_another_optimizer_and_a_finished_run() {
    let dir = scratch("resume-refusals");
    let first = write(&dir, "first.nn", &program("momentum(lr: 0.05)", "checkpoint = \"m.safetensors\""));
    run_ok(&["run", &first, "--quiet", "--epochs", "2"]);
    let other = write(&dir, "other.nn", &program("nesterov(lr: 0.05)", "resume = \"m.safetensors\""));
    let err = run_err(&["run", &other]);
    assert!(err.contains("it holds the state of `momentum`, this run uses `nesterov`"), "{err}");
    let done = write(&dir, "done.nn", &program("momentum(lr: 0.05)", "resume = \"m.safetensors\""));
    let err = run_err(&["run", &done, "--epochs", "2"]);
    assert!(err.contains("is at epoch 2 of 2: nothing is left to train"), "{err}");
}

/// Writes `tensors` (name, shape, values) with the given dtype as a
/// safetensors file: 8-byte header length, JSON header, little-endian data.
fn raw_safetensors(path: &Path, dtype: &str, tensors: &[(&str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let header = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A trained checkpoint of `program("sgd(lr: 0.1)", ...)` with one tensor replaced.
fn with_tensor(dir: &Path, good: &Path, name: &str, shape: Vec<usize>, values: Vec<f32>) -> PathBuf {
    let (mut t, meta) = tensors(good);
    if let Some(e) = t.iter_mut().find(|(n, _, _)| n == name) {
        *e = (name.to_string(), shape, values);
    }
    let views: Vec<(String, Vec<usize>, &[f32])> = t.iter().map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice())).collect();
    let path = dir.join("bad.safetensors");
    checkpoint::save(&path, &views, &meta).unwrap();
    path
}

/// A checkpoint holding NaN or an infinity, or a broken file, is refused at
/// `load`, with the tensor and the first bad index (or what is wrong with the
/// file) named at the `load` in the source; nothing panics.
#[test]
fn bad_checkpoints_are_refused_at_load_with_the_reason() {
    let dir = scratch("bad");
    let train = write(&dir, "train.nn", &program("sgd(lr: 0.1)", "checkpoint = \"good.safetensors\""));
    run_ok(&["run", &train, "--quiet", "--epochs", "1"]);
    let good = dir.join("good.safetensors");
    let load = write(&dir, "load.nn", &program("sgd(lr: 0.1)", "load = \"bad.safetensors\""));
    let resume = write(&dir, "resume.nn", &program("sgd(lr: 0.1)", "resume = \"bad.safetensors\""));
    let load_span = "load = \"bad.safetensors\"";

    let mut w = vec![0.25f32; 640];
    w[123] = f32::NAN;
    with_tensor(&dir, &good, "W", vec![64, 10], w.clone());
    for file in [&load, &resume] {
        let err = run_err(&["run", file]);
        assert!(err.contains("tensor `W` holds NaN at index [12, 3]"), "{err}");
        assert!(err.contains(load_span) || err.contains("resume = \"bad.safetensors\""), "the error points at the source: {err}");
    }
    w[123] = 0.0;
    w[639] = f32::INFINITY;
    with_tensor(&dir, &good, "W", vec![64, 10], w);
    assert!(run_err(&["run", &load]).contains("tensor `W` holds inf at index [63, 9]"));
    with_tensor(&dir, &good, "mean", vec![4], vec![0.0, 0.0, f32::NEG_INFINITY, 0.0]);
    assert!(run_err(&["run", &load]).contains("tensor `mean` holds -inf at index [2]"), "buffers are checked too");

    with_tensor(&dir, &good, "W", vec![10, 64], vec![0.0; 640]);
    let err = run_err(&["run", &load]);
    assert!(err.contains("checkpoint parameter `W` has shape [10, 64], the model needs [64, 10]") && err.contains(load_span), "{err}");

    raw_safetensors(&dir.join("bad.safetensors"), "F64", &[("W", vec![64, 10], vec![0; 640 * 8])]);
    assert!(run_err(&["run", &load]).contains("tensor `W` has dtype F64, only F32 is supported"));

    let bytes = std::fs::read(&good).unwrap();
    let huge_header = [u64::MAX.to_le_bytes().to_vec(), bytes[8..].to_vec()].concat();
    let mut lying_offsets = Vec::new();
    raw_safetensors(&dir.join("lying.safetensors"), "F32", &[("W", vec![64, 10], f32_bytes(&[0.0; 10]))]);
    lying_offsets.extend(std::fs::read(dir.join("lying.safetensors")).unwrap());
    let broken: [(&str, Vec<u8>); 6] = [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("header only", bytes[..8].to_vec()),
        ("header length past the end", huge_header),
        ("data shorter than the shape", lying_offsets),
        ("the program's text", program("sgd", "").into_bytes()),
    ];
    for (what, content) in broken {
        std::fs::write(dir.join("bad.safetensors"), content).unwrap();
        let err = run_err(&["run", &load]);
        assert!(err.contains("cannot load checkpoint") && err.contains("bad.safetensors"), "{what}: {err}");
        assert!(err.contains("not a valid safetensors checkpoint"), "{what}: {err}");
    }
    std::fs::remove_file(dir.join("bad.safetensors")).unwrap();
    assert!(run_err(&["run", &load]).contains("checkpoint file not found"));
}

/// `nnc run` on a copy of the digits data in a scratch directory, with the
/// given train fields and items after the train block; the copy's bytes.
fn overwriting_run(name: &str, fields: &str, after: &str) -> (PathBuf, String, Vec<u8>) {
    let dir = scratch(name);
    std::fs::copy(digits(), dir.join("digits.csv")).unwrap();
    let text = program("sgd(lr: 0.1)", fields).replace(&digits(), "digits.csv") + after;
    let file = write(&dir, "model.nn", &text);
    let data = std::fs::read(dir.join("digits.csv")).unwrap();
    (dir, file, data)
}

/// The three ways a run replaced a file the user saved, now refused before
/// anything runs, with the file untouched: the checkpoint over the program,
/// the checkpoint over the training data, and the plot's CSV (written next to
/// the image, under its name) over the training data.
#[test]
fn outputs_never_overwrite_the_source_or_the_data() {
    let (dir, file, data) = overwriting_run("over-source", "checkpoint = \"./model.nn\"", "");
    let source = std::fs::read(&file).unwrap();
    let err = run_err(&["run", &file]);
    assert!(err.contains("the checkpoint `./model.nn` would overwrite this program's own source"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), source);
    assert_eq!(std::fs::read(dir.join("digits.csv")).unwrap(), data);

    let (dir, file, data) = overwriting_run("over-data", "checkpoint = \"digits.csv\"", "");
    let err = run_err(&["run", &file]);
    assert!(err.contains("the checkpoint `digits.csv` would overwrite a data file this program reads"), "{err}");
    assert_eq!(std::fs::read(dir.join("digits.csv")).unwrap(), data);

    let (dir, file, data) = overwriting_run("over-plot", "", "plot \"digits.png\" = [net]\n");
    let err = run_err(&["run", &file]);
    assert!(err.contains("the plot's CSV `digits.csv` would overwrite a data file this program reads"), "{err}");
    assert_eq!(std::fs::read(dir.join("digits.csv")).unwrap(), data);
    assert!(!dir.join("digits.png").exists(), "the run stopped before writing anything");
}

/// The same file reached through a symbolic link, a hard link, `..` or a
/// folder that does not exist yet is still the same file; `nnc check` refuses
/// it too.
#[cfg(unix)]
#[test]
fn overwrites_are_found_through_links_and_odd_paths() {
    let (dir, file, data) = overwriting_run("links", "checkpoint = \"alias.csv\"", "");
    std::os::unix::fs::symlink(dir.join("digits.csv"), dir.join("alias.csv")).unwrap();
    let err = run_err(&["run", &file]);
    assert!(err.contains("the checkpoint `alias.csv` would overwrite a data file"), "{err}");
    assert!(run_err(&["check", &file]).contains("would overwrite a data file"));
    std::fs::remove_file(dir.join("alias.csv")).unwrap();
    std::fs::hard_link(dir.join("digits.csv"), dir.join("alias.csv")).unwrap();
    assert!(run_err(&["run", &file]).contains("would overwrite a data file"), "hard link");
    assert_eq!(std::fs::read(dir.join("digits.csv")).unwrap(), data);

    let text = std::fs::read_to_string(&file).unwrap().replace("checkpoint = \"alias.csv\"", "checkpoint = \"new/../new/x.st\"")
        + "train again = Net on digits.train { loss = cross_entropy, optimizer = sgd(lr: 0.1), batch = 100, epochs = 1, checkpoint = \"./new/x.st\" }\n";
    std::fs::write(&file, text).unwrap();
    let err = run_err(&["run", &file]);
    assert!(err.contains("the checkpoint `./new/x.st` would overwrite another output of this run"), "{err}");
    assert!(!dir.join("new").exists());
}

/// Reading a checkpoint written earlier in the same file is fine (`warm`
/// then `more`), and so is resuming a run in place; `load` and `checkpoint`
/// on one file in one block would replace the model being fine-tuned.
#[test]
fn reading_an_earlier_output_is_fine_and_load_over_itself_is_refused() {
    let dir = scratch("warm-more");
    let warm = program("sgd(lr: 0.1)", "checkpoint = \"w.safetensors\"");
    let more = "train more = Net on digits.train { loss = cross_entropy, optimizer = sgd(lr: 0.01), batch = 100, epochs = 1, load = \"w.safetensors\" }\n";
    let file = write(&dir, "warm.nn", &(warm + more));
    run_ok(&["run", &file, "--quiet"]);
    let own = write(&dir, "own.nn", &program("sgd(lr: 0.1)", "load = \"w.safetensors\"\n checkpoint = \"w.safetensors\""));
    let before = std::fs::read(dir.join("w.safetensors")).unwrap();
    let err = run_err(&["run", &own]);
    assert!(err.contains("the checkpoint `w.safetensors` would overwrite a checkpoint this program loads"), "{err}");
    assert!(err.contains("`resume` (instead of `load`)"), "{err}");
    assert_eq!(std::fs::read(dir.join("w.safetensors")).unwrap(), before);
}

fn temp_files(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned());
    names.filter(|n| n.contains(".tmp.")).collect()
}

/// The epoch a checkpoint was written at, if it exists and can be read yet.
fn epoch_of(path: &Path) -> Option<usize> {
    checkpoint::load_with_metadata(path).ok().and_then(|(_, m)| m.get("epoch")?.parse().ok())
}

/// `kill -9` during training, four times, each time after at least one more
/// checkpoint was written: the next write removes the temporary files killed
/// processes left (a kill lands in a write only sometimes, so one such file,
/// of a process that has exited, is also planted), and resuming after each
/// kill ends with the same bits as the run never killed (a cosine schedule
/// over the whole run: its factor depends on the total, which the resumed run
/// shares).
#[test]
fn kill_9_leaves_no_temporary_files_and_a_resumed_run_continues_exactly() {
    let dir = scratch("kill");
    let epochs = "epochs = 40";
    let fields = |ck: &str, resume: bool| {
        let resume = if resume { format!("\n resume = \"{ck}\"") } else { String::new() };
        format!("schedule = cosine(min: 0.1)\n checkpoint = \"{ck}\"{resume}")
    };
    let with = |text: String| text.replace("epochs = 3", epochs);
    let straight = write(&dir, "straight.nn", &with(program("adam(lr: 3e-3)", &fields("straight.safetensors", false))));
    let first = write(&dir, "first.nn", &with(program("adam(lr: 3e-3)", &fields("k.safetensors", false))));
    let again = write(&dir, "again.nn", &with(program("adam(lr: 3e-3)", &fields("k.safetensors", true))));
    run_ok(&["run", &straight, "--quiet"]);
    let ck = dir.join("k.safetensors");
    let mut file = first;
    for kill in 0..4 {
        let before = epoch_of(&ck).unwrap_or(0);
        let mut child = Command::new(env!("CARGO_BIN_EXE_nnc")).args(["run", &file, "--quiet"]).spawn().expect("spawn nnc");
        let started = Instant::now();
        // Kill once the run has written a checkpoint of its own, at a moment
        // that drifts through the next epoch and its write.
        while epoch_of(&ck).unwrap_or(0) <= before && started.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_micros(300));
        }
        std::thread::sleep(Duration::from_millis(5 * kill));
        assert!(child.try_wait().expect("wait").is_none(), "run {kill} ended before it was killed");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        file = again.clone();
    }
    // What a kill during the write leaves (it lands there only sometimes).
    let mut exited = Command::new("true").spawn().expect("spawn true");
    let dead = exited.id();
    exited.wait().expect("reap");
    std::fs::write(dir.join(format!(".k.safetensors.tmp.{dead}.7")), vec![0u8; 1 << 20]).unwrap();
    run_ok(&["run", &again, "--quiet"]);
    // The last run's writes removed whatever the killed ones left.
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    let (a, _) = tensors(&dir.join("straight.safetensors"));
    let (b, _) = tensors(&ck);
    assert_eq!(difference(&a, &b), None, "resumed after four kills, the run differs from the straight one");
}
