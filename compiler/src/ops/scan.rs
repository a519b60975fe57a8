//! `Scan`: a loop over a time axis whose body is a graph of its own.
//!
//! `Scan { body, steps, inputs, reverse, saved }` takes `[init, xs_1 .. xs_n, c_1 .. c_m]`:
//! a state `init [N, S..]`, `n = inputs` per-step sequences `xs_k [N, steps, I_k..]`
//! and `m` constants (the parameters the body reads). Step `t` computes
//! `h_t = body(h_prev, xs_1[:, t], .., c_1, ..)`, with `h_prev` the previous
//! step's state (`init` at the first step); the result stacks every `h_t` into
//! `[N, steps, S..]`. A reverse scan visits `t = steps − 1 .. 0` and its
//! previous step is `t + 1`. With `saved > 0` (state `[N, S]`) the body's
//! output is the new state followed by `saved` more columns, kept in the
//! result (`[N, steps, S + saved]`) but not carried to the next step.
//!
//! The body's inputs are, in node order, the state, the per-step inputs and
//! the constants; its one output is the new state (and any saved columns). Its batch dim is the symbol
//! `STEP_BATCH`, bound to `N` where the body is evaluated or compiled, and its
//! rows are independent (`check_rowwise`): that is what lets the derivative
//! rule run the body once over all `N · steps` rows.
//!
//! Differentiation (backpropagation through time): the cotangent reaching each
//! step's state is a second, reverse `Scan` whose body is the body's VJP with
//! respect to its state; the cotangents of the per-step inputs and of the
//! constants then come from one copy of the body's VJP over all `N · steps`
//! rows at once, so the weight gradients are single large products rather than
//! `steps` small ones. Nothing is unrolled: the graph grows by two bodies, not
//! by `steps` copies. Both bodies read the products the forward loop computed
//! (`with_saved_products`: kept as extra columns of the result, `saved`)
//! and recompute only the step's elementwise values. When the step saved its
//! products, the backward loop also hands on, as columns of its own result,
//! the cotangents of those products and of the per-step inputs it reads
//! elementwise (`HandedOn`), so the all-rows VJP is reduced to the products
//! `Aᵀ·dP` (and `dP·Wᵀ`) and the elementwise derivative runs once, not twice.

use super::{EvalError, Op, ShapeError};
use crate::ast::Span;
use crate::builder::Builder;
use crate::interp::{self, Inputs};
use crate::ir::{Dim, Graph, InputKind, Shape, TensorType, ValueId};
use ndarray::{ArrayD, Axis};

/// The batch dim of a scan body: the rows of the state.
pub const STEP_BATCH: &str = "N_step";

/// `[N, steps, S..]` from `init [N, S..]` (`[N, steps, S + saved]` with saved
/// products), checking the per-step inputs.
pub fn scan_shape_rule(body: &Graph, steps: usize, inputs: usize, saved: usize, args: &[&TensorType]) -> Result<TensorType, ShapeError> {
    let bad = |reason: String| ShapeError::Scan { reason };
    let body_inputs = body.inputs().len();
    if args.len() != body_inputs || args.len() < 1 + inputs {
        return Err(ShapeError::Arity { op: "scan", expected: body_inputs, found: args.len() });
    }
    let init = args[0];
    let Some(n) = init.shape.dims().first() else {
        return Err(bad(format!("the state must have a batch axis first, found {}", init.shape)));
    };
    for xs in &args[1..=inputs] {
        let d = xs.shape.dims();
        if d.len() < 2 || &d[0] != n || d[1] != Dim::Known(steps) {
            return Err(bad(format!("a per-step input must be [{n}, {steps}, ..] (batch, time, ..), found {}", xs.shape)));
        }
    }
    let mut dims = vec![n.clone(), Dim::Known(steps)];
    dims.extend_from_slice(&init.shape.dims()[1..]);
    if saved > 0 {
        match init.shape.dims() {
            [_, Dim::Known(width)] => dims[2] = Dim::Known(width + saved),
            _ => return Err(bad(format!("saved products need a state [N, S], found {}", init.shape))),
        }
    }
    Ok(TensorType::f32(Shape(dims)))
}

/// Whether any dim of `s` involves the step batch (`N_step`, `N_step*4`).
pub fn has_step_batch(s: &Shape) -> bool {
    s.dims().iter().any(|d| d.factors().1.iter().any(|f| f == STEP_BATCH))
}

/// Whether `s` is `[N_step, ..]` with the step batch in its first axis only:
/// a value with one row per row of the state.
pub fn rows_first(s: &Shape) -> bool {
    s.dims().first() == Some(&Dim::Sym(STEP_BATCH.into())) && !has_step_batch(&Shape(s.dims()[1..].to_vec()))
}

/// `d` with the step batch replaced by `batch` (`N_step·4` becomes `batch·4`).
fn substitute_batch(d: &Dim, batch: &Dim) -> Dim {
    let (c, syms) = d.factors();
    if !syms.iter().any(|s| s == STEP_BATCH) {
        return d.clone();
    }
    let mut parts = vec![Dim::Known(c)];
    parts.extend(syms.into_iter().map(|s| if s == STEP_BATCH { batch.clone() } else { Dim::Sym(s) }));
    Dim::product(&parts)
}

fn shape_for_batch(s: &Shape, batch: &Dim) -> Shape {
    Shape(s.dims().iter().map(|d| substitute_batch(d, batch)).collect())
}

/// The body with its batch dim set to `batch` (a size, or a symbol such as `B*64`).
/// Nested scans keep their own bodies: their batch is bound where they run.
pub fn body_for_batch(body: &Graph, batch: &Dim) -> Graph {
    let mut g = body.clone();
    for node in &mut g.nodes {
        node.ty.shape = shape_for_batch(&node.ty.shape, batch);
        node.op = match &node.op {
            Op::Broadcast { shape } => Op::Broadcast { shape: shape_for_batch(shape, batch) },
            Op::Reshape { shape } => Op::Reshape { shape: shape_for_batch(shape, batch) },
            other => other.clone(),
        };
    }
    g
}

/// Copy `body`'s nodes into `b`'s graph with its inputs bound to `args` (in the
/// body's input order) and its batch dim set to `batch`; the values of its outputs.
pub fn inline(b: &mut Builder, body: &Graph, args: &[ValueId], batch: &Dim) -> Vec<ValueId> {
    let map = inline_nodes(b, body, args, batch);
    body.outputs.iter().map(|o| map[o.index()]).collect()
}

/// `inline`, returning where each of the body's nodes went.
fn inline_nodes(b: &mut Builder, body: &Graph, args: &[ValueId], batch: &Dim) -> Vec<ValueId> {
    let body = body_for_batch(body, batch);
    let mut map: Vec<ValueId> = Vec::with_capacity(body.nodes.len());
    let mut next_arg = args.iter();
    for node in &body.nodes {
        let id = match &node.op {
            Op::Input { .. } => match next_arg.next() {
                Some(&a) => a,
                None => {
                    b.internal_error.get_or_insert(ShapeError::Arity { op: "scan body", expected: args.len() + 1, found: args.len() });
                    b.scalar(0.0)
                }
            },
            op => {
                let node_args = node.args.iter().map(|a| map[a.index()]).collect();
                b.graph.push(op.clone(), node_args, node.ty.clone(), node.span)
            }
        };
        map.push(id);
    }
    map
}

/// Why a step function cannot be a scan body, if it cannot: it must treat
/// the rows of its state independently (the derivative runs it over all
/// `N · steps` rows at once) and draw no random numbers.
pub fn check_rowwise(body: &Graph) -> Result<(), (String, Span)> {
    let batched = has_step_batch;
    for node in &body.nodes {
        let shape = &node.ty.shape;
        if batched(shape) && !rows_first(shape) {
            return Err((format!("it makes a value of shape {shape}, where the rows are not the first axis"), node.span));
        }
        let arg_batched = |k: usize| node.args.get(k).is_some_and(|a| batched(body.shape(*a)));
        let any_batched = (0..node.args.len()).any(arg_batched);
        let mixes = match &node.op {
            Op::RandomUniform { .. } => {
                return Err(("it draws random numbers (dropout); apply dropout outside the scan".into(), node.span))
            }
            Op::Reduce { axes, .. } => any_batched && axes.contains(&0),
            Op::Transpose { perm } => any_batched && perm.first() != Some(&0),
            Op::Slice { axis, .. } | Op::Pad { axis, .. } | Op::Concat { axis } => any_batched && *axis == 0,
            Op::Iota { axis } => batched(shape) && *axis == 0,
            Op::MatMul => arg_batched(1) && body.shape(node.args[1]).rank() == 2,
            Op::Gather => arg_batched(0),
            Op::ScatterAdd { .. } | Op::Solve => any_batched,
            Op::Reshape { .. } => any_batched && !batched(shape),
            _ => false,
        };
        if mixes {
            return Err((format!("its `{}` combines different rows of the state", node.op.name()), node.span));
        }
    }
    Ok(())
}

/// Reference evaluation: the body, specialized to the batch, once per step.
pub fn scan_eval(
    body: &Graph,
    steps: usize,
    inputs: usize,
    reverse: bool,
    saved: usize,
    args: &[&ArrayD<f64>],
) -> Result<ArrayD<f64>, EvalError> {
    let init = args.first().ok_or_else(|| EvalError::MissingInput("scan state".into()))?;
    let n = init.shape().first().copied().unwrap_or(1);
    let body = body_for_batch(body, &Dim::Known(n));
    let names: Vec<String> = body.inputs().iter().map(|(_, name, _)| name.to_string()).collect();
    let mut out_shape = vec![n, steps];
    out_shape.extend_from_slice(&init.shape()[1..]);
    let width = out_shape.get(2).copied().unwrap_or(1);
    if saved > 0 {
        out_shape[2] += saved;
    }
    let mut out = ArrayD::zeros(out_shape);
    let mut state = (*init).clone();
    for i in 0..steps {
        let t = if reverse { steps - 1 - i } else { i };
        let mut feed = Inputs::new();
        for (k, (name, value)) in names.iter().zip(args).enumerate() {
            let v = match k {
                0 => state.clone(),
                k if k <= inputs => value.index_axis(Axis(1), t).to_owned(),
                _ => (*value).clone(),
            };
            feed.insert(name.clone(), v);
        }
        let next = interp::run(&body, &feed)?.into_iter().next().ok_or_else(|| EvalError::MissingInput("scan body output".into()))?;
        out.index_axis_mut(Axis(1), t).assign(&next);
        state = if saved > 0 { next.slice_axis(Axis(1), (0..width).into()).to_owned() } else { next };
    }
    Ok(out)
}

/// The per-step input types of the body: its inputs after the state.
fn body_input_types(body: &Graph) -> Vec<TensorType> {
    body.inputs().iter().map(|(id, _, _)| body.ty(*id).clone()).collect()
}

/// A fresh graph with inputs of types `tys` (named `v0`, `v1`, ...).
fn graph_with_inputs(tys: &[TensorType], span: Span) -> (Graph, Vec<ValueId>) {
    let mut g = Graph::default();
    let ids = {
        let mut b = Builder::new(&mut g, span);
        tys.iter().enumerate().map(|(i, t)| b.input(&format!("v{i}"), InputKind::Data, t.clone())).collect()
    };
    (g, ids)
}

fn autodiff_error(e: crate::autodiff::AutodiffError) -> ShapeError {
    match e {
        crate::autodiff::AutodiffError::Internal { error, .. } => error,
        crate::autodiff::AutodiffError::SeedShape => ShapeError::Scan { reason: "seed shape".into() },
    }
}

/// Keep the products a step computes (`h·W`, `x·W`: most of its work) for
/// the derivative. They are appended to the body's output as columns after
/// the new state (`Scan::saved`), so the backward loop and the all-rows VJP
/// read them rather than compute them again; elementwise values are still
/// recomputed (JAX's `checkpoint_dots` policy makes the same choice). Returns
/// the body and the columns added: `(body, 0)` when the state is not a
/// matrix `[N, S]` or the step has no product with one row per row of it.
pub fn with_saved_products(body: Graph, span: Span) -> (Graph, usize) {
    let (Some(&(state, _, _)), Some(&out)) = (body.inputs().first(), body.outputs.first()) else {
        return (body, 0);
    };
    let matrix = |s: &Shape| s.rank() == 2 && rows_first(s);
    if !matrix(body.shape(state)) || !matrix(body.shape(out)) {
        return (body, 0);
    }
    let mut products = vec![out];
    let mut saved = 0;
    for (i, node) in body.nodes.iter().enumerate() {
        let id = ValueId(i as u32);
        if let (Op::MatMul, [_, Dim::Known(w)], true) = (&node.op, node.ty.shape.dims(), id != out && matrix(&node.ty.shape)) {
            products.push(id);
            saved += w;
        }
    }
    if saved == 0 {
        return (body, 0);
    }
    let mut g = body;
    let joined = Builder::new(&mut g, span).concat(&products, 1);
    g.outputs = vec![joined];
    (g, saved)
}

/// A scan's states from its result `[N, T, S + saved]`, or a step's new state
/// from its body's output `[N, S + saved]`: the last axis without the saved
/// products after the state.
pub fn states(b: &mut Builder, x: ValueId, saved: usize) -> ValueId {
    let shape = b.shape(x);
    match shape.dims().last() {
        Some(Dim::Known(width)) if saved > 0 => b.slice(x, shape.rank() - 1, 0, width - saved),
        _ => x,
    }
}

/// The products a body with `saved` columns appends to its new state.
fn saved_products(body: &Graph, saved: usize) -> Vec<ValueId> {
    match body.outputs.first() {
        Some(&out) if saved > 0 => body.node(out).args.get(1..).unwrap_or_default().to_vec(),
        _ => Vec::new(),
    }
}

/// Make every use of `from` in `g` (and any output that is `from`) read `to`.
fn redirect(g: &mut Graph, from: ValueId, to: ValueId) {
    for node in &mut g.nodes {
        node.args.iter_mut().filter(|a| **a == from).for_each(|a| *a = to);
    }
    g.outputs.iter_mut().filter(|o| **o == from).for_each(|o| *o = to);
}

/// The body copied into a fresh graph for one of its VJPs: inputs `lead`
/// copies of the state type (the carried cotangent `ν`), then `h_prev, xs..,
/// r, tail.., consts..`, with `r` (only with `saved` columns) the step's saved
/// products, sliced into one column block per product.
struct Copied {
    graph: Graph,
    /// The graph's inputs, in the order above.
    ids: Vec<ValueId>,
    /// Where the body's inputs went: `h_prev, xs.., consts..`.
    body_args: Vec<ValueId>,
    /// The body's output (the new state, then any saved products).
    out: ValueId,
    /// Each saved product's node in the copy, and its saved column block.
    products: Vec<(ValueId, ValueId)>,
}

fn copy_body(body: &Graph, inputs: usize, saved: usize, lead: usize, tail: &[TensorType], span: Span) -> Result<Copied, ShapeError> {
    let tys = body_input_types(body);
    let kept = usize::from(saved > 0);
    let mut all = vec![tys[0].clone(); lead + 1];
    all.extend_from_slice(&tys[1..=inputs]);
    if saved > 0 {
        all.push(TensorType::f32(Shape(vec![Dim::Sym(STEP_BATCH.into()), Dim::Known(saved)])));
    }
    all.extend_from_slice(tail);
    all.extend_from_slice(&tys[1 + inputs..]);
    let (mut graph, ids) = graph_with_inputs(&all, span);
    let mut body_args = ids[lead..=lead + inputs].to_vec();
    body_args.extend_from_slice(&ids[lead + 1 + inputs + kept + tail.len()..]);
    let mut b = Builder::new(&mut graph, span);
    // The saved columns, sliced before the body's nodes that will read them.
    let mut columns = Vec::new();
    let mut at = 0;
    for p in saved_products(body, saved) {
        let w = width(body.shape(p));
        columns.push((p, b.slice(ids[lead + 1 + inputs], 1, at, at + w)));
        at += w;
    }
    let map = inline_nodes(&mut b, body, &body_args, &Dim::Sym(STEP_BATCH.into()));
    if let Some(e) = b.internal_error {
        return Err(e);
    }
    let out = body.outputs.first().map_or(body_args[0], |o| map[o.index()]);
    let products = columns.into_iter().map(|(p, column)| (map[p.index()], column)).collect();
    Ok(Copied { graph, ids, body_args, out, products })
}

/// The type of the body's output: the new state, then any saved products.
fn output_type(body: &Graph) -> TensorType {
    body.outputs.first().map_or_else(|| body_input_types(body)[0].clone(), |o| body.ty(*o).clone())
}

/// The width of a step's matrix `[N_step, w]`.
fn width(s: &Shape) -> usize {
    known_dim(s, 1)
}

/// The length of `s` along `axis` (0 where unknown).
fn known_dim(s: &Shape, axis: usize) -> usize {
    s.dims().get(axis).and_then(Dim::known).unwrap_or(0)
}

/// Where the backward loop puts the per-step cotangents it hands on besides
/// the state's: columns after `ν` in its result, one block per distinct
/// value (in `z = zx + h·W` the cotangent of `zx` is also that of `h·W`).
struct HandedOn {
    /// The first column of each per-step input's cotangent, for the inputs
    /// the step uses other than through a saved product (the rest are
    /// `dP·Wᵀ`, one product over all rows).
    xs: Vec<Option<usize>>,
    /// The first column of each saved product's cotangent.
    products: Vec<usize>,
    width: usize,
}

/// Whether the backward loop can hand on the cotangents the all-rows VJP
/// would otherwise compute again from the step's elementwise derivative: the
/// step saved its products and every per-step input is a float matrix.
fn can_hand_on(body: &Graph, inputs: usize, saved: usize) -> bool {
    let tys = body_input_types(body);
    saved > 0 && tys[1..=inputs].iter().all(|t| t.dtype == crate::ir::DType::F32 && t.shape.rank() == 2 && rows_first(&t.shape))
}

/// For each per-step input, whether the step reads it other than as an
/// operand of a saved product (`x + h·W` does, `x·W` does not).
fn read_elementwise(body: &Graph, inputs: usize, saved: usize) -> Vec<bool> {
    let products = saved_products(body, saved);
    let xs: Vec<ValueId> = body.inputs()[1..=inputs].iter().map(|(id, _, _)| *id).collect();
    xs.iter().map(|x| body.nodes.iter().enumerate().any(|(i, n)| n.args.contains(x) && !products.contains(&ValueId(i as u32)))).collect()
}

/// The backward scan's body: inputs `ν, h_prev, xs.., r, g, consts..` (state
/// `ν`: the cotangent arriving from the following step), seeded with `g + ν`,
/// returning the cotangent of `h_prev`. `g` covers the saved columns too
/// unless `g_whole` is false: then they are known zero and `g` is the state's;
/// with `hand_on`, the cotangents of the saved products and of the per-step
/// inputs read elementwise follow it as columns (`HandedOn`, the backward
/// scan's `saved`).
fn back_body(
    body: &Graph,
    inputs: usize,
    saved: usize,
    g_whole: bool,
    hand_on: bool,
    span: Span,
) -> Result<(Graph, Option<HandedOn>), ShapeError> {
    let g_ty = if g_whole { output_type(body) } else { body_input_types(body)[0].clone() };
    let Copied { mut graph, ids, body_args, out, products } = copy_body(body, inputs, saved, 1, &[g_ty], span)?;
    let seed = {
        let mut b = Builder::new(&mut graph, span);
        let g_t = ids[2 + inputs + usize::from(saved > 0)];
        match saved {
            0 => b.add(g_t, ids[0]),
            _ if g_whole => {
                let nu = b.pad(ids[0], 1, 0, saved);
                b.add(g_t, nu)
            }
            _ => {
                let sum = b.add(g_t, ids[0]);
                b.pad(sum, 1, 0, saved)
            }
        }
    };
    let elementwise = if hand_on { read_elementwise(body, inputs, saved) } else { Vec::new() };
    let mut wrt = vec![body_args[0]];
    wrt.extend(body_args[1..=inputs].iter().zip(&elementwise).filter(|(_, e)| **e).map(|(x, _)| *x));
    wrt.extend(products.iter().filter(|_| hand_on).map(|&(p, _)| p));
    graph.outputs = crate::autodiff::vjp(&mut graph, out, seed, &wrt, span).map_err(autodiff_error)?;
    // Differentiated first, then every use of a product's value (the forward
    // values and the derivative alike) reads the saved columns: the product
    // itself is left unused and dropped.
    for (product, column) in products {
        redirect(&mut graph, product, column);
    }
    let mut graph = crate::opt::optimize(&graph);
    let d = std::mem::take(&mut graph.outputs);
    graph.outputs = vec![d[0]];
    graph.output_names = vec!["d0".into()];
    if !hand_on {
        return Ok((graph, None));
    }
    // One block per distinct value (after simplification), each with its
    // first column.
    let mut blocks: Vec<(ValueId, usize)> = Vec::new();
    let mut starts = Vec::new();
    let mut at = 0;
    for &v in &d[1..] {
        match blocks.iter().find(|(u, _)| *u == v) {
            Some(&(_, start)) => starts.push(start),
            None => {
                blocks.push((v, at));
                starts.push(at);
                at += width(graph.shape(v));
            }
        }
    }
    let columns: Vec<ValueId> = std::iter::once(d[0]).chain(blocks.iter().map(|&(v, _)| v)).collect();
    graph.outputs = vec![Builder::new(&mut graph, span).concat(&columns, 1)];
    let mut handed_xs = starts.iter().copied();
    let xs = elementwise.iter().map(|&e| if e { handed_xs.next() } else { None }).collect();
    let products = handed_xs.collect();
    Ok((graph, Some(HandedOn { xs, products, width: at })))
}

/// The body's VJP run once over all rows, for the cotangents of the per-step
/// inputs and the constants: inputs `h_prev, xs.., r, λ, consts..`, seeded
/// with `λ` (the whole cotangent of each step's output), returning the
/// cotangents of `xs..` then of `consts..`.
fn all_rows_body(body: &Graph, inputs: usize, saved: usize, span: Span) -> Result<Graph, ShapeError> {
    let out_ty = output_type(body);
    let Copied { mut graph, ids, body_args, out, products } = copy_body(body, inputs, saved, 0, &[out_ty], span)?;
    let lambda = ids[1 + inputs + usize::from(saved > 0)];
    graph.outputs = crate::autodiff::vjp(&mut graph, out, lambda, &body_args[1..], span).map_err(autodiff_error)?;
    for (product, column) in products {
        redirect(&mut graph, product, column);
    }
    Ok(cotangents_named(graph))
}

/// `graph`, whose outputs are cotangents, with them named `d0`, `d1`, ..,
/// optimized.
fn cotangents_named(mut graph: Graph) -> Graph {
    graph.output_names = (0..graph.outputs.len()).map(|i| format!("d{i}")).collect();
    crate::opt::optimize(&graph)
}

/// The cotangents the backward loop did not hand on (`HandedOn`), over all
/// rows: those of the per-step inputs read only by products, then of the
/// constants. Inputs `h_prev, xs.., r, e, λ, consts..`, with `e` the handed-on
/// columns. Each product `A·W` contributes `Aᵀ·dP` and `dP·Wᵀ` with `dP` read
/// from `e`; the step's other values read the saved products, so `λ` reaches a
/// constant only through its elementwise uses (a bias added inside the step),
/// and the elementwise derivative is not run again when there are none.
fn constants_body(body: &Graph, inputs: usize, saved: usize, handed: &HandedOn, span: Span) -> Result<Graph, ShapeError> {
    let out_ty = output_type(body);
    let e_ty = TensorType::f32(Shape(vec![Dim::Sym(STEP_BATCH.into()), Dim::Known(handed.width)]));
    let Copied { mut graph, ids, body_args, out, products } = copy_body(body, inputs, saved, 0, &[e_ty, out_ty], span)?;
    let e = ids[2 + inputs];
    let lambda = ids[3 + inputs];
    for &(product, column) in &products {
        redirect(&mut graph, product, column);
    }
    let (all, seed) = {
        let mut b = Builder::new(&mut graph, span);
        let mut outs = vec![out];
        let mut seeds = vec![lambda];
        for (&(product, _), &at) in products.iter().zip(&handed.products) {
            let w = width(&b.shape(product));
            outs.push(product);
            seeds.push(b.slice(e, 1, at, at + w));
        }
        (b.concat(&outs, 1), b.concat(&seeds, 1))
    };
    let mut wrt: Vec<ValueId> = body_args[1..=inputs].iter().zip(&handed.xs).filter(|(_, at)| at.is_none()).map(|(x, _)| *x).collect();
    wrt.extend_from_slice(&body_args[1 + inputs..]);
    graph.outputs = crate::autodiff::vjp(&mut graph, all, seed, &wrt, span).map_err(autodiff_error)?;
    Ok(cotangents_named(graph))
}

/// `x [N, T, r..]` as `[N·T, r..]`.
fn merge_time(b: &mut Builder, x: ValueId) -> ValueId {
    let s = b.shape(x);
    let mut dims = vec![Dim::product(&s.dims()[..2])];
    dims.extend_from_slice(&s.dims()[2..]);
    b.reshape(x, &Shape(dims))
}

/// `x [N, r..]` as `[N, 1, r..]`.
fn with_time(b: &mut Builder, x: ValueId) -> ValueId {
    let s = b.shape(x);
    let mut dims = vec![s.dims()[0].clone(), Dim::Known(1)];
    dims.extend_from_slice(&s.dims()[1..]);
    b.reshape(x, &Shape(dims))
}

/// `x [N, T, ..]` moved one step along time, towards `later` or earlier
/// steps, with `fill` entering at the freed end.
fn shift_time(b: &mut Builder, x: ValueId, fill: ValueId, steps: usize, towards_earlier: bool) -> ValueId {
    if steps == 1 {
        return fill;
    }
    if towards_earlier {
        // y[t] = x[t + 1], y[T − 1] = fill
        let rest = b.slice(x, 1, 1, steps);
        b.concat(&[rest, fill], 1)
    } else {
        // y[t] = x[t − 1], y[0] = fill
        let rest = b.slice(x, 1, 0, steps - 1);
        b.concat(&[fill, rest], 1)
    }
}

/// Backpropagation through time (see the module comment), for `op`, a `Scan`.
pub fn scan_vjp_rule(b: &mut Builder, op: &Op, args: &[ValueId], out: ValueId, g: ValueId) -> Vec<Option<ValueId>> {
    let Op::Scan { body, steps, inputs, reverse, saved } = op else {
        return vec![None; args.len()];
    };
    match scan_vjp(b, body, (*steps, *inputs, *reverse, *saved), args, out, g) {
        Ok(v) => v.into_iter().map(Some).collect(),
        Err(e) => {
            b.internal_error.get_or_insert(e);
            vec![None; args.len()]
        }
    }
}

fn scan_vjp(
    b: &mut Builder,
    body: &Graph,
    (steps, inputs, reverse, saved): (usize, usize, bool, usize),
    args: &[ValueId],
    out: ValueId,
    g: ValueId,
) -> Result<Vec<ValueId>, ShapeError> {
    let init = args[0];
    let xs = &args[1..=inputs];
    let consts = &args[1 + inputs..];
    // The states, and the products each step saved (columns after the state).
    let out_width = known_dim(&b.shape(out), 2);
    let forward_states = states(b, out, saved);
    let kept = (saved > 0).then(|| b.slice(out, 2, out_width - saved, out_width));
    // The state each step started from, in step order.
    let init_t = with_time(b, init);
    let h_prev = shift_time(b, forward_states, init_t, steps, reverse);
    // ν[t]: the cotangent step t passes to the state it started from, with the
    // per-step cotangents the loop hands on after it.
    let zeros = b.full_like(0.0, init);
    let hand_on = can_hand_on(body, inputs, saved);
    // The cotangent of the saved columns is zero unless a derivative of this
    // derivative reads them: then the loop needs all of `g`, else the state's.
    let g_whole = saved > 0 && !zero_columns_after(b.graph, g, saved);
    let state_width = width(&b.shape(init));
    let g_loop = if saved > 0 && !g_whole { b.slice(g, 2, 0, state_width) } else { g };
    let (back_body, handed) = back_body(body, inputs, saved, g_whole, hand_on, b.span)?;
    let handed_width = handed.as_ref().map_or(0, |h| h.width);
    let back =
        Op::Scan { body: Box::new(back_body), steps, inputs: inputs + 2 + usize::from(saved > 0), reverse: !reverse, saved: handed_width };
    let mut back_args = vec![zeros, h_prev];
    back_args.extend_from_slice(xs);
    back_args.extend(kept);
    back_args.push(g_loop);
    back_args.extend_from_slice(consts);
    let back_out = b.op(back, &back_args);
    let nu = states(b, back_out, handed_width);
    let first = if reverse { steps - 1 } else { 0 };
    let d_init = b.slice(nu, 1, first, first + 1);
    let init_shape = b.shape(init);
    let d_init = b.reshape(d_init, &init_shape);
    // λ[t] = g[t] + ν[next step]: the whole cotangent of step t's output.
    let zeros_t = b.full_like(0.0, init_t);
    let mut from_next = shift_time(b, nu, zeros_t, steps, !reverse);
    if saved > 0 {
        from_next = b.pad(from_next, 2, 0, saved);
    }
    let lambda = b.add(g, from_next);
    // Per-step inputs and constants: the body's VJP over all N·T rows at once
    // (of the constants only, when the loop handed on the rest).
    let rows = Dim::product(&b.shape(out).dims()[..2]);
    let mut flat = vec![merge_time(b, h_prev)];
    for &x in xs {
        flat.push(merge_time(b, x));
    }
    if let Some(k) = kept {
        flat.push(merge_time(b, k));
    }
    let mut result = vec![d_init];
    match handed {
        Some(handed) => {
            let extra = b.slice(back_out, 2, state_width, state_width + handed.width);
            flat.push(merge_time(b, extra));
            flat.push(merge_time(b, lambda));
            flat.extend_from_slice(consts);
            let mut grads = inline(b, &constants_body(body, inputs, saved, &handed, b.span)?, &flat, &rows).into_iter();
            for (&x, at) in xs.iter().zip(&handed.xs) {
                let shape = b.shape(x);
                let dx = match at {
                    Some(at) => b.slice(extra, 2, *at, at + known_dim(&shape, 2)),
                    None => match grads.next() {
                        Some(d) => b.reshape(d, &shape),
                        None => return Err(ShapeError::Scan { reason: "a per-step input's cotangent is missing".into() }),
                    },
                };
                result.push(dx);
            }
            result.extend(grads);
        }
        None => {
            flat.push(merge_time(b, lambda));
            flat.extend_from_slice(consts);
            let grads = inline(b, &all_rows_body(body, inputs, saved, b.span)?, &flat, &rows);
            for (k, &x) in xs.iter().enumerate() {
                let shape = b.shape(x);
                let dx = b.reshape(grads[k], &shape);
                result.push(dx);
            }
            result.extend_from_slice(&grads[inputs..]);
        }
    }
    Ok(result)
}

/// Whether `v` ends in at least `columns` zero columns along its last axis
/// (it is a zero padding there): a scan's result read only through `states`.
fn zero_columns_after(g: &Graph, v: ValueId, columns: usize) -> bool {
    let last = g.shape(v).rank().saturating_sub(1);
    crate::opt::zero_padding(g, v).is_some_and(|(axis, _, after, _)| axis == last && after >= columns)
}

/// `body` with its per-step input `k` (body input `1 + k`) narrowed to
/// `narrow` and zero-padded back to its old type inside the body (`axis`,
/// `before`, `after` along the step's axes): a sequence that is a zero padding
/// of a narrower one is then read as the narrower one, and the body's
/// simplifications drop the zeros (the cotangent of a forward scan read only
/// through its hidden state, `[N, T, H]` padded to the state's `2H`).
pub fn pad_step_input(body: &Graph, k: usize, narrow: TensorType, (axis, before, after): (usize, usize, usize)) -> Option<Graph> {
    let target = body.inputs().get(1 + k)?.0;
    let mut g = Graph { nodes: Vec::with_capacity(body.nodes.len() + 1), outputs: Vec::new(), output_names: body.output_names.clone() };
    let mut remap: Vec<ValueId> = Vec::with_capacity(body.nodes.len());
    for (i, n) in body.nodes.iter().enumerate() {
        let args = n.args.iter().map(|a| remap[a.index()]).collect();
        let id = if i == target.index() {
            let input = g.push(n.op.clone(), Vec::new(), narrow.clone(), n.span);
            g.push(Op::Pad { axis, before, after, value: 0.0 }, vec![input], n.ty.clone(), n.span)
        } else {
            g.push(n.op.clone(), args, n.ty.clone(), n.span)
        };
        remap.push(id);
    }
    g.outputs = body.outputs.iter().map(|o| remap[o.index()]).collect();
    Some(g)
}

/// The body's view of a state `[N, S..]`: `[N_step, S..]`.
pub fn step_type(ty: &TensorType) -> TensorType {
    let mut dims = vec![Dim::Sym(STEP_BATCH.into())];
    dims.extend_from_slice(&ty.shape.dims()[1..]);
    TensorType { shape: Shape(dims), dtype: ty.dtype }
}

/// The body's view of a sequence `[N, T, r..]`: one step `[N_step, r..]`
/// (token ids stay ints).
pub fn step_input_type(ty: &TensorType) -> TensorType {
    let mut dims = vec![Dim::Sym(STEP_BATCH.into())];
    dims.extend_from_slice(&ty.shape.dims()[2..]);
    TensorType { shape: Shape(dims), dtype: ty.dtype }
}
