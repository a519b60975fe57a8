//! Every built-in of the language, through the whole front end: its value
//! against a closed form, its gradient (float64 finite differences, first and
//! second order via the language's own `grad`), and the JIT against the
//! reference interpreter.

use ndarray::{ArrayD, IxDyn};
use nnc_compiler::ast::Span;
use nnc_compiler::autodiff;
use nnc_compiler::codegen::{CompiledGraph, SCAN_STEPS_IN_PLACE};
use nnc_compiler::elaborate::Session;
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{DType, Graph, Shape, TensorType};
use nnc_compiler::ops::{Op, UnaryOp};
use nnc_compiler::syntax;

mod common;
use common::threads;
use std::sync::atomic::Ordering;

const PROGRAM: &str = r#"
fn t_exp(x: [3, 5], w: [3, 5]) -> scalar = sum(w * exp(x))
fn t_log(x: [3, 5], w: [3, 5]) -> scalar = sum(w * log(x * x + 1))
fn t_sqrt(x: [3, 5], w: [3, 5]) -> scalar = sum(w * sqrt(x * x + 0.5))
fn t_abs(x: [3, 5], w: [3, 5]) -> scalar = sum(w * abs(x))
fn t_pow(x: [3, 5], w: [3, 5]) -> scalar = sum(w * pow(x * x + 1, 1.5))
fn t_pow_op(x: [3, 5], w: [3, 5]) -> scalar = sum(w * (x * x + 1) ** 0.7)
fn t_tanh(x: [3, 5], w: [3, 5]) -> scalar = sum(w * tanh(x))
fn t_sigmoid(x: [3, 5], w: [3, 5]) -> scalar = sum(w * sigmoid(x))
fn t_relu(x: [3, 5], w: [3, 5]) -> scalar = sum(w * relu(x))
fn t_gelu(x: [3, 5], w: [3, 5]) -> scalar = sum(w * gelu(x))
fn t_softplus(x: [3, 5], w: [3, 5]) -> scalar = sum(w * softplus(x))
fn t_erf(x: [3, 5], w: [3, 5]) -> scalar = sum(w * erf(x))
fn t_div(x: [3, 5], w: [3, 5]) -> scalar = sum(w / (x * x + 1))
fn t_broadcast(x: [3, 5], w: [5]) -> scalar = sum((x + w) * (x - w))
fn t_sum_axis(x: [B, C], w: [B]) -> scalar = sum(w * sum(x, C))
fn t_mean(x: [3, 5], w: [5]) -> scalar = sum(w * mean(x, 0))
fn t_max(x: [3, 5], w: [3]) -> scalar = sum(w * max(x, -1))
fn t_logsumexp(x: [3, 5], w: [3]) -> scalar = sum(w * logsumexp(x, 1))
fn t_softmax(x: [3, 5], w: [3, 5]) -> scalar = sum(w * softmax(x))
fn t_log_softmax(x: [3, 5], w: [3, 5]) -> scalar = sum(w * log_softmax(x, axis: 0))
fn t_keepdims(x: [3, 5], w: [3, 5]) -> scalar = sum(w * (x - mean(x, 1, keepdims: 1)))
fn t_reshape(x: [3, 5], w: [5, 3]) -> scalar = sum(w * reshape(x, [5, -1]))
fn t_transpose(x: [3, 5], w: [5, 3]) -> scalar = sum(w * transpose(x))
fn t_dot_t(x: [3, 5], w: [5, 3]) -> scalar = sum(w * x.T)
fn t_concat(x: [3, 5], w: [3, 10]) -> scalar = sum(w * concat([x, x * x], 1))
fn t_slice(x: [3, 5], w: [2, 2]) -> scalar = sum(w * x[1:, 2:4])
fn t_index(x: [3, 5], w: [5]) -> scalar = sum(w * x[-1])
fn t_matmul(x: [3, 5], w: [5, 4]) -> scalar = sum(x @ w * (x @ w))
fn t_matvec(x: [3, 5], w: [5]) -> scalar = sum(exp(x @ w * 0.1))
fn t_gather(x: [4, 5], w: [4]) -> scalar = sum(w * gather(x, [0, 4, 2, 2]))
fn t_one_hot(x: [4, 3], w: [4, 3]) -> scalar = sum(w * x * one_hot([2, 0, 1, 2], 3))
fn t_mse(x: [3, 5], w: [3, 5]) -> scalar = mse(x, w)
fn t_ce(x: [4, 5], w: [4, 5]) -> scalar = cross_entropy(x + w, [0, 3, 1, 4])
fn t_ce_smooth(x: [4, 5], w: [4, 5]) -> scalar = cross_entropy(x * w, [0, 3, 1, 4], smoothing: 0.1)
fn t_ce_masked(x: [2, 3, 4], w: [2, 3, 4]) -> scalar = cross_entropy(x * w, [[0, 3, 1], [2, 2, 0]], mask: [[1, 0, 1], [0, 1, 1]])
fn t_l2(x: [3, 5], w: [3, 5]) -> scalar = l2(x * w)
fn t_solve(x: [3, 3], w: [3]) -> scalar = sum(solve(x @ x.T + 3 * eye(3), w) * [1, 2, 3])
fn t_stop(x: [3, 5], w: [3, 5]) -> scalar = sum(w * x * stop_gradient(x))
fn t_zeros(x: [3, 5], w: [3, 5]) -> scalar = sum(w * x + zeros([3, 5]) + ones([5]))
fn t_literal(x: [2, 3], w: [2, 3]) -> scalar = sum(w * x * [[1, 2, 3], [4, 5, 6]])

// Vision: odd sizes, stride > 1, padding, dilation, groups; gradients for
// the input and (with the weight first) for the kernel.
fn t_conv(x: [2, 3, 7, 6], w: [4, 3, 3, 2]) -> scalar = sum(tanh(conv2d(x, w, stride: 2, padding: 1)))
fn t_conv_weight(w: [4, 3, 3, 2], x: [2, 3, 7, 6]) -> scalar = sum(tanh(conv2d(x, w, stride: [2, 1], padding: [0, 1])))
fn t_conv_groups(x: [2, 2, 9, 8], w: [4, 1, 3, 3]) -> scalar = sum(tanh(conv2d(x, w, dilation: 2, groups: 2, padding: [1, 2])))
fn t_conv_groups_weight(w: [4, 1, 3, 3], x: [2, 2, 9, 8]) -> scalar = sum(tanh(conv2d(x, w, dilation: [2, 1], groups: 2)))
fn t_conv_depthwise(x: [2, 4, 6, 5], w: [4, 1, 3, 3]) -> scalar = sum(tanh(conv2d(x, w, groups: 4, padding: 1)))
fn t_conv_depthwise_weight(w: [4, 1, 3, 3], x: [2, 4, 6, 5]) -> scalar = sum(tanh(conv2d(x, w, groups: 4, padding: 1)))
fn t_max_pool(x: [2, 3, 7, 6], w: [2, 3, 4, 3]) -> scalar = sum(w * max_pool(x, 3, stride: 2, padding: 1))
fn t_max_pool2(x: [2, 3, 6, 6], w: [2, 3, 3, 3]) -> scalar = sum(w * max_pool(x, 2))
fn t_avg_pool(x: [2, 3, 7, 6], w: [2, 3, 3, 2]) -> scalar = sum(w * avg_pool(x, 3, stride: 2))
fn t_avg_pool_pad(x: [2, 3, 5, 5], w: [2, 3, 5, 5]) -> scalar = sum(w * avg_pool(x, 3, stride: 1, padding: 1))
fn t_global_avg_pool(x: [2, 3, 4, 5], w: [2, 3]) -> scalar = sum(w * global_avg_pool(x))
fn t_flatten(x: [2, 3, 4], w: [2, 12]) -> scalar = sum(w * flatten(x))
fn t_layer_norm(x: [3, 5], w: [5]) -> scalar = sum(layer_norm(x, w, w * 0.5) * x)
fn t_layer_norm_gamma(w: [5], x: [3, 5]) -> scalar = sum(layer_norm(x, w, w * 0.5) * x)
fn t_layer_norm_axis(x: [2, 3, 4, 2], w: [3]) -> scalar = sum(layer_norm(x, w, w, axis: 1) * x)
fn t_instance_norm(x: [2, 3, 4, 2], w: [3]) -> scalar = sum(instance_norm(x, w, w) * x)
fn t_group_norm(x: [2, 4, 3, 2], w: [4]) -> scalar = sum(group_norm(x, w, w, 2) * x)

// Sequence: embedding rows (repeated ids), causal self-attention, and
// cross-attention with more keys than queries.
fn t_embedding(x: [5, 3], w: [2, 3, 3]) -> scalar = sum(w * tanh(embedding([[4, 0, 4], [2, 1, 4]], x)))
fn t_attention(x: [2, 4, 3], w: [2, 4, 3]) -> scalar = sum(w * attention(x, x * w, tanh(x), mask: causal_mask(4)))
fn t_cross_attention(w: [2, 5, 3], x: [2, 4, 3]) -> scalar = sum(x * attention(x, w, w * w))
fn t_padded_attention(x: [2, 4, 3], w: [2, 4, 3]) -> scalar = sum(w * attention(x, x, x * w, mask: reshape(padding_mask([[5, 6, 0, 0], [7, 0, 8, 9]], 0), [2, 1, 4])))
fn t_sin(x: [3, 5], w: [3, 5]) -> scalar = sum(w * sin(3 * x))
fn t_cos(x: [3, 5], w: [3, 5]) -> scalar = sum(w * cos(3 * x))
fn t_sinusoidal(x: [6, 4], w: [6, 4]) -> scalar = sum(w * x * sinusoidal_positions(6, 4))
fn t_rotary(x: [2, 5, 4], w: [2, 5, 4]) -> scalar = sum(w * rotary(x * w))

// Recurrence, backpropagation through 5-6 steps: an Elman RNN and an LSTM
// (gates as in the notes, state concat(h, c)), with the gradient for the
// inputs, for the weights (handed to every step by `with:`) and through the
// initial state; a reversed scan; a scan over two sequences; two layers
// stacked with a residual connection.
fn elman(h: [N, 4], x: [N, 3], W: [3, 4], U: [4, 4]) -> [N, 4] = tanh(x @ W + h @ U)
// The gates from the pre-activations z and the cell c; the new (h, c).
fn lstm_gates(z: [N, 16], c: [N, 4]) -> [N, 8] {
  let f = sigmoid(z[:, 0:4])
  let i = sigmoid(z[:, 4:8])
  let g = tanh(z[:, 8:12])
  let o = sigmoid(z[:, 12:16])
  let c2 = f * c + i * g
  concat([o * tanh(c2), c2], 1)
}
fn lstm(s: [N, 8], x: [N, 3], W: [3, 16], U: [4, 16]) -> [N, 8] = lstm_gates(x @ W + s[:, 0:4] @ U, s[:, 4:8])
// The LSTM of the examples: the input projection made before the loop, read
// elementwise by the step, with a bias the step adds itself.
fn lstm_zx(s: [N, 8], zx: [N, 16], U: [4, 16], b: [16]) -> [N, 8] = lstm_gates(zx + s[:, 0:4] @ U + b, s[:, 4:8])
fn mix(h: [N, 3], x: [N, 3], y: [N, 3]) -> [N, 3] = h * y + x
fn square(h: [N, 4], x: [N, 4], W: [4, 4], U: [4, 4]) -> [N, 4] = tanh(x @ W + h @ U)
fn t_scan_stacked(x: [2, 5, 3], w: [3, 4]) -> scalar {
  let u = w.T @ w * 0.5
  let h1 = scan(elman, zeros([2, 4]), x, with: [w, u])
  let h2 = h1 + scan(square, zeros([2, 4]), h1, with: [u * 0.7, u.T * 0.4])
  sum(sin(3 * h2))
}
fn t_scan_rnn(x: [2, 6, 3], w: [3, 4]) -> scalar = sum(sin(3 * scan(elman, x[:, 0] @ w, x, with: [w, w.T @ w * 0.5])))
fn t_scan_rnn_weight(w: [3, 4], x: [2, 6, 3]) -> scalar = sum(sin(3 * scan(elman, x[:, 0] @ w, x, with: [w, w.T @ w * 0.5])))
fn t_scan_lstm(x: [2, 5, 3], w: [3, 16]) -> scalar = sum(sin(3 * scan(lstm, zeros([2, 8]), x, with: [w, w[:, 0:4].T @ w])))
// Read through the hidden state only, as the examples do: the backward loop's
// cotangent is a zero padding of dh, read unpadded.
fn t_scan_lstm_hidden(x: [2, 5, 3], w: [3, 16]) -> scalar = sum(sin(3 * scan(lstm, zeros([2, 8]), x, with: [w, w[:, 0:4].T @ w])[:, :, 0:4]))
fn t_scan_lstm_weight(w: [3, 16], x: [2, 5, 3]) -> scalar = sum(sin(3 * scan(lstm, zeros([2, 8]), x, with: [w, w[:, 0:4].T @ w])))
fn t_scan_lstm_zx(x: [2, 5, 16], w: [4, 16]) -> scalar = sum(sin(3 * scan(lstm_zx, zeros([2, 8]), x, with: [w, reshape(w[1:2, :], [16])])))
fn t_scan_lstm_zx_weight(w: [4, 16], x: [2, 5, 16]) -> scalar = sum(sin(3 * scan(lstm_zx, zeros([2, 8]), x * w[0:1, :], with: [w, reshape(w[1:2, :], [16])])))
fn t_scan_reverse(x: [2, 5, 3], w: [3, 4]) -> scalar = sum(sin(3 * scan(elman, zeros([2, 4]), x, with: [w, w.T @ w * 0.5], reverse: 1)))
fn t_scan_two(x: [2, 5, 3], w: [2, 5, 3]) -> scalar = sum(sin(scan(mix, x[:, 1], [x, w])))
fn t_cumsum(x: [2, 5, 3], w: [2, 5, 3]) -> scalar = sum(w * scan(mix, zeros([2, 3]), [x, zeros([2, 5, 3]) + 1]))
fn rnn_loss(x: [2, 5, 3], w: [3, 4]) -> scalar = sum(sin(3 * scan(elman, zeros([2, 4]), x, with: [w, w.T @ w * 0.5])))
fn t_scan_second_order(x: [2, 5, 3], w: [3, 4]) -> scalar = sum(sin(grad(rnn_loss)(x, w)))

// The language's own grad, and grad of grad.
fn cube(x: [3, 5]) -> scalar = sum(x * x * x)
fn t_grad(x: [3, 5], w: [3, 5]) -> scalar = sum(w * grad(cube)(x))
fn t_grad_grad(x: [3, 5], w: [3, 5]) -> scalar = sum(w * grad(t_grad)(x, w))
"#;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

fn types_of(name: &str) -> Vec<TensorType> {
    let line = PROGRAM.lines().find(|l| l.starts_with(&format!("fn {name}("))).unwrap();
    let sig = &line[line.find('(').unwrap() + 1..line.find(')').unwrap()];
    sig.split("],")
        .map(|a| {
            let dims = a.split('[').nth(1).unwrap().trim_end_matches(']');
            let dims: Vec<usize> = dims
                .split(',')
                .map(|d| match d.trim() {
                    "B" => 3,
                    "C" => 5,
                    n => n.parse().unwrap(),
                })
                .collect();
            TensorType { shape: Shape::known(&dims), dtype: DType::F32 }
        })
        .collect()
}

fn function(session: &Session, name: &str) -> (Graph, Inputs) {
    let types = types_of(name);
    let graph = session.function_graph(name, &types).unwrap_or_else(|d| panic!("{name}: {d:?}"));
    let mut rng = Lcg(name.len() as u64 * 977);
    let mut inputs = Inputs::new();
    for (i, t) in types.iter().enumerate() {
        let dims = t.shape.concrete().unwrap();
        inputs.insert(format!("arg{i}"), ArrayD::from_shape_fn(IxDyn(&dims), |_| rng.next(-1.5, 1.5)));
    }
    (graph, inputs)
}

fn value(g: &Graph, inputs: &Inputs) -> f64 {
    interp::run(g, inputs).unwrap()[0].iter().copied().next().unwrap()
}

fn names() -> Vec<String> {
    PROGRAM.lines().filter_map(|l| l.strip_prefix("fn t_")).map(|l| format!("t_{}", &l[..l.find('(').unwrap()])).collect()
}

#[test]
fn gradients_of_every_builtin_match_finite_differences() {
    let program = syntax::parse(PROGRAM).unwrap();
    let session = Session::new(&program).unwrap();
    for name in names() {
        let (mut g, inputs) = function(&session, &name);
        let loss = g.outputs[0];
        let x = g.input("arg0").unwrap();
        let dx = autodiff::grad(&mut g, loss, &[x], Span::default()).unwrap()[0];
        let mut gg = g.clone();
        gg.outputs = vec![dx];
        let analytic = interp::run(&gg, &inputs).unwrap().remove(0);
        let h = 1e-6;
        for i in 0..analytic.len() {
            let mut p = inputs.clone();
            p.get_mut("arg0").unwrap().as_slice_mut().unwrap()[i] += h;
            let mut m = inputs.clone();
            m.get_mut("arg0").unwrap().as_slice_mut().unwrap()[i] -= h;
            let numeric = (value(&g, &p) - value(&g, &m)) / (2.0 * h);
            let a = analytic.as_slice().unwrap()[i];
            // t_stop's derivative is deliberately not the true one.
            if name == "t_stop" {
                continue;
            }
            assert!((a - numeric).abs() < 1e-6 * (1.0 + numeric.abs()), "{name}[{i}]: analytic {a} vs numeric {numeric}");
        }
    }
}

#[test]
fn jit_matches_reference_on_every_builtin_and_its_gradient() {
    let program = syntax::parse(PROGRAM).unwrap();
    let session = Session::new(&program).unwrap();
    for name in names() {
        let (mut g, inputs) = function(&session, &name);
        let loss = g.outputs[0];
        let x = g.input("arg0").unwrap();
        let dx = autodiff::grad(&mut g, loss, &[x], Span::default()).unwrap()[0];
        g.outputs = vec![loss, dx];
        g.output_names = vec!["f".into(), "df".into()];
        let g = nnc_compiler::opt::optimize(&g);
        let want = interp::run(&g, &inputs).unwrap();
        // Every scan here reaches its sequences a row at a time, so its loops
        // read and write them in place; the same loops with step copies must
        // agree with the reference too.
        for in_place in [true, false] {
            SCAN_STEPS_IN_PLACE.store(in_place, Ordering::Relaxed);
            let mut jit = CompiledGraph::compile(&g, &[]).unwrap();
            SCAN_STEPS_IN_PLACE.store(true, Ordering::Relaxed);
            for (i, n) in jit.input_names().iter().enumerate() {
                let v: Vec<f32> = inputs[n].iter().map(|&v| v as f32).collect();
                jit.input_mut(i).copy_from_slice(&v);
            }
            jit.run();
            for line in jit.kernel_summary().iter().filter(|l| l.contains("loop of")) {
                // Each scan treats its rows independently, so with two threads
                // each loop runs split by rows (and must still agree with the
                // reference).
                assert!(threads() < 2 || line.contains("rows split across threads"), "{name}: {line}");
                let result_in_place = line.contains("and 1 written in place");
                assert!(result_in_place == in_place && (in_place || !line.contains("in place")), "{name}: {line}");
            }
            for (k, w) in want.iter().enumerate() {
                for (a, b) in jit.output(k).iter().zip(w.iter()) {
                    assert!((f64::from(*a) - b).abs() < 2e-4 * (1.0 + b.abs()), "{name} output {k}: jit {a} vs reference {b}");
                }
            }
        }
    }
}

#[test]
fn builtins_agree_with_closed_forms() {
    let program = syntax::parse(PROGRAM).unwrap();
    let session = Session::new(&program).unwrap();
    let erf = nnc_compiler::ops::elementwise::erf;
    type Closed = Box<dyn Fn(f64, f64) -> f64>;
    let cases: Vec<(&str, Closed)> = vec![
        ("t_gelu", Box::new(move |x, w| w * x * 0.5 * (1.0 + erf(x / 2f64.sqrt())))),
        ("t_softplus", Box::new(|x: f64, w| w * (1.0 + x.exp()).ln())),
        ("t_sigmoid", Box::new(|x: f64, w| w / (1.0 + (-x).exp()))),
        ("t_relu", Box::new(|x: f64, w| w * x.max(0.0))),
        ("t_tanh", Box::new(|x: f64, w| w * x.tanh())),
    ];
    for (name, f) in cases {
        let (g, inputs) = function(&session, name);
        let want: f64 = inputs["arg0"].iter().zip(inputs["arg1"].iter()).map(|(&x, &w)| f(x, w)).sum();
        let got = value(&g, &inputs);
        assert!((got - want).abs() < 1e-12 * (1.0 + want.abs()), "{name}: {got} vs {want}");
    }
    // Label smoothing as the notes define it: the true class gets 1 − α(k−1)/k, the others α/k.
    let (g, inputs) = function(&session, "t_ce_smooth");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let labels = [0usize, 3, 1, 4];
    let (alpha, k) = (0.1, 5.0);
    let mut total = 0.0;
    for (r, &label) in labels.iter().enumerate() {
        let z: Vec<f64> = (0..5).map(|c| x[[r, c]] * w[[r, c]]).collect();
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        for (c, zc) in z.iter().enumerate() {
            let target = if c == label { 1.0 - alpha * (k - 1.0) / k } else { alpha / k };
            total -= target * (zc - lse);
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total / 4.0).abs() < 1e-12, "smoothed cross-entropy {got} vs {}", total / 4.0);

    // Sinusoidal positions: sin(p·10000^(−2i/d)) in column 2i, cos in column 2i + 1.
    let (g, inputs) = function(&session, "t_sinusoidal");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let mut total = 0.0;
    for p in 0..6 {
        for c in 0..4 {
            let angle = p as f64 * 10000f64.powf(-((c / 2 * 2) as f64) / 4.0);
            let pe = if c % 2 == 0 { angle.sin() } else { angle.cos() };
            total += w[[p, c]] * x[[p, c]] * pe;
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total).abs() < 1e-12 * (1.0 + total.abs()), "sinusoidal positions {got} vs {total}");
    // Rotary: pair i of position p turned by p·θ_i as a complex number.
    let (g, inputs) = function(&session, "t_rotary");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let mut total = 0.0;
    for b in 0..2 {
        for p in 0..5 {
            for i in 0..2 {
                let theta = p as f64 * 10000f64.powf(-2.0 * i as f64 / 4.0);
                let (re, im) = (x[[b, p, 2 * i]] * w[[b, p, 2 * i]], x[[b, p, 2 * i + 1]] * w[[b, p, 2 * i + 1]]);
                let (out_re, out_im) = (re * theta.cos() - im * theta.sin(), re * theta.sin() + im * theta.cos());
                total += w[[b, p, 2 * i]] * out_re + w[[b, p, 2 * i + 1]] * out_im;
            }
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total).abs() < 1e-12 * (1.0 + total.abs()), "rotary {got} vs {total}");

    // A scan of h + x is the running sum along time.
    let (g, inputs) = function(&session, "t_cumsum");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let mut total = 0.0;
    for b in 0..2 {
        for c in 0..3 {
            let mut run = 0.0;
            for t in 0..5 {
                run += x[[b, t, c]];
                total += w[[b, t, c]] * run;
            }
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total).abs() < 1e-12 * (1.0 + total.abs()), "cumulative sum by scan {got} vs {total}");
    // The Elman recurrence written out: h_t = tanh(x_t W + h_{t-1} U), h_{-1} = x_0 W.
    let (g, inputs) = function(&session, "t_scan_rnn");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let u = |i: usize, j: usize| (0..3).map(|k| w[[k, i]] * w[[k, j]]).sum::<f64>() * 0.5;
    let mut total = 0.0;
    for b in 0..2 {
        let mut h: Vec<f64> = (0..4).map(|j| (0..3).map(|k| x[[b, 0, k]] * w[[k, j]]).sum()).collect();
        for t in 0..6 {
            h = (0..4)
                .map(|j| ((0..3).map(|k| x[[b, t, k]] * w[[k, j]]).sum::<f64>() + (0..4).map(|i| h[i] * u(i, j)).sum::<f64>()).tanh())
                .collect();
            total += h.iter().map(|v| (3.0 * v).sin()).sum::<f64>();
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total).abs() < 1e-12 * (1.0 + total.abs()), "Elman RNN by scan {got} vs {total}");

    // A masked cross-entropy: the mean over the kept positions only.
    let (g, inputs) = function(&session, "t_ce_masked");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let (labels, keep) = ([[0usize, 3, 1], [2, 2, 0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]);
    let mut total = 0.0;
    for b in 0..2 {
        for t in 0..3 {
            let z: Vec<f64> = (0..4).map(|c| x[[b, t, c]] * w[[b, t, c]]).collect();
            let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            total += keep[b][t] * (lse - z[labels[b][t]]);
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total / 4.0).abs() < 1e-12, "masked cross-entropy {got} vs {}", total / 4.0);

    // A padding mask: keys with id 0 get no weight.
    let (g, inputs) = function(&session, "t_padded_attention");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let keep = [[true, true, false, false], [true, false, true, true]];
    let mut total = 0.0;
    for b in 0..2 {
        for i in 0..4 {
            let score = |j: usize| (0..3).map(|c| x[[b, i, c]] * x[[b, j, c]]).sum::<f64>() / 3f64.sqrt();
            let e: Vec<f64> = (0..4).map(|j| if keep[b][j] { score(j).exp() } else { 0.0 }).collect();
            let z: f64 = e.iter().sum();
            for c in 0..3 {
                total += w[[b, i, c]] * (0..4).map(|j| e[j] / z * x[[b, j, c]] * w[[b, j, c]]).sum::<f64>();
            }
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total).abs() < 1e-12 * (1.0 + total.abs()), "padded attention {got} vs {total}");

    // Causal attention written out: softmax over keys j <= i of q_i·k_j/√d, weights on v_j.
    let (g, inputs) = function(&session, "t_attention");
    let (x, w) = (&inputs["arg0"], &inputs["arg1"]);
    let mut total = 0.0;
    for b in 0..2 {
        for i in 0..4 {
            let score = |j: usize| (0..3).map(|c| x[[b, i, c]] * x[[b, j, c]] * w[[b, j, c]]).sum::<f64>() / 3f64.sqrt();
            let e: Vec<f64> = (0..=i).map(|j| score(j).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..3 {
                let o: f64 = (0..=i).map(|j| e[j] / z * x[[b, j, c]].tanh()).sum();
                total += w[[b, i, c]] * o;
            }
        }
    }
    let got = value(&g, &inputs);
    assert!((got - total).abs() < 1e-12 * (1.0 + total.abs()), "causal attention {got} vs {total}");
}

/// The scans of `g` (not inside other scans): their `saved` columns and the
/// products in their bodies.
fn scans(g: &Graph) -> Vec<(usize, usize)> {
    let products = |body: &Graph| body.nodes.iter().filter(|n| matches!(n.op, Op::MatMul)).count();
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Scan { body, saved, .. } => Some((*saved, products(body))),
            _ => None,
        })
        .collect()
}

#[test]
fn a_scan_read_through_its_hidden_state_is_differentiated_without_the_padding() {
    let program = syntax::parse(PROGRAM).unwrap();
    let session = Session::new(&program).unwrap();
    let (mut g, _) = function(&session, "t_scan_lstm_hidden");
    let loss = g.outputs[0];
    let x = g.input("arg0").unwrap();
    let dx = autodiff::grad(&mut g, loss, &[x], Span::default()).unwrap()[0];
    g.outputs = vec![dx];
    let g = nnc_compiler::opt::optimize(&g);
    // The backward loop's per-step cotangent is dh ([N, 4]), not dh padded
    // with the cell's zeros to the state's [N, 8]; nothing is padded outside
    // the loops (the body pads, and the padding folds away there).
    let scan_args: Vec<&nnc_compiler::ir::Node> =
        g.nodes.iter().filter(|n| matches!(n.op, Op::Scan { .. })).flat_map(|n| n.args.iter().map(|&a| g.node(a))).collect();
    assert!(scan_args.iter().all(|a| !matches!(a.op, Op::Pad { .. })), "a scan reads a padded sequence");
    let narrow = scan_args.iter().filter(|a| a.ty.shape.dims().last().and_then(|d| d.known()) == Some(4)).count();
    assert_eq!(narrow, 1, "the cotangent of h is read as [N, T, 4]");
    for n in &g.nodes {
        if let Op::Scan { body, .. } = &n.op {
            assert!(!body.nodes.iter().any(|b| matches!(b.op, Op::Pad { .. })), "the padding is left in the body");
        }
    }
}

#[test]
fn the_scan_derivative_reads_the_products_the_forward_loop_saved() {
    let program = syntax::parse(PROGRAM).unwrap();
    let session = Session::new(&program).unwrap();
    let (mut g, _) = function(&session, "t_scan_lstm_weight");
    // Forward: x·W and h·U ([N, 16] each) kept after the state [N, 8].
    assert_eq!(scans(&g), vec![(32, 2)]);
    let loss = g.outputs[0];
    let w = g.input("arg0").unwrap();
    let dw = autodiff::grad(&mut g, loss, &[w], Span::default()).unwrap()[0];
    g.outputs = vec![dw];
    let g = nnc_compiler::opt::optimize(&g);
    // Backward: the loop's one product is the cotangent through U (dz·Uᵀ);
    // neither product is computed again, in the loop or over all rows. The
    // loop hands on dz ([N, 16]: the cotangent of both products), so the
    // step's elementwise derivative is not run again over all rows.
    assert_eq!(scans(&g), vec![(32, 2), (16, 1)]);
    // Outside the loops: U = w[:, 0:4]ᵀ·w and its two derivative products,
    // dW = xᵀ·dz and dU = hᵀ·dz over all rows; recomputing x·W and h·U there
    // would add two.
    let outside = g.nodes.iter().filter(|n| matches!(n.op, Op::MatMul)).count();
    assert_eq!(outside, 5);
    // Nor are the gates (sigmoid, tanh) evaluated outside the loops.
    let gates = g.nodes.iter().filter(|n| matches!(n.op, Op::Unary(UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Tanh))).count();
    assert_eq!(gates, 0);
}
