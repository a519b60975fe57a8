//! Errors found while elaborating source into IR: names, arity, types and
//! shapes. Each variant holds the spans and facts; `to_diagnostic` is the one
//! place that words them.

use crate::ast::Span;
use crate::diagnostic::Diagnostic;
use crate::ir::{Shape, TensorType};

#[derive(Clone, Debug, PartialEq)]
pub struct ElabError {
    pub kind: ErrorKind,
    /// The calls we were inside when the error happened, innermost first:
    /// (call span, callee name).
    pub context: Vec<(Span, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ErrorKind {
    UnknownName { name: String, span: Span, suggestion: Option<String> },
    UnknownField { field: String, span: Span, of: String, available: Vec<String> },
    NotCallable { span: Span, what: String },
    Arity { span: Span, callee: String, expected: usize, found: usize, def_span: Option<Span> },
    UnknownKeyword { span: Span, callee: String, keyword: String, allowed: Vec<String> },
    MissingArgument { span: Span, callee: String, name: String },
    /// A value of the wrong kind: a module where a tensor was needed, etc.
    WrongKind { span: Span, expected: String, found: String },
    MatMulInner { span: Span, lhs_span: Span, rhs_span: Span, lhs: Shape, rhs: Shape },
    MatMulRank { span: Span, lhs_span: Span, rhs_span: Span, lhs: Shape, rhs: Shape },
    Broadcast { op: String, span: Span, lhs_span: Span, rhs_span: Span, lhs: Shape, rhs: Shape },
    NoSuchAxis { span: Span, axis: String, shape: Shape, names: Vec<Option<String>> },
    AxisOutOfRange { span: Span, axis: i64, rank: usize },
    /// An argument or result whose type disagrees with its annotation.
    TypeMismatch { span: Span, ann_span: Span, expected: String, found: TensorType, what: String },
    /// A shape variable bound to two different sizes in one signature.
    DimConflict { span: Span, ann_span: Span, var: String, first: String, second: String },
    LabelsNotInt { span: Span, found: TensorType },
    IntOperand { span: Span, op: String },
    Reshape { span: Span, from: Shape, to: Shape },
    Slice { span: Span, shape: Shape, axis: usize, start: i64, end: i64 },
    Concat { span: Span, lhs: Shape, rhs: Shape, axis: usize },
    NotConstant { span: Span, what: String },
    BadDim { span: Span, found: String },
    UnknownInit { span: Span, name: String },
    UnknownOptimizer { span: Span, name: String },
    UnknownMetric { span: Span, name: String },
    MissingField { span: Span, field: String },
    UnknownTrainField { span: Span, field: String },
    BadFieldValue { span: Span, field: String, expected: String },
    Duplicate { span: Span, first: Span, name: String },
    Recursion { span: Span, name: String },
    NotScalar { span: Span, what: String, shape: Shape },
    ClassCount { span: Span, logits: Shape, classes: usize },
    Solve { span: Span, a: Shape, b: Shape },
    /// A bug in a derivative rule or in the elaborator itself.
    Internal { span: Span, message: String },
}

fn list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

fn axis_names(names: &[Option<String>]) -> String {
    names.iter().map(|n| n.clone().unwrap_or_else(|| "_".into())).collect::<Vec<_>>().join(", ")
}

impl ElabError {
    pub fn to_diagnostic(&self) -> Diagnostic {
        let mut d = self.kind.to_diagnostic();
        for (span, callee) in &self.context {
            d = d.label(*span, format!("in this call of `{callee}`"));
        }
        d
    }
}

impl ErrorKind {
    fn to_diagnostic(&self) -> Diagnostic {
        use ErrorKind::*;
        match self {
            UnknownName { name, span, suggestion } => {
                let d = Diagnostic::new(format!("unknown name `{name}`")).label(*span, "not defined here or above");
                match suggestion {
                    Some(s) => d.note(format!("help: did you mean `{s}`?")),
                    None => d,
                }
            }
            UnknownField { field, span, of, available } => Diagnostic::new(format!("`{of}` has no member `{field}`"))
                .label(*span, format!("no `{field}` in `{of}`"))
                .note(format!("its members are {}", list(available))),
            NotCallable { span, what } => Diagnostic::new(format!("{what} cannot be called"))
                .label(*span, "this is not a function or module"),
            Arity { span, callee, expected, found, def_span } => {
                let d = Diagnostic::new(format!("`{callee}` takes {expected} argument{}, but {found} were given", plural(*expected)))
                    .label(*span, format!("expected {expected}, found {found}"));
                match def_span {
                    Some(s) => d.label(*s, "defined here"),
                    None => d,
                }
            }
            UnknownKeyword { span, callee, keyword, allowed } => {
                let d = Diagnostic::new(format!("`{callee}` has no argument named `{keyword}`"))
                    .label(*span, "unknown argument name");
                if allowed.is_empty() {
                    d.note(format!("`{callee}` takes no named arguments"))
                } else {
                    d.note(format!("expected one of {}", list(allowed)))
                }
            }
            MissingArgument { span, callee, name } => Diagnostic::new(format!("`{callee}` needs the argument `{name}`"))
                .label(*span, format!("`{name}` is missing")),
            WrongKind { span, expected, found } => Diagnostic::new(format!("expected {expected}, found {found}"))
                .label(*span, format!("this is {found}")),
            MatMulInner { span, lhs_span, rhs_span, lhs, rhs } => {
                let (k1, k2) = (lhs.dims().last().map(ToString::to_string), rhs.dims().iter().rev().nth(1).map(ToString::to_string));
                Diagnostic::new(format!("inner dimensions of `@` differ: {lhs} @ {rhs}"))
                    .label(*span, format!("{lhs} @ {rhs}: inner dimensions {} and {} differ", k1.unwrap_or_default(), k2.unwrap_or_default()))
                    .label(*lhs_span, format!("this is {lhs}"))
                    .label(*rhs_span, format!("this is {rhs}"))
            }
            MatMulRank { span, lhs_span, rhs_span, lhs, rhs } => Diagnostic::new(format!("`@` cannot multiply {lhs} by {rhs}"))
                .label(*span, "matrix product needs matrices with equal batch dimensions")
                .label(*lhs_span, format!("this is {lhs}"))
                .label(*rhs_span, format!("this is {rhs}")),
            Broadcast { op, span, lhs_span, rhs_span, lhs, rhs } => {
                Diagnostic::new(format!("shapes {lhs} and {rhs} cannot be broadcast together in `{op}`"))
                    .label(*span, format!("{lhs} {op} {rhs}"))
                    .label(*lhs_span, format!("this is {lhs}"))
                    .label(*rhs_span, format!("this is {rhs}"))
                    .note("dimensions are matched from the right; each pair must be equal or one of them 1")
            }
            NoSuchAxis { span, axis, shape, names } => Diagnostic::new(format!("no axis named `{axis}` in a tensor of shape {shape}"))
                .label(*span, format!("`{axis}` is not an axis of {shape}"))
                .note(format!("its axes are named [{}]; name them in a type annotation, or use an integer axis", axis_names(names))),
            AxisOutOfRange { span, axis, rank } => Diagnostic::new(format!("axis {axis} is out of range for a tensor of rank {rank}"))
                .label(*span, format!("expected an axis in -{rank}..{rank}")),
            TypeMismatch { span, ann_span, expected, found, what } => Diagnostic::new(format!("{what} has type {found}, expected {expected}"))
                .label(*span, format!("this is {found}"))
                .label(*ann_span, format!("expected {expected} because of this annotation")),
            DimConflict { span, ann_span, var, first, second } => {
                Diagnostic::new(format!("dimension `{var}` is {first} in one place and {second} in another"))
                    .label(*span, format!("here `{var}` would be {second}"))
                    .label(*ann_span, format!("`{var}` was bound to {first} by this annotation"))
            }
            LabelsNotInt { span, found } => Diagnostic::new(format!("class labels must be an int tensor, found {found}"))
                .label(*span, "these labels are floats")
                .note("declare the argument as `[B] int`, or load the data with `label:` (not `target:`)"),
            IntOperand { span, op } => Diagnostic::new(format!("`{op}` needs float operands"))
                .label(*span, "this is an int tensor (labels)"),
            Reshape { span, from, to } => Diagnostic::new(format!("cannot reshape {from} into {to}"))
                .label(*span, "the numbers of elements differ"),
            Slice { span, shape, axis, start, end } => Diagnostic::new(format!("slice {start}:{end} is out of range for axis {axis} of {shape}"))
                .label(*span, "out of range"),
            Concat { span, lhs, rhs, axis } => Diagnostic::new(format!("cannot concatenate {lhs} and {rhs} along axis {axis}"))
                .label(*span, "the other dimensions must be equal"),
            NotConstant { span, what } => Diagnostic::new(format!("{what} must be a constant number"))
                .label(*span, "not known before training starts"),
            BadDim { span, found } => Diagnostic::new(format!("a dimension must be a positive integer, found {found}"))
                .label(*span, "invalid dimension"),
            UnknownInit { span, name } => Diagnostic::new(format!("unknown initialiser `{name}`"))
                .label(*span, "not an initialiser")
                .note("initialisers: zeros, ones, normal(std), uniform(low, high), he_normal, xavier_uniform, xavier_normal"),
            UnknownOptimizer { span, name } => Diagnostic::new(format!("unknown optimizer `{name}`"))
                .label(*span, "not an optimizer")
                .note("optimizers: gd, sgd, momentum, nesterov, adam, adamw"),
            UnknownMetric { span, name } => Diagnostic::new(format!("unknown metric `{name}`"))
                .label(*span, "not a metric")
                .note("metrics: loss, accuracy, mse"),
            MissingField { span, field } => Diagnostic::new(format!("this train block has no `{field}`"))
                .label(*span, format!("add `{field} = ...` here")),
            UnknownTrainField { span, field } => Diagnostic::new(format!("unknown train setting `{field}`"))
                .label(*span, "not a train setting")
                .note("settings: loss, optimizer, batch, epochs, seed, schedule, metrics, checkpoint"),
            BadFieldValue { span, field, expected } => Diagnostic::new(format!("`{field}` must be {expected}"))
                .label(*span, format!("expected {expected}")),
            Duplicate { span, first, name } => Diagnostic::new(format!("`{name}` is defined twice"))
                .label(*span, "defined again here")
                .label(*first, "first defined here"),
            Recursion { span, name } => Diagnostic::new(format!("`{name}` calls itself"))
                .label(*span, "recursive call")
                .note("functions are inlined when compiled, so recursion is not allowed"),
            NotScalar { span, what, shape } => Diagnostic::new(format!("{what} must be a scalar, found {shape}"))
                .label(*span, format!("this is {shape}"))
                .note("reduce it with `mean(...)` or `sum(...)`"),
            ClassCount { span, logits, classes } => Diagnostic::new(format!("logits {logits} do not match the {classes} classes in the data"))
                .label(*span, format!("expected the last dimension to be {classes}")),
            Solve { span, a, b } => Diagnostic::new(format!("`solve` needs a square matrix and a matching right-hand side, found {a} and {b}"))
                .label(*span, "here"),
            Internal { span, message } => Diagnostic::new(format!("internal compiler error: {message}"))
                .label(*span, "while compiling this")
                .note("this is a bug in nnc; please report it with this file"),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The closest of `candidates` to `name` by edit distance, if close enough to suggest.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(name, c);
        if d <= (name.len().max(2) / 3).max(1) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
