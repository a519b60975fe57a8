//! The primitive operations. Each op family lives in one file with, side by side,
//! its shape rule (`*_shape_rule`), its derivative rule written in IR ops
//! (`*_vjp_rule`) and its reference evaluation in float64 (`*_eval`). This file
//! holds the `Op` enum and the exhaustive dispatch over it; codegen has the one
//! other exhaustive match (the lowering).
//!
//! Conventions shared by every rule:
//! - elementwise binary ops require equal shapes: broadcasting is an explicit
//!   `Broadcast` node inserted by the elaborator (`builder::broadcast_to`);
//! - reductions keep the reduced axes with size 1, so their transpose is a
//!   plain `Broadcast`;
//! - integer tensors (labels) are stored as floats; comparisons give 0.0 / 1.0.

pub mod elementwise;
pub mod index;
pub mod linalg;
pub mod movement;
pub mod random;
pub mod reduce;
pub mod scan;
pub mod window;

use crate::ast::Span;
use crate::builder::Builder;
use crate::diagnostic::Diagnostic;
use crate::ir::{InputKind, Shape, SizeEnv, TensorType, ValueId};
use crate::size::{OutOfMemory, TooLarge, TooLargeAt};
use ndarray::ArrayD;
use std::fmt;

pub use elementwise::{BinaryOp, UnaryOp};
pub use reduce::ReduceKind;
pub use window::Window;

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // ---- sources -------------------------------------------------------
    /// A value fed from outside: parameter, data batch, optimizer state, hyperparameter.
    Input {
        name: String,
        kind: InputKind,
    },
    /// A scalar constant (shape `[]`); `Broadcast` gives it a shape.
    Constant(f64),
    /// The index along `axis` at every position of the node's shape (for one-hot, masks).
    Iota {
        axis: usize,
    },
    /// Uniform numbers in [0, 1) at every position of the node's shape, from
    /// the scalar seed operand and this call site's `stream` (see `random`).
    RandomUniform {
        stream: u32,
    },
    // ---- elementwise (operands of equal shape) -------------------------
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// Identity whose derivative is zero (`stop_gradient`).
    StopGradient,
    // ---- movement ------------------------------------------------------
    /// NumPy broadcasting to `shape` (operand dims aligned on the right; each 1 or equal).
    Broadcast {
        shape: Shape,
    },
    Reshape {
        shape: Shape,
    },
    /// Output axis `i` is input axis `perm[i]`.
    Transpose {
        perm: Vec<usize>,
    },
    /// Elements `start..end` along `axis`.
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// `value` added before and after along `axis` (zeros: the transpose of `Slice`).
    Pad {
        axis: usize,
        before: usize,
        after: usize,
        value: f64,
    },
    /// Operands joined along `axis`.
    Concat {
        axis: usize,
    },
    // ---- sliding windows (convolution, pooling) ------------------------
    /// `[.., H, W] → [.., KH, KW, OH, OW]`: every window of the last two axes (im2col).
    Unfold {
        window: Window,
    },
    /// The transpose of `Unfold`: window elements summed back into `[.., H, W]` (col2im).
    Fold {
        window: Window,
        size: [usize; 2],
    },
    // ---- indexing by integer ids (embeddings) --------------------------
    /// `table [V, d..]`, `ids [i..]` → `[i.., d..]`: row `ids[i]` of the table.
    Gather,
    /// `ids [i..]`, `values [i.., d..]` → `[rows, d..]`: each value row added to row `ids[i]`.
    ScatterAdd {
        rows: usize,
    },
    /// `ids [i..]` (, `keep [i..]`) → the same ids, each required to be in
    /// `0..bound` where `keep` is not 0: class labels (`one_hot`).
    CheckIndex {
        bound: usize,
    },
    // ---- reductions (reduced axes kept with size 1) --------------------
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
    },
    // ---- linear algebra ------------------------------------------------
    /// `[.., M, K] @ [.., K, N] -> [.., M, N]`; leading (batch) dims equal.
    MatMul,
    /// `Solve(A, B) = A⁻¹ B` for square `A [N, N]` and `B [N, K]`.
    Solve,
    // ---- recurrence ----------------------------------------------------
    /// `[init, xs.., consts..]` → `[N, steps, S..]`: the states of a loop over
    /// time whose step is the graph `body` (see `scan`).
    Scan {
        body: Box<crate::ir::Graph>,
        steps: usize,
        /// How many of the operands after `init` are per-step sequences.
        inputs: usize,
        reverse: bool,
        /// Columns the body returns after the new state `[N, S]`: products it
        /// computed, kept for the derivative (stacked into the result, `[N,
        /// steps, S + saved]`, but not carried to the next step).
        saved: usize,
    },
}

/// Why an op cannot take operands of these types. The elaborator turns this
/// into a diagnostic with the spans of the operands.
#[derive(Clone, Debug, PartialEq)]
pub enum ShapeError {
    /// Elementwise operands differ in shape (after broadcasting was applied).
    Mismatch { op: &'static str, lhs: Shape, rhs: Shape },
    /// Operand shapes cannot be broadcast together.
    Broadcast { from: Shape, to: Shape },
    /// `@` with inner dimensions that differ.
    MatMulInner { lhs: Shape, rhs: Shape },
    /// `@` on operands of rank < 2, or batch dims that differ.
    MatMulRank { lhs: Shape, rhs: Shape },
    /// An axis is out of range for the operand's rank.
    Axis { axis: usize, shape: Shape },
    /// Element counts of a reshape differ.
    Reshape { from: Shape, to: Shape },
    /// Slice bounds outside the dim.
    Slice { start: usize, end: usize, shape: Shape, axis: usize },
    /// Concat operands disagree off the concat axis.
    Concat { lhs: Shape, rhs: Shape, axis: usize },
    /// A window that does not fit the last two axes (or a `Fold` operand of the wrong shape).
    Window { window: Window, shape: Shape },
    /// `solve` needs a square matrix and a matching right-hand side.
    Solve { a: Shape, b: Shape },
    /// Ids that select rows must be integers.
    IndexType { found: TensorType },
    /// A scan whose operands do not fit its body.
    Scan { reason: String },
    /// A result with more elements than a tensor may have (see `size`).
    TooLarge(TooLarge),
    /// Wrong number of operands (an internal error, never user-facing).
    Arity { op: &'static str, expected: usize, found: usize },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Constant(_) => "const",
            Op::Iota { .. } => "iota",
            Op::RandomUniform { .. } => "random_uniform",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::StopGradient => "stop_gradient",
            Op::Broadcast { .. } => "broadcast",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::Reduce { kind, .. } => kind.name(),
            Op::Unfold { .. } => "unfold",
            Op::Fold { .. } => "fold",
            Op::Gather => "gather_rows",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::CheckIndex { .. } => "check_index",
            Op::MatMul => "matmul",
            Op::Solve => "solve",
            Op::Scan { .. } => "scan",
        }
    }

    /// The op with symbolic dims in its attributes replaced (see `Graph::specialize`).
    pub fn substitute(&self, env: &SizeEnv) -> Result<Op, TooLarge> {
        Ok(match self {
            Op::Broadcast { shape } => Op::Broadcast { shape: shape.substitute(env)? },
            Op::Reshape { shape } => Op::Reshape { shape: shape.substitute(env)? },
            other => other.clone(),
        })
    }

    /// True for ops whose value does not depend on any argument's derivative.
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Constant(_) | Op::Iota { .. })
    }
}

/// The result type of `op` applied to operands of types `args`.
/// Source ops (`Input`, `Constant`, `Iota`) are typed by whoever creates them.
pub fn shape_rule(op: &Op, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    match op {
        Op::Input { .. } | Op::Iota { .. } | Op::RandomUniform { .. } => {
            Err(ShapeError::Arity { op: op.name(), expected: 0, found: args.len() })
        }
        Op::Constant(_) => Ok(TensorType::f32(Shape::scalar())),
        Op::Unary(u) => elementwise::unary_shape_rule(*u, args),
        Op::Binary(b) => elementwise::binary_shape_rule(*b, args),
        Op::StopGradient => elementwise::stop_gradient_shape_rule(args),
        Op::Broadcast { shape } => movement::broadcast_shape_rule(shape, args),
        Op::Reshape { shape } => movement::reshape_shape_rule(shape, args),
        Op::Transpose { perm } => movement::transpose_shape_rule(perm, args),
        Op::Slice { axis, start, end } => movement::slice_shape_rule(*axis, *start, *end, args),
        Op::Pad { axis, before, after, .. } => movement::pad_shape_rule(*axis, *before, *after, args),
        Op::Concat { axis } => movement::concat_shape_rule(*axis, args),
        Op::Reduce { axes, .. } => reduce::reduce_shape_rule(axes, args),
        Op::Unfold { window } => window::unfold_shape_rule(window, args),
        Op::Fold { window, size } => window::fold_shape_rule(window, *size, args),
        Op::Gather => index::gather_shape_rule(args),
        Op::ScatterAdd { rows } => index::scatter_add_shape_rule(*rows, args),
        Op::CheckIndex { .. } => index::check_index_shape_rule(args),
        Op::MatMul => linalg::matmul_shape_rule(args),
        Op::Solve => linalg::solve_shape_rule(args),
        Op::Scan { body, steps, inputs, saved, .. } => scan::scan_shape_rule(body, *steps, *inputs, *saved, args),
    }
}

/// Reverse-mode rule: given the node `out = op(args)` and the cotangent `g` of
/// `out`, build (in IR, through `b`) the cotangent of each argument, or `None`
/// where the argument gets no gradient. Rules only use differentiable IR ops,
/// so the result can itself be differentiated (grad of grad).
pub fn vjp_rule(b: &mut Builder, op: &Op, args: &[ValueId], out: ValueId, g: ValueId) -> Vec<Option<ValueId>> {
    match op {
        Op::Input { .. } | Op::Constant(_) | Op::Iota { .. } => Vec::new(),
        Op::Unary(u) => elementwise::unary_vjp_rule(b, *u, args, out, g),
        Op::Binary(bin) => elementwise::binary_vjp_rule(b, *bin, args, out, g),
        Op::StopGradient => vec![None],
        Op::RandomUniform { .. } => random::random_vjp_rule(b, args),
        Op::Broadcast { .. } => movement::broadcast_vjp_rule(b, args, g),
        Op::Reshape { .. } => movement::reshape_vjp_rule(b, args, g),
        Op::Transpose { perm } => movement::transpose_vjp_rule(b, perm, g),
        Op::Slice { axis, start, end } => movement::slice_vjp_rule(b, *axis, *start, *end, args, g),
        Op::Pad { axis, before, after, .. } => movement::pad_vjp_rule(b, *axis, *before, *after, args, g),
        Op::Concat { axis } => movement::concat_vjp_rule(b, *axis, args, g),
        Op::Reduce { kind, axes } => reduce::reduce_vjp_rule(b, *kind, axes, args, out, g),
        Op::Unfold { window } => window::unfold_vjp_rule(b, window, args, g),
        Op::Fold { window, .. } => window::fold_vjp_rule(b, window, g),
        Op::Gather => index::gather_vjp_rule(b, args, g),
        Op::ScatterAdd { .. } => index::scatter_add_vjp_rule(b, args, g),
        Op::CheckIndex { .. } => index::check_index_vjp_rule(args),
        Op::MatMul => linalg::matmul_vjp_rule(b, args, g),
        Op::Solve => linalg::solve_vjp_rule(b, args, out, g),
        Op::Scan { .. } => scan::scan_vjp_rule(b, op, args, out, g),
    }
}

/// Why the reference interpreter could not evaluate a node.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalError {
    /// An `Input` with no value supplied.
    MissingInput(String),
    /// A dim still symbolic at evaluation time (the graph was not specialized).
    Symbolic(Shape),
    /// `solve` on a singular matrix.
    Singular,
    /// An id outside `0..bound` selecting a row (`Gather`, `ScatterAdd`) or
    /// a class (`CheckIndex`), at the node `site` (set by the interpreter:
    /// the outermost node, so a scan's body reports the scan, as compiled
    /// code does).
    IndexOutOfRange { site: Option<ValueId>, index: f64, bound: usize },
    /// A supplied input has the wrong shape.
    InputShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    /// A node with more elements than a tensor may have (an unchecked graph).
    TooLarge(TooLargeAt),
    /// The machine could not give a node's value the memory it needs.
    OutOfMemory { span: Span, error: OutOfMemory },
}

impl EvalError {
    /// The diagnostic for a failed evaluation of `what`, placed at the node a
    /// size or memory error is about, else at `span`.
    pub fn to_diagnostic(&self, what: &str, span: Span) -> Diagnostic {
        match self {
            EvalError::TooLarge(at) => at.to_diagnostic(),
            EvalError::OutOfMemory { span, error } => error.to_diagnostic(*span),
            other => Diagnostic::new(format!("could not evaluate {what}")).label(span, other.to_string()),
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::MissingInput(name) => write!(f, "no value for input `{name}`"),
            EvalError::Symbolic(shape) => write!(f, "the shape {shape} is not known yet"),
            EvalError::Singular => write!(f, "`solve` was given a singular matrix"),
            EvalError::IndexOutOfRange { index, bound, .. } => write!(f, "id {index} is outside 0..{bound}"),
            EvalError::InputShape { name, expected, found } => write!(f, "input `{name}` is {found:?}, expected {expected:?}"),
            EvalError::TooLarge(at) => write!(f, "{}", at.to_diagnostic().title),
            EvalError::OutOfMemory { error, .. } => write!(f, "{}", error.message()),
        }
    }
}

/// Reference evaluation in float64 of one node, given its operands' values.
/// `ty` is the node's (specialized) type. `Input` is handled by the interpreter.
pub fn eval(op: &Op, args: &[&ArrayD<f64>], ty: &TensorType) -> Result<ArrayD<f64>, EvalError> {
    let out_shape = ty.shape.concrete().ok_or_else(|| EvalError::Symbolic(ty.shape.clone()))?;
    match op {
        Op::Input { name, .. } => Err(EvalError::MissingInput(name.clone())),
        Op::Constant(c) => Ok(ArrayD::from_elem(out_shape, *c)),
        Op::Iota { axis } => Ok(movement::iota_eval(*axis, &out_shape)),
        Op::RandomUniform { stream } => Ok(random::random_eval(*stream, args, &out_shape)),
        Op::Unary(u) => Ok(elementwise::unary_eval(*u, args)),
        Op::Binary(bin) => Ok(elementwise::binary_eval(*bin, args)),
        Op::StopGradient => Ok(args.first().map(|a| (*a).clone()).unwrap_or_default()),
        Op::Broadcast { .. } => Ok(movement::broadcast_eval(args, &out_shape)),
        Op::Reshape { .. } => Ok(movement::reshape_eval(args, &out_shape)),
        Op::Transpose { perm } => Ok(movement::transpose_eval(perm, args)),
        Op::Slice { axis, start, end } => Ok(movement::slice_eval(*axis, *start, *end, args)),
        Op::Pad { axis, before, value, .. } => Ok(movement::pad_eval(*axis, *before, *value, args, &out_shape)),
        Op::Concat { axis } => Ok(movement::concat_eval(*axis, args)),
        Op::Reduce { kind, axes } => Ok(reduce::reduce_eval(*kind, axes, args)),
        Op::Unfold { window } => Ok(window::unfold_eval(window, args, &out_shape)),
        Op::Fold { window, .. } => Ok(window::fold_eval(window, args, &out_shape)),
        Op::Gather => index::gather_eval(args, &out_shape),
        Op::ScatterAdd { .. } => index::scatter_add_eval(args, &out_shape),
        Op::CheckIndex { bound } => index::check_index_eval(*bound, args),
        Op::MatMul => Ok(linalg::matmul_eval(args, &out_shape)),
        Op::Solve => linalg::solve_eval(args),
        Op::Scan { body, steps, inputs, reverse, saved } => scan::scan_eval(body, *steps, *inputs, *reverse, *saved, args),
    }
}

impl fmt::Display for Op {
    /// The op as `nnc ir` prints it: its name and attributes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input { name, kind } => write!(f, "input {name} ({kind:?})"),
            Op::Constant(c) => write!(f, "const {c}"),
            Op::Iota { axis } => write!(f, "iota axis={axis}"),
            Op::RandomUniform { stream } => write!(f, "random_uniform stream={stream}"),
            Op::Broadcast { shape } => write!(f, "broadcast to {shape}"),
            Op::Reshape { shape } => write!(f, "reshape to {shape}"),
            Op::Transpose { perm } => write!(f, "transpose {perm:?}"),
            Op::Slice { axis, start, end } => write!(f, "slice axis={axis} {start}..{end}"),
            Op::Pad { axis, before, after, value } if *value == 0.0 => write!(f, "pad axis={axis} +{before} +{after}"),
            Op::Pad { axis, before, after, value } => write!(f, "pad axis={axis} +{before} +{after} with {value}"),
            Op::Concat { axis } => write!(f, "concat axis={axis}"),
            Op::Reduce { kind, axes } => write!(f, "{} axes={axes:?}", kind.name()),
            Op::Unfold { window } => write!(f, "unfold {window}"),
            Op::Fold { window, size } => write!(f, "fold {window} to {}x{}", size[0], size[1]),
            Op::ScatterAdd { rows } => write!(f, "scatter_add into {rows} rows"),
            Op::CheckIndex { bound } => write!(f, "check_index 0..{bound}"),
            Op::Scan { body, steps, inputs, reverse, saved } => {
                let dir = if *reverse { " reverse" } else { "" };
                let kept = if *saved > 0 { format!(" saved={saved}") } else { String::new() };
                write!(f, "scan{dir} steps={steps} inputs={inputs}{kept} body={{ {} nodes }}", body.nodes.len())
            }
            Op::Unary(_) | Op::Binary(_) | Op::StopGradient | Op::Gather | Op::MatMul | Op::Solve => {
                write!(f, "{}", self.name())
            }
        }
    }
}
