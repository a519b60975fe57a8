//! Nothing a user saved is lost: before anything runs, every file a program
//! writes (checkpoints, plot images and their CSVs) is compared with the
//! program's source, the data files it reads, the checkpoints it loads and
//! its other outputs. `checkpoint = "model.nn"` would replace the program with
//! safetensors bytes, `checkpoint = "digits.csv"` the training data, and
//! `plot "digits.png"` writes `digits.csv` next to the image.
//!
//! Paths are compared as files, not as text: existing files by their
//! canonical path (symbolic links, `./`, `..` resolved) and, on Unix, by
//! device and inode (hard links); files still to be written by the canonical
//! path of their nearest existing folder plus the rest, `.` and `..` resolved.

use crate::dataset;
use nnc_compiler::ast::{ExprKind, Item, Program, Span, TrainDef};
use nnc_compiler::diagnostic::Diagnostic;
use std::path::{Component, Path, PathBuf};

/// What a program writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Output {
    Checkpoint,
    PlotImage,
    /// The CSV written next to a plot's image, under the image's name.
    PlotCsv,
}

/// What an output would overwrite.
#[derive(Clone, Debug, PartialEq)]
pub enum Overwritten {
    /// The `.nn` file being run.
    Source,
    /// A file a `data` declaration reads.
    Data { span: Span },
    /// A checkpoint a `load` or `resume` reads before this output is written.
    Loaded { span: Span },
    /// An earlier output of the same run.
    Output { span: Span, output: Output },
}

/// An output on a file the run must not replace (errors as data; worded in
/// [`Clash::to_diagnostic`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Clash {
    pub output: Output,
    /// The output's file name as written (for a plot's CSV, as derived).
    pub path: String,
    pub span: Span,
    pub overwritten: Overwritten,
}

impl Output {
    fn noun(self) -> &'static str {
        match self {
            Output::Checkpoint => "the checkpoint",
            Output::PlotImage => "the plot",
            Output::PlotCsv => "the plot's CSV",
        }
    }
}

impl Clash {
    pub fn to_diagnostic(&self) -> Diagnostic {
        let what = self.output.noun();
        let label = match self.output {
            Output::PlotCsv => format!("this plot also writes its values to `{}`", self.path),
            Output::Checkpoint | Output::PlotImage => format!("written to `{}`", self.path),
        };
        let (whose, other) = match &self.overwritten {
            Overwritten::Source => ("this program's own source", None),
            Overwritten::Data { span } => ("a data file this program reads", Some((*span, "read here".to_string()))),
            Overwritten::Loaded { span } => {
                ("a checkpoint this program loads", Some((*span, "loaded here, before it is written".to_string())))
            }
            Overwritten::Output { span, output } => {
                ("another output of this run", Some((*span, format!("{} is written here", output.noun()))))
            }
        };
        let mut d = Diagnostic::new(format!("{what} `{}` would overwrite {whose}", self.path)).label(self.span, label);
        if let Some((span, text)) = other {
            d = d.label(span, text);
        }
        let help = match (&self.overwritten, self.output) {
            (Overwritten::Loaded { .. }, Output::Checkpoint) => {
                "help: write the new parameters to another file; `resume` (instead of `load`) continues the run that wrote a checkpoint in place"
            }
            (_, Output::PlotCsv) => "help: give the plot another file name; its CSV takes the image's name with the extension `.csv`",
            _ => "help: choose another file name: nnc does not replace a file the run reads, or write one file twice",
        };
        d.note(help)
    }
}

/// A file as the operating system knows it.
struct FileKey {
    path: PathBuf,
    /// Device and inode of an existing file (Unix).
    inode: Option<(u64, u64)>,
}

impl FileKey {
    fn of(path: &Path) -> FileKey {
        FileKey { path: canonical(path), inode: inode(path) }
    }

    fn same(&self, other: &FileKey) -> bool {
        match (self.inode, other.inode) {
            (Some(a), Some(b)) => a == b,
            _ => self.path == other.path,
        }
    }
}

#[cfg(unix)]
fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode(_: &Path) -> Option<(u64, u64)> {
    None
}

/// The canonical path of the nearest existing ancestor, then the rest with
/// `.` and `..` resolved: the file `path` names, whether or not it exists.
fn canonical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut out) = existing.canonicalize() {
            for part in rest.iter().rev() {
                push_normalized(&mut out, Path::new(part));
            }
            return out;
        }
        // `parent` also strips a last `..`, which `file_name` would not give.
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last.as_os_str());
                existing = parent;
            }
            _ => return normalized(&absolute),
        }
    }
}

fn push_normalized(out: &mut PathBuf, part: &Path) {
    for c in part.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
}

fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    push_normalized(&mut out, path);
    out
}

/// One file the program reads or writes, at the item that does it.
struct Use {
    key: FileKey,
    item: usize,
    span: Span,
}

/// Refuses every output of `program` (run from `source`, paths relative to
/// `base_dir`) that would overwrite its source, a data file, a checkpoint it
/// loads before writing it, or another of its outputs.
pub fn check(program: &Program, source: &Path, base_dir: &Path) -> Result<(), Vec<Diagnostic>> {
    let clashes = clashes(program, source, base_dir);
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(clashes.iter().map(Clash::to_diagnostic).collect())
    }
}

pub fn clashes(program: &Program, source: &Path, base_dir: &Path) -> Vec<Clash> {
    let at = |item: usize, (file, span): &(String, Span)| Use { key: FileKey::of(&base_dir.join(file)), item, span: *span };
    let source = FileKey::of(source);
    let mut data = Vec::new();
    let mut loaded = Vec::new();
    let mut outputs: Vec<(Output, String, Use)> = Vec::new();
    for (i, item) in program.items.iter().enumerate() {
        match item {
            Item::Data(d) => data.extend(dataset::files(d).iter().map(|f| at(i, f))),
            Item::Train(t) => {
                loaded.extend(["load", "resume"].into_iter().filter_map(|k| file_field(t, k)).map(|f| at(i, &f)));
                if let Some(f) = file_field(t, "checkpoint") {
                    outputs.push((Output::Checkpoint, f.0.clone(), at(i, &f)));
                }
            }
            Item::Plot(p) => {
                let csv = Path::new(&p.path).with_extension("csv").to_string_lossy().into_owned();
                outputs.push((Output::PlotImage, p.path.clone(), at(i, &(p.path.clone(), p.span))));
                outputs.push((Output::PlotCsv, csv.clone(), at(i, &(csv, p.span))));
            }
            Item::Module(_) | Item::Function(_) | Item::Let(_) | Item::Report(_) => {}
        }
    }
    let resumed_in_place = |out: &Use, read: &Use| {
        let Some(Item::Train(t)) = program.items.get(out.item) else { return false };
        read.item == out.item && file_field(t, "resume").is_some_and(|(_, span)| span == read.span)
    };
    let mut found = Vec::new();
    for (k, (output, path, out)) in outputs.iter().enumerate() {
        let overwritten = if out.key.same(&source) {
            Some(Overwritten::Source)
        } else if let Some(d) = data.iter().find(|d| d.key.same(&out.key)) {
            Some(Overwritten::Data { span: d.span })
        } else if let Some(l) = loaded.iter().find(|l| l.item <= out.item && l.key.same(&out.key) && !resumed_in_place(out, l)) {
            Some(Overwritten::Loaded { span: l.span })
        } else {
            outputs[..k].iter().find(|(_, _, o)| o.key.same(&out.key)).map(|(o, _, u)| Overwritten::Output { span: u.span, output: *o })
        };
        if let Some(overwritten) = overwritten {
            found.push(Clash { output: *output, path: path.clone(), span: out.span, overwritten });
        }
    }
    found
}

/// A train block's file-name field (`checkpoint = "..."`) with the span of the name.
fn file_field(t: &TrainDef, key: &str) -> Option<(String, Span)> {
    t.fields.iter().find(|f| f.key.name == key).and_then(|f| match &f.value.kind {
        ExprKind::Str(s) => Some((s.clone(), f.value.span)),
        _ => None,
    })
}
