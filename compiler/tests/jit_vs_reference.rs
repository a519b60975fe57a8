//! The JIT (`codegen`) against the float64 reference interpreter, op by op and
//! on small composite graphs. `jit_vs_reference_checked` runs these cases
//! again with bounds-checked code (`common::compile`).

use ndarray::{ArrayD, IxDyn};
use nnc_compiler::builder::Builder;
use nnc_compiler::codegen::{CodegenError, CompiledGraph};
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{Graph, InputKind, Shape, TensorType, ValueId};
use nnc_compiler::ops::{BinaryOp, Op, ReduceKind, UnaryOp, Window};
use std::time::Instant;

mod common;
use common::*;

const SHAPES: &[&[usize]] = &[&[1], &[3], &[7], &[65], &[13, 7], &[3, 1, 5], &[2, 3, 13], &[1, 65], &[4, 4, 4]];

// ---- elementwise ----------------------------------------------------------------

#[test]
fn unary_ops() {
    #[rustfmt::skip]
    let ops = [
        (UnaryOp::Neg, Fill::Signed), (UnaryOp::Exp, Fill::Signed), (UnaryOp::Log, Fill::Positive),
        (UnaryOp::Sqrt, Fill::Positive), (UnaryOp::Abs, Fill::Signed), (UnaryOp::Tanh, Fill::Signed),
        (UnaryOp::Erf, Fill::Signed), (UnaryOp::Sin, Fill::Signed), (UnaryOp::Cos, Fill::Signed),
        (UnaryOp::Gelu, Fill::Signed), (UnaryOp::GeluDerivative, Fill::Signed),
    ];
    for (u, f) in ops {
        for dims in SHAPES {
            let g = graph(|b| {
                let x = input(b, "x", dims);
                vec![b.unary(u, x)]
            });
            check(&g, f);
        }
    }
}

/// `u` applied by the JIT to each of `xs`.
fn jit_unary(u: UnaryOp, xs: &[f32]) -> Vec<f32> {
    let g = graph(|b| {
        let x = input(b, "x", &[xs.len()]);
        vec![b.unary(u, x)]
    });
    let mut jit = compile(&g, &[]).expect("compile");
    jit.input_mut(0).copy_from_slice(xs);
    run(&mut jit);
    jit.output(0).to_vec()
}

#[test]
fn unary_math_wide_range() {
    // 1000 points over a wide range of arguments for each function.
    #[rustfmt::skip]
    let cases = [
        (UnaryOp::Exp, -80.0, 80.0), (UnaryOp::Tanh, -12.0, 12.0), (UnaryOp::Erf, -6.0, 6.0),
        (UnaryOp::Log, 1e-30, 1e30), (UnaryOp::Log, 0.5, 2.0), (UnaryOp::Sin, -100.0, 100.0), (UnaryOp::Cos, -100.0, 100.0),
    ];
    for (u, lo, hi) in cases {
        let xs: Vec<f32> = (0..1000).map(|i| (lo + (hi - lo) * f64::from(i) / 999.0) as f32).collect();
        for (&x, y) in xs.iter().zip(jit_unary(u, &xs)) {
            let want = u.apply(f64::from(x));
            let err = (f64::from(y) - want).abs();
            assert!(err <= 2e-6 * want.abs() + 1e-7, "{u:?}({x}) = {y}, want {want}");
        }
    }
}

#[test]
fn special_values() {
    let xs = [0.0f32, -0.0, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 100.0, -100.0];
    #[rustfmt::skip]
    let ops = [
        UnaryOp::Exp, UnaryOp::Log, UnaryOp::Tanh, UnaryOp::Erf, UnaryOp::Sqrt, UnaryOp::Abs, UnaryOp::Sin, UnaryOp::Cos,
        UnaryOp::Gelu, UnaryOp::GeluDerivative,
    ];
    for u in ops {
        for (&x, y) in xs.iter().zip(jit_unary(u, &xs)) {
            let want = u.apply(f64::from(x)) as f32;
            // Results below the smallest normal f32 may flush to zero.
            let tol = (1e-6 * want.abs()).max(f32::MIN_POSITIVE);
            let same = (want.is_nan() && y.is_nan()) || (want - y).abs() <= tol || want == y;
            assert!(same, "{u:?}({x}) = {y}, want {want}");
        }
    }
}

#[test]
fn binary_ops() {
    #[rustfmt::skip]
    let ops = [
        (BinaryOp::Add, Fill::Signed), (BinaryOp::Sub, Fill::Signed), (BinaryOp::Mul, Fill::Signed),
        (BinaryOp::Div, Fill::Positive), (BinaryOp::Pow, Fill::Positive), (BinaryOp::Max, Fill::Signed),
        (BinaryOp::Max, Fill::Ints), (BinaryOp::Gt, Fill::Ints), (BinaryOp::Eq, Fill::Ints),
        (BinaryOp::Gt, Fill::Signed),
    ];
    for (op, f) in ops {
        for dims in SHAPES {
            let g = graph(|b| {
                let x = input(b, "x", dims);
                let y = input(b, "y", dims);
                vec![b.binary(op, x, y)]
            });
            check(&g, f);
        }
    }
}

#[test]
fn pow_special_cases() {
    // Negative bases with integer exponents, zero exponents, constant exponents.
    let xs = [-2.0f32, -2.0, -1.5, 0.0, 0.0, 1.0, 3.0, -0.5, 2.0, 4.0];
    let ys = [3.0f32, 2.0, 0.5, 2.0, 0.0, 7.5, -1.0, -3.0, 0.5, -0.5];
    let g = graph(|b| {
        let x = input(b, "x", &[xs.len()]);
        let y = input(b, "y", &[ys.len()]);
        vec![b.binary(BinaryOp::Pow, x, y)]
    });
    let mut jit = compile(&g, &[]).expect("compile");
    jit.input_mut(0).copy_from_slice(&xs);
    jit.input_mut(1).copy_from_slice(&ys);
    run(&mut jit);
    for ((&x, &y), &r) in xs.iter().zip(&ys).zip(jit.output(0)) {
        let want = f64::from(x).powf(f64::from(y)) as f32;
        let same = (want.is_nan() && r.is_nan()) || (want - r).abs() <= 2e-6 * want.abs();
        assert!(same, "{x} ** {y} = {r}, want {want}");
    }
    for c in [0.0, 1.0, 2.0, 3.0, 4.0, 0.5, -0.5, -1.0, -2.0, 1.7] {
        let g = graph(|b| {
            let x = input(b, "x", &[3, 7]);
            let k = b.full_like(c, x);
            vec![b.binary(BinaryOp::Pow, x, k)]
        });
        check(&g, Fill::Positive);
    }
}

#[test]
fn stop_gradient_constant_iota() {
    for dims in SHAPES {
        let g = graph(|b| {
            let x = input(b, "x", dims);
            let s = b.stop_gradient(x);
            let c = b.full(2.5, &Shape::known(dims));
            let sum = b.add(s, c);
            let mut outs = vec![s, c, sum];
            for axis in 0..dims.len() {
                outs.push(b.iota(&Shape::known(dims), axis));
            }
            outs
        });
        check(&g, Fill::Signed);
    }
    // A scalar constant as an output.
    let g = graph(|b| vec![b.scalar(-3.25)]);
    check(&g, Fill::Signed);
}

// ---- movement -------------------------------------------------------------------

#[test]
fn broadcasts() {
    #[rustfmt::skip]
    let cases: &[(&[usize], &[usize])] = &[
        (&[], &[5]), (&[], &[3, 4]), (&[7], &[3, 7]), (&[1], &[13]), (&[3, 1], &[3, 65]), (&[1, 7], &[5, 7]),
        (&[3, 1, 5], &[3, 4, 5]), (&[1, 1, 5], &[2, 3, 5]), (&[4, 1], &[2, 3, 4, 7]),
        (&[2, 1, 1], &[2, 3, 13]),
    ];
    for (from, to) in cases {
        let g = graph(|b| {
            let x = input(b, "x", from);
            let bc = b.broadcast(x, &Shape::known(to));
            // Also fused into a consumer.
            let y = input(b, "y", to);
            let z = b.mul(bc, y);
            vec![bc, z]
        });
        check(&g, Fill::Signed);
    }
}

#[test]
fn reshapes() {
    #[rustfmt::skip]
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[12]), (&[12], &[2, 6]), (&[2, 3, 5], &[6, 5]), (&[1], &[]), (&[7, 1], &[1, 7]),
    ];
    for (from, to) in cases {
        let g = graph(|b| {
            let x = input(b, "x", from);
            let e = b.exp(x);
            let r = b.reshape(e, &Shape::known(to));
            let r2 = b.reshape(x, &Shape::known(to));
            let n = b.neg(r2);
            vec![r, n, r2]
        });
        check(&g, Fill::Signed);
    }
}

#[test]
fn transposes() {
    #[rustfmt::skip]
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 5], &[1, 0]), (&[13, 65], &[1, 0]), (&[1, 7], &[1, 0]), (&[2, 3, 5], &[0, 2, 1]),
        (&[2, 3, 5], &[2, 0, 1]), (&[2, 3, 5], &[1, 2, 0]), (&[4, 3, 7], &[2, 1, 0]),
        (&[2, 3, 4, 5], &[3, 1, 0, 2]),
    ];
    for (dims, perm) in cases {
        let g = graph(|b| {
            let x = input(b, "x", dims);
            let t = b.transpose(x, perm);
            let s = b.sqrt(x);
            let ts = b.transpose(s, perm);
            vec![t, ts]
        });
        check(&g, Fill::Positive);
    }
}

#[test]
fn slices_and_pads() {
    #[rustfmt::skip]
    let cases: &[(&[usize], usize, usize, usize)] = &[
        (&[7], 0, 2, 5), (&[13, 7], 0, 0, 13), (&[13, 7], 1, 3, 4), (&[2, 3, 65], 2, 1, 64),
        (&[2, 3, 5], 1, 1, 3), (&[5, 4], 0, 4, 5),
    ];
    for (dims, axis, start, end) in cases {
        let g = graph(|b| {
            let x = input(b, "x", dims);
            let s = b.slice(x, *axis, *start, *end);
            let e = b.exp(x);
            let se = b.slice(e, *axis, *start, *end);
            let p = b.pad(x, *axis, *start, *end);
            let pe = b.pad(e, *axis, 0, 2);
            vec![s, se, p, pe]
        });
        check(&g, Fill::Signed);
    }
}

/// One unfold case: (input dims, kernel, stride, dilation, leading axes).
type WindowCase<'a> = (&'a [usize], [usize; 2], [usize; 2], [usize; 2], usize);

#[test]
fn windows_unfold_and_fold() {
    #[rustfmt::skip]
    let cases: &[WindowCase] = &[
        (&[2, 3, 8, 8], [3, 3], [1, 1], [1, 1], 0), (&[1, 2, 7, 6], [3, 2], [2, 1], [1, 2], 1),
        (&[2, 2, 9, 9], [2, 2], [2, 2], [1, 1], 2), (&[3, 11, 5], [5, 1], [3, 2], [2, 1], 1),
        (&[1, 1, 28, 28], [3, 3], [1, 1], [1, 1], 1), (&[2, 3, 4, 10, 10], [3, 3], [1, 1], [1, 1], 1),
        // Large enough for the col2im to be split across threads (by channel).
        (&[8, 8, 14, 14], [7, 7], [1, 1], [1, 1], 0), (&[3, 16, 6, 10, 10], [3, 3], [1, 1], [1, 1], 1),
    ];
    for (dims, kernel, stride, dilation, lead) in cases {
        let w = Window { kernel: *kernel, stride: *stride, dilation: *dilation, lead: *lead };
        let r = dims.len();
        let size = [dims[r - 2], dims[r - 1]];
        let g = graph(|b| {
            let x = input(b, "x", dims);
            let u = b.unfold(x, w);
            let e = b.exp(u);
            let f = b.fold(e, w, size);
            vec![u, f]
        });
        check(&g, Fill::Signed);
    }
}

/// Window sums as a depthwise convolution lowers them: the window sum (partial
/// sums of a short output row carried in registers over the window), its
/// weight gradient (a reduction over batch and positions, one value per
/// channel and window offset) and a window maximum, small and large enough to
/// run on several threads.
#[test]
fn window_reductions() {
    for (dims, k) in [([2usize, 3, 9, 9], 3usize), ([16, 8, 14, 14], 3), ([4, 6, 13, 13], 7), ([2, 2, 40, 40], 2)] {
        let w = Window { kernel: [k, k], stride: [1, 1], dilation: [1, 1], lead: 0 };
        let [n, c, h, wd] = dims;
        let (oh, ow) = (h - k + 1, wd - k + 1);
        let g = graph(|b| {
            let x = input(b, "x", &dims);
            let wt = input(b, "w", &[k, k, 1, c, 1, 1]);
            let gy = input(b, "g", &[n, c, oh, ow]);
            let u = b.unfold(x, w);
            let full = Shape::known(&[k, k, n, c, oh, ow]);
            let wb = b.broadcast(wt, &full);
            let prod = b.mul(u, wb);
            let y = b.reduce_sum(prod, &[0, 1]);
            let gb = b.reshape(gy, &Shape::known(&[1, 1, n, c, oh, ow]));
            let gb = b.broadcast(gb, &full);
            let gu = b.mul(u, gb);
            let dw = b.reduce_sum(gu, &[2, 4, 5]);
            let mx = b.reduce_max(u, &[0, 1]);
            vec![y, dw, mx]
        });
        check_with(&g, Fill::Signed, 1e-5, 5);
    }
}

/// Convolution products whose B is the unfolded image read in place (no
/// im2col matrix): `K · cols`, `G · colsᵀ` (the weight gradient), grouped
/// (a batch of two products), and with the unfolded image also read by a
/// fused loop, or also an output (then read from its buffer).
#[test]
fn products_of_unfolded_images() {
    for (groups, also) in [(1usize, 0u8), (2, 0), (1, 1), (2, 2)] {
        let (n, c, hw, o, k) = (3usize, 4usize, 9usize, 6usize, 3usize);
        let w = Window { kernel: [k, k], stride: [1, 1], dilation: [1, 1], lead: 1 };
        let (cg, og, ohw) = (c / groups, o / groups, hw - k + 1);
        let (kk, npix) = (cg * k * k, n * ohw * ohw);
        let g = graph(|b| {
            let x = input(b, "x", &[n, c, hw, hw]);
            let wm = input(b, "w", &[groups, og, kk]);
            let gy = input(b, "g", &[groups, og, npix]);
            let x5 = b.reshape(x, &Shape::known(&[n, groups, cg, hw, hw]));
            let xt = b.transpose(x5, &[1, 2, 0, 3, 4]);
            let u = b.unfold(xt, w);
            let cols = b.reshape(u, &Shape::known(&[groups, kk, npix]));
            let y = b.op(Op::MatMul, &[wm, cols]);
            let colst = b.transpose(cols, &[0, 2, 1]);
            let dk = b.op(Op::MatMul, &[gy, colst]);
            let mut outs = vec![y, dk];
            match also {
                1 => outs.push(b.exp(u)),
                2 => outs.push(u),
                _ => {}
            }
            outs
        });
        check_with(&g, Fill::Signed, 1e-5, 9);
    }
}

/// Dropout's random numbers: the JIT draws exactly the reference's numbers
/// (both hash (seed, stream, index)), uniform on [0, 1), different per stream.
#[test]
fn random_uniform_is_bit_identical_and_uniform() {
    let dims = [3usize, 1000];
    let g = graph(|b| {
        let seed = input(b, "seed", &[]);
        let s = Shape::known(&dims);
        vec![b.random_uniform(seed, &s, 1), b.random_uniform(seed, &s, 2)]
    });
    let mut inputs = Inputs::new();
    inputs.insert("seed".into(), ArrayD::from_elem(IxDyn(&[]), 17.0));
    let want = interp::run(&g, &inputs).unwrap();
    let mut jit = compile(&g, &[]).unwrap();
    jit.input_mut(0).copy_from_slice(&[17.0]);
    run(&mut jit);
    for (k, w) in want.iter().enumerate() {
        let got = jit.output(k);
        assert!(got.iter().zip(w.iter()).all(|(a, b)| f64::from(*a) == *b), "stream {k}: JIT and reference differ");
        assert!(got.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = got.iter().map(|&v| f64::from(v)).sum::<f64>() / got.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean} of 3000 uniforms");
    }
    assert_ne!(jit.output(0), jit.output(1), "two call sites draw different numbers");
}

#[test]
fn concats() {
    #[rustfmt::skip]
    let cases: &[(&[&[usize]], usize)] = &[
        (&[&[3], &[4]], 0), (&[&[3, 5], &[2, 5]], 0), (&[&[3, 5], &[3, 1]], 1),
        (&[&[3, 5], &[3, 7], &[3, 2]], 1), (&[&[2, 3, 4], &[2, 1, 4], &[2, 5, 4]], 1),
        (&[&[2, 3, 4], &[2, 3, 13], &[2, 3, 1]], 2),
    ];
    for (shapes, axis) in cases {
        let g = graph(|b| {
            let xs: Vec<ValueId> = shapes.iter().enumerate().map(|(i, d)| input(b, &format!("x{i}"), d)).collect();
            let c = b.concat(&xs, *axis);
            let t = b.exp(xs[0]);
            let mut ys = xs.clone();
            ys[0] = t;
            let c2 = b.concat(&ys, *axis);
            vec![c, c2]
        });
        check(&g, Fill::Signed);
    }
}

// ---- reductions -------------------------------------------------------------------

#[test]
fn reductions() {
    #[rustfmt::skip]
    let cases: &[(&[usize], &[usize])] = &[
        (&[7], &[0]), (&[65], &[0]), (&[1], &[0]), (&[13, 7], &[0]), (&[13, 7], &[1]), (&[13, 7], &[0, 1]),
        (&[3, 1, 5], &[1]), (&[2, 3, 13], &[0, 2]), (&[2, 3, 13], &[1]), (&[2, 3, 13], &[0, 1, 2]),
        (&[4, 65, 3], &[1]), (&[65, 65], &[1]),
        // Carried in registers: a short kept row, or every summed axis innermost.
        (&[5, 20, 6], &[1]), (&[64, 10], &[0]), (&[40, 3, 33], &[0]), (&[16, 8, 12, 12], &[0, 2, 3]),
        (&[64, 32, 16], &[0, 2]), (&[3, 5, 7, 9], &[1, 3]),
    ];
    for (dims, axes) in cases {
        for kind in [ReduceKind::Sum, ReduceKind::Max] {
            for f in [Fill::Signed, Fill::Ints] {
                let g = graph(|b| {
                    let x = input(b, "x", dims);
                    let r = b.op(Op::Reduce { kind, axes: axes.to_vec() }, &[x]);
                    // Fused operand: exp(x) reduced.
                    let e = b.exp(x);
                    let re = b.op(Op::Reduce { kind, axes: axes.to_vec() }, &[e]);
                    vec![r, re]
                });
                check_with(&g, f, 1e-5, 11);
            }
        }
    }
}

// ---- linear algebra ------------------------------------------------------------------

#[test]
fn matmuls() {
    #[rustfmt::skip]
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 5], &[5, 7]), (&[1, 1], &[1, 1]), (&[13, 65], &[65, 7]), (&[1, 5], &[5, 1]),
        (&[4, 3, 5], &[4, 5, 7]), (&[2, 1, 3], &[2, 3, 1]), (&[2, 3, 4, 5], &[2, 3, 5, 2]),
        // Large enough for the SGEMM library path (the rest are fused loops).
        (&[40, 65], &[65, 33]), (&[3, 33, 40], &[3, 40, 35]), (&[1, 300], &[300, 200]),
        // A batch split across threads by its first dim, with a second batch dim inside.
        (&[5, 2, 20, 30], &[5, 2, 30, 20]),
        (&[65, 300], &[300, 1]),
        // Threaded SGEMM (m·k·n ≥ 2^21), and a narrow product computed transposed.
        (&[130, 200], &[200, 90]), (&[300, 70], &[70, 5]), (&[64, 256], &[256, 256]),
        // Last column strips of at most 16 (65 = 32 + 32 + 1, 72 = 64 + 8) under row
        // tiles of 12 + 9 and 12 + 12 + 12 + 2.
        (&[21, 70], &[70, 65]), (&[38, 64], &[64, 72]), (&[300, 64], &[64, 65]),
    ];
    for (a, bd) in cases {
        let g = graph(|b| {
            let x = input(b, "a", a);
            let y = input(b, "b", bd);
            let m = b.matmul(x, y);
            // Transposed operands (passed as strides) and a fused producer.
            let xt = b.matrix_transpose(x);
            let xtt = b.matrix_transpose(xt);
            let ey = b.exp(y);
            let m2 = b.matmul(xtt, ey);
            vec![m, m2]
        });
        check_with(&g, Fill::Signed, 1e-5, 3);
    }
}

#[test]
fn matmul_of_transposes() {
    // Aᵀ B and A Bᵀ, the shapes the matmul gradient produces, on both paths
    // (and, at 60×48×40, the library's small-product kernels).
    for (r, c, k) in [(7, 3, 5), (70, 40, 50), (60, 48, 40)] {
        let g = graph(|b| {
            let x = input(b, "a", &[r, c]);
            let y = input(b, "b", &[r, k]);
            let xt = b.matrix_transpose(x);
            let m = b.matmul(xt, y);
            let z = input(b, "c", &[4, k]);
            let zt = b.matrix_transpose(z);
            let m2 = b.matmul(m, zt);
            vec![m, m2]
        });
        let jit = check_with(&g, Fill::Signed, 1e-5, 5);
        // No kernel materialises a transpose: a fused matmul is 2 loops
        // (zero, accumulate), a library one is 1 call.
        assert!(jit.kernel_count() <= 4, "{} kernels", jit.kernel_count());
    }
}

#[test]
fn matmul_by_transposed_weights() {
    // G·Wᵀ with full 32-column strips of the transposed operand (gathered when
    // packed), with m both small (B read in place otherwise) and large.
    for m in [64, 130] {
        let g = graph(|b| {
            let x = input(b, "x", &[m, 100]);
            let w = input(b, "w", &[96, 100]);
            let wt = b.matrix_transpose(w);
            vec![b.matmul(x, wt)]
        });
        check_with(&g, Fill::Signed, 1e-5, 6);
    }
}

#[test]
fn independent_products_run_as_a_pair() {
    // The backward pass's G·Wᵀ and Xᵀ·G: consecutive, independent, each large
    // enough to run on its own thread.
    let g = graph(|b| {
        let x = input(b, "x", &[64, 96]);
        let w = input(b, "w", &[128, 96]);
        let gr = input(b, "g", &[64, 128]);
        let dx = b.matmul(gr, w);
        let xt = b.matrix_transpose(x);
        let dw = b.matmul(xt, gr);
        let e = b.exp(dw);
        vec![dx, dw, e]
    });
    check_with(&g, Fill::Signed, 1e-5, 8);
}

#[test]
fn solves() {
    for (n, k) in [(1, 1), (3, 2), (7, 5), (13, 1)] {
        let g = graph(|b| {
            let a = input(b, "a", &[n, n]);
            let rhs = input(b, "b", &[n, k]);
            // Diagonally dominant: A + n·I (built with iota and eq).
            let ri = b.iota(&Shape::known(&[n, n]), 0);
            let ci = b.iota(&Shape::known(&[n, n]), 1);
            let eye = b.binary(BinaryOp::Eq, ri, ci);
            let d = b.scale(eye, n as f64 + 2.0);
            let aa = b.add(a, d);
            vec![b.solve(aa, rhs)]
        });
        check_with(&g, Fill::Signed, 1e-5, 9);
    }
}

// ---- composites ---------------------------------------------------------------------------

/// A tiny MLP forward pass with a softmax built from primitives.
fn mlp(batch: usize, din: usize, hidden: usize, classes: usize) -> Graph {
    graph(|b| {
        let x = input(b, "x", &[batch, din]);
        let w1 = input(b, "w1", &[din, hidden]);
        let b1 = input(b, "b1", &[hidden]);
        let w2 = input(b, "w2", &[hidden, classes]);
        let h = b.matmul(x, w1);
        let bb = b.broadcast(b1, &Shape::known(&[batch, hidden]));
        let h = b.add(h, bb);
        let zero = b.full_like(0.0, h);
        let h = b.binary(BinaryOp::Max, h, zero);
        let logits = b.matmul(h, w2);
        let m = b.reduce_max(logits, &[1]);
        let mb = b.broadcast(m, &Shape::known(&[batch, classes]));
        let z = b.sub(logits, mb);
        let e = b.exp(z);
        let s = b.reduce_sum(e, &[1]);
        let sb = b.broadcast(s, &Shape::known(&[batch, classes]));
        let p = b.div(e, sb);
        let ls = b.log(sb);
        let lp = b.sub(z, ls);
        let total = b.sum_all(lp);
        vec![p, total]
    })
}

#[test]
fn mlp_softmax_chain() {
    for (batch, din, hidden, classes) in [(1, 3, 5, 2), (7, 13, 65, 10), (4, 4, 4, 4)] {
        check_with(&mlp(batch, din, hidden, classes), Fill::Signed, 1e-5, 21);
        check_with(&mlp(batch, din, hidden, classes), Fill::Small, 1e-5, 22);
    }
}

#[test]
fn large_row_loops_fuse_and_run_across_threads() {
    // A softmax over rows of 1000 (64 000 elements: large enough to run across
    // threads): its max, exp, sum and division run as one loop over the rows,
    // split across threads; a sum over the rows (a bias gradient's shape),
    // which threads would race on, stays out of that loop.
    let (rows, width) = (64, 1000);
    let g = graph(|b| {
        let z = input(b, "z", &[rows, width]);
        let t = input(b, "t", &[rows, width]);
        let p = b.softmax(z, &[1]);
        let d = b.mul(p, t);
        let column_sums = b.reduce_sum(d, &[0]);
        vec![d, column_sums]
    });
    let jit = check_with(&g, Fill::Signed, 1e-5, 8);
    let fused: Vec<&String> = jit.kernel_summary().iter().filter(|k| k.contains("loops fused over 64 rows")).collect();
    assert_eq!(fused.len(), 1, "{:#?}", jit.kernel_summary());
    if threads() > 1 {
        assert!(fused[0].contains("rows, parallel"), "{}", fused[0]);
    }
}

/// `x·w + bias` for inputs `x [m, k]`, `w [k, n]` and `bias [n]` (a linear layer).
fn biased_product(b: &mut Builder, [m, k, n]: [usize; 3]) -> ValueId {
    let x = input(b, "x", &[m, k]);
    let w = input(b, "w", &[k, n]);
    let bias = input(b, "bias", &[n]);
    let xw = b.matmul(x, w);
    let rows = b.broadcast(bias, &Shape::known(&[m, n]));
    b.add(xw, rows)
}

#[test]
fn gelu_of_a_biased_product_is_recomputed_by_its_readers() {
    // GELU after a linear layer, and its derivative as autodiff writes it:
    // `Φ = ½(1 + erf(x/√2))` and `x/√2` of the biased product `x` are read by
    // the forward `x·Φ` and again by the derivative `t·Φ + t·x·φ(x)`; both
    // recompute them from the product, so nothing writes them out.
    let g = graph(|b| {
        let y = biased_product(b, [64, 48, 96]);
        let t = input(b, "t", &[64, 96]);
        let s = b.scale(y, std::f64::consts::FRAC_1_SQRT_2);
        let e = b.unary(UnaryOp::Erf, s);
        let shifted = b.offset(e, 1.0);
        let phi = b.scale(shifted, 0.5);
        let sq = b.mul(s, s);
        let nsq = b.neg(sq);
        let density = b.exp(nsq);
        let out = b.mul(y, phi);
        let through_phi = b.mul(t, phi);
        let ty = b.mul(t, y);
        let through_density = b.mul(ty, density);
        let d = b.add(through_phi, through_density);
        vec![out, d]
    });
    let jit = check_with(&g, Fill::Signed, 1e-5, 9);
    // The product, then the two outputs' maps (fused over rows or not): no
    // third map writing `Φ` or `x/√2`.
    let maps: usize = jit.kernel_summary().iter().map(|k| k.matches("map over").count()).sum();
    assert_eq!(maps, 2, "{:#?}", jit.kernel_summary());
}

#[test]
fn a_regrouped_slice_of_columns_is_read_in_place() {
    // `d[:, :, 16:48]` as a `[32, 32]` matrix (a scan's handed-on columns
    // merged over batch and time, for a weight gradient): after optimization
    // the product reads the columns in place, with no copy of the slice.
    let g = graph(|b| {
        let d = input(b, "d", &[4, 8, 48]);
        let w = input(b, "w", &[32, 16]);
        let cols = b.slice(d, 2, 16, 48);
        let flat = b.reshape(cols, &Shape::known(&[32, 32]));
        vec![b.matmul(flat, w)]
    });
    let g = nnc_compiler::opt::optimize(&g);
    let jit = check_with(&g, Fill::Signed, 1e-5, 9);
    assert_eq!(jit.kernel_summary().len(), 1, "{:#?}", jit.kernel_summary());
}

#[test]
fn heads_sliced_from_a_fused_product_are_read_in_place() {
    // Attention's queries and keys sliced out of one `[B, T, 3·H·D]` product
    // (`[B, T, 3, H, D]`, a size-1 slice, the slice's axis dropped, heads moved
    // before time): the scores' product reads both in place, and a loop
    // reading a head through the dropped axis loads it in place too. Neither
    // is copied out first.
    let (bsz, t, h, d) = (2, 16, 2, 8);
    let g = graph(|b| {
        let qkv = input(b, "qkv", &[bsz, t, 3 * h * d]);
        let parts = b.reshape(qkv, &Shape::known(&[bsz, t, 3, h, d]));
        let mut head = |i: usize| {
            let one = b.slice(parts, 2, i, i + 1);
            let dropped = b.reshape(one, &Shape::known(&[bsz, t, h, d]));
            (dropped, b.transpose(dropped, &[0, 2, 1, 3]))
        };
        let (_, q) = head(0);
        let (_, k) = head(1);
        let (v, _) = head(2);
        let kt = b.transpose(k, &[0, 1, 3, 2]);
        let scores = b.matmul(q, kt);
        vec![scores, b.exp(v)]
    });
    let jit = check_with(&g, Fill::Signed, 1e-5, 5);
    let summary = jit.kernel_summary();
    assert_eq!(summary.len(), 2, "{summary:#?}");
    assert!(summary.iter().any(|k| k.starts_with("matmul [2, 2] 16x8 @ 8x16")), "{summary:#?}");
    assert!(summary.iter().any(|k| k.starts_with("map over [2, 16, 2, 8]: 1 operands")), "{summary:#?}");
}

#[test]
fn column_sums_split_their_columns_across_threads() {
    // A sum over the rows into 96 columns, with too few rows (4) to give
    // each a block of partial sums: the two halves of the columns are shared
    // out instead.
    let g = graph(|b| {
        let x = input(b, "x", &[4, 1024, 96]);
        let e = b.exp(x);
        vec![b.reduce_sum(e, &[0, 1])]
    });
    let jit = check_with(&g, Fill::Signed, 1e-5, 6);
    let summary = jit.kernel_summary();
    assert_eq!(summary.len(), 2, "{summary:#?}");
    assert!(summary.iter().any(|k| k.starts_with("accumulate (Sum) over [4, 1024, 96]") && k.ends_with(", parallel")), "{summary:#?}");
}

#[test]
fn column_sums_join_a_row_group_as_partial_sums() {
    // A derivative map over [B, T, n] and the bias gradient summed from it (as
    // after a GELU): the sum joins the map's pass over the rows, which then
    // still runs across threads (each row into its own partial sums, added
    // up after the group), instead of reading the whole map output again.
    let g = graph(|b| {
        let x = input(b, "x", &[32, 16, 96]);
        let t = input(b, "t", &[32, 16, 96]);
        let e = b.exp(x);
        let d = b.mul(e, t);
        let sums = b.reduce_sum(d, &[0, 1]);
        vec![d, sums]
    });
    let jit = check_with(&g, Fill::Signed, 1e-5, 7);
    let summary = jit.kernel_summary();
    let group = summary.iter().find(|k| k.contains("loops fused over 32 rows, parallel"));
    assert!(group.is_some_and(|k| k.contains("accumulate (Sum) over [32, 16, 96]")), "{summary:#?}");
    assert!(summary.iter().any(|k| k.starts_with("accumulate (Sum) over [32, 96]")), "{summary:#?}");
}

#[test]
fn slices_of_a_row_written_by_several_loops_fuse_with_its_reader() {
    // Three parts written into their columns of one `[B, T, 3·32]` buffer (the
    // three heads' gradients into the `qkv` gradient), then summed over the
    // rows (its bias gradient): each loop touches only row r's stretch of the
    // buffer, so all four run in one pass over the rows.
    let g = graph(|b| {
        let parts: Vec<ValueId> = ["q", "k", "v"]
            .iter()
            .map(|name| {
                let x = input(b, name, &[32, 64, 32]);
                b.exp(x)
            })
            .collect();
        let joined = b.concat(&parts, 2);
        let sums = b.reduce_sum(joined, &[0, 1]);
        vec![joined, sums]
    });
    let jit = check_with(&g, Fill::Signed, 1e-5, 8);
    let summary = jit.kernel_summary();
    let group = summary.iter().find(|k| k.starts_with("4 loops fused over 32 rows"));
    assert!(group.is_some_and(|k| k.contains("accumulate (Sum) over [32, 64, 96]")), "{summary:#?}");
}

#[test]
fn softmax_cross_entropy_is_one_pass() {
    // Loss and its gradient w.r.t. the logits, as autodiff writes them: every
    // [B, C] and [B, 1] loop runs in one pass over the rows.
    let (bsz, c) = (64, 10);
    let g = graph(|b| {
        let z = input(b, "z", &[bsz, c]);
        let t = input(b, "t", &[bsz, c]);
        let bc = Shape::known(&[bsz, c]);
        let m = b.reduce_max(z, &[1]);
        let m = b.stop_gradient(m);
        let mb = b.broadcast(m, &bc);
        let zs = b.sub(z, mb);
        let e = b.exp(zs);
        let s = b.reduce_sum(e, &[1]);
        let ls = b.log(s);
        let lse = b.add(ls, m);
        let lb = b.broadcast(lse, &bc);
        let lp = b.sub(z, lb);
        let tl = b.mul(t, lp);
        let rows = b.reduce_sum(tl, &[1]);
        let total = b.sum_all(rows);
        let ones = b.full(1.0, &Shape::known(&[bsz, 1]));
        let n = b.sum_all(ones);
        let nl = b.neg(total);
        let loss = b.div(nl, n);
        let sb = b.broadcast(s, &bc);
        let p = b.div(e, sb);
        let d = b.sub(p, t);
        let nb = b.broadcast(n, &bc);
        let grad = b.div(d, nb);
        vec![loss, grad]
    });
    let jit = check_with(&g, Fill::Signed, 1e-5, 4);
    let over_rows = |k: &&String| k.contains("[64, 10]") || k.contains("[64, 1]:");
    let loops: Vec<&String> =
        jit.kernel_summary().iter().filter(|k| over_rows(k) && !k.starts_with("map over [64, 1]: 0 operands")).collect();
    assert_eq!(loops.len(), 1, "{:#?}", jit.kernel_summary().iter().map(|k| k.replace("; ", "\n      ")).collect::<Vec<_>>());
    assert!(loops[0].contains("fused over 64 rows"), "{:#?}", jit.kernel_summary());
}

#[test]
fn fusion_counts() {
    // exp(x) * 2 + y, then tanh: one loop.
    let g = graph(|b| {
        let x = input(b, "x", &[13, 7]);
        let y = input(b, "y", &[13, 7]);
        let e = b.exp(x);
        let s = b.scale(e, 2.0);
        let t = b.add(s, y);
        vec![b.unary(UnaryOp::Tanh, t)]
    });
    let jit = check(&g, Fill::Signed);
    assert_eq!(jit.kernel_count(), 1);
    // A layer's bias added to its product, read by two loops (an activation
    // and, as in a backward pass, its derivative times a cotangent): each adds
    // the bias itself, so the sum is never stored: the product, then two
    // loops (three if the sum had a loop of its own).
    let g = graph(|b| {
        let h = biased_product(b, [40, 30, 50]);
        let gy = input(b, "gy", &[40, 50]);
        let act = b.unary(UnaryOp::Tanh, h);
        let slope = b.exp(h);
        vec![act, b.mul(slope, gy)]
    });
    let jit = check(&g, Fill::Signed);
    let loops: usize = jit.kernel_summary().iter().map(|k| k.matches("map over").count()).sum();
    assert_eq!(loops, 2, "{:?}", jit.kernel_summary());
}

#[test]
fn run_twice_same_result() {
    let g = mlp(5, 6, 7, 3);
    let mut jit = check_with(&g, Fill::Signed, 1e-5, 2);
    let first: Vec<Vec<f32>> = (0..2).map(|i| jit.output(i).to_vec()).collect();
    run(&mut jit);
    for (i, f) in first.iter().enumerate() {
        assert_eq!(jit.output(i), f.as_slice());
    }
}

// ---- updates ------------------------------------------------------------------------------

/// SGD on a parameter: `w' = w - lr * g` with `g = x·w`-ish; output 1 is `w'`.
fn sgd_graph(read_after: bool) -> Graph {
    graph(|b| {
        let w = input(b, "w", &[3, 5]);
        let x = input(b, "x", &[3, 5]);
        let g = b.mul(x, w);
        let step = b.scale(g, 0.1);
        let w2 = b.sub(w, step);
        let loss = b.sum_all(g);
        let mut outs = vec![loss, w2];
        if read_after {
            // A reader of the old `w` after `w'` is computed forces a copy.
            let wt = b.transpose(w, &[1, 0]);
            let w3 = b.matmul(wt, w2);
            outs.push(w3);
        }
        outs
    })
}

fn run_updates(read_after: bool) {
    let g = sgd_graph(read_after);
    let w_id = g.input("w").expect("w");
    let mut jit = compile(&g, &[(1, w_id)]).expect("compile");
    let mut rng = Rng::new(5);
    let mut w: Vec<f64> = (0..15).map(|_| rng.range(-1.0, 1.0)).collect();
    let x: Vec<f64> = (0..15).map(|_| rng.range(-1.0, 1.0)).collect();
    let wi = jit.input_index("w").expect("w");
    let xi = jit.input_index("x").expect("x");
    for (d, s) in jit.input_mut(wi).iter_mut().zip(&w) {
        *d = *s as f32;
    }
    for (d, s) in jit.input_mut(xi).iter_mut().zip(&x) {
        *d = *s as f32;
    }
    for _ in 0..4 {
        let w_now: Vec<f64> = jit.input(wi).iter().map(|&v| f64::from(v)).collect();
        let mut inputs = Inputs::new();
        inputs.insert("w".into(), ArrayD::from_shape_vec(IxDyn(&[3, 5]), w_now).expect("w"));
        inputs.insert("x".into(), ArrayD::from_shape_vec(IxDyn(&[3, 5]), x.clone()).expect("x"));
        let want = interp::run(&g, &inputs).expect("reference");
        run(&mut jit);
        for (i, wv) in want.iter().enumerate() {
            compare(jit.output(i), wv, 1e-6).unwrap_or_else(|e| panic!("output {i}: {e}"));
        }
        compare(jit.input(wi), &want[1], 1e-6).expect("w updated in place");
        w = want[1].iter().copied().collect();
    }
    assert!(w.iter().all(|v| v.is_finite()));
}

/// Adam on `w` with gradient `x·w`: outputs loss, m', v', w'.
fn adam_graph(dims: &[usize]) -> Graph {
    graph(|b| {
        let w = input(b, "w", dims);
        let m = input(b, "m", dims);
        let v = input(b, "v", dims);
        let x = input(b, "x", dims);
        let g = b.mul(x, w);
        let loss = b.sum_all(g);
        let (m9, g1) = (b.scale(m, 0.9), b.scale(g, 0.1));
        let m2 = b.add(m9, g1);
        let gg = b.mul(g, g);
        let (v9, g2) = (b.scale(v, 0.999), b.scale(gg, 0.001));
        let v2 = b.add(v9, g2);
        let sv = b.sqrt(v2);
        let den = b.offset(sv, 1e-8);
        let r = b.div(m2, den);
        let step = b.scale(r, 0.01);
        let w2 = b.sub(w, step);
        vec![loss, m2, v2, w2]
    })
}

#[test]
fn adam_is_one_pass() {
    // The large one runs its loops on the worker pool.
    for dims in [[33, 17], [512, 300]] {
        adam_case(&dims);
    }
}

fn adam_case(dims: &[usize]) {
    let g = adam_graph(dims);
    let ids: Vec<ValueId> = ["m", "v", "w"].iter().map(|n| g.input(n).expect("input")).collect();
    let mut jit = compile(&g, &[(1, ids[0]), (2, ids[1]), (3, ids[2])]).expect("compile");
    // x·w (read twice), the loss (fill + sum), and one loop writing m', v', w'
    // (small ones fused over rows with the others).
    assert!(jit.kernel_count() <= 4, "{:#?}", jit.kernel_summary());
    assert_eq!(jit.kernel_summary().iter().filter(|k| k.contains("map with 3 outputs")).count(), 1, "{:#?}", jit.kernel_summary());
    let mut rng = Rng::new(17);
    for name in ["w", "m", "v", "x"] {
        let i = jit.input_index(name).expect("input");
        for d in jit.input_mut(i).iter_mut() {
            *d = if name == "v" { rng.range(0.0, 1.0) } else { rng.range(-1.0, 1.0) } as f32;
        }
    }
    for _ in 0..3 {
        let mut inputs = Inputs::new();
        for name in ["w", "m", "v", "x"] {
            let i = jit.input_index(name).expect("input");
            let now: Vec<f64> = jit.input(i).iter().map(|&v| f64::from(v)).collect();
            inputs.insert(name.into(), ArrayD::from_shape_vec(IxDyn(dims), now).expect("shape"));
        }
        let want = interp::run(&g, &inputs).expect("reference");
        run(&mut jit);
        for (i, w) in want.iter().enumerate() {
            compare(jit.output(i), w, 1e-6).unwrap_or_else(|e| panic!("output {i}: {e}"));
        }
        for (k, name) in ["m", "v", "w"].iter().enumerate() {
            let i = jit.input_index(name).expect("input");
            compare(jit.input(i), &want[k + 1], 1e-6).unwrap_or_else(|e| panic!("{name} updated in place: {e}"));
        }
    }
}

#[test]
fn large_strided_maps_in_parallel() {
    // Above the parallel threshold, with a transposed operand and an iota.
    let g = graph(|b| {
        let x = input(b, "x", &[400, 400]);
        let y = input(b, "y", &[400, 400]);
        let xt = b.transpose(x, &[1, 0]);
        let e = b.exp(xt);
        let i = b.iota(&Shape::known(&[400, 400]), 1);
        let s = b.add(e, i);
        vec![b.mul(s, y)]
    });
    check_with(&g, Fill::Signed, 1e-6, 3);
}

#[test]
fn updates_aliased() {
    run_updates(false);
}

#[test]
fn updates_copied() {
    run_updates(true);
}

#[test]
fn update_of_output_that_is_an_input() {
    // Swap two inputs through updates: a' = b, b' = a (both need copies).
    let g = graph(|b| {
        let a = input(b, "a", &[4]);
        let c = input(b, "b", &[4]);
        vec![c, a]
    });
    let (a, c) = (g.input("a").expect("a"), g.input("b").expect("b"));
    let mut jit = compile(&g, &[(0, a), (1, c)]).expect("compile");
    jit.input_mut(0).copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
    jit.input_mut(1).copy_from_slice(&[5.0, 6.0, 7.0, 8.0]);
    run(&mut jit);
    assert_eq!(jit.input(0), &[5.0, 6.0, 7.0, 8.0]);
    assert_eq!(jit.input(1), &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(jit.output(0), &[5.0, 6.0, 7.0, 8.0]);
    assert_eq!(jit.output(1), &[1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn bad_updates_are_errors() {
    let g = sgd_graph(false);
    let w = g.input("w").expect("w");
    let err = |r: Result<CompiledGraph, CodegenError>| r.err().expect("should fail");
    assert!(matches!(err(compile(&g, &[(5, w)])), CodegenError::BadUpdate { .. }));
    assert!(matches!(err(compile(&g, &[(0, w)])), CodegenError::BadUpdate { .. }));
    assert!(matches!(err(compile(&g, &[(1, w), (1, w)])), CodegenError::BadUpdate { .. }));
    let sym = graph(|b| {
        let x = b.input("x", InputKind::Data, TensorType::f32(Shape(vec![nnc_compiler::ir::Dim::Sym("B".into())])));
        vec![b.exp(x)]
    });
    assert!(matches!(err(compile(&sym, &[])), CodegenError::Symbolic(_)));
}

#[test]
fn update_read_through_transpose_is_copied() {
    // w' = wᵀ + w reads w transposed while writing it: must not be done in place.
    let g = graph(|b| {
        let w = input(b, "w", &[4, 4]);
        let wt = b.transpose(w, &[1, 0]);
        vec![b.add(wt, w)]
    });
    let w = g.input("w").expect("w");
    let mut jit = compile(&g, &[(0, w)]).expect("compile");
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    jit.input_mut(0).copy_from_slice(&x);
    run(&mut jit);
    let want: Vec<f32> = (0..16).map(|i| x[i] + x[(i % 4) * 4 + i / 4]).collect();
    assert_eq!(jit.input(0), want.as_slice());
    assert_eq!(jit.output(0), want.as_slice());
}

// ---- graph shapes ----------------------------------------------------------------------------

#[test]
fn odd_graphs() {
    // Zero-size tensors, a shared broadcast of a computed value, dead nodes,
    // repeated outputs, an input and a reshape view as outputs.
    let g = graph(|b| {
        let x = input(b, "x", &[0, 3]);
        let e = b.exp(x);
        let s = b.reduce_sum(e, &[0]);
        let m = b.reduce_max(x, &[0, 1]);
        let y = input(b, "y", &[2, 0]);
        let mm = b.matmul(y, x);
        vec![e, s, m, mm]
    });
    check(&g, Fill::Signed);
    let g = graph(|b| {
        let x = input(b, "x", &[3, 5]);
        let v = input(b, "v", &[5]);
        let ev = b.exp(v);
        let bv = b.broadcast(ev, &Shape::known(&[3, 5]));
        let p = b.mul(x, bv);
        let q = b.add(x, bv);
        let _dead = b.log(p);
        let r = b.reshape(q, &Shape::known(&[15]));
        vec![p, q, p, x, r]
    });
    let jit = check(&g, Fill::Signed);
    assert_eq!(jit.kernel_count(), 2, "exp(v) once, then p and q in one pass over the rows");
}

#[test]
fn singular_solve_gives_nan() {
    let g = graph(|b| {
        let a = input(b, "a", &[2, 2]);
        let r = input(b, "b", &[2, 1]);
        vec![b.solve(a, r)]
    });
    let mut jit = compile(&g, &[]).expect("compile");
    jit.input_mut(0).copy_from_slice(&[1.0, 2.0, 2.0, 4.0]);
    jit.input_mut(1).copy_from_slice(&[1.0, 1.0]);
    run(&mut jit);
    assert!(jit.output(0).iter().all(|v| v.is_nan()));
}

// ---- timing (printed, not asserted) --------------------------------------------------------

#[test]
fn timing() {
    for (m, k, n) in [(64, 64, 256), (8, 8, 8), (32, 32, 32), (1, 784, 128), (64, 784, 1), (64, 784, 128)] {
        let g = graph(|b| {
            let x = input(b, "a", &[m, k]);
            let y = input(b, "b", &[k, n]);
            vec![b.matmul(x, y)]
        });
        let mut jit = check_with(&g, Fill::Signed, 1e-5, 1);
        let reps = (20_000_000 / (m * k * n)).clamp(10, 100_000);
        let t = Instant::now();
        for _ in 0..reps {
            run(&mut jit);
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        let gflops = 2.0 * (m * k * n) as f64 / dt / 1e9;
        println!("matmul {m}x{k} @ {k}x{n}: {:.2} us/run, {gflops:.1} GFLOP/s; compile {:?}", dt * 1e6, jit.compile_time());
    }

    let g = mlp(64, 256, 128, 10);
    let mut jit = check_with(&g, Fill::Small, 1e-5, 1);
    let t = Instant::now();
    for _ in 0..200 {
        run(&mut jit);
    }
    let dt = t.elapsed().as_secs_f64() / 200.0;
    println!(
        "mlp forward (64x256 -> 128 -> 10, softmax): {:.1} us/run; compile {:?}, {} kernels",
        dt * 1e6,
        jit.compile_time(),
        jit.kernel_count()
    );

    for dims in [[8_192usize], [16_384], [32_768], [65_536], [85_002], [262_144], [1_863_690]] {
        let g = adam_graph(&dims);
        let ids: Vec<ValueId> = ["m", "v", "w"].iter().map(|n| g.input(n).expect("input")).collect();
        let mut jit = compile(&g, &[(1, ids[0]), (2, ids[1]), (3, ids[2])]).expect("compile");
        let reps = (20_000_000 / dims[0]).clamp(20, 2000);
        run(&mut jit);
        let t = Instant::now();
        for _ in 0..reps {
            run(&mut jit);
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!("adam step (+ x·w and its sum), {} elements: {:.2} ns/element", dims[0], dt * 1e9 / dims[0] as f64);
    }

    let n = 1 << 16;
    type Case = (&'static str, fn(&mut Builder, ValueId) -> ValueId);
    #[rustfmt::skip]
    let cases: [Case; 5] = [
        ("x + 1", |b, x| b.offset(x, 1.0)), ("exp(x)", |b, x| b.exp(x)),
        ("tanh(x)", |b, x| b.unary(UnaryOp::Tanh, x)), ("erf(x)", |b, x| b.unary(UnaryOp::Erf, x)),
        ("log(|x|)", |b, x| { let a = b.unary(UnaryOp::Abs, x); b.log(a) }),
    ];
    for (name, f) in cases {
        let g = graph(|b| {
            let x = input(b, "x", &[n]);
            vec![f(b, x)]
        });
        let mut jit = check(&g, Fill::Signed);
        let t = Instant::now();
        for _ in 0..200 {
            run(&mut jit);
        }
        let dt = t.elapsed().as_secs_f64() / 200.0;
        println!("{name}, {n} elements: {:.2} ns/element", dt * 1e9 / n as f64);
    }
}

// ---- indexing by ids ---------------------------------------------------------------

/// A scatter's values read where they are: columns of a wider tensor (rows
/// equally far apart, read in place) and a transposed view (copied first),
/// with repeated ids, against the reference.
#[test]
fn scatter_add_of_views() {
    use nnc_compiler::ir::DType;
    let (vocab, width) = (5usize, 3usize);
    let ids_value: Vec<f32> = (0..12).map(|i| ((i * 3 + 1) % vocab) as f32).collect();
    let mut g = Graph::default();
    let mut b = Builder::new(&mut g, nnc_compiler::ast::Span::default());
    let ids = b.input("ids", InputKind::Data, TensorType { shape: Shape::known(&[3, 4]), dtype: DType::I32 });
    let wide = input(&mut b, "wide", &[3, 4, width + 4]);
    let columns = b.slice(wide, 2, 2, 2 + width);
    let by_columns = b.scatter_add(ids, columns, vocab);
    let tall = input(&mut b, "tall", &[width, 3, 4]);
    let transposed = b.transpose(tall, &[1, 2, 0]);
    let by_transpose = b.scatter_add(ids, transposed, vocab);
    assert!(b.internal_error.is_none());
    g.outputs = vec![by_columns, by_transpose];
    g.output_names = vec!["columns".into(), "transposed".into()];
    let mut jit = compile(&g, &[]).unwrap();
    assert!(jit.kernel_summary().iter().all(|k| k.starts_with("scatter-add") || k.starts_with("map")), "{:?}", jit.kernel_summary());
    let copies = jit.kernel_summary().iter().filter(|k| k.starts_with("map")).count();
    assert_eq!(copies, 1, "only the transposed view is copied: {:?}", jit.kernel_summary());
    let inputs = [("ids", vec![3, 4]), ("wide", vec![3, 4, width + 4]), ("tall", vec![width, 3, 4])];
    run_with_ids(&mut jit, &g, &inputs, &ids_value, 11, 1e-6);
}

/// Fill the JIT's named inputs, `ids` with `ids_value` and the others uniform
/// in [-1, 1] (from `seed`); run it and the reference on `reference`; compare
/// every output within `atol_rel`.
fn run_with_ids(jit: &mut CompiledGraph, reference: &Graph, inputs: &[(&str, Vec<usize>)], ids_value: &[f32], seed: u64, atol_rel: f64) {
    let mut rng = Rng::new(seed);
    let mut values = Inputs::new();
    for (name, dims) in inputs {
        let value: Vec<f32> = match *name {
            "ids" => ids_value.to_vec(),
            _ => (0..dims.iter().product()).map(|_| rng.range(-1.0, 1.0) as f32).collect(),
        };
        jit.input_mut(jit.input_index(name).unwrap()).copy_from_slice(&value);
        values.insert((*name).into(), ArrayD::from_shape_vec(IxDyn(dims), value.iter().map(|&v| f64::from(v)).collect()).unwrap());
    }
    run(jit);
    let want = interp::run(reference, &values).unwrap();
    for (i, w) in want.iter().enumerate() {
        compare(jit.output(i), w, atol_rel).unwrap_or_else(|e| panic!("output {i}: {e}"));
    }
}

/// An embedding followed by a product and a bias (a character model's input
/// projection), and the gradients autodiff writes for all three: once
/// optimized, every product multiplies the 9-row table rather than the 24
/// gathered rows (`gather(T, ids)·W` → `gather(T·W, ids)`, and the scatter of
/// the gradient moved before its products), the bias is added to the table,
/// and the JIT of that graph agrees with the reference on the graph as
/// written, bad ids reported as before.
#[test]
fn products_of_gathered_rows_multiply_the_table_instead() {
    use nnc_compiler::ir::DType;
    let (vocab, d, width, ids_dims) = (9usize, 5usize, 7usize, [4usize, 6usize]);
    let n = ids_dims.iter().product::<usize>();
    let mut g = Graph::default();
    let mut b = Builder::new(&mut g, nnc_compiler::ast::Span::default());
    let table = input(&mut b, "table", &[vocab, d]);
    let w = input(&mut b, "w", &[d, width]);
    let ids = b.input("ids", InputKind::Data, TensorType { shape: Shape::known(&ids_dims), dtype: DType::I32 });
    // The embedding and the product at different places in the source.
    b.span = nnc_compiler::ast::Span { start: 10, end: 20 };
    let rows = b.gather_rows(table, ids);
    b.span = nnc_compiler::ast::Span { start: 30, end: 40 };
    let flat = b.reshape(rows, &Shape::known(&[n, d]));
    let product = b.matmul(flat, w);
    let bias = input(&mut b, "bias", &[width]);
    let bias_rows = b.broadcast(bias, &Shape::known(&[n, width]));
    let y = b.add(product, bias_rows);
    let s = b.unary(UnaryOp::Sin, y);
    let loss = b.sum_all(s);
    assert!(b.internal_error.is_none());
    let grads = nnc_compiler::autodiff::grad(&mut g, loss, &[table, w, bias], nnc_compiler::ast::Span::default()).unwrap();
    g.outputs = vec![loss, grads[0], grads[1], grads[2]];
    g.output_names = vec!["loss".into(), "d table".into(), "d w".into(), "d bias".into()];
    let opt = nnc_compiler::opt::optimize(&g);
    let products: Vec<Vec<usize>> = opt
        .nodes
        .iter()
        .filter(|node| matches!(node.op, Op::MatMul))
        .map(|node| node.args.iter().flat_map(|&a| opt.shape(a).concrete().unwrap()).collect())
        .collect();
    assert_eq!(products.len(), 3, "{products:?}");
    assert!(products.iter().all(|dims| !dims.contains(&n)), "a product still runs over the gathered rows: {products:?}");
    let row_sums = opt.nodes.iter().filter(|node| matches!(node.op, Op::Binary(BinaryOp::Add)) && node.ty.shape.dims().len() == 2);
    let sizes: Vec<usize> = row_sums.map(|node| node.ty.shape.numel().unwrap()).collect();
    assert_eq!(sizes, [vocab * width], "the bias is added to the table only");
    // The bias gradient sums the scattered gradient's table rows; only the loss sums over all rows.
    let sums_over_rows = opt
        .nodes
        .iter()
        .filter(|node| matches!(node.op, Op::Reduce { .. }) && node.args.iter().any(|&a| opt.shape(a).numel() == Some(n * width)));
    assert_eq!(sums_over_rows.count(), 1, "the bias gradient is summed over the gathered rows");

    let mut jit = compile(&opt, &[]).unwrap();
    let ids_value: Vec<f32> = (0..n).map(|i| ((i * 5 + 2) % vocab) as f32).collect();
    let inputs = [("table", vec![vocab, d]), ("w", vec![d, width]), ("bias", vec![width]), ("ids", ids_dims.to_vec())];
    run_with_ids(&mut jit, &g, &inputs, &ids_value, 5, 1e-5);
    // An id out of range is still a fault, at the embedding's node.
    let mut bad = ids_value;
    bad[n - 1] = vocab as f32;
    jit.input_mut(jit.input_index("ids").unwrap()).copy_from_slice(&bad);
    run(&mut jit);
    let fault = jit.fault().expect("an id out of range is reported");
    let site = opt.node(nnc_compiler::ir::ValueId(fault.site));
    assert!(matches!(site.op, Op::Gather) && site.span == g.node(rows).span, "{site:?}");
    assert_eq!((fault.index, fault.bound), (vocab as f32, vocab));
}

/// Gather and scatter-add on odd sizes with repeated ids, against the reference;
/// then an id out of range: the JIT reports it as a fault of that node and
/// reads nothing outside the table.
#[test]
fn gather_and_scatter_add() {
    use nnc_compiler::ir::DType;
    for (vocab, width, ids_dims) in [(5usize, 3usize, vec![7usize]), (65, 33, vec![4, 9]), (1, 1, vec![2, 1])] {
        let n: usize = ids_dims.iter().product();
        let ids_value: Vec<f32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as f32).collect();
        let mut g = Graph::default();
        let mut b = Builder::new(&mut g, nnc_compiler::ast::Span::default());
        let table = input(&mut b, "table", &[vocab, width]);
        let ids = b.input("ids", InputKind::Data, TensorType { shape: Shape::known(&ids_dims), dtype: DType::I32 });
        let rows = b.gather_rows(table, ids);
        let e = b.exp(rows);
        let back = b.scatter_add(ids, e, vocab);
        assert!(b.internal_error.is_none());
        g.outputs = vec![rows, back];
        g.output_names = vec!["rows".into(), "back".into()];
        let mut jit = compile(&g, &[]).unwrap();
        let mut rng = Rng::new(3);
        let table_value: Vec<f32> = (0..vocab * width).map(|_| rng.range(-2.0, 2.0) as f32).collect();
        jit.input_mut(jit.input_index("table").unwrap()).copy_from_slice(&table_value);
        jit.input_mut(jit.input_index("ids").unwrap()).copy_from_slice(&ids_value);
        run(&mut jit);
        assert_eq!(jit.fault(), None);
        let mut inputs = Inputs::new();
        let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        inputs.insert("table".into(), ArrayD::from_shape_vec(IxDyn(&[vocab, width]), f64s(&table_value)).unwrap());
        inputs.insert("ids".into(), ArrayD::from_shape_vec(IxDyn(&ids_dims), f64s(&ids_value)).unwrap());
        let want = interp::run(&g, &inputs).unwrap();
        for (i, w) in want.iter().enumerate() {
            compare(jit.output(i), w, 1e-6).unwrap_or_else(|e| panic!("vocab {vocab}, output {i}: {e}"));
        }
        // One bad id: the fault names the gather node, and the other rows are still right.
        let mut bad = ids_value.clone();
        bad[n - 1] = vocab as f32;
        jit.input_mut(jit.input_index("ids").unwrap()).copy_from_slice(&bad);
        run(&mut jit);
        let fault = jit.fault().expect("an id out of range is reported");
        assert_eq!((fault.site, fault.index, fault.bound), (rows.0, vocab as f32, vocab));
        assert!(jit.output(0)[(n - 1) * width..].iter().all(|&v| v == 0.0), "the bad row is zeros");
        inputs.insert("ids".into(), ArrayD::from_shape_vec(IxDyn(&ids_dims), f64s(&bad)).unwrap());
        assert!(matches!(interp::run(&g, &inputs), Err(nnc_compiler::ops::EvalError::IndexOutOfRange { .. })));
        // The next good run clears the fault.
        jit.input_mut(jit.input_index("ids").unwrap()).copy_from_slice(&ids_value);
        run(&mut jit);
        assert_eq!(jit.fault(), None);
    }
}

/// `CheckIndex` (class labels): the ids pass through unchanged; a label that
/// is too large, negative, fractional or NaN is a fault of the check's node
/// in the JIT and the same error in the reference, except where the mask is 0.
#[test]
fn check_index_refuses_what_is_not_a_class() {
    use nnc_compiler::ir::DType;
    use nnc_compiler::ops::EvalError;
    let classes = 10;
    let int = |dims: &[usize]| TensorType { shape: Shape::known(dims), dtype: DType::I32 };
    let mut g = Graph::default();
    let mut b = Builder::new(&mut g, nnc_compiler::ast::Span::default());
    let ids = b.input("ids", InputKind::Data, int(&[6]));
    let keep = input(&mut b, "keep", &[6]);
    let checked = b.check_index(ids, Some(keep), classes);
    assert!(b.internal_error.is_none());
    g.outputs = vec![checked];
    g.output_names = vec!["checked".into()];
    let mut jit = compile(&g, &[]).unwrap();
    let good = [0.0f32, 9.0, 3.0, 1.0, 5.0, 2.0];
    let mut check = |ids: &[f32], keep: &[f32]| {
        jit.input_mut(jit.input_index("ids").unwrap()).copy_from_slice(ids);
        jit.input_mut(jit.input_index("keep").unwrap()).copy_from_slice(keep);
        run(&mut jit);
        let mut inputs = Inputs::new();
        let f64s = |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[6]), v.iter().map(|&x| f64::from(x)).collect()).unwrap();
        inputs.insert("ids".into(), f64s(ids));
        inputs.insert("keep".into(), f64s(keep));
        (jit.fault(), jit.output(0).to_vec(), interp::run(&g, &inputs))
    };
    let (fault, out, reference) = check(&good, &[1.0; 6]);
    assert_eq!((fault, out.as_slice()), (None, &good[..]));
    compare(&out, &reference.unwrap()[0], 0.0).unwrap();
    for bad in [10.0f32, -1.0, 2.5, f32::NAN, 1e30] {
        let mut ids = good;
        ids[4] = bad;
        let (fault, _, reference) = check(&ids, &[1.0; 6]);
        let fault = fault.unwrap_or_else(|| panic!("label {bad} is reported"));
        assert_eq!((fault.site, fault.bound), (checked.0, classes));
        assert!(fault.index.to_bits() == bad.to_bits(), "fault names label {} for {bad}", fault.index);
        match reference {
            Err(EvalError::IndexOutOfRange { site, index, bound }) => {
                assert_eq!((site, bound), (Some(checked), classes));
                assert!(index.to_bits() == f64::from(bad).to_bits(), "reference names label {index} for {bad}");
            }
            other => panic!("the reference refuses label {bad}: {other:?}"),
        }
        // Where the mask is 0 the label is not checked (ignore_index).
        let mut keep = [1.0f32; 6];
        keep[4] = 0.0;
        let (fault, _, reference) = check(&ids, &keep);
        assert_eq!(fault, None, "label {bad} is masked");
        assert!(reference.is_ok(), "label {bad} is masked in the reference");
    }
}
