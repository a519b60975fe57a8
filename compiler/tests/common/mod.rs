//! Helpers shared by the JIT-vs-reference tests: random inputs, graph
//! building, comparison with the float64 interpreter.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use nnc_compiler::ast::Span;
use nnc_compiler::builder::Builder;
use nnc_compiler::codegen::{CodegenError, CompileOptions, CompiledGraph};
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{Graph, InputKind, Shape, TensorType, ValueId};

/// Threads the compiled code may use (as `NNC_THREADS` or the machine sets them).
pub fn threads() -> usize {
    let env = std::env::var("NNC_THREADS").ok().and_then(|s| s.trim().parse().ok());
    env.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether this test target compiles bounds-checked code: the
/// `jit_vs_reference_checked` target runs the `jit_vs_reference` cases again
/// so, each access compared with its buffer's extent.
pub fn bounds_checked() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_checked")
}

/// Compile `g` as this target does (`bounds_checked`).
pub fn compile(g: &Graph, updates: &[(usize, ValueId)]) -> Result<CompiledGraph, CodegenError> {
    CompiledGraph::compile_with(g, updates, CompileOptions { bounds_checked: bounds_checked() })
}

/// Run `jit` once; in a bounds-checked build, no access may leave its buffer.
pub fn run(jit: &mut CompiledGraph) {
    jit.run();
    assert_eq!(jit.bounds_fault(), None, "an access outside its buffer: {:?}", jit.kernel_summary());
}

/// Deterministic pseudo-random numbers (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

/// Value range of every input.
#[derive(Clone, Copy)]
pub enum Fill {
    Signed,
    /// Uniform in [-0.25, 0.25] (deep products stay well inside f32 precision).
    Small,
    Positive,
    /// Small integers in [-3, 3] (exact ties for max / eq, integer exponents).
    Ints,
}

pub fn input(b: &mut Builder, name: &str, dims: &[usize]) -> ValueId {
    b.input(name, InputKind::Data, TensorType::f32(Shape::known(dims)))
}

/// Build a graph with `f`, which receives a builder and returns the outputs.
pub fn graph(f: impl FnOnce(&mut Builder) -> Vec<ValueId>) -> Graph {
    let mut g = Graph::default();
    let mut b = Builder::new(&mut g, Span::default());
    let outs = f(&mut b);
    assert!(b.internal_error.is_none(), "shape error building the test graph: {:?}", b.internal_error);
    g.output_names = outs.iter().map(|o| format!("out{}", o.0)).collect();
    g.outputs = outs;
    g
}

/// Fill the JIT's inputs and return the same values (as f64) for the interpreter.
pub fn fill(jit: &mut CompiledGraph, g: &Graph, fill: Fill, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let mut inputs = Inputs::new();
    for (id, name, _) in g.inputs() {
        let dims = g.shape(id).concrete().expect("known dims");
        let i = jit.input_index(name).expect("input exists");
        let buf = jit.input_mut(i);
        for v in buf.iter_mut() {
            *v = match fill {
                Fill::Signed => rng.range(-2.0, 2.0) as f32,
                Fill::Small => rng.range(-0.25, 0.25) as f32,
                Fill::Positive => rng.range(0.05, 3.0) as f32,
                Fill::Ints => (rng.range(-3.0, 4.0).floor()) as f32,
            };
        }
        let data: Vec<f64> = buf.iter().map(|&v| f64::from(v)).collect();
        inputs.insert(name.to_string(), ArrayD::from_shape_vec(IxDyn(&dims), data).expect("shape"));
    }
    inputs
}

/// Largest error of `got` against `want`, relative to `|want| + scale`, where
/// `scale` is `atol_rel` times the largest magnitude in `want`.
pub fn compare(got: &[f32], want: &ArrayD<f64>, atol_rel: f64) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("length {} vs {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())) * atol_rel;
    for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
        let g = f64::from(g);
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-5 * w.abs() + scale + 1e-30;
        if !ok {
            return Err(format!("element {i}: jit {g} vs reference {w}"));
        }
    }
    Ok(())
}

/// Compile, run on random inputs, and compare every output with the interpreter.
pub fn check_with(g: &Graph, f: Fill, atol_rel: f64, seed: u64) -> CompiledGraph {
    let mut jit = compile(g, &[]).unwrap_or_else(|e| panic!("compile failed: {e}\n{g:#?}"));
    let inputs = fill(&mut jit, g, f, seed);
    run(&mut jit);
    let want = interp::run(g, &inputs).expect("reference run");
    for (i, w) in want.iter().enumerate() {
        if let Err(e) = compare(jit.output(i), w, atol_rel) {
            panic!("output {i}: {e}\ngraph: {:#?}", g.nodes.iter().map(|n| (&n.op, n.ty.to_string())).collect::<Vec<_>>());
        }
    }
    jit
}

pub fn check(g: &Graph, f: Fill) -> CompiledGraph {
    check_with(g, f, 1e-6, 7)
}
