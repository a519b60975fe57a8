//! `nnc run --bounds-checked`: examples trained for one epoch with every load
//! and store of the compiled steps compared with its buffer's extent. No
//! access may leave its buffer (that would be an error, exit code 1), and the
//! results are those of the unchecked build, bit for bit (the checks only
//! add comparisons). The examples here train an epoch in under 2 s each on 2
//! cores; the others (MNIST, the language models, norms) take minutes per
//! epoch, so every example's step and forward function is also compiled
//! bounds-checked and run once at batch 2 (`every_example_...`).

mod common;
use common::*;

/// `nnc run EXAMPLE --epochs 1 [--bounds-checked] --quiet`, which must
/// succeed: its result lines (on stderr).
fn one_epoch(example: &str, checked: bool) -> String {
    let file = format!("examples/{example}.nn");
    let mut args = vec!["run", file.as_str(), "--epochs", "1", "--quiet"];
    if checked {
        args.push("--bounds-checked");
    }
    let out = nnc(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nnc {args:?} failed ({}):\n{stderr}", out.status);
    assert!(stderr.contains("final train loss"), "{stderr}");
    stderr.into_owned()
}

#[test]
fn small_examples_train_bounds_checked_as_unchecked() {
    for example in ["mlp_digits", "cnn_digits", "ridge_diabetes", "optimizers"] {
        assert_eq!(one_epoch(example, true), one_epoch(example, false), "{example}");
    }
}

/// Every example's training step and forward function, compiled
/// bounds-checked at a small batch and run once on varied inputs (valid ids
/// for int inputs), report no access outside a buffer and compute the same
/// bits as the unchecked build. This covers the examples too slow to train
/// an epoch above (MNIST, the language models, norms): their steps' loops
/// are the same at any batch size but the address arithmetic is exercised
/// at this one.
#[test]
fn every_example_step_runs_bounds_checked_as_unchecked() {
    use nnc_compiler::codegen::CompileOptions;
    use nnc_compiler::ir::{DType, Graph, SizeEnv};
    use nnc_runtime::exec::Exec;

    let examples = root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "nn"))
        .collect();
    files.sort();
    assert!(files.len() >= 14, "expected every example, found {}", files.len());
    // Compiled with `options` at batch 2, fed deterministic inputs, run once: the outputs.
    let run = |graph: &Graph, classes: usize, options: CompileOptions, what: &str| -> Vec<Vec<f32>> {
        let sizes: SizeEnv = [("B".to_string(), 2)].into_iter().collect();
        let mut exec = Exec::compile(graph, &sizes, &[], options).unwrap_or_else(|e| panic!("{what}: {e}"));
        let specialized = graph.specialize(&sizes).unwrap();
        let mut seed = 7u64;
        for (id, name, _) in specialized.inputs() {
            let ty = specialized.ty(id);
            let n: usize = ty.shape.concrete().unwrap().iter().product();
            let data: Vec<f32> = (0..n)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    match ty.dtype {
                        DType::I32 => ((i * 7 + 3) % classes.max(1)) as f32,
                        DType::F32 => ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1,
                    }
                })
                .collect();
            exec.set(name, &data);
        }
        exec.run().unwrap_or_else(|d| panic!("{what}: {}", d.title));
        (0..exec.output_names.len()).map(|i| exec.output(i).to_vec()).collect()
    };
    let checked = CompileOptions { bounds_checked: true };
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let program = nnc_compiler::syntax::parse(&source).unwrap();
        let plans = nnc_runtime::check::train_plans(&program, &examples).unwrap();
        for plan in plans {
            let classes = plan.classes.unwrap_or(1);
            for (graph, which) in [(&plan.step_graph, "step"), (&plan.forward_graph, "forward")] {
                let what = format!("{} {} {which}", file.display(), plan.name);
                let with = run(graph, classes, checked, &what);
                let without = run(graph, classes, CompileOptions::default(), &what);
                for (i, (a, b)) in with.iter().zip(&without).enumerate() {
                    let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "{what}: output {i} differs in the checked build: {:?} vs {:?}",
                        &a[..a.len().min(4)],
                        &b[..b.len().min(4)]
                    );
                }
            }
        }
    }
}
