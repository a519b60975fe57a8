//! `nnc`: the command line. Reads files, prints diagnostics and results; the
//! compiler and runtime crates do the work.

use clap::{Parser, Subcommand};
use nnc_compiler::diagnostic::{render, Diagnostic};
use nnc_compiler::elaborate::range::{self, Rule};
use nnc_compiler::info::ModelInfo;
use nnc_compiler::ir::{Dim, Shape};
use nnc_runtime::check::{self, TOLERANCE};
use nnc_runtime::outputs;
use nnc_runtime::program::{self, RunOptions, Runner};
use nnc_runtime::sample::{self, SampleOptions, Strategy};
use nnc_runtime::train::Progress;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "nnc", version, about = "Compile, check and train models written in the .nn language")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a file: load data, train, evaluate, report.
    Run {
        file: PathBuf,
        /// Print a one-line JSON summary on stdout (progress stays on stderr).
        #[arg(long)]
        json: bool,
        /// No progress bar or per-epoch lines.
        #[arg(long)]
        quiet: bool,
        /// Print compile and step timings.
        #[arg(long)]
        timings: bool,
        /// Train for this many epochs instead of what the file says.
        #[arg(long, value_parser = natural_flag(range::CLI_EPOCHS))]
        epochs: Option<usize>,
        /// Compare every load and store of the compiled steps with its buffer's extent (slower; for testing the compiler).
        #[arg(long)]
        bounds_checked: bool,
    },
    /// Check names and shapes, then the gradient of every parameter by finite differences.
    Check {
        file: PathBuf,
        /// Stop before the finite-difference gradient check (names, shapes and data only).
        #[arg(long)]
        shapes_only: bool,
    },
    /// Print a table of each training run's model: layers, output shapes, parameters, receptive fields, FLOPs.
    Info {
        file: PathBuf,
        /// Print the tables as one JSON object on stdout instead.
        #[arg(long)]
        json: bool,
    },
    /// Generate text with a trained language model: greedy, temperature or top-k sampling.
    Sample {
        file: PathBuf,
        /// Parameters saved by training (`checkpoint = "..."` in the train block).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Text to continue.
        #[arg(long, default_value = "")]
        prompt: String,
        /// How many tokens to generate.
        #[arg(long, default_value_t = 200, value_parser = natural_flag(range::CLI_TOKENS))]
        tokens: usize,
        /// greedy | temperature | top-k | beam
        #[arg(long, default_value = "top-k")]
        strategy: String,
        /// Beams kept by beam search.
        #[arg(long, default_value_t = 4, value_parser = natural_flag(range::CLI_WIDTH))]
        width: usize,
        /// Softmax temperature for temperature and top-k sampling.
        #[arg(long, default_value_t = 0.8, value_parser = number_flag(range::CLI_TEMPERATURE))]
        temperature: f64,
        /// How many of the most likely tokens top-k sampling draws from.
        #[arg(long, default_value_t = 10, value_parser = natural_flag(range::CLI_K))]
        k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Which `train` block's model, if the file trains several on text.
        #[arg(long)]
        model: Option<String>,
        /// Run the whole window for every token instead of one position from cached keys and values.
        #[arg(long)]
        no_cache: bool,
    },
    /// Print the IR of each training run's loss (with --grad, the backward pass; with --step, the whole step).
    Ir {
        file: PathBuf,
        #[arg(long)]
        grad: bool,
        #[arg(long)]
        step: bool,
    },
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    // Usage errors (an unknown flag, a number out of range) exit with 1, as every other error does.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    match cli.command {
        Command::Run { file, json, quiet, timings, epochs, bounds_checked } => {
            let compile = nnc_compiler::codegen::CompileOptions { bounds_checked };
            run(&file, json, quiet, timings, (epochs, compile), process_start)
        }
        Command::Check { file, shapes_only } => check_file(&file, shapes_only),
        Command::Ir { file, grad, step } => print_ir(&file, grad, step),
        Command::Info { file, json } => print_info(&file, json),
        Command::Sample { file, checkpoint, prompt, tokens, strategy, width, temperature, k, seed, model, no_cache } => {
            let strategy = match strategy.as_str() {
                "greedy" => Strategy::Greedy,
                "temperature" => Strategy::Temperature(temperature),
                "top-k" | "topk" => Strategy::TopK { k, temperature },
                "beam" => Strategy::Beam { width },
                other => {
                    eprintln!("error: unknown strategy `{other}` (expected greedy, temperature, top-k or beam)");
                    return ExitCode::FAILURE;
                }
            };
            let opts = SampleOptions {
                model: model.as_deref(),
                checkpoint: &checkpoint,
                prompt: &prompt,
                tokens,
                strategy,
                seed,
                cache: !no_cache,
            };
            sample_text(&file, &opts)
        }
    }
}

fn sample_text(file: &Path, opts: &SampleOptions) -> ExitCode {
    let (source, program) = match read_and_parse(file) {
        Ok(sp) => sp,
        Err(code) => return code,
    };
    match sample::sample(&program, &base_dir(file), opts) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(d) => report(file, &source, &d),
    }
}

/// Read a source file, or say why not.
fn read(file: &Path) -> Result<String, ExitCode> {
    std::fs::read_to_string(file).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", file.display());
        ExitCode::FAILURE
    })
}

/// A flag's value parser for a count or size, checked against its rule
/// (`--k 0` and `--width 1.5` are refused with the rule's message).
fn natural_flag(rule: Rule) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |text| rule.check_natural(flag_number(rule, text)?).map_err(|problem| problem.explain().0)
}

/// A flag's value parser for a real number (`--temperature NaN` is refused).
fn number_flag(rule: Rule) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| rule.check(flag_number(rule, text)?).map_err(|problem| problem.explain().0)
}

fn flag_number(rule: Rule, text: &str) -> Result<f64, String> {
    text.trim().parse().map_err(|_| format!("{} must be {}, found `{text}`", rule.name(), rule.range.describe()))
}

/// Read and parse a file; on failure the diagnostics are already printed.
fn read_and_parse(file: &Path) -> Result<(String, nnc_compiler::ast::Program), ExitCode> {
    let source = read(file)?;
    match program::parse(&source) {
        Ok(p) => Ok((source, p)),
        Err(d) => Err(report(file, &source, &d)),
    }
}

fn report(file: &Path, source: &str, diagnostics: &[Diagnostic]) -> ExitCode {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    eprint!("{}", render(diagnostics, &file.display().to_string(), source, color));
    ExitCode::FAILURE
}

fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn run(
    file: &Path,
    json: bool,
    quiet: bool,
    timings: bool,
    (epochs, compile): (Option<usize>, nnc_compiler::codegen::CompileOptions),
    process_start: Instant,
) -> ExitCode {
    let (source, program) = match read_and_parse(file) {
        Ok(sp) => sp,
        Err(code) => return code,
    };
    if let Err(d) = outputs::check(&program, file, &base_dir(file)) {
        return report(file, &source, &d);
    }
    let mut runner = match Runner::new(&program) {
        Ok(r) => r,
        Err(d) => return report(file, &source, &d),
    };
    let base = base_dir(file);
    // A bar for a person at a terminal, a line per epoch for a log (Keras's `verbose=2`).
    let progress = if quiet || json {
        Progress::Quiet
    } else if std::io::stderr().is_terminal() {
        Progress::Bar
    } else {
        Progress::Lines
    };
    let opts = RunOptions { base_dir: &base, progress, process_start, epochs, compile };
    runner.summary.echo = true;
    if let Err(d) = runner.run(&opts) {
        return report(file, &source, &d);
    }
    let summary = &runner.summary;
    if timings {
        for (name, r) in &summary.runs {
            let step_ms = r.step_time.as_secs_f64() * 1e3 / r.steps.max(1) as f64;
            eprintln!("{name}: compile {:.1} ms, {} steps, {step_ms:.3} ms/step", r.compile_time.as_secs_f64() * 1e3, r.steps);
        }
        eprintln!("total compile {:.1} ms", program::total_compile_time(summary).as_secs_f64() * 1e3);
    }
    if json {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        println!("{}", program::summary_json(&stem, summary));
    }
    ExitCode::SUCCESS
}

fn check_file(file: &Path, shapes_only: bool) -> ExitCode {
    let (source, program) = match read_and_parse(file) {
        Ok(sp) => sp,
        Err(code) => return code,
    };
    if let Err(d) = outputs::check(&program, file, &base_dir(file)) {
        return report(file, &source, &d);
    }
    let gradients = if shapes_only { check::Gradients::Skip } else { check::Gradients::Check };
    match check::check_with(&program, &base_dir(file), gradients) {
        Err(d) => report(file, &source, &d),
        Ok(_) if shapes_only => {
            println!("{}: names, shapes and data check (gradients not compared: --shapes-only)", file.display());
            ExitCode::SUCCESS
        }
        Ok(results) => {
            let mut ok = true;
            println!("{:<12} {:<24} {:<16} {:>8} {:>14}", "run", "parameter", "shape", "entries", "worst rel err");
            for r in &results {
                let pass = r.worst_error <= TOLERANCE;
                ok &= pass;
                let shape = format!("{:?}", r.shape);
                println!(
                    "{:<12} {:<24} {:<16} {:>8} {:>14.2e} {}",
                    r.run,
                    r.path,
                    shape,
                    r.checked,
                    r.worst_error,
                    if pass { "ok" } else { "FAIL" }
                );
            }
            if ok {
                println!("{}: shapes check, and every gradient agrees with finite differences (tolerance {TOLERANCE:e})", file.display());
                ExitCode::SUCCESS
            } else {
                eprintln!("error: some gradients disagree with finite differences by more than {TOLERANCE:e}");
                ExitCode::FAILURE
            }
        }
    }
}

fn print_ir(file: &Path, grad: bool, step: bool) -> ExitCode {
    let (source, program) = match read_and_parse(file) {
        Ok(sp) => sp,
        Err(code) => return code,
    };
    match check::train_plans(&program, &base_dir(file)) {
        Err(d) => report(file, &source, &d),
        Ok(plans) => {
            for plan in &plans {
                if step {
                    println!("// train {}: forward + backward + {:?} update", plan.name, plan.optimizer.kind);
                    print!("{}", plan.step_graph.pretty(0));
                } else if grad {
                    println!("// train {}: backward pass (nodes {}.. of the gradient graph)", plan.name, plan.backward_start);
                    print!("{}", plan.grad_graph.pretty(plan.backward_start));
                } else {
                    println!("// train {}: loss", plan.name);
                    print!("{}", plan.loss_graph.pretty(0));
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn print_info(file: &Path, json: bool) -> ExitCode {
    let (source, program) = match read_and_parse(file) {
        Ok(sp) => sp,
        Err(code) => return code,
    };
    let infos = match check::model_infos(&program, &base_dir(file)) {
        Ok(infos) => infos,
        Err(d) => return report(file, &source, &d),
    };
    if json {
        let runs: Vec<serde_json::Value> = infos.iter().map(info_json).collect();
        println!("{}", serde_json::json!({ "runs": runs }));
    } else {
        let tables: Vec<String> = infos.iter().map(ModelInfo::table).collect();
        print!("{}", tables.join("\n"));
    }
    ExitCode::SUCCESS
}

/// One run's table for `nnc info --json`: shapes as lists of dims (numbers, or
/// strings for the symbolic batch), a receptive field as `[h, w]` or null.
fn info_json(info: &ModelInfo) -> serde_json::Value {
    let shape = |s: &Shape| -> Vec<serde_json::Value> {
        s.dims()
            .iter()
            .map(|d| match d {
                Dim::Known(n) => serde_json::json!(n),
                Dim::Sym(name) => serde_json::json!(name),
            })
            .collect()
    };
    let layers: Vec<serde_json::Value> = info
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "path": l.path,
                "module": l.module,
                "depth": l.depth,
                "output": l.output.as_ref().map(shape),
                "params": l.params,
                "receptive_field": l.receptive_field,
                "flops": l.flops,
            })
        })
        .collect();
    serde_json::json!({
        "run": info.run,
        "data": info.data,
        "input": shape(&info.input),
        "layers": layers,
        "total_params": info.total_params,
        "total_flops": info.total_flops,
    })
}
