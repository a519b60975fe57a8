//! Exp, tanh, sigmoid, erf and GELU (with its derivative) sixteen lanes at a
//! time, called from generated code.
//!
//! Cranelift's vectors are four lanes wide, so the inline `f32x4` versions
//! (`math`) spend some sixty instructions on every four elements; on a machine
//! with AVX-512 the same instructions cover sixteen. A map kernel that needs
//! one of these functions evaluates four groups of four side by side, stores
//! the argument of each to a stack slot, calls the function here once, and
//! loads the four results (`Emitter::eval_groups`). The formulas, constants and
//! order of operations are those of `math`, so both give the same bits.

use super::math::{
    ERF_CLAMP, ERF_P, ERF_Q, EXP_BIG, EXP_HI, EXP_LO, EXP_POLY, FRAC_1_SQRT_2PI, LN2_NEG_HI, LN2_NEG_LO, MAGIC, TANH_CLAMP, TANH_P, TANH_Q,
    TANH_TINY,
};
use crate::ops::UnaryOp;

/// The functions computed here: the unary ops whose inline form is long.
pub(crate) const FUNCTIONS: [(UnaryOp, &str); 6] = [
    (UnaryOp::Exp, "nnc_exp16"),
    (UnaryOp::Tanh, "nnc_tanh16"),
    (UnaryOp::Sigmoid, "nnc_sigmoid16"),
    (UnaryOp::Erf, "nnc_erf16"),
    (UnaryOp::Gelu, "nnc_gelu16"),
    (UnaryOp::GeluDerivative, "nnc_gelu_derivative16"),
];

/// Tests only: allow the sixteen-lane functions (default true), to compare
/// the code generated with and without them.
pub static ALLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether generated code calls these functions: AVX-512 at run time, and not
/// switched off with `NNC_WIDE_MATH=0` (to measure the inline forms).
pub(crate) fn enabled() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env = *ENV.get_or_init(|| std::env::var("NNC_WIDE_MATH").map_or(true, |v| v != "0"));
    env && super::gemm::has_avx512() && ALLOWED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The address of the sixteen-lane function for `op`.
pub(crate) fn address(op: UnaryOp) -> Option<*const u8> {
    let f: extern "C" fn(*mut f32) = match op {
        UnaryOp::Exp => nnc_exp16,
        UnaryOp::Tanh => nnc_tanh16,
        UnaryOp::Sigmoid => nnc_sigmoid16,
        UnaryOp::Erf => nnc_erf16,
        UnaryOp::Gelu => nnc_gelu16,
        UnaryOp::GeluDerivative => nnc_gelu_derivative16,
        _ => return None,
    };
    Some(f as *const u8)
}

/// `extern "C" fn $name(p)`: `$f` of the sixteen floats at `p`, in place.
macro_rules! entry {
    ($name:ident, $f:ident) => {
        extern "C" fn $name(p: *mut f32) {
            // SAFETY: generated code calls this only when `enabled()` (AVX-512F
            // is available), with `p` addressing its 64-byte stack slot.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::$f(p)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = p;
        }
    };
}
entry!(nnc_exp16, exp_at);
entry!(nnc_tanh16, tanh_at);
entry!(nnc_sigmoid16, sigmoid_at);
entry!(nnc_erf16, erf_at);
entry!(nnc_gelu16, gelu_at);
entry!(nnc_gelu_derivative16, gelu_derivative_at);

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// `pub(super) unsafe fn $name(p)`: `$f` of the sixteen floats at `p`, in
    /// place (safety: AVX-512F available, `p` addresses sixteen floats).
    macro_rules! in_place {
        ($name:ident, $f:ident) => {
            #[target_feature(enable = "avx512f")]
            pub(super) unsafe fn $name(p: *mut f32) {
                // SAFETY: the caller's contract.
                unsafe { _mm512_storeu_ps(p, $f(load_groups(p))) }
            }
        };
    }
    /// The sixteen floats at `p`, read as the four 16-byte groups the caller
    /// has just stored: one 64-byte load would wait for the stores to retire
    /// (a store cannot be forwarded to a wider load), which costs more than
    /// the function's arithmetic.
    ///
    /// # Safety
    ///
    /// AVX-512F available; `p` addresses sixteen floats.
    #[target_feature(enable = "avx512f")]
    unsafe fn load_groups(p: *const f32) -> __m512 {
        // SAFETY: the caller's contract. The reads are volatile so that they
        // are not merged back into one wide load.
        unsafe {
            let group = |g: usize| std::ptr::read_volatile(p.add(4 * g).cast::<__m128>());
            let v = _mm512_castps128_ps512(group(0));
            let v = _mm512_insertf32x4::<1>(v, group(1));
            let v = _mm512_insertf32x4::<2>(v, group(2));
            _mm512_insertf32x4::<3>(v, group(3))
        }
    }

    in_place!(exp_at, exp);
    in_place!(tanh_at, tanh);
    in_place!(sigmoid_at, sigmoid);
    in_place!(erf_at, erf);
    in_place!(gelu_at, gelu);
    in_place!(gelu_derivative_at, gelu_derivative);

    #[target_feature(enable = "avx512f")]
    fn splat(c: f32) -> __m512 {
        _mm512_set1_ps(c)
    }

    /// `min(x, c)`, `c` where `x` is NaN (as `math::min_c`).
    #[target_feature(enable = "avx512f")]
    fn min_c(x: __m512, c: f32) -> __m512 {
        _mm512_min_ps(x, splat(c))
    }

    /// `max(x, c)`, `c` where `x` is NaN (as `math::max_c`).
    #[target_feature(enable = "avx512f")]
    fn max_c(x: __m512, c: f32) -> __m512 {
        _mm512_max_ps(x, splat(c))
    }

    #[target_feature(enable = "avx512f")]
    fn horner(x: __m512, coeffs: &[f32]) -> __m512 {
        let mut it = coeffs.iter();
        let mut acc = splat(it.next().copied().unwrap_or(0.0));
        for &c in it {
            acc = _mm512_fmadd_ps(acc, x, splat(c));
        }
        acc
    }

    /// `r`, with the NaN lanes of `x` passed through.
    #[target_feature(enable = "avx512f")]
    fn keep_nan(x: __m512, r: __m512) -> __m512 {
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_blend_ps(nan, r, x)
    }

    /// As `math::exp`.
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let xc = max_c(min_c(x, EXP_HI), EXP_LO);
        let m = splat(MAGIC);
        let t = _mm512_fmadd_ps(xc, splat(std::f32::consts::LOG2_E), m);
        let n = _mm512_sub_ps(t, m);
        let r = _mm512_fmadd_ps(n, splat(LN2_NEG_HI), xc);
        let r = _mm512_fmadd_ps(n, splat(LN2_NEG_LO), r);
        let z = _mm512_mul_ps(r, r);
        let p = horner(r, &EXP_POLY);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), splat(1.0));
        let ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(MAGIC.to_bits() as i32));
        let n1 = _mm512_srai_epi32::<1>(ni);
        let n2 = _mm512_sub_epi32(ni, n1);
        let bias = _mm512_set1_epi32(127);
        let s1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
        let s2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
        let y = _mm512_mul_ps(_mm512_mul_ps(y, s1), s2);
        let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, splat(EXP_BIG));
        keep_nan(x, _mm512_mask_blend_ps(big, y, splat(f32::INFINITY)))
    }

    /// As `math::rational`.
    #[target_feature(enable = "avx512f")]
    fn rational(x: __m512, clamp: f32, p: &[f32], q: &[f32]) -> __m512 {
        let xc = max_c(min_c(x, clamp), -clamp);
        let x2 = _mm512_mul_ps(xc, xc);
        let num = _mm512_mul_ps(horner(x2, p), xc);
        let den = horner(x2, q);
        keep_nan(x, _mm512_div_ps(num, den))
    }

    /// As `math::tanh`.
    #[target_feature(enable = "avx512f")]
    fn tanh(x: __m512) -> __m512 {
        let r = rational(x, TANH_CLAMP, &TANH_P, &TANH_Q);
        let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(x), splat(TANH_TINY));
        _mm512_mask_blend_ps(tiny, r, x)
    }

    /// As `math::sigmoid`.
    #[target_feature(enable = "avx512f")]
    fn sigmoid(x: __m512) -> __m512 {
        let one = splat(1.0);
        // −x by flipping the sign bit, as Cranelift's `fneg`.
        let nx = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN)));
        _mm512_div_ps(one, _mm512_add_ps(exp(nx), one))
    }

    /// As `math::erf`.
    #[target_feature(enable = "avx512f")]
    fn erf(x: __m512) -> __m512 {
        rational(x, ERF_CLAMP, &ERF_P, &ERF_Q)
    }

    /// As `math::normal_cdf`.
    #[target_feature(enable = "avx512f")]
    fn normal_cdf(x: __m512) -> __m512 {
        let e = erf(_mm512_mul_ps(x, splat(std::f32::consts::FRAC_1_SQRT_2)));
        _mm512_mul_ps(_mm512_add_ps(e, splat(1.0)), splat(0.5))
    }

    /// As `math::gelu`.
    #[target_feature(enable = "avx512f")]
    fn gelu(x: __m512) -> __m512 {
        _mm512_mul_ps(x, normal_cdf(x))
    }

    /// As `math::gelu_derivative`.
    #[target_feature(enable = "avx512f")]
    fn gelu_derivative(x: __m512) -> __m512 {
        let e = exp(_mm512_mul_ps(_mm512_mul_ps(x, x), splat(-0.5)));
        let density = _mm512_mul_ps(e, splat(FRAC_1_SQRT_2PI));
        _mm512_add_ps(normal_cdf(x), _mm512_mul_ps(x, density))
    }
}
