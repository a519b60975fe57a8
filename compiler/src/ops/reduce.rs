//! Reductions over a set of axes. The reduced axes stay with size 1, so a
//! reduction's transpose is a plain broadcast back to the operand's shape.

use super::ShapeError;
use crate::builder::Builder;
use crate::ir::{Dim, Shape, TensorType, ValueId};
use crate::ops::BinaryOp;
use ndarray::{ArrayD, Axis};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Max,
}

impl ReduceKind {
    pub fn name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "reduce_sum",
            ReduceKind::Max => "reduce_max",
        }
    }
}

pub fn reduce_shape_rule(axes: &[usize], args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [x] = args else {
        return Err(ShapeError::Arity { op: "reduce", expected: 1, found: args.len() });
    };
    let mut dims = x.shape.0.clone();
    for &a in axes {
        match dims.get_mut(a) {
            Some(d) => *d = Dim::Known(1),
            None => return Err(ShapeError::Axis { axis: a, shape: x.shape.clone() }),
        }
    }
    Ok(TensorType::f32(Shape(dims)))
}

pub fn reduce_vjp_rule(
    b: &mut Builder,
    kind: ReduceKind,
    _axes: &[usize],
    args: &[ValueId],
    out: ValueId,
    g: ValueId,
) -> Vec<Option<ValueId>> {
    let Some(&x) = args.first() else { return Vec::new() };
    let shape = b.shape(x);
    let gb = b.broadcast(g, &shape);
    match kind {
        // Every element contributes once.
        ReduceKind::Sum => vec![Some(gb)],
        // The gradient goes to the maximal elements, shared equally among ties
        // (as JAX and PyTorch's `amax` do), so finite differences agree away
        // from exact ties.
        ReduceKind::Max => {
            let ob = b.broadcast(out, &shape);
            let hit = b.binary(BinaryOp::Eq, x, ob);
            let axes: Vec<usize> = _axes.to_vec();
            let count = b.reduce_sum(hit, &axes);
            let countb = b.broadcast(count, &shape);
            let share = b.div(hit, countb);
            vec![Some(b.mul(gb, share))]
        }
    }
}

/// One step of the `max` fold: a NaN element makes the maximum NaN (as
/// PyTorch's `amax`), and it stays NaN (no element is greater than NaN).
/// The compiled fold (`codegen::math::combine`) takes the same two tests.
fn max_step(m: f64, v: f64) -> f64 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

pub fn reduce_eval(kind: ReduceKind, axes: &[usize], args: &[&ArrayD<f64>]) -> ArrayD<f64> {
    let Some(x) = args.first() else { return ArrayD::default(ndarray::IxDyn(&[])) };
    let mut acc: ArrayD<f64> = (*x).clone();
    for &a in axes {
        let r = match kind {
            ReduceKind::Sum => acc.sum_axis(Axis(a)),
            ReduceKind::Max => acc.fold_axis(Axis(a), f64::NEG_INFINITY, |&m, &v| max_step(m, v)),
        };
        acc = r.insert_axis(Axis(a));
    }
    acc
}
