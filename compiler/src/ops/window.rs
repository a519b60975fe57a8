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
use ndarray::{ArrayD, Dimension, IxDyn};

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

/// The input index `[a.., b.., h, w]` an unfolded index `[a.., i, j, b.., p, q]` reads.
fn source_index(w: &Window, u: &[usize]) -> Vec<usize> {
    let r = u.len();
    let (i, j, p, q) = (u[w.lead], u[w.lead + 1], u[r - 2], u[r - 1]);
    let mut x = u[..w.lead].to_vec();
    x.extend_from_slice(&u[w.lead + 2..r - 2]);
    x.push(p * w.stride[0] + i * w.dilation[0]);
    x.push(q * w.stride[1] + j * w.dilation[1]);
    x
}

pub fn unfold_eval(w: &Window, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let Some(x) = args.first() else { return ArrayD::zeros(IxDyn(out)) };
    ArrayD::from_shape_fn(IxDyn(out), |u| x.get(IxDyn(&source_index(w, u.slice()))).copied().unwrap_or(0.0))
}

pub fn fold_eval(w: &Window, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let mut y = ArrayD::zeros(IxDyn(out));
    let Some(x) = args.first() else { return y };
    for (u, v) in x.indexed_iter() {
        if let Some(slot) = y.get_mut(IxDyn(&source_index(w, u.slice()))) {
            *slot += *v;
        }
    }
    y
}
