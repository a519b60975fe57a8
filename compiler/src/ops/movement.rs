//! Movement ops: they rearrange elements without arithmetic. They come in
//! transpose pairs: Broadcast ↔ ReduceSum, Reshape ↔ Reshape, Transpose ↔ the
//! inverse permutation, Slice ↔ Pad, Concat ↔ Slices.

use super::ShapeError;
use crate::builder::Builder;
use crate::ir::{Dim, Shape, TensorType, ValueId};
use crate::size::{self, TooLarge};
use ndarray::{ArrayD, Axis, IxDyn, Slice};

fn one<'a>(op: &'static str, args: &[&'a TensorType]) -> Result<&'a TensorType, ShapeError> {
    match args {
        [x] => Ok(x),
        _ => Err(ShapeError::Arity { op, expected: 1, found: args.len() }),
    }
}

fn dim_at(shape: &Shape, axis: usize) -> Result<&Dim, ShapeError> {
    shape.dims().get(axis).ok_or_else(|| ShapeError::Axis { axis, shape: shape.clone() })
}

// ---- broadcast ----------------------------------------------------------------

pub fn broadcast_shape_rule(to: &Shape, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let x = one("broadcast", args)?;
    let bad = || ShapeError::Broadcast { from: x.shape.clone(), to: to.clone() };
    if x.shape.rank() > to.rank() {
        return Err(bad());
    }
    let off = to.rank() - x.shape.rank();
    for (i, d) in x.shape.dims().iter().enumerate() {
        let t = to.dims().get(off + i).ok_or_else(bad)?;
        if d != t && *d != Dim::Known(1) {
            return Err(bad());
        }
    }
    Ok(TensorType { shape: to.clone(), dtype: x.dtype })
}

pub fn broadcast_vjp_rule(b: &mut Builder, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let Some(&x) = args.first() else { return Vec::new() };
    let shape = b.shape(x);
    vec![Some(b.sum_to(g, &shape))]
}

pub fn broadcast_eval(args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    args.first().and_then(|x| x.broadcast(IxDyn(out)).map(|v| v.to_owned())).unwrap_or_else(|| ArrayD::zeros(IxDyn(out)))
}

// ---- reshape ------------------------------------------------------------------

/// Element count as a constant times a sorted list of symbols, so `[B, 8, 8]`
/// and `[B, 64]` compare equal without knowing `B`.
fn symbolic_numel(shape: &Shape) -> (usize, Vec<String>) {
    Dim::product(shape.dims()).factors()
}

pub fn reshape_shape_rule(to: &Shape, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let x = one("reshape", args)?;
    // First the target's own size: a count that saturated would compare
    // unequal to the operand's and be reported as a mismatch.
    to.check_size().map_err(ShapeError::TooLarge)?;
    if symbolic_numel(&x.shape) != symbolic_numel(to) {
        return Err(ShapeError::Reshape { from: x.shape.clone(), to: to.clone() });
    }
    Ok(TensorType { shape: to.clone(), dtype: x.dtype })
}

pub fn reshape_vjp_rule(b: &mut Builder, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let Some(&x) = args.first() else { return Vec::new() };
    let shape = b.shape(x);
    vec![Some(b.reshape(g, &shape))]
}

pub fn reshape_eval(args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let data: Vec<f64> = args.first().map(|x| x.iter().copied().collect()).unwrap_or_default();
    ArrayD::from_shape_vec(IxDyn(out), data).unwrap_or_else(|_| ArrayD::zeros(IxDyn(out)))
}

// ---- transpose ----------------------------------------------------------------

pub fn transpose_shape_rule(perm: &[usize], args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let x = one("transpose", args)?;
    let mut seen = vec![false; x.shape.rank()];
    let mut dims = Vec::with_capacity(perm.len());
    for &p in perm {
        let d = dim_at(&x.shape, p)?;
        match seen.get_mut(p) {
            Some(s) if !*s => *s = true,
            _ => return Err(ShapeError::Axis { axis: p, shape: x.shape.clone() }),
        }
        dims.push(d.clone());
    }
    if perm.len() != x.shape.rank() {
        return Err(ShapeError::Axis { axis: perm.len(), shape: x.shape.clone() });
    }
    Ok(TensorType { shape: Shape(dims), dtype: x.dtype })
}

pub fn transpose_vjp_rule(b: &mut Builder, perm: &[usize], g: ValueId) -> Vec<Option<ValueId>> {
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        if let Some(slot) = inverse.get_mut(p) {
            *slot = i;
        }
    }
    vec![Some(b.transpose(g, &inverse))]
}

pub fn transpose_eval(perm: &[usize], args: &[&ArrayD<f64>]) -> ArrayD<f64> {
    args.first().map(|x| x.view().permuted_axes(IxDyn(perm)).as_standard_layout().to_owned()).unwrap_or_default()
}

// ---- slice and pad --------------------------------------------------------------

pub fn slice_shape_rule(axis: usize, start: usize, end: usize, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let x = one("slice", args)?;
    let d = dim_at(&x.shape, axis)?;
    let fits = match d {
        Dim::Known(n) => start <= end && end <= *n,
        Dim::Sym(_) => false,
    };
    if !fits {
        return Err(ShapeError::Slice { start, end, shape: x.shape.clone(), axis });
    }
    let mut dims = x.shape.0.clone();
    if let Some(slot) = dims.get_mut(axis) {
        *slot = Dim::Known(end - start);
    }
    Ok(TensorType { shape: Shape(dims), dtype: x.dtype })
}

pub fn slice_vjp_rule(b: &mut Builder, axis: usize, start: usize, end: usize, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let Some(&x) = args.first() else { return Vec::new() };
    let n = b.shape(x).dims().get(axis).and_then(Dim::known).unwrap_or(end);
    vec![Some(b.pad(g, axis, start, n.saturating_sub(end)))]
}

pub fn slice_eval(axis: usize, start: usize, end: usize, args: &[&ArrayD<f64>]) -> ArrayD<f64> {
    args.first().map(|x| x.slice_axis(Axis(axis), Slice::from(start..end)).to_owned()).unwrap_or_default()
}

pub fn pad_shape_rule(axis: usize, before: usize, after: usize, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let x = one("pad", args)?;
    let d = dim_at(&x.shape, axis)?;
    let Dim::Known(n) = d else {
        return Err(ShapeError::Axis { axis, shape: x.shape.clone() });
    };
    let mut dims = x.shape.0.clone();
    if let Some(slot) = dims.get_mut(axis) {
        // Saturating: a padded axis too long for a tensor is refused by
        // the size check on the result (`Builder::try_op`).
        *slot = Dim::Known(n.saturating_add(before).saturating_add(after));
    }
    Ok(TensorType::f32(Shape(dims)))
}

pub fn pad_vjp_rule(b: &mut Builder, axis: usize, before: usize, _after: usize, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let Some(&x) = args.first() else { return Vec::new() };
    let n = b.shape(x).dims().get(axis).and_then(Dim::known).unwrap_or(0);
    vec![Some(b.slice(g, axis, before, before + n))]
}

pub fn pad_eval(axis: usize, before: usize, value: f64, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let mut y = ArrayD::from_elem(IxDyn(out), value);
    if let Some(x) = args.first() {
        let n = x.shape().get(axis).copied().unwrap_or(0);
        y.slice_axis_mut(Axis(axis), Slice::from(before..before + n)).assign(*x);
    }
    y
}

// ---- concat -----------------------------------------------------------------------

pub fn concat_shape_rule(axis: usize, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let Some(first) = args.first() else {
        return Err(ShapeError::Arity { op: "concat", expected: 1, found: 0 });
    };
    let mut total = 0;
    for x in args {
        let same_rank = x.shape.rank() == first.shape.rank();
        let agree = same_rank && x.shape.dims().iter().zip(first.shape.dims()).enumerate().all(|(i, (a, c))| i == axis || a == c);
        if !agree {
            return Err(ShapeError::Concat { lhs: first.shape.clone(), rhs: x.shape.clone(), axis });
        }
        match dim_at(&x.shape, axis)? {
            Dim::Known(n) => total = size::add(total, *n).ok_or_else(|| too_large(args))?,
            Dim::Sym(_) => return Err(ShapeError::Concat { lhs: first.shape.clone(), rhs: x.shape.clone(), axis }),
        }
    }
    let mut dims = first.shape.0.clone();
    if let Some(slot) = dims.get_mut(axis) {
        *slot = Dim::Known(total);
    }
    Ok(TensorType { shape: Shape(dims), dtype: first.dtype })
}

/// The error for operands whose concatenation is too long an axis: the
/// shapes joined, as written.
fn too_large(args: &[&TensorType]) -> ShapeError {
    let dims = args.iter().map(|x| Dim::Known(x.shape.numel().unwrap_or(usize::MAX))).collect::<Vec<_>>();
    ShapeError::TooLarge(TooLarge::known_dims(&Shape(dims)))
}

pub fn concat_vjp_rule(b: &mut Builder, axis: usize, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let mut start = 0;
    let mut grads = Vec::with_capacity(args.len());
    for &x in args {
        let n = b.shape(x).dims().get(axis).and_then(Dim::known).unwrap_or(0);
        grads.push(Some(b.slice(g, axis, start, start + n)));
        start += n;
    }
    grads
}

pub fn concat_eval(axis: usize, args: &[&ArrayD<f64>]) -> ArrayD<f64> {
    let views: Vec<_> = args.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(axis), &views).unwrap_or_default()
}

// ---- iota -----------------------------------------------------------------------------

pub fn iota_eval(axis: usize, out: &[usize]) -> ArrayD<f64> {
    ArrayD::from_shape_fn(IxDyn(out), |idx| idx[axis] as f64)
}
