//! `data` declarations: load the file, select the splits, preprocess, and
//! report problems against the declaration's source.

use crate::augment::Augment;
use crate::data::{self, RowSelect, Standardizer, Table};
use crate::masking::{Masking, TextTask};
use crate::text::{self, Vocab};
use ndarray::Array2;
use nnc_compiler::ast::{self, DataDef, Expr, ExprKind, Span};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::error::closest;
use nnc_compiler::elaborate::range;
use nnc_compiler::elaborate::train::constant_number;
use nnc_compiler::elaborate::DataShape;
use std::path::Path;

/// One split of a data set, ready for batching.
#[derive(Clone, Debug)]
pub struct Split {
    pub x: Array2<f32>,
    /// Labels, `rows x label width` (width 1 unless each position has one).
    pub y: Array2<f32>,
    /// `shuffle(seed: s)`: visit rows in a fresh seeded order each epoch.
    pub shuffle_seed: Option<u64>,
    /// `augment(image: [H, W], ...)`: transform each training batch's images.
    /// Only the training loop uses it; metrics and `let`s see `x` unchanged.
    pub augment: Option<Augment>,
    /// `text(..., mask: rate)`: training batches are masked afresh each epoch.
    pub masking: Option<Masking>,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub splits: Vec<(String, Split)>,
    pub shape: DataShape,
    /// The tokenizer's vocabulary of a text data set (token ids ↔ text).
    pub vocab: Option<Vocab>,
}

impl Dataset {
    pub fn split(&self, name: &str) -> Option<&Split> {
        self.splits.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

/// File names with the spans where they were written.
pub type Files = Vec<(String, Span)>;

struct Options<'a> {
    path: (String, Span),
    label: Option<(String, Span, bool)>,
    /// `idx(images: ..., labels: ...)`: IDX image and label files, concatenated in order.
    idx: Option<(Files, Files)>,
    scale: Option<f32>,
    standardize: Option<(String, Span)>,
    /// `text(path, context: T)`: windows of `T` tokens.
    context: Option<usize>,
    /// `tokenizer: bpe(vocab: N)`: a BPE vocabulary of `N` tokens; `None`: characters.
    bpe: Option<usize>,
    /// `mask:` / `typos:` / `seed:`: a self-supervised task instead of next tokens.
    task: TextTask,
    /// `digit_task(...)`: generated source and target sequences.
    generated: Option<crate::tasks::TaskSpec>,
    source: &'a Expr,
}

fn error(span: Span, title: impl Into<String>, label: impl Into<String>) -> Diagnostic {
    Diagnostic::new(title).label(span, label)
}

fn options(def: &DataDef) -> Result<Options<'_>, Diagnostic> {
    let source = &def.source;
    let ExprKind::Call { callee, args } = &source.kind else {
        return Err(error(
            source.span,
            "a data source must be a call such as `csv(\"file.csv\", label: \"label\")`",
            "expected `csv(...)`",
        ));
    };
    let kind = match &callee.kind {
        ExprKind::Name(n) if matches!(n.as_str(), "csv" | "idx" | "text" | "digit_task") => n.as_str(),
        _ => {
            return Err(error(callee.span, "unknown data source", "expected `csv`, `idx`, `text` or `digit_task`")
                .note("data sources: csv(path, label: COLUMN | target: COLUMN, scale: NUMBER, standardize: SPLIT), idx(images: FILES, labels: FILES, scale: NUMBER), text(path, context: TOKENS), digit_task(reverse | sort, length: [MIN, MAX], count: ROWS, seed: N)"))
        }
    };
    let mut path = None;
    let mut opts = Options {
        path: (String::new(), source.span),
        label: None,
        idx: None,
        scale: None,
        standardize: None,
        context: None,
        bpe: None,
        task: TextTask::default(),
        generated: None,
        source,
    };
    match kind {
        "idx" => return idx_options(args, opts),
        "text" => return text_options(args, opts),
        "digit_task" => {
            opts.generated = Some(crate::tasks::parse(args, source.span)?);
            opts.path = ("digit_task".into(), callee.span);
            opts.label = Some(("target".into(), source.span, true));
            return Ok(opts);
        }
        _ => {}
    }
    for a in args {
        let key = a.name.as_ref().map(|n| n.name.as_str());
        match (key, &a.value.kind) {
            (None, ExprKind::Str(s)) if path.is_none() => path = Some((s.clone(), a.value.span)),
            (Some(k @ ("label" | "target")), ExprKind::Str(s)) => opts.label = Some((s.clone(), a.value.span, k == "label")),
            (Some("scale"), _) => {
                let v = constant_number(&a.value)
                    .ok_or_else(|| error(a.value.span, "`scale` must be a number", "expected a number such as 1/16"))?;
                let v = range::SCALE.check(v).map_err(|problem| problem.diagnostic(a.value.span))?;
                opts.scale = Some(v as f32);
            }
            (Some("standardize"), ExprKind::Name(s)) => opts.standardize = Some((s.clone(), a.value.span)),
            (Some(k), _) => {
                let span = a.name.as_ref().map_or(a.value.span, |n| n.span);
                return Err(error(span, format!("`csv` has no option `{k}` of this kind"), "unexpected option")
                    .note("options: label: \"COLUMN\" (class ids), target: \"COLUMN\" (regression), scale: NUMBER, standardize: SPLIT"));
            }
            (None, _) => return Err(error(a.value.span, "unexpected argument to `csv`", "expected the file name in quotes, once")),
        }
    }
    opts.path = path.ok_or_else(|| error(source.span, "`csv` needs a file name", "add the path in quotes"))?;
    if opts.label.is_none() {
        return Err(error(source.span, "`csv` needs a label column", "add `label: \"COLUMN\"` or `target: \"COLUMN\"`"));
    }
    Ok(opts)
}

/// `text("corpus.txt", context: 64)`: character tokens in windows of 64.
fn text_options<'a>(args: &[ast::CallArg], mut opts: Options<'a>) -> Result<Options<'a>, Diagnostic> {
    let mut path = None;
    for a in args {
        match (a.name.as_ref().map(|n| n.name.as_str()), &a.value.kind) {
            (None, ExprKind::Str(s)) if path.is_none() => path = Some((s.clone(), a.value.span)),
            (Some("context"), _) => match constant_number(&a.value) {
                Some(v) if v >= 1.0 && v.fract() == 0.0 => opts.context = Some(v as usize),
                _ => return Err(error(a.value.span, "`context` must be a positive whole number of tokens", "expected e.g. `context: 64`")),
            },
            (Some("tokenizer"), ExprKind::Name(t)) if t == "chars" => {}
            (Some("tokenizer"), ExprKind::Call { callee, args }) if matches!(&callee.kind, ExprKind::Name(n) if n == "bpe") => {
                let size = match args.as_slice() {
                    [a] if a.name.as_ref().is_none_or(|n| n.name == "vocab") => constant_number(&a.value),
                    _ => None,
                };
                match size {
                    Some(v) if v >= 1.0 && v.fract() == 0.0 => opts.bpe = Some(v as usize),
                    _ => return Err(error(a.value.span, "`bpe` needs a vocabulary size", "expected e.g. `bpe(vocab: 512)`")),
                }
            }
            (Some(k @ ("mask" | "typos" | "seed")), _) => opts.task.option(k, &a.value)?,
            (Some("tokenizer"), _) => {
                return Err(error(a.value.span, "unknown tokenizer", "expected `chars` or `bpe(vocab: N)`").note(
                    "tokenizers: chars (one token per character), bpe(vocab: N) (byte-pair merges learned from the file up to N tokens)",
                ))
            }
            _ => {
                let span = a.name.as_ref().map_or(a.value.span, |n| n.span);
                return Err(error(span, "unexpected argument to `text`", "here")
                    .note("text(\"FILE\", context: TOKENS, tokenizer: chars | bpe(vocab: N), mask: RATE | typos: PAIRS, seed: N): FILE may be gzipped (.gz)"));
            }
        }
    }
    opts.path = path.ok_or_else(|| error(opts.source.span, "`text` needs a file name", "add the path in quotes"))?;
    if opts.context.is_none() {
        return Err(error(opts.source.span, "`text` needs the window length", "add `context: TOKENS`, e.g. `context: 64`"));
    }
    opts.label = Some(("next".into(), opts.source.span, true));
    Ok(opts)
}

/// A string or a list of strings: `"a.gz"` or `["a.gz", "b.gz"]`.
fn file_list(e: &Expr) -> Option<Vec<(String, Span)>> {
    match &e.kind {
        ExprKind::Str(s) => Some(vec![(s.clone(), e.span)]),
        ExprKind::List(items) => items
            .iter()
            .map(|i| match &i.kind {
                ExprKind::Str(s) => Some((s.clone(), i.span)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn idx_options<'a>(args: &[ast::CallArg], mut opts: Options<'a>) -> Result<Options<'a>, Diagnostic> {
    let (mut images, mut labels) = (None, None);
    for a in args {
        let key = a.name.as_ref().map(|n| n.name.as_str());
        let files = || file_list(&a.value).ok_or_else(|| error(a.value.span, "expected a file name or a list of file names", "here"));
        match key {
            Some("images") => images = Some(files()?),
            Some("labels") => labels = Some(files()?),
            Some("scale") => {
                let v = constant_number(&a.value)
                    .ok_or_else(|| error(a.value.span, "`scale` must be a number", "expected a number such as 1/255"))?;
                let v = range::SCALE.check(v).map_err(|problem| problem.diagnostic(a.value.span))?;
                opts.scale = Some(v as f32);
            }
            _ => {
                return Err(error(a.value.span, "unexpected argument to `idx`", "here")
                    .note("options: images: FILES, labels: FILES, scale: NUMBER"));
            }
        }
    }
    match (images, labels) {
        (Some(i), Some(l)) => {
            opts.idx = Some((i, l));
            opts.label = Some(("label".into(), opts.source.span, true));
            Ok(opts)
        }
        _ => Err(error(opts.source.span, "`idx` needs `images:` and `labels:`", "add both file lists")),
    }
}

fn row_select(sel: &ast::RowSelect) -> Result<RowSelect, Diagnostic> {
    let int = |e: &Expr| -> Result<usize, Diagnostic> {
        match constant_number(e) {
            Some(v) if v >= 0.0 && v.fract() == 0.0 => Ok(v as usize),
            _ => Err(error(e.span, "a row number must be a non-negative integer", "expected an integer")),
        }
    };
    Ok(match sel {
        ast::RowSelect::Range { start, end, span } => {
            let (first, last) = (start.as_ref().map(int).transpose()?.unwrap_or(0), end.as_ref().map(int).transpose()?);
            if let Some(last) = last.filter(|&l| l < first) {
                return Err(error(*span, format!("the row range {first}..{last} is reversed"), "it starts after it ends")
                    .note(format!("help: rows `a..b` are a ≤ row < b: write `rows[{last}..{first}]`")));
            }
            RowSelect::Range { start: first, end: last }
        }
        ast::RowSelect::Modulo { modulus, remainder, equal, .. } => {
            let m = int(modulus)?;
            if m == 0 {
                return Err(error(modulus.span, "the modulus must be at least 1", "here"));
            }
            RowSelect::Modulo { modulus: m, remainder: int(remainder)?, equal: *equal }
        }
    })
}

/// The split's modifiers: the `shuffle` seed and the `augment` options (for
/// rows of `features` values).
fn modifiers(split: &ast::SplitDef, features: usize) -> Result<(Option<u64>, Option<Augment>), Diagnostic> {
    let (mut seed, mut augment) = (None, None);
    for m in &split.modifiers {
        let (name, args) = match &m.kind {
            ExprKind::Call { callee, args } => (&callee.kind, args.as_slice()),
            other => (other, &[][..]),
        };
        match name {
            ExprKind::Name(n) if n == "shuffle" => {
                let s = match args.first() {
                    Some(a) => match constant_number(&a.value) {
                        Some(v) if v >= 0.0 && v.fract() == 0.0 => v as u64,
                        _ => return Err(error(a.value.span, "`shuffle` needs an integer seed", "expected `shuffle(seed: 0)`")),
                    },
                    None => 0,
                };
                seed = Some(s);
            }
            ExprKind::Name(n) if n == "augment" => {
                if augment.is_some() {
                    return Err(error(m.span, format!("split `{}` has two `augment` modifiers", split.name.name), "the second one")
                        .note("put all options in one `augment(...)`"));
                }
                augment = Some(Augment::parse(m.span, args, features)?);
            }
            _ => {
                return Err(error(m.span, "unknown split modifier", "expected `shuffle(seed: N)` or `augment(image: [H, W], ...)`")
                    .note("split modifiers: shuffle(seed: N), augment(image: [H, W] or [C, H, W], rotate: DEGREES, translate: PIXELS, autocontrast: PROBABILITY, noise: STD, seed: N)"))
            }
        }
    }
    Ok((seed, augment))
}

/// The files a `data` declaration reads, as written, with their spans (none
/// for generated data, or if the declaration is malformed: loading it says why).
pub fn files(def: &DataDef) -> Files {
    match options(def) {
        Ok(Options { generated: Some(_), .. }) | Err(_) => Vec::new(),
        Ok(Options { idx: Some((images, labels)), .. }) => images.into_iter().chain(labels).collect(),
        Ok(Options { path, .. }) => vec![path],
    }
}

/// Each split name once: with two, every use read the first one.
fn distinct_split_names(def: &DataDef) -> Result<(), Diagnostic> {
    for (i, split) in def.splits.iter().enumerate() {
        if let Some(first) = def.splits[..i].iter().find(|s| s.name.name == split.name.name) {
            return Err(error(
                split.name.span,
                format!("`{}` has two splits named `{}`", def.name.name, split.name.name),
                "declared again here",
            )
            .label(first.name.span, "first declared here")
            .note("help: rename one of them, or delete the one you do not need"));
        }
    }
    Ok(())
}

/// Load a `data` declaration; file paths are relative to `base_dir` (the .nn file's folder).
pub fn load(def: &DataDef, base_dir: &Path) -> Result<Dataset, Diagnostic> {
    distinct_split_names(def)?;
    let opts = options(def)?;
    let (path_text, path_span) = &opts.path;
    let path = base_dir.join(path_text);
    let Some((label, label_span, is_class)) = &opts.label else {
        return Err(error(opts.source.span, "`csv` needs a label column", "here"));
    };
    if let Some(task) = &opts.generated {
        let table = crate::tasks::generate(task);
        let width = table.labels.ncols();
        let mut data = finish(def, opts, table, Some(crate::tasks::VOCAB), true)?;
        data.shape.features_int = true;
        data.shape.label_width = Some(width);
        data.shape.seq2seq = Some(crate::tasks::TOKENS);
        return Ok(data);
    }
    if let Some(context) = opts.context {
        let (mut table, vocab) = load_text(&path, context, opts.bpe, path_text, *path_span)?;
        let (classes, label_width, masking) = opts.task.apply(&mut table, vocab.len())?;
        let mut data = finish(def, opts, table, Some(classes), true)?;
        data.shape.features_int = true;
        data.shape.label_width = label_width;
        for (_, s) in &mut data.splits {
            s.masking.clone_from(&masking);
        }
        data.vocab = Some(vocab);
        return Ok(data);
    }
    let table = match &opts.idx {
        Some((images, labels)) => load_idx(base_dir, images, labels)?,
        None => load_table(&path, label, *label_span, path_text, *path_span)?,
    };
    let is_class = *is_class;
    let classes = if is_class { Some(class_count(&table, *label_span, label)?) } else { None };
    finish(def, opts, table, classes, is_class)
}

/// The corpus as windows of character ids, with its vocabulary.
fn load_text(path: &Path, context: usize, bpe: Option<usize>, path_text: &str, span: Span) -> Result<(Table, Vocab), Diagnostic> {
    let corpus = text::read_text(path).map_err(|e| match e {
        text::TextError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            error(span, format!("text file `{path_text}` not found"), "no such file")
                .note(format!("looked for {} (paths are relative to the folder of the .nn file)", path.display()))
        }
        e => error(span, format!("cannot read `{path_text}`"), e.to_string()),
    })?;
    let vocab = match bpe {
        Some(size) => Vocab::bpe_of(&corpus, size),
        None => Vocab::chars_of(&corpus),
    };
    let ids = vocab.encode(&corpus).map_err(|e| error(span, format!("cannot tokenize `{path_text}`"), e.to_string()))?;
    let table = text::windows(&ids, context).map_err(|e| error(span, format!("`{path_text}` is too short"), e.to_string()))?;
    Ok((table, vocab))
}

fn load_idx(base_dir: &Path, images: &[(String, Span)], labels: &[(String, Span)]) -> Result<Table, Diagnostic> {
    let first_span = images.first().map(|(_, s)| *s).unwrap_or_default();
    for (f, span) in images.iter().chain(labels) {
        if !base_dir.join(f).exists() {
            return Err(error(*span, format!("cannot read {}", base_dir.join(f).display()), "this file does not exist"));
        }
    }
    let to_paths = |v: &[(String, Span)]| v.iter().map(|(f, _)| base_dir.join(f)).collect::<Vec<_>>();
    let (x, y) = crate::idx::load(&to_paths(images), &to_paths(labels))
        .map_err(|e| error(first_span, "cannot load the IDX files", e.to_string()))?;
    let feature_names = (0..x.ncols()).map(|i| format!("p{i}")).collect();
    Ok(Table { features: x, labels: y.insert_axis(ndarray::Axis(1)), feature_names, label_name: "label".into() })
}

fn load_table(path: &Path, label: &str, label_span: Span, path_text: &str, path_span: Span) -> Result<Table, Diagnostic> {
    data::load_csv(path, label).map_err(|e| match &e {
        data::DataError::MissingLabelColumn { available, .. } => {
            let d = error(label_span, format!("`{path_text}` has no column `{label}`"), "not a column of this file");
            let d = match closest(label, available.iter().map(String::as_str)) {
                Some(s) => d.note(format!("help: did you mean `{s}`?")),
                None => d,
            };
            d.note(format!("its columns are {}", data::column_summary(available)))
        }
        data::DataError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            let d = error(path_span, format!("data file `{path_text}` not found"), "no such file");
            let d = match similar_file(path) {
                Some(name) => d.note(format!("help: did you mean `{}`?", Path::new(path_text).with_file_name(name).display())),
                None => d,
            };
            d.note(format!("looked for {} (paths are relative to the folder of the .nn file)", path.display()))
        }
        data::DataError::Io { source, .. } => error(path_span, format!("cannot read `{path_text}`"), source.to_string()),
        _ => error(path_span, format!("cannot load `{path_text}`"), "this file").note(e.to_string()),
    })
}

fn finish(def: &DataDef, opts: Options, table: Table, classes: Option<usize>, is_class: bool) -> Result<Dataset, Diagnostic> {
    let path_text = &opts.path.0;
    let mut splits = Vec::new();
    for s in &def.splits {
        let sel = row_select(&s.rows)?;
        let mut t = data::select_rows(&table, &sel).map_err(|e| match e {
            data::DataError::RangeOutOfBounds { start, end, rows } => error(
                s.span,
                format!("split `{}` asks for rows {start}..{end}, but `{path_text}` has {rows} rows", s.name.name),
                format!("the rows are numbered 0..{rows}"),
            )
            .note(format!("help: leave out the end, as in `rows[{start}..]`, to take every row up to the last")),
            e => error(s.span, format!("split `{}` does not fit the data", s.name.name), e.to_string()),
        })?;
        if let Some(f) = opts.scale {
            data::scale(&mut t, f);
        }
        let (shuffle_seed, augment) = modifiers(s, table.n_features())?;
        splits.push((s.name.name.clone(), Split { x: t.features, y: t.labels, shuffle_seed, augment, masking: None }));
    }
    if let Some((fit_on, span)) = &opts.standardize {
        let Some((_, reference)) = splits.iter().find(|(n, _)| n == fit_on) else {
            return Err(error(*span, format!("no split named `{fit_on}`"), "standardize with statistics of a split declared below"));
        };
        let st = Standardizer::fit(&reference.x).map_err(|e| error(*span, "cannot standardize", e.to_string()))?;
        for (_, s) in &mut splits {
            st.apply(&mut s.x).map_err(|e| error(*span, "cannot standardize", e.to_string()))?;
        }
    }
    // Autocontrast stretches to the data's own range: up to the largest
    // feature value of the split as the model sees it (after `scale` and
    // `standardize`), e.g. 1 for images with `scale: 1/255`.
    for (_, s) in &mut splits {
        if let Some(a) = &mut s.augment {
            let max = s.x.iter().copied().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, f32::max);
            a.contrast_max = if max.is_finite() { max } else { 1.0 };
        }
    }
    let shape = DataShape {
        features: table.n_features(),
        features_int: false,
        label_int: is_class,
        classes,
        label_width: None,
        seq2seq: None,
        splits: splits.iter().map(|(n, s)| (n.clone(), s.x.nrows())).collect(),
    };
    Ok(Dataset { name: def.name.name.clone(), splits, shape, vocab: None })
}

/// The largest class id a label column may hold, plus one: ids index rows of
/// a logits matrix (and are stored as f32), and 1e30 once became 0 classes.
const MAX_CLASSES: f32 = 2_147_483_648.0; // 2^31

/// Class labels must be whole numbers in [0, 2^31), at least two of them
/// distinct (a column of one class trains any model to "100 %"); returns K,
/// the largest id plus one.
fn class_count(t: &Table, span: Span, label: &str) -> Result<usize, Diagnostic> {
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for (i, &v) in t.labels.iter().enumerate() {
        if !(0.0..MAX_CLASSES).contains(&v) || v.fract() != 0.0 {
            return Err(error(
                span,
                format!("column `{label}` holds {} in data row {i}, not a class id 0, 1, 2, …", compact(v)),
                "declared as class labels here",
            )
            .note("class ids are whole numbers from 0 to 2^31 − 1; use `target:` for a regression target"));
        }
        (min, max) = (min.min(v), max.max(v));
    }
    if min == max {
        return Err(error(span, format!("column `{label}` holds only the class {}", compact(min)), "declared as class labels here")
            .note("a classifier needs at least two classes: with one, every model scores 100 %"));
    }
    Ok(max as usize + 1)
}

/// A number as a message shows it: `1e30`, not its thirty-one digits.
fn compact(v: f32) -> String {
    if v.abs() >= 1e9 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// A file next to `path` with a similar name (`digit.csv` → `digits.csv`).
fn similar_file(path: &Path) -> Option<String> {
    let wanted = path.file_name()?.to_str()?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let names: Vec<String> = std::fs::read_dir(dir).ok()?.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    closest(wanted, names.iter().map(String::as_str))
}
