//! Incremental decoding (`incremental::step_graph`): one position at a time
//! from caches gives exactly the forward function's row at that position, for
//! attention (a key/value cache) and for a scan (the cached state), in the
//! reference interpreter and compiled; a model that looks ahead is refused.

use ndarray::{ArrayD, IxDyn};
use nnc_compiler::codegen::CompiledGraph;
use nnc_compiler::elaborate::Session;
use nnc_compiler::incremental::{step_graph, CacheKind, POSITION};
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{DType, Graph, Shape, TensorType};
use nnc_compiler::syntax;

const PROGRAM: &str = r#"
fn attend(ids: [1, 6] int, E: [5, 8], P: [6, 8], Wq: [8, 24], Wo: [8, 5]) -> [1, 6, 5] {
  let h = embedding(ids, E) + P
  let qkv = reshape(layer_norm(h, ones([8]), zeros([8])) @ Wq, [1, 6, 3, 2, 4])
  let q = transpose(qkv[:, :, 0], [0, 2, 1, 3])
  let k = transpose(qkv[:, :, 1], [0, 2, 1, 3])
  let v = transpose(qkv[:, :, 2], [0, 2, 1, 3])
  let o = attention(q, k, v, mask: causal_mask(6))
  let y = h + reshape(transpose(o, [0, 2, 1, 3]), [1, 6, 8])
  gelu(y) @ Wo
}
fn elman(h: [N, 4], x: [N, 3], W: [3, 4], U: [4, 4]) -> [N, 4] = tanh(x @ W + h @ U)
fn recur(ids: [1, 6] int, E: [5, 3], W: [3, 4], U: [4, 4], Wo: [4, 5]) -> [1, 6, 5] {
  let h0 = tanh(sum(E, 0) @ W)
  scan(elman, reshape(h0, [1, 4]), embedding(ids, E), with: [W, U]) @ Wo
}
fn ahead(ids: [1, 6] int, E: [5, 5]) -> [1, 6, 5] = embedding(ids, E) - mean(embedding(ids, E), 1, keepdims: 1)
"#;

fn graph(name: &str, shapes: &[&[usize]]) -> (Graph, Inputs) {
    let program = syntax::parse(PROGRAM).unwrap();
    let session = Session::new(&program).unwrap();
    let types: Vec<TensorType> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| TensorType { shape: Shape::known(s), dtype: if i == 0 { DType::I32 } else { DType::F32 } })
        .collect();
    let g = session.function_graph(name, &types).unwrap_or_else(|d| panic!("{name}: {d:?}"));
    let mut seed = 17u64;
    let mut inputs = Inputs::new();
    for (i, s) in shapes.iter().enumerate() {
        let v = ArrayD::from_shape_fn(IxDyn(s), |_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (seed >> 11) as f64 / (1u64 << 53) as f64;
            if i == 0 {
                (u * 5.0).floor()
            } else {
                u * 2.0 - 1.0
            }
        });
        inputs.insert(format!("arg{i}"), v);
    }
    (g, inputs)
}

/// Every position's row from the step graph, in the interpreter and compiled,
/// against the forward function's output.
fn check(name: &str, shapes: &[&[usize]], kinds: &[CacheKind]) {
    let (forward, inputs) = graph(name, shapes);
    let want = interp::run(&forward, &inputs).unwrap().remove(0);
    let step = step_graph(&forward, "arg0", 6).unwrap_or_else(|e| panic!("{name}: {e}"));
    let found: Vec<CacheKind> = step.caches.iter().map(|c| c.kind.clone()).collect();
    assert_eq!(found, kinds, "{name}: caches");
    let ids = inputs["arg0"].clone();
    let mut feed = inputs.clone();
    for c in &step.caches {
        let shape = step.graph.shape(step.graph.input(&c.input).unwrap()).concrete().unwrap();
        feed.insert(c.input.clone(), ArrayD::zeros(IxDyn(&shape)));
    }
    let updates: Vec<(usize, _)> = step.caches.iter().map(|c| (c.output, step.graph.input(&c.input).unwrap())).collect();
    let mut jit = CompiledGraph::compile(&step.graph, &updates).unwrap();
    for (i, n) in jit.input_names().iter().enumerate() {
        if let Some(v) = inputs.get(n).filter(|_| n != "arg0") {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            jit.input_mut(i).copy_from_slice(&v);
        }
    }
    for p in 0..6 {
        feed.insert("arg0".into(), ArrayD::from_elem(IxDyn(&[1, 1]), ids[[0, p]]));
        feed.insert(POSITION.into(), ArrayD::from_elem(IxDyn(&[]), p as f64));
        let out = interp::run(&step.graph, &feed).unwrap();
        for (k, w) in out[0].iter().enumerate() {
            let expect = want[[0, p, k]];
            assert!((w - expect).abs() < 1e-12, "{name} position {p} logit {k}: step {w} vs forward {expect}");
        }
        for c in &step.caches {
            feed.insert(c.input.clone(), out[c.output].clone());
        }
        for (i, n) in jit.input_names().iter().enumerate() {
            if n == "arg0" {
                jit.input_mut(i)[0] = ids[[0, p]] as f32;
            } else if n == POSITION {
                jit.input_mut(i)[0] = p as f32;
            }
        }
        jit.run();
        for (k, &w) in jit.output(0).iter().enumerate() {
            let expect = want[[0, p, k]];
            assert!((f64::from(w) - expect).abs() < 1e-4, "{name} position {p} logit {k}: compiled {w} vs forward {expect}");
        }
    }
}

#[test]
fn attention_one_position_at_a_time_matches_the_whole_window() {
    check("attend", &[&[1, 6], &[5, 8], &[6, 8], &[8, 24], &[8, 5]], &[CacheKind::Rows, CacheKind::Rows]);
}

#[test]
fn a_scan_one_step_at_a_time_matches_the_whole_sequence() {
    check("recur", &[&[1, 6], &[5, 3], &[3, 4], &[4, 4], &[4, 5]], &[CacheKind::State]);
}

#[test]
fn a_model_that_looks_ahead_has_no_step_graph() {
    let (forward, _) = graph("ahead", &[&[1, 6], &[5, 5]]);
    let e = step_graph(&forward, "arg0", 6).err().expect("a mean over positions reads later positions");
    assert!(e.contains("reduces over the positions"), "{e}");
}
