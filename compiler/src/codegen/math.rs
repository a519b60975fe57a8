//! Elementwise math on `f32x4` values, emitted inline: exp and log (Cephes
//! polynomials), tanh and erf (the Eigen/XLA rationals), pow from exp/log with
//! IEEE sign and special cases, and NaN-aware max/compare. All errors are a few
//! ulp (tanh/erf: < 4e-7 absolute, relative near 0).

// The coefficients are written as published (more digits than f32 holds).
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32X4, I32, I32X4};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

use crate::ops::{BinaryOp, ReduceKind, UnaryOp};

type B<'a, 'b> = &'a mut FunctionBuilder<'b>;

/// `c` in every lane.
pub(crate) fn splat(b: B, c: f32) -> Value {
    let s = b.ins().f32const(c);
    b.ins().splat(F32X4, s)
}

fn isplat(b: B, c: i32) -> Value {
    let s = b.ins().iconst(I32, i64::from(c as u32));
    b.ins().splat(I32X4, s)
}

fn as_int(b: B, v: Value) -> Value {
    b.ins().bitcast(I32X4, MemFlagsData::new(), v)
}

fn as_float(b: B, v: Value) -> Value {
    b.ins().bitcast(F32X4, MemFlagsData::new(), v)
}

fn fcmp(b: B, cc: FloatCC, x: Value, y: Value) -> Value {
    b.ins().fcmp(cc, x, y)
}

fn fcmp_c(b: B, cc: FloatCC, x: Value, c: f32) -> Value {
    let y = splat(b, c);
    b.ins().fcmp(cc, x, y)
}

/// Lanes of `x` where `mask` (an `i32x4` compare result) is set, else `y`.
fn sel(b: B, mask: Value, x: Value, y: Value) -> Value {
    let m = as_float(b, mask);
    b.ins().bitselect(m, x, y)
}

fn sel_c(b: B, mask: Value, c: f32, y: Value) -> Value {
    let x = splat(b, c);
    sel(b, mask, x, y)
}

/// `min(x, c)` as `minps` (x is NaN → c).
fn min_c(b: B, x: Value, c: f32) -> Value {
    let hi = splat(b, c);
    let m = b.ins().fcmp(FloatCC::LessThan, x, hi);
    sel(b, m, x, hi)
}

/// `max(x, c)` as `maxps` (x is NaN → c).
fn max_c(b: B, x: Value, c: f32) -> Value {
    let lo = splat(b, c);
    let m = b.ins().fcmp(FloatCC::LessThan, lo, x);
    sel(b, m, x, lo)
}

fn mul_c(b: B, x: Value, c: f32) -> Value {
    let k = splat(b, c);
    b.ins().fmul(x, k)
}

/// `x * c + y`.
fn fma_c(b: B, x: Value, c: f32, y: Value) -> Value {
    let k = splat(b, c);
    b.ins().fma(x, k, y)
}

/// Polynomial in `x`, coefficients from the highest degree down.
fn horner(b: B, x: Value, coeffs: &[f32]) -> Value {
    let mut it = coeffs.iter();
    let mut acc = splat(b, it.next().copied().unwrap_or(0.0));
    for &c in it {
        let k = splat(b, c);
        acc = b.ins().fma(acc, x, k);
    }
    acc
}

/// NaN lanes of `x` are passed through to the result.
fn keep_nan(b: B, x: Value, r: Value) -> Value {
    let nan = fcmp(b, FloatCC::Unordered, x, x);
    sel(b, nan, x, r)
}

pub(crate) const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer in the low mantissa bits

/// Exp's constants, shared with the sixteen-lane version (`wide`): results
/// below `EXP_LO` round to 0, above `EXP_HI` overflow (`EXP_BIG`: ∞).
pub(crate) const EXP_HI: f32 = 88.722_83;
pub(crate) const EXP_LO: f32 = -104.0;
pub(crate) const EXP_BIG: f32 = 88.722_84;
/// ln 2 in two parts (Cody–Waite), negated.
pub(crate) const LN2_NEG_HI: f32 = -0.693_359_375;
pub(crate) const LN2_NEG_LO: f32 = 2.12194440e-4;
/// Cephes' polynomial for `(exp(r) − 1 − r) / r²`, highest degree first.
pub(crate) const EXP_POLY: [f32; 6] =
    [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1];

pub(crate) fn exp(b: B, x: Value) -> Value {
    let xc = min_c(b, x, EXP_HI);
    let xc = max_c(b, xc, EXP_LO);
    // n = round(x / ln 2), kept both as a float and in t's low mantissa bits.
    let m = splat(b, MAGIC);
    let t = fma_c(b, xc, std::f32::consts::LOG2_E, m);
    let n = b.ins().fsub(t, m);
    let r = fma_c(b, n, LN2_NEG_HI, xc);
    let r = fma_c(b, n, LN2_NEG_LO, r);
    let z = b.ins().fmul(r, r);
    let p = horner(b, r, &EXP_POLY);
    let y = b.ins().fma(p, z, r);
    let one = splat(b, 1.0);
    let y = b.ins().fadd(y, one);
    // ·2^n as ·2^n1·2^n2 with n1 = n >> 1, n2 = n − n1 (n ∈ [−150, 128], so both
    // factors are normal and results down to the subnormals round correctly).
    let ti = as_int(b, t);
    let magic_bits = isplat(b, MAGIC.to_bits() as i32);
    let ni = b.ins().isub(ti, magic_bits);
    let n1 = b.ins().sshr_imm_s(ni, 1);
    let n2 = b.ins().isub(ni, n1);
    let bias = isplat(b, 127);
    let e1 = b.ins().iadd(n1, bias);
    let e1 = b.ins().ishl_imm_s(e1, 23);
    let e2 = b.ins().iadd(n2, bias);
    let e2 = b.ins().ishl_imm_s(e2, 23);
    let s1 = as_float(b, e1);
    let s2 = as_float(b, e2);
    let y = b.ins().fmul(y, s1);
    let y = b.ins().fmul(y, s2);
    let big = fcmp_c(b, FloatCC::GreaterThan, x, EXP_BIG);
    let y = sel_c(b, big, f32::INFINITY, y);
    keep_nan(b, x, y)
}

pub(crate) fn log(b: B, x: Value) -> Value {
    // Subnormals: scale by 2^23 first.
    let small = fcmp_c(b, FloatCC::LessThan, x, f32::MIN_POSITIVE);
    let xs = mul_c(b, x, 8_388_608.0);
    let xs = sel(b, small, xs, x);
    let zero = splat(b, 0.0);
    let adj = sel_c(b, small, -23.0, zero);
    // x = m · 2^e with m in [0.5, 1).
    let bits = as_int(b, xs);
    let e = b.ins().ushr_imm_s(bits, 23);
    let k = isplat(b, 126);
    let e = b.ins().isub(e, k);
    let e = b.ins().fcvt_from_sint(F32X4, e);
    let e = b.ins().fadd(e, adj);
    let mant = isplat(b, 0x007f_ffff);
    let half = isplat(b, 0x3f00_0000);
    let m = b.ins().band(bits, mant);
    let m = b.ins().bor(m, half);
    let m = as_float(b, m);
    // m < √½: use 2m − 1 and e − 1, else m − 1.
    let lo = fcmp_c(b, FloatCC::LessThan, m, std::f32::consts::FRAC_1_SQRT_2);
    let one = splat(b, 1.0);
    let dec = sel(b, lo, one, zero);
    let e = b.ins().fsub(e, dec);
    let extra = sel(b, lo, m, zero);
    let f = b.ins().fsub(m, one);
    let f = b.ins().fadd(f, extra);
    let z = b.ins().fmul(f, f);
    let p = horner(
        b,
        f,
        &[
            7.0376836292e-2,
            -1.1514610310e-1,
            1.1676998740e-1,
            -1.2420140846e-1,
            1.4249322787e-1,
            -1.6668057665e-1,
            2.0000714765e-1,
            -2.4999993993e-1,
            3.3333331174e-1,
        ],
    );
    let p = b.ins().fmul(p, f);
    let y = b.ins().fmul(p, z);
    let y = fma_c(b, e, -2.12194440e-4, y);
    let y = fma_c(b, z, -0.5, y);
    let r = b.ins().fadd(f, y);
    let r = fma_c(b, e, 0.693_359_375, r);
    // log(0) = −inf, log(inf) = inf, log(x < 0) = NaN (NaN stays NaN).
    let is0 = fcmp(b, FloatCC::Equal, x, zero);
    let r = sel_c(b, is0, f32::NEG_INFINITY, r);
    let inf = fcmp_c(b, FloatCC::Equal, x, f32::INFINITY);
    let r = sel_c(b, inf, f32::INFINITY, r);
    let neg = fcmp(b, FloatCC::LessThan, x, zero);
    let r = sel_c(b, neg, f32::NAN, r);
    keep_nan(b, x, r)
}

/// Odd/even rational `x · P(x²) / Q(x²)` on `x` clamped to ±`clamp`.
fn rational(b: B, x: Value, clamp: f32, p: &[f32], q: &[f32]) -> Value {
    let xc = min_c(b, x, clamp);
    let xc = max_c(b, xc, -clamp);
    let x2 = b.ins().fmul(xc, xc);
    let num = horner(b, x2, p);
    let num = b.ins().fmul(num, xc);
    let den = horner(b, x2, q);
    let r = b.ins().fdiv(num, den);
    keep_nan(b, x, r)
}

/// Tanh's rational (Eigen/XLA): `x·P(x²)/Q(x²)` on `x` clamped to
/// ±`TANH_CLAMP`; below `TANH_TINY` in magnitude, `x` itself.
pub(crate) const TANH_CLAMP: f32 = 7.90531110763549805;
pub(crate) const TANH_TINY: f32 = 4e-4;
pub(crate) const TANH_P: [f32; 7] = [
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
];
pub(crate) const TANH_Q: [f32; 4] = [1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03];

/// Erf's rational (Eigen/XLA), on `x` clamped to ±`ERF_CLAMP`.
pub(crate) const ERF_CLAMP: f32 = 4.0;
pub(crate) const ERF_P: [f32; 7] = [
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
];
pub(crate) const ERF_Q: [f32; 5] =
    [-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02];

pub(crate) fn tanh(b: B, x: Value) -> Value {
    let r = rational(b, x, TANH_CLAMP, &TANH_P, &TANH_Q);
    let ax = b.ins().fabs(x);
    let tiny = fcmp_c(b, FloatCC::LessThan, ax, TANH_TINY);
    sel(b, tiny, x, r)
}

pub(crate) fn erf(b: B, x: Value) -> Value {
    rational(b, x, ERF_CLAMP, &ERF_P, &ERF_Q)
}

/// Φ(x) = (erf(x·(1/√2)) + 1)·½, in the order the composite GELU took.
fn normal_cdf(b: B, x: Value) -> Value {
    let s = mul_c(b, x, std::f32::consts::FRAC_1_SQRT_2);
    let e = erf(b, s);
    let one = splat(b, 1.0);
    let p = b.ins().fadd(e, one);
    mul_c(b, p, 0.5)
}

/// x·Φ(x).
pub(crate) fn gelu(b: B, x: Value) -> Value {
    let cdf = normal_cdf(b, x);
    b.ins().fmul(x, cdf)
}

/// Φ(x) + x·(exp(x²·(−½))·(1/√(2π))).
pub(crate) fn gelu_derivative(b: B, x: Value) -> Value {
    let cdf = normal_cdf(b, x);
    let sq = b.ins().fmul(x, x);
    let a = mul_c(b, sq, -0.5);
    let e = exp(b, a);
    let density = mul_c(b, e, FRAC_1_SQRT_2PI);
    let xd = b.ins().fmul(x, density);
    b.ins().fadd(cdf, xd)
}

/// 1/√(2π) in f32.
pub(crate) const FRAC_1_SQRT_2PI: f32 = crate::ops::elementwise::FRAC_1_SQRT_2PI as f32;

/// 1 / (1 + exp(−x)): 0 and 1 at ∓∞ (`exp` overflows to ∞ or rounds to 0).
pub(crate) fn sigmoid(b: B, x: Value) -> Value {
    let nx = b.ins().fneg(x);
    let e = exp(b, nx);
    let one = splat(b, 1.0);
    let d = b.ins().fadd(e, one);
    b.ins().fdiv(one, d)
}

/// `x > 0 || x is NaN ? x : 0`, NaN kept: one compare (`cmpnleps`: not
/// `x ≤ 0`, true for NaN) and an and.
pub(crate) fn relu(b: B, x: Value) -> Value {
    let zero = splat(b, 0.0);
    let keep = fcmp(b, FloatCC::UnorderedOrGreaterThan, x, zero);
    let xi = as_int(b, x);
    let r = b.ins().band(keep, xi);
    as_float(b, r)
}

/// `x ** y` with the IEEE special cases of `powf`: negative bases with integer
/// exponents, `(−∞) ** y`, `x ** 0 = 1`, `1 ** y = 1`, `(−1) ** ±∞ = 1`.
/// sin(x) (`shift` 0) or cos(x) = sin(x + π/2) (`shift` 1), as Cephes' sinf/cosf:
/// x = n·π/2 + r with |r| ≤ π/4 (π/2 in three parts, exact products for
/// |n| < 2^12), then the sine or cosine polynomial of r by quadrant n + shift.
/// Accurate to a few ulp for |x| up to about 10^4 (positions and rotary angles);
/// beyond that the reduction loses digits; ±∞ and NaN give NaN.
pub(crate) fn sin_cos(b: B, x: Value, shift: i32) -> Value {
    let m = splat(b, MAGIC);
    let t = fma_c(b, x, std::f32::consts::FRAC_2_PI, m);
    let n = b.ins().fsub(t, m);
    let r = fma_c(b, n, -1.570_312_5, x);
    let r = fma_c(b, n, -4.837_512_969_970_703e-4, r);
    let r = fma_c(b, n, -7.549_789_948_768_648e-8, r);
    let z = b.ins().fmul(r, r);
    // sin r = r + r·z·P(z), cos r = 1 − z/2 + z²·Q(z).
    let ps = horner(b, z, &[-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1]);
    let rz = b.ins().fmul(r, z);
    let sin_r = b.ins().fma(rz, ps, r);
    let qc = horner(b, z, &[2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2]);
    let z2 = b.ins().fmul(z, z);
    let one_f = splat(b, 1.0);
    let half = fma_c(b, z, -0.5, one_f);
    let cos_r = b.ins().fma(z2, qc, half);
    // Quadrant q = n + shift: odd → the cosine polynomial, q & 2 → negate.
    let ti = as_int(b, t);
    let magic_bits = isplat(b, MAGIC.to_bits() as i32);
    let q = b.ins().isub(ti, magic_bits);
    let sh = isplat(b, shift);
    let q = b.ins().iadd(q, sh);
    let one = isplat(b, 1);
    let odd = b.ins().band(q, one);
    let zero = isplat(b, 0);
    let odd = b.ins().icmp(IntCC::NotEqual, odd, zero);
    let y = sel(b, odd, cos_r, sin_r);
    let two = isplat(b, 2);
    let neg = b.ins().band(q, two);
    let sign = b.ins().ishl_imm_s(neg, 30);
    let yi = as_int(b, y);
    let yi = b.ins().bxor(yi, sign);
    as_float(b, yi)
}

pub(crate) fn pow(b: B, x: Value, y: Value) -> Value {
    let ax = b.ins().fabs(x);
    let l = log(b, ax);
    let t = b.ins().fmul(y, l);
    let r = exp(b, t);
    // Integer and odd exponents.
    let yr = b.ins().nearest(y);
    let is_int = fcmp(b, FloatCC::Equal, yr, y);
    let ay = b.ins().fabs(y);
    let two23 = splat(b, 8_388_608.0);
    let low = b.ins().fadd(ay, two23);
    let low = as_int(b, low);
    let one_i = isplat(b, 1);
    let bit = b.ins().band(low, one_i);
    let odd = b.ins().icmp(IntCC::Equal, bit, one_i);
    let exact = fcmp(b, FloatCC::LessThan, ay, two23);
    let odd = b.ins().band(odd, exact);
    let odd = b.ins().band(odd, is_int);
    let zero = splat(b, 0.0);
    let neg = fcmp(b, FloatCC::LessThan, x, zero);
    let flip = b.ins().band(neg, odd);
    let nr = b.ins().fneg(r);
    let r = sel(b, flip, nr, r);
    // A negative base with a fractional exponent is NaN, except −∞ (∞ or 0, as
    // exp(y · log ∞) gives it).
    let finite = fcmp_c(b, FloatCC::NotEqual, x, f32::NEG_INFINITY);
    let bad = b.ins().band_not(neg, is_int);
    let bad = b.ins().band(bad, finite);
    let r = sel_c(b, bad, f32::NAN, r);
    let y0 = fcmp(b, FloatCC::Equal, y, zero);
    let r = sel_c(b, y0, 1.0, r);
    // 1 ** y = 1, and (−1) ** ±∞ = 1 (y · log 1 would be ∞ · 0).
    let x1 = fcmp_c(b, FloatCC::Equal, x, 1.0);
    let r = sel_c(b, x1, 1.0, r);
    let unit = fcmp_c(b, FloatCC::Equal, ax, 1.0);
    let y_inf = fcmp_c(b, FloatCC::Equal, ay, f32::INFINITY);
    let unit_inf = b.ins().band(unit, y_inf);
    sel_c(b, unit_inf, 1.0, r)
}

/// `x ** c` for a few constant exponents, by multiplication or sqrt.
pub(crate) fn pow_const(b: B, x: Value, c: f32) -> Option<Value> {
    let v = match c {
        0.0 => splat(b, 1.0),
        1.0 => x,
        2.0 => b.ins().fmul(x, x),
        3.0 => {
            let x2 = b.ins().fmul(x, x);
            b.ins().fmul(x2, x)
        }
        4.0 => {
            let x2 = b.ins().fmul(x, x);
            b.ins().fmul(x2, x2)
        }
        0.5 => b.ins().sqrt(x),
        -0.5 => {
            let s = b.ins().sqrt(x);
            let one = splat(b, 1.0);
            b.ins().fdiv(one, s)
        }
        -1.0 => {
            let one = splat(b, 1.0);
            b.ins().fdiv(one, x)
        }
        -2.0 => {
            let x2 = b.ins().fmul(x, x);
            let one = splat(b, 1.0);
            b.ins().fdiv(one, x2)
        }
        _ => return None,
    };
    Some(v)
}

pub(crate) fn unary(b: B, u: UnaryOp, x: Value) -> Value {
    match u {
        UnaryOp::Neg => b.ins().fneg(x),
        UnaryOp::Exp => exp(b, x),
        UnaryOp::Log => log(b, x),
        UnaryOp::Sqrt => b.ins().sqrt(x),
        UnaryOp::Abs => b.ins().fabs(x),
        UnaryOp::Tanh => tanh(b, x),
        UnaryOp::Sigmoid => sigmoid(b, x),
        UnaryOp::Relu => relu(b, x),
        UnaryOp::Erf => erf(b, x),
        UnaryOp::Gelu => gelu(b, x),
        UnaryOp::GeluDerivative => gelu_derivative(b, x),
        UnaryOp::Sin => sin_cos(b, x, 0),
        UnaryOp::Cos => sin_cos(b, x, 1),
    }
}

/// 1.0 where `mask`, else 0.0.
fn mask_to_one(b: B, mask: Value) -> Value {
    let one = splat(b, 1.0);
    let one = as_int(b, one);
    let r = b.ins().band(mask, one);
    as_float(b, r)
}

pub(crate) fn binary(b: B, op: BinaryOp, x: Value, y: Value) -> Value {
    match op {
        BinaryOp::Add => b.ins().fadd(x, y),
        BinaryOp::Sub => b.ins().fsub(x, y),
        BinaryOp::Mul => b.ins().fmul(x, y),
        BinaryOp::Div => b.ins().fdiv(x, y),
        BinaryOp::Pow => pow(b, x, y),
        // `x > y || x is NaN ? x : y`: NaN if either is (as `BinaryOp::apply`).
        // A compare and select rather than Cranelift's `fmax`: both keep NaN,
        // but `fmax` also orders −0 below +0, which x86 has no one
        // instruction for (`maxps` returns its second operand on NaN).
        BinaryOp::Max => {
            let gt = fcmp(b, FloatCC::GreaterThan, x, y);
            let xnan = fcmp(b, FloatCC::Unordered, x, x);
            let take_x = b.ins().bor(gt, xnan);
            sel(b, take_x, x, y)
        }
        // `y ≠ 0 ? x : 0` as an and with the compare's lanes (NaN `y` keeps `x`, as `y != 0.0` does).
        BinaryOp::Mask => {
            let zero = splat(b, 0.0);
            let keep = fcmp(b, FloatCC::NotEqual, y, zero);
            let xi = as_int(b, x);
            let r = b.ins().band(keep, xi);
            as_float(b, r)
        }
        BinaryOp::Gt => {
            let m = fcmp(b, FloatCC::GreaterThan, x, y);
            mask_to_one(b, m)
        }
        BinaryOp::Eq => {
            let m = fcmp(b, FloatCC::Equal, x, y);
            mask_to_one(b, m)
        }
    }
}

/// The identity of a reduction.
pub(crate) fn identity(kind: ReduceKind) -> f32 {
    match kind {
        ReduceKind::Sum => 0.0,
        ReduceKind::Max => f32::NEG_INFINITY,
    }
}

/// `acc ⊕ v` on vectors. Max is `acc < v || v is NaN ? v : acc`, as the
/// reference's fold (`ops::reduce`): a NaN is taken and then kept.
pub(crate) fn combine(b: B, kind: ReduceKind, acc: Value, v: Value) -> Value {
    match kind {
        ReduceKind::Sum => b.ins().fadd(acc, v),
        ReduceKind::Max => {
            let lt = fcmp(b, FloatCC::LessThan, acc, v);
            let vnan = fcmp(b, FloatCC::Unordered, v, v);
            let take_v = b.ins().bor(lt, vnan);
            sel(b, take_v, v, acc)
        }
    }
}

/// `acc ⊕ v` on scalars (the same tests as `combine`).
pub(crate) fn combine_scalar(b: B, kind: ReduceKind, acc: Value, v: Value) -> Value {
    match kind {
        ReduceKind::Sum => b.ins().fadd(acc, v),
        ReduceKind::Max => {
            let gt = b.ins().fcmp(FloatCC::GreaterThan, v, acc);
            let vnan = b.ins().fcmp(FloatCC::Unordered, v, v);
            let take_v = b.ins().bor(gt, vnan);
            b.ins().select(take_v, v, acc)
        }
    }
}

/// Fold the four lanes of `v` into the scalar `acc`.
pub(crate) fn reduce_lanes(b: B, kind: ReduceKind, v: Value, lanes: u8, mut acc: Value) -> Value {
    for l in 0..lanes {
        let s = b.ins().extractlane(v, l);
        acc = combine_scalar(b, kind, acc, s);
    }
    acc
}

/// Scalar `f32` constant.
pub(crate) fn scalar(b: B, c: f32) -> Value {
    b.ins().f32const(c)
}
