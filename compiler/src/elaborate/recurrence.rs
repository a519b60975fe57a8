//! `scan(step, init, xs)`: recurrence over a time axis (notes §12–14: RNNs,
//! LSTMs), compiled as one loop and differentiated by backpropagation through
//! time (`ops::scan`).
//!
//! The step function is elaborated once, on placeholder values for one step
//! (`[N_step, S..]` state, `[N_step, I..]` inputs), in the graph being built;
//! the nodes that depend on the placeholders are then moved out into the
//! `Scan` node's body, and every value they read from outside (parameters,
//! values computed from them) becomes a constant operand of the scan.

use super::builtins::{bind, take, tensor_arg};
use super::error::ErrorKind;
use super::value::{Arg, Tensor, Value};
use super::{Ctx, ElabError};
use crate::ast::Span;
use crate::ir::{DType, Dim, Graph, InputKind, TensorType, ValueId};
use crate::ops::scan::{check_rowwise, has_step_batch, step_input_type, step_type, STEP_BATCH};
use crate::ops::Op;
use std::collections::HashMap;

pub(super) fn scan(cx: &mut Ctx, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
    let mut a = bind(cx, "scan", args, &["step", "init", "xs", "with", "reverse"], 3, span)?;
    let Some(step) = take(&mut a[0]) else { return Err(super::builtins::internal(cx, span)) };
    let init_arg = take(&mut a[1]);
    let init_span = init_arg.as_ref().map_or(span, |a| a.span);
    let init = tensor_arg(cx, init_arg, span)?;
    let xs_arg = take(&mut a[2]);
    let xs_span = xs_arg.as_ref().map_or(span, |a| a.span);
    let xs = match xs_arg {
        Some(Arg { value: Value::List(items), .. }) => {
            items.into_iter().map(|(v, s)| cx.tensor_of(v, s).map(|t| (t, s))).collect::<Result<Vec<_>, _>>()?
        }
        other => vec![(tensor_arg(cx, other, span)?, xs_span)],
    };
    // `with: [w, ..]`: values passed to every step after the state and inputs.
    let extra = match take(&mut a[3]) {
        Some(Arg { value: Value::List(items), .. }) => items.into_iter().map(|(v, s)| Arg { name: None, value: v, span: s }).collect(),
        Some(other) => vec![Arg { name: None, ..other }],
        None => Vec::new(),
    };
    let reverse = match take(&mut a[4]) {
        Some(r) => cx.whole(&r.value, r.span, &super::range::REVERSE)? == 1,
        None => false,
    };
    let init_ty = cx.ty(&init);
    let Some(rows) = init_ty.shape.dims().first().cloned() else {
        return Err(mistake(cx, init_span, format!("the state needs a batch axis first, found a scalar {}", init_ty.shape)));
    };
    if init_ty.dtype == DType::I32 {
        return Err(mistake(cx, init_span, format!("the state of a scan is a float tensor, found {init_ty}")));
    }
    let mut steps = None;
    for (x, s) in &xs {
        let d = cx.shape(x);
        let fits = d.rank() >= 2 && d.dims()[0] == rows;
        let t = d.dims().get(1).and_then(Dim::known);
        match (fits, t) {
            (true, Some(t)) if steps.is_none_or(|n| n == t) => steps = Some(t),
            _ => {
                let found = cx.shape(x);
                return Err(mistake(
                    cx,
                    *s,
                    format!("scanned sequences are [{rows}, T, ..] (batch, time, ..) with one known T, found {found}"),
                ));
            }
        }
    }
    let Some(steps) = steps else {
        return Err(mistake(cx, xs_span, "`scan` needs at least one sequence to scan over".into()));
    };
    let seq_tys: Vec<TensorType> = xs.iter().map(|(x, _)| cx.ty(x)).collect();
    let state_ty = cx.ty(&init);
    let (body, captured) = elaborate_step(cx, step, &state_ty, &seq_tys, extra, span)?;
    if let Err((why, at)) = check_rowwise(&body) {
        return Err(cx.err(ErrorKind::Builtin {
            span: at,
            title: format!("the step function cannot be scanned: {why}"),
            label: "here".into(),
            note: Some(
                "a scan step must treat each row of its state on its own: its gradient runs it over every row of every step at once".into(),
            ),
        }));
    }
    if let Some(outside) = body.nodes.iter().find(|n| n.ty.shape.dims().iter().any(|d| d.factors().1.iter().any(|f| f != STEP_BATCH))) {
        let shape = outside.ty.shape.clone();
        return Err(mistake(
            cx,
            outside.span,
            format!("a scan step may read parameters from outside, but this value, {shape}, has a batch axis of its own: scan it as an input instead"),
        ));
    }
    let (body, saved) = crate::ops::scan::with_saved_products(crate::opt::optimize(&body), span);
    let mut operands = vec![init.id];
    operands.extend(xs.iter().map(|(x, _)| x.id));
    operands.extend(captured);
    let op = Op::Scan { body: Box::new(body), steps, inputs: xs.len(), reverse, saved };
    let all = cx.op(op, &operands, span)?;
    // The states; the saved products after them are for the derivative.
    let id = crate::ops::scan::states(&mut cx.builder(span), all, saved);
    Ok(Value::Tensor(Tensor { id, names: Vec::new() }))
}

fn mistake(cx: &Ctx, span: Span, title: String) -> ElabError {
    cx.err(ErrorKind::Builtin { span, title, label: "here".into(), note: None })
}

/// Elaborate `step(state, x..)` for one step and move it into a body graph;
/// returns the body and the outside values it reads (its constants, in order).
fn elaborate_step(
    cx: &mut Ctx,
    step: Arg,
    state: &TensorType,
    seqs: &[TensorType],
    extra: Vec<Arg>,
    span: Span,
) -> Result<(Graph, Vec<ValueId>), ElabError> {
    let mark = cx.graph.nodes.len();
    let trained_before = cx.trained_count();
    // Placeholders: source nodes that are not graph inputs; they and everything
    // computed from them leave this graph below.
    let mut holders = Vec::new();
    let state_ty = TensorType::f32(step_type(state).shape);
    let mut holder_tys = vec![state_ty.clone()];
    holder_tys.extend(seqs.iter().map(step_input_type));
    for ty in &holder_tys {
        holders.push(cx.graph.push(Op::Iota { axis: 0 }, Vec::new(), ty.clone(), span));
    }
    let mut call_args: Vec<Arg> =
        holders.iter().map(|&id| Arg { name: None, value: Value::Tensor(Tensor { id, names: Vec::new() }), span }).collect();
    call_args.extend(extra);
    let layers = cx.layers.take();
    let result = cx.call(step.value, call_args, span, step.span);
    cx.layers = layers;
    let result = result?;
    let out = match result {
        Value::Tensor(t) => t.id,
        other => {
            let found = other.describe(|id| cx.graph.shape(id).clone());
            cx.graph.nodes.truncate(mark);
            return Err(mistake(
                cx,
                step.span,
                format!("the step function must return the new state, a tensor {}; it returned {found}", state.shape),
            ));
        }
    };
    let out_ty = cx.graph.ty(out).clone();
    if out_ty.shape != state_ty.shape {
        cx.graph.nodes.truncate(mark);
        let shown = |t: &TensorType| t.shape.to_string().replace(STEP_BATCH, &state.shape.dims()[0].to_string());
        return Err(mistake(
            cx,
            step.span,
            format!("the step function must return a new state like the old one, {}, but it returns {}", shown(&state_ty), shown(&out_ty)),
        ));
    }
    if cx.trained_count() != trained_before {
        cx.graph.nodes.truncate(mark);
        return Err(mistake(cx, step.span, "a scan step cannot be the first use of a trained model: use it once before the scan".into()));
    }
    Ok(outline(cx, mark, &holders, out))
}

/// Split the nodes from `mark` on: those computed from the placeholders become
/// the body, the rest stay (renumbered) in the graph being built.
fn outline(cx: &mut Ctx, mark: usize, holders: &[ValueId], out: ValueId) -> (Graph, Vec<ValueId>) {
    let nodes = cx.graph.nodes.split_off(mark);
    let mut in_body = vec![false; nodes.len()];
    // A node belongs to the body if it is computed from a placeholder or is
    // shaped by the step's rows (a constant filling a state-shaped tensor).
    for (i, node) in nodes.iter().enumerate() {
        in_body[i] = holders.contains(&ValueId((mark + i) as u32))
            || has_step_batch(&node.ty.shape)
            || node.args.iter().any(|a| a.index() >= mark && in_body[a.index() - mark]);
    }
    let is_body = |v: ValueId| v.index() >= mark && in_body[v.index() - mark];
    // Nodes that stay, renumbered.
    let mut outer: HashMap<ValueId, ValueId> = HashMap::new();
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| !in_body[*i]) {
        let args = node.args.iter().map(|a| *outer.get(a).unwrap_or(a)).collect();
        let id = cx.graph.push(node.op.clone(), args, node.ty.clone(), node.span);
        outer.insert(ValueId((mark + i) as u32), id);
    }
    cx.remap_lazy_inputs(&outer);
    // The body: placeholders become its first inputs, outside values its constants.
    let mut body = Graph::default();
    let mut inner: HashMap<ValueId, ValueId> = HashMap::new();
    for (k, &h) in holders.iter().enumerate() {
        let name = if k == 0 { "state".to_string() } else { format!("x{k}") };
        let ty = nodes[h.index() - mark].ty.clone();
        let id = body.push(Op::Input { name, kind: InputKind::Data }, Vec::new(), ty, nodes[h.index() - mark].span);
        inner.insert(h, id);
    }
    let mut captured = Vec::new();
    let mut capture = |body: &mut Graph, inner: &mut HashMap<ValueId, ValueId>, v: ValueId, graph: &Graph| -> ValueId {
        if let Some(&id) = inner.get(&v) {
            return id;
        }
        let outside = *outer.get(&v).unwrap_or(&v);
        let node = graph.node(outside);
        // Constants are copied in rather than passed.
        if let Op::Constant(_) = node.op {
            let id = body.push(node.op.clone(), Vec::new(), node.ty.clone(), node.span);
            inner.insert(v, id);
            return id;
        }
        let id =
            body.push(Op::Input { name: format!("c{}", captured.len()), kind: InputKind::Data }, Vec::new(), node.ty.clone(), node.span);
        captured.push(outside);
        inner.insert(v, id);
        id
    };
    for (i, node) in nodes.iter().enumerate() {
        let v = ValueId((mark + i) as u32);
        if !in_body[i] || holders.contains(&v) {
            continue;
        }
        let args = node.args.iter().map(|&a| if is_body(a) { inner[&a] } else { capture(&mut body, &mut inner, a, &cx.graph) }).collect();
        let id = body.push(node.op.clone(), args, node.ty.clone(), node.span);
        inner.insert(v, id);
    }
    let result = if is_body(out) { inner[&out] } else { capture(&mut body, &mut inner, out, &cx.graph) };
    body.outputs = vec![result];
    body.output_names = vec!["state'".into()];
    (body, captured)
}
