//! The training loop: initialise parameters, feed batches through the
//! compiled step function, evaluate metrics, write checkpoints.

use crate::checkpoint;
use crate::data::{gather_rows, shuffled_order};
use crate::dataset::{Dataset, Split};
use crate::exec::Exec;
use crate::init::{initialize, Init};
use crate::masking::IGNORE;
use crate::resume;
use crate::rng;
use crate::schedule::Schedule;
use indicatif::{ProgressBar, ProgressStyle};
use nnc_compiler::codegen::{CodegenError, CompileOptions};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::train::{HYPER_BC1, HYPER_BC2, HYPER_LR};
use nnc_compiler::elaborate::{MetricKind, MetricSpec, OptimizerSpec, ParamInit, ScheduleSpec, Seq2Seq, TrainPlan, HYPER_SEED};
use nnc_compiler::ir::SizeEnv;
use std::path::Path;
use std::time::{Duration, Instant};

/// Trained parameters by path (`l1.W`), with shapes.
#[derive(Clone, Debug, Default)]
pub struct Params {
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Params {
    pub fn get(&self, path: &str) -> Option<&(String, Vec<usize>, Vec<f32>)> {
        self.tensors.iter().find(|(p, _, _)| p == path)
    }
}

/// What a training run produced and measured.
#[derive(Clone, Debug, Default)]
pub struct TrainResult {
    pub params: Params,
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f64>,
    /// The loss of every step, in order (curves of short runs: `plot`).
    pub step_losses: Vec<f64>,
    /// Final value of each metric, by label (`accuracy on digits.test`).
    pub metrics: Vec<(MetricSpec, f64)>,
    pub steps: usize,
    pub compile_time: Duration,
    pub train_time: Duration,
    /// Time inside training steps only (batch gathering + the compiled step),
    /// without per-epoch evaluation and checkpoints: what steps/s is based on.
    pub step_time: Duration,
    /// Seconds from process start to the end of the first step.
    pub first_step_at: Option<Duration>,
    /// The first rows each `exact_match` metric decoded after the last epoch,
    /// by metric label (`crate::decode::Decoded::describe`).
    pub decodes: Vec<(String, Vec<String>)>,
}

/// How training shows its progress on stderr. The caller decides (the CLI
/// knows whether stderr is a terminal); the loop only follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing (`--quiet`, `--json`, tests).
    Quiet,
    /// A terminal: a live bar, with a line per epoch printed above it.
    Bar,
    /// A log file or pipe: one line per epoch and nothing else, as Keras's
    /// `verbose=2` (a bar's redraws would fill a log with carriage returns).
    Lines,
}

pub struct TrainOptions<'a> {
    pub base_dir: &'a Path,
    pub progress: Progress,
    pub process_start: Instant,
    /// Override the plan's epoch count (benchmarks, quick runs).
    pub epochs: Option<usize>,
    /// How the step and the metrics are compiled (`--bounds-checked`).
    pub compile: CompileOptions,
    /// Earlier training runs of the file, whose trained models this run may use.
    pub previous: &'a [(String, TrainResult)],
}

fn init_of(p: &ParamInit) -> Init {
    match p {
        ParamInit::Zeros => Init::Zeros,
        ParamInit::Ones => Init::Ones,
        ParamInit::Normal { std } => Init::Normal { std: *std },
        ParamInit::Uniform { low, high } => Init::Uniform { low: *low, high: *high },
        ParamInit::HeNormal => Init::HeNormal,
        ParamInit::XavierUniform => Init::XavierUniform,
        ParamInit::XavierNormal => Init::XavierNormal,
    }
}

/// The schedule in optimizer steps.
pub fn schedule_of(s: &ScheduleSpec, steps_per_epoch: usize, total_steps: usize) -> Schedule {
    match s {
        ScheduleSpec::Constant => Schedule::Constant,
        ScheduleSpec::Step { every, gamma } => Schedule::Step { every: (every * steps_per_epoch).max(1), gamma: *gamma },
        ScheduleSpec::Cosine { min_factor } => Schedule::Cosine { total: total_steps.max(1), min_factor: *min_factor },
        ScheduleSpec::Warmup { epochs, then } => {
            let steps = ((epochs * steps_per_epoch as f64).round() as usize).max(1);
            Schedule::Warmup { steps, then: Box::new(schedule_of(then, steps_per_epoch, total_steps.saturating_sub(steps))) }
        }
    }
}

/// Fresh parameters, deterministic given the plan's seed.
pub fn initial_params(plan: &TrainPlan) -> Result<Params, Diagnostic> {
    let mut rng = rng::seeded(plan.seed, 0);
    let mut tensors = Vec::new();
    // Buffers after the parameters: `check` relies on parameters coming first.
    for p in plan.params.iter().chain(&plan.buffers) {
        let v = initialize(&init_of(&p.init), &p.shape, &mut rng)
            .map_err(|e| Diagnostic::new(format!("cannot initialise `{}`", p.path)).label(plan.span, e.to_string()))?;
        tensors.push((p.path.clone(), p.shape.clone(), v));
    }
    Ok(Params { tensors })
}

fn compile_error(plan: &TrainPlan, e: CodegenError) -> Diagnostic {
    e.to_diagnostic(&format!("`{}`", plan.name), plan.span)
}

/// Train as the plan says on `data`, evaluating metrics on `datasets`.
pub fn train(plan: &TrainPlan, datasets: &[Dataset], opts: &TrainOptions) -> Result<TrainResult, Diagnostic> {
    let find = |d: &str, s: &str| datasets.iter().find(|ds| ds.name == d).and_then(|ds| ds.split(s));
    let split = find(&plan.data, &plan.split).ok_or_else(|| Diagnostic::new("training data not loaded").label(plan.span, "here"))?;
    let n = split.x.nrows();
    if n == 0 {
        return Err(
            Diagnostic::new(format!("the split `{}.{}` has no rows", plan.data, plan.split)).label(plan.span, "nothing to train on")
        );
    }
    let batch = plan.batch.unwrap_or(n).min(n);
    let epochs = opts.epochs.unwrap_or(plan.epochs);
    let steps_per_epoch = n.div_ceil(batch);
    let schedule = schedule_of(&plan.schedule, steps_per_epoch, steps_per_epoch * epochs);
    let features = plan.features;

    // One compiled step for full batches, one for the last partial batch.
    let updates: Vec<(usize, String)> = plan.updates.iter().map(|(o, id)| (*o, input_name(plan, *id))).collect();
    let t0 = Instant::now();
    let mut full = Exec::compile(&plan.step_graph, &sizes(batch), &updates, opts.compile).map_err(|e| compile_error(plan, e))?;
    let rem = n % batch;
    let mut partial = if rem > 0 {
        Some(Exec::compile(&plan.step_graph, &sizes(rem), &updates, opts.compile).map_err(|e| compile_error(plan, e))?)
    } else {
        None
    };
    let mut evaluators = Evaluators::new(plan, datasets, opts.compile)?;
    let compile_time = t0.elapsed();
    // Earlier models used by this loss (`teacher(x)`) keep their trained values.
    for (name, value) in frozen_values(plan, opts.previous)? {
        full.set(&name, &value);
        if let Some(p) = partial.as_mut() {
            p.set(&name, &value);
        }
        for e in &mut evaluators.entries {
            for exec in e.execs_mut() {
                exec.set(&name, &value);
            }
        }
    }

    let start = resume::start(plan, opts.base_dir, epochs)?;
    let mut params = start.params;
    for (path, _, v) in &params.tensors {
        full.set(path, v);
    }
    for (name, v) in &start.state {
        full.set(name, v);
    }
    let mut result = TrainResult { compile_time, ..TrainResult::default() };
    let bar = progress_bar(opts.progress, ((epochs - start.epoch) * steps_per_epoch) as u64, &plan.name);
    let started = Instant::now();
    let mut step = start.step;
    let mut xbuf = vec![0.0f32; batch * features];
    let label_width = split.y.ncols();
    let mut ybuf = vec![0.0f32; batch * label_width];
    for epoch in start.epoch..epochs {
        let epoch_started = Instant::now();
        let order: Vec<usize> = match split.shuffle_seed {
            Some(seed) => shuffled_order(n, seed, epoch),
            None => (0..n).collect(),
        };
        let mut loss_sum = 0.0f64;
        for start in (0..n).step_by(batch) {
            let rows = &order[start..(start + batch).min(n)];
            let b = rows.len();
            let exec = if b == batch {
                &mut full
            } else {
                // The partial batch has its own compiled step: bring it the current state.
                let Some(p) = partial.as_mut() else { break };
                copy_state(plan, &full, p);
                p
            };
            gather_rows(&split.x, rows, &mut xbuf[..b * features]).map_err(|e| Diagnostic::new(e.to_string()))?;
            if let Some(a) = &split.augment {
                a.apply(&mut xbuf[..b * features], rows, epoch).map_err(|e| Diagnostic::new(e.to_string()))?;
            }
            gather_rows(&split.y, rows, &mut ybuf[..b * label_width]).map_err(|e| Diagnostic::new(e.to_string()))?;
            if let Some(m) = &split.masking {
                m.remask(&mut xbuf[..b * features], &mut ybuf[..b * label_width], rows, epoch);
            }
            exec.set("x", &xbuf[..b * features]);
            exec.set("y", &ybuf[..b * label_width]);
            set_hypers(exec, &plan.optimizer, &schedule, step, plan.seed);
            if let Err(d) = exec.run() {
                leave_bar(&bar, opts.progress);
                return Err(d);
            }
            let loss = exec.output(0).first().copied().unwrap_or(f32::NAN) as f64;
            if b != batch {
                if let Some(p) = partial.as_ref() {
                    copy_state(plan, p, &mut full);
                }
            }
            if !loss.is_finite() {
                leave_bar(&bar, opts.progress);
                return Err(Diagnostic::new(format!(
                    "training `{}` diverged: the loss is {loss} at epoch {}, step {}",
                    plan.name,
                    epoch + 1,
                    step + 1
                ))
                .label(plan.span, "in this training run")
                .note("try a smaller learning rate, or check the data for extreme values"));
            }
            if result.first_step_at.is_none() {
                result.first_step_at = Some(opts.process_start.elapsed());
            }
            loss_sum += loss * b as f64;
            result.step_losses.push(loss);
            step += 1;
            bar.inc(1);
        }
        result.step_time += epoch_started.elapsed();
        let epoch_loss = loss_sum / n as f64;
        result.epoch_losses.push(epoch_loss);
        read_params(&full, &mut params);
        let metrics = evaluators.evaluate(plan, &params)?;
        let line = format_epoch(epoch + 1, epochs, epoch_loss, &metrics, epoch_started.elapsed());
        match opts.progress {
            Progress::Quiet => {}
            // Printed by us, not `bar.println`: indicatif ends its lines by
            // padding them to the terminal's width, so a captured terminal
            // session (`script`) held one endless line.
            Progress::Bar => bar.suspend(|| eprintln!("{line}")),
            Progress::Lines => eprintln!("{line}"),
        }
        result.metrics = metrics;
        if let Some(path) = &plan.checkpoint {
            save_checkpoint(plan, &params, &full, &opts.base_dir.join(path), epoch + 1, step)?;
        }
    }
    leave_bar(&bar, opts.progress);
    result.train_time = started.elapsed();
    result.steps = step;
    result.compile_time += evaluators.compile_time;
    result.decodes = evaluators.decodes;
    result.params = params;
    Ok(result)
}

fn sizes(b: usize) -> SizeEnv {
    [("B".to_string(), b)].into_iter().collect()
}

fn input_name(plan: &TrainPlan, id: nnc_compiler::ir::ValueId) -> String {
    match &plan.step_graph.node(id).op {
        nnc_compiler::ops::Op::Input { name, .. } => name.clone(),
        _ => String::new(),
    }
}

/// Names of everything a step carries over: parameters, buffers and optimizer state.
fn state_names(plan: &TrainPlan) -> impl Iterator<Item = &str> {
    let params = plan.params.iter().chain(&plan.buffers).map(|p| p.path.as_str());
    params.chain(plan.state.iter().map(|(n, _)| n.as_str()))
}

fn copy_state(plan: &TrainPlan, from: &Exec, to: &mut Exec) {
    for name in state_names(plan) {
        if let (Some(src), Some(dst)) = (from.input(name), to.input_mut(name)) {
            dst.copy_from_slice(src);
        }
    }
}

fn read_params(exec: &Exec, params: &mut Params) {
    for (path, _, v) in &mut params.tensors {
        if let Some(src) = exec.input(path) {
            v.copy_from_slice(src);
        }
    }
}

/// The seed of step `step`'s random numbers (dropout masks): distinct for
/// every step of a run and for every training seed, exact in f32.
fn step_seed(seed: u64, step: usize) -> f32 {
    let mixed = seed.wrapping_mul(0x9E37_79B9).wrapping_add(step as u64 + 1);
    (mixed % (1 << 24)) as f32
}

fn set_hypers(exec: &mut Exec, o: &OptimizerSpec, schedule: &Schedule, step: usize, seed: u64) {
    let lr = o.lr * schedule.factor(step);
    let t = (step + 1) as i32;
    exec.set(HYPER_LR, &[lr as f32]);
    exec.set(HYPER_SEED, &[step_seed(seed, step)]);
    exec.set(HYPER_BC1, &[(1.0 - o.beta1.powi(t)) as f32]);
    exec.set(HYPER_BC2, &[(1.0 - o.beta2.powi(t)) as f32]);
}

fn progress_bar(progress: Progress, total: u64, name: &str) -> ProgressBar {
    if progress != Progress::Bar {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("train {name}"));
    bar
}

/// Stop drawing the bar and leave it on screen, ended by a line break of its
/// own (indicatif ends it with spaces up to the terminal's width instead, so
/// the next message began on the bar's line in a captured session).
fn leave_bar(bar: &ProgressBar, progress: Progress) {
    bar.abandon();
    if progress == Progress::Bar {
        eprintln!();
    }
}

/// One epoch's line: its loss, every metric, and its time (training and evaluation).
fn format_epoch(epoch: usize, epochs: usize, loss: f64, metrics: &[(MetricSpec, f64)], time: Duration) -> String {
    let mut s = format!("epoch {epoch:>3}/{epochs}  train loss {loss:.5}");
    for (m, v) in metrics {
        s.push_str(&format!("  {} {}", m.label(), format_metric(m.kind, *v)));
    }
    s.push_str(&format!("  {:.2} s", time.as_secs_f64()));
    s
}

pub fn format_metric(kind: MetricKind, v: f64) -> String {
    match kind {
        MetricKind::Accuracy | MetricKind::ExactMatch(_) => format!("{:.2}%", v * 100.0),
        MetricKind::Loss | MetricKind::Mse => format!("{v:.5}"),
    }
}

/// The trained values of the earlier models a plan reads (`teacher.l1.W`).
fn frozen_values(plan: &TrainPlan, previous: &[(String, TrainResult)]) -> Result<Vec<(String, Vec<f32>)>, Diagnostic> {
    plan.frozen
        .iter()
        .map(|name| {
            let value = name
                .split_once('.')
                .and_then(|(run, path)| previous.iter().find(|(r, _)| r == run).and_then(|(_, res)| res.params.get(path)))
                .map(|(_, _, v)| v.clone());
            value
                .map(|v| (name.clone(), v))
                .ok_or_else(|| Diagnostic::new(format!("no trained value for `{name}`")).label(plan.span, "used here"))
        })
        .collect()
}

fn save_checkpoint(plan: &TrainPlan, params: &Params, exec: &Exec, path: &Path, epoch: usize, step: usize) -> Result<(), Diagnostic> {
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> =
        params.tensors.iter().map(|(p, s, v)| (p.clone(), s.clone(), v.as_slice())).collect();
    // The optimizer state, so that `resume` continues exactly. A state input
    // the compiled step does not read (optimized away) stays zero.
    let zeros: Vec<Vec<f32>> = plan.state.iter().map(|(_, shape)| vec![0.0; shape.iter().product()]).collect();
    for ((name, shape), zero) in plan.state.iter().zip(&zeros) {
        tensors.push((name.clone(), shape.clone(), exec.input(name).unwrap_or(zero)));
    }
    checkpoint::save(path, &tensors, &resume::metadata(plan, epoch, step))
        .map_err(|e| Diagnostic::new(format!("could not save checkpoint {}", path.display())).label(plan.span, e.to_string()))
}

/// Rows evaluated per call of a metric's compiled function. A whole split at
/// once would need memory for every activation of every row (a CNN's im2col
/// matrices on 10,000 MNIST images are gigabytes); chunks keep it bounded.
const EVAL_CHUNK: usize = 512;

/// One metric: its compiled function for full chunks and for the last, shorter one.
struct Evaluator<'d> {
    spec: MetricSpec,
    full: Exec,
    rest: Option<Exec>,
    split: &'d Split,
    chunk: usize,
    /// The special tokens of sequence-to-sequence data (for `exact_match`).
    tokens: Option<Seq2Seq>,
}

impl Evaluator<'_> {
    fn execs_mut(&mut self) -> impl Iterator<Item = &mut Exec> {
        std::iter::once(&mut self.full).chain(self.rest.as_mut())
    }
}

/// Compiled evaluation functions, one per metric split, reused every epoch.
struct Evaluators<'d> {
    entries: Vec<Evaluator<'d>>,
    compile_time: Duration,
    /// The first rows decoded by each `exact_match`, from the last evaluation.
    decodes: Vec<(String, Vec<String>)>,
}

impl<'d> Evaluators<'d> {
    fn new(plan: &TrainPlan, datasets: &'d [Dataset], options: CompileOptions) -> Result<Evaluators<'d>, Diagnostic> {
        let t0 = Instant::now();
        let mut entries = Vec::new();
        for m in &plan.metrics {
            let data = datasets.iter().find(|d| d.name == m.data);
            let split =
                data.and_then(|d| d.split(&m.split)).ok_or_else(|| Diagnostic::new("metric data not loaded").label(m.span, "here"))?;
            let tokens = data.and_then(|d| d.shape.seq2seq);
            let graph = match m.kind {
                MetricKind::Loss => &plan.loss_graph,
                MetricKind::Accuracy | MetricKind::Mse | MetricKind::ExactMatch(_) => &plan.forward_graph,
            };
            let n = split.x.nrows();
            let chunk = match (m.kind, tokens) {
                // Decoding scores every hypothesis of every row at each step,
                // padding the last chunk: one compiled batch size.
                (MetricKind::ExactMatch(d), Some(t)) => {
                    let chunk = (n * crate::decode::beam(d, t).width).clamp(1, EVAL_CHUNK);
                    let full = Exec::compile(graph, &sizes(chunk), &[], options).map_err(|e| compile_error(plan, e))?;
                    entries.push(Evaluator { spec: m.clone(), full, rest: None, split, chunk, tokens });
                    continue;
                }
                _ => n.clamp(1, EVAL_CHUNK),
            };
            let full = Exec::compile(graph, &sizes(chunk), &[], options).map_err(|e| compile_error(plan, e))?;
            let rest = match n % chunk {
                0 => None,
                r => Some(Exec::compile(graph, &sizes(r), &[], options).map_err(|e| compile_error(plan, e))?),
            };
            entries.push(Evaluator { spec: m.clone(), full, rest, split, chunk, tokens });
        }
        Ok(Evaluators { entries, compile_time: t0.elapsed(), decodes: Vec::new() })
    }

    fn evaluate(&mut self, plan: &TrainPlan, params: &Params) -> Result<Vec<(MetricSpec, f64)>, Diagnostic> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            for exec in e.execs_mut() {
                for (path, _, v) in &params.tensors {
                    exec.set(path, v);
                }
            }
            if let (MetricKind::ExactMatch(d), Some(tokens)) = (e.spec.kind, e.tokens) {
                let (value, shown) = crate::decode::exact_match(&mut e.full, e.chunk, d, tokens, e.split)?;
                self.decodes.retain(|(label, _)| *label != e.spec.label());
                self.decodes.push((e.spec.label(), shown.iter().map(|r| r.describe(tokens.eos)).collect()));
                out.push((e.spec.clone(), value));
                continue;
            }
            let (x, y) = (e.split.x.as_slice().unwrap_or(&[]), e.split.y.as_slice().unwrap_or(&[]));
            let (n, f, w) = (e.split.x.nrows(), e.split.x.ncols(), e.split.y.ncols());
            // The loss is a mean per chunk: weight it by the chunk's rows.
            let mut loss_sum = 0.0f64;
            let mut outputs: Vec<f32> = Vec::new();
            for start in (0..n).step_by(e.chunk) {
                let end = (start + e.chunk).min(n);
                let exec = if end - start == e.chunk { &mut e.full } else { e.rest.as_mut().unwrap_or(&mut e.full) };
                exec.set("x", &x[start * f..end * f]);
                exec.set("y", &y[start * w..end * w]);
                exec.run()?;
                match e.spec.kind {
                    MetricKind::Loss => loss_sum += f64::from(exec.output(0).first().copied().unwrap_or(f32::NAN)) * (end - start) as f64,
                    MetricKind::Accuracy | MetricKind::Mse | MetricKind::ExactMatch(_) => outputs.extend_from_slice(exec.output(0)),
                }
            }
            let value = match e.spec.kind {
                MetricKind::Loss => loss_sum / n.max(1) as f64,
                MetricKind::Accuracy => accuracy(&outputs, y, plan)
                    .map_err(|(index, bound)| crate::exec::index_fault(crate::exec::Selects::Classes, index, bound, e.spec.span))?,
                MetricKind::Mse => mse(&outputs, y),
                MetricKind::ExactMatch(_) => f64::NAN,
            };
            out.push((e.spec.clone(), value));
        }
        Ok(out)
    }
}

/// Fraction of rows whose largest logit is at the label (first maximum wins).
/// Positions labelled [`IGNORE`] (not masked by `text(..., mask:)`) do not
/// count; any other label outside the `k` classes of the logits is an error,
/// returned as the label and `k`: it would otherwise count as a wrong answer.
pub fn accuracy(logits: &[f32], labels: &[f32], plan: &TrainPlan) -> Result<f64, (f64, usize)> {
    let k = plan.classes.unwrap_or(1).max(1);
    let k = if logits.len() == labels.len() * k { k } else { logits.len() / labels.len().max(1) };
    if k == 0 || labels.is_empty() {
        return Ok(0.0);
    }
    let not_a_class = |y: f32| y != IGNORE && nnc_compiler::ops::index::row_index(f64::from(y), k).is_none();
    if let Some(&y) = labels.iter().find(|&&y| not_a_class(y)) {
        return Err((f64::from(y), k));
    }
    let counted = labels.iter().filter(|&&y| y != IGNORE).count();
    let correct = logits
        .chunks(k)
        .zip(labels)
        .filter(|(row, &y)| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as f32 == y
        })
        .count();
    Ok(correct as f64 / counted.max(1) as f64)
}

pub fn mse(pred: &[f32], target: &[f32]) -> f64 {
    if target.is_empty() || pred.len() != target.len() {
        return f64::NAN;
    }
    pred.iter().zip(target).map(|(p, t)| ((p - t) as f64).powi(2)).sum::<f64>() / target.len() as f64
}
