//! Linear algebra: matrix product (batched over leading dims) and the linear
//! solve behind closed-form ridge regression, `(XᵀX + λI)⁻¹ Xᵀy`.

use super::{EvalError, ShapeError};
use crate::builder::Builder;
use crate::ir::{Shape, TensorType, ValueId};
use ndarray::{ArrayD, Axis, Ix2, IxDyn};

// ---- matmul ---------------------------------------------------------------------

pub fn matmul_shape_rule(args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [x, y] = args else {
        return Err(ShapeError::Arity { op: "matmul", expected: 2, found: args.len() });
    };
    let (xs, ys) = (x.shape.dims(), y.shape.dims());
    let rank_err = || ShapeError::MatMulRank { lhs: x.shape.clone(), rhs: y.shape.clone() };
    if xs.len() < 2 || xs.len() != ys.len() {
        return Err(rank_err());
    }
    let r = xs.len();
    if xs[..r - 2] != ys[..r - 2] {
        return Err(rank_err());
    }
    if xs[r - 1] != ys[r - 2] {
        return Err(ShapeError::MatMulInner { lhs: x.shape.clone(), rhs: y.shape.clone() });
    }
    let mut dims = xs[..r - 1].to_vec();
    dims.push(ys[r - 1].clone());
    Ok(TensorType::f32(Shape(dims)))
}

/// `C = A B`: `dA = G Bᵀ`, `dB = Aᵀ G`.
pub fn matmul_vjp_rule(b: &mut Builder, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let (Some(&x), Some(&y)) = (args.first(), args.get(1)) else { return Vec::new() };
    let yt = b.matrix_transpose(y);
    let dx = b.matmul(g, yt);
    let xt = b.matrix_transpose(x);
    let dy = b.matmul(xt, g);
    vec![Some(dx), Some(dy)]
}

pub fn matmul_eval(args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let (Some(x), Some(y)) = (args.first(), args.get(1)) else { return ArrayD::zeros(IxDyn(out)) };
    let r = out.len();
    let mut result = ArrayD::zeros(IxDyn(out));
    if r == 2 {
        if let (Ok(a), Ok(c)) = (x.view().into_dimensionality::<Ix2>(), y.view().into_dimensionality::<Ix2>()) {
            result.assign(&a.dot(&c));
        }
        return result;
    }
    // Batched: recurse over the leading axis.
    for (i, mut slot) in result.axis_iter_mut(Axis(0)).enumerate() {
        let xi = x.index_axis(Axis(0), i).to_owned();
        let yi = y.index_axis(Axis(0), i).to_owned();
        slot.assign(&matmul_eval(&[&xi, &yi], &out[1..]));
    }
    result
}

// ---- solve --------------------------------------------------------------------------

pub fn solve_shape_rule(args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [a, rhs] = args else {
        return Err(ShapeError::Arity { op: "solve", expected: 2, found: args.len() });
    };
    let (ad, bd) = (a.shape.dims(), rhs.shape.dims());
    let ok = ad.len() == 2 && bd.len() == 2 && ad[0] == ad[1] && ad[1] == bd[0];
    if !ok {
        return Err(ShapeError::Solve { a: a.shape.clone(), b: rhs.shape.clone() });
    }
    Ok(TensorType::f32(rhs.shape.clone()))
}

/// `X = A⁻¹B`: `dB = A⁻ᵀ G`, `dA = −dB Xᵀ`.
pub fn solve_vjp_rule(b: &mut Builder, args: &[ValueId], out: ValueId, g: ValueId) -> Vec<Option<ValueId>> {
    let Some(&a) = args.first() else { return Vec::new() };
    let at = b.matrix_transpose(a);
    let db = b.solve(at, g);
    let xt = b.matrix_transpose(out);
    let t = b.matmul(db, xt);
    let da = b.neg(t);
    vec![Some(da), Some(db)]
}

/// Gaussian elimination with partial pivoting, in float64.
pub fn solve_eval(args: &[&ArrayD<f64>]) -> Result<ArrayD<f64>, EvalError> {
    let (Some(a), Some(rhs)) = (args.first(), args.get(1)) else { return Err(EvalError::Singular) };
    let n = a.shape().first().copied().unwrap_or(0);
    let k = rhs.shape().get(1).copied().unwrap_or(0);
    let mut m: Vec<f64> = a.iter().copied().collect();
    let mut x: Vec<f64> = rhs.iter().copied().collect();
    if !gauss_solve(&mut m, &mut x, n, k) {
        return Err(EvalError::Singular);
    }
    ArrayD::from_shape_vec(IxDyn(&[n, k]), x).map_err(|_| EvalError::Singular)
}

/// Solve `m x = rhs` in place for row-major `m` [n, n] and `x` [n, k] (which
/// holds `rhs` on entry and the solution on return); false if `m` is singular.
/// Shared by the reference interpreter and the JIT's solve helper.
pub fn gauss_solve(m: &mut [f64], x: &mut [f64], n: usize, k: usize) -> bool {
    if m.len() < n * n || x.len() < n * k {
        return false;
    }
    let scale = m.iter().fold(0.0f64, |s, v| s.max(v.abs())).max(f64::MIN_POSITIVE);
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs())).unwrap_or(col);
        if m[pivot * n + col].abs() <= scale * 1e-14 {
            return false;
        }
        if pivot != col {
            for c in 0..n {
                m.swap(col * n + c, pivot * n + c);
            }
            for c in 0..k {
                x.swap(col * k + c, pivot * k + c);
            }
        }
        let p = m[col * n + col];
        for row in col + 1..n {
            let f = m[row * n + col] / p;
            if f == 0.0 {
                continue;
            }
            for c in col..n {
                m[row * n + c] -= f * m[col * n + c];
            }
            for c in 0..k {
                x[row * k + c] -= f * x[col * k + c];
            }
        }
    }
    for col in (0..n).rev() {
        let p = m[col * n + col];
        for c in 0..k {
            let mut v = x[col * k + c];
            for j in col + 1..n {
                v -= m[col * n + j] * x[j * k + c];
            }
            x[col * k + c] = v / p;
        }
    }
    true
}
