//! Elaboration: resolve names, instantiate modules, check every shape, and
//! build the IR, all in one walk. Functions and module calls are inlined, so
//! a shape error deep inside `Linear.forward` is reported at the op that
//! failed *and* at each call that led there.

pub mod builtins;
mod cycles;
pub mod error;
mod expr;
pub mod range;
mod recurrence;
pub mod seq2seq;
mod sequence;
pub mod train;
pub mod value;
mod vision;

use crate::ast::{DataDef, Expr, FnDef, Item, ModuleDef, Program, Span};
use crate::builder::Builder;
use crate::diagnostic::Diagnostic;
use crate::ir::{DType, Dim, Graph, InputKind, Shape, TensorType, ValueId};
use crate::ops::ShapeError;
use error::{ElabError, ErrorKind};
use std::collections::HashMap;
use std::rc::Rc;
use value::{ModuleInst, Tensor, Value};

/// The scalar input that seeds a training step's random numbers; the runtime
/// feeds a fresh value every step.
pub const HYPER_SEED: &str = "hyper.seed";

/// The deepest nesting of function calls and module instances accepted. The
/// examples nest fewer than 10; a chain of 1,000 is far past any model and
/// still elaborates in well under a second (each level's stack is grown on
/// the heap as needed, see `expr::STACK_RED_ZONE`).
pub const MAX_CALL_DEPTH: usize = 1000;

pub use train::{MetricKind, MetricSpec, OptimizerSpec, ParamInit, ParamSpec, ScheduleSpec, TrainPlan};

/// The shape of a loaded data set, as far as the compiler needs to know it.
#[derive(Clone, Debug, PartialEq)]
pub struct DataShape {
    pub features: usize,
    /// Rows are integer ids (token windows of a text data set).
    pub features_int: bool,
    /// Labels are class ids (`label:`) rather than regression targets (`target:`).
    pub label_int: bool,
    /// Number of classes (max label + 1) for class labels.
    pub classes: Option<usize>,
    /// Labels per row when each position of a row has one (a language
    /// model's next tokens, `y: [B, T]`); `None`: one label per row (`y: [B]`).
    pub label_width: Option<usize>,
    /// Row count of each split, by name.
    pub splits: Vec<(String, usize)>,
    /// Source and target sequences (`digit_task(...)`): the model's `forward`
    /// takes the source and the decoder input (see `Seq2Seq`).
    pub seq2seq: Option<Seq2Seq>,
}

/// The special tokens of a sequence-to-sequence data set. A row's `x` is the
/// source, padded with `pad`; its `y` is the target `bos t1 … tn eos pad …`
/// (`label_width` ids). The model is called as `m(x, y[:, :-1])`: its
/// `forward` takes the source and the decoder input (teacher forcing in
/// training, the prefix decoded so far in `exact_match`) and returns
/// next-token logits `[B, label_width − 1, V]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq2Seq {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
}

impl DataShape {
    /// The type of `rows` rows of features: `[rows, F]`.
    pub fn x_type(&self, rows: Dim) -> TensorType {
        let dtype = if self.features_int { DType::I32 } else { DType::F32 };
        TensorType { shape: Shape(vec![rows, Dim::Known(self.features)]), dtype }
    }

    /// The type of `rows` rows of labels: `[rows]` or `[rows, T]`.
    pub fn y_type(&self, rows: Dim) -> TensorType {
        let dtype = if self.label_int { DType::I32 } else { DType::F32 };
        let mut dims = vec![rows];
        dims.extend(self.label_width.map(Dim::Known));
        TensorType { shape: Shape(dims), dtype }
    }

    /// The decoder input of a sequence-to-sequence model, `[rows, T − 1] int`
    /// (the target without its last position); `None` for other data.
    pub fn decoder_input_type(&self, rows: Dim) -> Option<TensorType> {
        let width = self.label_width?.checked_sub(1)?;
        self.seq2seq.map(|_| TensorType { shape: Shape(vec![rows, Dim::Known(width)]), dtype: DType::I32 })
    }
}

/// The span and size of the first node from `from` on whose shape is too
/// large for a tensor (see `Builder::op`).
fn first_too_large(graph: &Graph, from: usize) -> Option<(Span, crate::size::TooLarge)> {
    graph.nodes.iter().skip(from).find_map(|n| n.ty.shape.check_size().err().map(|e| (n.span, e)))
}

/// A trained model's recipe, so later items can refer to `m.l1.W` or `m(x)`.
#[derive(Clone, Debug)]
struct TrainedModel {
    model: Expr,
}

/// What the program defines, plus what has been learned about data and
/// earlier items; elaborates one item's graphs at a time.
pub struct Session<'p> {
    program: &'p Program,
    modules: HashMap<String, &'p ModuleDef>,
    functions: HashMap<String, &'p FnDef>,
    data_defs: HashMap<String, &'p DataDef>,
    data: HashMap<String, DataShape>,
    lets: HashMap<String, TensorType>,
    /// Top-level `let`s that are plain numbers (`let lambda = 0.1`): constants everywhere.
    consts: HashMap<String, (f64, bool)>,
    trained: HashMap<String, TrainedModel>,
}

/// A graph produced from a top-level expression (`let`, `report`), with the
/// inputs it needs: data splits (`digits.test.x`), earlier lets (`let.beta`)
/// and trained parameters (`m.l1.W`).
#[derive(Clone, Debug)]
pub struct ExprGraph {
    pub graph: Graph,
    pub ty: TensorType,
}

impl<'p> Session<'p> {
    /// Collect the program's definitions; reports names defined twice.
    pub fn new(program: &'p Program) -> Result<Session<'p>, Vec<Diagnostic>> {
        let mut s = Session {
            program,
            modules: HashMap::new(),
            functions: HashMap::new(),
            data_defs: HashMap::new(),
            data: HashMap::new(),
            lets: HashMap::new(),
            consts: HashMap::new(),
            trained: HashMap::new(),
        };
        let mut seen: HashMap<String, Span> = HashMap::new();
        let mut reports: HashMap<&str, Span> = HashMap::new();
        let mut errors = Vec::new();
        for item in &program.items {
            // Two reports under one label would be one key of `--json`'s summary: the last would win.
            if let Item::Report(r) = item {
                match reports.get(r.label.as_str()) {
                    Some(first) => {
                        let kind = ErrorKind::DuplicateReport { span: r.span, first: *first, label: r.label.clone() };
                        errors.push(ElabError { kind: Box::new(kind), context: Vec::new() }.to_diagnostic());
                    }
                    None => {
                        reports.insert(&r.label, r.span);
                    }
                }
            }
            let ident = match item {
                Item::Module(m) => {
                    s.modules.insert(m.name.name.clone(), m);
                    Some(&m.name)
                }
                Item::Function(f) => {
                    s.functions.insert(f.name.name.clone(), f);
                    Some(&f.name)
                }
                Item::Data(d) => {
                    s.data_defs.insert(d.name.name.clone(), d);
                    Some(&d.name)
                }
                Item::Train(t) => Some(&t.name),
                Item::Let(l) => Some(&l.name),
                Item::Report(_) | Item::Plot(_) => None,
            };
            if let Some(id) = ident {
                if let Some(first) = seen.get(&id.name) {
                    let kind = ErrorKind::Duplicate { span: id.span, first: *first, name: id.name.clone() };
                    errors.push(ElabError { kind: Box::new(kind), context: Vec::new() }.to_diagnostic());
                } else {
                    seen.insert(id.name.clone(), id.span);
                }
            }
        }
        for kind in cycles::module_cycles(program) {
            errors.push(ElabError { kind: Box::new(kind), context: Vec::new() }.to_diagnostic());
        }
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    pub fn program(&self) -> &'p Program {
        self.program
    }

    /// Record the shape of a data set once it is loaded (or, for `nnc check`, inspected).
    pub fn add_data(&mut self, name: &str, shape: DataShape) {
        self.data.insert(name.to_string(), shape);
    }

    pub fn data_shape(&self, name: &str) -> Option<&DataShape> {
        self.data.get(name)
    }

    /// Record a top-level `let` so later items can use it.
    pub fn add_let(&mut self, name: &str, ty: TensorType) {
        self.lets.insert(name.to_string(), ty);
    }

    /// Record a top-level `let` whose value is a constant number. Returns
    /// false (and records nothing) if the expression is not one.
    pub fn add_const(&mut self, name: &str, value: &Expr) -> bool {
        match self.constant(value) {
            Some(v) => {
                self.consts.insert(name.to_string(), v);
                true
            }
            None => false,
        }
    }

    /// The value of a constant expression (numbers, arithmetic, numeric `let`s)
    /// and whether it is an integer.
    pub fn constant(&self, e: &Expr) -> Option<(f64, bool)> {
        train::constant(e, &|n| self.consts.get(n).copied())
    }

    /// Record a trained model so later items can use it.
    pub fn add_trained(&mut self, name: &str, model: &Expr) {
        self.trained.insert(name.to_string(), TrainedModel { model: model.clone() });
    }

    /// The graph of a top-level function applied to inputs `arg0`, `arg1`, …
    /// of the given types (for tests, and for embedding nnc as a library).
    pub fn function_graph(&self, name: &str, args: &[TensorType]) -> Result<Graph, Vec<Diagnostic>> {
        let mut cx = Ctx::new(self);
        let Some(def) = self.functions.get(name).copied() else {
            let kind = ErrorKind::UnknownName { name: name.into(), span: Span::default(), suggestion: None };
            return Err(vec![cx.err(kind).to_diagnostic()]);
        };
        let mut values = Vec::new();
        for (i, ty) in args.iter().enumerate() {
            let id = cx.builder(def.span).input(&format!("arg{i}"), InputKind::Data, ty.clone());
            values.push(value::Arg { name: None, value: Value::Tensor(Tensor { id, names: Vec::new() }), span: def.span });
        }
        let out = cx.call_user(def, None, values, def.span).and_then(|v| cx.tensor_of(v, def.span)).map_err(|e| vec![e.to_diagnostic()])?;
        cx.graph.outputs = vec![out.id];
        cx.graph.output_names = vec![name.to_string()];
        Ok(cx.graph)
    }

    /// Elaborate a top-level expression into a graph with one output.
    pub fn expr_graph(&self, e: &Expr) -> Result<ExprGraph, Vec<Diagnostic>> {
        self.annotated_expr_graph(e, None)
    }

    /// `expr_graph`, checking the value against a `let`'s type annotation.
    pub fn annotated_expr_graph(&self, e: &Expr, ann: Option<&crate::ast::TypeAnn>) -> Result<ExprGraph, Vec<Diagnostic>> {
        let mut cx = Ctx::new(self);
        let mut scope = Scope::default();
        let result = cx.expr(e, &scope).and_then(|v| match ann {
            Some(a) => cx.check_type(v, e.span, a, &mut scope, "this `let`"),
            None => Ok(v),
        });
        let result = result.and_then(|v| cx.tensor_of(v, e.span));
        match result {
            Ok(t) => {
                cx.graph.outputs = vec![t.id];
                cx.graph.output_names = vec!["value".into()];
                let ty = cx.graph.ty(t.id).clone();
                Ok(ExprGraph { graph: crate::opt::optimize(&cx.graph), ty })
            }
            Err(e) => Err(vec![e.to_diagnostic()]),
        }
    }
}

/// Names visible while elaborating a function body.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    vars: HashMap<String, Value>,
    /// The module instance whose method this is (its members are in scope).
    this: Option<Rc<ModuleInst>>,
    /// Shape variables bound by the signature (`B`).
    dims: HashMap<String, (Dim, Span)>,
}

/// The state of building one graph.
pub(crate) struct Ctx<'s, 'p> {
    session: &'s Session<'p>,
    pub graph: Graph,
    call_stack: Vec<(Span, String)>,
    /// Inputs created on first use, by name (data splits, lets, trained parameters).
    lazy_inputs: HashMap<String, Tensor>,
    /// Parameter shapes and initialisers of instantiated models, by path.
    pub params: Vec<ParamSpec>,
    /// Trained models referenced by name (`teacher(x)`), instantiated once each.
    trained_insts: HashMap<String, Rc<ModuleInst>>,
    /// Their parameters: inputs fed with the trained values, never trained here.
    pub frozen: Vec<ParamSpec>,
    /// When set (by `nnc info`), every module call is recorded with the nodes it added.
    pub(crate) layers: Option<crate::info::LayerRecorder>,
    /// `buffer`s of instantiated models, by path.
    pub buffers: Vec<ParamSpec>,
    /// Training mode: dropout drops, batch norm uses batch statistics and
    /// updates its running ones. Off for evaluation and inference graphs.
    pub training: bool,
    /// New values of buffers computed by this graph (training mode), by path.
    pub buffer_updates: Vec<(String, ValueId)>,
    /// Random streams handed out so far (one per random call site).
    streams: u32,
}

impl<'s, 'p> Ctx<'s, 'p> {
    pub fn new(session: &'s Session<'p>) -> Ctx<'s, 'p> {
        Ctx {
            session,
            graph: Graph::default(),
            call_stack: Vec::new(),
            lazy_inputs: HashMap::new(),
            params: Vec::new(),
            trained_insts: HashMap::new(),
            frozen: Vec::new(),
            layers: None,
            buffers: Vec::new(),
            training: false,
            buffer_updates: Vec::new(),
            streams: 0,
        }
    }

    /// Uniform [0, 1) numbers of `shape` from this step's seed (`hyper.seed`),
    /// on a stream of their own.
    pub fn random_uniform(&mut self, shape: &Shape, span: Span) -> ValueId {
        let seed = self.lazy_input(HYPER_SEED, InputKind::Hyper, TensorType::f32(Shape::scalar()), span);
        self.streams += 1;
        let stream = self.streams;
        self.builder(span).random_uniform(seed.id, shape, stream)
    }

    /// An error at the current point, with the call stack as context.
    pub fn err(&self, kind: ErrorKind) -> ElabError {
        ElabError { kind: Box::new(kind), context: self.call_stack.iter().rev().cloned().collect() }
    }

    pub fn builder(&mut self, span: Span) -> Builder<'_> {
        Builder::new(&mut self.graph, span)
    }

    pub fn shape(&self, t: &Tensor) -> Shape {
        self.graph.shape(t.id).clone()
    }

    pub fn ty(&self, t: &Tensor) -> TensorType {
        self.graph.ty(t.id).clone()
    }

    /// Add a node through the op's shape rule, turning a failure into a diagnostic at `span`.
    pub fn op(&mut self, op: crate::ops::Op, args: &[ValueId], span: Span) -> Result<ValueId, ElabError> {
        let r = self.builder(span).try_op(op, args);
        r.map_err(|e| self.shape_error(e, span))
    }

    pub fn shape_error(&self, e: ShapeError, span: Span) -> ElabError {
        let kind = match e {
            ShapeError::Reshape { from, to } => ErrorKind::Reshape { span, from, to },
            ShapeError::TooLarge(error) => ErrorKind::TooLarge { span, error, param: None },
            ShapeError::Concat { lhs, rhs, axis } => ErrorKind::Concat { span, lhs, rhs, axis },
            ShapeError::Solve { a, b } => ErrorKind::Solve { span, a, b },
            ShapeError::IndexType { found } => ErrorKind::Builtin {
                span,
                title: format!("rows are selected by integer ids, but these ids are floats: {found}"),
                label: "expected an int tensor".into(),
                note: None,
            },
            ShapeError::Window { window, shape } => ErrorKind::Builtin {
                span,
                title: format!("a {window} window does not fit the last two axes of {shape}"),
                label: "here".into(),
                note: None,
            },
            ShapeError::MatMulInner { lhs, rhs } => ErrorKind::MatMulInner { span, lhs_span: span, rhs_span: span, lhs, rhs },
            ShapeError::MatMulRank { lhs, rhs } => ErrorKind::MatMulRank { span, lhs_span: span, rhs_span: span, lhs, rhs },
            ShapeError::Mismatch { op, lhs, rhs } => ErrorKind::Broadcast { op: op.into(), span, lhs_span: span, rhs_span: span, lhs, rhs },
            ShapeError::Broadcast { from, to } => {
                ErrorKind::Broadcast { op: "broadcast".into(), span, lhs_span: span, rhs_span: span, lhs: from, rhs: to }
            }
            ShapeError::Slice { start, end, shape, axis } => ErrorKind::Slice { span, shape, axis, start: start as i64, end: end as i64 },
            ShapeError::Axis { axis, shape } => ErrorKind::AxisOutOfRange { span, axis: axis as i64, rank: shape.rank() },
            ShapeError::Scan { reason } => {
                ErrorKind::Builtin { span, title: format!("`scan`: {reason}"), label: "here".into(), note: None }
            }
            ShapeError::Arity { op, expected, found } => {
                ErrorKind::Internal { span, message: format!("{op} given {found} operands, expected {expected}") }
            }
        };
        self.err(kind)
    }

    /// The tensor a value denotes: tensors as they are, numbers as scalar constants.
    pub fn tensor_of(&mut self, v: Value, span: Span) -> Result<Tensor, ElabError> {
        match expr::known_dim_as_number(v) {
            Value::Tensor(t) => Ok(t),
            Value::Number { value, is_int } => {
                let id = self.builder(span).scalar(value);
                if is_int {
                    self.graph.nodes[id.index()].ty.dtype = DType::I32;
                }
                Ok(Tensor { id, names: Vec::new() })
            }
            Value::Unbound(e) => Err(*e),
            Value::List(items) if !items.is_empty() => self.list_literal(items, span),
            other => {
                let found = other.describe(|id| self.graph.shape(id).clone());
                Err(self.err(ErrorKind::WrongKind { span, expected: "a tensor".into(), found }))
            }
        }
    }

    /// A tensor literal `[[1, 2], [3, 4]]`: rows stacked along a new first axis.
    fn list_literal(&mut self, items: Vec<(Value, Span)>, span: Span) -> Result<Tensor, ElabError> {
        // One float anywhere makes the whole literal float (`[1, 2.5]`).
        let has_float = items.iter().any(|(v, _)| match v {
            Value::Number { is_int, .. } => !is_int,
            Value::Tensor(t) => self.graph.ty(t.id).dtype == DType::F32,
            _ => false,
        });
        let mut rows = Vec::with_capacity(items.len());
        for (v, s) in items {
            let v = match v {
                Value::Number { value, .. } if has_float => Value::Number { value, is_int: false },
                other => other,
            };
            let t = self.tensor_of(v, s)?;
            let mut dims = vec![Dim::Known(1)];
            dims.extend(self.shape(&t).0);
            let row = self.op(crate::ops::Op::Reshape { shape: Shape(dims) }, &[t.id], s)?;
            if has_float {
                // Ints are stored as floats: widening is a change of type only.
                self.graph.nodes[row.index()].ty.dtype = DType::F32;
            }
            rows.push(row);
        }
        let id = if rows.len() == 1 { rows[0] } else { self.op(crate::ops::Op::Concat { axis: 0 }, &rows, span)? };
        Ok(Tensor { id, names: Vec::new() })
    }

    /// A model trained by an earlier `train` block, by name: its parameters are
    /// inputs holding the trained values (frozen), shared by every use.
    pub(crate) fn trained_model(&mut self, name: &str, model: &Expr, span: Span) -> Result<Rc<ModuleInst>, ElabError> {
        if let Some(m) = self.trained_insts.get(name) {
            return Ok(m.clone());
        }
        let (first, first_buffer) = (self.params.len(), self.buffers.len());
        let m = self.instantiate_expr(model, &format!("{name}."), span)?;
        let mut specs = self.params.split_off(first.min(self.params.len()));
        // Its buffers (running statistics) are fed with their trained values too.
        specs.extend(self.buffers.split_off(first_buffer.min(self.buffers.len())));
        for (_, t) in m.all_params() {
            if let Some(crate::ops::Op::Input { kind, .. }) = self.graph.nodes.get_mut(t.id.index()).map(|n| &mut n.op) {
                *kind = InputKind::Data;
            }
        }
        self.frozen.extend(specs);
        self.trained_insts.insert(name.to_string(), m.clone());
        Ok(m)
    }

    /// Order `params` as the model lists them (`ModuleInst::all_params`), which
    /// is also the order of the gradients.
    pub(crate) fn order_params_like(&mut self, model: &ModuleInst) {
        let order: Vec<String> = model.all_params().into_iter().map(|(p, _)| p).collect();
        self.params.sort_by_key(|p| order.iter().position(|o| *o == p.path).unwrap_or(usize::MAX));
    }

    /// How many trained models have been instantiated in this graph.
    pub(crate) fn trained_count(&self) -> usize {
        self.trained_insts.len()
    }

    /// Point cached inputs at their new ids after nodes were renumbered.
    pub(crate) fn remap_lazy_inputs(&mut self, moved: &HashMap<ValueId, ValueId>) {
        for t in self.lazy_inputs.values_mut() {
            if let Some(&id) = moved.get(&t.id) {
                t.id = id;
            }
        }
    }

    /// A graph input, created once per name.
    pub fn lazy_input(&mut self, name: &str, kind: InputKind, ty: TensorType, span: Span) -> Tensor {
        if let Some(t) = self.lazy_inputs.get(name) {
            return t.clone();
        }
        let id = self.builder(span).input(name, kind, ty);
        let t = Tensor { id, names: Vec::new() };
        self.lazy_inputs.insert(name.to_string(), t.clone());
        t
    }
}
