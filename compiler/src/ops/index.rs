//! Row lookup by integer id (embedding tables) and its transpose:
//!
//! * `Gather`: `table [V, d..]`, `ids [i..]` (int) → `[i.., d..]`, row
//!   `out[i] = table[ids[i]]`;
//! * `ScatterAdd { rows: V }`: `ids [i..]`, `values [i.., d..]` → `[V, d..]`,
//!   zeros with each `values[i]` added to row `ids[i]` (repeated ids sum);
//! * `CheckIndex { bound: k }`: `ids [i..]` (and optionally `keep [i..]`) →
//!   the same ids, each required to be in `0..k` where `keep` is not 0: the
//!   class labels that `one_hot` compares with the positions `0..k` (and so
//!   `cross_entropy` and `gather`), which would otherwise match no class and
//!   silently give a zero row (a loss of 0).
//!
//! Gather and ScatterAdd are each the other's derivative with respect to the
//! float operand, and ids get no gradient. An id outside `0..V` is a fault,
//! never a wild read: the reference evaluation returns
//! `EvalError::IndexOutOfRange`, and the compiled kernels skip the row (a check
//! copies the id as it is) and report the first bad id with the node
//! (`codegen::Fault`), which the runtime turns into an error at the source line.

use super::{EvalError, ShapeError};
use crate::builder::Builder;
use crate::ir::{DType, Shape, TensorType, ValueId};
use ndarray::{ArrayD, IxDyn};

fn ids_check(ids: &TensorType) -> Result<(), ShapeError> {
    match ids.dtype {
        DType::I32 => Ok(()),
        DType::F32 => Err(ShapeError::IndexType { found: ids.clone() }),
    }
}

pub fn gather_shape_rule(args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [table, ids] = args else {
        return Err(ShapeError::Arity { op: "gather_rows", expected: 2, found: args.len() });
    };
    ids_check(ids)?;
    if table.shape.rank() == 0 {
        return Err(ShapeError::Axis { axis: 0, shape: table.shape.clone() });
    }
    let mut dims = ids.shape.0.clone();
    dims.extend_from_slice(&table.shape.dims()[1..]);
    Ok(TensorType { shape: Shape(dims), dtype: table.dtype })
}

pub fn scatter_add_shape_rule(rows: usize, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [ids, values] = args else {
        return Err(ShapeError::Arity { op: "scatter_add", expected: 2, found: args.len() });
    };
    ids_check(ids)?;
    let k = ids.shape.rank();
    if values.shape.rank() < k || values.shape.dims()[..k] != *ids.shape.dims() {
        return Err(ShapeError::Mismatch { op: "scatter_add", lhs: ids.shape.clone(), rhs: values.shape.clone() });
    }
    let mut dims = vec![crate::ir::Dim::Known(rows)];
    dims.extend_from_slice(&values.shape.dims()[k..]);
    Ok(TensorType { shape: Shape(dims), dtype: values.dtype })
}

pub fn check_index_shape_rule(args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let (ids, keep) = match args {
        [ids] => (ids, None),
        [ids, keep] => (ids, Some(keep)),
        _ => return Err(ShapeError::Arity { op: "check_index", expected: 1, found: args.len() }),
    };
    ids_check(ids)?;
    if let Some(keep) = keep.filter(|k| k.shape != ids.shape) {
        return Err(ShapeError::Mismatch { op: "check_index", lhs: ids.shape.clone(), rhs: keep.shape.clone() });
    }
    Ok((*ids).clone())
}

pub fn gather_vjp_rule(b: &mut Builder, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let [table, ids] = args else { return Vec::new() };
    let rows = b.shape(*table).dims().first().and_then(|d| d.known()).unwrap_or(0);
    vec![Some(b.scatter_add(*ids, g, rows)), None]
}

pub fn scatter_add_vjp_rule(b: &mut Builder, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let [ids, _] = args else { return Vec::new() };
    vec![None, Some(b.gather_rows(g, *ids))]
}

/// Ids get no gradient, nor does the mask saying which ids are checked.
pub fn check_index_vjp_rule(args: &[ValueId]) -> Vec<Option<ValueId>> {
    vec![None; args.len()]
}

/// The row an id selects: `None` for an id that is negative, fractional, NaN
/// or not below `rows`. The compiled lookup (`codegen::helpers::nnc_lookup`)
/// applies the same rule.
pub fn row_index(id: f64, rows: usize) -> Option<usize> {
    (id >= 0.0 && id.fract() == 0.0 && id < rows as f64).then_some(id as usize)
}

/// The row an id selects, or the fault it is.
fn row_of(id: f64, rows: usize) -> Result<usize, EvalError> {
    row_index(id, rows).ok_or(EvalError::IndexOutOfRange { site: None, index: id, bound: rows })
}

pub fn gather_eval(args: &[&ArrayD<f64>], out: &[usize]) -> Result<ArrayD<f64>, EvalError> {
    let [table, ids] = args else { return Ok(ArrayD::zeros(IxDyn(out))) };
    let rows = table.shape().first().copied().unwrap_or(0);
    let width: usize = table.shape().iter().skip(1).product();
    let flat: Vec<f64> = table.iter().copied().collect();
    let mut v = Vec::with_capacity(ids.len() * width);
    for &id in ids.iter() {
        let r = row_of(id, rows)?;
        v.extend_from_slice(&flat[r * width..(r + 1) * width]);
    }
    Ok(ArrayD::from_shape_vec(IxDyn(out), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(out))))
}

pub fn scatter_add_eval(args: &[&ArrayD<f64>], out: &[usize]) -> Result<ArrayD<f64>, EvalError> {
    let [ids, values] = args else { return Ok(ArrayD::zeros(IxDyn(out))) };
    let rows = out.first().copied().unwrap_or(0);
    let width: usize = out.iter().skip(1).product();
    let vals: Vec<f64> = values.iter().copied().collect();
    let mut y = vec![0.0; rows * width];
    for (i, &id) in ids.iter().enumerate() {
        let r = row_of(id, rows)?;
        for (slot, v) in y[r * width..(r + 1) * width].iter_mut().zip(&vals[i * width..(i + 1) * width]) {
            *slot += v;
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(out), y).unwrap_or_else(|_| ArrayD::zeros(IxDyn(out))))
}

/// The ids unchanged, or the first that is outside `0..bound` where `keep`
/// (if given) is not 0.
pub fn check_index_eval(bound: usize, args: &[&ArrayD<f64>]) -> Result<ArrayD<f64>, EvalError> {
    let Some(ids) = args.first() else { return Ok(ArrayD::zeros(IxDyn(&[]))) };
    let checked: Vec<bool> = match args.get(1) {
        Some(keep) => keep.iter().map(|&k| k != 0.0).collect(),
        None => vec![true; ids.len()],
    };
    for (&id, _) in ids.iter().zip(checked).filter(|(_, checked)| *checked) {
        row_of(id, bound)?;
    }
    Ok((*ids).clone())
}
