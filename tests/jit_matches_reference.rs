//! The compiled training step of each example agrees with the float64
//! reference interpreter: loss, every updated parameter and optimizer state;
//! and so do the gradients and step of a loss of 5,000 chained `let`s.
//! The steps are compiled bounds-checked: an access outside their buffers
//! would fail the run.

use ndarray::{ArrayD, IxDyn};
use nnc_compiler::elaborate::train::{TrainPlan, HYPER_BC1, HYPER_BC2, HYPER_LR};
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{Graph, InputKind, SizeEnv};
use nnc_runtime::check::train_plans;
use nnc_runtime::exec::Exec;
use std::path::Path;

#[path = "common/chain.rs"]
mod chain;

fn check_example(file: &str, batch: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file);
    let source = std::fs::read_to_string(&path).unwrap();
    for plan in plans(&source, path.parent().unwrap()) {
        check_graph(file, &plan, &plan.step_graph, batch);
    }
}

fn plans(source: &str, base_dir: &Path) -> Vec<TrainPlan> {
    let program = nnc_compiler::syntax::parse(source).unwrap();
    train_plans(&program, base_dir).unwrap()
}

/// `graph` (one of `plan`'s) at batch `batch`, compiled and run on
/// deterministic, varied inputs, agrees with the reference interpreter.
fn check_graph(file: &str, plan: &TrainPlan, graph: &Graph, batch: usize) -> Exec {
    let sizes: SizeEnv = [("B".to_string(), batch)].into_iter().collect();
    let checked = nnc_compiler::codegen::CompileOptions { bounds_checked: true };
    let mut exec = Exec::compile(graph, &sizes, &[], checked).unwrap();
    let graph = nnc_compiler::opt::optimize(&graph.specialize(&sizes).unwrap());
    // Deterministic, varied inputs; labels are valid class ids.
    let mut inputs = Inputs::new();
    let mut seed = 1u64;
    for (_, name, kind) in graph.inputs() {
        let id = graph.input(name).unwrap();
        let shape = graph.shape(id).concrete().unwrap();
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (seed >> 40) as f32 / (1u64 << 24) as f32;
                match (name, kind) {
                    ("y", _) => (i % plan.classes.unwrap_or(1)) as f32,
                    (HYPER_LR, _) => 1e-2,
                    (HYPER_BC1, _) => 0.1,
                    (HYPER_BC2, _) => 0.001,
                    (_, InputKind::State) if name.starts_with("opt.v") => u * 1e-3,
                    _ => u - 0.5,
                }
            })
            .collect();
        exec.set(name, &data);
        inputs.insert(name.to_string(), ArrayD::from_shape_vec(IxDyn(&shape), data.iter().map(|&v| f64::from(v)).collect()).unwrap());
    }
    exec.run().unwrap();
    let reference = interp::run(&graph, &inputs).unwrap();
    for (i, want) in reference.iter().enumerate() {
        let got = exec.output(i);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want.iter()) {
            let err = (f64::from(*g) - w).abs() / (1.0 + w.abs());
            assert!(err < 1e-4, "{file} {} output {} ({}): jit {g} vs reference {w}", plan.name, i, graph.output_names[i]);
        }
    }
    exec
}

#[test]
fn mlp_digits_step_matches_reference() {
    check_example("mlp_digits.nn", 8);
    check_example("mlp_digits.nn", 5);
}

/// A loss of 5,000 chained `let`s (issue 17: row fusion checked every access
/// of its group again for each kernel that joined, and a chain of 5,000 took
/// 16 s of CPU time to compile; the time now is measured by
/// `benches/compile_time.rs`, not here): the chain's kernels still fuse into
/// one pass over the rows, and its loss, gradients and updated parameters
/// agree with the reference.
#[test]
fn five_thousand_chained_lets_match_reference() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for plan in plans(&chain::chained_lets(5000), &examples) {
        check_graph("5,000 chained lets", &plan, &plan.grad_graph, 8);
        let step = check_graph("5,000 chained lets", &plan, &plan.step_graph, 8);
        let fused = step.kernel_summary().iter().filter_map(|k| k.split_once(" loops fused over 8 rows"));
        let largest = fused.map(|(n, _)| n.parse::<usize>().unwrap()).max();
        assert!(largest > Some(5000), "the chain is not one pass over the rows: {:#?}", step.kernel_summary());
    }
}
