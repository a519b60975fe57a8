//! Deterministic random-number helpers shared by the data pipeline and the
//! initialisers.
//!
//! Every random choice in the runtime goes through a [`ChaCha8Rng`] seeded
//! with [`seeded`]. The small sampling primitives here ([`below`],
//! [`unit_f64`]) are implemented directly on the raw 64-bit output of the
//! generator, so the sequences they produce depend only on the ChaCha stream
//! (which is fixed by its specification) and not on the sampling algorithms
//! of a particular `rand` release.

pub use rand::{Rng, SeedableRng};
pub use rand_chacha::ChaCha8Rng;

/// The generator for `seed`, positioned at the start of stream `stream`.
///
/// Different streams of the same seed are independent sequences; use them
/// for separate consumers (e.g. one stream per epoch for shuffling) so that
/// each is reproducible on its own.
pub fn seeded(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A uniformly distributed integer in `0..n` (unbiased; Lemire's
/// multiply-and-reject method). Returns 0 when `n` is 0 or 1.
pub fn below<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let n = n as u64;
    // Reject the low products that would make some results more likely.
    let threshold = n.wrapping_neg() % n;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(n);
        if (product as u64) >= threshold {
            return (product >> 64) as usize;
        }
    }
}

/// A uniformly distributed `f64` in `[0, 1)` with 53 bits of precision.
pub fn unit_f64<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Shuffles `items` in place (Fisher–Yates, using [`below`]).
pub fn shuffle<T, R: Rng + ?Sized>(rng: &mut R, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_hits_every_value() {
        let mut rng = seeded(1, 0);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            let v = below(&mut rng, 7);
            assert!(v < 7);
            seen[v] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(below(&mut rng, 0), 0);
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn unit_is_in_half_open_interval() {
        let mut rng = seeded(2, 0);
        for _ in 0..10_000 {
            let u = unit_f64(&mut rng);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn streams_differ() {
        let mut a = seeded(3, 0);
        let mut b = seeded(3, 1);
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
