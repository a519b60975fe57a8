//! Elementwise ops: unary math, binary arithmetic, comparisons, stop_gradient.
//! Binary operands must have equal shapes (broadcasting is explicit).

use super::ShapeError;
use crate::builder::Builder;
use crate::ir::{DType, TensorType, ValueId};
use ndarray::{ArrayD, Zip};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Tanh,
    /// The logistic function 1 / (1 + e⁻ˣ). A primitive rather than a
    /// composite so that its derivative is `g·σ·(1 − σ)` from its own output
    /// (three multiply-adds), not the quotient rule through `exp` (two
    /// divisions and the exponential kept alive): an LSTM's backward step
    /// evaluates three of them per hidden unit. JAX has `logistic` for the
    /// same reason.
    Sigmoid,
    /// The Gauss error function.
    Erf,
    /// max(x, 0), NaN kept (as IEEE's `maximum` and PyTorch's `relu`). A
    /// primitive rather than `max(x, 0)` because its derivative at 0 is 0 (as
    /// PyTorch's), where `max` shares a tie between its operands.
    Relu,
    /// GELU, exactly: x·Φ(x), with Φ(x) = ½(1 + erf(x/√2)) the standard
    /// normal distribution function. A primitive, as PyTorch's `gelu`, so that
    /// a whole activation and its derivative (`GeluDerivative`) are each one
    /// sixteen-lane call per sixteen elements in generated code, instead of a
    /// dozen four-lane operations around a call for erf (and one for exp).
    Gelu,
    /// GELU's derivative Φ(x) + x·φ(x), φ the standard normal density.
    GeluDerivative,
    /// Sine and cosine, in radians (sinusoidal and rotary positions).
    Sin,
    Cos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `x ** y`
    Pow,
    /// Elementwise maximum; NaN if either operand is NaN (IEEE 754-2019
    /// `maximum`, PyTorch's `maximum`), never the other operand.
    Max,
    /// `x` where `m ≠ 0`, else `0.0` even where `x` is ±∞ or NaN: selecting
    /// by a one-hot mask (`gather`, `cross_entropy`), where `x · m` would turn
    /// an ∞ the mask drops into NaN. The gradient goes to `x` through the same
    /// mask; the mask gets none.
    Mask,
    /// `1.0` where `x > y`, else `0.0`; no gradient.
    Gt,
    /// `1.0` where `x == y`, else `0.0`; no gradient.
    Eq,
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Erf => "erf",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluDerivative => "gelu_derivative",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }

    /// The scalar function, in float64 (the reference semantics).
    pub fn apply(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Relu => BinaryOp::Max.apply(x, 0.0),
            UnaryOp::Erf => erf(x),
            UnaryOp::Gelu => x * normal_cdf(x),
            UnaryOp::GeluDerivative => normal_cdf(x) + x * normal_density(x),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
        }
    }
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Max => "max",
            BinaryOp::Mask => "mask",
            BinaryOp::Gt => "gt",
            BinaryOp::Eq => "eq",
        }
    }

    pub fn apply(self, x: f64, y: f64) -> f64 {
        match self {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Pow => x.powf(y),
            // Not `f64::max`, which returns the other operand when one is NaN.
            BinaryOp::Max if x > y || x.is_nan() => x,
            BinaryOp::Max => y,
            BinaryOp::Mask if y != 0.0 => x,
            BinaryOp::Mask => 0.0,
            BinaryOp::Gt => f64::from(u8::from(x > y)),
            BinaryOp::Eq => f64::from(u8::from(x == y)),
        }
    }
}

// ---- shape rules -----------------------------------------------------------

pub fn unary_shape_rule(u: UnaryOp, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    match args {
        [x] => Ok(TensorType::f32(x.shape.clone())),
        _ => Err(ShapeError::Arity { op: u.name(), expected: 1, found: args.len() }),
    }
}

pub fn binary_shape_rule(b: BinaryOp, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    match args {
        [x, y] if x.shape == y.shape => {
            // Integer arithmetic on labels stays integer (`y + 1`); anything with a float is float.
            let both_int = x.dtype == DType::I32 && y.dtype == DType::I32;
            let dtype = match b {
                BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Max if both_int => DType::I32,
                _ => DType::F32,
            };
            Ok(TensorType { shape: x.shape.clone(), dtype })
        }
        [x, y] => Err(ShapeError::Mismatch { op: b.name(), lhs: x.shape.clone(), rhs: y.shape.clone() }),
        _ => Err(ShapeError::Arity { op: b.name(), expected: 2, found: args.len() }),
    }
}

pub fn stop_gradient_shape_rule(args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    match args {
        [x] => Ok((*x).clone()),
        _ => Err(ShapeError::Arity { op: "stop_gradient", expected: 1, found: args.len() }),
    }
}

// ---- derivative rules --------------------------------------------------------

pub fn unary_vjp_rule(b: &mut Builder, u: UnaryOp, args: &[ValueId], out: ValueId, g: ValueId) -> Vec<Option<ValueId>> {
    let Some(&x) = args.first() else { return Vec::new() };
    let dx = match u {
        // d(-x) = -g
        UnaryOp::Neg => b.neg(g),
        // d exp(x) = g · exp(x)
        UnaryOp::Exp => b.mul(g, out),
        // d log(x) = g / x
        UnaryOp::Log => b.div(g, x),
        // d sqrt(x) = g / (2 sqrt(x))
        UnaryOp::Sqrt => {
            let two_out = b.scale(out, 2.0);
            b.div(g, two_out)
        }
        // d |x| = g · sign(x), sign(x) = (x > 0) − (0 > x)
        UnaryOp::Abs => {
            let zero = b.full_like(0.0, x);
            let pos = b.binary(BinaryOp::Gt, x, zero);
            let neg = b.binary(BinaryOp::Gt, zero, x);
            let sign = b.sub(pos, neg);
            b.mul(g, sign)
        }
        // d tanh(x) = g · (1 − tanh²(x))
        UnaryOp::Tanh => {
            let sq = b.mul(out, out);
            let one = b.full_like(1.0, out);
            let d = b.sub(one, sq);
            b.mul(g, d)
        }
        // d σ(x) = g · σ(x) · (1 − σ(x))
        UnaryOp::Sigmoid => {
            let one = b.full_like(1.0, out);
            let rest = b.sub(one, out);
            let d = b.mul(out, rest);
            b.mul(g, d)
        }
        // d relu(x) = g · (x > 0): 0 at 0, as PyTorch.
        UnaryOp::Relu => {
            let zero = b.full_like(0.0, x);
            let pos = b.binary(BinaryOp::Gt, x, zero);
            b.mul(g, pos)
        }
        // d erf(x) = g · 2/√π · exp(−x²)
        UnaryOp::Erf => {
            let sq = b.mul(x, x);
            let nsq = b.neg(sq);
            let e = b.exp(nsq);
            let d = b.scale(e, std::f64::consts::FRAC_2_SQRT_PI);
            b.mul(g, d)
        }
        // d gelu(x) = g · gelu'(x)
        UnaryOp::Gelu => {
            let d = b.unary(UnaryOp::GeluDerivative, x);
            b.mul(g, d)
        }
        // d gelu'(x) = g · φ(x) · (2 − x²)
        UnaryOp::GeluDerivative => {
            let sq = b.mul(x, x);
            let half_sq = b.scale(sq, -0.5);
            let e = b.exp(half_sq);
            let density = b.scale(e, FRAC_1_SQRT_2PI);
            let two = b.full_like(2.0, x);
            let rest = b.sub(two, sq);
            let d = b.mul(density, rest);
            b.mul(g, d)
        }
        // d sin(x) = g · cos(x)
        UnaryOp::Sin => {
            let c = b.unary(UnaryOp::Cos, x);
            b.mul(g, c)
        }
        // d cos(x) = −g · sin(x)
        UnaryOp::Cos => {
            let s = b.unary(UnaryOp::Sin, x);
            let ns = b.neg(s);
            b.mul(g, ns)
        }
    };
    vec![Some(dx)]
}

pub fn binary_vjp_rule(b: &mut Builder, op: BinaryOp, args: &[ValueId], out: ValueId, g: ValueId) -> Vec<Option<ValueId>> {
    let (Some(&x), Some(&y)) = (args.first(), args.get(1)) else { return Vec::new() };
    match op {
        BinaryOp::Add => vec![Some(g), Some(g)],
        BinaryOp::Sub => vec![Some(g), Some(b.neg(g))],
        // d(xy) = (g·y, g·x)
        BinaryOp::Mul => vec![Some(b.mul(g, y)), Some(b.mul(g, x))],
        // d(x/y) = (g/y, −g·x/y²) = (g/y, −(g/y)·out)
        BinaryOp::Div => {
            let gy = b.div(g, y);
            let t = b.mul(gy, out);
            vec![Some(gy), Some(b.neg(t))]
        }
        BinaryOp::Pow => pow_vjp_rule(b, x, y, out, g),
        // The larger operand takes the gradient; a tie is shared equally, as
        // PyTorch's `maximum` and the `max` reduction do (`relu` is its own
        // primitive, with relu'(0) = 0).
        BinaryOp::Max => {
            let half_tie = b.binary(BinaryOp::Eq, x, y);
            let half_tie = b.scale(half_tie, 0.5);
            let x_wins = b.binary(BinaryOp::Gt, x, y);
            let y_wins = b.binary(BinaryOp::Gt, y, x);
            let take_x = b.add(x_wins, half_tie);
            let take_y = b.add(y_wins, half_tie);
            vec![Some(b.mul(g, take_x)), Some(b.mul(g, take_y))]
        }
        BinaryOp::Mask => vec![Some(b.binary(BinaryOp::Mask, g, y)), None],
        BinaryOp::Gt | BinaryOp::Eq => vec![None, None],
    }
}

/// d(x^y) = (g·y·x^(y−1), g·log(x)·x^y), with PyTorch's two guards, so that
/// no 0·∞ turns a zero derivative into NaN:
/// - `y = 0`: d/dx is 0 (x^(y−1) is 1/x, ∞ at 0), computed as y·x^0;
/// - `x = 0, y ≥ 0`: d/dy is 0 (log 0 is −∞), computed with log 1.
///
/// The first guard also gives the second derivative of x^1 at 0 (0): the
/// inner x^0 gets the same rule.
fn pow_vjp_rule(b: &mut Builder, x: ValueId, y: ValueId, out: ValueId, g: ValueId) -> Vec<Option<ValueId>> {
    let zero = b.full_like(0.0, y);
    let y_is_zero = b.binary(BinaryOp::Eq, y, zero);
    let ym1 = b.offset(y, -1.0);
    let exponent = b.add(ym1, y_is_zero);
    let p = b.binary(BinaryOp::Pow, x, exponent);
    let t = b.mul(y, p);
    let dx = b.mul(g, t);
    // 1 where x = 0 and y ≥ 0, else 0.
    let x_is_zero = b.binary(BinaryOp::Eq, x, zero);
    let y_negative = b.binary(BinaryOp::Gt, zero, y);
    let one = b.full_like(1.0, y);
    let y_nonnegative = b.sub(one, y_negative);
    let guard = b.mul(x_is_zero, y_nonnegative);
    let base = b.add(x, guard);
    let lx = b.log(base);
    let t2 = b.mul(lx, out);
    let dy = b.mul(g, t2);
    vec![Some(dx), Some(dy)]
}

// ---- reference evaluation ---------------------------------------------------

pub fn unary_eval(u: UnaryOp, args: &[&ArrayD<f64>]) -> ArrayD<f64> {
    args.first().map(|x| x.mapv(|v| u.apply(v))).unwrap_or_default()
}

pub fn binary_eval(op: BinaryOp, args: &[&ArrayD<f64>]) -> ArrayD<f64> {
    match args {
        [x, y] => Zip::from(*x).and(*y).map_collect(|&a, &c| op.apply(a, c)),
        _ => ArrayD::default(ndarray::IxDyn(&[])),
    }
}

/// 1/√(2π), the standard normal density at 0.
pub const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Φ(x) = ½(1 + erf(x/√2)), the standard normal distribution function.
fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// φ(x) = e^(−x²/2)/√(2π), the standard normal density.
fn normal_density(x: f64) -> f64 {
    (-0.5 * x * x).exp() * FRAC_1_SQRT_2PI
}

#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
/// erf in float64 to about 1e-15 (W. J. Cody's rational approximations, as
/// used by most libms), written out because Rust's std has no `erf`.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 0.5 {
        // erf(x) = x · P(x²)/Q(x²)
        let t = x * x;
        let p = [
            3.209_377_589_138_469_4e3,
            3.774_852_376_853_020_2e2,
            1.138_641_541_510_501_6e2,
            3.161_123_743_870_565_6,
            1.857_777_061_846_031_5e-1,
        ];
        let q = [2.844_236_833_439_170_6e3, 1.282_616_526_077_372_3e3, 2.440_246_379_344_441_7e2, 2.360_129_095_234_412_1e1, 1.0];
        let num = (((p[4] * t + p[3]) * t + p[2]) * t + p[1]) * t + p[0];
        let den = (((q[4] * t + q[3]) * t + q[2]) * t + q[1]) * t + q[0];
        return x * num / den;
    } else if ax < 4.0 {
        // erfc(x) = exp(−x²) · P(x)/Q(x)
        let p = [
            1.230_339_354_797_997_2e3,
            2.051_078_377_826_071_5e3,
            1.712_047_612_634_070_6e3,
            8.819_522_212_417_690_9e2,
            2.986_351_381_974_001_3e2,
            6.611_919_063_714_163e1,
            8.883_149_794_388_376,
            5.641_884_969_886_700_9e-1,
            2.153_115_354_744_038_5e-8,
        ];
        let q = [
            1.230_339_354_803_749_4e3,
            3.439_367_674_143_721_6e3,
            4.362_619_090_143_247e3,
            3.290_799_235_733_459_7e3,
            1.621_389_574_566_690_2e3,
            5.371_811_018_620_098_6e2,
            1.176_939_508_913_124_9e2,
            1.574_492_611_070_983_5e1,
            1.0,
        ];
        let num = p.iter().rev().fold(0.0, |acc, c| acc * ax + c);
        let den = q.iter().rev().fold(0.0, |acc, c| acc * ax + c);
        1.0 - (-ax * ax).exp() * num / den
    } else {
        // erfc(x) = exp(−x²)/x · (1/√π + 1/x² · P(1/x²)/Q(1/x²))
        let p = [
            -6.587_491_615_298_378_4e-4,
            -1.608_378_514_874_227_6e-2,
            -1.257_817_261_112_292_5e-1,
            -3.603_448_999_498_044_4e-1,
            -3.053_266_349_612_323_4e-1,
            -1.631_538_713_730_470_1e-2,
        ];
        let q = [
            2.335_204_976_268_691_8e-3,
            6.051_834_131_244_131_9e-2,
            5.278_905_134_271_722e-1,
            1.872_952_849_923_460_4,
            2.568_520_192_289_822_4,
            1.0,
        ];
        let z = 1.0 / (ax * ax);
        let num = p.iter().rev().fold(0.0, |acc, c| acc * z + c);
        let den = q.iter().rev().fold(0.0, |acc, c| acc * z + c);
        let erfc = (-ax * ax).exp() / ax * (std::f64::consts::FRAC_2_SQRT_PI / 2.0 + z * num / den);
        1.0 - erfc
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}
