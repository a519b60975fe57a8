//! `Builder` appends typed nodes to a graph: every node's type comes from its
//! op's shape rule. The elaborator uses the checked form (`try_op`) and turns a
//! `ShapeError` into a diagnostic; derivative rules and optimizer graphs use
//! the plain helpers, where a shape error would be a bug in a rule. Such a bug
//! is recorded in `internal_error` (never a panic) and reported by the caller.

use crate::ast::Span;
use crate::ir::{DType, Dim, Graph, InputKind, Shape, TensorType, ValueId};
use crate::ops::{shape_rule, BinaryOp, Op, ReduceKind, ShapeError, UnaryOp};

pub struct Builder<'g> {
    pub graph: &'g mut Graph,
    /// Span given to every node created (the source construct being built).
    pub span: Span,
    /// The first shape error raised by an unchecked helper (a bug in a rule).
    pub internal_error: Option<ShapeError>,
}

impl<'g> Builder<'g> {
    pub fn new(graph: &'g mut Graph, span: Span) -> Builder<'g> {
        Builder { graph, span, internal_error: None }
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }

    pub fn shape(&self, v: ValueId) -> Shape {
        self.graph.shape(v).clone()
    }

    /// The type of `op(args)` by the op's shape rule.
    fn type_of(&self, op: &Op, args: &[ValueId]) -> Result<TensorType, ShapeError> {
        let tys: Vec<&TensorType> = args.iter().map(|&a| self.graph.ty(a)).collect();
        let mut ty = shape_rule(op, &tys)?;
        // Comparisons and movement of integer tensors keep the operand's dtype;
        // arithmetic always yields floats except where the rule says otherwise.
        if matches!(
            op,
            Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } | Op::Broadcast { .. } | Op::Concat { .. } | Op::StopGradient
        ) && tys.first().is_some_and(|t| t.dtype == DType::I32)
        {
            ty.dtype = DType::I32;
        }
        Ok(ty)
    }

    /// Append `op(args)` if the shape rule accepts it and the result is not
    /// larger than a tensor may be: the rules' own arithmetic is checked,
    /// this bounds their results.
    pub fn try_op(&mut self, op: Op, args: &[ValueId]) -> Result<ValueId, ShapeError> {
        let ty = self.type_of(&op, args)?;
        ty.shape.check_size().map_err(ShapeError::TooLarge)?;
        Ok(self.graph.push(op, args.to_vec(), ty, self.span))
    }

    /// Append `op(args)`; a shape error is recorded as an internal error. A
    /// result too large for a tensor is appended all the same (and recorded):
    /// its size comes from the user's numbers (`eye(n)`, `ones(shape)`), and
    /// the elaborator reports the first too-large node at its span (see
    /// `elaborate::first_too_large`), wherever it was built.
    pub fn op(&mut self, op: Op, args: &[ValueId]) -> ValueId {
        match self.type_of(&op, args) {
            Ok(ty) => {
                if let Err(e) = ty.shape.check_size() {
                    self.internal_error.get_or_insert(ShapeError::TooLarge(e));
                }
                self.graph.push(op, args.to_vec(), ty, self.span)
            }
            Err(e) => {
                self.internal_error.get_or_insert(e);
                // Keep building with a placeholder so the caller can report the error.
                self.graph.push(Op::Constant(0.0), Vec::new(), TensorType::f32(Shape::scalar()), self.span)
            }
        }
    }

    // ---- sources -----------------------------------------------------------

    pub fn input(&mut self, name: &str, kind: InputKind, ty: TensorType) -> ValueId {
        self.graph.push(Op::Input { name: name.to_string(), kind }, Vec::new(), ty, self.span)
    }

    /// A scalar constant.
    pub fn scalar(&mut self, c: f64) -> ValueId {
        self.op(Op::Constant(c), &[])
    }

    /// A constant filling `shape`.
    pub fn full(&mut self, c: f64, shape: &Shape) -> ValueId {
        let s = self.scalar(c);
        self.broadcast(s, shape)
    }

    /// A constant shaped like `like`.
    pub fn full_like(&mut self, c: f64, like: ValueId) -> ValueId {
        let shape = self.shape(like);
        self.full(c, &shape)
    }

    /// Index along `axis` at each position of `shape`.
    pub fn iota(&mut self, shape: &Shape, axis: usize) -> ValueId {
        let ty = TensorType { shape: shape.clone(), dtype: DType::I32 };
        self.graph.push(Op::Iota { axis }, Vec::new(), ty, self.span)
    }

    // ---- composites the language's built-ins share (elaborate/builtins.rs) --

    /// sigmoid(x) = 1 / (1 + exp(−x)), the primitive `UnaryOp::Sigmoid`.
    pub fn sigmoid(&mut self, x: ValueId) -> ValueId {
        self.unary(UnaryOp::Sigmoid, x)
    }

    /// GELU, exactly: x · Φ(x) = x · ½ (1 + erf(x/√2)), the primitive
    /// `UnaryOp::Gelu`.
    pub fn gelu(&mut self, x: ValueId) -> ValueId {
        self.unary(UnaryOp::Gelu, x)
    }

    /// softplus(x) = log(1 + eˣ) = max(x, 0) + log(1 + e^(−|x|)), stable for large |x|
    pub fn softplus(&mut self, x: ValueId) -> ValueId {
        let z = self.full_like(0.0, x);
        let pos = self.binary(BinaryOp::Max, x, z);
        let a = self.unary(UnaryOp::Abs, x);
        let na = self.neg(a);
        let e = self.exp(na);
        let l1 = self.offset(e, 1.0);
        let l = self.log(l1);
        self.add(pos, l)
    }

    /// Uniform [0, 1) numbers of `shape` from the scalar `seed` (see `ops::random`).
    /// softmax over `axes`: `exp(x − max) / Σ exp(x − max)`, the max shift held
    /// constant (it cancels), one exponential per element.
    pub fn softmax(&mut self, x: ValueId, axes: &[usize]) -> ValueId {
        let shape = self.shape(x);
        let m = self.reduce_max(x, axes);
        let m = self.stop_gradient(m);
        let mb = self.broadcast(m, &shape);
        let z = self.sub(x, mb);
        let e = self.exp(z);
        let s = self.reduce_sum(e, axes);
        let sb = self.broadcast(s, &shape);
        self.div(e, sb)
    }

    pub fn random_uniform(&mut self, seed: ValueId, shape: &Shape, stream: u32) -> ValueId {
        self.graph.push(Op::RandomUniform { stream }, vec![seed], TensorType::f32(shape.clone()), self.span)
    }

    // ---- elementwise -------------------------------------------------------

    pub fn unary(&mut self, u: UnaryOp, x: ValueId) -> ValueId {
        self.op(Op::Unary(u), &[x])
    }
    pub fn binary(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> ValueId {
        self.op(Op::Binary(b), &[x, y])
    }
    pub fn neg(&mut self, x: ValueId) -> ValueId {
        self.unary(UnaryOp::Neg, x)
    }
    pub fn exp(&mut self, x: ValueId) -> ValueId {
        self.unary(UnaryOp::Exp, x)
    }
    pub fn log(&mut self, x: ValueId) -> ValueId {
        self.unary(UnaryOp::Log, x)
    }
    pub fn sqrt(&mut self, x: ValueId) -> ValueId {
        self.unary(UnaryOp::Sqrt, x)
    }
    pub fn add(&mut self, x: ValueId, y: ValueId) -> ValueId {
        self.binary(BinaryOp::Add, x, y)
    }
    pub fn sub(&mut self, x: ValueId, y: ValueId) -> ValueId {
        self.binary(BinaryOp::Sub, x, y)
    }
    pub fn mul(&mut self, x: ValueId, y: ValueId) -> ValueId {
        self.binary(BinaryOp::Mul, x, y)
    }
    pub fn div(&mut self, x: ValueId, y: ValueId) -> ValueId {
        self.binary(BinaryOp::Div, x, y)
    }
    /// `x * c` for a constant `c`.
    pub fn scale(&mut self, x: ValueId, c: f64) -> ValueId {
        let k = self.full_like(c, x);
        self.mul(x, k)
    }
    /// `x + c` for a constant `c`.
    pub fn offset(&mut self, x: ValueId, c: f64) -> ValueId {
        let k = self.full_like(c, x);
        self.add(x, k)
    }
    pub fn stop_gradient(&mut self, x: ValueId) -> ValueId {
        self.op(Op::StopGradient, &[x])
    }

    // ---- movement ----------------------------------------------------------

    /// Broadcast to `shape`; no node when the shape already matches.
    pub fn broadcast(&mut self, x: ValueId, shape: &Shape) -> ValueId {
        if self.graph.shape(x) == shape {
            return x;
        }
        self.op(Op::Broadcast { shape: shape.clone() }, &[x])
    }

    pub fn reshape(&mut self, x: ValueId, shape: &Shape) -> ValueId {
        if self.graph.shape(x) == shape {
            return x;
        }
        self.op(Op::Reshape { shape: shape.clone() }, &[x])
    }

    pub fn transpose(&mut self, x: ValueId, perm: &[usize]) -> ValueId {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return x;
        }
        self.op(Op::Transpose { perm: perm.to_vec() }, &[x])
    }

    /// Swap the last two axes.
    pub fn matrix_transpose(&mut self, x: ValueId) -> ValueId {
        let r = self.graph.shape(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        if r >= 2 {
            perm.swap(r - 1, r - 2);
        }
        self.transpose(x, &perm)
    }

    pub fn slice(&mut self, x: ValueId, axis: usize, start: usize, end: usize) -> ValueId {
        self.op(Op::Slice { axis, start, end }, &[x])
    }

    pub fn pad(&mut self, x: ValueId, axis: usize, before: usize, after: usize) -> ValueId {
        self.op(Op::Pad { axis, before, after, value: 0.0 }, &[x])
    }

    pub fn unfold(&mut self, x: ValueId, window: crate::ops::Window) -> ValueId {
        self.op(Op::Unfold { window }, &[x])
    }

    pub fn fold(&mut self, x: ValueId, window: crate::ops::Window, size: [usize; 2]) -> ValueId {
        self.op(Op::Fold { window, size }, &[x])
    }

    /// Rows `ids` of `table` (an embedding lookup).
    pub fn gather_rows(&mut self, table: ValueId, ids: ValueId) -> ValueId {
        self.op(Op::Gather, &[table, ids])
    }

    /// `[rows, d..]` zeros with each row of `values` added at its id.
    pub fn scatter_add(&mut self, ids: ValueId, values: ValueId, rows: usize) -> ValueId {
        self.op(Op::ScatterAdd { rows }, &[ids, values])
    }

    /// `ids`, each required to be in `0..bound` where `keep` (if given) is not 0.
    pub fn check_index(&mut self, ids: ValueId, keep: Option<ValueId>, bound: usize) -> ValueId {
        let args: Vec<ValueId> = std::iter::once(ids).chain(keep).collect();
        self.op(Op::CheckIndex { bound }, &args)
    }

    pub fn concat(&mut self, xs: &[ValueId], axis: usize) -> ValueId {
        self.op(Op::Concat { axis }, xs)
    }

    // ---- reductions --------------------------------------------------------

    /// Sum over `axes`, keeping them with size 1.
    pub fn reduce_sum(&mut self, x: ValueId, axes: &[usize]) -> ValueId {
        if axes.is_empty() {
            return x;
        }
        self.op(Op::Reduce { kind: ReduceKind::Sum, axes: axes.to_vec() }, &[x])
    }

    pub fn reduce_max(&mut self, x: ValueId, axes: &[usize]) -> ValueId {
        if axes.is_empty() {
            return x;
        }
        self.op(Op::Reduce { kind: ReduceKind::Max, axes: axes.to_vec() }, &[x])
    }

    /// Sum of every element, as a scalar `[]`.
    pub fn sum_all(&mut self, x: ValueId) -> ValueId {
        let r = self.graph.shape(x).rank();
        let axes: Vec<usize> = (0..r).collect();
        let s = self.reduce_sum(x, &axes);
        self.reshape(s, &Shape::scalar())
    }

    /// Sum `x` down to `shape` (the transpose of NumPy broadcasting from `shape`).
    pub fn sum_to(&mut self, x: ValueId, shape: &Shape) -> ValueId {
        let from = self.shape(x);
        if &from == shape {
            return x;
        }
        let lead = from.rank().saturating_sub(shape.rank());
        let mut axes: Vec<usize> = (0..lead).collect();
        for (i, d) in shape.dims().iter().enumerate() {
            if *d == Dim::Known(1) && from.dims().get(lead + i) != Some(&Dim::Known(1)) {
                axes.push(lead + i);
            }
        }
        let s = self.reduce_sum(x, &axes);
        self.reshape(s, shape)
    }

    // ---- linear algebra ----------------------------------------------------

    pub fn matmul(&mut self, x: ValueId, y: ValueId) -> ValueId {
        self.op(Op::MatMul, &[x, y])
    }

    pub fn solve(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.op(Op::Solve, &[a, b])
    }
}

/// NumPy broadcasting: the shape both operands broadcast to, if any.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Option<Shape> {
    let rank = a.rank().max(b.rank());
    let dim_at = |s: &Shape, i: usize| -> Dim {
        let off = rank - s.rank();
        if i < off {
            Dim::Known(1)
        } else {
            s.dims().get(i - off).cloned().unwrap_or(Dim::Known(1))
        }
    };
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let (x, y) = (dim_at(a, i), dim_at(b, i));
        out.push(match (&x, &y) {
            _ if x == y => x,
            (Dim::Known(1), _) => y,
            (_, Dim::Known(1)) => x,
            _ => return None,
        });
    }
    Some(Shape(out))
}
