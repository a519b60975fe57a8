//! Compile time of a loss of n chained `let`s (issue 17: it grew with the
//! cube of n; the bar is 5,000 lets in under 2 s, close to linear).
//!
//!     cargo bench --bench compile_time [-- N ...]
//!
//! For each n (250, 1,000, 2,000 and 5,000 unless given), the best of three
//! runs of each stage: parse; elaborate, differentiate and optimize
//! (`train_plans`); specialize the step to batch 64 and optimize it again; plan,
//! fuse and emit it and compile it with Cranelift (`CompiledGraph::compile`):
//! the stages of `nnc run` before its first step. Then the time per `let` and its
//! ratio to the time per `let` at the smallest n: 1 for linear growth.
//! Wall time, and the main thread's time on a CPU
//! (`/proc/thread-self/schedstat`), which leaves out the waits of a shared
//! machine.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/chain.rs"]
mod chain;

use nnc_compiler::codegen::CompiledGraph;
use nnc_compiler::ir::SizeEnv;
use nnc_compiler::opt;
use nnc_runtime::check::train_plans;
use std::path::Path;
use std::time::Instant;

/// Seconds this thread has run on a CPU, if the kernel says.
fn cpu_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? * 1e-9)
}

/// Seconds of wall and CPU time of each stage of compiling `n` chained lets.
fn stages(n: usize) -> [(f64, f64); 4] {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let source = chain::chained_lets(n);
    let mut marks = vec![(Instant::now(), cpu_time().unwrap_or(0.0))];
    let mut mark = || marks.push((Instant::now(), cpu_time().unwrap_or(0.0)));
    let program = nnc_compiler::syntax::parse(&source).expect("the chain parses");
    mark();
    let plans = train_plans(&program, &examples).expect("the chain checks");
    mark();
    // What `Exec::compile` does, a stage at a time.
    let sizes: SizeEnv = [("B".to_string(), 64)].into_iter().collect();
    let graph = opt::optimize(&plans[0].step_graph.specialize(&sizes).expect("the chain fits"));
    mark();
    CompiledGraph::compile(&graph, &[]).expect("the chain compiles");
    mark();
    std::array::from_fn(|i| ((marks[i + 1].0 - marks[i].0).as_secs_f64(), marks[i + 1].1 - marks[i].1))
}

fn best_of_three(n: usize) -> [(f64, f64); 4] {
    let runs: Vec<[(f64, f64); 4]> = (0..3).map(|_| stages(n)).collect();
    std::array::from_fn(|i| {
        let wall = runs.iter().map(|r| r[i].0).fold(f64::INFINITY, f64::min);
        let cpu = runs.iter().map(|r| r[i].1).fold(f64::INFINITY, f64::min);
        (wall, cpu)
    })
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ns = if args.is_empty() { vec![250, 1000, 2000, 5000] } else { args };
    println!("CPU time of each stage; the total in wall and CPU time; CPU time per let, and its ratio to the first row's");
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11} {:>6}",
        "lets", "parse", "check", "opt", "codegen", "wall", "cpu", "per let", "ratio"
    );
    let mut first_per_let = None;
    for n in ns {
        let s = best_of_three(n);
        let wall: f64 = s.iter().map(|x| x.0).sum();
        let cpu: f64 = s.iter().map(|x| x.1).sum();
        let per_let = cpu / n as f64;
        let ratio = per_let / *first_per_let.get_or_insert(per_let);
        let ms = |x: f64| format!("{:.0} ms", x * 1e3);
        let [parse, check, opt, codegen] = s.map(|x| ms(x.1));
        println!(
            "{n:>6} {parse:>8} {check:>8} {opt:>8} {codegen:>8} {:>9} {:>9} {:>8.0} µs {ratio:>6.2}",
            ms(wall),
            ms(cpu),
            per_let * 1e6
        );
    }
}
