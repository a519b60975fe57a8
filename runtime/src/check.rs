//! `nnc check`: everything `run` checks before training (names, shapes, data),
//! then a float64 finite-difference check of every parameter's gradient on a
//! small batch of real training data.

use crate::dataset::{self, Dataset};
use crate::train::initial_params;
use ndarray::{ArrayD, IxDyn};
use nnc_compiler::ast::{Expr, ExprKind, IndexItem, Item, TrainDef};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::{Session, TrainPlan};
use nnc_compiler::info::ModelInfo;
use nnc_compiler::interp::{self, Inputs};
use nnc_compiler::ir::{SizeEnv, TensorType};
use std::path::Path;

/// The worst relative error found for one parameter.
#[derive(Clone, Debug)]
pub struct ParamCheck {
    pub run: String,
    pub path: String,
    pub shape: Vec<usize>,
    pub worst_error: f64,
    pub checked: usize,
}

/// Relative errors above this fail the check.
pub const TOLERANCE: f64 = 1e-4;
/// The central differences' step.
const SMALL_STEP: f64 = 1e-6;
/// The step also tried where `SMALL_STEP` disagrees (`entry_error`).
const LARGE_STEP: f64 = 1e-5;

/// Whether `check_with` compares each gradient with finite differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gradients {
    Check,
    /// Stop after names, shapes, data and building the gradient graphs
    /// (`nnc check --shapes-only`): the float64 comparison takes up to two
    /// minutes on the larger examples, everything before it under a second.
    Skip,
}

/// Check a parsed program; returns per-parameter gradient errors.
pub fn check(program: &nnc_compiler::ast::Program, base_dir: &Path) -> Result<Vec<ParamCheck>, Vec<Diagnostic>> {
    check_with(program, base_dir, Gradients::Check)
}

/// `check`, with or without the gradient comparison (no results without it).
pub fn check_with(program: &nnc_compiler::ast::Program, base_dir: &Path, gradients: Gradients) -> Result<Vec<ParamCheck>, Vec<Diagnostic>> {
    let mut session = Session::new(program)?;
    let mut datasets: Vec<Dataset> = Vec::new();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    // Data sets that failed to load: items using them would only repeat that error.
    let mut unloaded: Vec<&str> = Vec::new();
    for item in &program.items {
        match item {
            Item::Module(_) | Item::Function(_) | Item::Plot(_) => {}
            Item::Data(d) => match dataset::load(d, base_dir) {
                Ok(ds) => {
                    session.add_data(&ds.name, ds.shape.clone());
                    datasets.push(ds);
                }
                Err(e) => {
                    unloaded.push(&d.name.name);
                    errors.push(e);
                }
            },
            Item::Train(t) if mentions(&t.data, &unloaded) || t.fields.iter().any(|f| mentions(&f.value, &unloaded)) => {
                session.add_trained(&t.name.name, &t.model);
            }
            Item::Let(l) if mentions(&l.value, &unloaded) => {}
            Item::Report(r) if mentions(&r.value, &unloaded) => {}
            Item::Train(t) => match session.train_plan(t) {
                Ok(plan) => {
                    match gradients {
                        Gradients::Check => match gradient_check(&plan, &datasets) {
                            Ok(r) => results.extend(r),
                            Err(e) => errors.push(e),
                        },
                        Gradients::Skip => {}
                    }
                    session.add_trained(&t.name.name, &t.model);
                }
                Err(e) => errors.extend(e),
            },
            Item::Let(l) if session.add_const(&l.name.name, &l.value) => {}
            Item::Let(l) => match session.annotated_expr_graph(&l.value, l.ty.as_ref()) {
                Ok(eg) => session.add_let(&l.name.name, TensorType::f32(eg.ty.shape.clone())),
                Err(e) => errors.extend(e),
            },
            Item::Report(r) => {
                if let Err(e) = session.expr_graph(&r.value) {
                    errors.extend(e);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(results)
    } else {
        Err(errors)
    }
}

/// Whether `e` uses any of `names`.
fn mentions(e: &Expr, names: &[&str]) -> bool {
    match &e.kind {
        ExprKind::Name(n) => names.contains(&n.as_str()),
        ExprKind::Number { .. } | ExprKind::Str(_) => false,
        ExprKind::Field(base, _) | ExprKind::Neg(base) => mentions(base, names),
        ExprKind::Call { callee, args } => mentions(callee, names) || args.iter().any(|a| mentions(&a.value, names)),
        ExprKind::Index { base, indices } => {
            mentions(base, names)
                || indices.iter().any(|i| match i {
                    IndexItem::Single(x) => mentions(x, names),
                    IndexItem::Range { start, end, .. } => start.iter().chain(end).any(|x| mentions(x, names)),
                })
        }
        ExprKind::Binary { lhs, rhs, .. } => mentions(lhs, names) || mentions(rhs, names),
        ExprKind::List(items) => items.iter().any(|x| mentions(x, names)),
        ExprKind::Repeat { item, count } => mentions(item, names) || mentions(count, names),
        ExprKind::On { what, data } => mentions(what, names) || mentions(data, names),
    }
}

/// The relative error of the derivative `analytic` against central
/// differences `central(h)`, measured against `floor` where both are smaller.
///
/// Two step sizes, each wrong in its own way: at `SMALL_STEP` the loss's
/// rounding (about ε·|L|/h) can reach 1e-4 of a small entry; at `LARGE_STEP` a
/// step is more likely to cross a ReLU's or max pool's kink. A wrong
/// derivative disagrees at both, so the better of the two counts.
fn entry_error<E>(analytic: f64, central: impl Fn(f64) -> Result<f64, E>, floor: f64) -> Result<f64, E> {
    let error = |numeric: f64| {
        let err = (analytic - numeric).abs() / (analytic.abs() + numeric.abs()).max(floor);
        if err.is_nan() {
            f64::INFINITY
        } else {
            err
        }
    };
    let err = error(central(SMALL_STEP)?);
    if err <= TOLERANCE {
        return Ok(err);
    }
    Ok(err.min(error(central(LARGE_STEP)?)))
}

/// Compare the symbolic gradient with central differences (float64) on up
/// to 8 training rows, at up to 12 entries of each parameter (fewer in deep models).
pub fn gradient_check(plan: &TrainPlan, datasets: &[Dataset]) -> Result<Vec<ParamCheck>, Diagnostic> {
    let split = datasets
        .iter()
        .find(|d| d.name == plan.data)
        .and_then(|d| d.split(&plan.split))
        .ok_or_else(|| Diagnostic::new("training data not loaded").label(plan.span, "here"))?;
    let b = split.x.nrows().min(8);
    let sizes: SizeEnv = [("B".to_string(), b)].into_iter().collect();
    let graph = plan.grad_graph.specialize(&sizes).map_err(|e| e.to_diagnostic())?;
    let mut params = initial_params(plan)?;
    // Constant initialisations (zero biases, unit scales) put every unit of a
    // layer at the same point, and on image data often exactly at a ReLU's or
    // max pool's kink (an all-zero patch plus a zero bias is exactly 0), where
    // central differences and the derivative legitimately disagree. Check at a
    // nearby generic point instead: constant tensors get small deterministic offsets.
    for (t, (_, _, v)) in params.tensors.iter_mut().enumerate() {
        if v.windows(2).all(|w| w[0] == w[1]) {
            for (i, x) in v.iter_mut().enumerate() {
                *x += (((i * 7919 + t * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.2;
            }
        }
    }
    let mut inputs = Inputs::new();
    let x: Vec<f64> = split.x.rows().into_iter().take(b).flat_map(|r| r.to_vec()).map(f64::from).collect();
    let y: Vec<f64> = split.y.iter().take(b * split.y.ncols()).map(|&v| f64::from(v)).collect();
    let y_shape: Vec<usize> = std::iter::once(b).chain(plan.label_width).collect();
    let bad = |e: String| Diagnostic::new(format!("gradient check of `{}` failed to run", plan.name)).label(plan.span, e);
    inputs.insert("x".into(), ArrayD::from_shape_vec(IxDyn(&[b, plan.features]), x).map_err(|e| bad(e.to_string()))?);
    inputs.insert("y".into(), ArrayD::from_shape_vec(IxDyn(&y_shape), y).map_err(|e| bad(e.to_string()))?);
    // One fixed dropout mask: the derivative is checked for that mask.
    inputs.insert(nnc_compiler::elaborate::HYPER_SEED.into(), ArrayD::from_elem(IxDyn(&[]), 1.0));
    for (path, shape, v) in &params.tensors {
        let a = ArrayD::from_shape_vec(IxDyn(shape), v.iter().map(|&x| f64::from(x)).collect()).map_err(|e| bad(e.to_string()))?;
        inputs.insert(path.clone(), a);
    }
    // Earlier models the loss reads (`teacher(x)`) are not trained by `check`:
    // any fixed values serve for comparing derivatives.
    for name in &plan.frozen {
        if let Some(id) = graph.input(name) {
            let shape = graph.shape(id).concrete().unwrap_or_default();
            let n: usize = shape.iter().product();
            let values = (0..n).map(|i| ((i * 7919 % 1000) as f64 / 1000.0 - 0.5) * 0.2).collect();
            inputs.insert(name.clone(), ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| bad(e.to_string()))?);
        }
    }
    let analytic = interp::run(&graph, &inputs).map_err(|e| crate::exec::eval_error(&graph, &e, plan.span))?;
    let mut loss_only = graph.clone();
    loss_only.outputs.truncate(1);
    let loss_at = |inp: &Inputs| -> Result<f64, Diagnostic> {
        let out = interp::run(&loss_only, inp).map_err(|e| crate::exec::eval_error(&loss_only, &e, plan.span))?;
        Ok(out.first().and_then(|a| a.iter().next().copied()).unwrap_or(f64::NAN))
    };
    // Rounding in the loss limits what central differences can resolve: about
    // ε·|L|/h in absolute terms. Entries whose gradient is below a few hundred
    // times that are compared against this floor instead of their own size.
    let base_loss = loss_at(&inputs)?;
    let floor = 1e-6 * base_loss.abs().max(1.0);
    // Up to 12 entries per parameter, fewer for deep models (each entry costs
    // two evaluations of the whole loss in float64), about 200 in all.
    let per_param = (200 / plan.params.len().max(1)).clamp(3, 12);
    let mut results = Vec::new();
    for (k, (path, shape, _)) in params.tensors.iter().enumerate() {
        let Some(grad) = analytic.get(k + 1) else { continue };
        let n: usize = shape.iter().product();
        // A spread of entries: deterministic, covering first, last and middle.
        let picks: Vec<usize> =
            if n <= per_param { (0..n).collect() } else { (0..per_param).map(|i| (i * 7919 + i * i * 104729) % n).collect() };
        let mut worst = 0.0f64;
        for &i in &picks {
            let central = |h: f64| -> Result<f64, Diagnostic> {
                let mut plus = inputs.clone();
                let mut minus = inputs.clone();
                if let (Some(p), Some(m)) =
                    (plus.get_mut(path).and_then(|a| a.as_slice_mut()), minus.get_mut(path).and_then(|a| a.as_slice_mut()))
                {
                    p[i] += h;
                    m[i] -= h;
                }
                Ok((loss_at(&plus)? - loss_at(&minus)?) / (2.0 * h))
            };
            let a = grad.as_slice().and_then(|s| s.get(i)).copied().unwrap_or(f64::NAN);
            worst = worst.max(entry_error(a, central, floor)?);
        }
        results.push(ParamCheck {
            run: plan.name.clone(),
            path: path.clone(),
            shape: shape.clone(),
            worst_error: worst,
            checked: picks.len(),
        });
    }
    Ok(results)
}

/// The training plans of a program (for `nnc ir`), loading data for shapes.
pub fn train_plans(program: &nnc_compiler::ast::Program, base_dir: &Path) -> Result<Vec<TrainPlan>, Vec<Diagnostic>> {
    plans_and_data(program, base_dir).map(|(plans, _)| plans)
}

/// The training plans and the data sets they were checked against (for
/// `nnc sample`, which needs a text data set's vocabulary).
pub fn plans_and_data(program: &nnc_compiler::ast::Program, base_dir: &Path) -> Result<(Vec<TrainPlan>, Vec<Dataset>), Vec<Diagnostic>> {
    for_each_train(program, base_dir, |session, t| session.train_plan(t))
}

/// The layer table of each training run's model (for `nnc info`), loading data for shapes.
pub fn model_infos(program: &nnc_compiler::ast::Program, base_dir: &Path) -> Result<Vec<ModelInfo>, Vec<Diagnostic>> {
    for_each_train(program, base_dir, |session, t| session.model_info(t)).map(|(infos, _)| infos)
}

/// Walk the items in order as `nnc run` would, without training or
/// evaluating anything, and apply `f` to every `train` block; also returns
/// the data sets loaded on the way.
fn for_each_train<T>(
    program: &nnc_compiler::ast::Program,
    base_dir: &Path,
    mut f: impl FnMut(&Session, &TrainDef) -> Result<T, Vec<Diagnostic>>,
) -> Result<(Vec<T>, Vec<Dataset>), Vec<Diagnostic>> {
    let mut session = Session::new(program)?;
    let mut out = Vec::new();
    let mut datasets = Vec::new();
    for item in &program.items {
        match item {
            Item::Data(d) => {
                let ds = dataset::load(d, base_dir).map_err(|e| vec![e])?;
                session.add_data(&ds.name, ds.shape.clone());
                datasets.push(ds);
            }
            Item::Train(t) => {
                out.push(f(&session, t)?);
                session.add_trained(&t.name.name, &t.model);
            }
            Item::Let(l) if session.add_const(&l.name.name, &l.value) => {}
            Item::Let(l) => {
                let eg = session.annotated_expr_graph(&l.value, l.ty.as_ref())?;
                session.add_let(&l.name.name, TensorType::f32(eg.ty.shape.clone()));
            }
            Item::Module(_) | Item::Function(_) | Item::Plot(_) | Item::Report(_) => {}
        }
    }
    Ok((out, datasets))
}

#[cfg(test)]
mod tests {
    use super::{entry_error, LARGE_STEP, SMALL_STEP, TOLERANCE};

    fn error(analytic: f64, central: impl Fn(f64) -> f64, floor: f64) -> f64 {
        entry_error::<()>(analytic, |h| Ok(central(h)), floor).unwrap()
    }

    /// Central differences of a smooth loss `6·sin(x)` at `x`, in float64.
    fn sine_difference(x: f64) -> impl Fn(f64) -> f64 {
        move |h| (6.0 * (x + h).sin() - 6.0 * (x - h).sin()) / (2.0 * h)
    }

    #[test]
    fn a_right_derivative_passes_and_a_wrong_one_fails() {
        let right = 6.0 * 0.3f64.cos();
        assert!(error(right, sine_difference(0.3), 6e-6) < 1e-8);
        // A derivative off by 0.1 % fails, whichever step is tried.
        assert!(error(right * 1.001, sine_difference(0.3), 6e-6) > TOLERANCE);
    }

    /// A small entry whose small-step difference carries the loss's rounding
    /// (an error that shrinks as 1/h): the larger step resolves it, and a
    /// derivative wrong by 1 % still fails.
    #[test]
    fn rounding_at_the_small_step_is_resolved_by_the_large_one() {
        let (entry, floor) = (1.6e-6, 6.4e-6);
        let rounded = |h: f64| entry + 2e-9 * (SMALL_STEP / h);
        assert!(error(entry, rounded, floor) < TOLERANCE);
        assert!((entry - rounded(SMALL_STEP)).abs() / floor > TOLERANCE, "the small step alone would fail");
        assert!(error(entry * 1.01, rounded, floor) > TOLERANCE);
    }

    /// A kink between the two steps: the small step sees the true slope and
    /// decides; the large one is not consulted.
    #[test]
    fn a_kink_within_the_large_step_does_not_fail_the_check() {
        let kinked = |h: f64| if h >= LARGE_STEP { 0.0 } else { 2.0 };
        assert!(error(2.0, kinked, 6e-6) < 1e-12);
        assert!(error(2.5, kinked, 6e-6) > TOLERANCE);
    }
}
