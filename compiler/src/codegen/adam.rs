//! Adam's fused update as a precompiled AVX-512 kernel.
//!
//! The planner already fuses Adam into one map kernel with three outputs
//! (`m'`, `v'` and the new parameter). Cranelift can only emit it with 128-bit
//! vectors; this module recognises that kernel's expression and runs it with
//! 512-bit vectors instead (`nnc_adam`), splitting large ones across the
//! worker pool. Every operation is the one the JIT would emit, in the same
//! order (reciprocals of the bias corrections, no fused multiply-add), so the
//! results are bit-identical to the JIT's.
//!
//! Without AVX-512 at run time nothing is recognised and the JIT's loop runs.

use super::emit::simplify;
use super::kernel::{Affine, ENode, MapKernel};
use crate::ops::{BinaryOp, UnaryOp};

/// Where Adam's arrays and scalars are in a recognised map kernel, and its
/// constants.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Adam {
    /// Elements updated.
    pub n: usize,
    /// Parameter, gradient, first and second moment (contiguous).
    pub p: Affine,
    pub g: Affine,
    pub m: Affine,
    pub v: Affine,
    /// The new parameter, `m'` and `v'` (contiguous; usually `p`, `m`, `v`).
    pub out_p: Affine,
    pub out_m: Affine,
    pub out_v: Affine,
    /// Learning rate and the bias corrections `1 − β1ᵗ`, `1 − β2ᵗ` (scalars).
    pub lr: Affine,
    pub c1: Affine,
    pub c2: Affine,
    /// `m' = m·k[0] + g·k[1]`, `v' = v·k[2] + g²·k[3]`, `ε = k[4]`.
    pub k: [f32; 5],
}

/// Matches a kernel's expression nodes.
struct Matcher<'k> {
    k: &'k MapKernel,
}

impl Matcher<'_> {
    fn binary(&self, i: usize, op: BinaryOp) -> Option<(usize, usize)> {
        match self.k.nodes.get(i)? {
            ENode::Binary(o, a, b) if *o == op => Some((*a, *b)),
            _ => None,
        }
    }

    /// `f` on the two children of the commutative `op` at `i`, in either order.
    fn either<T>(&self, i: usize, op: BinaryOp, f: impl Fn(usize, usize) -> Option<T>) -> Option<T> {
        let (a, b) = self.binary(i, op)?;
        f(a, b).or_else(|| f(b, a))
    }

    fn operand(&self, i: usize) -> Option<usize> {
        match self.k.nodes.get(i)? {
            ENode::Operand(o) => Some(*o),
            _ => None,
        }
    }

    fn constant(&self, i: usize) -> Option<f32> {
        match self.k.nodes.get(i)? {
            ENode::Const(bits) => Some(f32::from_bits(*bits)),
            _ => None,
        }
    }

    /// `operand · constant` (either order): the operand and the constant.
    fn scaled_operand(&self, i: usize) -> Option<(usize, f32)> {
        self.either(i, BinaryOp::Mul, |a, b| Some((self.operand(a)?, self.constant(b)?)))
    }

    /// `(g·g) · constant`: `g` and the constant.
    fn scaled_square(&self, i: usize) -> Option<(usize, f32)> {
        self.either(i, BinaryOp::Mul, |a, b| {
            let (x, y) = self.binary(a, BinaryOp::Mul)?;
            let g = self.operand(x)?;
            (self.operand(y)? == g).then_some((g, self.constant(b)?))
        })
    }

    /// `v' = v·β2 + g²·(1 − β2)`: operands `v`, `g` and the two constants.
    fn second_moment(&self, i: usize) -> Option<(usize, usize, f32, f32)> {
        self.either(i, BinaryOp::Add, |a, b| {
            let (v, kv) = self.scaled_operand(a)?;
            let (g, kg) = self.scaled_square(b)?;
            Some((v, g, kv, kg))
        })
    }

    /// `m' = m·β1 + g·(1 − β1)` for the known `g`: operand `m` and the two
    /// constants.
    fn first_moment(&self, i: usize, g: usize) -> Option<(usize, f32, f32)> {
        self.either(i, BinaryOp::Add, |a, b| {
            let (m, km) = self.scaled_operand(a)?;
            let (g2, kg) = self.scaled_operand(b)?;
            (g2 == g && m != g).then_some((m, km, kg))
        })
    }

    /// `x / c` for an operand `c`: `x` and `c`.
    fn divided(&self, i: usize) -> Option<(usize, usize)> {
        let (x, c) = self.binary(i, BinaryOp::Div)?;
        Some((x, self.operand(c)?))
    }
}

/// Node indices and operands of a matched update, before the layout checks.
struct Found {
    m2: usize,
    v2: usize,
    ops: [usize; 7],
    k: [f32; 5],
}

/// `p − lr · ((m'/c1) / (√(v'/c2) + ε))` at the root, `m'` and `v'` the two
/// extra outputs.
fn find(k: &MapKernel) -> Option<Found> {
    let mm = Matcher { k };
    let (p, step) = mm.binary(k.root, BinaryOp::Sub)?;
    let p = mm.operand(p)?;
    let (lr, dir) = mm.either(step, BinaryOp::Mul, |a, b| Some((mm.operand(a)?, b)))?;
    let (mhat, den) = mm.binary(dir, BinaryOp::Div)?;
    let (m2, c1) = mm.divided(mhat)?;
    let (root, eps) = mm.either(den, BinaryOp::Add, |a, b| Some((a, mm.constant(b)?)))?;
    let vhat = match k.nodes.get(root)? {
        ENode::Unary(UnaryOp::Sqrt, x) => *x,
        _ => return None,
    };
    let (v2, c2) = mm.divided(vhat)?;
    let (v, g, kv, kg2) = mm.second_moment(v2)?;
    let (m, km, kg) = mm.first_moment(m2, g)?;
    Some(Found { m2, v2, ops: [p, g, m, v, lr, c1, c2], k: [km, kg, kv, kg2, eps] })
}

/// The update, if `k` is Adam's fused update over contiguous arrays (and
/// AVX-512 is available to run it).
pub(crate) fn recognise(k: &MapKernel) -> Option<Adam> {
    if !super::gemm::has_avx512() || k.acc.is_some() || k.extra.len() != 2 {
        return None;
    }
    let f = find(k)?;
    let out_m = k.extra.iter().find(|(_, n)| *n == f.m2)?.0.clone();
    let out_v = k.extra.iter().find(|(_, n)| *n == f.v2)?.0.clone();
    let ops: Vec<Affine> = f.ops.iter().map(|&o| k.operands.get(o).cloned()).collect::<Option<_>>()?;
    let [p, g, m, v, lr, c1, c2]: [Affine; 7] = ops.try_into().ok()?;
    // Arrays: one contiguous run of the same elements; scalars: broadcast.
    let arrays = [&k.out, &out_m, &out_v, &p, &g, &m, &v];
    let mut strides: Vec<Vec<i64>> = arrays.iter().chain([&lr, &c1, &c2].iter()).map(|a| a.strides.clone()).collect();
    let dims = simplify(&k.dims, &mut strides);
    let n: usize = dims.iter().product();
    let (arr, scal) = strides.split_at(arrays.len());
    let contiguous = match dims.len() {
        0 => true,
        1 => arr.iter().all(|s| s.as_slice() == [1]),
        _ => false,
    };
    let broadcast = scal.iter().all(|s| s.iter().all(|&x| x == 0));
    let stored = arrays.iter().chain([&lr, &c1, &c2].iter()).all(|a| a.storage.is_some());
    (contiguous && broadcast && stored).then(|| Adam { n, p, g, m, v, out_p: k.out.clone(), out_m, out_v, lr, c1, c2, k: f.k })
}

/// Elements from which `nnc_adam` splits the update across the worker pool
/// (`NNC_PAR_ADAM` overrides it, for measuring).
pub(crate) const PARALLEL_ADAM: usize = 1 << 15;

fn parallel_adam() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| super::pool::threshold("NNC_PAR_ADAM", PARALLEL_ADAM))
}

/// The arrays of one update (see `Adam`), as raw pointers.
#[derive(Clone, Copy)]
struct Arrays {
    p: *const f32,
    g: *const f32,
    m: *const f32,
    v: *const f32,
    out_p: *mut f32,
    out_m: *mut f32,
    out_v: *mut f32,
}

// SAFETY: pieces of one update touch disjoint element ranges of the arrays
// (each element is read and written by exactly one piece).
unsafe impl Sync for Arrays {}

/// The per-element constants: `lr`, `1/c1`, `1/c2`, then `Adam::k`.
type Consts = [f32; 8];

/// Adam's update of `n` elements (see `Adam`); the generated code passes the
/// array pointers, the scalar pointers and the five constants as `f32` bits.
#[allow(clippy::too_many_arguments)]
pub(crate) extern "C" fn nnc_adam(
    n: i64,
    p: *const f32,
    g: *const f32,
    m: *const f32,
    v: *const f32,
    out_p: *mut f32,
    out_m: *mut f32,
    out_v: *mut f32,
    lr: *const f32,
    c1: *const f32,
    c2: *const f32,
    k0: i64,
    k1: i64,
    k2: i64,
    k3: i64,
    k4: i64,
) {
    let Ok(n) = usize::try_from(n) else {
        return;
    };
    let bits = |x: i64| f32::from_bits(x as u32);
    // SAFETY: the generated code passes pointers to the arena's scalar slots.
    let (lr, c1, c2) = unsafe { (*lr, *c1, *c2) };
    // The JIT divides by the row-invariant corrections through reciprocals.
    let consts: Consts = [lr, 1.0 / c1, 1.0 / c2, bits(k0), bits(k1), bits(k2), bits(k3), bits(k4)];
    let arrays = Arrays { p, g, m, v, out_p, out_m, out_v };
    let pool = super::pool::pool();
    // Pieces of a multiple of 16 elements, four per thread.
    let chunks = if n >= parallel_adam() { (pool.threads() * 4).min(n / 16).max(1) } else { 1 };
    let per = n.div_ceil(chunks).div_ceil(16) * 16;
    let task = |t: usize| {
        let (lo, hi) = ((t * per).min(n), ((t + 1) * per).min(n));
        // SAFETY: `recognise` only matched with AVX-512 available; the arrays
        // hold `n` elements (planned layout) and `lo..hi` is inside them.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::update(&arrays, &consts, lo, hi)
        };
    };
    pool.run(chunks, &task);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Arrays, Consts};
    use std::arch::x86_64::*;

    /// Elements `lo..hi` of the update, 16 at a time (the tail masked).
    ///
    /// # Safety
    ///
    /// AVX-512F available; every array holds at least `hi` elements; an
    /// output may alias its own input (`out_p` and `p`, …) but no other array.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn update(a: &Arrays, k: &Consts, lo: usize, hi: usize) {
        let [lr, r1, r2, km, kg, kv, kg2, eps] = k.map(|x| _mm512_set1_ps(x));
        let mut i = lo;
        while i < hi {
            let mask: __mmask16 = if hi - i >= 16 { 0xffff } else { ((1u32 << (hi - i)) - 1) as u16 };
            // SAFETY: lanes `i..min(i + 16, hi)` are in bounds (the contract);
            // the masked-off lanes are not accessed. Each element is read
            // before it is written.
            unsafe {
                let p = _mm512_maskz_loadu_ps(mask, a.p.add(i));
                let g = _mm512_maskz_loadu_ps(mask, a.g.add(i));
                let m = _mm512_maskz_loadu_ps(mask, a.m.add(i));
                let v = _mm512_maskz_loadu_ps(mask, a.v.add(i));
                // The JIT's operations and order: no fused multiply-adds.
                let m2 = _mm512_add_ps(_mm512_mul_ps(m, km), _mm512_mul_ps(g, kg));
                let v2 = _mm512_add_ps(_mm512_mul_ps(v, kv), _mm512_mul_ps(_mm512_mul_ps(g, g), kg2));
                let den = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(v2, r2)), eps);
                let dir = _mm512_div_ps(_mm512_mul_ps(m2, r1), den);
                let p2 = _mm512_sub_ps(p, _mm512_mul_ps(lr, dir));
                _mm512_mask_storeu_ps(a.out_m.add(i), mask, m2);
                _mm512_mask_storeu_ps(a.out_v.add(i), mask, v2);
                _mm512_mask_storeu_ps(a.out_p.add(i), mask, p2);
            }
            i += 16;
        }
    }
}
