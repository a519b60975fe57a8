//! Errors found while elaborating source into IR: names, arity, types and
//! shapes. Each variant holds the spans and facts; `to_diagnostic` is the one
//! place that words them.

use super::range::OutOfRange;
use crate::ast::Span;
use crate::diagnostic::Diagnostic;
use crate::ir::{DType, Dim, Shape, TensorType};
use crate::size::TooLarge;

#[derive(Clone, Debug, PartialEq)]
pub struct ElabError {
    /// Boxed so `Result<_, ElabError>` stays small on the happy path.
    pub kind: Box<ErrorKind>,
    /// The calls we were inside when the error happened, innermost first:
    /// (call span, callee name).
    pub context: Vec<(Span, String)>,
}

/// A member of `container` (at `span`) that instantiates `contained`.
#[derive(Clone, Debug, PartialEq)]
pub struct CycleLink {
    pub container: String,
    pub contained: String,
    pub span: Span,
}

/// The innermost calls labelled in a diagnostic; outer ones are counted in a
/// note (a call nested 1,000 deep would otherwise print 1,000 labels).
const MAX_CONTEXT_LABELS: usize = 8;

/// Why a metric does not fit its data (see `ErrorKind::SequenceMetric`).
#[derive(Clone, Debug, PartialEq)]
pub enum SequenceMetricProblem {
    /// `exact_match` on data without target sequences.
    NoTargets,
    /// `exact_match` on sequences of other widths than the training data's.
    OtherShape { train_data: String },
    /// `accuracy` or `mse` on target sequences.
    PerRow,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ErrorKind {
    UnknownName {
        name: String,
        span: Span,
        suggestion: Option<String>,
    },
    /// An unknown name in the place of a function: `leaky_relu(x)`, `x |> leaky_relu`.
    UnknownFunction {
        name: String,
        span: Span,
        suggestion: Option<String>,
    },
    UnknownField {
        field: String,
        span: Span,
        of: String,
        available: Vec<String>,
    },
    /// Training or a metric reads a split that selects no rows (`rows[1797..]`
    /// of a 1797-row file): an average over it would be 0/0.
    EmptySplit {
        span: Span,
        data: String,
        split: String,
        /// Where the split is declared.
        declared: Option<Span>,
    },
    NotCallable {
        span: Span,
        what: String,
    },
    Arity {
        span: Span,
        callee: String,
        expected: usize,
        found: usize,
        def_span: Option<Span>,
    },
    UnknownKeyword {
        span: Span,
        callee: String,
        keyword: String,
        allowed: Vec<String>,
    },
    MissingArgument {
        span: Span,
        callee: String,
        name: String,
    },
    /// A value of the wrong kind: a module where a tensor was needed, etc.
    WrongKind {
        span: Span,
        expected: String,
        found: String,
    },
    MatMulInner {
        span: Span,
        lhs_span: Span,
        rhs_span: Span,
        lhs: Shape,
        rhs: Shape,
    },
    MatMulRank {
        span: Span,
        lhs_span: Span,
        rhs_span: Span,
        lhs: Shape,
        rhs: Shape,
    },
    Broadcast {
        op: String,
        span: Span,
        lhs_span: Span,
        rhs_span: Span,
        lhs: Shape,
        rhs: Shape,
    },
    NoSuchAxis {
        span: Span,
        axis: String,
        shape: Shape,
        names: Vec<Option<String>>,
    },
    AxisOutOfRange {
        span: Span,
        axis: i64,
        rank: usize,
    },
    /// An argument or result whose type disagrees with its annotation.
    TypeMismatch {
        span: Span,
        ann_span: Span,
        expected: String,
        found: TensorType,
        what: String,
        /// The value was flattened from a tensor of higher rank (`flatten`):
        /// where, the shape before, and the size the annotation wanted.
        flattened: Option<(Span, Shape, usize)>,
    },
    /// A dimension of a function's signature named like a parameter or buffer
    /// of its module, used where the parameter was meant (`conv2d(x, W)` with
    /// `x: [B, C, H, W]` and `param W`).
    ShadowedMember {
        span: Span,
        name: String,
        dim: String,
        dim_span: Span,
        member: String,
        member_span: Option<Span>,
    },
    /// A shape variable bound to two different sizes in one signature.
    DimConflict {
        span: Span,
        ann_span: Span,
        var: String,
        first: String,
        second: String,
    },
    LabelsNotInt {
        span: Span,
        found: TensorType,
    },
    IntOperand {
        span: Span,
        op: String,
    },
    Reshape {
        span: Span,
        from: Shape,
        to: Shape,
    },
    /// A value or parameter with more elements than a tensor may have;
    /// `param` names the parameter when it is one.
    TooLarge {
        span: Span,
        error: TooLarge,
        param: Option<String>,
    },
    Slice {
        span: Span,
        shape: Shape,
        axis: usize,
        start: i64,
        end: i64,
    },
    Concat {
        span: Span,
        lhs: Shape,
        rhs: Shape,
        axis: usize,
    },
    NotConstant {
        span: Span,
        what: String,
    },
    BadDim {
        span: Span,
        found: String,
    },
    /// A number outside the range its rule allows (`adam(beta1: 1.5)`, `x[1.5]`).
    NumberOutOfRange {
        span: Span,
        problem: OutOfRange,
    },
    UnknownInit {
        span: Span,
        name: String,
    },
    UnknownOptimizer {
        span: Span,
        name: String,
    },
    UnknownMetric {
        span: Span,
        name: String,
    },
    MissingField {
        span: Span,
        field: String,
    },
    UnknownTrainField {
        span: Span,
        field: String,
    },
    BadFieldValue {
        span: Span,
        field: String,
        expected: String,
    },
    /// `load` and `resume` in one train block: start afresh or continue, not both.
    LoadAndResume {
        span: Span,
        load: Span,
    },
    Duplicate {
        span: Span,
        first: Span,
        name: String,
    },
    /// Two `report`s with one label.
    DuplicateReport {
        span: Span,
        first: Span,
        label: String,
    },
    Recursion {
        span: Span,
        name: String,
    },
    /// Modules containing each other in a ring: each link's container holds
    /// the next link's container (the last holds the first).
    ModuleCycle {
        links: Vec<CycleLink>,
    },
    /// A call or module instance nested more than `limit` deep.
    CallDepth {
        span: Span,
        callee: String,
        limit: usize,
    },
    NotScalar {
        span: Span,
        what: String,
        shape: Shape,
    },
    ClassCount {
        span: Span,
        logits: Shape,
        classes: usize,
    },
    Solve {
        span: Span,
        a: Shape,
        b: Shape,
    },
    /// A mistake specific to one builtin (a convolution kernel that does not
    /// fit, channels not divisible by groups, …), worded at the call site with
    /// what was expected and what was found.
    Builtin {
        span: Span,
        title: String,
        label: String,
        note: Option<String>,
    },
    /// A metric that does not fit its data: `exact_match` without target
    /// sequences (or with other widths than the model trains on), `accuracy`
    /// or `mse` on them.
    SequenceMetric {
        span: Span,
        metric: String,
        data: String,
        problem: SequenceMetricProblem,
    },
    /// A sequence-to-sequence model whose `forward` does not give next-token
    /// logits for every position of the decoder input.
    DecoderOutput {
        span: Span,
        found: Shape,
        decoder_input: Shape,
    },
    /// A model trained on sequence-to-sequence data whose `forward` takes the
    /// source alone; `widths` are those of the source and the decoder input.
    DecoderInputMissing {
        span: Span,
        def_span: Option<Span>,
        widths: (usize, usize),
    },
    /// A bug in a derivative rule or in the elaborator itself.
    /// A loss that reads data other than its batch (`digits.test.x`) or a tensor `let`.
    ForeignInput {
        span: Span,
        name: String,
    },
    Internal {
        span: Span,
        message: String,
    },
}

fn list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

fn axis_names(names: &[Option<String>]) -> String {
    names.iter().map(|n| n.clone().unwrap_or_else(|| "_".into())).collect::<Vec<_>>().join(", ")
}

/// "1 argument", "2 arguments".
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The number of elements of a shape as text: `B × 64`, `49`.
fn element_count(shape: &Shape) -> String {
    let known = shape.dims().iter().filter_map(Dim::known).fold(1usize, usize::saturating_mul);
    let mut parts: Vec<String> = shape.dims().iter().filter(|d| d.known().is_none()).map(ToString::to_string).collect();
    if known != 1 || parts.is_empty() {
        parts.push(known.to_string());
    }
    parts.join(" × ")
}

/// The dims before the last two: the batch dims of a matrix product.
fn batch_dims(shape: &Shape) -> Shape {
    let d = shape.dims();
    Shape(d[..d.len().saturating_sub(2)].to_vec())
}

/// A shape without its last dimension: the labels that logits of this shape need.
fn without_last(shape: &Shape) -> Shape {
    let d = shape.dims();
    Shape(d[..d.len().saturating_sub(1)].to_vec())
}

/// The first pair of dims, from the right, that neither match nor broadcast.
fn broadcast_conflict(lhs: &Shape, rhs: &Shape) -> Option<(Dim, Dim)> {
    let one = Dim::Known(1);
    lhs.dims()
        .iter()
        .rev()
        .zip(rhs.dims().iter().rev())
        .find(|(a, b)| a != b && **a != one && **b != one)
        .map(|(a, b)| (a.clone(), b.clone()))
}

/// "did you mean" for a named argument: names used by other libraries first.
fn suggest_keyword(keyword: &str, allowed: &[String]) -> Option<String> {
    const SYNONYMS: &[(&str, &str)] = &[
        ("learning_rate", "lr"),
        ("dim", "axis"),
        ("axes", "axis"),
        ("keepdim", "keepdims"),
        ("keep_dims", "keepdims"),
        ("label_smoothing", "smoothing"),
        ("epsilon", "eps"),
        ("decay", "weight_decay"),
    ];
    SYNONYMS
        .iter()
        .find(|(from, to)| *from == keyword && allowed.iter().any(|a| a == to))
        .map(|(_, to)| to.to_string())
        .or_else(|| closest(keyword, allowed.iter().map(String::as_str)))
}

/// "did you mean" for an initialiser: names used by other libraries first.
fn suggest_init(name: &str) -> Option<String> {
    const SYNONYMS: &[(&str, &str)] = &[
        ("he_uniform", "he_normal"),
        ("kaiming_normal", "he_normal"),
        ("kaiming_uniform", "he_normal"),
        ("glorot_uniform", "xavier_uniform"),
        ("glorot_normal", "xavier_normal"),
        ("zero", "zeros"),
        ("randn", "normal"),
        ("gaussian", "normal"),
    ];
    SYNONYMS.iter().find(|(from, _)| *from == name).map(|(_, to)| to.to_string()).or_else(|| closest(name, INITIALISERS.iter().copied()))
}

fn with_suggestion(d: Diagnostic, suggestion: Option<String>) -> Diagnostic {
    match suggestion {
        Some(s) => d.note(format!("help: did you mean `{s}`?")),
        None => d,
    }
}

const INITIALISERS: &[&str] = &["zeros", "ones", "normal", "uniform", "he_normal", "xavier_uniform", "xavier_normal"];
const OPTIMIZERS: &[&str] = &["gd", "sgd", "momentum", "nesterov", "adam", "adamw"];
const METRICS: &[&str] = &["loss", "accuracy", "mse", "exact_match"];
use super::train::FIELDS as TRAIN_SETTINGS;

impl ElabError {
    /// Reword "unknown name" as "unknown function" when the name is `callee`,
    /// the thing being called.
    pub(crate) fn in_callee(mut self, callee: Span) -> ElabError {
        if let ErrorKind::UnknownName { name, span, suggestion } = &*self.kind {
            if *span == callee {
                let (name, span, suggestion) = (name.clone(), *span, suggestion.clone());
                self.kind = Box::new(ErrorKind::UnknownFunction { name, span, suggestion });
            }
        }
        self
    }

    pub fn to_diagnostic(&self) -> Diagnostic {
        let mut d = self.kind.to_diagnostic();
        for (span, callee) in self.context.iter().take(MAX_CONTEXT_LABELS) {
            if d.labels.iter().all(|l| l.span != *span) {
                d = d.label(*span, format!("in this call of `{callee}`"));
            }
        }
        match self.context.len().checked_sub(MAX_CONTEXT_LABELS) {
            Some(hidden) if hidden > 0 => d.note(format!("{} further out are not shown", plural(hidden, "enclosing call"))),
            _ => d,
        }
    }
}

impl ErrorKind {
    fn to_diagnostic(&self) -> Diagnostic {
        use ErrorKind::*;
        match self {
            UnknownName { name, span, suggestion } => with_suggestion(
                Diagnostic::new(format!("unknown name `{name}`")).label(*span, "not found in this scope"),
                suggestion.clone(),
            ),
            UnknownFunction { name, span, suggestion } => {
                let d = Diagnostic::new(format!("unknown function `{name}`")).label(*span, "no function, module or built-in of this name");
                match suggestion {
                    Some(s) => d.note(format!("help: did you mean `{s}`?")),
                    None => d.note(format!("help: to define it, add a function such as `fn {name}(x: [B, N]) -> [B, N] = ...`")),
                }
            }
            UnknownField { field, span, of, available } => {
                let d = Diagnostic::new(format!("`{of}` has no member `{field}`")).label(*span, format!("no `{field}` in `{of}`"));
                let d = with_suggestion(d, closest(field, available.iter().map(String::as_str)));
                if available.is_empty() {
                    d
                } else {
                    d.note(format!("the members of `{of}` are {}", list(available)))
                }
            }
            EmptySplit { span, data, split, declared } => {
                let d = Diagnostic::new(format!("the split `{data}.{split}` has no rows"))
                    .label(*span, format!("`{data}.{split}` is read here"));
                let d = match declared {
                    Some(s) => d.label(*s, "this selects no rows"),
                    None => d,
                };
                d.note("training and metrics average over the rows of their split: give it at least one row")
            }
            NotCallable { span, what } => {
                let d = Diagnostic::new(format!("{what} cannot be called")).label(*span, "not a function or module");
                match what.strip_prefix("the number ") {
                    Some(n) => d.note(format!("help: to multiply, write the `*`: `{n} * (...)`")),
                    None => d,
                }
            }
            Arity { span, callee, expected, found, def_span } => {
                let given = if *found == 1 { "1 was given".to_string() } else { format!("{found} were given") };
                let d = Diagnostic::new(format!("`{callee}` takes {}, but {given}", plural(*expected, "argument")))
                    .label(*span, format!("expected {}, found {found}", plural(*expected, "argument")));
                match def_span {
                    Some(s) => d.label(*s, format!("`{callee}` is defined here")),
                    None => d,
                }
            }
            UnknownKeyword { span, callee, keyword, allowed } => {
                let d = Diagnostic::new(format!("`{callee}` has no argument named `{keyword}`")).label(*span, "unknown argument name");
                let d = with_suggestion(d, suggest_keyword(keyword, allowed));
                if allowed.is_empty() {
                    d.note(format!("`{callee}` takes no named arguments"))
                } else {
                    d.note(format!("the arguments of `{callee}` are {}", list(allowed)))
                }
            }
            MissingArgument { span, callee, name } => Diagnostic::new(format!("`{callee}` needs the argument `{name}`"))
                .label(*span, format!("`{name}` is missing from this call")),
            WrongKind { span, expected, found } => {
                // A hint may follow the description in parentheses: "the module type `Mlp` (instantiate ...)".
                let (found, hint) = match found.split_once(" (") {
                    Some((f, h)) => (f.to_string(), Some(h.strip_suffix(')').unwrap_or(h).to_string())),
                    None => (found.clone(), None),
                };
                let d = Diagnostic::new(format!("expected {expected}, found {found}")).label(*span, format!("this is {found}"));
                if let Some(name) = found.strip_prefix("the module type `").and_then(|n| n.strip_suffix('`')) {
                    d.note(format!(
                        "help: `{name}` describes a model but is not one; make one a member (`net = {name}(...)`) or take one as an argument (`m: {name}`), and call that"
                    ))
                } else {
                    match hint {
                        Some(h) => d.note(h),
                        None => d,
                    }
                }
            }
            MatMulInner { span, lhs_span, rhs_span, lhs, rhs } => {
                let k1 = lhs.dims().last().map(ToString::to_string).unwrap_or_default();
                let rd = rhs.dims();
                let k2 = rd.get(rd.len().saturating_sub(2)).map(ToString::to_string).unwrap_or_default();
                let title = format!("inner dimensions of `@` differ: {lhs} @ {rhs}");
                let d = if lhs_span == rhs_span {
                    Diagnostic::new(title).label(*span, format!("{lhs} @ {rhs}: inner dimensions {k1} and {k2} differ"))
                } else {
                    let which = if rd.len() >= 2 { "rows" } else { "entries" };
                    Diagnostic::new(title)
                        .label(*lhs_span, format!("this is {lhs}: {k1} columns"))
                        .label(*rhs_span, format!("this is {rhs}: {k2} {which}"))
                };
                let d = d.note(format!(
                    "`a @ b` needs the last dimension of `a` to equal the second-to-last dimension of `b`, but they are {k1} and {k2}"
                ));
                // A weight stored the other way round ([out, in] instead of [in, out]).
                if rd.len() == 2 && rd.last() == lhs.dims().last() && rd[0] != rd[1] {
                    d.note(format!(
                        "help: the right operand transposed, [{}, {}], would fit: swap its dimensions where it is declared, or use `transpose(...)`",
                        rd[1], rd[0]
                    ))
                } else {
                    d
                }
            }
            MatMulRank { span, lhs_span, rhs_span, lhs, rhs } => {
                let d = Diagnostic::new(format!("`@` cannot multiply {lhs} by {rhs}"));
                if lhs.rank() == 0 || rhs.rank() == 0 {
                    let s = if lhs.rank() == 0 { lhs_span } else { rhs_span };
                    return d.label(*s, "this is a scalar").note("help: `@` is the matrix product; to scale a tensor by a number, use `*`");
                }
                let d = if lhs_span == rhs_span {
                    d.label(*span, format!("{lhs} @ {rhs}"))
                } else {
                    d.label(*lhs_span, format!("this is {lhs}")).label(*rhs_span, format!("this is {rhs}"))
                };
                d.note(format!(
                    "`@` multiplies matrices in the last two dimensions; the dimensions before them must be equal (or the right operand a single matrix), but they are {} and {}",
                    batch_dims(lhs),
                    batch_dims(rhs)
                ))
            }
            Broadcast { op, span, lhs_span, rhs_span, lhs, rhs } => broadcast_diagnostic(op, *span, *lhs_span, *rhs_span, lhs, rhs),
            NoSuchAxis { span, axis, shape, names } => {
                let d = Diagnostic::new(format!("no axis named `{axis}` in a tensor of shape {shape}"))
                    .label(*span, format!("`{axis}` is not an axis of {shape}"));
                let named: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
                if named.is_empty() {
                    d.note("the axes of this tensor have no names: use an integer axis, or name them with a type annotation such as `let z: [B, K] = ...`")
                } else {
                    with_suggestion(d, closest(axis, named.iter().copied()))
                        .note(format!("the axes of {shape} are named [{}]", axis_names(names)))
                }
            }
            AxisOutOfRange { span, axis, rank } => {
                let label = match rank {
                    0 => "a scalar has no axes".to_string(),
                    1 => "the only axis is 0 (or -1, counting from the end)".to_string(),
                    2 => "the axes are 0 and 1 (or -2 and -1, counting from the end)".to_string(),
                    r => format!("the axes are 0 to {} (or -{r} to -1, counting from the end)", r - 1),
                };
                Diagnostic::new(format!("axis {axis} is out of range for a tensor of rank {rank}")).label(*span, label)
            }
            TypeMismatch { span, ann_span, expected, found, what, flattened: Some((flat_span, from, want)) } => {
                flattened_mismatch(*span, *ann_span, expected, found, what, *flat_span, from, *want)
            }
            TypeMismatch { span, ann_span, expected, found, what, flattened: None } => {
                let d = Diagnostic::new(format!("{what} has type {found}, expected {expected}"))
                    .label(*span, format!("this is {found}"))
                    .label(*ann_span, format!("expected {expected} because of this annotation"));
                match found.dtype {
                    DType::I32 if !expected.ends_with(" int") => {
                        d.note(format!("help: this holds int class labels; add `int` to the annotation: `{expected} int`"))
                    }
                    DType::F32 if expected.ends_with(" int") => {
                        d.note("this holds floats; int class labels come from `label:` in `csv(...)` (`target:` loads floats)")
                    }
                    _ => d,
                }
            }
            ShadowedMember { span, name, dim, dim_span, member, member_span } => {
                let d =
                    Diagnostic::new(format!("`{name}` here is the dimension `{name}` of the signature ({dim}), not the {member} `{name}`"))
                        .label(*span, format!("this `{name}` is the dimension, {dim}"))
                        .label(*dim_span, format!("the signature binds the dimension `{name}` here, which hides the {member}"));
                let d = match member_span {
                    Some(s) => d.label(*s, format!("the {member} `{name}` is declared here")),
                    None => d,
                };
                d.note("inside a function, the dimensions of its signature come before the members of its module")
                    .note(format!("help: rename the {member} (or the dimension) so that the two differ"))
            }
            DimConflict { span, ann_span, var, first, second } => {
                Diagnostic::new(format!("dimension `{var}` is {first} in one place and {second} in another"))
                    .label(*span, format!("here `{var}` would be {second}"))
                    .label(*ann_span, format!("`{var}` was bound to {first} by this annotation"))
                    .note(format!("every `{var}` in a signature stands for the same size"))
            }
            LabelsNotInt { span, found } => {
                let found = match found.dtype {
                    DType::F32 => format!("float {}", found.shape),
                    DType::I32 => found.to_string(),
                };
                Diagnostic::new(format!("class labels must be an int tensor, found {found}"))
                    .label(*span, format!("these labels are {found}"))
                    .note("help: declare the labels as `[B] int`, and load the data with `label:` (`target:` is for regression)")
            }
            IntOperand { span, op } => Diagnostic::new(format!("`{op}` needs float operands"))
                .label(*span, "this is an int tensor (class labels)")
                .note("help: to compute with class labels, turn them into floats with `one_hot(labels, classes)`"),
            TooLarge { span, error, param } => error.to_diagnostic(*span, param.as_ref().map(|p| format!("parameter `{p}`")).as_deref()),
            Reshape { span, from, to } => Diagnostic::new(format!("cannot reshape {from} into {to}"))
                .label(*span, format!("{from} has {} elements, but {to} has {}", element_count(from), element_count(to))),
            Slice { span, shape, axis, start, end } => match shape.dims().get(*axis) {
                Some(Dim::Known(n)) => Diagnostic::new(format!("slice {start}:{end} is out of range for axis {axis} of {shape}"))
                    .label(*span, format!("axis {axis} has {n} entries, so the bounds must lie in 0..{n}")),
                Some(d) => Diagnostic::new(format!("cannot index axis {axis} of {shape}: its size `{d}` is not known in advance"))
                    .label(*span, format!("axis {axis} has size `{d}`"))
                    .note("only axes of a fixed size can be indexed or sliced; write `:` to keep the whole axis"),
                None => Diagnostic::new(format!("slice {start}:{end} is out of range for {shape}")).label(*span, "out of range"),
            },
            Concat { span, lhs, rhs, axis } => Diagnostic::new(format!("cannot concatenate {lhs} and {rhs} along axis {axis}"))
                .label(*span, format!("all dimensions except axis {axis} must be equal")),
            NotConstant { span, what } => {
                Diagnostic::new(format!("{what} must be a constant number")).label(*span, "not known before training starts")
            }
            BadDim { span, found } => {
                Diagnostic::new(format!("a dimension must be a positive integer, found {found}")).label(*span, "not a positive integer")
            }
            NumberOutOfRange { span, problem } => problem.diagnostic(*span),
            UnknownInit { span, name } => with_suggestion(
                Diagnostic::new(format!("unknown initialiser `{name}`")).label(*span, "not an initialiser"),
                suggest_init(name),
            )
            .note("the initialisers are zeros, ones, normal(std), uniform(low, high), he_normal, xavier_uniform and xavier_normal"),
            UnknownOptimizer { span, name } => with_suggestion(
                Diagnostic::new(format!("unknown optimizer `{name}`")).label(*span, "not an optimizer"),
                closest(name, OPTIMIZERS.iter().copied()),
            )
            .note("the optimizers are gd, sgd, momentum, nesterov, adam and adamw"),
            UnknownMetric { span, name } => with_suggestion(
                Diagnostic::new(format!("unknown metric `{name}`")).label(*span, "not a metric"),
                closest(name, METRICS.iter().copied()),
            )
            .note("the metrics are loss, accuracy, mse and exact_match(greedy | beam: WIDTH), as in `metrics = [accuracy on digits.test]`"),
            MissingField { span, field } => {
                let example = match field.as_str() {
                    "optimizer" => "`optimizer = adam(lr: 1e-3)`",
                    "loss" => "`loss = loss`, naming a `fn loss(m: Model, x: [B, F], y: [B] int) -> scalar`",
                    "batch" => "`batch = 64` (only `gd`, which uses the whole split at once, needs none)",
                    "epochs" => "`epochs = 10`",
                    _ => "",
                };
                let d = Diagnostic::new(format!("this train block has no `{field}`"))
                    .label(*span, format!("this train block needs `{field} = ...`"));
                if example.is_empty() {
                    d
                } else {
                    d.note(format!("help: add a line such as {example}"))
                }
            }
            UnknownTrainField { span, field } => with_suggestion(
                Diagnostic::new(format!("unknown train setting `{field}`")).label(*span, "not a train setting"),
                closest(field, TRAIN_SETTINGS.iter().copied()),
            )
            .note(format!("the settings are {}", TRAIN_SETTINGS.join(", "))),
            BadFieldValue { span, field, expected } => {
                Diagnostic::new(format!("`{field}` must be {expected}")).label(*span, format!("this is not {expected}"))
            }
            LoadAndResume { span, load } => Diagnostic::new("this train block has both `load` and `resume`")
                .label(*span, "`resume` continues the run that wrote this checkpoint")
                .label(*load, "`load` starts a new run from a checkpoint's parameters")
                .note("help: keep `resume` to continue an interrupted run (its optimizer state, epoch and step), or `load` to fine-tune from the parameters with fresh optimizer state"),
            Duplicate { span, first, name } => Diagnostic::new(format!("`{name}` is defined twice"))
                .label(*span, "defined again here")
                .label(*first, "first defined here")
                .note("help: rename one of them, or delete the one you do not need"),
            DuplicateReport { span, first, label } => Diagnostic::new(format!("two reports are labelled \"{label}\""))
                .label(*span, "reported again here")
                .label(*first, "first reported here")
                .note("each label is one entry of the results (and one key of `nnc run --json`), so a second would hide the first; rename one"),
            Recursion { span, name } => Diagnostic::new(format!("`{name}` calls itself"))
                .label(*span, "recursive call")
                .note("functions are inlined when compiled, so recursion is not allowed"),
            ModuleCycle { links } => {
                let first = links.first().map_or("", |l| l.container.as_str());
                let chain: Vec<String> = links.iter().map(|l| format!("`{}`", l.container)).chain([format!("`{first}`")]).collect();
                let mut d = Diagnostic::new(format!("module `{first}` contains itself: {}", chain.join(" contains ")));
                for l in links {
                    d = d.label(l.span, format!("`{}` contains `{}` here", l.container, l.contained));
                }
                d.note("a module's members are built with it, so a module cannot contain itself, directly or through other modules")
                    .note("help: to repeat a block, make it a module of its own and stack that: `blocks = [Block; 2]`")
            }
            CallDepth { span, callee, limit } => Diagnostic::new(format!("calls and modules are nested more than {limit} deep"))
                .label(*span, format!("this use of `{callee}` would be level {}", limit + 1))
                .note(format!(
                    "functions are inlined and modules instantiated where they are used; at most {limit} may be nested inside each other"
                ))
                .note("help: a chain this deep is most likely generated by mistake; a stack `[Block; n]` repeats a module without nesting"),
            NotScalar { span, what, shape } => {
                if what.starts_with("the function") {
                    Diagnostic::new(format!("{what} must return a scalar, found {shape}"))
                        .label(*span, format!("this function returns {shape}"))
                        .note("help: `grad` differentiates a function with a scalar result; reduce it with `sum(...)` or `mean(...)`")
                } else {
                    Diagnostic::new(format!("{what} must be a scalar, found {shape}"))
                        .label(*span, format!("this is {shape}"))
                        .note("help: average it over the batch with `mean(...)`, or add it up with `sum(...)`")
                }
            }
            ClassCount { span, logits, classes } => {
                let outputs = logits.dims().last().map(ToString::to_string).unwrap_or_default();
                Diagnostic::new(format!("the model outputs {logits}, but the data has {classes} classes"))
                    .label(*span, format!("this model has {outputs} outputs per example"))
                    .note(format!(
                        "the labels run from 0 to {}, so the last dimension of the logits must be {classes}",
                        classes.saturating_sub(1)
                    ))
            }
            Solve { span, a, b } => {
                Diagnostic::new(format!("`solve` needs a square matrix and a matching right-hand side, found {a} and {b}"))
                    .label(*span, "here")
            }
            Builtin { span, title, label, note } => {
                let d = Diagnostic::new(title.clone()).label(*span, label.clone());
                match note {
                    Some(n) => d.note(n.clone()),
                    None => d,
                }
            }
            SequenceMetric { span, metric, data, problem } => match problem {
                SequenceMetricProblem::NoTargets => {
                    Diagnostic::new(format!("`{metric}` decodes target sequences, but `{data}` has none"))
                        .label(*span, format!("`{data}` is not a sequence-to-sequence data set"))
                        .note("`exact_match` compares the sequence the model decodes with each row's target: it needs data such as `digit_task(reverse, length: [8, 12], count: 1000)` and a model whose `forward` takes the source and the decoder input")
                }
                SequenceMetricProblem::OtherShape { train_data } => Diagnostic::new(format!(
                    "`{metric}` on `{data}` needs sequences shaped like the training data `{train_data}`"
                ))
                .label(*span, format!("the model is compiled for the source and target widths of `{train_data}`"))
                .note("declare the evaluation rows as a split of the training data set"),
                SequenceMetricProblem::PerRow => {
                    Diagnostic::new(format!("`{metric}` compares one prediction per row with its label, but `{data}` holds target sequences"))
                        .label(*span, "not a per-row metric of a sequence-to-sequence model")
                        .note(format!("help: measure it with `exact_match(greedy) on {data}.SPLIT` or `loss on {data}.SPLIT`"))
                }
            },
            DecoderOutput { span, found, decoder_input } => {
                Diagnostic::new(format!("the model returns {found}, but a sequence-to-sequence model must return next-token logits for its decoder input {decoder_input}"))
                    .label(*span, format!("`forward(x, decoder_input)` returns {found}"))
                    .note(format!("the logits must be {}, the decoder input's shape followed by the vocabulary", {
                        let mut d: Vec<String> = decoder_input.dims().iter().map(ToString::to_string).collect();
                        d.push("V".into());
                        format!("[{}]", d.join(", "))
                    }))
            }
            DecoderInputMissing { span, def_span, widths: (s, t) } => {
                let d = Diagnostic::new("on sequence-to-sequence data the model is called as `m(source, decoder_input)`, but its `forward` takes one argument")
                    .label(*span, "this model is trained on source and target sequences");
                let d = match def_span {
                    Some(def) => d.label(*def, "`forward` is defined here"),
                    None => d,
                };
                d.note(format!("help: declare `fn forward(src: [B, {s}] int, tgt: [B, {t}] int) -> [B, {t}, V]`: `tgt` is the target without its last position, `y[:, :-1]` in the loss (teacher forcing), and the prefix decoded so far in `exact_match`"))
            }
            ForeignInput { span, name } => Diagnostic::new(format!("the loss uses `{name}`, which is not part of a training batch"))
                .label(*span, format!("this loss reads `{name}`"))
                .note("a loss sees the model, the batch `x` and its labels `y`; evaluate other data with `metrics = [...]` or `report`"),
            Internal { span, message } => Diagnostic::new(format!("internal compiler error: {message}"))
                .label(*span, "while compiling this")
                .note("this is a bug in nnc; please report it with this file"),
        }
    }
}

/// An argument made by flattening (`flatten`) whose size does not match its
/// annotation: say where the size came from, and what would give the wanted one.
#[allow(clippy::too_many_arguments)]
fn flattened_mismatch(
    span: Span,
    ann_span: Span,
    expected: &str,
    found: &TensorType,
    what: &str,
    flat_span: Span,
    from: &Shape,
    want: usize,
) -> Diagnostic {
    let rest = &from.dims()[1..];
    let parts = rest.iter().map(ToString::to_string).collect::<Vec<_>>().join(" × ");
    let size = found.shape.dims().get(1).map(ToString::to_string).unwrap_or_default();
    let origin = format!("{from} flattened: {parts} = {size} features");
    let d = Diagnostic::new(format!("{what} has type {found}, expected {expected}: {size} features where {want} are expected"));
    let d = if flat_span == span {
        d.label(span, format!("this is {found}, {origin}"))
    } else {
        d.label(span, format!("this is {found}")).label(flat_span, origin)
    };
    let d = d.label(ann_span, format!("expected {expected} because of this annotation"));
    // [N, C, H, W] with k²·want elements: a k×k pooling before flattening fits.
    let pool = match rest.iter().map(Dim::known).collect::<Option<Vec<_>>>().as_deref() {
        Some(&[c, h, w]) if want > 0 && (c * h * w) % want == 0 => {
            let k = ((c * h * w / want) as f64).sqrt().round() as usize;
            (k > 1 && k * k * want == c * h * w && h % k == 0 && w % k == 0).then(|| {
                format!(
                    "help: {c} × {h} × {w} is {} times {want}; a {k}x{k} pooling before flattening (`max_pool(..., {k})`, giving {c} × {} × {}) would fit, or the layer could take {} inputs",
                    k * k,
                    h / k,
                    w / k,
                    c * h * w
                )
            })
        }
        _ => None,
    };
    d.note(pool.unwrap_or_else(|| {
        format!("help: make the layer take {size} inputs, or change the layers before `flatten` so that they give {want}")
    }))
}

/// Shapes that do not fit an elementwise op, `mse` or `cross_entropy`.
fn broadcast_diagnostic(op: &str, span: Span, lhs_span: Span, rhs_span: Span, lhs: &Shape, rhs: &Shape) -> Diagnostic {
    match op {
        "mse" => {
            let d = Diagnostic::new(format!("`mse` needs a prediction and a target of the same shape, found {lhs} and {rhs}"))
                .label(lhs_span, format!("the prediction is {lhs}"))
                .label(rhs_span, format!("the target is {rhs}"));
            // [B, 1] against [B]: broadcasting would compare every prediction with every target.
            let (long, short) = if lhs.rank() > rhs.rank() { (lhs, rhs) } else { (rhs, lhs) };
            if long.rank() == short.rank() + 1 && long.dims().last() == Some(&Dim::Known(1)) && without_last(long) == *short {
                d.note(format!(
                    "help: make both {long} with `reshape(..., {long})`, or both {short} with `[:, 0]`; broadcasting them would compare every prediction with every target"
                ))
            } else {
                d
            }
        }
        "cross_entropy" => Diagnostic::new(format!(
            "`cross_entropy` needs one label per row of logits: logits {lhs} call for labels {}, found {rhs}",
            without_last(lhs)
        ))
        .label(rhs_span, format!("these labels are {rhs}"))
        .label(span, format!("the logits are {lhs}")),
        "broadcast" => Diagnostic::new(format!("cannot broadcast {lhs} to {rhs}"))
            .label(span, format!("{lhs} does not broadcast to {rhs}"))
            .note("dimensions are matched from the right; each pair must be equal, or the first one 1"),
        _ => {
            let title = format!("shapes {lhs} and {rhs} cannot be broadcast together in `{op}`");
            let d = if lhs_span == rhs_span {
                Diagnostic::new(title).label(span, format!("{lhs} {op} {rhs}"))
            } else {
                Diagnostic::new(title).label(lhs_span, format!("this is {lhs}")).label(rhs_span, format!("this is {rhs}"))
            };
            match broadcast_conflict(lhs, rhs) {
                Some((a, b)) => d.note(format!(
                    "dimensions are matched from the right, and each pair must be equal or one of them 1; here {a} and {b} differ"
                )),
                None => d.note("dimensions are matched from the right; each pair must be equal or one of them 1"),
            }
        }
    }
}

/// The closest of `candidates` to `name`, if close enough to suggest: by
/// edit distance ignoring case (so `w` finds `W`), then exact edit distance,
/// then alphabetically, so the choice never depends on the candidates' order.
/// Failing that, a candidate that starts with `name` (`acc` → `accuracy`) or
/// makes up most of it (`label_smoothing` → `smoothing`).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let len = name.chars().count();
    if len > SUGGESTED_CHARS {
        return None;
    }
    // One-letter names are all one edit apart: only suggest a change of case.
    let limit = if len <= 1 { 0 } else { (len / 3).max(1) };
    let lower = name.to_lowercase();
    // Only names a person could have meant: a 2 GB CSV header without commas
    // is one "column name", and expanding it to chars took 8.6 GB.
    let mut candidates: Vec<&str> =
        candidates.into_iter().filter(|c| *c != name && c.len() <= 4 * SUGGESTED_CHARS && c.chars().count() <= SUGGESTED_CHARS).collect();
    candidates.sort_unstable();
    candidates.dedup();
    let mut best: Option<((usize, usize), &str)> = None;
    for &c in &candidates {
        // Edit distance is at least the difference in length: skip the rest unread.
        if c.chars().count().abs_diff(len) > limit {
            continue;
        }
        let folded = edit_distance(&lower, &c.to_lowercase());
        if folded > limit {
            continue;
        }
        let key = (folded, edit_distance(name, c));
        if best.is_none_or(|(b, _)| key < b) {
            best = Some((key, c));
        }
    }
    if let Some((_, c)) = best {
        return Some(c.to_string());
    }
    if len < 3 {
        return None;
    }
    candidates
        .iter()
        // A contained candidate must be most of the name: `logits` is not a misspelt `log`.
        .filter(|c| c.starts_with(name) || (2 * c.chars().count() > len && name.contains(**c)))
        .max_by_key(|c| c.len())
        .map(|c| c.to_string())
}

/// The longest name (in characters) `closest` compares or suggests: longer
/// than any identifier or column name a person types, and short enough that
/// comparing one candidate costs at most a few thousand steps.
const SUGGESTED_CHARS: usize = 64;

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

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggestions_skip_names_no_one_typed() {
        assert_eq!(closest("label", ["Label", "p0"]), Some("Label".into()));
        // A 100 MB "column name" (a CSV header of garbage) is neither compared nor suggested.
        let garbage = "labelx".repeat(20_000_000);
        assert_eq!(closest("label", [garbage.as_str(), "p0"]), None);
        assert_eq!(closest(&garbage, ["label"]), None);
    }
}
