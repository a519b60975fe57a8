//! Graph clean-up after elaboration and differentiation: algebraic
//! simplification (the `× 1` and `+ 0` that derivative rules leave behind),
//! common-subexpression elimination, and dead-code elimination. Inputs are
//! always kept so a graph's interface does not depend on what it uses.

use crate::ir::{Graph, Node, ValueId};
use crate::ops::{BinaryOp, Op, UnaryOp};
use std::collections::HashMap;

/// Run every pass; the result computes the same outputs.
pub fn optimize(graph: &Graph) -> Graph {
    optimize_split(graph, 0).0
}

/// `optimize`, also reporting where the nodes that came from before node
/// `boundary` end (the passes keep node order), e.g. where backward starts.
pub fn optimize_split(graph: &Graph, boundary: usize) -> (Graph, usize) {
    let (mut simplified, mut origin) = simplify_and_cse(graph);
    if let Some((summed, from)) = sums_from_scatters(&simplified) {
        // The new nodes are shared with the scatters they copy.
        let (shared, from_shared) = simplify_and_cse(&summed);
        origin = from_shared.iter().map(|&i| origin[from[i]]).collect();
        simplified = shared;
    }
    let (out, kept) = eliminate_dead_code_tracked(&simplified);
    let new_boundary = kept.iter().filter(|&&i| origin[i] < boundary).count();
    (out, new_boundary)
}

/// The scalar constant a value is everywhere, if it is a (broadcast) constant.
fn constant_value(g: &Graph, v: ValueId) -> Option<f64> {
    let node = g.node(v);
    match &node.op {
        Op::Constant(c) => Some(*c),
        Op::Broadcast { .. } | Op::Reshape { .. } => node.args.first().and_then(|&a| constant_value(g, a)),
        _ => None,
    }
}

/// Rebuild the graph, forwarding trivial nodes to their operand and sharing
/// nodes that compute the same op on the same operands.
/// Also returns, for each new node, the index of the node it came from.
fn simplify_and_cse(graph: &Graph) -> (Graph, Vec<usize>) {
    let mut out = Graph { nodes: Vec::with_capacity(graph.nodes.len()), outputs: Vec::new(), output_names: graph.output_names.clone() };
    let mut origin = Vec::with_capacity(graph.nodes.len());
    let mut remap: Vec<ValueId> = Vec::with_capacity(graph.nodes.len());
    let mut seen: HashMap<String, ValueId> = HashMap::new();
    for (old, node) in graph.nodes.iter().enumerate() {
        let args: Vec<ValueId> = node.args.iter().map(|a| remap[a.index()]).collect();
        if let Some(forward) = trivial(&out, &node.op, &args, node) {
            remap.push(forward);
            continue;
        }
        if let Some(folded) = fold_constant_sum(&mut out, &node.op, &args, node)
            .or_else(|| fold_padding_slice(&mut out, &node.op, &args, node))
            .or_else(|| fold_padding_sum(&mut out, &node.op, &args, node))
            .or_else(|| fold_reshaped_slice(&mut out, &node.op, &args, node))
            .or_else(|| fold_table_product(&mut out, &node.op, &args, node))
            .or_else(|| fold_table_bias(&mut out, &node.op, &args, node))
            .or_else(|| fold_padded_sum_slice(&mut out, &node.op, &args, node))
            .or_else(|| fold_padded_sequences(&mut out, &node.op, &args, node))
        {
            origin.resize(out.nodes.len(), old);
            remap.push(folded);
            continue;
        }
        let key = match node.op {
            Op::Input { .. } => None,
            _ => Some(format!("{:?}|{:?}|{:?}", node.op, args, node.ty)),
        };
        if let Some(existing) = key.as_ref().and_then(|k| seen.get(k)) {
            remap.push(*existing);
            continue;
        }
        let id = out.push(node.op.clone(), args, node.ty.clone(), node.span);
        origin.push(old);
        if let Some(k) = key {
            seen.insert(k, id);
        }
        remap.push(id);
    }
    out.outputs = graph.outputs.iter().map(|o| remap[o.index()]).collect();
    (out, origin)
}

/// A sum of a constant over known dims is a constant (e.g. the element count
/// behind `mean`, once the batch size is known).
fn fold_constant_sum(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let (Op::Reduce { kind: crate::ops::ReduceKind::Sum, .. }, [x]) = (op, args) else { return None };
    let c = constant_value(g, *x)?;
    let n_in = g.shape(*x).numel()?;
    let n_out = node.ty.shape.numel()?;
    let total = c * (n_in / n_out.max(1)) as f64;
    Some(push_filled(g, total, node))
}

/// Rows gathered from a table by id, as the matrix `[N, d]` of a product:
/// `(table [V, d], ids, the gather's span)`, when the table has fewer rows
/// than are gathered (sizes known). An embedding followed by a linear layer,
/// for instance.
fn gathered_rows(g: &Graph, x: ValueId) -> Option<(ValueId, ValueId, crate::ast::Span)> {
    let (table, ids, span) = gathered(g, x)?;
    let d = *g.shape(table).concrete()?.last()?;
    (g.shape(x).concrete()? == [g.shape(ids).numel()?, d]).then_some((table, ids, span))
}

/// Rows gathered from a smaller table by id, seen through reshapes that keep
/// the rows whole: `(table [V, d], ids, the gather's span)`.
fn gathered(g: &Graph, x: ValueId) -> Option<(ValueId, ValueId, crate::ast::Span)> {
    let rows = unreshaped(g, x);
    let (Op::Gather, [table, ids]) = (&g.node(rows).op, g.node(rows).args.as_slice()) else { return None };
    let [v, d] = g.shape(*table).concrete()?[..] else { return None };
    let n = g.shape(*ids).numel()?;
    let whole_rows = g.shape(x).concrete()?.last() == Some(&d);
    (v < n && whole_rows).then_some((*table, *ids, g.node(rows).span))
}

/// A bias added to rows looked up in a smaller table is added to the table
/// instead, once per row of it: `gather(M, ids) + b` → `gather(M + b, ids)`,
/// for `b` the same for every row (a linear layer's bias after the input
/// projection that `fold_table_product` moved into the table).
fn fold_table_bias(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let (Op::Binary(BinaryOp::Add), &[x, y]) = (op, args) else { return None };
    let (rows, bias) = if gathered(g, x).is_some() { (x, y) } else { (y, x) };
    let (table, ids, span) = gathered(g, rows)?;
    let (Op::Broadcast { .. }, &[b]) = (&g.node(bias).op, g.node(bias).args.as_slice()) else { return None };
    let [v, d] = g.shape(table).concrete()?[..] else { return None };
    let b_dims = g.shape(b).concrete()?;
    let per_column = b_dims.last() == Some(&d) && b_dims.iter().rev().skip(1).all(|&k| k == 1);
    if !per_column || g.ty(rows) != &node.ty || node.ty.dtype != crate::ir::DType::F32 {
        return None;
    }
    let table_ty = crate::ir::TensorType::f32(crate::ir::Shape::known(&[v, d]));
    let b_row = push_reshape(g, b, crate::ir::Shape::known(&[d]), node.span);
    let b_table = push_shared(g, Op::Broadcast { shape: table_ty.shape.clone() }, vec![b_row], table_ty.clone(), node.span);
    let biased = push_shared(g, Op::Binary(BinaryOp::Add), vec![table, b_table], table_ty, node.span);
    let shape = rows_shape(g, ids, d)?;
    let looked_up = push_shared(g, Op::Gather, vec![biased, ids], crate::ir::TensorType::f32(shape), span);
    Some(push_reshape(g, looked_up, node.ty.shape.clone(), node.span))
}

/// `ids`' shape followed by `width`: the shape of `width`-wide rows gathered by `ids`.
fn rows_shape(g: &Graph, ids: ValueId, width: usize) -> Option<crate::ir::Shape> {
    let mut dims = g.shape(ids).concrete()?;
    dims.push(width);
    Some(crate::ir::Shape::known(&dims))
}

/// `x` reshaped to `shape` (`x` itself if it has it), as `simplify_and_cse`
/// would have it: a regrouped slice read in place, an existing node reused.
fn push_reshape(g: &mut Graph, x: ValueId, shape: crate::ir::Shape, span: crate::ast::Span) -> ValueId {
    if *g.shape(x) == shape {
        return x;
    }
    let ty = crate::ir::TensorType::f32(shape.clone());
    let op = Op::Reshape { shape };
    let node = Node { op: op.clone(), args: vec![x], ty: ty.clone(), span };
    fold_reshaped_slice(g, &op, &[x], &node).unwrap_or_else(|| push_shared(g, op, vec![x], ty, span))
}

/// `op(args)`, reusing an identical node if the graph has one: nodes a fold
/// builds do not pass through `simplify_and_cse`'s sharing.
fn push_shared(g: &mut Graph, op: Op, args: Vec<ValueId>, ty: crate::ir::TensorType, span: crate::ast::Span) -> ValueId {
    let same = g.nodes.iter().position(|n| n.op == op && n.args == args && n.ty == ty);
    match same {
        Some(i) => ValueId(i as u32),
        None => g.push(op, args, ty, span),
    }
}

/// Products of rows gathered from a smaller table, multiplied once per row of
/// the table instead of once per gathered row (a character model's embedding
/// and input projection: 65 rows instead of 2048 per step), and their
/// derivatives, which autodiff writes as products of the gathered rows:
///
/// * `gather(T, ids) · W` → `gather(T · W, ids)`
/// * `gather(T, ids)ᵀ · G` → `Tᵀ · scatter_add(ids, G)`
/// * `scatter_add(ids, G · M)` → `scatter_add(ids, G) · M`
///
/// The scatter of `G` in the last two is one node (shared by CSE). The new
/// lookups keep the gather's source span, so an id out of range is still
/// reported at the embedding.
fn fold_table_product(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let f32_of = |dims: &[usize]| crate::ir::TensorType::f32(crate::ir::Shape::known(dims));
    match (op, args) {
        (Op::MatMul, &[x, w]) => {
            if let Some((table, ids, span)) = gathered_rows(g, x) {
                let [v, _] = g.shape(table).concrete()?[..] else { return None };
                let [_, n] = g.shape(w).concrete()?[..] else { return None };
                let tw = g.push(Op::MatMul, vec![table, w], f32_of(&[v, n]), span);
                let shape = rows_shape(g, ids, n)?;
                let gathered = g.push(Op::Gather, vec![tw, ids], crate::ir::TensorType::f32(shape), span);
                return Some(push_reshape(g, gathered, node.ty.shape.clone(), span));
            }
            let (Op::Transpose { perm }, &[xt]) = (&g.node(x).op, g.node(x).args.as_slice()) else { return None };
            let (table, ids, span) = gathered_rows(g, xt).filter(|_| perm.as_slice() == [1, 0])?;
            let [v, d] = g.shape(table).concrete()?[..] else { return None };
            let [_, n] = g.shape(w).concrete()?[..] else { return None };
            let rows = push_reshape(g, w, rows_shape(g, ids, n)?, span);
            let scattered = push_shared(g, Op::ScatterAdd { rows: v }, vec![ids, rows], f32_of(&[v, n]), span);
            let tt = g.push(Op::Transpose { perm: vec![1, 0] }, vec![table], f32_of(&[d, v]), span);
            Some(g.push(Op::MatMul, vec![tt, scattered], node.ty.clone(), span))
        }
        (Op::ScatterAdd { rows: v }, &[ids, values]) => {
            let product = match (&g.node(values).op, g.node(values).args.as_slice()) {
                (Op::Reshape { .. }, &[p]) => p,
                _ => values,
            };
            let (Op::MatMul, &[grad, m]) = (&g.node(product).op, g.node(product).args.as_slice()) else { return None };
            let [n_rows, n] = g.shape(grad).concrete()?[..] else { return None };
            if *v >= n_rows || g.shape(ids).numel()? != n_rows || g.shape(m).rank() != 2 {
                return None;
            }
            let span = node.span;
            let rows = push_reshape(g, grad, rows_shape(g, ids, n)?, span);
            let scattered = push_shared(g, Op::ScatterAdd { rows: *v }, vec![ids, rows], f32_of(&[*v, n]), span);
            Some(g.push(Op::MatMul, vec![scattered, m], node.ty.clone(), span))
        }
        _ => None,
    }
}

/// The value under any reshapes.
fn unreshaped(g: &Graph, mut v: ValueId) -> ValueId {
    while let (Op::Reshape { .. }, [inner]) = (&g.node(v).op, g.node(v).args.as_slice()) {
        v = *inner;
    }
    v
}

/// Column sums of rows that are also scattered into a smaller table, summed
/// from the table instead: `Σᵢ Gᵢ = Σᵣ scatter_add(ids, G)ᵣ`, 65 rows instead
/// of 2048 for a character model's input bias, whose gradient is the same
/// `G` that `fold_table_product` scatters for the embedding's. The scatter
/// usually comes after the sum (the bias is added last, so differentiated
/// first), so a copy of it is placed before the sum, and `simplify_and_cse`
/// then shares the later one with it. `None` when no sum qualifies; else the
/// new graph and, for each of its nodes, the node it came from.
fn sums_from_scatters(g: &Graph) -> Option<(Graph, Vec<usize>)> {
    // Each scattered value (under reshapes): the ids, the table's rows and the scatter's values.
    let mut scattered: HashMap<ValueId, (ValueId, usize, ValueId)> = HashMap::new();
    for n in &g.nodes {
        if let (Op::ScatterAdd { rows }, &[ids, values]) = (&n.op, n.args.as_slice()) {
            scattered.entry(unreshaped(g, values)).or_insert((ids, *rows, values));
        }
    }
    let summed_rows = |at: usize, n: &Node| -> Option<(ValueId, usize, ValueId, usize)> {
        let (Op::Reduce { kind: crate::ops::ReduceKind::Sum, axes }, &[x]) = (&n.op, n.args.as_slice()) else { return None };
        let &(ids, rows, values) = scattered.get(&unreshaped(g, x))?;
        let dims = g.shape(x).concrete()?;
        let d = *dims.last()?;
        let all_but_last = axes.iter().copied().eq(0..dims.len() - 1);
        let n_rows = g.shape(ids).numel()?;
        let same_rows = all_but_last && g.shape(values).concrete()?.last() == Some(&d) && dims.iter().product::<usize>() == n_rows * d;
        // The copy goes where the sum is: its ids must be defined by then.
        let ids_before = ids.index() < at;
        (same_rows && ids_before && rows < n_rows && n.ty.dtype == crate::ir::DType::F32).then_some((ids, rows, values, d))
    };
    if !g.nodes.iter().enumerate().any(|(i, n)| summed_rows(i, n).is_some()) {
        return None;
    }
    let mut out = Graph { nodes: Vec::with_capacity(g.nodes.len() + 8), outputs: Vec::new(), output_names: g.output_names.clone() };
    let mut from = Vec::with_capacity(g.nodes.len() + 8);
    let mut remap: Vec<ValueId> = Vec::with_capacity(g.nodes.len());
    for (old, n) in g.nodes.iter().enumerate() {
        let args: Vec<ValueId> = n.args.iter().map(|a| remap[a.index()]).collect();
        let id = match summed_rows(old, n) {
            // The copied scatter reads `values` through its reshapes from the
            // value the sum reads, which is defined before the sum.
            Some((ids, rows, values, d)) => {
                let x = args[0];
                let values_shape = g.shape(values).clone();
                let v = push_reshape(&mut out, x, values_shape, n.span);
                let table = crate::ir::TensorType::f32(crate::ir::Shape::known(&[rows, d]));
                let s = out.push(Op::ScatterAdd { rows }, vec![remap[ids.index()], v], table, n.span);
                let one_row = crate::ir::TensorType::f32(crate::ir::Shape::known(&[1, d]));
                let sum = out.push(Op::Reduce { kind: crate::ops::ReduceKind::Sum, axes: vec![0] }, vec![s], one_row, n.span);
                push_reshape(&mut out, sum, n.ty.shape.clone(), n.span)
            }
            None => out.push(n.op.clone(), args, n.ty.clone(), n.span),
        };
        from.resize(out.nodes.len(), old);
        remap.push(id);
    }
    out.outputs = g.outputs.iter().map(|o| remap[o.index()]).collect();
    Some((out, from))
}

/// A new constant `c` of `node`'s type (a scalar broadcast to its shape).
fn push_filled(g: &mut Graph, c: f64, node: &Node) -> ValueId {
    let scalar = g.push(Op::Constant(c), Vec::new(), crate::ir::TensorType::f32(crate::ir::Shape::scalar()), node.span);
    if node.ty.shape.rank() == 0 {
        return scalar;
    }
    g.push(Op::Broadcast { shape: node.ty.shape.clone() }, vec![scalar], node.ty.clone(), node.span)
}

/// A slice that lies wholly in a padding's fill is that constant (the
/// cotangent a derivative passes to columns nothing read).
fn fold_padding_slice(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let (Op::Slice { axis, start, end }, [x]) = (op, args) else { return None };
    let (Op::Pad { axis: a, before, value, .. }, [inner]) = (&g.node(*x).op, g.node(*x).args.as_slice()) else { return None };
    let width = g.shape(*inner).dims().get(*axis).and_then(crate::ir::Dim::known)?;
    if a != axis || node.ty.dtype != crate::ir::DType::F32 || (*end > *before && *start < before + width) {
        return None;
    }
    let fill = *value;
    Some(push_filled(g, fill, node))
}

/// A scan's per-step sequences that are zero paddings along a step axis
/// (not the batch or time axis) are read unpadded, and padded inside the
/// body, where the zeros fold away: the backward loop of a scan read only
/// through its hidden state gets `[N, T, H]` instead of a padded `[N, T, 2H]`
/// written out, and adds nothing to the cell's half.
fn fold_padded_sequences(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let Op::Scan { body, steps, inputs, reverse, saved } = op else { return None };
    let paddings: Vec<_> = (0..*inputs)
        .map(|k| {
            let x = *args.get(1 + k)?;
            zero_padding(g, x).filter(|&(axis, ..)| axis >= 2 && g.ty(x).dtype == crate::ir::DType::F32)
        })
        .collect();
    if paddings.iter().all(Option::is_none) {
        return None;
    }
    let mut body = (**body).clone();
    let mut new_args = args.to_vec();
    for (k, padding) in paddings.into_iter().enumerate() {
        let Some((axis, before, after, inner)) = padding else { continue };
        let narrow = crate::ops::scan::step_input_type(g.ty(inner));
        body = crate::ops::scan::pad_step_input(&body, k, narrow, (axis - 1, before, after))?;
        new_args[1 + k] = inner;
    }
    let scan = Op::Scan { body: Box::new(optimize(&body)), steps: *steps, inputs: *inputs, reverse: *reverse, saved: *saved };
    Some(g.push(scan, new_args, node.ty.clone(), node.span))
}

/// A slice of a sum with a zero padding, along the padded axis, that takes
/// only the padded value's block or only fill: `slice(pad(x) + y)` is
/// `x + slice(y)` or `slice(y)`.
fn fold_padded_sum_slice(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let (&Op::Slice { axis, start, end }, &[sum]) = (op, args) else { return None };
    let (Op::Binary(BinaryOp::Add), &[x, y]) = (&g.node(sum).op, g.node(sum).args.as_slice()) else { return None };
    let (padded, other) = if zero_padding(g, x).is_some() { (x, y) } else { (y, x) };
    let (pad_axis, before, _, inner) = zero_padding(g, padded)?;
    let width = g.shape(inner).dims().get(axis).and_then(crate::ir::Dim::known)?;
    if pad_axis != axis || g.ty(padded) != g.ty(other) || node.ty.dtype != crate::ir::DType::F32 {
        return None;
    }
    let only_fill = end <= before || start >= before + width;
    let only_inner = start == before && end == before + width && g.ty(inner) == &node.ty;
    if !only_fill && !only_inner {
        return None;
    }
    let part = push_shared(g, Op::Slice { axis, start, end }, vec![other], node.ty.clone(), node.span);
    if only_fill {
        return Some(part);
    }
    Some(push_shared(g, Op::Binary(BinaryOp::Add), vec![inner, part], node.ty.clone(), node.span))
}

/// A zero padding along one axis: `(axis, before, after, padded value)`.
pub(crate) fn zero_padding(g: &Graph, v: ValueId) -> Option<(usize, usize, usize, ValueId)> {
    match (&g.node(v).op, g.node(v).args.as_slice()) {
        (Op::Pad { axis, before, after, value }, [inner]) if *value == 0.0 => Some((*axis, *before, *after, *inner)),
        _ => None,
    }
}

/// The sum of two zero paddings of side-by-side blocks is one padding of
/// their concatenation: how the cotangents of slices (`z[:, :H]`, `z[:, H:]`)
/// meet. Written in place, block by block, rather than as filled tensors
/// added together.
fn fold_padding_sum(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let (Op::Binary(BinaryOp::Add), [x, y]) = (op, args) else { return None };
    if g.ty(*x) != &node.ty || g.ty(*y) != &node.ty {
        return None;
    }
    let (mut first, mut second) = (zero_padding(g, *x)?, zero_padding(g, *y)?);
    if first.0 != second.0 {
        return None;
    }
    if second.1 < first.1 {
        std::mem::swap(&mut first, &mut second);
    }
    let axis = first.0;
    let width = |v: ValueId| g.shape(v).dims().get(axis).and_then(crate::ir::Dim::known);
    let (w1, w2) = (width(first.3)?, width(second.3)?);
    if first.1 + w1 != second.1 {
        return None;
    }
    let parts: Vec<ValueId> = [first.3, second.3]
        .iter()
        .flat_map(|&v| match &g.node(v).op {
            Op::Concat { axis: a } if *a == axis => g.node(v).args.clone(),
            _ => vec![v],
        })
        .collect();
    let mut ty = node.ty.clone();
    ty.shape.0[axis] = crate::ir::Dim::Known(w1 + w2);
    let joined = g.push(Op::Concat { axis }, parts, ty, node.span);
    if first.1 == 0 && second.2 == 0 {
        return Some(joined);
    }
    Some(g.push(Op::Pad { axis, before: first.1, after: second.2, value: 0.0 }, vec![joined], node.ty.clone(), node.span))
}

/// Regrouping the leading axes of a slice of the last axis is the same slice
/// of the regrouped whole: `x[.., a:b]` as `[N·T, b − a]` is `reshape(x,
/// [N·T, W])[:, a:b]`. The reshape of the whole is a view of its buffer and
/// the slice a strided view, where reshaping the slice would copy it (a
/// scan's handed-on columns, read by the weight-gradient products).
fn fold_reshaped_slice(g: &mut Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let (Op::Reshape { shape }, [x]) = (op, args) else { return None };
    let (&Op::Slice { axis, start, end }, &[whole]) = (&g.node(*x).op, g.node(*x).args.as_slice()) else { return None };
    let (from, to) = (g.shape(*x), shape.clone());
    let last = from.rank().checked_sub(1)?;
    let new_last = to.rank().checked_sub(1)?;
    if axis != last || to.rank() < 2 || from.dims().get(last) != to.dims().get(new_last) {
        return None;
    }
    let mut whole_shape = to.clone();
    whole_shape.0[new_last] = g.shape(whole).dims().get(last)?.clone();
    let ty = crate::ir::TensorType { shape: whole_shape.clone(), dtype: node.ty.dtype };
    // Regrouping back to the shape `whole` was reshaped from is that value.
    let base = unreshaped(g, whole);
    let regrouped = if *g.ty(base) == ty { base } else { push_shared(g, Op::Reshape { shape: whole_shape }, vec![whole], ty, node.span) };
    Some(push_shared(g, Op::Slice { axis: new_last, start, end }, vec![regrouped], node.ty.clone(), node.span))
}

/// If `op(args)` equals one of its operands, that operand.
fn trivial(g: &Graph, op: &Op, args: &[ValueId], node: &Node) -> Option<ValueId> {
    let same_type = |v: ValueId| g.ty(v) == &node.ty;
    match (op, args) {
        (Op::Binary(BinaryOp::Mul), [x, y]) if constant_value(g, *y) == Some(1.0) && same_type(*x) => Some(*x),
        (Op::Binary(BinaryOp::Mul), [x, y]) if constant_value(g, *x) == Some(1.0) && same_type(*y) => Some(*y),
        (Op::Binary(BinaryOp::Div), [x, y]) if constant_value(g, *y) == Some(1.0) && same_type(*x) => Some(*x),
        (Op::Binary(BinaryOp::Add), [x, y]) if constant_value(g, *y) == Some(0.0) && same_type(*x) => Some(*x),
        (Op::Binary(BinaryOp::Add), [x, y]) if constant_value(g, *x) == Some(0.0) && same_type(*y) => Some(*y),
        (Op::Binary(BinaryOp::Sub), [x, y]) if constant_value(g, *y) == Some(0.0) && same_type(*x) => Some(*x),
        (Op::Unary(UnaryOp::Neg), [x]) => match (&g.node(*x).op, g.node(*x).args.as_slice()) {
            (Op::Unary(UnaryOp::Neg), [inner]) => Some(*inner),
            _ => None,
        },
        (Op::Reshape { .. } | Op::Broadcast { .. }, [x]) if same_type(*x) => Some(*x),
        // Reshapes undoing reshapes.
        (Op::Reshape { .. }, [x]) if same_type(unreshaped(g, *x)) => Some(unreshaped(g, *x)),
        (Op::Slice { .. }, [x]) if same_type(*x) => Some(*x),
        // Slicing exactly the padded value back out of a padding, or one
        // operand back out of a concatenation.
        (Op::Slice { axis, start, .. }, [x]) => match (&g.node(*x).op, g.node(*x).args.as_slice()) {
            (Op::Pad { axis: a, before, .. }, [inner]) if a == axis && before == start && same_type(*inner) => Some(*inner),
            (Op::Concat { axis: a }, parts) if a == axis => {
                let mut at = 0;
                for &p in parts {
                    if at == *start && same_type(p) {
                        return Some(p);
                    }
                    at += g.shape(p).dims().get(*axis).and_then(crate::ir::Dim::known)?;
                }
                None
            }
            _ => None,
        },
        _ => None,
    }
}

/// Drop nodes no output depends on (inputs stay).
pub fn eliminate_dead_code(graph: &Graph) -> Graph {
    eliminate_dead_code_tracked(graph).0
}

/// Also returns the old index of each kept node.
fn eliminate_dead_code_tracked(graph: &Graph) -> (Graph, Vec<usize>) {
    let mut live = vec![false; graph.nodes.len()];
    for o in &graph.outputs {
        live[o.index()] = true;
    }
    for i in (0..graph.nodes.len()).rev() {
        if matches!(graph.nodes[i].op, Op::Input { .. }) {
            live[i] = true;
        }
        if live[i] {
            for a in &graph.nodes[i].args {
                live[a.index()] = true;
            }
        }
    }
    let mut out = Graph { nodes: Vec::new(), outputs: Vec::new(), output_names: graph.output_names.clone() };
    let mut remap: Vec<Option<ValueId>> = vec![None; graph.nodes.len()];
    let mut kept = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let args = node.args.iter().filter_map(|a| remap[a.index()]).collect();
        remap[i] = Some(out.push(node.op.clone(), args, node.ty.clone(), node.span));
        kept.push(i);
    }
    out.outputs = graph.outputs.iter().filter_map(|o| remap[o.index()]).collect();
    (out, kept)
}
