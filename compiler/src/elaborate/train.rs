//! `train` blocks: the model's parameters, the loss, its gradient, and the
//! optimizer update, built as one step graph (forward + backward + update)
//! that codegen compiles into one native function.

use super::error::ErrorKind;
use super::range::{self, Rule};
use super::seq2seq::{check_metric_data, decoder_input, decoding};
pub use super::seq2seq::{Decoding, DECODER_INPUT, DEFAULT_ALPHA};
use super::value::{Arg, Func, Tensor, Value};
use super::{Ctx, ElabError, Scope, Session};
use crate::ast::{Expr, ExprKind, Ident, Span, TrainDef};
use crate::autodiff;
use crate::builder::Builder;
use crate::diagnostic::Diagnostic;
use crate::ir::{Dim, Graph, InputKind, Shape, TensorType, ValueId};
use crate::opt;

#[derive(Clone, Debug, PartialEq)]
pub enum ParamInit {
    Zeros,
    Ones,
    Normal {
        std: f64,
    },
    Uniform {
        low: f64,
        high: f64,
    },
    /// N(0, 2/fan_in), as in the notes.
    HeNormal,
    XavierUniform,
    XavierNormal,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Dotted path, e.g. `l1.W`.
    pub path: String,
    pub shape: Vec<usize>,
    pub init: ParamInit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Full-batch gradient descent.
    Gd,
    Sgd,
    Momentum,
    Nesterov,
    Adam,
    AdamW,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    pub lr: f64,
    /// Momentum coefficient (momentum, Nesterov) or β1 (Adam).
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleSpec {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f64,
    },
    /// Cosine decay from 1 to `min_factor` over the whole run.
    Cosine {
        min_factor: f64,
    },
    /// Linear warmup over `epochs` (a fraction is fine: `0.1`), then `then`.
    Warmup {
        epochs: f64,
        then: Box<ScheduleSpec>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricKind {
    Loss,
    Accuracy,
    Mse,
    /// The fraction of rows whose decoded sequence is the target, exactly
    /// (sequence-to-sequence data: see `super::Seq2Seq`).
    ExactMatch(Decoding),
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricSpec {
    pub kind: MetricKind,
    pub data: String,
    pub split: String,
    pub span: Span,
}

impl MetricKind {
    /// How the metric is written: `accuracy`, `exact_match(beam: 4)`.
    pub fn name(&self) -> String {
        match *self {
            MetricKind::Loss => "loss".to_string(),
            MetricKind::Accuracy => "accuracy".to_string(),
            MetricKind::Mse => "mse".to_string(),
            MetricKind::ExactMatch(Decoding::Greedy) => "exact_match(greedy)".to_string(),
            MetricKind::ExactMatch(Decoding::Beam { width, alpha }) if alpha == DEFAULT_ALPHA => format!("exact_match(beam: {width})"),
            MetricKind::ExactMatch(Decoding::Beam { width, alpha }) => format!("exact_match(beam: {width}, alpha: {alpha})"),
        }
    }
}

impl MetricSpec {
    pub fn label(&self) -> String {
        format!("{} on {}.{}", self.kind.name(), self.data, self.split)
    }
}

/// Everything the runtime needs to run one `train` block.
#[derive(Clone, Debug)]
pub struct TrainPlan {
    pub name: String,
    pub data: String,
    pub split: String,
    pub params: Vec<ParamSpec>,
    /// Module `buffer`s (running statistics): fed like parameters, updated by
    /// the step itself (see `updates`), saved in checkpoints, never trained.
    pub buffers: Vec<ParamSpec>,
    /// params, `x`, `y` → loss.
    pub loss_graph: Graph,
    /// params, `x` → model output.
    pub forward_graph: Graph,
    /// params, `x`, `y` → loss and each parameter's gradient; the backward
    /// pass starts at node `backward_start`.
    pub grad_graph: Graph,
    pub backward_start: usize,
    /// params, `x`, `y`, optimizer state, hyperparameters → loss, new params, new state.
    pub step_graph: Graph,
    /// `(output index, input)` pairs: after a step, each input holds that output.
    pub updates: Vec<(usize, ValueId)>,
    /// Optimizer state inputs (start at zero): name and shape.
    pub state: Vec<(String, Vec<usize>)>,
    pub optimizer: OptimizerSpec,
    pub schedule: ScheduleSpec,
    /// `None`: the whole split in one batch (`gd`).
    pub batch: Option<usize>,
    pub epochs: usize,
    pub seed: u64,
    pub metrics: Vec<MetricSpec>,
    pub checkpoint: Option<String>,
    /// Start from the parameters in this checkpoint instead of initialising.
    pub load: Option<(String, Span)>,
    /// Continue the run that wrote this checkpoint: its parameters, optimizer
    /// state, epoch and step.
    pub resume: Option<(String, Span)>,
    /// Inputs holding parameters of earlier trained models (`teacher.l1.W`),
    /// fed with their trained values and never updated.
    pub frozen: Vec<String>,
    pub label_int: bool,
    pub features: usize,
    /// Labels per row, if each position of a row has one (see `DataShape`).
    pub label_width: Option<usize>,
    pub classes: Option<usize>,
    pub span: Span,
}

/// Names of the scalar inputs the runtime feeds each step.
pub const HYPER_LR: &str = "hyper.lr";
pub const HYPER_BC1: &str = "hyper.bias_correction1";
pub const HYPER_BC2: &str = "hyper.bias_correction2";

/// The settings a `train` block accepts.
pub(crate) const FIELDS: &[&str] = &["loss", "optimizer", "batch", "epochs", "seed", "schedule", "metrics", "checkpoint", "load", "resume"];

impl<'p> Session<'p> {
    /// Check and build everything a `train` block needs.
    pub fn train_plan(&self, t: &TrainDef) -> Result<TrainPlan, Vec<Diagnostic>> {
        self.train_plan_inner(t).map_err(|e| vec![e.to_diagnostic()])
    }

    fn train_plan_inner(&self, t: &TrainDef) -> Result<TrainPlan, ElabError> {
        let cx = Ctx::new(self);
        for f in &t.fields {
            if !FIELDS.contains(&f.key.name.as_str()) {
                return Err(cx.err(ErrorKind::UnknownTrainField { span: f.key.span, field: f.key.name.clone() }));
            }
        }
        let field = |name: &str| t.fields.iter().find(|f| f.key.name == name);
        let (data, split) = data_split(&cx, &t.data)?;
        let shape = self
            .data
            .get(&data)
            .cloned()
            .ok_or_else(|| cx.err(ErrorKind::Internal { span: t.data.span, message: "data not loaded".into() }))?;

        let loss_field = field("loss").ok_or_else(|| cx.err(ErrorKind::MissingField { span: t.name.span, field: "loss".into() }))?;
        let opt_field =
            field("optimizer").ok_or_else(|| cx.err(ErrorKind::MissingField { span: t.name.span, field: "optimizer".into() }))?;
        let optimizer = optimizer_spec(&cx, &opt_field.value)?;
        let batch = match (optimizer.kind, field("batch")) {
            (OptimizerKind::Gd, _) => None,
            (_, Some(f)) => Some(literal_natural(&cx, &f.value, &range::BATCH)?),
            (_, None) => return Err(cx.err(ErrorKind::MissingField { span: t.name.span, field: "batch".into() })),
        };
        let epochs = match field("epochs") {
            Some(f) => literal_natural(&cx, &f.value, &range::EPOCHS)?,
            None => return Err(cx.err(ErrorKind::MissingField { span: t.name.span, field: "epochs".into() })),
        };
        let seed = match field("seed") {
            Some(f) => literal_natural(&cx, &f.value, &range::SEED)? as u64,
            None => 0,
        };
        let schedule = match field("schedule") {
            Some(f) => schedule_spec(&cx, &f.value)?,
            None => ScheduleSpec::Constant,
        };
        let metrics = match field("metrics") {
            Some(f) => metric_specs(&cx, &f.value, &data, &shape)?,
            None => Vec::new(),
        };
        let file_field = |name: &str| -> Result<Option<(String, Span)>, ElabError> {
            match field(name) {
                Some(f) => match &f.value.kind {
                    ExprKind::Str(s) => Ok(Some((s.clone(), f.value.span))),
                    _ => Err(cx.err(ErrorKind::BadFieldValue {
                        span: f.value.span,
                        field: name.into(),
                        expected: "a file name in quotes".into(),
                    })),
                },
                None => Ok(None),
            }
        };
        let checkpoint = file_field("checkpoint")?.map(|(s, _)| s);
        let load = file_field("load")?;
        let resume = file_field("resume")?;
        if let (Some((_, load)), Some((_, span))) = (&load, &resume) {
            return Err(cx.err(ErrorKind::LoadAndResume { span: *span, load: *load }));
        }

        // The loss and its gradient.
        let (mut cx, loss, param_ids) = self.loss_graph_ctx(t, &loss_field.value, &shape, true)?;
        // The loss as a metric is evaluated in evaluation mode (no dropout,
        // batch norm with running statistics): a graph of its own.
        let (eval_cx, eval_loss, _) = self.loss_graph_ctx(t, &loss_field.value, &shape, false)?;
        let mut loss_graph = eval_cx.graph;
        loss_graph.outputs = vec![eval_loss];
        loss_graph.output_names = vec!["loss".into()];
        let params = cx.params.clone();
        let buffers = cx.buffers.clone();
        let buffer_updates = std::mem::take(&mut cx.buffer_updates);
        let backward_raw = cx.graph.nodes.len();
        let grads = autodiff::grad(&mut cx.graph, loss, &param_ids, t.span)
            .map_err(|e| cx.err(ErrorKind::Internal { span: t.span, message: format!("{e:?}") }))?;
        let mut grad_graph = cx.graph.clone();
        grad_graph.outputs = std::iter::once(loss).chain(grads.iter().copied()).collect();
        grad_graph.output_names =
            std::iter::once("loss".to_string()).chain(params.iter().map(|p| format!("d loss/d {}", p.path))).collect();
        let (grad_graph, backward_start) = opt::optimize_split(&grad_graph, backward_raw);

        // The optimizer update, appended to the same graph.
        let mut b = Builder::new(&mut cx.graph, t.span);
        let update = optimizer_update(&mut b, &optimizer, &params, &param_ids, &grads);
        if let Some(e) = b.internal_error {
            return Err(cx.err(ErrorKind::Internal { span: t.span, message: format!("optimizer update: {e:?}") }));
        }
        let mut step = cx.graph.clone();
        // Outputs: the loss, the optimizer's new values, then the buffers' new values.
        let mut new_values = update.outputs.clone();
        new_values.extend(buffer_updates.iter().map(|(path, v)| (*v, format!("new {path}"), path.clone())));
        step.outputs = std::iter::once(loss).chain(new_values.iter().map(|(v, _, _)| *v)).collect();
        step.output_names = std::iter::once("loss".to_string()).chain(new_values.iter().map(|(_, n, _)| n.clone())).collect();
        let step_graph = opt::optimize(&step);
        let updates =
            new_values.iter().enumerate().filter_map(|(i, (_, _, input))| step_graph.input(input).map(|id| (i + 1, id))).collect();

        // Only the batch, the parameters and the optimizer's own inputs are fed each step.
        let frozen: Vec<String> = cx.frozen.iter().map(|p| p.path.clone()).collect();
        let fed = |name: &str| {
            name == "x"
                || name == "y"
                || name.starts_with("hyper.")
                || params.iter().chain(&buffers).any(|p| p.path == name)
                || frozen.iter().any(|p| p == name)
                || update.state.iter().any(|(n, _)| n == name)
        };
        if let Some((_, name, _)) = step_graph.inputs().into_iter().find(|(_, n, _)| !fed(n)) {
            let name = name.strip_prefix("let.").unwrap_or(name).to_string();
            return Err(cx.err(ErrorKind::ForeignInput { span: loss_field.value.span, name }));
        }
        let forward_graph = self.forward_graph(t, &shape)?;
        Ok(TrainPlan {
            name: t.name.name.clone(),
            data,
            split,
            params,
            buffers,
            loss_graph: opt::optimize(&loss_graph),
            forward_graph,
            grad_graph,
            backward_start,
            step_graph,
            updates,
            state: update.state,
            optimizer,
            schedule,
            batch,
            epochs,
            seed,
            metrics,
            checkpoint,
            load,
            resume,
            frozen,
            label_int: shape.label_int,
            features: shape.features,
            label_width: shape.label_width,
            classes: shape.classes,
            span: t.span,
        })
    }

    /// Instantiate the model and elaborate the loss on a symbolic batch `[B, F]`,
    /// in training or evaluation mode.
    fn loss_graph_ctx(
        &self,
        t: &TrainDef,
        loss: &Expr,
        shape: &super::DataShape,
        training: bool,
    ) -> Result<(Ctx<'_, 'p>, ValueId, Vec<ValueId>), ElabError> {
        let mut cx = Ctx::new(self);
        cx.training = training;
        let model = cx.instantiate_expr(&t.model, "", t.model.span)?;
        cx.order_params_like(&model);
        let (x, y) = batch_inputs(&mut cx, shape, t.data.span);
        let param_ids: Vec<ValueId> = model.all_params().iter().map(|(_, p)| p.id).collect();
        let scope = Scope::default();
        let f = cx.expr(loss, &scope)?;
        let args = vec![
            Arg { name: None, value: Value::Module(model.clone()), span: t.model.span },
            Arg { name: None, value: Value::Tensor(x.clone()), span: t.data.span },
            Arg { name: None, value: Value::Tensor(y.clone()), span: t.data.span },
        ];
        let out = match f {
            // A built-in loss applies to the model's output: `loss = cross_entropy`.
            Value::Func(Func::Builtin(name)) => {
                let pred = cx.call(Value::Module(model), vec![args[1].clone()], t.model.span, t.model.span)?;
                let pred = Arg { name: None, value: pred, span: t.model.span };
                cx.call(Value::Func(Func::Builtin(name)), vec![pred, args[2].clone()], loss.span, loss.span)?
            }
            f => cx.call(f, args, loss.span, loss.span)?,
        };
        let out = cx.tensor_of(out, loss.span)?;
        let shape = cx.shape(&out);
        if shape.rank() != 0 {
            return Err(cx.err(ErrorKind::NotScalar { span: loss.span, what: "the loss".into(), shape }));
        }
        Ok((cx, out.id, param_ids))
    }

    /// The model applied to a batch: what accuracy, decoding and predictions
    /// use. A sequence-to-sequence model also takes the decoder input.
    fn forward_graph(&self, t: &TrainDef, shape: &super::DataShape) -> Result<Graph, ElabError> {
        let mut cx = Ctx::new(self);
        let model = cx.instantiate_expr(&t.model, "", t.model.span)?;
        let (x, _) = batch_inputs(&mut cx, shape, t.data.span);
        let mut args = vec![Arg { name: None, value: Value::Tensor(x), span: t.data.span }];
        args.extend(decoder_input(&mut cx, shape, t.data.span));
        let out = match cx.call(Value::Module(model), args, t.model.span, t.model.span) {
            // The model's own `forward` takes the source alone (a nested call's error has context).
            Err(e) if e.context.is_empty() && matches!(&*e.kind, ErrorKind::Arity { expected: 1, found: 2, .. }) => {
                let def_span = match &*e.kind {
                    ErrorKind::Arity { def_span, .. } => *def_span,
                    _ => None,
                };
                let widths = (shape.features, shape.label_width.unwrap_or(1).saturating_sub(1));
                return Err(cx.err(ErrorKind::DecoderInputMissing { span: t.model.span, def_span, widths }));
            }
            r => r?,
        };
        let out = cx.tensor_of(out, t.model.span)?;
        // Decoding reads the logits of position i of the decoder input.
        if let Some(ty) = shape.decoder_input_type(Dim::Sym("B".into())) {
            let logits = cx.shape(&out);
            if logits.rank() != 3 || logits.dims()[..2] != ty.shape.dims()[..] {
                return Err(cx.err(ErrorKind::DecoderOutput { span: t.model.span, found: logits, decoder_input: ty.shape }));
            }
        }
        // Class ids index the logits: 9 outputs for 10 classes would silently never predict class 9.
        if let (true, Some(classes)) = (shape.label_int, shape.classes) {
            let logits = cx.shape(&out);
            if matches!(logits.dims().last(), Some(Dim::Known(n)) if *n > 1 && *n < classes) {
                return Err(cx.err(ErrorKind::ClassCount { span: t.model.span, logits, classes }));
            }
        }
        cx.graph.outputs = vec![out.id];
        cx.graph.output_names = vec!["output".into()];
        Ok(opt::optimize(&cx.graph))
    }
}

fn batch_inputs(cx: &mut Ctx, shape: &super::DataShape, span: Span) -> (Tensor, Tensor) {
    let b = Dim::Sym("B".into());
    let (xt, yt) = (shape.x_type(b.clone()), shape.y_type(b));
    let mut bl = cx.builder(span);
    let x = bl.input("x", InputKind::Data, xt);
    let y = bl.input("y", InputKind::Data, yt);
    let names = vec![Some("B".to_string()), None];
    (Tensor { id: x, names }, Tensor { id: y, names: vec![Some("B".into())] })
}

fn data_split(cx: &Ctx, e: &Expr) -> Result<(String, String), ElabError> {
    if let ExprKind::Field(base, split) = &e.kind {
        if let ExprKind::Name(data) = &base.kind {
            let shape = cx.session.data.get(data);
            return match shape {
                Some(s) if s.splits.iter().any(|(n, rows)| *n == split.name && *rows == 0) => Err(cx.err(ErrorKind::EmptySplit {
                    span: e.span,
                    data: data.clone(),
                    split: split.name.clone(),
                    declared: cx
                        .session
                        .data_defs
                        .get(data)
                        .and_then(|d| d.splits.iter().find(|s| s.name.name == split.name))
                        .map(|s| s.span),
                })),
                Some(s) if s.splits.iter().any(|(n, _)| *n == split.name) => Ok((data.clone(), split.name.clone())),
                Some(s) => Err(cx.err(ErrorKind::UnknownField {
                    field: split.name.clone(),
                    span: split.span,
                    of: data.clone(),
                    available: s.splits.iter().map(|(n, _)| n.clone()).collect(),
                })),
                None => Err(cx.err(ErrorKind::UnknownName { name: data.clone(), span: base.span, suggestion: None })),
            };
        }
    }
    Err(cx.err(ErrorKind::WrongKind {
        span: e.span,
        expected: "a data split such as `digits.train`".into(),
        found: "an expression".into(),
    }))
}

/// The value of a constant numeric expression (`1e-3`, `1/16`, `-2`), if it is one.
pub fn constant_number(e: &Expr) -> Option<f64> {
    constant(e, &|_| None).map(|(v, _)| v)
}

/// A constant expression's value and whether it is an integer, with names
/// looked up by `lookup` (top-level numeric `let`s).
pub fn constant(e: &Expr, lookup: &dyn Fn(&str) -> Option<(f64, bool)>) -> Option<(f64, bool)> {
    match &e.kind {
        ExprKind::Number { value, is_int } => Some((*value, *is_int)),
        ExprKind::Name(n) => lookup(n),
        ExprKind::Neg(x) => constant(x, lookup).map(|(v, i)| (-v, i)),
        ExprKind::Binary { op, lhs, rhs } => {
            let ((a, ia), (b, ib)) = (constant(lhs, lookup)?, constant(rhs, lookup)?);
            let both = ia && ib;
            match op {
                crate::ast::BinOp::Add => Some((a + b, both)),
                crate::ast::BinOp::Sub => Some((a - b, both)),
                crate::ast::BinOp::Mul => Some((a * b, both)),
                crate::ast::BinOp::Div => Some((a / b, false)),
                crate::ast::BinOp::Pow => Some((a.powf(b), both && b >= 0.0)),
                _ => None,
            }
        }
        _ => None,
    }
}

impl Ctx<'_, '_> {
    /// A constant, with top-level numeric `let`s in scope.
    pub(super) fn literal(&self, e: &Expr) -> Option<f64> {
        self.session.constant(e).map(|(v, _)| v)
    }
}

/// A constant expression in its rule's range.
pub(super) fn literal_number(cx: &Ctx, e: &Expr, rule: &Rule) -> Result<f64, ElabError> {
    let v = cx.literal(e).ok_or_else(|| cx.err(ErrorKind::NotConstant { span: e.span, what: rule.name() }))?;
    rule.check(v).map_err(|problem| cx.err(ErrorKind::NumberOutOfRange { span: e.span, problem }))
}

/// A constant count or size in its rule's range.
pub(super) fn literal_natural(cx: &Ctx, e: &Expr, rule: &Rule) -> Result<usize, ElabError> {
    let v = cx.literal(e).ok_or_else(|| cx.err(ErrorKind::NotConstant { span: e.span, what: rule.name() }))?;
    rule.check_natural(v).map_err(|problem| cx.err(ErrorKind::NumberOutOfRange { span: e.span, problem }))
}

/// A call such as `adam(lr: 1e-3)` split into its name and `(key, value, span)` arguments.
/// The arguments of a call: an optional keyword and the value.
type CallArgs<'e> = Vec<(Option<&'e Ident>, &'e Expr)>;

fn call_parts<'e>(cx: &Ctx, e: &'e Expr) -> Result<(&'e str, Span, CallArgs<'e>), ElabError> {
    match &e.kind {
        ExprKind::Name(n) => Ok((n, e.span, Vec::new())),
        ExprKind::Call { callee, args } => match &callee.kind {
            ExprKind::Name(n) => Ok((n, callee.span, args.iter().map(|a| (a.name.as_ref(), &a.value)).collect())),
            _ => Err(cx.err(ErrorKind::WrongKind { span: callee.span, expected: "a name".into(), found: "an expression".into() })),
        },
        _ => Err(cx.err(ErrorKind::WrongKind { span: e.span, expected: "a name or a call".into(), found: "an expression".into() })),
    }
}

/// Look up named (or positional, in `order`) numeric arguments with defaults,
/// each checked against its rule.
fn numeric_args(
    cx: &Ctx,
    callee: &str,
    span: Span,
    args: &[(Option<&Ident>, &Expr)],
    order: &[(&Rule, Option<f64>)],
) -> Result<Vec<f64>, ElabError> {
    let mut values: Vec<Option<f64>> = order.iter().map(|(_, d)| *d).collect();
    let allowed: Vec<String> = order.iter().map(|(r, _)| r.keyword.to_string()).collect();
    for (i, (name, e)) in args.iter().enumerate() {
        let slot = match name {
            Some(n) => order.iter().position(|(r, _)| r.keyword == n.name).ok_or_else(|| {
                cx.err(ErrorKind::UnknownKeyword { span: n.span, callee: callee.into(), keyword: n.name.clone(), allowed: allowed.clone() })
            })?,
            None if i < order.len() => i,
            None => {
                return Err(cx.err(ErrorKind::Arity {
                    span,
                    callee: callee.into(),
                    expected: order.len(),
                    found: args.len(),
                    def_span: None,
                }))
            }
        };
        values[slot] = Some(literal_number(cx, e, order[slot].0)?);
    }
    values
        .into_iter()
        .zip(order)
        .map(|(v, (r, _))| v.ok_or_else(|| cx.err(ErrorKind::MissingArgument { span, callee: callee.into(), name: r.keyword.to_string() })))
        .collect()
}

fn optimizer_spec(cx: &Ctx, e: &Expr) -> Result<OptimizerSpec, ElabError> {
    let (name, span, args) = call_parts(cx, e)?;
    use range::{ADAM_EPS, BETA1, BETA2, LR, MOMENTUM, WEIGHT_DECAY};
    let (kind, order): (OptimizerKind, &[(&Rule, Option<f64>)]) = match name {
        "gd" => (OptimizerKind::Gd, &[(&LR, None)]),
        "sgd" => (OptimizerKind::Sgd, &[(&LR, None)]),
        "momentum" => (OptimizerKind::Momentum, &[(&LR, None), (&MOMENTUM, Some(0.9))]),
        "nesterov" => (OptimizerKind::Nesterov, &[(&LR, None), (&MOMENTUM, Some(0.9))]),
        "adam" => (OptimizerKind::Adam, &[(&LR, Some(1e-3)), (&BETA1, Some(0.9)), (&BETA2, Some(0.999)), (&ADAM_EPS, Some(1e-8))]),
        "adamw" => (
            OptimizerKind::AdamW,
            &[(&LR, Some(1e-3)), (&BETA1, Some(0.9)), (&BETA2, Some(0.999)), (&ADAM_EPS, Some(1e-8)), (&WEIGHT_DECAY, Some(0.01))],
        ),
        _ => return Err(cx.err(ErrorKind::UnknownOptimizer { span, name: name.into() })),
    };
    let v = numeric_args(cx, name, span, &args, order)?;
    let get = |i: usize, d: f64| v.get(i).copied().unwrap_or(d);
    let spec = match kind {
        OptimizerKind::Gd | OptimizerKind::Sgd => {
            OptimizerSpec { kind, lr: get(0, 0.0), beta1: 0.0, beta2: 0.0, eps: 0.0, weight_decay: 0.0 }
        }
        OptimizerKind::Momentum | OptimizerKind::Nesterov => {
            OptimizerSpec { kind, lr: get(0, 0.0), beta1: get(1, 0.9), beta2: 0.0, eps: 0.0, weight_decay: 0.0 }
        }
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            OptimizerSpec { kind, lr: get(0, 1e-3), beta1: get(1, 0.9), beta2: get(2, 0.999), eps: get(3, 1e-8), weight_decay: get(4, 0.0) }
        }
    };
    Ok(spec)
}

fn schedule_spec(cx: &Ctx, e: &Expr) -> Result<ScheduleSpec, ElabError> {
    let (name, span, args) = call_parts(cx, e)?;
    match name {
        "constant" => Ok(ScheduleSpec::Constant),
        "cosine" => {
            let v = numeric_args(cx, name, span, &args, &[(&range::COSINE_MIN, Some(0.0))])?;
            Ok(ScheduleSpec::Cosine { min_factor: v[0] })
        }
        "step" => {
            let v = numeric_args(cx, name, span, &args, &[(&range::STEP_EVERY, None), (&range::STEP_GAMMA, Some(0.1))])?;
            // `every` is whole and at least 1 (its rule), so the cast is exact.
            Ok(ScheduleSpec::Step { every: v[0] as usize, gamma: v[1] })
        }
        "warmup" => {
            let then = args.iter().find(|(n, _)| n.is_some_and(|n| n.name == "then")).map(|(_, e)| *e);
            let rest: Vec<_> = args.iter().filter(|(n, _)| !n.is_some_and(|n| n.name == "then")).cloned().collect();
            let v = numeric_args(cx, name, span, &rest, &[(&range::WARMUP_EPOCHS, None)])?;
            let then = match then {
                Some(t) => schedule_spec(cx, t)?,
                None => ScheduleSpec::Constant,
            };
            Ok(ScheduleSpec::Warmup { epochs: v[0], then: Box::new(then) })
        }
        _ => Err(cx.err(ErrorKind::BadFieldValue {
            span,
            field: "schedule".into(),
            expected: "one of constant, step(every: E, gamma: g), cosine(min: f), warmup(epochs: E, then: ...)".into(),
        })),
    }
}

fn metric_specs(cx: &Ctx, e: &Expr, train_data: &str, train_shape: &super::DataShape) -> Result<Vec<MetricSpec>, ElabError> {
    let ExprKind::List(items) = &e.kind else {
        return Err(cx.err(ErrorKind::BadFieldValue {
            span: e.span,
            field: "metrics".into(),
            expected: "a list such as `[accuracy on digits.test]`".into(),
        }));
    };
    let mut out = Vec::new();
    for it in items {
        let ExprKind::On { what, data } = &it.kind else {
            return Err(cx.err(ErrorKind::BadFieldValue {
                span: it.span,
                field: "metrics".into(),
                expected: "`METRIC on DATA.SPLIT`".into(),
            }));
        };
        let kind = match &what.kind {
            ExprKind::Name(n) if n == "loss" => MetricKind::Loss,
            ExprKind::Name(n) if n == "accuracy" => MetricKind::Accuracy,
            ExprKind::Name(n) if n == "mse" => MetricKind::Mse,
            ExprKind::Call { callee, args } if matches!(&callee.kind, ExprKind::Name(n) if n == "exact_match") => {
                MetricKind::ExactMatch(decoding(cx, what.span, args)?)
            }
            ExprKind::Name(n) => return Err(cx.err(ErrorKind::UnknownMetric { span: what.span, name: n.clone() })),
            ExprKind::Call { callee, .. } => match &callee.kind {
                ExprKind::Name(n) => return Err(cx.err(ErrorKind::UnknownMetric { span: callee.span, name: n.clone() })),
                _ => return Err(cx.err(ErrorKind::UnknownMetric { span: what.span, name: "?".into() })),
            },
            _ => return Err(cx.err(ErrorKind::UnknownMetric { span: what.span, name: "?".into() })),
        };
        let (d, s) = data_split(cx, data)?;
        check_metric_data(cx, kind, it.span, &d, (train_data, train_shape))?;
        out.push(MetricSpec { kind, data: d, split: s, span: it.span });
    }
    Ok(out)
}

impl<'s, 'p> Ctx<'s, 'p> {
    /// The initialiser named by a `param` declaration.
    pub(crate) fn param_init(&mut self, e: &Expr, _scope: &Scope) -> Result<ParamInit, ElabError> {
        let (name, span, args) = call_parts(self, e)?;
        let init = match name {
            "zeros" => ParamInit::Zeros,
            "ones" => ParamInit::Ones,
            "he_normal" => ParamInit::HeNormal,
            "xavier_uniform" => ParamInit::XavierUniform,
            "xavier_normal" => ParamInit::XavierNormal,
            "normal" => {
                let v = numeric_args(self, name, span, &args, &[(&range::NORMAL_STD, None)])?;
                ParamInit::Normal { std: v[0] }
            }
            "uniform" => {
                let v = numeric_args(self, name, span, &args, &[(&range::UNIFORM_LOW, None), (&range::UNIFORM_HIGH, None)])?;
                if v[0] > v[1] {
                    let expected = format!("at least `low` ({})", v[0]);
                    return Err(self.err(ErrorKind::BadFieldValue { span: e.span, field: "high".into(), expected }));
                }
                ParamInit::Uniform { low: v[0], high: v[1] }
            }
            _ => return Err(self.err(ErrorKind::UnknownInit { span, name: name.into() })),
        };
        Ok(init)
    }
}

struct Update {
    /// (new value, output name, the input it replaces)
    outputs: Vec<(ValueId, String, String)>,
    state: Vec<(String, Vec<usize>)>,
}

/// The optimizer step for every parameter, as IR. The learning rate (after
/// the schedule) and Adam's bias corrections 1 − βᵗ are scalar inputs fed by
/// the runtime each step.
fn optimizer_update(b: &mut Builder, o: &OptimizerSpec, params: &[ParamSpec], ids: &[ValueId], grads: &[ValueId]) -> Update {
    let scalar = TensorType::f32(Shape::scalar());
    let lr = b.input(HYPER_LR, InputKind::Hyper, scalar.clone());
    let (bc1, bc2) = match o.kind {
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            (Some(b.input(HYPER_BC1, InputKind::Hyper, scalar.clone())), Some(b.input(HYPER_BC2, InputKind::Hyper, scalar)))
        }
        _ => (None, None),
    };
    let mut outputs = Vec::new();
    let mut state = Vec::new();
    for ((spec, &p), &g) in params.iter().zip(ids).zip(grads) {
        let shape = Shape::known(&spec.shape);
        let lr_b = b.broadcast(lr, &shape);
        let mut state_input = |b: &mut Builder, prefix: &str| {
            let name = format!("{prefix}.{}", spec.path);
            state.push((name.clone(), spec.shape.clone()));
            (b.input(&name, InputKind::State, TensorType::f32(shape.clone())), name)
        };
        let new_p = match o.kind {
            // p ← p − η g
            OptimizerKind::Gd | OptimizerKind::Sgd => {
                let step = b.mul(lr_b, g);
                b.sub(p, step)
            }
            // v ← μ v + g;  p ← p − η v            (Nesterov: p ← p − η (g + μ v))
            OptimizerKind::Momentum | OptimizerKind::Nesterov => {
                let (v, vname) = state_input(b, "opt.velocity");
                let mv = b.scale(v, o.beta1);
                let v2 = b.add(mv, g);
                outputs.push((v2, vname.clone(), vname));
                let dir = if o.kind == OptimizerKind::Nesterov {
                    let mv2 = b.scale(v2, o.beta1);
                    b.add(g, mv2)
                } else {
                    v2
                };
                let step = b.mul(lr_b, dir);
                b.sub(p, step)
            }
            // m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;  p ← p − η (m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + ε)
            // AdamW also subtracts η·λ·p (decoupled weight decay).
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                let (m, mname) = state_input(b, "opt.m");
                let (v, vname) = state_input(b, "opt.v");
                let m1 = b.scale(m, o.beta1);
                let g1 = b.scale(g, 1.0 - o.beta1);
                let m2 = b.add(m1, g1);
                let gg = b.mul(g, g);
                let v1 = b.scale(v, o.beta2);
                let g2 = b.scale(gg, 1.0 - o.beta2);
                let v2 = b.add(v1, g2);
                outputs.push((m2, mname.clone(), mname));
                outputs.push((v2, vname.clone(), vname));
                let (Some(c1), Some(c2)) = (bc1, bc2) else { continue };
                let c1b = b.broadcast(c1, &shape);
                let c2b = b.broadcast(c2, &shape);
                let mhat = b.div(m2, c1b);
                let vhat = b.div(v2, c2b);
                let root = b.sqrt(vhat);
                let den = b.offset(root, o.eps);
                let mut dir = b.div(mhat, den);
                if o.kind == OptimizerKind::AdamW && o.weight_decay != 0.0 {
                    let wd = b.scale(p, o.weight_decay);
                    dir = b.add(dir, wd);
                }
                let step = b.mul(lr_b, dir);
                b.sub(p, step)
            }
        };
        outputs.push((new_p, spec.path.clone(), spec.path.clone()));
    }
    Update { outputs, state }
}
