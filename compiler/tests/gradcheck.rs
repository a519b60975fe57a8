//! Every primitive's derivative rule against float64 central finite
//! differences, first and second order (the gradient IR differentiated again).
//! One row per primitive, as JAX's `grad_test_spec` table.

use ndarray::{ArrayD, IxDyn};
use nnc_compiler::ast::Span;
use nnc_compiler::autodiff;
use nnc_compiler::builder::Builder;
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{Graph, InputKind, Shape, TensorType, ValueId};
use nnc_compiler::ops::{BinaryOp, Op, ReduceKind, UnaryOp, Window};

/// A small deterministic generator (tests must not depend on a seed crate).
struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
    fn array(&mut self, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
        ArrayD::from_shape_fn(IxDyn(shape), |_| self.uniform(lo, hi))
    }
}

/// One test row: operand shapes and value ranges, and the op applied to them.
struct Case {
    name: &'static str,
    operands: Vec<(Vec<usize>, f64, f64)>,
    build: fn(&mut Builder, &[ValueId]) -> ValueId,
}

fn case(name: &'static str, operands: Vec<(Vec<usize>, f64, f64)>, build: fn(&mut Builder, &[ValueId]) -> ValueId) -> Case {
    Case { name, operands, build }
}

fn cases() -> Vec<Case> {
    use BinaryOp::*;
    use UnaryOp::*;
    let m = |s: &[usize]| (s.to_vec(), -2.0, 2.0);
    let pos = |s: &[usize]| (s.to_vec(), 0.5, 2.0);
    vec![
        case("neg", vec![m(&[3, 4])], |b, a| b.unary(Neg, a[0])),
        case("exp", vec![m(&[3, 4])], |b, a| b.unary(Exp, a[0])),
        case("log", vec![pos(&[5])], |b, a| b.unary(Log, a[0])),
        case("sqrt", vec![pos(&[2, 3])], |b, a| b.unary(Sqrt, a[0])),
        case("abs", vec![m(&[7])], |b, a| b.unary(Abs, a[0])),
        case("tanh", vec![m(&[3, 3])], |b, a| b.unary(Tanh, a[0])),
        case("erf", vec![m(&[4, 2])], |b, a| b.unary(Erf, a[0])),
        case("gelu", vec![m(&[4, 3])], |b, a| b.unary(Gelu, a[0])),
        case("gelu_derivative", vec![m(&[4, 3])], |b, a| b.unary(GeluDerivative, a[0])),
        case("sin", vec![m(&[4, 3])], |b, a| b.unary(Sin, a[0])),
        case("cos", vec![m(&[4, 3])], |b, a| b.unary(Cos, a[0])),
        case("add", vec![m(&[3, 4]), m(&[3, 4])], |b, a| b.binary(Add, a[0], a[1])),
        case("sub", vec![m(&[3, 4]), m(&[3, 4])], |b, a| b.binary(Sub, a[0], a[1])),
        case("mul", vec![m(&[3, 4]), m(&[3, 4])], |b, a| b.binary(Mul, a[0], a[1])),
        case("div", vec![m(&[3, 4]), pos(&[3, 4])], |b, a| b.binary(Div, a[0], a[1])),
        case("pow", vec![pos(&[5]), m(&[5])], |b, a| b.binary(Pow, a[0], a[1])),
        case("max", vec![m(&[6, 5]), m(&[6, 5])], |b, a| b.binary(Max, a[0], a[1])),
        case("broadcast_leading", vec![m(&[4])], |b, a| b.broadcast(a[0], &Shape::known(&[3, 4]))),
        case("broadcast_middle", vec![m(&[3, 1, 5])], |b, a| b.broadcast(a[0], &Shape::known(&[2, 3, 4, 5]))),
        case("reshape", vec![m(&[2, 6])], |b, a| b.reshape(a[0], &Shape::known(&[3, 4]))),
        case("transpose", vec![m(&[2, 3, 4])], |b, a| b.transpose(a[0], &[2, 0, 1])),
        case("slice", vec![m(&[5, 3])], |b, a| b.slice(a[0], 0, 1, 4)),
        case("pad", vec![m(&[2, 3])], |b, a| b.pad(a[0], 1, 2, 1)),
        case("concat", vec![m(&[2, 3]), m(&[2, 1]), m(&[2, 2])], |b, a| b.concat(a, 1)),
        case("reduce_sum", vec![m(&[3, 4, 5])], |b, a| b.reduce_sum(a[0], &[0, 2])),
        case("reduce_max", vec![m(&[3, 7])], |b, a| b.reduce_max(a[0], &[1])),
        case("unfold", vec![m(&[2, 7, 6])], |b, a| b.unfold(a[0], Window { kernel: [3, 2], stride: [2, 1], dilation: [1, 2], lead: 0 })),
        case("unfold_lead", vec![m(&[2, 3, 5, 4])], |b, a| {
            b.unfold(a[0], Window { kernel: [2, 3], stride: [1, 1], dilation: [2, 1], lead: 1 })
        }),
        case("fold", vec![m(&[3, 2, 2, 3, 4])], |b, a| {
            b.fold(a[0], Window { kernel: [3, 2], stride: [2, 1], dilation: [1, 2], lead: 0 }, [7, 6])
        }),
        case("matmul", vec![m(&[3, 5]), m(&[5, 2])], |b, a| b.matmul(a[0], a[1])),
        case("matmul_batched", vec![m(&[2, 3, 4]), m(&[2, 4, 3])], |b, a| b.matmul(a[0], a[1])),
        case("solve", vec![(vec![4, 4], -1.0, 1.0), m(&[4, 2])], |b, a| {
            // A well-conditioned matrix: A + 4I.
            let eye = {
                let s = Shape::known(&[4, 4]);
                let r = b.iota(&s, 0);
                let c = b.iota(&s, 1);
                b.binary(Eq, r, c)
            };
            let four = b.scale(eye, 4.0);
            let a2 = b.add(a[0], four);
            b.solve(a2, a[1])
        }),
    ]
}

/// Build `loss = Σ w ⊙ op(inputs)` with a fixed random weight `w`, so every
/// output element matters and the seed is not all ones.
fn build(c: &Case, rng: &mut Lcg) -> (Graph, Vec<ValueId>, ValueId, Inputs) {
    let mut g = Graph::default();
    let mut inputs = Inputs::new();
    let mut b = Builder::new(&mut g, Span::default());
    let mut ids = Vec::new();
    for (i, (shape, lo, hi)) in c.operands.iter().enumerate() {
        let name = format!("a{i}");
        ids.push(b.input(&name, InputKind::Data, TensorType::f32(Shape::known(shape))));
        inputs.insert(name, rng.array(shape, *lo, *hi));
    }
    let out = (c.build)(&mut b, &ids);
    let out_shape = b.shape(out);
    let dims = out_shape.concrete().unwrap();
    let w = b.input("w", InputKind::Data, TensorType::f32(out_shape.clone()));
    inputs.insert("w".into(), rng.array(&dims, -1.0, 1.0));
    let prod = b.mul(out, w);
    let loss = b.sum_all(prod);
    assert!(b.internal_error.is_none(), "{}: {:?}", c.name, b.internal_error);
    (g, ids, loss, inputs)
}

fn eval_scalar(g: &Graph, out: ValueId, inputs: &Inputs) -> f64 {
    let mut g = g.clone();
    g.outputs = vec![out];
    interp::run(&g, inputs).unwrap()[0].iter().copied().next().unwrap()
}

/// Central differences of `out` with respect to every element of input `name`.
fn numeric_grad(g: &Graph, out: ValueId, inputs: &Inputs, name: &str) -> ArrayD<f64> {
    let h = 1e-6;
    let base = inputs[name].clone();
    let mut grad = ArrayD::zeros(base.raw_dim());
    for (i, slot) in grad.iter_mut().enumerate() {
        let mut plus = inputs.clone();
        plus.get_mut(name).unwrap().as_slice_mut().unwrap()[i] += h;
        let mut minus = inputs.clone();
        minus.get_mut(name).unwrap().as_slice_mut().unwrap()[i] -= h;
        *slot = (eval_scalar(g, out, &plus) - eval_scalar(g, out, &minus)) / (2.0 * h);
    }
    grad
}

fn assert_close(name: &str, what: &str, analytic: &ArrayD<f64>, numeric: &ArrayD<f64>, tol: f64) {
    assert_eq!(analytic.shape(), numeric.shape(), "{name} {what}: shape");
    for (a, n) in analytic.iter().zip(numeric.iter()) {
        let err = (a - n).abs() / (1.0 + n.abs());
        assert!(err < tol, "{name} {what}: analytic {a} vs numeric {n} (rel. error {err:.2e})");
    }
}

#[test]
fn first_order_gradients_match_finite_differences() {
    let mut rng = Lcg(7);
    for c in cases() {
        let (mut g, ids, loss, inputs) = build(&c, &mut rng);
        let grads = autodiff::grad(&mut g, loss, &ids, Span::default()).unwrap();
        for (i, &gid) in grads.iter().enumerate() {
            let name = format!("a{i}");
            let mut gg = g.clone();
            gg.outputs = vec![gid];
            let analytic = interp::run(&gg, &inputs).unwrap().remove(0);
            let numeric = numeric_grad(&g, loss, &inputs, &name);
            assert_close(c.name, &format!("d/d{name}"), &analytic, &numeric, 1e-6);
        }
    }
}

/// Differentiate the gradient again: for a random direction v, the gradient of
/// ⟨∇f, v⟩ is the Hessian-vector product, checked against finite differences
/// of the first gradient.
#[test]
fn second_order_gradients_match_finite_differences() {
    let mut rng = Lcg(11);
    for c in cases() {
        // The second derivative of these is zero or a delta at a kink; FD says nothing more.
        if ["abs", "max", "reduce_max"].contains(&c.name) {
            continue;
        }
        let (mut g, ids, loss, mut inputs) = build(&c, &mut rng);
        let grads = autodiff::grad(&mut g, loss, &ids, Span::default()).unwrap();
        check_hessian_vector_product(c.name, &mut g, ids[0], "a0", grads[0], &mut inputs, &mut rng);
    }
}

/// For a random direction v, the gradient of ⟨grad, v⟩ with respect to `x`
/// (input `name`) — the Hessian-vector product, by differentiating the
/// gradient graph again — against finite differences of ⟨grad, v⟩.
fn check_hessian_vector_product(what: &str, g: &mut Graph, x: ValueId, name: &str, grad: ValueId, inputs: &mut Inputs, rng: &mut Lcg) {
    let shape = g.shape(x).clone();
    let dims = shape.concrete().unwrap();
    let mut b = Builder::new(g, Span::default());
    let v = b.input("v", InputKind::Data, TensorType::f32(shape));
    let dot = b.mul(grad, v);
    let gv = b.sum_all(dot);
    inputs.insert("v".into(), rng.array(&dims, -1.0, 1.0));
    let hv = autodiff::grad(g, gv, &[x], Span::default()).unwrap()[0];
    let mut hg = g.clone();
    hg.outputs = vec![hv];
    let analytic = interp::run(&hg, inputs).unwrap().remove(0);
    let numeric = numeric_grad(g, gv, inputs, name);
    assert_close(what, "Hessian-vector product", &analytic, &numeric, 1e-5);
}

#[test]
fn optimized_gradient_graph_computes_the_same_values() {
    let mut rng = Lcg(3);
    for c in cases() {
        let (mut g, ids, loss, inputs) = build(&c, &mut rng);
        let grads = autodiff::grad(&mut g, loss, &ids, Span::default()).unwrap();
        g.outputs = grads;
        let before = interp::run(&g, &inputs).unwrap();
        let after = interp::run(&nnc_compiler::opt::optimize(&g), &inputs).unwrap();
        for (x, y) in before.iter().zip(&after) {
            assert_close(c.name, "optimized", x, y, 1e-12);
        }
    }
}

/// stop_gradient is not differentiable in the finite-difference sense on
/// purpose: d/da Σ w·(sg(a)·a) = w·a, half of the true derivative 2·w·a.
#[test]
fn stop_gradient_blocks_the_derivative_through_it() {
    let mut rng = Lcg(5);
    let mut g = Graph::default();
    let mut b = Builder::new(&mut g, Span::default());
    let a = b.input("a", InputKind::Data, TensorType::f32(Shape::known(&[4])));
    let s = b.stop_gradient(a);
    let p = b.mul(s, a);
    let loss = b.sum_all(p);
    let da = autodiff::grad(&mut g, loss, &[a], Span::default()).unwrap()[0];
    g.outputs = vec![da];
    let x = rng.array(&[4], -2.0, 2.0);
    let inputs: Inputs = [("a".to_string(), x.clone())].into_iter().collect();
    let got = interp::run(&g, &inputs).unwrap().remove(0);
    assert_close("stop_gradient", "d/da", &got, &x, 1e-15);
}

#[test]
fn erf_matches_known_values() {
    // Reference values of erf to 16 digits.
    for (x, want) in [
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.5, 0.999593047982555),
        (4.5, 0.9999999998033839),
        (-1.3, -0.9340079449406524),
    ] {
        let got = nnc_compiler::ops::elementwise::erf(x);
        assert!((got - want).abs() < 1e-14, "erf({x}) = {got}, want {want}");
    }
    let _ = Op::Constant(0.0);
    let _ = ReduceKind::Sum;
}

/// Embedding lookup and its transpose: ids are data (no gradient), repeated
/// ids accumulate. `tanh` after the op makes the second derivative non-zero,
/// so the Hessian-vector product also goes through both rules twice.
#[test]
fn gather_and_scatter_add_gradients() {
    use nnc_compiler::ir::DType;
    let ids_value = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![4.0, 0.0, 4.0, 2.0, 1.0, 4.0]).unwrap();
    let ids_type = TensorType { shape: Shape::known(&[2, 3]), dtype: DType::I32 };
    // (op name, float operand shape, build(b, float operand, ids))
    type IndexOp = (&'static str, [usize; 3], fn(&mut Builder, ValueId, ValueId) -> ValueId);
    let ops: [IndexOp; 2] = [
        ("gather", [5, 3, 1], |b, table, ids| b.gather_rows(table, ids)),
        ("scatter_add", [2, 3, 3], |b, values, ids| b.scatter_add(ids, values, 5)),
    ];
    let mut rng = Lcg(5);
    for (name, shape, op) in ops {
        let shape: Vec<usize> = if name == "gather" { shape[..2].to_vec() } else { shape.to_vec() };
        let mut g = Graph::default();
        let mut b = Builder::new(&mut g, Span::default());
        let a = b.input("a0", InputKind::Data, TensorType::f32(Shape::known(&shape)));
        let ids = b.input("ids", InputKind::Data, ids_type.clone());
        let out = op(&mut b, a, ids);
        let t = b.unary(UnaryOp::Tanh, out);
        let out_shape = b.shape(t);
        let w = b.input("w", InputKind::Data, TensorType::f32(out_shape.clone()));
        let prod = b.mul(t, w);
        let loss = b.sum_all(prod);
        assert!(b.internal_error.is_none(), "{name}: {:?}", b.internal_error);
        let mut inputs = Inputs::new();
        inputs.insert("a0".into(), rng.array(&shape, -1.0, 1.0));
        inputs.insert("ids".into(), ids_value.clone());
        inputs.insert("w".into(), rng.array(&out_shape.concrete().unwrap(), -1.0, 1.0));
        let grads = autodiff::grad(&mut g, loss, &[a], Span::default()).unwrap();
        let mut gg = g.clone();
        gg.outputs = vec![grads[0]];
        let analytic = interp::run(&gg, &inputs).unwrap().remove(0);
        assert_close(name, "d/da", &analytic, &numeric_grad(&g, loss, &inputs, "a0"), 1e-6);
        check_hessian_vector_product(name, &mut g, a, "a0", grads[0], &mut inputs, &mut rng);
    }
}
