//! The documentation's code blocks go through the real pipeline, so the docs
//! cannot drift from the language.
//!
//! Every fenced block in `docs/*.md` and `docs/examples/*.md` whose info
//! string starts with `nn` is checked according to its tag:
//!
//! * ` ```nn ` — a complete program: it must parse (`syntax::parse`) and pass
//!   `check::check` with paths relative to `docs/` (names, shapes, data
//!   loading, and the finite-difference gradient check of every `train`).
//! * ` ```nn fragment ` — an excerpt: it must parse, either as it is (a run of
//!   items) or wrapped in `module Fragment { ... }` (a run of module members).
//!   Fragments are not checked further: they may use names defined elsewhere.
//! * ` ```nn error ` — a complete program that `nnc` must reject, by the
//!   parser or by the check.
//! * ` ```nn from examples/x.nn ` — a verbatim copy of a file in the
//!   repository: it must equal that file, and pass the check with paths
//!   relative to the file's own folder.
//!
//! Any other tag after `nn` is an error, so a typo cannot silently skip a block.

use nnc_compiler::diagnostic::render;
use nnc_compiler::syntax::parse;
use nnc_runtime::check::{check, TOLERANCE};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Program,
    Fragment,
    Error,
    /// A copy of this file (relative to the repository root).
    Copy(String),
}

/// One fenced `nn` block: where it is, its kind and its text.
struct Block {
    file: PathBuf,
    line: usize,
    kind: Result<Kind, String>,
    text: String,
}

impl Block {
    /// `docs/language.md:42`, for messages.
    fn place(&self) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let file = self.file.strip_prefix(root).unwrap_or(&self.file);
        format!("{}:{}", file.display(), self.line)
    }

    /// The name diagnostics give the block's text (their line numbers count from the block).
    fn source_name(&self) -> String {
        format!("block at {}", self.place())
    }
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// The Markdown files the blocks come from, sorted for stable messages.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [docs_dir(), docs_dir().join("examples")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn kind_of(info: &str) -> Result<Kind, String> {
    let words: Vec<&str> = info.split_whitespace().collect();
    match words.as_slice() {
        ["nn"] => Ok(Kind::Program),
        ["nn", "fragment"] => Ok(Kind::Fragment),
        ["nn", "error"] => Ok(Kind::Error),
        ["nn", "from", path] => Ok(Kind::Copy(path.to_string())),
        _ => Err(format!("unknown code block tag `{info}` (use `nn`, `nn fragment`, `nn error` or `nn from PATH`)")),
    }
}

/// The `nn` blocks of one Markdown text (fences are lines starting with three backticks).
fn blocks_in(file: &Path, markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, Vec<&str>)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((i + 1, info.trim().to_string(), Vec::new())),
            (Some(_), Some(_)) => {
                if let Some((start, info, body)) = open.take() {
                    let is_nn = info == "nn" || info.starts_with("nn ");
                    if is_nn {
                        out.push(Block { file: file.to_path_buf(), line: start, kind: kind_of(&info), text: body.join("\n") + "\n" });
                    }
                }
            }
            (Some((_, _, body)), None) => body.push(line),
            (None, None) => {}
        }
    }
    if let Some((start, info, _)) = open {
        out.push(Block {
            file: file.to_path_buf(),
            line: start,
            kind: Err(format!("code block `{info}` is never closed")),
            text: String::new(),
        });
    }
    out
}

fn all_blocks() -> Vec<Block> {
    let mut blocks = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        blocks.extend(blocks_in(&file, &text));
    }
    blocks
}

/// Check every block of one kind (plus every mis-tagged block); panic with all failures.
/// `Kind::Copy` stands for copies of any file.
fn check_kind(kind: Kind, what: fn(&Block) -> Result<(), String>) -> usize {
    let blocks = all_blocks();
    let mut failures = Vec::new();
    let mut count = 0;
    for b in &blocks {
        match &b.kind {
            Err(e) if kind == Kind::Program => failures.push(format!("{}: {e}", b.place())),
            Ok(k) if *k == kind || matches!((k, &kind), (Kind::Copy(_), Kind::Copy(_))) => {
                count += 1;
                if let Err(e) = what(b) {
                    failures.push(format!("{}: {e}", b.place()));
                }
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{} documentation block(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
    count
}

/// A gradient error within tolerance (NaN is not).
fn passes(worst_error: f64) -> bool {
    worst_error <= TOLERANCE
}

fn check_program(b: &Block) -> Result<(), String> {
    check_program_in(b, &docs_dir())
}

/// Parse and check a complete program, with data paths relative to `base`.
fn check_program_in(b: &Block, base: &Path) -> Result<(), String> {
    let name = b.source_name();
    let program = parse(&b.text).map_err(|d| format!("does not parse:\n{}", render(&d, &name, &b.text, false)))?;
    let results = check(&program, base).map_err(|d| format!("does not check:\n{}", render(&d, &name, &b.text, false)))?;
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !passes(r.worst_error))
        .map(|r| format!("gradient of `{}` in run `{}` is off by {:e}", r.path, r.run, r.worst_error))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}

fn check_fragment(b: &Block) -> Result<(), String> {
    let name = b.source_name();
    match parse(&b.text) {
        Ok(_) => Ok(()),
        Err(as_items) => {
            let wrapped = format!("module Fragment {{\n{}}}\n", b.text);
            parse(&wrapped).map(|_| ()).map_err(|_| format!("fragment does not parse:\n{}", render(&as_items, &name, &b.text, false)))
        }
    }
}

fn check_error(b: &Block) -> Result<(), String> {
    let Ok(program) = parse(&b.text) else {
        return Ok(());
    };
    match check(&program, &docs_dir()) {
        Err(_) => Ok(()),
        Ok(results) if results.iter().any(|r| !passes(r.worst_error)) => Ok(()),
        Ok(_) => Err("this block is tagged `nn error` but nnc accepts it".into()),
    }
}

fn check_copy(b: &Block) -> Result<(), String> {
    let Ok(Kind::Copy(path)) = &b.kind else {
        return Err("not a copy".into());
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let original = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {path}: {e}"))?;
    if original.trim_end() != b.text.trim_end() {
        let line = original
            .lines()
            .zip(b.text.lines())
            .position(|(a, c)| a != c)
            .map_or_else(|| "the end".to_string(), |i| format!("line {}", i + 1));
        return Err(format!("this copy of {path} differs from the file (first at {line}); paste the file again"));
    }
    check_program_in(b, file.parent().unwrap_or(Path::new(".")))
}

#[test]
fn complete_programs_parse_and_check() {
    let n = check_kind(Kind::Program, check_program);
    assert!(n >= 3, "expected the docs to hold complete programs, found {n}");
}

#[test]
fn fragments_parse() {
    let n = check_kind(Kind::Fragment, check_fragment);
    assert!(n >= 1, "expected the docs to hold fragments, found {n}");
}

#[test]
fn copies_match_their_files() {
    check_kind(Kind::Copy(String::new()), check_copy);
}

#[test]
fn error_examples_are_rejected() {
    check_kind(Kind::Error, check_error);
}

#[test]
fn block_extraction() {
    let md = "text\n```nn\nlet a = 1\n```\n```rust\nfn main() {}\n```\n```nn fragment\nparam W: [2] = zeros\n```\n```nn frag\n```\n```nn from examples/a.nn\n```\n";
    let blocks = blocks_in(Path::new("x.md"), md);
    let kinds: Vec<_> = blocks.iter().map(|b| b.kind.clone()).collect();
    assert_eq!(blocks.len(), 4);
    assert_eq!(kinds[0], Ok(Kind::Program));
    assert_eq!(blocks[0].text, "let a = 1\n");
    assert_eq!(blocks[0].line, 2);
    assert_eq!(kinds[1], Ok(Kind::Fragment));
    assert!(kinds[2].is_err());
    assert_eq!(kinds[3], Ok(Kind::Copy("examples/a.nn".into())));
    assert!(check_fragment(&blocks[1]).is_ok());
}
