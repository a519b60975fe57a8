//! Running a whole `.nn` file: items in order — load data, train, evaluate
//! `let` and `report`, draw plots — and the summary `nnc run --json` prints.

use crate::dataset::{self, Dataset};
use crate::plot;
use crate::train::{self, Progress, TrainOptions, TrainResult};
use ndarray::ArrayD;
use nnc_compiler::ast::{Item, Program, Span};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::{MetricKind, Session};
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::TensorType;
use nnc_compiler::syntax;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct RunOptions<'a> {
    pub base_dir: &'a Path,
    pub progress: Progress,
    pub process_start: Instant,
    pub epochs: Option<usize>,
    /// How training steps and metrics are compiled (`--bounds-checked`).
    pub compile: nnc_compiler::codegen::CompileOptions,
}

/// Everything a run measured.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: Vec<(String, TrainResult)>,
    /// Print each result line on stderr as soon as it is known.
    pub echo: bool,
    /// `report` values, by label.
    pub reports: Vec<(String, f64)>,
    pub seconds: f64,
    /// Lines for the terminal (reports, final metrics).
    pub lines: Vec<String>,
}

impl Summary {
    /// Record a result line (and show it now, so a later failure loses nothing).
    fn say(&mut self, line: String) {
        if self.echo {
            eprintln!("{line}");
        }
        self.lines.push(line);
    }
}

/// State shared by the items of one file as they run.
pub struct Runner<'p> {
    pub session: Session<'p>,
    pub datasets: Vec<Dataset>,
    lets: Vec<(String, ArrayD<f64>)>,
    pub summary: Summary,
}

/// Parse a file's text into an AST (diagnostics on failure).
pub fn parse(source: &str) -> Result<Program, Vec<Diagnostic>> {
    syntax::parse(source)
}

impl<'p> Runner<'p> {
    pub fn new(program: &'p Program) -> Result<Runner<'p>, Vec<Diagnostic>> {
        Ok(Runner { session: Session::new(program)?, datasets: Vec::new(), lets: Vec::new(), summary: Summary::default() })
    }

    /// Run every item in file order.
    pub fn run(&mut self, opts: &RunOptions) -> Result<(), Vec<Diagnostic>> {
        let started = Instant::now();
        let program = self.session.program();
        for item in &program.items {
            self.run_item(item, opts).map_err(|d| vec![d])?;
        }
        if let Some(table) = comparison_table(&self.summary.runs) {
            self.summary.say(table);
        }
        self.summary.seconds = started.elapsed().as_secs_f64();
        Ok(())
    }

    fn run_item(&mut self, item: &Item, opts: &RunOptions) -> Result<(), Diagnostic> {
        match item {
            Item::Module(_) | Item::Function(_) => Ok(()),
            Item::Data(d) => {
                let ds = dataset::load(d, opts.base_dir)?;
                self.session.add_data(&ds.name, ds.shape.clone());
                self.datasets.push(ds);
                Ok(())
            }
            Item::Train(t) => {
                let plan = self.session.train_plan(t).map_err(first)?;
                let topts = TrainOptions {
                    base_dir: opts.base_dir,
                    progress: opts.progress,
                    process_start: opts.process_start,
                    epochs: opts.epochs,
                    compile: opts.compile,
                    previous: &self.summary.runs,
                };
                let result = train::train(&plan, &self.datasets, &topts)?;
                let mut line = format!(
                    "{}: {} epochs, final train loss {:.5}",
                    plan.name,
                    result.epoch_losses.len(),
                    result.epoch_losses.last().copied().unwrap_or(f64::NAN)
                );
                for (m, v) in &result.metrics {
                    line.push_str(&format!(", {} {}", m.label(), train::format_metric(m.kind, *v)));
                }
                self.summary.say(line);
                for (label, rows) in &result.decodes {
                    self.summary.say(format!("  {label}, first rows:"));
                    for row in rows {
                        self.summary.say(format!("    {row}"));
                    }
                }
                self.session.add_trained(&plan.name, &t.model);
                self.summary.runs.push((plan.name.clone(), result));
                Ok(())
            }
            Item::Let(l) if self.session.add_const(&l.name.name, &l.value) => Ok(()),
            Item::Let(l) => {
                let value = self.evaluate(&l.value, l.ty.as_ref())?;
                let ty = TensorType::f32(nnc_compiler::ir::Shape::known(value.shape()));
                self.session.add_let(&l.name.name, ty);
                self.lets.push((l.name.name.clone(), value));
                Ok(())
            }
            Item::Report(r) => {
                let value = self.evaluate(&r.value, None)?;
                let text = if value.len() == 1 {
                    let v = value.iter().copied().next().unwrap_or(f64::NAN);
                    self.summary.reports.push((r.label.clone(), v));
                    if v != 0.0 && v.abs() < 1e-3 {
                        format!("{v:.3e}")
                    } else {
                        format!("{v:.6}")
                    }
                } else {
                    format!("{value:.4}")
                };
                self.summary.say(format!("{}: {text}", r.label));
                Ok(())
            }
            Item::Plot(p) => {
                let mut runs = Vec::new();
                for run in &p.runs {
                    match self.summary.runs.iter().find(|(n, _)| *n == run.name) {
                        Some((n, r)) => runs.push((n.clone(), r)),
                        None => {
                            return Err(Diagnostic::new(format!("no training run named `{}` before this plot", run.name))
                                .label(run.span, "not trained above"))
                        }
                    }
                }
                let (x, series) = loss_curves(&runs);
                let png = opts.base_dir.join(&p.path);
                let csv = png.with_extension("csv");
                plot::write_curves(&png, &csv, "training loss", x, &series)
                    .map_err(|e| Diagnostic::new(format!("could not write {}", png.display())).label(p.span, e.to_string()))?;
                self.summary.say(format!(
                    "wrote {} and {}",
                    p.path,
                    csv.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
                ));
                Ok(())
            }
        }
    }

    /// Evaluate a top-level expression with the reference interpreter (float64).
    fn evaluate(&self, e: &nnc_compiler::ast::Expr, ann: Option<&nnc_compiler::ast::TypeAnn>) -> Result<ArrayD<f64>, Diagnostic> {
        let eg = self.session.annotated_expr_graph(e, ann).map_err(first)?;
        let mut inputs = Inputs::new();
        for (_, name, _) in eg.graph.inputs() {
            let value =
                self.input_value(name).ok_or_else(|| Diagnostic::new(format!("no value for `{name}`")).label(e.span, "needed here"))?;
            inputs.insert(name.to_string(), value);
        }
        let out = interp::run(&eg.graph, &inputs).map_err(|err| crate::exec::eval_error(&eg.graph, &err, e.span))?;
        out.into_iter().next().ok_or_else(|| Diagnostic::new("no value").label(e.span, "here"))
    }

    /// Values for the inputs of top-level expressions: `data.split.x|y`, `let.name`, `model.path`.
    fn input_value(&self, name: &str) -> Option<ArrayD<f64>> {
        if let Some(l) = name.strip_prefix("let.") {
            return self.lets.iter().find(|(n, _)| n == l).map(|(_, v)| v.clone());
        }
        let parts: Vec<&str> = name.splitn(3, '.').collect();
        if let [d, s, f @ ("x" | "y")] = parts.as_slice() {
            if let Some(split) = self.datasets.iter().find(|ds| ds.name == *d).and_then(|ds| ds.split(s)) {
                let y = || match split.y.ncols() {
                    1 => split.y.column(0).mapv(f64::from).into_dyn(),
                    _ => split.y.mapv(f64::from).into_dyn(),
                };
                return Some(if *f == "x" { split.x.mapv(f64::from).into_dyn() } else { y() });
            }
        }
        let (model, path) = name.split_once('.')?;
        let (_, r) = self.summary.runs.iter().find(|(n, _)| n == model)?;
        let (_, shape, v) = r.params.get(path)?;
        ArrayD::from_shape_vec(shape.clone(), v.iter().map(|&x| f64::from(x)).collect()).ok()
    }
}

/// With several training runs, a table comparing them: final train loss and
/// each run's metrics, one row per run (`examples/norms.nn` compares four
/// normalisations this way).
/// Points a curve of one run has at most when drawn per step.
const STEP_POINTS: usize = 100;

/// The training-loss curves of `runs`: one point per epoch, or, when every run
/// trains a single epoch (a language model's one pass), the mean loss of
/// consecutive blocks of steps, about `STEP_POINTS` of them.
fn loss_curves(runs: &[(String, &TrainResult)]) -> (plot::XAxis, Vec<(String, Vec<f64>)>) {
    let per_step = !runs.is_empty() && runs.iter().all(|(_, r)| r.epoch_losses.len() == 1 && r.step_losses.len() > 1);
    if !per_step {
        return (plot::XAxis::EPOCHS, runs.iter().map(|(n, r)| (n.clone(), r.epoch_losses.clone())).collect());
    }
    let steps = runs.iter().map(|(_, r)| r.step_losses.len()).max().unwrap_or(1);
    let every = steps.div_ceil(STEP_POINTS).max(1);
    let mean = |block: &[f64]| block.iter().sum::<f64>() / block.len() as f64;
    let series = runs.iter().map(|(n, r)| (n.clone(), r.step_losses.chunks(every).map(mean).collect())).collect();
    (plot::XAxis { label: "step", every }, series)
}

fn comparison_table(runs: &[(String, TrainResult)]) -> Option<String> {
    if runs.len() < 2 {
        return None;
    }
    let mut columns: Vec<String> = Vec::new();
    for (_, r) in runs {
        for (m, _) in &r.metrics {
            if !columns.contains(&m.label()) {
                columns.push(m.label());
            }
        }
    }
    let width = runs.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(3);
    let mut out = format!("{:width$}  {:>10}", "run", "train loss");
    for c in &columns {
        out.push_str(&format!("  {c:>w$}", w = c.len().max(8)));
    }
    for (name, r) in runs {
        let loss = r.epoch_losses.last().copied().unwrap_or(f64::NAN);
        out.push_str(&format!("\n{name:width$}  {loss:>10.5}"));
        for c in &columns {
            let v = r.metrics.iter().find(|(m, _)| m.label() == *c);
            let text = v.map(|(m, v)| train::format_metric(m.kind, *v)).unwrap_or_else(|| "-".into());
            out.push_str(&format!("  {text:>w$}", w = c.len().max(8)));
        }
    }
    Some(out)
}

fn first(mut d: Vec<Diagnostic>) -> Diagnostic {
    if d.is_empty() {
        Diagnostic::new("unknown error").label(Span::default(), "")
    } else {
        d.swap_remove(0)
    }
}

/// The one-line JSON summary of `nnc run --json`.
pub fn summary_json(example: &str, s: &Summary) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut top = Map::new();
    top.insert("example".into(), json!(example));
    let last = s.runs.last();
    if let Some((_, r)) = last {
        top.insert("epochs".into(), json!(r.epoch_losses.len()));
        top.insert("train_loss".into(), json!(r.epoch_losses.last()));
        for (m, v) in &r.metrics {
            if m.split == "test" {
                match m.kind {
                    MetricKind::Accuracy => top.insert("test_accuracy".into(), json!(v)),
                    MetricKind::Mse => top.insert("test_mse".into(), json!(v)),
                    MetricKind::Loss => top.insert("test_loss".into(), json!(v)),
                    MetricKind::ExactMatch(_) => None,
                };
            }
        }
        // Steps per second over the steps themselves (evaluation between epochs excluded).
        let secs = r.step_time.as_secs_f64();
        if r.steps > 0 {
            top.insert("step_ms".into(), json!(secs * 1e3 / r.steps as f64));
            top.insert("steps_per_second".into(), json!(r.steps as f64 / secs.max(1e-12)));
        }
        top.insert("compile_ms".into(), json!(r.compile_time.as_secs_f64() * 1e3));
        if let Some(t) = r.first_step_at {
            top.insert("first_step_seconds".into(), json!(t.as_secs_f64()));
        }
    }
    top.insert("seconds".into(), json!(s.seconds));
    let runs: Map<String, Value> = s
        .runs
        .iter()
        .map(|(n, r)| {
            let metrics: Map<String, Value> = r.metrics.iter().map(|(m, v)| (m.label(), json!(v))).collect();
            let mut v = json!({
                "epochs": r.epoch_losses.len(),
                "train_loss": r.epoch_losses.last(),
                "metrics": metrics,
                "steps": r.steps,
                "train_seconds": r.train_time.as_secs_f64(),
                "compile_ms": r.compile_time.as_secs_f64() * 1e3,
            });
            if !r.decodes.is_empty() {
                let decodes: Map<String, Value> = r.decodes.iter().map(|(label, rows)| (label.clone(), json!(rows))).collect();
                v["decodes"] = Value::Object(decodes);
            }
            (n.clone(), v)
        })
        .collect();
    top.insert("runs".into(), Value::Object(runs));
    let reports: Map<String, Value> = s.reports.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    top.insert("reports".into(), Value::Object(reports));
    Value::Object(top)
}

/// Time spent compiling across runs.
pub fn total_compile_time(s: &Summary) -> Duration {
    s.runs.iter().map(|(_, r)| r.compile_time).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(epochs: Vec<f64>, steps: Vec<f64>) -> TrainResult {
        TrainResult { epoch_losses: epochs, step_losses: steps, ..TrainResult::default() }
    }

    #[test]
    fn one_epoch_runs_are_drawn_per_block_of_steps_others_per_epoch() {
        let short = run(vec![2.0], (0..250).map(f64::from).collect());
        let other = run(vec![3.0], vec![1.0; 120]);
        let (x, series) = loss_curves(&[("a".into(), &short), ("b".into(), &other)]);
        // 250 steps in blocks of 3: 84 points, the last one a block of one step.
        assert_eq!(x, plot::XAxis { label: "step", every: 3 });
        assert_eq!(series[0].1.len(), 84);
        assert_eq!(series[0].1[0], 1.0);
        assert_eq!(series[0].1[83], 249.0);
        assert_eq!(series[1].1.len(), 40);
        let long = run(vec![3.0, 2.0], vec![1.0; 20]);
        let (x, series) = loss_curves(&[("a".into(), &short), ("c".into(), &long)]);
        assert_eq!(x, plot::XAxis::EPOCHS);
        assert_eq!(series[1].1, vec![3.0, 2.0]);
    }
}
