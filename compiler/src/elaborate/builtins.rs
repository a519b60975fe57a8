//! Built-in functions. Composites (softplus, softmax, the losses, …) are
//! written here in terms of primitives, so they need no derivative rules of
//! their own: autodiff sees only primitives (`sigmoid` and `gelu` are
//! primitives themselves, `UnaryOp::Sigmoid` and `UnaryOp::Gelu`).

use super::error::ErrorKind;
use super::expr::merge_names;
use super::range;
use super::value::{Arg, Func, Tensor, Value};
use super::{Ctx, ElabError};
use crate::ast::Span;
use crate::autodiff;
use crate::ir::{DType, Dim, Shape, TensorType, ValueId};
use crate::ops::{BinaryOp, Op, UnaryOp};
use std::rc::Rc;

/// Every built-in name, for lookup and "did you mean" suggestions.
pub const NAMES: &[&str] = &[
    "exp",
    "log",
    "sqrt",
    "abs",
    "tanh",
    "erf",
    "sin",
    "cos",
    "sigmoid",
    "relu",
    "gelu",
    "softplus",
    "stop_gradient",
    "pow",
    "maximum",
    "sum",
    "mean",
    "max",
    "logsumexp",
    "softmax",
    "log_softmax",
    "reshape",
    "transpose",
    "concat",
    "one_hot",
    "gather",
    "mse",
    "cross_entropy",
    "l2",
    "solve",
    "eye",
    "zeros",
    "ones",
    "grad",
];

pub fn lookup(name: &str) -> Option<&'static str> {
    NAMES.iter().chain(super::vision::NAMES).chain(super::sequence::NAMES).copied().find(|n| *n == name)
}

/// Bind call arguments to a built-in's parameter list (positional, then by
/// name); `required` leading parameters must be present.
pub(super) fn bind(
    cx: &Ctx,
    callee: &str,
    args: Vec<Arg>,
    params: &[&str],
    required: usize,
    span: Span,
) -> Result<Vec<Option<Arg>>, ElabError> {
    let mut slots: Vec<Option<Arg>> = vec![None; params.len()];
    let mut next = 0;
    let found = args.len();
    for a in args {
        match &a.name {
            Some(n) => match params.iter().position(|p| *p == n.name) {
                Some(i) => slots[i] = Some(a),
                None => {
                    return Err(cx.err(ErrorKind::UnknownKeyword {
                        span: n.span,
                        callee: callee.into(),
                        keyword: n.name.clone(),
                        allowed: params.iter().map(|p| p.to_string()).collect(),
                    }))
                }
            },
            None => {
                while next < slots.len() && slots[next].is_some() {
                    next += 1;
                }
                if next >= slots.len() {
                    return Err(cx.err(ErrorKind::Arity { span, callee: callee.into(), expected: params.len(), found, def_span: None }));
                }
                slots[next] = Some(a);
            }
        }
    }
    for (i, p) in params.iter().enumerate().take(required) {
        if slots[i].is_none() {
            if required == params.len() && found < required {
                return Err(cx.err(ErrorKind::Arity { span, callee: callee.into(), expected: required, found, def_span: None }));
            }
            return Err(cx.err(ErrorKind::MissingArgument { span, callee: callee.into(), name: p.to_string() }));
        }
    }
    Ok(slots)
}

pub(super) fn take(slot: &mut Option<Arg>) -> Option<Arg> {
    slot.take()
}

pub(crate) fn call(cx: &mut Ctx, name: &'static str, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
    match name {
        "exp" | "log" | "sqrt" | "abs" | "tanh" | "erf" | "sin" | "cos" | "sigmoid" | "relu" | "gelu" | "softplus" | "stop_gradient" => {
            let mut a = bind(cx, name, args, &["x"], 1, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            unary_builtin(cx, name, &x, span).map(Value::Tensor)
        }
        "pow" | "maximum" => {
            let mut a = bind(cx, name, args, &["x", "y"], 2, span)?;
            let (xa, ya) = (take(&mut a[0]), take(&mut a[1]));
            let (xs, ys) = (xa.as_ref().map_or(span, |a| a.span), ya.as_ref().map_or(span, |a| a.span));
            let x = tensor_arg(cx, xa, span)?;
            let y = tensor_arg(cx, ya, span)?;
            let op = if name == "pow" { BinaryOp::Pow } else { BinaryOp::Max };
            cx.elementwise(op, &x, &y, xs, ys, span, name).map(Value::Tensor)
        }
        "sum" | "mean" | "max" | "logsumexp" => {
            let mut a = bind(cx, name, args, &["x", "axis", "keepdims"], 1, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let axes = axes_arg(cx, &x, take(&mut a[1]), span)?;
            let keep = match take(&mut a[2]) {
                Some(k) => cx.whole(&k.value, k.span, &range::KEEPDIMS)? == 1,
                None => false,
            };
            reduction(cx, name, &x, &axes, keep, span).map(Value::Tensor)
        }
        "softmax" | "log_softmax" => {
            let mut a = bind(cx, name, args, &["x", "axis"], 1, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let axes = match take(&mut a[1]) {
                Some(arg) => axes_arg(cx, &x, Some(arg), span)?,
                None => vec![cx.shape(&x).rank().saturating_sub(1)],
            };
            if name == "softmax" {
                let id = cx.builder(span).softmax(x.id, &axes);
                return Ok(Value::Tensor(Tensor { id, names: x.names.clone() }));
            }
            let lse = logsumexp(cx, &x, &axes, Shift::Max, span)?;
            sub_broadcast(cx, &x, &lse, span).map(Value::Tensor)
        }
        "reshape" => {
            let mut a = bind(cx, name, args, &["x", "shape"], 2, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let shape_arg = take(&mut a[1]);
            let shape = reshape_target(cx, &x, shape_arg, span)?;
            let id = cx.op(Op::Reshape { shape }, &[x.id], span)?;
            Ok(Value::Tensor(Tensor { id, names: Vec::new() }))
        }
        "transpose" => {
            let mut a = bind(cx, name, args, &["x", "perm"], 1, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            match take(&mut a[1]) {
                None => {
                    let r = cx.shape(&x).rank();
                    if r < 2 {
                        return Err(cx.err(ErrorKind::AxisOutOfRange { span, axis: 1, rank: r }));
                    }
                    let id = cx.builder(span).matrix_transpose(x.id);
                    let mut names = x.names.clone();
                    if names.len() == r {
                        names.swap(r - 1, r - 2);
                    }
                    Ok(Value::Tensor(Tensor { id, names }))
                }
                Some(p) => {
                    let perm = int_list(cx, &p)?;
                    let id = cx.op(Op::Transpose { perm: perm.clone() }, &[x.id], span)?;
                    let names = if x.names.len() == perm.len() { perm.iter().map(|&i| x.names[i].clone()).collect() } else { Vec::new() };
                    Ok(Value::Tensor(Tensor { id, names }))
                }
            }
        }
        "concat" => {
            let mut a = bind(cx, name, args, &["xs", "axis"], 1, span)?;
            let Some(list) = take(&mut a[0]) else { return Err(internal(cx, span)) };
            let Value::List(items) = list.value else {
                return Err(cx.err(ErrorKind::WrongKind {
                    span: list.span,
                    expected: "a list of tensors `[a, b]`".into(),
                    found: "something else".into(),
                }));
            };
            let mut ids = Vec::new();
            let mut first: Option<Tensor> = None;
            for (v, s) in items {
                let t = cx.tensor_of(v, s)?;
                ids.push(t.id);
                first.get_or_insert(t);
            }
            let Some(first) = first else { return Err(internal(cx, span)) };
            let axis = match take(&mut a[1]) {
                Some(arg) => axes_arg(cx, &first, Some(arg), span)?.first().copied().unwrap_or(0),
                None => 0,
            };
            let id = cx.op(Op::Concat { axis }, &ids, span)?;
            Ok(Value::Tensor(Tensor { id, names: first.names }))
        }
        "one_hot" => {
            let mut a = bind(cx, name, args, &["labels", "classes"], 2, span)?;
            let y = tensor_arg(cx, take(&mut a[0]), span)?;
            let Some(n) = take(&mut a[1]) else { return Err(internal(cx, span)) };
            let n = cx.natural(&n.value, n.span, &range::CLASSES)?;
            one_hot(cx, &y, n, None, span).map(Value::Tensor)
        }
        "gather" => {
            let mut a = bind(cx, name, args, &["x", "index"], 2, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let idx = tensor_arg(cx, take(&mut a[1]), span)?;
            let classes = last_dim(cx, &x, span)?;
            let oh = one_hot(cx, &idx, classes, None, span)?;
            // Selected by a mask, not multiplied by the one-hot: an ∞ or NaN
            // in an entry not picked must not reach the sum (0 · ∞ is NaN).
            let prod = cx.elementwise(BinaryOp::Mask, &x, &oh, span, span, span, "gather")?;
            let r = cx.shape(&prod).rank();
            reduction(cx, "sum", &prod, &[r - 1], false, span).map(Value::Tensor)
        }
        "mse" => {
            let mut a = bind(cx, name, args, &["prediction", "target"], 2, span)?;
            let (pa, ta) = (take(&mut a[0]), take(&mut a[1]));
            let (ps, ts) = (pa.as_ref().map_or(span, |a| a.span), ta.as_ref().map_or(span, |a| a.span));
            let p = tensor_arg(cx, pa, span)?;
            let t = tensor_arg(cx, ta, span)?;
            mse(cx, &p, &t, ps, ts, span).map(Value::Tensor)
        }
        "cross_entropy" => {
            let mut a = bind(cx, name, args, &["logits", "labels", "smoothing", "mask"], 2, span)?;
            let (la, ya) = (take(&mut a[0]), take(&mut a[1]));
            let ys = ya.as_ref().map_or(span, |a| a.span);
            let logits = tensor_arg(cx, la, span)?;
            let labels = tensor_arg(cx, ya, span)?;
            let smoothing = match take(&mut a[2]) {
                Some(s) => cx.number(&s.value, s.span, &range::SMOOTHING)?,
                None => 0.0,
            };
            let mask = match take(&mut a[3]) {
                Some(m) => Some((tensor_arg(cx, Some(m.clone()), span)?, m.span)),
                None => None,
            };
            // Labels the mask skips (PyTorch's ignore_index, -100) are not checked.
            let keep = mask.as_ref().map(|(m, _)| m.id).filter(|&m| cx.graph.shape(m) == cx.graph.shape(labels.id));
            let loss = cross_entropy(cx, &logits, &labels, smoothing, keep, ys, span)?;
            match mask {
                None => reduction(cx, "mean", &loss, &(0..cx.shape(&loss).rank()).collect::<Vec<_>>(), false, span).map(Value::Tensor),
                Some((mask, mask_span)) => masked_mean(cx, &loss, &mask, mask_span, span).map(Value::Tensor),
            }
        }
        "l2" => {
            let mut a = bind(cx, name, args, &["x"], 1, span)?;
            let Some(arg) = take(&mut a[0]) else { return Err(internal(cx, span)) };
            let tensors: Vec<Tensor> = match arg.value {
                Value::Module(m) => m.all_params().into_iter().map(|(_, t)| t).collect(),
                v => vec![cx.tensor_of(v, arg.span)?],
            };
            let mut total: Option<Tensor> = None;
            for t in tensors {
                let mut b = cx.builder(span);
                let sq = b.mul(t.id, t.id);
                let s = b.sum_all(sq);
                let id = match &total {
                    Some(acc) => b.add(acc.id, s),
                    None => s,
                };
                total = Some(Tensor { id, names: Vec::new() });
            }
            match total {
                Some(t) => Ok(Value::Tensor(t)),
                None => Ok(Value::Number { value: 0.0, is_int: false }),
            }
        }
        "solve" => {
            let mut a = bind(cx, name, args, &["a", "b"], 2, span)?;
            let m = tensor_arg(cx, take(&mut a[0]), span)?;
            let rhs = tensor_arg(cx, take(&mut a[1]), span)?;
            let rs = cx.shape(&rhs);
            let (rhs2, vector) = match rs.dims() {
                [n] => {
                    let shape = Shape(vec![n.clone(), Dim::Known(1)]);
                    (cx.op(Op::Reshape { shape }, &[rhs.id], span)?, true)
                }
                _ => (rhs.id, false),
            };
            let x = cx.op(Op::Solve, &[m.id, rhs2], span)?;
            let id = if vector { cx.op(Op::Reshape { shape: rs }, &[x], span)? } else { x };
            Ok(Value::Tensor(Tensor { id, names: Vec::new() }))
        }
        "eye" => {
            let mut a = bind(cx, name, args, &["n"], 1, span)?;
            let Some(n) = take(&mut a[0]) else { return Err(internal(cx, span)) };
            let n = cx.natural(&n.value, n.span, &range::EYE)?;
            let shape = Shape::known(&[n, n]);
            let mut b = cx.builder(span);
            let (r, c) = (b.iota(&shape, 0), b.iota(&shape, 1));
            let id = b.binary(BinaryOp::Eq, r, c);
            Ok(Value::Tensor(Tensor { id, names: Vec::new() }))
        }
        "zeros" | "ones" => {
            let mut a = bind(cx, name, args, &["shape"], 1, span)?;
            let Some(s) = take(&mut a[0]) else { return Err(internal(cx, span)) };
            let shape = shape_list(cx, &s)?;
            let id = cx.builder(span).full(if name == "ones" { 1.0 } else { 0.0 }, &shape);
            Ok(Value::Tensor(Tensor { id, names: Vec::new() }))
        }
        "grad" => {
            let mut a = bind(cx, name, args, &["f"], 1, span)?;
            match take(&mut a[0]).map(|a| a.value) {
                Some(Value::Func(f)) => Ok(Value::Func(Func::Grad(Box::new(f)))),
                Some(Value::Module(m)) => Ok(Value::Func(Func::Grad(Box::new(Func::Method(m, "forward".into()))))),
                Some(Value::Unbound(e)) => Err(*e),
                _ => Err(cx.err(ErrorKind::WrongKind { span, expected: "a function".into(), found: "something else".into() })),
            }
        }
        _ if super::vision::NAMES.contains(&name) => super::vision::call(cx, name, args, span),
        _ if super::sequence::NAMES.contains(&name) => super::sequence::call(cx, name, args, span),
        _ => Err(cx.err(ErrorKind::Internal { span, message: format!("built-in `{name}` has no definition") })),
    }
}

pub(super) fn internal(cx: &Ctx, span: Span) -> ElabError {
    cx.err(ErrorKind::Internal { span, message: "argument binding".into() })
}

pub(super) fn tensor_arg(cx: &mut Ctx, a: Option<Arg>, span: Span) -> Result<Tensor, ElabError> {
    match a {
        Some(a) => cx.tensor_of(a.value, a.span),
        None => Err(internal(cx, span)),
    }
}

fn float_check(cx: &Ctx, x: &Tensor, span: Span, op: &str) -> Result<(), ElabError> {
    if cx.graph.ty(x.id).dtype == DType::I32 {
        return Err(cx.err(ErrorKind::IntOperand { span, op: op.into() }));
    }
    Ok(())
}

fn unary_builtin(cx: &mut Ctx, name: &str, x: &Tensor, span: Span) -> Result<Tensor, ElabError> {
    let names = x.names.clone();
    let mut b = cx.builder(span);
    let x = x.id;
    let id = match name {
        "exp" => b.exp(x),
        "log" => b.log(x),
        "sqrt" => b.sqrt(x),
        "abs" => b.unary(UnaryOp::Abs, x),
        "tanh" => b.unary(UnaryOp::Tanh, x),
        "erf" => b.unary(UnaryOp::Erf, x),
        "sin" => b.unary(UnaryOp::Sin, x),
        "cos" => b.unary(UnaryOp::Cos, x),
        "stop_gradient" => b.stop_gradient(x),
        "relu" => b.unary(UnaryOp::Relu, x),
        "sigmoid" => b.sigmoid(x),
        "gelu" => b.gelu(x),
        "softplus" => b.softplus(x),
        _ => b.scalar(f64::NAN),
    };
    let err = b.internal_error.take();
    if let Some(e) = err {
        return Err(cx.shape_error(e, span));
    }
    Ok(Tensor { id, names })
}

/// Resolve an axis argument (an int, an axis name, or a list of them) to axis indices.
pub(super) fn axes_arg(cx: &mut Ctx, x: &Tensor, a: Option<Arg>, span: Span) -> Result<Vec<usize>, ElabError> {
    let rank = cx.shape(x).rank();
    let Some(a) = a else { return Ok((0..rank).collect()) };
    let items: Vec<(Value, Span)> = match a.value {
        Value::List(items) => items,
        v => vec![(v, a.span)],
    };
    let mut axes = Vec::new();
    for (v, s) in items {
        let axis = match &v {
            Value::Number { .. } => {
                let i = cx.whole(&v, s, &range::AXIS)?;
                let norm = if i < 0 { i + rank as i64 } else { i };
                if norm < 0 || norm >= rank as i64 {
                    return Err(cx.err(ErrorKind::AxisOutOfRange { span: s, axis: i, rank }));
                }
                norm as usize
            }
            Value::Unbound(e) => {
                let ErrorKind::UnknownName { name, .. } = &*e.kind else { return Err((**e).clone()) };
                axis_by_name(cx, x, name, s)?
            }
            Value::SymDim(name) | Value::DimVar { name, .. } => axis_by_name(cx, x, name, s)?,
            _ => {
                return Err(cx.err(ErrorKind::WrongKind {
                    span: s,
                    expected: "an axis (an integer or an axis name)".into(),
                    found: "something else".into(),
                }))
            }
        };
        if !axes.contains(&axis) {
            axes.push(axis);
        }
    }
    let _ = span;
    axes.sort_unstable();
    Ok(axes)
}

fn axis_by_name(cx: &Ctx, x: &Tensor, name: &str, span: Span) -> Result<usize, ElabError> {
    match x.names.iter().position(|n| n.as_deref() == Some(name)) {
        Some(i) => Ok(i),
        None => {
            let shape = cx.shape(x);
            let names = if x.names.len() == shape.rank() { x.names.clone() } else { vec![None; shape.rank()] };
            Err(cx.err(ErrorKind::NoSuchAxis { span, axis: name.into(), shape, names }))
        }
    }
}

pub(crate) fn reduction(cx: &mut Ctx, name: &str, x: &Tensor, axes: &[usize], keep: bool, span: Span) -> Result<Tensor, ElabError> {
    float_check(cx, x, span, name)?;
    let kept = match name {
        "sum" => cx.builder(span).reduce_sum(x.id, axes),
        "max" => cx.builder(span).reduce_max(x.id, axes),
        "logsumexp" => logsumexp(cx, x, axes, Shift::FiniteMax, span)?.id,
        _ => {
            // mean = sum / count; the count is a reduction of ones so it also
            // works over symbolic dims (it folds to a constant once sizes are known).
            let mut b = cx.builder(span);
            let s = b.reduce_sum(x.id, axes);
            let ones = b.full_like(1.0, x.id);
            let n = b.reduce_sum(ones, axes);
            b.div(s, n)
        }
    };
    let names: Vec<Option<String>> = if x.names.len() == cx.shape(x).rank() { x.names.clone() } else { vec![None; cx.shape(x).rank()] };
    if keep {
        return Ok(Tensor { id: kept, names });
    }
    let shape = cx.shape(x);
    let dims: Vec<Dim> = shape.dims().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect();
    let id = cx.op(Op::Reshape { shape: Shape(dims) }, &[kept], span)?;
    let names = names.into_iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, n)| n).collect();
    Ok(Tensor { id, names })
}

/// What `logsumexp` subtracts before the exponentials (and adds back).
#[derive(Clone, Copy)]
enum Shift {
    /// The maximum, or 0 where it is ±∞, as PyTorch's `logsumexp`: else
    /// x − m is ∞ − ∞ = NaN, where the answer is −∞ (every element −∞) or ∞
    /// (one is ∞). The `logsumexp` built-in.
    FiniteMax,
    /// The maximum itself, as PyTorch's `log_softmax` (a row whose maximum is
    /// ±∞ is NaN): `log_softmax` and `cross_entropy`, whose x − lse would be
    /// ∞ − ∞ there anyway.
    Max,
}

/// log Σ exp(x) over `axes` (kept with size 1), shifted by the
/// (gradient-stopped) maximum for stability.
fn logsumexp(cx: &mut Ctx, x: &Tensor, axes: &[usize], shift: Shift, span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(x);
    let mut b = cx.builder(span);
    let m = b.reduce_max(x.id, axes);
    let m = match shift {
        Shift::FiniteMax => {
            let infinity = b.full_like(f64::INFINITY, m);
            let magnitude = b.unary(UnaryOp::Abs, m);
            let finite = b.binary(BinaryOp::Gt, infinity, magnitude);
            b.binary(BinaryOp::Mask, m, finite)
        }
        Shift::Max => m,
    };
    let m = b.stop_gradient(m);
    let mb = b.broadcast(m, &shape);
    let d = b.sub(x.id, mb);
    let e = b.exp(d);
    let s = b.reduce_sum(e, axes);
    let l = b.log(s);
    let id = b.add(l, m);
    Ok(Tensor { id, names: x.names.clone() })
}

fn sub_broadcast(cx: &mut Ctx, x: &Tensor, y: &Tensor, span: Span) -> Result<Tensor, ElabError> {
    cx.elementwise(BinaryOp::Sub, x, y, span, span, span, "-")
}

fn last_dim(cx: &Ctx, x: &Tensor, span: Span) -> Result<usize, ElabError> {
    match cx.shape(x).dims().last() {
        Some(Dim::Known(n)) => Ok(*n),
        _ => Err(cx.err(ErrorKind::NotConstant { span, what: "the number of classes (the last dimension)".into() })),
    }
}

/// `one_hot(y, n)`: `[S…] int -> [S…, n]` with 1.0 at each label. A label
/// outside `0..n` (where `keep`, if given, is not 0) stops the run with an
/// error at `span` (`Op::CheckIndex`) rather than giving a row of zeros.
fn one_hot(cx: &mut Ctx, y: &Tensor, n: usize, keep: Option<ValueId>, span: Span) -> Result<Tensor, ElabError> {
    let ty = cx.ty(y);
    if ty.dtype != DType::I32 {
        return Err(cx.err(ErrorKind::LabelsNotInt { span, found: ty }));
    }
    let mut dims = ty.shape.0.clone();
    dims.push(Dim::Known(1));
    let checked = cx.op(Op::CheckIndex { bound: n }, &std::iter::once(y.id).chain(keep).collect::<Vec<_>>(), span)?;
    let col = cx.op(Op::Reshape { shape: Shape(dims.clone()) }, &[checked], span)?;
    if let Some(last) = dims.last_mut() {
        *last = Dim::Known(n);
    }
    let shape = Shape(dims);
    let mut b = cx.builder(span);
    let yb = b.broadcast(col, &shape);
    let iota = b.iota(&shape, shape.rank() - 1);
    let id = b.binary(BinaryOp::Eq, yb, iota);
    Ok(Tensor { id, names: Vec::new() })
}

fn mse(cx: &mut Ctx, p: &Tensor, t: &Tensor, ps: Span, ts: Span, span: Span) -> Result<Tensor, ElabError> {
    let (a, b) = (cx.shape(p), cx.shape(t));
    if a != b {
        // Silent broadcasting of [B, 1] against [B] is a classic bug: refuse it.
        return Err(cx.err(ErrorKind::Broadcast { op: "mse".into(), span, lhs_span: ps, rhs_span: ts, lhs: a, rhs: b }));
    }
    let d = cx.elementwise(BinaryOp::Sub, p, t, ps, ts, span, "-")?;
    let sq = cx.builder(span).mul(d.id, d.id);
    let r = cx.shape(p).rank();
    let axes: Vec<usize> = (0..r).collect();
    reduction(cx, "mean", &Tensor { id: sq, names: Vec::new() }, &axes, false, span)
}

/// Softmax cross-entropy with label smoothing α: the target puts 1 − α(k−1)/k
/// on the true class and α/k on each other class, i.e. (1 − α)·onehot + α/k.
fn cross_entropy(
    cx: &mut Ctx,
    logits: &Tensor,
    labels: &Tensor,
    alpha: f64,
    keep: Option<ValueId>,
    label_span: Span,
    span: Span,
) -> Result<Tensor, ElabError> {
    let lty = cx.ty(labels);
    if lty.dtype != DType::I32 {
        return Err(cx.err(ErrorKind::LabelsNotInt { span: label_span, found: lty }));
    }
    let ls = cx.shape(logits);
    let k = last_dim(cx, logits, span)?;
    let batch = Shape(ls.dims().get(..ls.rank().saturating_sub(1)).unwrap_or_default().to_vec());
    if batch != lty.shape {
        let logits_shape = ls.clone();
        return Err(cx.err(ErrorKind::Broadcast {
            op: "cross_entropy".into(),
            span,
            lhs_span: span,
            rhs_span: label_span,
            lhs: logits_shape,
            rhs: lty.shape,
        }));
    }
    let axis = ls.rank() - 1;
    let lse = logsumexp(cx, logits, &[axis], Shift::Max, span)?;
    let logp = sub_broadcast(cx, logits, &lse, span)?;
    let oh = one_hot(cx, labels, k, keep, span)?;
    let mut b = cx.builder(span);
    let target = if alpha == 0.0 {
        oh.id
    } else {
        let scaled = b.scale(oh.id, 1.0 - alpha);
        b.offset(scaled, alpha / k as f64)
    };
    // Without smoothing the true class's log-probability is selected (not
    // multiplied by the one-hot): a masked logit (−∞) on another class would
    // make 0 · −∞ = NaN.
    let prod = if alpha == 0.0 { b.binary(BinaryOp::Mask, logp.id, target) } else { b.mul(target, logp.id) };
    let per_example = b.reduce_sum(prod, &[axis]);
    let neg = b.neg(per_example);
    let id = b.reshape(neg, &batch);
    Ok(Tensor { id, names: Vec::new() })
}

/// `Σ mask·loss / max(Σ mask, 1)`: the mean over the positions the mask keeps
/// (a masked language model's loss counts only the masked tokens).
fn masked_mean(cx: &mut Ctx, loss: &Tensor, mask: &Tensor, mask_span: Span, span: Span) -> Result<Tensor, ElabError> {
    let (ls, ms) = (cx.shape(loss), cx.shape(mask));
    if ls != ms {
        return Err(cx.err(ErrorKind::Broadcast {
            op: "cross_entropy mask".into(),
            span,
            lhs_span: span,
            rhs_span: mask_span,
            lhs: ls,
            rhs: ms,
        }));
    }
    let mut b = cx.builder(span);
    let kept = b.mul(loss.id, mask.id);
    let total = b.sum_all(kept);
    let count = b.sum_all(mask.id);
    let one = b.scalar(1.0);
    let count = b.binary(BinaryOp::Max, count, one);
    let id = b.div(total, count);
    Ok(Tensor { id, names: Vec::new() })
}

/// `@` with NumPy's rules for vectors and for a matrix applied to a batch.
pub(crate) fn matmul(cx: &mut Ctx, l: &Tensor, r: &Tensor, lspan: Span, rspan: Span, span: Span) -> Result<Tensor, ElabError> {
    for (t, s) in [(l, lspan), (r, rspan)] {
        float_check(cx, t, s, "@")?;
    }
    let (ls, rs) = (cx.shape(l), cx.shape(r));
    let inner_err = |cx: &Ctx| cx.err(ErrorKind::MatMulInner { span, lhs_span: lspan, rhs_span: rspan, lhs: ls.clone(), rhs: rs.clone() });
    let rank_err = |cx: &Ctx| cx.err(ErrorKind::MatMulRank { span, lhs_span: lspan, rhs_span: rspan, lhs: ls.clone(), rhs: rs.clone() });
    if ls.rank() == 0 || rs.rank() == 0 {
        return Err(rank_err(cx));
    }
    // Vectors become matrices ([K] → [1, K] on the left, [K, 1] on the right) and the unit axis is dropped after.
    let mut lm = l.id;
    let mut rm = r.id;
    if ls.rank() == 1 {
        lm = cx.op(Op::Reshape { shape: Shape(vec![Dim::Known(1), ls.0[0].clone()]) }, &[l.id], span)?;
    }
    if rs.rank() == 1 {
        rm = cx.op(Op::Reshape { shape: Shape(vec![rs.0[0].clone(), Dim::Known(1)]) }, &[r.id], span)?;
    }
    let (lms, rms) = (cx.graph.shape(lm).clone(), cx.graph.shape(rm).clone());
    let (lr, rr) = (lms.rank(), rms.rank());
    if lms.0[lr - 1] != rms.0[rr - 2] {
        return Err(inner_err(cx));
    }
    let out_id = if lr > 2 && rr == 2 {
        // A batch of rows times one matrix: fold the batch into the rows.
        let rows: Vec<Dim> = lms.0[..lr - 1].to_vec();
        let flat = Dim::product(&rows);
        let l2 = cx.op(Op::Reshape { shape: Shape(vec![flat, lms.0[lr - 1].clone()]) }, &[lm], span)?;
        let p = cx.op(Op::MatMul, &[l2, rm], span).map_err(|_| inner_err(cx))?;
        let mut dims = rows;
        dims.push(rms.0[1].clone());
        cx.op(Op::Reshape { shape: Shape(dims) }, &[p], span)?
    } else if lr != rr || lms.0[..lr - 2] != rms.0[..rr - 2] {
        return Err(rank_err(cx));
    } else {
        cx.op(Op::MatMul, &[lm, rm], span).map_err(|_| inner_err(cx))?
    };
    // Drop the unit axes that vectors gained.
    let out_shape = cx.graph.shape(out_id).clone();
    let mut dims = out_shape.0.clone();
    let mut names = merge_names(&l.names[..l.names.len().saturating_sub(1)], &[], dims.len().saturating_sub(1));
    names.push(r.names.last().cloned().flatten());
    if rs.rank() == 1 {
        dims.pop();
        names.pop();
    }
    if ls.rank() == 1 {
        let at = dims.len().saturating_sub(if rs.rank() == 1 { 1 } else { 2 });
        dims.remove(at);
        if at < names.len() {
            names.remove(at);
        }
    }
    let id = if dims.len() != out_shape.rank() { cx.op(Op::Reshape { shape: Shape(dims) }, &[out_id], span)? } else { out_id };
    let rank = cx.graph.shape(id).rank();
    let names = if names.len() == rank && names.iter().any(Option::is_some) { names } else { Vec::new() };
    Ok(Tensor { id, names })
}

fn int_list(cx: &mut Ctx, a: &Arg) -> Result<Vec<usize>, ElabError> {
    let Value::List(items) = &a.value else {
        return Err(cx.err(ErrorKind::WrongKind { span: a.span, expected: "a list of integers".into(), found: "something else".into() }));
    };
    let mut out = Vec::new();
    for (v, s) in items {
        out.push(cx.natural(v, *s, &range::PERMUTATION)?);
    }
    Ok(out)
}

/// A shape of whole numbers and symbolic dims (`zeros([B, 64])`: the batch size).
fn shape_list(cx: &mut Ctx, a: &Arg) -> Result<Shape, ElabError> {
    let Value::List(items) = &a.value else {
        return Err(cx.err(ErrorKind::WrongKind { span: a.span, expected: "a list of integers".into(), found: "something else".into() }));
    };
    let mut dims = Vec::new();
    for (v, s) in items {
        if let Value::SymDim(d) = v {
            dims.push(Dim::Sym(d.clone()));
            continue;
        }
        dims.push(Dim::Known(cx.natural(v, *s, &range::SHAPE_ENTRY)?));
    }
    Ok(Shape(dims))
}

/// The target of `reshape`: integers, symbolic dims (`B`), and at most one `-1`.
fn reshape_target(cx: &mut Ctx, x: &Tensor, a: Option<Arg>, span: Span) -> Result<Shape, ElabError> {
    let Some(a) = a else { return Err(internal(cx, span)) };
    let Value::List(items) = a.value else {
        return Err(cx.err(ErrorKind::WrongKind {
            span: a.span,
            expected: "a shape such as `[B, 64]`".into(),
            found: "something else".into(),
        }));
    };
    let mut dims: Vec<Option<Dim>> = Vec::new();
    for (v, s) in items {
        match v {
            Value::Number { value: -1.0, .. } => dims.push(None),
            Value::Number { value, .. } if value >= 1.0 && value.fract() == 0.0 => dims.push(Some(Dim::Known(value as usize))),
            Value::SymDim(d) => dims.push(Some(Dim::Sym(d))),
            Value::Unbound(e) => return Err(*e),
            other => {
                let found = other.describe(|id| cx.graph.shape(id).clone());
                return Err(cx.err(ErrorKind::BadDim { span: s, found }));
            }
        }
    }
    if dims.iter().filter(|d| d.is_none()).count() > 1 {
        return Err(cx.err(ErrorKind::BadDim { span: a.span, found: "more than one -1".into() }));
    }
    let from = cx.shape(x);
    let known: Vec<Dim> = dims.iter().flatten().cloned().collect();
    let fill = infer_dim(&from, &known);
    if fill == Dim::Known(0) {
        let (c, syms) = split_dims(from.dims());
        let product = if syms.is_empty() { c.to_string() } else { format!("{}·{c}", syms.join("·")) };
        return Err(cx.err(ErrorKind::BadDim {
            span: a.span,
            found: format!("a `-1` that cannot be inferred ({from} has {product} elements); write the shape out"),
        }));
    }
    let shape: Vec<Dim> = dims.into_iter().map(|d| d.unwrap_or_else(|| fill.clone())).collect();
    Ok(Shape(shape))
}

/// The dim that makes `known` hold as many elements as `from` (best effort; the shape rule has the last word).
/// A shape's element count as a constant and the symbols it multiplies.
fn split_dims(dims: &[Dim]) -> (usize, Vec<String>) {
    let mut c = 1usize;
    let mut syms: Vec<String> = Vec::new();
    for d in dims {
        match d {
            Dim::Known(n) => c *= n,
            Dim::Sym(s) => syms.push(s.clone()),
        }
    }
    (c, syms)
}

fn infer_dim(from: &Shape, known: &[Dim]) -> Dim {
    let (fc, mut fs) = split_dims(from.dims());
    let (kc, ks) = split_dims(known);
    for s in ks {
        if let Some(i) = fs.iter().position(|f| *f == s) {
            fs.remove(i);
        }
    }
    let c = fc.checked_div(kc).unwrap_or(0);
    match fs.as_slice() {
        [] => Dim::Known(c),
        [s] if c == 1 => Dim::Sym(s.clone()),
        _ => Dim::Known(0),
    }
}

impl<'s, 'p> Ctx<'s, 'p> {
    /// `grad(f)(a, b, …)`: the gradient of the scalar `f(a, b, …)` with respect
    /// to `a` (a tensor, or every parameter of a module), as IR appended here.
    pub(crate) fn call_grad(&mut self, f: Func, mut args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
        let Some(first) = args.first().cloned() else {
            return Err(self.err(ErrorKind::Arity { span, callee: "grad(f)".into(), expected: 1, found: 0, def_span: None }));
        };
        // Differentiate with respect to fresh copies of the first argument, so
        // the result is the partial derivative even if other arguments depend
        // on it, while outer derivatives still flow through (grad of grad).
        let (fresh, template) = match first.value {
            Value::Module(m) => {
                let mut fresh = Vec::new();
                for (_, t) in m.all_params() {
                    fresh.push(self.fresh_copy(&t, span));
                }
                let copy = Rc::new(m.with_params(&mut fresh.clone().into_iter()));
                (fresh, Some(copy))
            }
            v => {
                let t = self.tensor_of(v, first.span)?;
                (vec![self.fresh_copy(&t, span)], None)
            }
        };
        let new_first = match &template {
            Some(m) => Value::Module(m.clone()),
            None => Value::Tensor(fresh[0].clone()),
        };
        if let Some(a) = args.first_mut() {
            a.value = new_first;
        }
        let out = self.call(Value::Func(f), args, span, span)?;
        let out = self.tensor_of(out, span)?;
        let shape = self.shape(&out);
        if shape.rank() != 0 {
            return Err(self.err(ErrorKind::NotScalar { span, what: "the function given to `grad`".into(), shape }));
        }
        let wrt: Vec<_> = fresh.iter().map(|t| t.id).collect();
        let grads = autodiff::grad(&mut self.graph, out.id, &wrt, span)
            .map_err(|e| self.err(ErrorKind::Internal { span, message: format!("{e:?}") }))?;
        let grads: Vec<Tensor> = grads.into_iter().zip(&fresh).map(|(id, t)| Tensor { id, names: t.names.clone() }).collect();
        Ok(match template {
            Some(m) => Value::Module(Rc::new(m.with_params(&mut grads.into_iter()))),
            None => Value::Tensor(grads.into_iter().next().ok_or_else(|| internal(self, span))?),
        })
    }

    fn fresh_copy(&mut self, t: &Tensor, span: Span) -> Tensor {
        let ty: TensorType = self.ty(t);
        let mut b = self.builder(span);
        let z = b.full(0.0, &ty.shape);
        let id = b.graph.push(Op::Binary(BinaryOp::Add), vec![t.id, z], TensorType::f32(ty.shape.clone()), span);
        Tensor { id, names: t.names.clone() }
    }
}
