//! No input crashes `nnc check`: mutants of every example (tokens deleted,
//! inserted, swapped and renamed, numbers replaced by huge, negative and odd
//! ones, lines duplicated and dropped) and a list of hostile sources each run
//! `nnc check --shapes-only` under a timeout, and the test fails on anything
//! but exit status 0 or 1: a signal, another status, "panicked" in the
//! output, or a timeout. `--shapes-only` skips the float64 gradient check,
//! which takes up to two minutes on a large example; everything before it
//! (parsing, data, elaboration, the gradient graphs) still runs.
//!
//! The mutants are fixed: a seeded generator written here (no dependency)
//! makes mutant `i` of an example the same on every machine. Mutants that
//! crash in another part's code, not yet fixed on this branch, are listed in
//! `tests/robustness_known_failures.txt` (with the part that fixes them) and
//! skipped; `known_failures_now_pass` runs just those. To hunt for more:
//!
//!     NNC_MUTANTS=400 NNC_MUTANT_SEED=7 cargo test --release --test robustness -- --ignored many_mutants

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Mutants per example in the suite's fixed set, chosen so the whole test
/// takes about 30 s on two idle cores (release build). Loading the data
/// costs about 0.05 s for digits and diabetes, 0.7 s for MNIST and the
/// Shakespeare text, 1.7 s for bert_mlm and 17 s for gpt_bpe (it learns its
/// BPE merges at load), so the cheap examples get the most mutants.
const SUITE_MUTANTS: &[(&str, usize)] = &[
    ("cnn_digits", 50),
    ("mlp_digits", 50),
    ("optimizers", 50),
    ("ridge_diabetes", 50),
    ("seq2seq", 40),
    ("bert_mlm", 4),
    ("cnn_mnist", 6),
    ("convnext_mnist", 6),
    ("gpt_charlm", 6),
    ("lstm_charlm", 6),
    ("mlp_mnist", 6),
    ("norms", 6),
    ("resnet_mnist", 6),
    ("gpt_bpe", 1),
];

/// Far beyond the slowest honest check (gpt_bpe's 17 s, slower on a busy machine).
const TIMEOUT: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---- the mutation generator ---------------------------------------------------

/// SplitMix64: a small, well-mixed generator; the same seed gives the same mutant everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// FNV-1a, to give each example its own stream of seeds.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Whitespace and comments: kept, never mutated.
    Space,
    Word,
    Number,
    Str,
    Punct,
}

/// The source as tokens whose texts concatenate back to it.
fn tokenize(src: &str) -> Vec<(Kind, String)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let kind = if c.is_whitespace() {
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            Kind::Space
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            Kind::Space
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i = (i + 2).min(chars.len());
            Kind::Space
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' && chars[i] != '\n' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(chars.len());
            Kind::Str
        } else if c.is_ascii_digit() {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                i += 1;
            }
            Kind::Number
        } else if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Kind::Word
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            i += if ["->", "|>", "**", "..", "==", "!="].contains(&two.as_str()) { 2 } else { 1 };
            Kind::Punct
        };
        out.push((kind, chars[start..i].iter().collect()));
    }
    out
}

/// Numbers a person or a fuzzer might write where a size, a rate or an index goes.
const HOSTILE_NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "0.0",
    "1.5",
    "0.5",
    "1e-30",
    "1e30",
    "1e308",
    "1e400",
    "65536",
    "2147483648",
    "4294967296",
    "4611686018427387904",
    "18446744073709551616",
    "99999999999999999999",
];

/// Tokens inserted out of place.
const STRAY_TOKENS: &[&str] = &[
    "(", ")", "[", "]", "{", "}", ",", ":", ";", "=", "->", "|>", "**", "..", "-", "+", "*", "/", "@", ".", "%", "==", "module", "fn",
    "let", "param", "buffer", "train", "data", "report", "plot", "on", "rows", "where", "scalar", "int", "x", "B", "_", "\"\"", "[B; 0]",
    "[]",
];

#[derive(Clone, Copy, Debug)]
enum Mutation {
    DeleteToken,
    InsertToken,
    SwapTokens,
    RenameWord,
    ReplaceNumber,
    NegateNumber,
    DuplicateLine,
    DropLine,
}

const MUTATIONS: &[Mutation] = &[
    Mutation::DeleteToken,
    Mutation::InsertToken,
    Mutation::SwapTokens,
    Mutation::RenameWord,
    Mutation::ReplaceNumber,
    Mutation::ReplaceNumber,
    Mutation::NegateNumber,
    Mutation::DuplicateLine,
    Mutation::DropLine,
];

/// Indices of the tokens of one kind (or of every non-space kind).
fn positions(tokens: &[(Kind, String)], want: Option<Kind>) -> Vec<usize> {
    tokens.iter().enumerate().filter(|(_, (k, _))| *k != Kind::Space && want.is_none_or(|w| *k == w)).map(|(i, _)| i).collect()
}

fn apply(m: Mutation, src: &str, rng: &mut Rng) -> String {
    let mut tokens = tokenize(src);
    let any = positions(&tokens, None);
    if any.is_empty() {
        return format!("{src} {}", rng.pick(STRAY_TOKENS));
    }
    match m {
        Mutation::DeleteToken => {
            tokens.remove(*rng.pick(&any));
        }
        Mutation::InsertToken => {
            let text = if rng.below(2) == 0 { tokens[*rng.pick(&any)].1.clone() } else { rng.pick(STRAY_TOKENS).to_string() };
            tokens.insert(*rng.pick(&any), (Kind::Punct, format!("{text} ")));
        }
        Mutation::SwapTokens => {
            let k = rng.below(any.len());
            let (a, b) = (any[k], any[(k + 1).min(any.len() - 1)]);
            let t = tokens[a].1.clone();
            tokens[a].1 = std::mem::replace(&mut tokens[b].1, t);
        }
        Mutation::RenameWord => {
            let words = positions(&tokens, Some(Kind::Word));
            if let (Some(&at), Some(&from)) = (words.get(rng.below(words.len())), words.get(rng.below(words.len()))) {
                tokens[at].1 = tokens[from].1.clone();
            }
        }
        Mutation::ReplaceNumber | Mutation::NegateNumber => {
            let numbers = positions(&tokens, Some(Kind::Number));
            let Some(&at) = numbers.get(rng.below(numbers.len())) else { return apply(Mutation::DeleteToken, src, rng) };
            tokens[at].1 = match m {
                Mutation::NegateNumber => format!("-{}", tokens[at].1),
                _ => rng.pick(HOSTILE_NUMBERS).to_string(),
            };
        }
        Mutation::DuplicateLine | Mutation::DropLine => {
            let mut lines: Vec<&str> = src.lines().collect();
            let at = rng.below(lines.len());
            match m {
                Mutation::DuplicateLine => lines.insert(at, lines[at]),
                _ => {
                    lines.remove(at);
                }
            }
            return lines.join("\n") + "\n";
        }
    }
    tokens.into_iter().map(|(_, t)| t).collect()
}

/// Mutant `index` of a source: one to three mutations from the seed `seed`.
fn mutant(src: &str, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut text = src.to_string();
    for _ in 0..1 + rng.below(3) {
        let m = *rng.pick(MUTATIONS);
        text = apply(m, &text, &mut rng);
    }
    text
}

fn mutant_seed(example: &str, base: u64, index: usize) -> u64 {
    name_hash(example) ^ base.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64
}

// ---- running `nnc check` ------------------------------------------------------------

/// One source to check: a mutant (`mlp_digits#12`) or a hostile input (`hostile:empty`).
struct Case {
    id: String,
    /// The file name it is checked under (`mlp_digits.nn`), so data paths resolve.
    file: String,
    bytes: Vec<u8>,
}

/// A folder where `data/` points at `examples/data`, so mutants load the real data.
fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("robustness").join(name);
    std::fs::create_dir_all(&dir).expect("create the work folder");
    let data = dir.join("data");
    if std::fs::symlink_metadata(&data).is_err() {
        std::os::unix::fs::symlink(root().join("examples").join("data"), &data).expect("link the example data");
    }
    dir
}

/// The exit status (0 or 1) of a check that ended well; else what went wrong.
fn check_case(case: &Case, dir: &Path) -> Result<i32, String> {
    let path = dir.join(&case.file);
    std::fs::write(&path, &case.bytes).expect("write the case");
    let (out_path, err_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    // Files, not pipes: a long diagnostic must not fill a pipe and stall the child.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .args(["check", "--shapes-only"])
        .arg(&path)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(File::create(&out_path).expect("create stdout file")))
        .stderr(Stdio::from(File::create(&err_path).expect("create stderr file")))
        .spawn()
        .expect("start nnc");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for nnc") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer within {} s", TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default() + &std::fs::read_to_string(&err_path).unwrap_or_default();
    let tail: String = output.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    match (status.code(), status.signal()) {
        _ if output.contains("panicked") => Err(format!("panicked:\n{tail}")),
        (Some(code @ (0 | 1)), _) => Ok(code),
        (Some(code), _) => Err(format!("exit status {code}:\n{tail}")),
        (None, signal) => Err(format!("killed by signal {signal:?}:\n{tail}")),
    }
}

/// Check every case on two workers (the machine's cores); returns the failures
/// with a saved reproducer each.
fn check_all(cases: &[Case], label: &str) -> Vec<String> {
    let (next, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures = Mutex::new(Vec::new());
    let failed_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("robustness").join(format!("{label}-failures"));
    std::thread::scope(|s| {
        for worker in 0..2 {
            let (next, accepted, failures, failed_dir) = (&next, &accepted, &failures, &failed_dir);
            s.spawn(move || {
                let dir = work_dir(&format!("{label}-{worker}"));
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match check_case(case, &dir) {
                        Ok(0) => _ = accepted.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => {}
                        Err(why) => {
                            std::fs::create_dir_all(failed_dir).expect("create the failures folder");
                            let saved = failed_dir.join(format!("{}.nn", case.id.replace([':', '#'], "-")));
                            std::fs::write(&saved, &case.bytes).expect("save the reproducer");
                            failures.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{} ({}): {why}", case.id, saved.display()));
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort();
    // Shown with --nocapture: a mutator that only ever broke the syntax would test little.
    println!("{label}: {} cases, {} accepted, {} failed", cases.len(), accepted.into_inner(), failures.len());
    failures
}

fn example_source(name: &str) -> String {
    std::fs::read_to_string(root().join("examples").join(format!("{name}.nn"))).expect("read the example")
}

fn mutant_case(example: &str, source: &str, base: u64, index: usize) -> Case {
    let id = if base == 0 { format!("{example}#{index}") } else { format!("{example}#{index}@{base}") };
    Case { id, file: format!("{example}.nn"), bytes: mutant(source, mutant_seed(example, base, index)).into_bytes() }
}

/// The case ids listed in `tests/robustness_known_failures.txt`: the first word
/// of each line that is not a `//` comment.
fn known_failures() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("tests").join("robustness_known_failures.txt")).expect("read the known failures");
    text.lines().filter_map(|l| l.split_whitespace().next()).filter(|id| !id.starts_with("//")).map(str::to_string).collect()
}

/// Every example has a row in `SUITE_MUTANTS`.
#[test]
fn every_example_is_mutated() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("examples")).expect("examples exist").flatten() {
        let path = entry.path();
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "nn") && !SUITE_MUTANTS.iter().any(|(n, _)| *n == stem) {
            missing.push(stem);
        }
    }
    assert!(missing.is_empty(), "examples without mutants in SUITE_MUTANTS: {missing:?}");
}

#[test]
fn mutated_examples_never_crash_nnc_check() {
    let known = known_failures();
    let mut cases = Vec::new();
    for &(example, count) in SUITE_MUTANTS {
        let source = example_source(example);
        cases.extend((0..count).map(|i| mutant_case(example, &source, 0, i)).filter(|c| !known.contains(&c.id)));
    }
    // The slow examples first, so the two workers finish together.
    cases.sort_by_key(|c| !c.id.starts_with("gpt_bpe"));
    let failures = check_all(&cases, "suite");
    assert!(failures.is_empty(), "{} of {} mutants crashed `nnc check`:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

/// The cases listed as known failures; run after merging the parts that fix them.
#[test]
#[ignore = "fails until the parts named in tests/robustness_known_failures.txt are merged"]
fn known_failures_now_pass() {
    let ids = known_failures();
    let cases: Vec<Case> = ids.iter().filter_map(|id| case_by_id(id)).collect();
    assert_eq!(cases.len(), ids.len(), "some ids in tests/robustness_known_failures.txt name no case");
    let failures = check_all(&cases, "known");
    assert!(failures.is_empty(), "{} of {} known failures still crash:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

/// The case an id names: `hostile:NAME`, `EXAMPLE#INDEX` or `EXAMPLE#INDEX@BASE`.
fn case_by_id(id: &str) -> Option<Case> {
    if let Some(name) = id.strip_prefix("hostile:") {
        let (name, bytes) = hostile_inputs().into_iter().find(|(n, _)| *n == name)?;
        return Some(Case { id: id.to_string(), file: format!("{name}.nn"), bytes });
    }
    let (example, rest) = id.split_once('#')?;
    let (index, base) = rest.split_once('@').unwrap_or((rest, "0"));
    Some(mutant_case(example, &example_source(example), base.parse().ok()?, index.parse().ok()?))
}

/// `NNC_MUTANTS` mutants of every example from base seed `NNC_MUTANT_SEED`.
#[test]
#[ignore = "a long search for new crashes: NNC_MUTANTS=400 NNC_MUTANT_SEED=7"]
fn many_mutants() {
    let count: usize = std::env::var("NNC_MUTANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let base: u64 = std::env::var("NNC_MUTANT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let skip: Vec<String> = std::env::var("NNC_SKIP").map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();
    let mut cases = Vec::new();
    for &(example, _) in SUITE_MUTANTS.iter().filter(|(e, _)| !skip.iter().any(|s| s == e)) {
        let source = example_source(example);
        cases.extend((0..count).map(|i| mutant_case(example, &source, base, i)));
    }
    let failures = check_all(&cases, "many");
    assert!(failures.is_empty(), "{} of {} mutants crashed `nnc check`:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

// ---- hostile inputs ---------------------------------------------------------------

/// A complete program: `defs`, then a model `Net` with one more `member` and
/// the body `forward`, trained on the digits.
fn program_with(defs: &str, member: &str, forward: &str) -> String {
    format!(
        "{defs}\nmodule Net {{\n  param W: [64, 10] = he_normal\n  {member}\n  fn forward(x: [B, 64]) -> [B, 10] = {forward}\n}}\n\
         data digits = csv(\"data/digits.csv\", label: \"label\", scale: 1/16) {{ train = rows[0..1437] }}\n\
         fn loss(m: Net, x: [B, 64], y: [B] int) -> scalar = cross_entropy(m(x), y)\n\
         train net = Net on digits.train {{ loss = loss, optimizer = adam(lr: 1e-3), batch = 64, epochs = 1 }}\n"
    )
}

/// `n` functions, each calling the next.
fn function_chain(n: usize) -> String {
    let mut defs: String = (0..n - 1).map(|i| format!("fn f{i}(x: [B, 64]) -> [B, 64] = f{}(x)\n", i + 1)).collect();
    defs += &format!("fn f{}(x: [B, 64]) -> [B, 64] = relu(x)\n", n - 1);
    program_with(&defs, "", "f0(x) @ W")
}

/// `n` modules, each holding the next.
fn module_chain(n: usize) -> String {
    let mut defs: String =
        (0..n - 1).map(|i| format!("module M{i} {{\n  inner = M{}\n  fn forward(x: [B, 64]) -> [B, 64] = inner(x)\n}}\n", i + 1)).collect();
    defs += &format!("module M{} {{\n  fn forward(x: [B, 64]) -> [B, 64] = relu(x)\n}}\n", n - 1);
    program_with(&defs, "chain = M0", "chain(x) @ W")
}

/// `n` functions, each calling the next from `depth` levels inside its own expression.
fn deep_function_chain(n: usize, depth: usize) -> String {
    let mut defs: String =
        (0..n - 1).map(|i| format!("fn f{i}(x: [B, 64]) -> [B, 64] = f{}(x){}\n", i + 1, " + x".repeat(depth))).collect();
    defs += &format!("fn f{}(x: [B, 64]) -> [B, 64] = relu(x)\n", n - 1);
    program_with(&defs, "", "f0(x) @ W")
}

fn hostile_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let cycle = "module A {\n  b = B\n  fn forward(x: [B, 64]) -> [B, 64] = b(x)\n}\nmodule B {\n  a = [A; 2]\n  fn forward(x: [B, 64]) -> [B, 64] = x |> a\n}\n";
    vec![
        ("empty", Vec::new()),
        ("only_a_comment", b"// nothing here\n".to_vec()),
        ("unclosed_block_comment", b"/* never closed\nmodule A {}".to_vec()),
        ("unclosed_string", b"data d = csv(\"data/digits.csv, label: \"label\") { train = rows[..] }".to_vec()),
        ("byte_order_mark", "\u{feff}module A {}\n".as_bytes().to_vec()),
        ("not_utf8", vec![0xff, 0xfe, 0x00, 0x80, b'm', b'o', 0xc3]),
        ("nul_bytes", b"module\0A {\0}".to_vec()),
        ("carriage_returns", b"module A {\r  param W: [2] = zeros\r}\r".to_vec()),
        ("parens_100000", program_with("", "", &format!("{}x{} @ W", "(".repeat(100_000), ")".repeat(100_000))).into_bytes()),
        ("negations_100000", program_with("", "", &format!("{}x @ W", "-".repeat(100_000))).into_bytes()),
        ("sum_of_100000", program_with("", "", &format!("(x{}) @ W", " + x".repeat(100_000))).into_bytes()),
        ("pipe_of_100000", program_with("", "", &format!("x{} @ W", " |> relu".repeat(100_000))).into_bytes()),
        ("one_line_of_a_megabyte", format!("let {} = 1\n", "a".repeat(1 << 20)).into_bytes()),
        ("function_chain_2500", function_chain(2500).into_bytes()),
        ("function_chain_10000", function_chain(10_000).into_bytes()),
        ("module_chain_2500", module_chain(2500).into_bytes()),
        ("module_chain_10000", module_chain(10_000).into_bytes()),
        ("deep_calls_in_deep_expressions", deep_function_chain(80, 190).into_bytes()),
        ("module_cycle", program_with(cycle, "a = A", "x @ W").into_bytes()),
        ("self_call", program_with("fn f(x: [B, 64]) -> [B, 64] = f(f(x))\n", "", "f(x) @ W").into_bytes()),
        (
            "huge_repeat_count",
            program_with("module L {\n  fn forward(x: [B, 64]) -> [B, 64] = x\n}\n", "l = [L; 1e30]", "(x |> l) @ W").into_bytes(),
        ),
        ("number_1e400", program_with("let big = 1e400\n", "", "x @ W * big").into_bytes()),
        ("train_on_itself", b"train m = m on m.train { loss = m }\n".to_vec()),
        ("model_is_a_function", program_with("", "", "x @ W").replace("train net = Net", "train net = loss").into_bytes()),
    ]
}

#[test]
fn hostile_inputs_never_crash_nnc_check() {
    let known = known_failures();
    let cases: Vec<Case> = hostile_inputs()
        .into_iter()
        .map(|(name, bytes)| Case { id: format!("hostile:{name}"), file: format!("{name}.nn"), bytes })
        .filter(|c| !known.contains(&c.id))
        .collect();
    let failures = check_all(&cases, "hostile");
    assert!(failures.is_empty(), "{} of {} hostile inputs crashed `nnc check`:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

/// Nesting past `MAX_CALL_DEPTH` is refused with a message, never a stack
/// overflow (before: a chain of 2,500 modules or 10,000 functions ended in
/// SIGABRT); nesting within it elaborates, however deep each expression is.
#[test]
fn deep_chains_are_refused_or_checked() {
    let dir = work_dir("depth");
    let cases = [
        ("function_chain_2500", function_chain(2500), 1),
        ("function_chain_10000", function_chain(10_000), 1),
        ("module_chain_2500", module_chain(2500), 1),
        ("module_chain_10000", module_chain(10_000), 1),
        ("function_chain_900", function_chain(900), 0),
        ("module_chain_900", module_chain(900), 0),
        ("deep_calls_in_deep_expressions", deep_function_chain(80, 190), 0),
    ];
    for (name, source, expected) in cases {
        let path = dir.join(format!("{name}.nn"));
        std::fs::write(&path, source).expect("write the chain");
        let out = Command::new(env!("CARGO_BIN_EXE_nnc"))
            .args(["check", "--shapes-only"])
            .arg(&path)
            .env("NO_COLOR", "1")
            .output()
            .expect("run nnc");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(expected), "{name}: expected exit status {expected}, got {}:\n{stderr}", out.status);
        if expected == 1 {
            assert!(stderr.contains("Error: calls and modules are nested more than 1000 deep"), "{name}: another error:\n{stderr}");
        }
    }
}
