//! The reference interpreter: evaluates a specialized graph in float64 with
//! ndarray, one node at a time. Slow and obviously correct; it is the oracle
//! the JIT is tested against and what `nnc check` differentiates numerically.

use crate::ir::{Graph, Node, ValueId};
use crate::ops::{eval, EvalError, Op};
use crate::size::{OutOfMemory, TooLargeAt};
use ndarray::ArrayD;
use std::collections::HashMap;

/// Values for a graph's inputs, by input name.
pub type Inputs = HashMap<String, ArrayD<f64>>;

/// Evaluate every node; returns the values of `graph.outputs`.
pub fn run(graph: &Graph, inputs: &Inputs) -> Result<Vec<ArrayD<f64>>, EvalError> {
    let values = run_all(graph, inputs)?;
    Ok(graph.outputs.iter().map(|o| values[o.index()].clone()).collect())
}

/// Evaluate every node and return all values (for tests and debugging).
pub fn run_all(graph: &Graph, inputs: &Inputs) -> Result<Vec<ArrayD<f64>>, EvalError> {
    let mut values: Vec<ArrayD<f64>> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        check_room(node)?;
        let v = match &node.op {
            Op::Input { name, .. } => {
                let v = inputs.get(name).ok_or_else(|| EvalError::MissingInput(name.clone()))?;
                let expected = node.ty.shape.concrete().ok_or_else(|| EvalError::Symbolic(node.ty.shape.clone()))?;
                if v.shape() != expected.as_slice() {
                    return Err(EvalError::InputShape { name: name.clone(), expected, found: v.shape().to_vec() });
                }
                v.clone()
            }
            op => {
                let args: Vec<&ArrayD<f64>> = node.args.iter().map(|a: &ValueId| &values[a.index()]).collect();
                eval(op, &args, &node.ty).map_err(|e| at_node(e, ValueId(i as u32)))?
            }
        };
        values.push(v);
    }
    Ok(values)
}

/// Whether `node`'s value can be held: its shape within `size::MAX_ELEMENTS`
/// and its float64 values allocatable. The evaluation rules allocate with
/// ndarray, which aborts when the machine refuses; asking for the same room
/// first, fallibly, turns that into an error at the node's span.
fn check_room(node: &Node) -> Result<(), EvalError> {
    node.ty.shape.check_size().map_err(|error| EvalError::TooLarge(TooLargeAt { span: node.span, error }))?;
    let Some(n) = node.ty.shape.numel() else { return Ok(()) };
    let mut probe: Vec<f64> = Vec::new();
    OutOfMemory::reserve(&mut probe, n, || format!("a {} tensor", node.ty.shape))
        .map_err(|error| EvalError::OutOfMemory { span: node.span, error })
}

/// `e` placed at the node `site`: an index fault names the node whose
/// operands hold the bad id (a scan's, for one inside its body).
fn at_node(e: EvalError, site: ValueId) -> EvalError {
    match e {
        EvalError::IndexOutOfRange { index, bound, .. } => EvalError::IndexOutOfRange { site: Some(site), index, bound },
        other => other,
    }
}
