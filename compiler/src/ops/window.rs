//! Sliding windows over the last two axes, the building block of convolution
//! and pooling (`elaborate/vision.rs` writes `conv2d`, `max_pool` and
//! `avg_pool` with them):
//!
//! * `Unfold` (im2col): `[a.., b.., H, W] → [a.., KH, KW, b.., OH, OW]`, where
//!   the `lead` axes `a` stay in front and the window axes come next, element
//!   `[a, i, j, b, p, q] = x[a, b, p·SH + i·DH, q·SW + j·DW]`. Putting the
//!   window axes before the batch makes a convolution one matrix product:
//!   `x` viewed as `[C, N, H, W]` unfolds to `[KH, KW, C, N, OH, OW]`, which is
//!   already the matrix `[KH·KW·C, N·OH·OW]` in memory.
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

/// Kernel size, stride and dilation along (H, W), and how many leading axes
/// stay in front of the window axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub lead: usize,
}

impl Window {
    /// The span of one window along axis `a`: `D·(K − 1) + 1`, saturating
    /// (a window wider than any tensor fits none).
    pub fn extent(&self, a: usize) -> usize {
        self.dilation[a].saturating_mul(self.kernel[a].max(1) - 1).saturating_add(1)
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
        write!(f, "{kh}x{kw} stride {sh},{sw} dilation {dh},{dw}")?;
        if self.lead > 0 {
            write!(f, " after {} axes", self.lead)?;
        }
        Ok(())
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

/// `[a.., b.., H, W]` → `[a.., KH, KW, b.., OH, OW]` (`out` = OH, OW).
fn unfolded_dims(w: &Window, dims: &[Dim], out: [usize; 2]) -> Vec<Dim> {
    let r = dims.len();
    let mut d = dims[..w.lead].to_vec();
    d.extend([w.kernel[0], w.kernel[1]].map(Dim::Known));
    d.extend_from_slice(&dims[w.lead..r - 2]);
    d.extend(out.map(Dim::Known));
    d
}

pub fn unfold_shape_rule(w: &Window, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [x] = args else {
        return Err(ShapeError::Arity { op: "unfold", expected: 1, found: args.len() });
    };
    let bad = || ShapeError::Window { window: *w, shape: x.shape.clone() };
    let (h, wd) = spatial(x).ok_or_else(bad)?;
    if w.lead + 2 > x.shape.rank() {
        return Err(bad());
    }
    let out = [w.out_size(0, h).ok_or_else(bad)?, w.out_size(1, wd).ok_or_else(bad)?];
    Ok(TensorType { shape: Shape(unfolded_dims(w, x.shape.dims(), out)), dtype: x.dtype })
}

pub fn fold_shape_rule(w: &Window, size: [usize; 2], args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let [x] = args else {
        return Err(ShapeError::Arity { op: "fold", expected: 1, found: args.len() });
    };
    let d = x.shape.dims();
    let r = d.len();
    let bad = || ShapeError::Window { window: *w, shape: x.shape.clone() };
    let (Some(oh), Some(ow)) = (w.out_size(0, size[0]), w.out_size(1, size[1])) else {
        return Err(ShapeError::Window { window: *w, shape: Shape::known(&size) });
    };
    if r < w.lead + 4 {
        return Err(bad());
    }
    let mut folded = d[..w.lead].to_vec();
    folded.extend_from_slice(&d[w.lead + 2..r - 2]);
    folded.extend(size.map(Dim::Known));
    if unfolded_dims(w, &folded, [oh, ow]) != d {
        return Err(bad());
    }
    Ok(TensorType { shape: Shape(folded), dtype: x.dtype })
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

/// For every element of the unfolded `[a.., KH, KW, b.., OH, OW]` array (in
/// order), the flat offset it reads in the row-major `[a.., b.., H, W]` input.
fn source_offsets(w: &Window, unfolded: &[usize], input: &[usize]) -> Vec<usize> {
    let (r, xr) = (unfolded.len(), input.len());
    if r < w.lead + 4 || xr < w.lead + 2 {
        return Vec::new();
    }
    let mut xs = vec![1usize; xr];
    for k in (0..xr.saturating_sub(1)).rev() {
        xs[k] = xs[k + 1] * input[k + 1];
    }
    // Input stride of each unfolded axis: (i, j) and (p, q) both move along H and W.
    let mut step = xs[..w.lead].to_vec();
    step.extend([xs[xr - 2] * w.dilation[0], xs[xr - 1] * w.dilation[1]]);
    step.extend_from_slice(&xs[w.lead..xr - 2]);
    step.extend([xs[xr - 2] * w.stride[0], xs[xr - 1] * w.stride[1]]);
    let total: usize = unfolded.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    for _ in 0..total {
        out.push(off);
        // Odometer: advance the last axis, carrying into earlier ones.
        for k in (0..r).rev() {
            idx[k] += 1;
            off += step[k];
            if idx[k] < unfolded[k] {
                break;
            }
            off -= step[k] * idx[k];
            idx[k] = 0;
        }
    }
    out
}

pub fn unfold_eval(w: &Window, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let Some(x) = args.first() else { return ArrayD::zeros(IxDyn(out)) };
    let xv: Vec<f64> = x.iter().copied().collect();
    let v = source_offsets(w, out, x.shape()).into_iter().map(|o| xv.get(o).copied().unwrap_or(0.0)).collect();
    ArrayD::from_shape_vec(IxDyn(out), v).unwrap_or_else(|_| ArrayD::zeros(IxDyn(out)))
}

pub fn fold_eval(w: &Window, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let mut y = vec![0.0; out.iter().product()];
    if let Some(x) = args.first() {
        for (o, v) in source_offsets(w, x.shape(), out).into_iter().zip(x.iter()) {
            if let Some(slot) = y.get_mut(o) {
                *slot += *v;
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(out), y).unwrap_or_else(|_| ArrayD::zeros(IxDyn(out)))
}
