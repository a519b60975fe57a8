//! Counter-based random numbers for dropout and stochastic depth.
//!
//! `RandomUniform { stream }` takes one scalar operand, the step's seed (fed by
//! the runtime, a fresh value every training step), and fills its shape with
//! uniform numbers in [0, 1). Element `i` is a hash of (seed, stream, i), so
//! the values do not depend on evaluation order or threads, the JIT and the
//! reference interpreter agree bit for bit (both call `uniform`), and two call
//! sites (different `stream`s) draw independent numbers.

use crate::builder::Builder;
use crate::ir::ValueId;
use ndarray::{ArrayD, IxDyn};

/// SplitMix64's finaliser: a bijective mix with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The uniform number at position `index` of stream `stream` under `seed`:
/// a multiple of 2⁻²⁴ in [0, 1), exact in f32 and f64.
pub fn uniform(seed: f32, stream: u32, index: u64) -> f32 {
    let key = mix(u64::from(seed.to_bits()) ^ (u64::from(stream) << 32));
    let z = mix(key.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    (z >> 40) as f32 / (1u32 << 24) as f32
}

/// Fill `out` with stream `stream`'s numbers for `seed`, from position 0.
pub fn fill_uniform(out: &mut [f32], seed: f32, stream: u32) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = uniform(seed, stream, i as u64);
    }
}

/// No derivative: the numbers do not depend on the seed smoothly.
pub fn random_vjp_rule(_b: &mut Builder, _args: &[ValueId]) -> Vec<Option<ValueId>> {
    vec![None]
}

pub fn random_eval(stream: u32, args: &[&ArrayD<f64>], out: &[usize]) -> ArrayD<f64> {
    let seed = args.first().and_then(|s| s.iter().next().copied()).unwrap_or(0.0) as f32;
    let mut v = vec![0.0f32; out.iter().product()];
    fill_uniform(&mut v, seed, stream);
    ArrayD::from_shape_vec(IxDyn(out), v.into_iter().map(f64::from).collect()).unwrap_or_else(|_| ArrayD::zeros(IxDyn(out)))
}
