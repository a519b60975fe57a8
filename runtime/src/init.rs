//! Parameter initialisers.
//!
//! Fan convention: a weight of shape `[in, out]` (used as `x @ W`) has
//! `fan_in = in`, `fan_out = out`; for rank > 2 (convolution kernels
//! `[out_ch, in_ch, kh, kw]`) `fan_in = in_ch * kh * kw` and
//! `fan_out = out_ch * kh * kw`; a vector `[n]` has `fan_in = fan_out = n`;
//! a scalar has fans of 1.

use std::fmt;

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::rng::unit_f64;
use nnc_compiler::size::{self, OutOfMemory};

/// How to fill a parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// All 0.
    Zeros,
    /// All 1.
    Ones,
    /// `N(0, std^2)`.
    Normal { std: f64 },
    /// `U[low, high)`.
    Uniform { low: f64, high: f64 },
    /// He/Kaiming normal: `N(0, 2 / fan_in)`.
    HeNormal,
    /// Glorot/Xavier uniform: `U(-a, a)` with `a = sqrt(6 / (fan_in + fan_out))`.
    XavierUniform,
    /// Glorot/Xavier normal: `N(0, 2 / (fan_in + fan_out))`.
    XavierNormal,
}

/// Invalid initialiser parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum InitError {
    /// A normal std that is negative or not finite.
    InvalidStd { std: f64 },
    /// Uniform bounds that are not finite or have `low > high`.
    InvalidBounds { low: f64, high: f64 },
    /// The shape has more elements than a tensor may (`size::MAX_ELEMENTS`).
    ShapeOverflow { shape: Vec<usize> },
    /// The machine could not give the tensor its memory.
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::InvalidStd { std } => write!(f, "normal initialiser: std must be finite and >= 0, got {std}"),
            InitError::InvalidBounds { low, high } => {
                write!(f, "uniform initialiser: need finite bounds with low <= high, got [{low}, {high})")
            }
            InitError::ShapeOverflow { shape } => {
                write!(f, "tensor shape {shape:?} has too many elements")
            }
            InitError::OutOfMemory(e) => write!(f, "{}", e.message()),
        }
    }
}

impl std::error::Error for InitError {}

/// `(fan_in, fan_out)` of a tensor of this shape (see the module docs).
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [i, o] => (*i, *o),
        [o, i, rest @ ..] => {
            // Saturating: fans only scale the initial values, and a
            // parameter's shape was checked against `size::MAX_ELEMENTS`.
            let field = rest.iter().fold(1usize, |a, &d| a.saturating_mul(d));
            (i.saturating_mul(field), o.saturating_mul(field))
        }
    }
}

/// A freshly initialised tensor of `shape`, row-major.
///
/// Deterministic given the state of `rng` (use [`crate::rng::seeded`]).
pub fn initialize<R: Rng + ?Sized>(init: &Init, shape: &[usize], rng: &mut R) -> Result<Vec<f32>, InitError> {
    let n = size::numel(shape).ok_or_else(|| InitError::ShapeOverflow { shape: shape.to_vec() })?;
    // Fallibly, so that a parameter the machine cannot hold is an error
    // rather than an allocation abort.
    let mut values = Vec::new();
    OutOfMemory::reserve(&mut values, n, || format!("a {shape:?} tensor")).map_err(InitError::OutOfMemory)?;
    let (fan_in, fan_out) = fans(shape);
    // Fans are only 0 when the tensor is empty; keep the formulas finite anyway.
    let fan_in = fan_in.max(1) as f64;
    let fan_out = fan_out.max(1) as f64;
    match *init {
        Init::Zeros => values.resize(n, 0.0),
        Init::Ones => values.resize(n, 1.0),
        Init::Normal { std } => normal(&mut values, n, std, rng)?,
        Init::HeNormal => normal(&mut values, n, (2.0 / fan_in).sqrt(), rng)?,
        Init::XavierNormal => normal(&mut values, n, (2.0 / (fan_in + fan_out)).sqrt(), rng)?,
        Init::Uniform { low, high } => uniform(&mut values, n, low, high, rng)?,
        Init::XavierUniform => {
            let a = (6.0 / (fan_in + fan_out)).sqrt();
            uniform(&mut values, n, -a, a, rng)?
        }
    }
    Ok(values)
}

/// `n` draws of `N(0, std²)` appended to `out`.
fn normal<R: Rng + ?Sized>(out: &mut Vec<f32>, n: usize, std: f64, rng: &mut R) -> Result<(), InitError> {
    if !std.is_finite() || std < 0.0 {
        return Err(InitError::InvalidStd { std });
    }
    let dist = Normal::new(0.0f64, std).map_err(|_| InitError::InvalidStd { std })?;
    out.extend((0..n).map(|_| dist.sample(rng) as f32));
    Ok(())
}

/// `n` draws of `U[low, high)` appended to `out`.
fn uniform<R: Rng + ?Sized>(out: &mut Vec<f32>, n: usize, low: f64, high: f64, rng: &mut R) -> Result<(), InitError> {
    if !low.is_finite() || !high.is_finite() || low > high {
        return Err(InitError::InvalidBounds { low, high });
    }
    let width = high - low;
    out.extend((0..n).map(|_| (low + width * unit_f64(rng)) as f32));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_conventions() {
        assert_eq!(fans(&[]), (1, 1));
        assert_eq!(fans(&[7]), (7, 7));
        assert_eq!(fans(&[3, 5]), (3, 5));
        assert_eq!(fans(&[16, 8, 3, 3]), (72, 144));
        assert_eq!(fans(&[4, 2, 5]), (10, 20));
    }

    #[test]
    fn rejects_bad_parameters() {
        let mut rng = crate::rng::seeded(0, 0);
        assert!(initialize(&Init::Normal { std: -1.0 }, &[2], &mut rng).is_err());
        assert!(initialize(&Init::Normal { std: f64::NAN }, &[2], &mut rng).is_err());
        let bad = Init::Uniform { low: 1.0, high: 0.0 };
        assert!(initialize(&bad, &[2], &mut rng).is_err());
        assert!(initialize(&Init::Zeros, &[usize::MAX, 2], &mut rng).is_err());
        // Issue 17: `[2 ** 62]` panicked with "capacity overflow".
        assert_eq!(initialize(&Init::Zeros, &[1 << 62], &mut rng), Err(InitError::ShapeOverflow { shape: vec![1 << 62] }));
        assert_eq!(initialize(&Init::HeNormal, &[0, 4], &mut rng).unwrap(), Vec::<f32>::new());
    }
}
