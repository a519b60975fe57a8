//! GEMM libraries on the contractions of the W1/W2 training steps (forward
//! `X@W`, backward `G@Wᵀ` and `Xᵀ@G`), in GFLOP/s (median of 7 batches).
//!
//!     cargo bench -p nnc-compiler --bench gemm_shapes [-- filter]
//!
//! Sides: nnc's own SGEMM (`codegen::sgemm_strided`) on 1 and 2 threads,
//! `matrixmultiply::sgemm` (1 thread), and `gemm` 0.19 (`x86-v4`) with
//! `Parallelism::None` and `Rayon(2)`.
#![allow(clippy::print_stdout)]

use std::time::Instant;

#[derive(Clone, Copy)]
enum Kind {
    /// `A[m,k] @ B[k,n]`, both row-major.
    Plain,
    /// `A[m,k] @ W[n,k]ᵀ`.
    TransB,
    /// `X[k,m]ᵀ @ B[k,n]`.
    TransA,
}

struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    kind: Kind,
}

fn strides(c: &Case) -> ([isize; 2], [isize; 2]) {
    let (m, k, n) = (c.m as isize, c.k as isize, c.n as isize);
    match c.kind {
        Kind::Plain => ([k, 1], [n, 1]),
        Kind::TransB => ([k, 1], [1, k]),
        Kind::TransA => ([1, m], [n, 1]),
    }
}

/// This thread's time on a CPU so far, in seconds (`/proc/thread-self/schedstat`),
/// if `NNC_BENCH_CPU` is set: on a machine shared with other users the time
/// the thread waits for a core is then left out (one-thread figures only).
// A benchmark, not the compiler core: reading /proc is what it is for.
#[allow(clippy::disallowed_methods)]
fn cpu_time() -> Option<f64> {
    std::env::var_os("NNC_BENCH_CPU")?;
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

fn time(mut f: impl FnMut(), flops: f64) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.05 / once) as usize).clamp(1, 100_000);
    let mut rates: Vec<f64> = (0..7)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_time());
            for _ in 0..reps {
                f();
            }
            let secs = match (c, cpu_time()) {
                (Some(a), Some(b)) => (b - a).max(1e-9),
                _ => t.elapsed().as_secs_f64(),
            };
            flops * reps as f64 / secs / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[3]
}

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    #[rustfmt::skip]
    let cases = [
        Case { name: "W1 x@W1", m: 64, k: 64, n: 256, kind: Kind::Plain },
        Case { name: "W1 h@W2", m: 64, k: 256, n: 256, kind: Kind::Plain },
        Case { name: "W1 h@W3", m: 64, k: 256, n: 10, kind: Kind::Plain },
        Case { name: "W1 g@W3t", m: 64, k: 10, n: 256, kind: Kind::TransB },
        Case { name: "W1 g@W2t", m: 64, k: 256, n: 256, kind: Kind::TransB },
        Case { name: "W1 ht@g3", m: 256, k: 64, n: 10, kind: Kind::TransA },
        Case { name: "W1 ht@g2", m: 256, k: 64, n: 256, kind: Kind::TransA },
        Case { name: "W1 xt@g1", m: 64, k: 64, n: 256, kind: Kind::TransA },
        Case { name: "W2 x@W1", m: 256, k: 784, n: 1024, kind: Kind::Plain },
        Case { name: "W2 h@W2", m: 256, k: 1024, n: 1024, kind: Kind::Plain },
        Case { name: "W2 h@W3", m: 256, k: 1024, n: 10, kind: Kind::Plain },
        Case { name: "W2 g@W3t", m: 256, k: 10, n: 1024, kind: Kind::TransB },
        Case { name: "W2 g@W2t", m: 256, k: 1024, n: 1024, kind: Kind::TransB },
        Case { name: "W2 ht@g3", m: 1024, k: 256, n: 10, kind: Kind::TransA },
        Case { name: "W2 ht@g2", m: 1024, k: 256, n: 1024, kind: Kind::TransA },
        Case { name: "W2 xt@g1", m: 784, k: 256, n: 1024, kind: Kind::TransA },
        Case { name: "W3 K@cols", m: 64, k: 288, n: 4096, kind: Kind::Plain },
        Case { name: "W3 g@colst", m: 64, k: 4096, n: 288, kind: Kind::TransB },
        Case { name: "W3 Kt@g", m: 288, k: 64, n: 4096, kind: Kind::TransA },
        // W4 (GPT, batch 32 x 64 positions folded into the rows): forward and the weight gradient.
        Case { name: "W4 x@Wup", m: 2048, k: 128, n: 512, kind: Kind::Plain },
        Case { name: "W4 xt@gup", m: 128, k: 2048, n: 512, kind: Kind::TransA },
        Case { name: "W4 ht@gdown", m: 512, k: 2048, n: 128, kind: Kind::TransA },
        Case { name: "W4 gdown@Wdownt", m: 2048, k: 128, n: 512, kind: Kind::TransB },
        Case { name: "W4 gup@Wupt", m: 2048, k: 512, n: 128, kind: Kind::TransB },
        // W4's attention, per batch element and head: scores, weighted values, and
        // the derivative products.
        Case { name: "W4 q@kt", m: 64, k: 32, n: 64, kind: Kind::TransB },
        Case { name: "W4 p@v", m: 64, k: 64, n: 32, kind: Kind::Plain },
        Case { name: "W4 pt@do", m: 64, k: 64, n: 32, kind: Kind::TransA },
        // W5 (LSTM, 32 rows per step, 2048 = 32 x 64 rows in bulk): the step's h@Wh and
        // dz@Whᵀ, and the input weight's gradient.
        Case { name: "W5 h@Wh", m: 32, k: 256, n: 1024, kind: Kind::Plain },
        Case { name: "W5 dz@Wht", m: 32, k: 1024, n: 256, kind: Kind::TransB },
        Case { name: "W5 half h@Wh", m: 16, k: 256, n: 1024, kind: Kind::Plain },
        Case { name: "W5 half dz@Wht", m: 16, k: 1024, n: 256, kind: Kind::TransB },
        Case { name: "W5 half dz@Wht copied", m: 16, k: 1024, n: 256, kind: Kind::Plain },
        Case { name: "W5 xt@dz", m: 64, k: 2048, n: 1024, kind: Kind::TransA },
        Case { name: "W5 ht@dz", m: 256, k: 2048, n: 1024, kind: Kind::TransA },
        // W5's read-out (65 characters): logits, and the two derivative products.
        Case { name: "W5 h@W", m: 2048, k: 256, n: 65, kind: Kind::Plain },
        Case { name: "W5 g@Wt", m: 2048, k: 65, n: 256, kind: Kind::TransB },
        Case { name: "W5 ht@g", m: 256, k: 2048, n: 65, kind: Kind::TransA },
    ];
    if filter.as_deref() == Some("threads") {
        threads_sweep();
        return;
    }
    println!("| product | m×k×n | nnc 1t | nnc 2t | matrixmultiply 1t | gemm 1t | gemm rayon 2t |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for c in &cases {
        if filter.as_ref().is_some_and(|f| !c.name.contains(f.as_str())) {
            continue;
        }
        let (sa, sb) = strides(c);
        let a: Vec<f32> = (0..c.m * c.k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
        let b: Vec<f32> = (0..c.k * c.n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
        let mut out = vec![0.0f32; c.m * c.n];
        let sc = [c.n as isize, 1];
        let flops = 2.0 * (c.m * c.k * c.n) as f64;
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let ours = |t: usize, out: &mut Vec<f32>| {
            // SAFETY: the strides address exactly the a, b and out buffers.
            unsafe { nnc_compiler::codegen::sgemm_strided([c.m, c.k, c.n], ap, sa, bp, sb, out.as_mut_ptr(), sc, t) }
        };
        nnc_compiler::codegen::gemm::DIRECT.store(false, std::sync::atomic::Ordering::Relaxed);
        let packed = time(|| ours(1, &mut out), flops);
        nnc_compiler::codegen::gemm::DIRECT.store(true, std::sync::atomic::Ordering::Relaxed);
        let nnc1 = time(|| ours(1, &mut out), flops);
        print!("[packed {packed:.0}] ");
        let reference = out.clone();
        let nnc2 = time(|| ours(2, &mut out), flops);
        let mm = time(
            || {
                // SAFETY: as above.
                unsafe {
                    matrixmultiply::sgemm(c.m, c.k, c.n, 1.0, ap, sa[0], sa[1], bp, sb[0], sb[1], 0.0, out.as_mut_ptr(), sc[0], sc[1])
                }
            },
            flops,
        );
        let max_diff = out.iter().zip(&reference).fold(0.0f32, |d, (x, y)| d.max((x - y).abs()));
        assert!(max_diff < 1e-2, "{}: nnc and matrixmultiply differ by {max_diff}", c.name);
        let mut gem = |par: gemm::Parallelism| {
            // SAFETY: as above (gemm takes column stride first).
            unsafe {
                gemm::gemm(
                    c.m,
                    c.n,
                    c.k,
                    out.as_mut_ptr(),
                    sc[1],
                    sc[0],
                    false,
                    ap,
                    sa[1],
                    sa[0],
                    bp,
                    sb[1],
                    sb[0],
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            }
        };
        let g1 = time(|| gem(gemm::Parallelism::None), flops);
        let g2 = time(|| gem(gemm::Parallelism::Rayon(2)), flops);
        println!("| {} | {}×{}×{} | {nnc1:.0} | {nnc2:.0} | {mm:.0} | {g1:.0} | {g2:.0} |", c.name, c.m, c.k, c.n);
    }
}

/// 1 vs 2 threads for `m×n @ n×n` (the W1 family at m = 64); run with
/// `NNC_PAR_MACS=0` so that every size may be split.
fn threads_sweep() {
    println!("| m×k×n | MACs | nnc 1t GFLOP/s | nnc 2t GFLOP/s |");
    println!("|---|---:|---:|---:|");
    for (m, n) in [(64, 64), (64, 128), (64, 192), (64, 256), (64, 384), (64, 512), (256, 256), (256, 512)] {
        let a: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * n) as f64;
        let mut run = |t: usize| {
            time(
                || {
                    // SAFETY: the strides address exactly a, b and c.
                    unsafe {
                        nnc_compiler::codegen::sgemm_strided(
                            [m, n, n],
                            a.as_ptr(),
                            [n as isize, 1],
                            b.as_ptr(),
                            [n as isize, 1],
                            c.as_mut_ptr(),
                            [n as isize, 1],
                            t,
                        )
                    }
                },
                flops,
            )
        };
        let (t1, t2) = (run(1), run(2));
        println!("| {m}×{n}×{n} | {} | {t1:.0} | {t2:.0} |", m * n * n);
    }
}
