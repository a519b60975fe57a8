//! Sliding windows over the last two axes, the building block of convolution
//! and pooling (`elaborate/builtins.rs` writes `conv2d`, `max_pool` and
//! `avg_pool` with them):
//!
//! * `Unfold` (im2col): `[.., H, W] → [.., KH, KW, OH, OW]`, element
//!   `[.., i, j, p, q] = x[.., p·SH + i·DH, q·SW + j·DW]`. With the channel axis
//!   in front, `[N, C, KH, KW, OH, OW]` reshapes for free into the matrix
//!   `[N, C·KH·KW, OH·OW]` that a convolution multiplies by its weights.
//! * `Fold` (col2im), its transpose: every window element is added back to the
//!   input position it came from (overlapping windows sum).
//!
//! Both are linear and each is the other's derivative, so convolutions and
//! pooling get first and higher derivatives from these two rules plus
//! matmul's and reduce's. Padding is a separate `Pad` before `Unfold`.

use super::ShapeError;
use crate::builder::Builder;
use crate::ir::{Dim, Shape, TensorType, ValueId};
use ndarray::{ArrayD, IxDyn};

/// Kernel size, stride and dilation along (H, W).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
}

impl Window {
    /// The span of one window along axis `a`: `D·(K − 1) + 1`.
    pub fn extent(&self, a: usize) -> usize {
        self.dilation[a] * (self.kernel[a].max(1) - 1) + 1
    }

    /// Output positions along axis `a` for input size `n` (`None` if the window does not fit).
    pub fn out_size(&self, a: usize, n: usize) -> Option<usize> {
        let e = self.extent(a);
        if n < e || self.stride[a] == 0 || self.kernel[a] == 0 {
            return None;
        }
        Some((n - e) / self.stride[a] + 1)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        write!(f, "{kh}x{kw} stride {sh},{sw} dilation {dh},{dw}")
    }
}

fn spatial(x: &TensorType) -> Option<(usize, usize)> {
    let d = x.shape.dims();
    let r = d.len();
    if r < 2 {
        return None;
    }
    Some((d[r - 2].known()?, d[r - 1].known()?))
}

pub fn unfold_shape_rule(w: &Window, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [x] = args else {
        return Err(ShapeError::Arity { op: "unfold", expected: 1, found: args.len() });
    };
    let bad = || ShapeError::Window { window: *w, shape: x.shape.clone() };
    let (h, wd) = spatial(x).ok_or_else(bad)?;
    let (oh, ow) = (w.out_size(0, h).ok_or_else(bad)?, w.out_size(1, wd).ok_or_else(bad)?);
    let r = x.shape.rank();
    let mut dims = x.shape.dims()[..r - 2].to_vec();
    dims.extend([w.kernel[0], w.kernel[1], oh, ow].map(Dim::Known));
    Ok(TensorType { shape: Shape(dims), dtype: x.dtype })
}

pub fn fold_shape_rule(w: &Window, size: [usize; 2], args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [x] = args else {
        return Err(ShapeError::Arity { op: "fold", expected: 1, found: args.len() });
    };
    let d = x.shape.dims();
    let r = d.len();
    let expect = match (w.out_size(0, size[0]), w.out_size(1, size[1])) {
        (Some(oh), Some(ow)) => [w.kernel[0], w.kernel[1], oh, ow].map(Dim::Known),
        _ => return Err(ShapeError::Window { window: *w, shape: Shape::known(&size) }),
    };
    if r < 4 || d[r - 4..] != expect {
        return Err(ShapeError::Window { window: *w, shape: x.shape.clone() });
    }
    let mut dims = d[..r - 4].to_vec();
    dims.extend(size.map(Dim::Known));
    Ok(TensorType { shape: Shape(dims), dtype: x.dtype })
}

pub fn unfold_vjp_rule(b: &mut Builder, w: &Window, args: &[ValueId], g: ValueId) -> Vec<Option<ValueId>> {
    let Some(&x) = args.first() else { return Vec::new() };
    let shape = b.shape(x);
    let r = shape.rank();
    let size = [&shape.dims()[r.saturating_sub(2)], &shape.dims()[r.saturating_sub(1)]].map(|d| d.known().unwrap_or(0));
    vec![Some(b.fold(g, *w, size))]
}

pub fn fold_vjp_rule(b: &mut Builder, w: &Window, g: ValueId) -> Vec<Option<ValueId>> {
    vec![Some(b.unfold(g, *w))]
}

/// For every window element: its flat offset in the `[.., KH, KW, OH, OW]`
/// array's trailing block and in the `[.., H, W]` block it reads.
fn pairs(w: &Window, h: usize, wd: usize) -> Vec<(usize, usize)> {
    let (Some(oh), Some(ow)) = (w.out_size(0, h), w.out_size(1, wd)) else { return Vec::new() };
    let mut out = Vec::with_capacity(w.kernel[0] * w.kernel[1] * oh * ow);
    for i in 0..w.kernel[0] {
        for j in 0..w.kernel[1] {
            for p in 0..oh {
                for q in 0..ow {
                    let src = (p * w.stride[0] + i * w.dilation[0]) * wd + q * w.stride[1] + j * w.dilation[1];
                    out.push((out.len(), src));
                }
            }
        }
    }
    out
}

pub fn unfold_eval(w: &Window, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let mut y = ArrayD::zeros(IxDyn(out));
    let Some(x) = args.first() else { return y };
    let xs = x.shape();
    let r = xs.len();
    if r < 2 {
        return y;
    }
    let (h, wd) = (xs[r - 2], xs[r - 1]);
    let map = pairs(w, h, wd);
    let xv: Vec<f64> = x.iter().copied().collect();
    let (inner_in, inner_out) = (h * wd, map.len());
    if let Some(ys) = y.as_slice_mut() {
        for (yb, xb) in ys.chunks_mut(inner_out.max(1)).zip(xv.chunks(inner_in.max(1))) {
            for &(o, s) in &map {
                yb[o] = xb[s];
            }
        }
    }
    y
}

pub fn fold_eval(w: &Window, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let mut y = ArrayD::zeros(IxDyn(out));
    let Some(x) = args.first() else { return y };
    let r = out.len();
    if r < 2 {
        return y;
    }
    let (h, wd) = (out[r - 2], out[r - 1]);
    let map = pairs(w, h, wd);
    let xv: Vec<f64> = x.iter().copied().collect();
    let (inner_out, inner_in) = (h * wd, map.len());
    if let Some(ys) = y.as_slice_mut() {
        for (yb, xb) in ys.chunks_mut(inner_out.max(1)).zip(xv.chunks(inner_in.max(1))) {
            for &(o, s) in &map {
                yb[s] += xb[o];
            }
        }
    }
    y
}
