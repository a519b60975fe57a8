//! Accuracy of the JIT's vectorised math (inline `f32x4` polynomials and
//! rationals) against float64, over wide ranges: exp, log, tanh, erf, sin, cos, and
//! sigmoid, GELU and softplus as the language composes them. The figures
//! printed here (`--nocapture`) are the ones quoted in docs/performance.md.

use nnc_compiler::ast::Span;
use nnc_compiler::builder::Builder;
use nnc_compiler::codegen::CompiledGraph;
use nnc_compiler::ir::{Graph, InputKind, Shape, TensorType, ValueId};
use nnc_compiler::ops::UnaryOp;

/// `f` applied by the JIT to each of `xs` (the graph is built by `build`).
fn jit(xs: &[f32], build: fn(&mut Builder, ValueId) -> ValueId) -> Vec<f32> {
    let mut g = Graph::default();
    let mut b = Builder::new(&mut g, Span::default());
    let x = b.input("x", InputKind::Data, TensorType::f32(Shape::known(&[xs.len()])));
    let y = build(&mut b, x);
    g.output_names = vec!["y".into()];
    g.outputs = vec![y];
    let mut c = CompiledGraph::compile(&g, &[]).expect("compile");
    c.input_mut(0).copy_from_slice(xs);
    c.run();
    c.output(0).to_vec()
}

/// `n` points evenly spaced on `[lo, hi]`, as f32.
fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f32> {
    (0..n).map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32).collect()
}

/// `n` points log-spaced on `[lo, hi]` (both positive).
fn logspace(lo: f64, hi: f64, n: usize) -> Vec<f32> {
    let (a, b) = (lo.ln(), hi.ln());
    (0..n).map(|i| (a + (b - a) * i as f64 / (n - 1) as f64).exp() as f32).filter(|v| v.is_finite() && *v > 0.0).collect()
}

/// Largest absolute error, and largest relative error over points whose exact
/// value has magnitude at least `rel_floor`.
fn errors(xs: &[f32], ys: &[f32], exact: fn(f64) -> f64, rel_floor: f64) -> (f64, f64) {
    let mut abs: f64 = 0.0;
    let mut rel: f64 = 0.0;
    for (&x, &y) in xs.iter().zip(ys) {
        let want = exact(f64::from(x));
        let e = (f64::from(y) - want).abs();
        assert!(e.is_finite() || (y.is_infinite() && want.is_infinite()), "f({x}) = {y}, want {want}");
        abs = abs.max(e);
        if want.abs() >= rel_floor {
            rel = rel.max(e / want.abs());
        }
    }
    (abs, rel)
}

// The composites exactly as the language builds them (`Builder::sigmoid`, …).
fn sigmoid(b: &mut Builder, x: ValueId) -> ValueId {
    b.sigmoid(x)
}

fn gelu(b: &mut Builder, x: ValueId) -> ValueId {
    b.gelu(x)
}

fn softplus(b: &mut Builder, x: ValueId) -> ValueId {
    b.softplus(x)
}

fn erf64(x: f64) -> f64 {
    UnaryOp::Erf.apply(x)
}

struct Case {
    name: &'static str,
    xs: Vec<f32>,
    build: fn(&mut Builder, ValueId) -> ValueId,
    exact: fn(f64) -> f64,
    rel_floor: f64,
    /// Bounds asserted: (absolute, relative).
    max: (f64, f64),
}

#[test]
fn vector_math_accuracy() {
    const N: usize = 1 << 20;
    let mut log_xs = logspace(1e-37, 3e38, N);
    log_xs.extend(linspace(0.5, 2.0, N));
    #[rustfmt::skip]
    let cases = vec![
        Case { name: "exp on [-87.3, 88.7]", xs: linspace(-87.3, 88.7, N), build: |b, x| b.exp(x), exact: f64::exp, rel_floor: 0.0, max: (f64::INFINITY, 3e-7) },
        Case { name: "exp on [-103, -87.3] (subnormal results)", xs: linspace(-103.0, -87.3, N), build: |b, x| b.exp(x), exact: f64::exp, rel_floor: 0.0, max: (1.5e-45, 1.0) },
        Case { name: "log on [1e-37, 3e38] and [0.5, 2]", xs: log_xs, build: |b, x| b.log(x), exact: f64::ln, rel_floor: 1e-3, max: (5e-6, 2e-7) },
        Case { name: "tanh on [-20, 20]", xs: linspace(-20.0, 20.0, N), build: |b, x| b.unary(UnaryOp::Tanh, x), exact: f64::tanh, rel_floor: 1e-6, max: (1e-6, 1e-6) },
        Case { name: "tanh on [-1e-3, 1e-3]", xs: linspace(-1e-3, 1e-3, N), build: |b, x| b.unary(UnaryOp::Tanh, x), exact: f64::tanh, rel_floor: 1e-9, max: (1e-9, 3e-7) },
        Case { name: "erf on [-10, 10]", xs: linspace(-10.0, 10.0, N), build: |b, x| b.unary(UnaryOp::Erf, x), exact: erf64, rel_floor: 1e-3, max: (1e-6, 3e-6) },
        Case { name: "sin on [-100, 100]", xs: linspace(-100.0, 100.0, N), build: |b, x| b.unary(UnaryOp::Sin, x), exact: f64::sin, rel_floor: 1e-3, max: (2e-7, 3e-7) },
        Case { name: "cos on [-100, 100]", xs: linspace(-100.0, 100.0, N), build: |b, x| b.unary(UnaryOp::Cos, x), exact: f64::cos, rel_floor: 1e-3, max: (2e-7, 3e-7) },
        Case { name: "sin on [-1e4, 1e4]", xs: linspace(-1e4, 1e4, N), build: |b, x| b.unary(UnaryOp::Sin, x), exact: f64::sin, rel_floor: 1e-3, max: (2e-7, 3e-7) },
        Case { name: "sigmoid on [-69, 40]", xs: linspace(-69.0, 40.0, N), build: sigmoid, exact: |x| 1.0 / (1.0 + (-x).exp()), rel_floor: 0.0, max: (1e-6, 1e-6) },
        Case { name: "gelu on [-10, 10]", xs: linspace(-10.0, 10.0, N), build: gelu, exact: |x| 0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2)), rel_floor: 1e-2, max: (2e-6, 5e-5) },
        Case { name: "gelu derivative on [-10, 10]", xs: linspace(-10.0, 10.0, N), build: |b, x| b.unary(UnaryOp::GeluDerivative, x), exact: |x| UnaryOp::GeluDerivative.apply(x), rel_floor: 1e-2, max: (5e-7, 2e-5) },
        Case { name: "softplus on [-80, 80]", xs: linspace(-80.0, 80.0, N), build: softplus, exact: |x| x.max(0.0) + (-x.abs()).exp().ln_1p(), rel_floor: 0.1, max: (1e-6, 1e-6) },
    ];
    let mut failed = Vec::new();
    println!("| function and range | points | max abs error | max rel error |");
    println!("|---|---:|---:|---:|");
    for c in &cases {
        let ys = jit(&c.xs, c.build);
        let (abs, rel) = errors(&c.xs, &ys, c.exact, c.rel_floor);
        println!("| {} | {} | {abs:.2e} | {rel:.2e} (values of magnitude ≥ {:e}) |", c.name, c.xs.len(), c.rel_floor);
        if abs > c.max.0 || rel > c.max.1 {
            failed.push(format!("{}: abs {abs:e} rel {rel:e}, bounds {:?}", c.name, c.max));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// `build` by the JIT with and without the sixteen-lane math functions.
fn jit_both_forms(xs: &[f32], build: fn(&mut Builder, ValueId) -> ValueId) -> (Vec<f32>, Vec<f32>) {
    use std::sync::atomic::Ordering;
    let allowed = &nnc_compiler::codegen::WIDE_MATH;
    allowed.store(false, Ordering::Relaxed);
    let inline = jit(xs, build);
    allowed.store(true, Ordering::Relaxed);
    (jit(xs, build), inline)
}

/// On a machine with AVX-512 the generated code computes exp, tanh, sigmoid and erf
/// sixteen lanes at a time in precompiled functions; they must give the same
/// bits as the inline four-lane forms, special values and the edges of the
/// clamped ranges included, and however the elements fall into groups.
#[test]
fn sixteen_lane_math_matches_the_inline_forms_bit_for_bit() {
    let mut xs = vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-45,
        -1e-45,
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        88.722_83,
        88.722_84,
        88.8,
        -104.0,
        -104.5,
        -87.4,
        7.905_311,
        -7.905_311,
        4e-4,
        -4e-4,
        3.999e-4,
        4.0,
        -4.0,
    ];
    xs.extend(linspace(-120.0, 120.0, 2001));
    xs.extend(logspace(1e-9, 1e3, 501));
    // 2525 elements: loops of four groups, leftover groups and a partial one.
    assert_eq!(xs.len() % 16, 13);
    type UnaryCase = (&'static str, fn(&mut Builder, ValueId) -> ValueId);
    #[rustfmt::skip]
    let cases: [UnaryCase; 7] = [
        ("exp", |b, x| b.exp(x)), ("tanh", |b, x| b.unary(UnaryOp::Tanh, x)), ("erf", |b, x| b.unary(UnaryOp::Erf, x)),
        ("sigmoid", sigmoid), ("gelu", gelu), ("gelu derivative", |b, x| b.unary(UnaryOp::GeluDerivative, x)), ("softplus", softplus),
    ];
    for (name, build) in cases {
        let (wide, inline) = jit_both_forms(&xs, build);
        for ((&x, w), i) in xs.iter().zip(&wide).zip(&inline) {
            let same = w.to_bits() == i.to_bits() || (w.is_nan() && i.is_nan());
            assert!(same, "{name}({x:e}): {w:e} with sixteen lanes, {i:e} inline");
        }
    }
}
