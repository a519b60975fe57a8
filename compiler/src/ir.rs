//! The IR: a typed SSA graph of tensor operations.
//!
//! A `Graph` is a list of nodes in topological order; a node's arguments always
//! come earlier in the list. Every node has a static type (shape + dtype). Dims
//! may be symbolic (`B`) so one graph serves every batch size; `specialize`
//! substitutes sizes before the graph is interpreted or compiled.
//!
//! The primitive set is small on purpose (see `ops`): composites such as
//! `sigmoid`, `softmax` and the losses are built from these while the IR is
//! elaborated, so derivative rules exist only for primitives.

use crate::ast::Span;
use crate::size::{self, TooLarge, TooLargeAt};
use std::collections::HashMap;
use std::fmt;

/// Index of a node in its graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One dimension: a known size or a symbol bound later (the batch size `B`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(usize),
    Sym(String),
}

impl Dim {
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// The product of `dims` as one dim. Symbols multiply into a product
    /// symbol such as `B*T*64` (symbols sorted, the constant last), which
    /// `factors` splits again and `Shape::substitute` evaluates. The constant
    /// saturates at `usize::MAX` rather than wrapping, so a product too large
    /// for a tensor stays too large and `Shape::check_size` refuses it.
    pub fn product(dims: &[Dim]) -> Dim {
        let mut c = 1usize;
        let mut syms = Vec::new();
        for d in dims {
            let (k, s) = d.factors();
            c = c.saturating_mul(k);
            syms.extend(s);
        }
        if syms.is_empty() {
            return Dim::Known(c);
        }
        syms.sort();
        let mut name = syms.join("*");
        if c != 1 {
            name.push_str(&format!("*{c}"));
        }
        Dim::Sym(name)
    }

    /// A dim as a constant times symbols (`B*64` is 64 and `[B]`). The
    /// constant of a product symbol was checked when `product` made it.
    pub fn factors(&self) -> (usize, Vec<String>) {
        match self {
            Dim::Known(n) => (*n, Vec::new()),
            Dim::Sym(s) => {
                let mut c = 1usize;
                let mut syms = Vec::new();
                for f in s.split('*') {
                    match f.parse::<usize>() {
                        Ok(n) => c = c.saturating_mul(n),
                        Err(_) => syms.push(f.to_string()),
                    }
                }
                (c, syms)
            }
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }
    pub fn known(dims: &[usize]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::Known(d)).collect())
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }
    /// All sizes, if every dim is known.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::known).collect()
    }
    /// Number of elements, if every dim is known (and the count is at most
    /// `size::MAX_ELEMENTS`, as in every checked graph).
    pub fn numel(&self) -> Option<usize> {
        self.concrete().and_then(|d| size::numel(&d))
    }

    /// Whether a tensor can have this shape: its known dims (symbols counting
    /// as 1) have at most `size::MAX_ELEMENTS` elements. Every node the
    /// elaborator makes is checked so; `substitute` checks again once the
    /// symbols have sizes.
    pub fn check_size(&self) -> Result<(), TooLarge> {
        let constants: Vec<usize> = self.0.iter().map(|d| d.factors().0).collect();
        match size::numel(&constants) {
            Some(_) => Ok(()),
            None => Err(TooLarge::known_dims(self)),
        }
    }

    /// Replace symbols by their sizes where `env` knows them; an error if the
    /// shape then has more elements than a tensor may (`[B, 10^9]` with `B = 64`).
    pub fn substitute(&self, env: &SizeEnv) -> Result<Shape, TooLarge> {
        let too_large = || {
            let sizes = env.iter().filter(|(s, _)| self.mentions(s)).map(|(s, n)| (s.clone(), *n)).collect();
            let per_dim = |d: &Dim| {
                let (c, syms) = d.factors();
                syms.iter().map(|f| env.get(f).copied().unwrap_or(1) as f64).product::<f64>() * c as f64
            };
            TooLarge { shape: self.clone(), sizes, elements: self.0.iter().map(per_dim).product() }
        };
        let mut dims = Vec::with_capacity(self.0.len());
        for d in &self.0 {
            dims.push(substitute_dim(d, env).ok_or_else(too_large)?);
        }
        let shape = Shape(dims);
        shape.check_size().map_err(|_| too_large())?;
        Ok(shape)
    }

    /// Whether the symbol `sym` appears in a dim (alone or in a product).
    fn mentions(&self, sym: &str) -> bool {
        self.0.iter().any(|d| d.factors().1.iter().any(|f| f == sym))
    }
}

/// A dim with its symbols replaced by their sizes where `env` knows them all;
/// `None` if the product passes `size::MAX_ELEMENTS`.
fn substitute_dim(d: &Dim, env: &SizeEnv) -> Option<Dim> {
    let Dim::Sym(s) = d else { return Some(d.clone()) };
    if let Some(&n) = env.get(s) {
        return Some(Dim::Known(n));
    }
    // A product symbol (`B*64`) is known once all its symbols are.
    let (c, syms) = d.factors();
    let sizes: Option<Vec<usize>> = syms.iter().map(|f| env.get(f).copied()).collect();
    match sizes {
        Some(v) if syms.len() > 1 || c != 1 => v.into_iter().try_fold(c, size::mul).map(Dim::Known),
        _ => Some(d.clone()),
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// Sizes of symbolic dims, e.g. `B = 64`.
pub type SizeEnv = HashMap<String, usize>;

/// Element type. Integers (class labels, token ids) are stored as floats at run
/// time (exact below 2^24); the type exists so the checker can catch misuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::F32 => write!(f, "float"),
            DType::I32 => write!(f, "int"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub shape: Shape,
    pub dtype: DType,
}

impl TensorType {
    pub fn f32(shape: Shape) -> TensorType {
        TensorType { shape, dtype: DType::F32 }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype {
            DType::F32 => write!(f, "{}", self.shape),
            DType::I32 => write!(f, "{} int", self.shape),
        }
    }
}

/// What a graph input holds; the runtime uses this to feed it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// A trainable parameter, by its path (`l1.W`).
    Param,
    /// A batch of data: the features `x` or the labels `y`, or a function argument.
    Data,
    /// Optimizer state (a moment estimate) for the named parameter.
    State,
    /// A module `buffer` (batch norm's running statistics), by its path.
    Buffer,
    /// A scalar hyperparameter fed each step (learning rate, bias corrections).
    Hyper,
}

pub use crate::ops::Op;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Vec<ValueId>,
    pub ty: TensorType,
    /// Where in the source this node came from (for runtime errors and `nnc ir`).
    pub span: Span,
}

/// A tensor program: nodes in topological order and the values it returns.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub outputs: Vec<ValueId>,
    /// Names for outputs (`loss`, `l1.W'`), parallel to `outputs`.
    pub output_names: Vec<String>,
}

impl Graph {
    pub fn node(&self, id: ValueId) -> &Node {
        // Ids are only ever created by `push`, so they are in range.
        #[allow(clippy::indexing_slicing)]
        &self.nodes[id.index()]
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        &self.node(id).ty
    }

    pub fn shape(&self, id: ValueId) -> &Shape {
        &self.node(id).ty.shape
    }

    /// Append a node whose type the caller has already worked out.
    pub fn push(&mut self, op: Op, args: Vec<ValueId>, ty: TensorType, span: Span) -> ValueId {
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(Node { op, args, ty, span });
        id
    }

    /// The graph's inputs, in order: `(id, name, kind)`.
    pub fn inputs(&self) -> Vec<(ValueId, &str, &InputKind)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Input { name, kind } => Some((ValueId(i as u32), name.as_str(), kind)),
                _ => None,
            })
            .collect()
    }

    /// Find an input by name.
    pub fn input(&self, name: &str) -> Option<ValueId> {
        self.inputs().into_iter().find(|(_, n, _)| *n == name).map(|(id, _, _)| id)
    }

    /// The same graph with symbolic dims replaced by sizes from `env`; an
    /// error at the first node whose tensor would then be too large (the
    /// batch size times a large constant), before any buffer is planned.
    pub fn specialize(&self, env: &SizeEnv) -> Result<Graph, TooLargeAt> {
        let mut g = self.clone();
        for node in &mut g.nodes {
            let at = |error| TooLargeAt { span: node.span, error };
            node.ty.shape = node.ty.shape.substitute(env).map_err(at)?;
            node.op = node.op.substitute(env).map_err(at)?;
        }
        Ok(g)
    }
}

impl Graph {
    /// The readable listing `nnc ir` prints, one node per line, starting at
    /// node `from` (pass 0 for the whole graph).
    pub fn pretty(&self, from: usize) -> String {
        let mut s = String::new();
        for (i, node) in self.nodes.iter().enumerate().skip(from) {
            let args: Vec<String> = node.args.iter().map(|a| a.to_string()).collect();
            let args = if args.is_empty() { String::new() } else { format!(" {}", args.join(", ")) };
            s.push_str(&format!("%{i} = {}{args} : {}\n", node.op, node.ty));
            // A scan's step, indented under it.
            if let Op::Scan { body, .. } = &node.op {
                for line in body.pretty(0).lines() {
                    s.push_str(&format!("    | {line}\n"));
                }
            }
        }
        let outs: Vec<String> = self
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| match self.output_names.get(i) {
                Some(n) => format!("{n} = {o}"),
                None => o.to_string(),
            })
            .collect();
        s.push_str(&format!("return {}\n", outs.join(", ")));
        s
    }
}
