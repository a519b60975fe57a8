//! Every elementwise op and reduction at the edges (0, −0, ±1e-9, ±1, ±20,
//! ±88, ±1e4, ±∞, NaN, huge logits): value, first and (for smooth ops)
//! second derivative, in the float64 reference interpreter and in compiled
//! code, against the table `data/edge_values.txt`. The table is float64, as
//! PyTorch defines each op and its derivative, and is made by
//! `data/edge_values.py` (which checks it against mpmath); this test does not
//! need Python.

use ndarray::{ArrayD, IxDyn};
use nnc_compiler::ast::Span;
use nnc_compiler::autodiff;
use nnc_compiler::codegen::CompiledGraph;
use nnc_compiler::elaborate::Session;
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{DType, Graph, Shape, TensorType};
use nnc_compiler::syntax;

const TABLE: &str = include_str!("data/edge_values.txt");

/// One record of the table: an nnc function and what it should give.
struct Case {
    name: String,
    function: String,
    /// Each argument: its name in the table, dims and values.
    inputs: Vec<(String, Vec<usize>, Vec<f64>)>,
    value: Vec<Option<f64>>,
    /// d sum(output) / d argument, by argument name.
    first: Vec<(String, Vec<Option<f64>>)>,
    /// d sum(first) / d argument (the Hessian times ones), by argument name.
    second: Vec<(String, Vec<Option<f64>>)>,
    /// Absolute error allowed in compiled results where float32 cannot do
    /// better with the op's formula (the table says why, op by op).
    f32_atol: f64,
}

/// A number of the table; `None` for "-" (not recorded).
fn number(s: &str) -> Option<f64> {
    (s != "-").then(|| s.parse().unwrap_or_else(|_| panic!("bad number {s:?} in the table")))
}

fn numbers<'a>(words: impl Iterator<Item = &'a str>) -> Vec<Option<f64>> {
    words.map(number).collect()
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut lines = TABLE.lines().filter(|l| !l.starts_with('#'));
    while let Some(head) = lines.next() {
        let name = head.strip_prefix("case ").unwrap_or_else(|| panic!("expected `case`, found {head:?}")).to_string();
        let function = lines.next().expect("the function").to_string();
        let mut case = Case { name, function, inputs: Vec::new(), value: Vec::new(), first: Vec::new(), second: Vec::new(), f32_atol: 0.0 };
        for line in lines.by_ref().take_while(|l| *l != "end") {
            let mut words = line.split(' ');
            match words.next() {
                Some("in") => {
                    let arg = words.next().expect("argument").to_string();
                    let dims = words.next().expect("dims").split(',').map(|d| d.parse().expect("dim")).collect();
                    let values = numbers(words).into_iter().map(|v| v.expect("an input is recorded")).collect();
                    case.inputs.push((arg, dims, values));
                }
                Some("value") => case.value = numbers(words),
                Some("f32atol") => case.f32_atol = numbers(words).first().copied().flatten().expect("a tolerance"),
                Some("d1") => case.first.push((words.next().expect("argument").to_string(), numbers(words))),
                Some("d2") => case.second.push((words.next().expect("argument").to_string(), numbers(words))),
                other => panic!("unknown record {other:?} in case {}", case.name),
            }
        }
        cases.push(case);
    }
    cases
}

/// What one output of a case's graph should be: its name and values (`None`: not recorded).
type Expected = (String, Vec<Option<f64>>);

/// The case's graph with outputs: value, then each recorded first
/// derivative, then each recorded second derivative; and what each should be.
fn graph_of(session: &Session, case: &Case) -> (Graph, Inputs, Vec<Expected>) {
    let types: Vec<TensorType> =
        case.inputs.iter().map(|(_, dims, _)| TensorType { shape: Shape::known(dims), dtype: DType::F32 }).collect();
    let mut g = session.function_graph(&case.name, &types).unwrap_or_else(|d| panic!("{}: {d:?}", case.name));
    let arg = |g: &Graph, name: &str| {
        let i = case.inputs.iter().position(|(a, _, _)| a == name).expect("a recorded argument");
        g.input(&format!("arg{i}")).expect("the argument's input")
    };
    let out = g.outputs[0];
    let mut outputs = vec![out];
    let mut expected = vec![("value".to_string(), case.value.clone())];
    let mut firsts = Vec::new();
    for (name, want) in &case.first {
        let x = arg(&g, name);
        let d = autodiff::grad(&mut g, out, &[x], Span::default()).expect("first derivative")[0];
        outputs.push(d);
        firsts.push((name, d));
        expected.push((format!("d/d{name}"), want.clone()));
    }
    for (name, want) in &case.second {
        let x = arg(&g, name);
        let &(_, d) = firsts.iter().find(|(n, _)| *n == name).expect("a first derivative for each second");
        let dd = autodiff::grad(&mut g, d, &[x], Span::default()).expect("second derivative")[0];
        outputs.push(dd);
        expected.push((format!("d²/d{name}²"), want.clone()));
    }
    g.output_names = (0..outputs.len()).map(|i| format!("out{i}")).collect();
    g.outputs = outputs;
    let mut inputs = Inputs::new();
    for (i, (_, dims, values)) in case.inputs.iter().enumerate() {
        inputs.insert(format!("arg{i}"), ArrayD::from_shape_vec(IxDyn(dims), values.clone()).expect("the input's shape"));
    }
    (g, inputs, expected)
}

/// The reference interpreter computes in float64: it must agree to float64
/// rounding (1e-12 of the result, or of 1 for smaller results: a softmax
/// derivative at logits ±1e4 cancels to about 1e-13, PyTorch's formula too).
fn reference_agrees(got: f64, want: f64) -> bool {
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= 1e-12 * want.abs().max(1.0)
}

/// Compiled code is float32, run as training steps run it, with subnormals
/// flushed to zero: it must agree with the float64 value rounded to float32
/// (∞ past 3.4e38) to a few float32 ulp of the result, and of `scale` (the
/// largest finite input of the element's row, at least 1, for reductions:
/// `logsumexp([-20, -1e-9])` is −1e-9 + log(1 + 2e-9), whose second term
/// float32 cannot hold, as PyTorch's float32 cannot), or be 0 where the
/// float64 value is within 1e-37 of 0 (a flushed subnormal, times a small
/// factor); plus the case's `f32_atol`.
fn compiled_agrees(got: f32, want: f64, scale: f64, atol: f64) -> bool {
    let (got, rounded) = (f64::from(got), f64::from(want as f32));
    let tolerance = 3e-6 * rounded.abs() + 2.4e-7 * scale + atol + 1e-37;
    (got.is_nan() && want.is_nan()) || got == rounded || (got - rounded).abs() <= tolerance
}

/// The scale of `compiled_agrees` for element `j` of an output with `len`
/// elements: 0 for elementwise cases (one input element per output element),
/// else the largest finite magnitude in the element's row of the first input.
fn row_scale(case: &Case, j: usize, len: usize) -> f64 {
    let (_, dims, values) = &case.inputs[0];
    let [rows, width] = dims[..] else { return 0.0 };
    let row = if len == rows { j } else { j / width.max(1) };
    let finite = values[row * width..(row + 1) * width].iter().filter(|v| v.is_finite());
    finite.fold(1.0f64, |m, v| m.max(v.abs()))
}

/// The inputs behind element `j` of an output with `len` elements, for
/// messages: the element itself for elementwise outputs, else its row.
fn point(case: &Case, j: usize, len: usize) -> String {
    let show = |(arg, _, v): &(String, Vec<usize>, Vec<f64>)| {
        let width = v.len() / len.max(1);
        if width <= 1 {
            format!("{arg} = {:?}", v[j])
        } else {
            format!("{arg} = {:?}", &v[j * width..(j + 1) * width])
        }
    };
    format!("element {j} ({})", case.inputs.iter().map(show).collect::<Vec<_>>().join(", "))
}

#[test]
fn values_and_derivatives_at_the_edges_match_the_table() {
    let cases = cases();
    let program: String = cases.iter().map(|c| format!("{}\n", c.function)).collect();
    let program = syntax::parse(&program).expect("the table's functions parse");
    let session = Session::new(&program).expect("the table's functions elaborate");
    let mut failures = Vec::new();
    for case in &cases {
        let (g, inputs, expected) = graph_of(&session, case);
        let reference = interp::run(&g, &inputs).unwrap_or_else(|e| panic!("{}: reference: {e}", case.name));
        let optimized = nnc_compiler::opt::optimize(&g);
        let mut jit = CompiledGraph::compile(&optimized, &[]).unwrap_or_else(|e| panic!("{}: compile: {e}", case.name));
        jit.set_flush_subnormals(true);
        for (i, name) in jit.input_names().iter().enumerate() {
            let v: Vec<f32> = inputs[name].iter().map(|&v| v as f32).collect();
            jit.input_mut(i).copy_from_slice(&v);
        }
        jit.run();
        for (k, (what, want)) in expected.iter().enumerate() {
            for (j, w) in want.iter().enumerate() {
                let Some(w) = *w else { continue };
                let r = reference[k].as_slice().expect("contiguous")[j];
                let c = jit.output(k)[j];
                let at = || point(case, j, want.len());
                if !reference_agrees(r, w) {
                    failures.push(format!("{} {what} at {}: reference {r:?}, want {w:?}", case.name, at()));
                }
                if !compiled_agrees(c, w, row_scale(case, j, want.len()), case.f32_atol) {
                    failures.push(format!("{} {what} at {}: compiled {c:?}, want {w:?}", case.name, at()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// What the language reference says of compiled steps: subnormal results and
/// operands are 0 (flush-to-zero and denormals-are-zero, as XLA on CPUs), so
/// exp(−88) is 0 (6.1e-39 in float64) and sqrt(1e-40) is 0 with derivative ∞;
/// with subnormals kept (the default of `CompiledGraph`) exp(−88) is right to
/// a subnormal ulp.
#[test]
fn compiled_steps_flush_subnormals_to_zero() {
    let program = syntax::parse("fn e(x: [2]) -> [2] = exp(x)\nfn s(x: [2]) -> [2] = sqrt(x)\n").expect("parse");
    let session = Session::new(&program).expect("elaborate");
    let run = |name: &str, xs: [f32; 2], flush: bool| -> (Vec<f32>, Vec<f32>) {
        let mut g = session.function_graph(name, &[TensorType::f32(Shape::known(&[2]))]).expect("graph");
        let (out, x) = (g.outputs[0], g.input("arg0").expect("input"));
        let d = autodiff::grad(&mut g, out, &[x], Span::default()).expect("derivative")[0];
        g.outputs = vec![out, d];
        g.output_names = vec!["f".into(), "df".into()];
        let mut jit = CompiledGraph::compile(&nnc_compiler::opt::optimize(&g), &[]).expect("compile");
        jit.set_flush_subnormals(flush);
        jit.input_mut(0).copy_from_slice(&xs);
        jit.run();
        (jit.output(0).to_vec(), jit.output(1).to_vec())
    };
    let (e, _) = run("e", [-88.0, -87.0], true);
    assert_eq!(e[0], 0.0, "exp(-88) with subnormals flushed");
    assert!((f64::from(e[1]) - (-87f64).exp()).abs() < 1e-6 * (-87f64).exp(), "exp(-87) = {} is normal", e[1]);
    let (e, _) = run("e", [-88.0, -87.0], false);
    assert!((f64::from(e[0]) - (-88f64).exp()).abs() <= 1.5e-45, "exp(-88) = {:e} with subnormals kept", e[0]);
    let (s, ds) = run("s", [1e-40, 1e-36], true);
    assert_eq!((s[0], ds[0]), (0.0, f32::INFINITY), "sqrt(1e-40) and its derivative with subnormals flushed");
    assert!((s[1] - 1e-18).abs() < 1e-24, "sqrt(1e-36) = {}", s[1]);
}
