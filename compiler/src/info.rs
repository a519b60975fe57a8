//! `nnc info`: a table of a model's layers (notes §7: the receptive field
//! grows with depth and stride).
//!
//! The model's `forward` is elaborated on a symbolic batch `x: [B, F]` with a
//! recorder switched on in the elaborator (`Ctx::layers`): every module call
//! notes which graph nodes it added. Each row is then computed from those
//! nodes alone:
//!
//! * **parameters**: the module's own, submodules included;
//! * **FLOPs per example**: over the nodes that depend on the input batch,
//!   2·M·K·N per matrix product `[.., M, K] @ [.., K, N]` (times its batch
//!   dims, so a convolution's broadcast weights count once per position
//!   group), 1 per output element of an elementwise op, and 1 per input
//!   element of a reduction (sum, max). Data movement (reshape, pad, unfold,
//!   broadcast, …) is free, and so is work on parameters alone (reshaping a
//!   bias). "Per example" means the batch dim `B` counts as 1;
//! * **receptive field**: the standard recurrence over the sliding windows
//!   (`Unfold`, from `conv2d` and the pooling built-ins) in dataflow order,
//!   r ← r + (k_eff − 1)·j, j ← j·s with k_eff = d·(k − 1) + 1, from r = j = 1.
//!   Where branches meet (a residual sum) the largest r and j win. Ops that
//!   are not windows pass the value through, so a flattened layer keeps the
//!   last one; a value no window has touched has none (`-`).

use crate::ast::{Span, TrainDef};
use crate::diagnostic::Diagnostic;
use crate::elaborate::error::ElabError;
use crate::elaborate::value::{Arg, ModuleInst, Tensor, Value};
use crate::elaborate::{Ctx, DataShape, Session};
use crate::ir::{Dim, Graph, InputKind, Node, Op, Shape, TensorType, ValueId};
use crate::ops::Window;

/// What `nnc info` shows for one `train` block.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The run's name (`cnn`).
    pub run: String,
    /// The training split the model reads (`digits.train`).
    pub data: String,
    /// The model's input, `[B, F]`.
    pub input: Shape,
    /// One row per module call, in call order; the model itself first.
    pub layers: Vec<LayerInfo>,
    /// Every parameter of the model, counted once.
    pub total_params: usize,
    /// The whole forward pass, per example.
    pub total_flops: u64,
}

/// One module call made by the forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    /// Dotted path of the instance (`blocks.0.conv`); empty for the model.
    pub path: String,
    /// The module's name (`Conv3x3`, or `[Block; 3]` for a stack).
    pub module: String,
    /// Nesting: 0 for the model, 1 for its submodules, …
    pub depth: usize,
    /// The call's result shape, if it is a tensor.
    pub output: Option<Shape>,
    pub params: usize,
    /// Height × width in input pixels, if a window is upstream of the output.
    pub receptive_field: Option<[usize; 2]>,
    pub flops: u64,
}

/// Module calls seen so far while elaborating with recording on.
#[derive(Clone, Debug, Default)]
pub struct LayerRecorder {
    layers: Vec<LayerRecord>,
    /// How many calls are open (the depth of the next one).
    depth: usize,
    /// Windows applied without an `Unfold` node (pooling that tiles the image
    /// is a reshape and a reduction): the node that ends each, and the window.
    windows: Vec<(ValueId, Window)>,
}

impl LayerRecorder {
    /// Note that `node` applied `window` (see `windows`).
    pub(crate) fn window(&mut self, node: ValueId, window: Window) {
        self.windows.push((node, window));
    }
}

#[derive(Clone, Debug)]
struct LayerRecord {
    path: String,
    module: String,
    depth: usize,
    params: usize,
    /// The call added nodes `first_node..end_node`.
    first_node: usize,
    end_node: usize,
    output: Option<ValueId>,
}

impl Ctx<'_, '_> {
    /// Open a record for a call of `inst` (if recording); returns its index.
    pub(crate) fn enter_layer(&mut self, inst: &ModuleInst) -> Option<usize> {
        self.layers.as_ref()?;
        let params = param_count(inst, &self.graph);
        let first_node = self.graph.nodes.len();
        let rec = self.layers.as_mut()?;
        rec.layers.push(LayerRecord {
            path: inst.path.trim_end_matches('.').to_string(),
            module: inst.def_name.clone(),
            depth: rec.depth,
            params,
            first_node,
            end_node: first_node,
            output: None,
        });
        rec.depth += 1;
        Some(rec.layers.len() - 1)
    }

    /// Close the record `enter_layer` opened, noting the nodes added and the result.
    pub(crate) fn exit_layer(&mut self, index: Option<usize>, out: &Result<Value, ElabError>) {
        let end_node = self.graph.nodes.len();
        let (Some(i), Some(rec)) = (index, self.layers.as_mut()) else { return };
        rec.depth = rec.depth.saturating_sub(1);
        if let Some(layer) = rec.layers.get_mut(i) {
            layer.end_node = end_node;
            layer.output = match out {
                Ok(Value::Tensor(t)) => Some(t.id),
                _ => None,
            };
        }
    }
}

/// Elements of every parameter below `inst` (their shapes are always known).
fn param_count(inst: &ModuleInst, graph: &Graph) -> usize {
    inst.all_params().iter().map(|(_, t)| graph.shape(t.id).numel().unwrap_or(0)).sum()
}

impl Session<'_> {
    /// The layer table of a `train` block's model. The whole block is checked
    /// first (as `nnc run` and `nnc check` would), so a broken loss or data
    /// split is reported rather than silently ignored.
    pub fn model_info(&self, t: &TrainDef) -> Result<ModelInfo, Vec<Diagnostic>> {
        let plan = self.train_plan(t)?;
        let data = format!("{}.{}", plan.data, plan.split);
        let x_type = match self.data_shape(&plan.data) {
            Some(shape) => shape.x_type(Dim::Sym("B".into())),
            None => TensorType::f32(Shape(vec![Dim::Sym("B".into()), Dim::Known(plan.features)])),
        };
        let shape = self.data_shape(&plan.data).cloned();
        self.model_info_inner(t, x_type, shape, data).map_err(|e| vec![e.to_diagnostic()])
    }

    fn model_info_inner(&self, t: &TrainDef, x_type: TensorType, shape: Option<DataShape>, data: String) -> Result<ModelInfo, ElabError> {
        let mut cx = Ctx::new(self);
        let model = cx.instantiate_expr(&t.model, "", t.model.span)?;
        let (x, input) = batch_input(&mut cx, x_type, t.data.span);
        cx.layers = Some(LayerRecorder::default());
        let mut args = vec![Arg { name: None, value: Value::Tensor(x.clone()), span: t.data.span }];
        // A sequence-to-sequence model also takes the decoder input.
        args.extend(shape.and_then(|s| crate::elaborate::seq2seq::decoder_input(&mut cx, &s, t.data.span)));
        cx.call(Value::Module(model.clone()), args, t.model.span, t.model.span)?;
        let (records, windows) = cx.layers.take().map(|r| (r.layers, r.windows)).unwrap_or_default();
        let costs = NodeCosts::new(&cx.graph, x.id, &windows);
        let layers = records.iter().map(|r| costs.layer(r, &cx.graph)).collect();
        Ok(ModelInfo {
            run: t.name.name.clone(),
            data,
            input,
            layers,
            total_params: param_count(&model, &cx.graph),
            total_flops: costs.flops.iter().sum(),
        })
    }
}

/// The batch `x: [B, F]` a training step feeds the model (as in `train.rs`).
fn batch_input(cx: &mut Ctx, ty: TensorType, span: Span) -> (Tensor, Shape) {
    let shape = ty.shape.clone();
    let id = cx.builder(span).input("x", InputKind::Data, ty);
    (Tensor { id, names: vec![Some("B".into()), None] }, shape)
}

/// Receptive field along (H, W) and the jump (input pixels between adjacent outputs).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Field {
    size: [usize; 2],
    jump: [usize; 2],
}

impl Field {
    /// One input pixel.
    const PIXEL: Field = Field { size: [1, 1], jump: [1, 1] };

    /// After a sliding window: r + (k_eff − 1)·j, j·s.
    fn through(self, w: &Window) -> Field {
        let axis = |a: usize| (self.size[a] + (w.extent(a) - 1) * self.jump[a], self.jump[a] * w.stride[a]);
        let ((h, jh), (wd, jw)) = (axis(0), axis(1));
        Field { size: [h, wd], jump: [jh, jw] }
    }

    /// Where branches meet, the larger field (per axis).
    fn max(self, o: Field) -> Field {
        let m = |a: [usize; 2], b: [usize; 2]| [a[0].max(b[0]), a[1].max(b[1])];
        Field { size: m(self.size, o.size), jump: m(self.jump, o.jump) }
    }
}

/// Per node of the forward graph: its FLOPs per example and the receptive field of its value.
struct NodeCosts {
    flops: Vec<u64>,
    field: Vec<Option<Field>>,
}

impl NodeCosts {
    /// Walk the graph once in (topological) node order from the batch input `x`.
    fn new(graph: &Graph, x: ValueId, windows: &[(ValueId, Window)]) -> NodeCosts {
        let n = graph.nodes.len();
        let mut on_x = vec![false; n];
        let mut field: Vec<Option<Field>> = vec![None; n];
        let mut flops = vec![0; n];
        for (i, node) in graph.nodes.iter().enumerate() {
            on_x[i] = i == x.index() || node.args.iter().any(|a| on_x[a.index()]);
            if !on_x[i] {
                continue; // work on parameters alone is not per example
            }
            let upstream = node.args.iter().filter_map(|a| field[a.index()]).reduce(Field::max);
            let recorded = windows.iter().find(|(v, _)| v.index() == i).map(|(_, w)| w);
            field[i] = match (&node.op, recorded) {
                (Op::Unfold { window }, _) | (_, Some(window)) => Some(upstream.unwrap_or(Field::PIXEL).through(window)),
                _ => upstream,
            };
            flops[i] = node_flops(graph, node);
        }
        NodeCosts { flops, field }
    }

    fn layer(&self, r: &LayerRecord, graph: &Graph) -> LayerInfo {
        let nodes = r.first_node..r.end_node.min(self.flops.len());
        LayerInfo {
            path: r.path.clone(),
            module: r.module.clone(),
            depth: r.depth,
            output: r.output.map(|o| graph.shape(o).clone()),
            params: r.params,
            receptive_field: r.output.and_then(|o| self.field.get(o.index()).copied().flatten()).map(|f| f.size),
            flops: self.flops.get(nodes).map_or(0, |f| f.iter().sum()),
        }
    }
}

/// What one node costs per example (see the module comment for what counts).
fn node_flops(graph: &Graph, node: &Node) -> u64 {
    match &node.op {
        Op::MatMul => {
            // [.., M, K] @ [.., K, N] → [.., M, N]: K multiply-adds per output element.
            let k = node.args.first().and_then(|a| graph.shape(*a).dims().last()).map_or(1, per_example);
            2 * k * elements_per_example(&node.ty.shape)
        }
        Op::Unary(_) | Op::Binary(_) => elements_per_example(&node.ty.shape),
        Op::Reduce { .. } => node.args.first().map_or(0, |a| elements_per_example(graph.shape(*a))),
        // The step's cost once per step (a row of the state is one example's).
        Op::Scan { body, steps, .. } => *steps as u64 * body.nodes.iter().map(|n| node_flops(body, n)).sum::<u64>(),
        // Sources, data movement, windows (im2col is a copy) and anything else: no arithmetic.
        _ => 0,
    }
}

/// A dim's size with the batch (every symbol) counted as 1: `B*64` is 64.
fn per_example(d: &Dim) -> u64 {
    d.factors().0 as u64
}

fn elements_per_example(s: &Shape) -> u64 {
    s.dims().iter().map(per_example).product()
}

impl ModelInfo {
    /// The table `nnc info` prints: one row per module call, indented by depth.
    pub fn table(&self) -> String {
        let header = ["layer", "module", "output", "params", "receptive field", "FLOPs/example"];
        let rows: Vec<[String; 6]> = self.layers.iter().map(LayerInfo::cells).collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 6]| {
            let [l, m, o, p, r, f] = cells;
            let [wl, wm, wo, wp, wr, wf] = widths;
            format!("{l:<wl$}  {m:<wm$}  {o:<wo$}  {p:>wp$}  {r:>wr$}  {f:>wf$}").trim_end().to_string() + "\n"
        };
        let mut s = format!("train {}: {} on {}, input x: {}\n", self.run, self.model_name(), self.data, self.input);
        s += &line(header);
        for row in &rows {
            s += &line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
        }
        s += &format!("total: {} parameters, {} FLOPs per example ({})\n", self.total_params, self.total_flops, human(self.total_flops));
        s
    }

    fn model_name(&self) -> &str {
        self.layers.first().map_or("?", |l| l.module.as_str())
    }
}

impl LayerInfo {
    fn cells(&self) -> [String; 6] {
        let name = if self.path.is_empty() { "(model)" } else { &self.path };
        let output = self.output.as_ref().map_or("-".into(), Shape::to_string);
        let field = self.receptive_field.map_or("-".into(), |[h, w]| format!("{h}x{w}"));
        [format!("{}{name}", "  ".repeat(self.depth)), self.module.clone(), output, self.params.to_string(), field, self.flops.to_string()]
    }
}

/// `2627584` as `2.63 M`.
fn human(n: u64) -> String {
    let x = n as f64;
    match n {
        0..1_000 => format!("{n}"),
        1_000..1_000_000 => format!("{:.2} k", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} M", x / 1e6),
        _ => format!("{:.2} G", x / 1e9),
    }
}
