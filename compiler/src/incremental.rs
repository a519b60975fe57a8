//! Incremental decoding: a graph that computes one position of a causal
//! sequence model from caches of the earlier positions (a KV cache, and for
//! recurrences the last state), derived from the model's forward graph.
//!
//! The forward graph maps ids `[B, T]` to `[B, T, V]`. The step graph takes
//! the id at one position `p` (`x: [B, 1]`), `p` itself (`position`, a scalar)
//! and the caches, and returns that position's row `[B, 1, V]` and the updated
//! caches. Every value computed from the ids keeps only its row `p` along its
//! time axis ("sliced"); values that do not depend on the ids (parameters, a
//! causal mask, learned positions) are computed whole and have row `p` picked
//! where they meet a sliced value. Where an op needs the earlier rows of a
//! sliced value — the keys and values of attention: a product that contracts
//! over time or keeps the other time axis — those rows come from a cache input
//! of the whole tensor's shape, with row `p` written into it (the updated
//! cache is an output). A `scan` over time runs its step once, from the state
//! cached after position `p − 1` (its initial state at `p = 0`).
//!
//! Rows after `p` in a key/value cache are never seen: causal masking gives
//! them weight exactly 0. An op that would make row `p` depend on later rows
//! (a reduction over time, a reversed scan, slicing the time axis) makes the
//! model unsuitable, and `step_graph` says which op.

use crate::ast::Span;
use crate::builder::Builder;
use crate::ir::{DType, Dim, Graph, InputKind, Shape, TensorType, ValueId};
use crate::ops::{scan, BinaryOp, Op};

/// The name of the step graph's position input.
pub const POSITION: &str = "position";

/// What a cache holds between positions.
#[derive(Clone, Debug, PartialEq)]
pub enum CacheKind {
    /// Every position's row of a tensor (keys, values): row `p` is written at position `p`.
    Rows,
    /// A recurrence's state after the last position (must be restored to go back).
    State,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cache {
    /// The step graph's input holding it.
    pub input: String,
    /// The step graph's output with its new value.
    pub output: usize,
    pub kind: CacheKind,
}

/// The step graph and its caches. Output 0 is the position's row of the
/// forward graph's output 0.
pub struct StepGraph {
    pub graph: Graph,
    pub caches: Vec<Cache>,
}

/// How a value of the step graph relates to the forward graph's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// The same whole value.
    Whole,
    /// Only row `p` along this axis (kept with size 1).
    Sliced(usize),
}

struct Deriver<'f, 'g> {
    forward: &'f Graph,
    b: Builder<'g>,
    time: usize,
    position: ValueId,
    /// Per forward node: the step graph's value and its form.
    map: Vec<(ValueId, Form)>,
    /// Caches made so far, with the step graph values of their new contents.
    caches: Vec<(Cache, ValueId)>,
}

/// Derive the step graph of `forward` (specialized: every dim known) whose
/// int input `ids` is `[B, time]`.
pub fn step_graph(forward: &Graph, ids: &str, time: usize) -> Result<StepGraph, String> {
    let mut graph = Graph::default();
    let span = forward.nodes.first().map_or(Span::default(), |n| n.span);
    let position = Builder::new(&mut graph, span).input(POSITION, InputKind::Data, TensorType::f32(Shape::scalar()));
    let mut d = Deriver { forward, b: Builder::new(&mut graph, span), time, position, map: Vec::new(), caches: Vec::new() };
    for (i, node) in forward.nodes.iter().enumerate() {
        d.b.span = node.span;
        let v = d.node(ValueId(i as u32), ids).map_err(|e| format!("{e} (`{}`)", node.op.name()))?;
        d.map.push(v);
    }
    let out = forward.outputs.first().ok_or("the forward function has no output")?;
    let (row, form) = d.map[out.index()];
    if form != Form::Sliced(1) {
        return Err("the output does not have the positions along its second axis".into());
    }
    if let Some(e) = d.b.internal_error.take() {
        return Err(format!("{e:?}"));
    }
    let caches = std::mem::take(&mut d.caches);
    drop(d);
    graph.outputs = vec![row];
    graph.output_names = vec!["row".into()];
    let mut out_caches = Vec::with_capacity(caches.len());
    for (i, (mut c, v)) in caches.into_iter().enumerate() {
        c.output = i + 1;
        graph.outputs.push(v);
        graph.output_names.push(c.input.clone());
        out_caches.push(c);
    }
    Ok(StepGraph { graph, caches: out_caches })
}

impl Deriver<'_, '_> {
    fn fwd_shape(&self, id: ValueId) -> Vec<usize> {
        self.forward.shape(id).concrete().unwrap_or_default()
    }

    /// The value of `arg` in the step graph, with row `p` picked along `axis`
    /// if it is whole.
    fn sliced(&mut self, arg: ValueId, axis: usize) -> Result<ValueId, String> {
        match self.map[arg.index()] {
            (v, Form::Sliced(a)) if a == axis => Ok(v),
            (_, Form::Sliced(_)) => Err("values whose positions lie along different axes meet".into()),
            (v, Form::Whole) => {
                if self.fwd_shape(arg).get(axis) != Some(&self.time) {
                    return Err("a value without the positions meets one with them".into());
                }
                // A broadcast that makes the positions' axis (a constant filling
                // the shape) is made one row tall instead.
                let node = self.forward.node(arg);
                if let (Op::Broadcast { shape }, Some(&src)) = (&node.op, node.args.first()) {
                    let lead = shape.rank() - self.forward.shape(src).rank();
                    let src_dim = axis.checked_sub(lead).and_then(|a| self.forward.shape(src).dims().get(a).cloned());
                    if src_dim.is_none() || src_dim == Some(Dim::Known(1)) {
                        let mut s = shape.clone();
                        s.0[axis] = Dim::Known(1);
                        let operand = self.map[src.index()].0;
                        return self.push(Op::Broadcast { shape: s }, &[operand]);
                    }
                }
                Ok(self.pick_row(v, axis))
            }
        }
    }

    /// `x`'s row `p` along `axis` (kept with size 1).
    fn pick_row(&mut self, x: ValueId, axis: usize) -> ValueId {
        let shape = self.b.shape(x);
        let at_p = self.one_hot(&shape, axis);
        let x = if self.b.ty(x).dtype == DType::I32 { self.as_float(x) } else { x };
        let picked = self.b.mul(x, at_p);
        self.b.reduce_sum(picked, &[axis])
    }

    /// 1.0 where the index along `axis` is the position, else 0.0, over `shape`.
    fn one_hot(&mut self, shape: &Shape, axis: usize) -> ValueId {
        let idx = self.b.iota(shape, axis);
        let p = self.b.broadcast(self.position, shape);
        self.b.binary(BinaryOp::Eq, idx, p)
    }

    fn as_float(&mut self, x: ValueId) -> ValueId {
        let y = self.b.stop_gradient(x);
        self.b.graph.nodes[y.index()].ty.dtype = DType::F32;
        y
    }

    /// The whole `[.., T, ..]` history of a sliced value (`row`, sliced along
    /// `axis`) from a cache with row `p` written in; the cache's new contents.
    fn history(&mut self, arg: ValueId, row: ValueId, axis: usize) -> ValueId {
        let shape = self.forward.shape(arg).clone();
        let (cache, input) = self.cache_input(&shape);
        let at_p = self.one_hot(&shape, axis);
        let row = self.b.broadcast(row, &shape);
        let value = self.blend(at_p, row, cache);
        self.caches.push((Cache { input, output: 0, kind: CacheKind::Rows }, value));
        value
    }

    /// A new cache input of `shape`, and its name.
    fn cache_input(&mut self, shape: &Shape) -> (ValueId, String) {
        let name = format!("cache{}", self.caches.len());
        (self.b.input(&name, InputKind::Data, TensorType::f32(shape.clone())), name)
    }

    /// `a` where `pick` is 1, `b` where it is 0.
    fn blend(&mut self, pick: ValueId, a: ValueId, b: ValueId) -> ValueId {
        let shape = self.b.shape(pick);
        let ones = self.b.full(1.0, &shape);
        let other = self.b.sub(ones, pick);
        let a = self.b.mul(a, pick);
        let b = self.b.mul(b, other);
        self.b.add(a, b)
    }

    fn push(&mut self, op: Op, args: &[ValueId]) -> Result<ValueId, String> {
        self.b.try_op(op, args).map_err(|e| format!("{e:?}"))
    }

    fn node(&mut self, id: ValueId, ids: &str) -> Result<(ValueId, Form), String> {
        let node = self.forward.node(id).clone();
        if let Op::Input { name, .. } = &node.op {
            if name == ids {
                let mut ty = node.ty.clone();
                ty.shape.0[1] = Dim::Known(1);
                return Ok((self.b.input(name, InputKind::Data, ty), Form::Sliced(1)));
            }
        }
        let forms: Vec<Form> = node.args.iter().map(|a| self.map[a.index()].1).collect();
        let whole_args: Vec<ValueId> = node.args.iter().map(|a| self.map[a.index()].0).collect();
        if forms.iter().all(|f| *f == Form::Whole) {
            let v = match &node.op {
                Op::Input { .. } => self.b.graph.push(node.op.clone(), Vec::new(), node.ty.clone(), node.span),
                _ => self.b.graph.push(node.op.clone(), whole_args, node.ty.clone(), node.span),
            };
            return Ok((v, Form::Whole));
        }
        let axis = forms.iter().find_map(|f| match f {
            Form::Sliced(a) => Some(*a),
            Form::Whole => None,
        });
        let axis = axis.unwrap_or(0);
        let arg = |k: usize| node.args[k];
        match &node.op {
            Op::Unary(_) | Op::StopGradient => Ok((self.push(node.op.clone(), &whole_args)?, Form::Sliced(axis))),
            Op::Binary(_) => {
                let (x, y) = (self.sliced(arg(0), axis)?, self.sliced(arg(1), axis)?);
                Ok((self.push(node.op.clone(), &[x, y])?, Form::Sliced(axis)))
            }
            Op::CheckIndex { .. } => {
                let xs = (0..node.args.len()).map(|k| self.sliced(arg(k), axis)).collect::<Result<Vec<_>, _>>()?;
                Ok((self.push(node.op.clone(), &xs)?, Form::Sliced(axis)))
            }
            Op::Broadcast { shape } => {
                let lead = shape.rank() - self.forward.shape(arg(0)).rank();
                let mut s = shape.clone();
                s.0[axis + lead] = Dim::Known(1);
                Ok((self.push(Op::Broadcast { shape: s }, &whole_args)?, Form::Sliced(axis + lead)))
            }
            Op::Reshape { shape } => {
                let from = self.fwd_shape(arg(0));
                let to = shape.concrete().unwrap_or_default();
                let before: usize = from[..axis].iter().product();
                let at = (0..to.len()).find(|&b| to[..b].iter().product::<usize>() == before && to[b] == self.time);
                let Some(b) = at.filter(|&b| to[..=b].iter().product::<usize>() == before * self.time) else {
                    return Err("a reshape merges the positions with another axis".into());
                };
                let mut s = shape.clone();
                s.0[b] = Dim::Known(1);
                Ok((self.push(Op::Reshape { shape: s }, &whole_args)?, Form::Sliced(b)))
            }
            Op::Transpose { perm } => {
                let to = perm.iter().position(|&p| p == axis).ok_or("transpose")?;
                Ok((self.push(node.op.clone(), &whole_args)?, Form::Sliced(to)))
            }
            Op::Slice { axis: a, .. } | Op::Pad { axis: a, .. } if *a == axis => Err("it cuts or pads the positions".into()),
            Op::Slice { .. } | Op::Pad { .. } => Ok((self.push(node.op.clone(), &whole_args)?, Form::Sliced(axis))),
            Op::Concat { axis: a } => {
                if *a == axis {
                    return Err("it joins along the positions".into());
                }
                let xs = (0..node.args.len()).map(|k| self.sliced(arg(k), axis)).collect::<Result<Vec<_>, _>>()?;
                Ok((self.push(node.op.clone(), &xs)?, Form::Sliced(axis)))
            }
            Op::Reduce { axes, .. } => {
                if axes.contains(&axis) {
                    return Err("it reduces over the positions".into());
                }
                Ok((self.push(node.op.clone(), &whole_args)?, Form::Sliced(axis)))
            }
            Op::MatMul => self.matmul(node.args[0], node.args[1], &forms),
            Op::Gather => match forms.as_slice() {
                [Form::Whole, Form::Sliced(a)] => Ok((self.push(Op::Gather, &whole_args)?, Form::Sliced(*a))),
                _ => Err("a table indexed by position".into()),
            },
            Op::Scan { body, inputs, reverse: false, saved, .. } => self.scan_step(&node.args, body, *inputs, *saved, &forms),
            _ => Err("this op cannot be computed one position at a time".into()),
        }
    }

    /// `lhs @ rhs` with one or both sliced.
    fn matmul(&mut self, lhs: ValueId, rhs: ValueId, forms: &[Form]) -> Result<(ValueId, Form), String> {
        let r = self.forward.shape(lhs).rank();
        let (rows, cols) = (r - 2, r - 1);
        let (l, rv) = (self.map[lhs.index()].0, self.map[rhs.index()].0);
        match (forms[0], forms[1]) {
            // Positions along the rows (x @ W), or along a batch axis both share.
            (Form::Sliced(a), _) if a == rows => {
                let rhs = match forms[1] {
                    Form::Whole => rv,
                    // The other operand's positions are the keys: all earlier rows are needed.
                    Form::Sliced(c) if c == rows || c == cols => self.history(rhs, rv, c),
                    Form::Sliced(_) => return Err("a product over positions along different axes".into()),
                };
                Ok((self.push(Op::MatMul, &[l, rhs])?, Form::Sliced(rows)))
            }
            (Form::Sliced(a), _) if a < rows => {
                let rhs = self.sliced(rhs, a)?;
                Ok((self.push(Op::MatMul, &[l, rhs])?, Form::Sliced(a)))
            }
            (Form::Whole, Form::Sliced(c)) if c == cols => Ok((self.push(Op::MatMul, &[l, rv])?, Form::Sliced(cols))),
            (Form::Whole, Form::Sliced(c)) if c < rows => {
                let lhs = self.sliced(lhs, c)?;
                Ok((self.push(Op::MatMul, &[lhs, rv])?, Form::Sliced(c)))
            }
            _ => Err("a product sums over the positions".into()),
        }
    }

    /// One step of a forward scan whose sequences are sliced along time: the
    /// state comes from a cache (the initial state at position 0).
    fn scan_step(
        &mut self,
        args: &[ValueId],
        body: &Graph,
        inputs: usize,
        saved: usize,
        forms: &[Form],
    ) -> Result<(ValueId, Form), String> {
        if forms[0] != Form::Whole
            || forms[1..=inputs].iter().any(|f| *f != Form::Sliced(1))
            || forms[1 + inputs..].iter().any(|f| *f != Form::Whole)
        {
            return Err("a scan whose state or weights depend on the positions".into());
        }
        let init = self.map[args[0].index()].0;
        let state_shape = self.b.shape(init);
        let (cache, input) = self.cache_input(&state_shape);
        let zero = self.b.scalar(0.0);
        let first = self.b.binary(BinaryOp::Eq, self.position, zero);
        let first = self.b.broadcast(first, &state_shape);
        let prev = self.blend(first, init, cache);
        let mut step_args = vec![prev];
        for &x in &args[1..=inputs] {
            let v = self.map[x.index()].0;
            let mut dims = self.b.shape(v).0;
            dims.remove(1);
            step_args.push(self.b.reshape(v, &Shape(dims)));
        }
        step_args.extend(args[1 + inputs..].iter().map(|a| self.map[a.index()].0));
        let rows = state_shape.dims()[0].clone();
        let next = scan::inline(&mut self.b, body, &step_args, &rows)[0];
        // The state carried on: the step's output without its saved products.
        let carried = scan::states(&mut self.b, next, saved);
        self.caches.push((Cache { input, output: 0, kind: CacheKind::State }, carried));
        let mut dims = self.b.shape(next).0.clone();
        dims.insert(1, Dim::Known(1));
        Ok((self.b.reshape(next, &Shape(dims)), Form::Sliced(1)))
    }
}
