//! The kernels of each training step in a `.nn` file, and the time of one step:
//!
//!     cargo run --release -p nnc-runtime --example step_kernels -- FILE [BATCH]
//!
//! Every loop nest and library call the code generator emits for the whole
//! step (forward, backward, optimizer update), in execution order.

use nnc_compiler::ir::SizeEnv;
use nnc_runtime::check::train_plans;
use nnc_runtime::exec::Exec;
use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let file = args.next().ok_or("usage: step_kernels FILE [BATCH]")?;
    let path = Path::new(&file);
    let source = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let program = nnc_compiler::syntax::parse(&source).map_err(|e| format!("{e:?}"))?;
    let plans = train_plans(&program, path.parent().unwrap_or(Path::new("."))).map_err(|e| format!("{e:?}"))?;
    for plan in plans {
        let batch = args.next().and_then(|b| b.parse().ok()).or(plan.batch).unwrap_or(1);
        let sizes: SizeEnv = [("B".to_string(), batch)].into_iter().collect();
        let mut exec = Exec::compile(&plan.step_graph, &sizes, &[]).map_err(|e| e.to_string())?;
        println!(
            "train {} (batch {batch}): {} kernels, compiled in {:.1} ms",
            plan.name,
            exec.kernel_summary().len(),
            exec.compile_time().as_secs_f64() * 1e3
        );
        for (i, k) in exec.kernel_summary().iter().enumerate() {
            println!("  {i:3}  {k}");
        }
        exec.run().map_err(|d| d.title.clone())?;
        nnc_compiler::codegen::kernel_profile();
        let reps = std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(200);
        let mut each = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            exec.run().map_err(|d| d.title.clone())?;
            each.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let mean = each.iter().sum::<f64>() / reps.max(1) as f64;
        each.sort_by(f64::total_cmp);
        let (median, min) = (each.get(reps / 2).copied().unwrap_or(0.0), each.first().copied().unwrap_or(0.0));
        // On a shared machine the fastest step is the least disturbed one.
        println!("  one step (run() only): {mean:.1} us mean, {median:.1} median, {min:.1} min");
        // With NNC_PROFILE=1: the slowest kernels (a pair of products counts under its second index).
        let mut times: Vec<(usize, std::time::Duration)> = nnc_compiler::codegen::kernel_profile().into_iter().enumerate().collect();
        times.sort_by_key(|t| std::cmp::Reverse(t.1));
        let top = std::env::var("TOP").ok().and_then(|t| t.parse().ok()).unwrap_or(15);
        for (i, t) in times.iter().take(top) {
            let what = exec.kernel_summary().get(*i).cloned().unwrap_or_default();
            println!("  {:8.1} us  #{i:<3} {what}", t.as_secs_f64() * 1e6);
        }
    }
    Ok(())
}
