//! Reverse-mode differentiation as an IR → IR transform.
//!
//! `vjp` walks the graph backwards from an output, asks each primitive's
//! `vjp_rule` (in `ops`) for its operands' cotangents, and sums cotangents that
//! meet at a value. The result is more nodes in the same graph: nothing is
//! recorded at run time, the backward pass prints like any IR (`nnc ir --grad`),
//! and since rules are written in differentiable ops it can be differentiated
//! again (grad of grad).

use crate::ast::Span;
use crate::builder::Builder;
use crate::ir::{DType, Graph, ValueId};
use crate::ops::{vjp_rule, ShapeError};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub enum AutodiffError {
    /// A derivative rule built an ill-typed node: a bug in that op's rule.
    Internal { op: &'static str, error: ShapeError },
    /// The seed's shape differs from the output's.
    SeedShape,
}

/// Gradient of a scalar `output` with respect to each of `wrt` (zeros where
/// `output` does not depend on it). The backward nodes are appended to `graph`.
pub fn grad(graph: &mut Graph, output: ValueId, wrt: &[ValueId], span: Span) -> Result<Vec<ValueId>, AutodiffError> {
    let shape = graph.shape(output).clone();
    let seed = Builder::new(graph, span).full(1.0, &shape);
    vjp(graph, output, seed, wrt, span)
}

/// Cotangents of `wrt` given the cotangent `seed` of `output`.
pub fn vjp(graph: &mut Graph, output: ValueId, seed: ValueId, wrt: &[ValueId], span: Span) -> Result<Vec<ValueId>, AutodiffError> {
    if graph.shape(seed) != graph.shape(output) {
        return Err(AutodiffError::SeedShape);
    }
    let active = active_nodes(graph, output, wrt);
    let mut cotangent: HashMap<ValueId, ValueId> = HashMap::new();
    cotangent.insert(output, seed);

    let mut b = Builder::new(graph, span);
    for i in (0..=output.index()).rev() {
        let id = ValueId(i as u32);
        if !active.get(i).copied().unwrap_or(false) {
            continue;
        }
        let Some(&g) = cotangent.get(&id) else { continue };
        let node = b.graph.node(id).clone();
        let grads = vjp_rule(&mut b, &node.op, &node.args, id, g);
        if let Some(error) = b.internal_error.take() {
            return Err(AutodiffError::Internal { op: node.op.name(), error });
        }
        for (&arg, dg) in node.args.iter().zip(grads) {
            let Some(dg) = dg else { continue };
            if !active.get(arg.index()).copied().unwrap_or(false) {
                continue;
            }
            let sum = match cotangent.get(&arg) {
                Some(&prev) => b.add(prev, dg),
                None => dg,
            };
            cotangent.insert(arg, sum);
        }
    }
    let result = wrt
        .iter()
        .map(|w| match cotangent.get(w) {
            Some(&g) => g,
            None => {
                let shape = b.shape(*w);
                b.full(0.0, &shape)
            }
        })
        .collect();
    match b.internal_error {
        Some(error) => Err(AutodiffError::Internal { op: "zeros", error }),
        None => Ok(result),
    }
}

/// Nodes that lie on a path from some `wrt` to `output` and carry float values:
/// only these need cotangents.
fn active_nodes(graph: &Graph, output: ValueId, wrt: &[ValueId]) -> Vec<bool> {
    let n = output.index() + 1;
    let mut depends = vec![false; n];
    for w in wrt {
        if let Some(d) = depends.get_mut(w.index()) {
            *d = true;
        }
    }
    for (i, node) in graph.nodes.iter().enumerate().take(n) {
        if node.args.iter().any(|a| depends.get(a.index()).copied().unwrap_or(false)) {
            depends[i] = true;
        }
    }
    let mut needed = vec![false; n];
    if let Some(last) = needed.last_mut() {
        *last = true;
    }
    for i in (0..n).rev() {
        if !needed[i] || !depends[i] {
            continue;
        }
        for a in &graph.nodes[i].args {
            if let Some(slot) = needed.get_mut(a.index()) {
                *slot = true;
            }
        }
    }
    (0..n).map(|i| needed[i] && depends[i] && graph.nodes[i].ty.dtype == DType::F32).collect()
}
