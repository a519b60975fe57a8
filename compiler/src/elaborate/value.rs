//! The values the elaborator computes with while it inlines a program into IR.

use crate::ast::{Ident, Span};
use crate::elaborate::error::ElabError;
use crate::ir::{Shape, ValueId};
use std::rc::Rc;

/// A tensor in the graph being built, with the names of its axes where known
/// (from annotations such as `x: [B, 64]`), so reductions can say `sum(x, B)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub id: ValueId,
    pub names: Vec<Option<String>>,
}

#[derive(Clone, Debug)]
pub enum Value {
    Tensor(Tensor),
    /// A compile-time number (literal, module constant, hyperparameter).
    Number {
        value: f64,
        is_int: bool,
    },
    Str(String),
    List(Vec<(Value, Span)>),
    Module(Rc<ModuleInst>),
    Func(Func),
    /// A whole data set (`digits`) or one split of it (`digits.train`).
    Data {
        name: String,
        split: Option<String>,
    },
    /// A symbolic dimension bound by a signature (`B`), usable in `reshape`.
    SymDim(String),
    /// A bare shape-variable name passed as an argument (`sum(x, C)`): an
    /// axis name to reductions, its size (if known) anywhere else.
    DimVar {
        name: String,
        dim: crate::ir::Dim,
    },
    /// A bare name that resolved to nothing: fine as an axis name
    /// (`sum(x, B)`), an error anywhere else.
    Unbound(Box<ElabError>),
}

#[derive(Clone, Debug)]
pub enum Func {
    /// A top-level `fn`.
    User(String),
    /// A function member of a module instance (`m.forward`).
    Method(Rc<ModuleInst>, String),
    Builtin(&'static str),
    /// `grad(f)`: calling it returns the gradient of `f` with respect to its first argument.
    Grad(Box<Func>),
}

/// An instantiated module: its constants, its parameters (graph inputs) and
/// its submodules. A stack (`[Block(64); 3]`) is an instance whose `stack`
/// holds the layers, applied in order when called.
#[derive(Clone, Debug)]
pub struct ModuleInst {
    /// The module's name (`Linear`), or `[Linear; 3]` for a stack.
    pub def_name: String,
    /// Dotted path from the root instance (`l1.`, `blocks.0.`).
    pub path: String,
    pub consts: Vec<(String, Value)>,
    pub params: Vec<(String, Tensor)>,
    /// `buffer` members: model state that is not trained (running statistics).
    pub buffers: Vec<(String, Tensor)>,
    pub subs: Vec<(String, Rc<ModuleInst>)>,
    pub stack: Vec<Rc<ModuleInst>>,
}

impl ModuleInst {
    /// Every parameter below this instance, depth first, in declaration order.
    pub fn all_params(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self.params.iter().map(|(n, t)| (format!("{}{n}", self.path), t.clone())).collect();
        for (_, s) in &self.subs {
            out.extend(s.all_params());
        }
        for s in &self.stack {
            out.extend(s.all_params());
        }
        out
    }

    /// The same structure with every parameter replaced, in `all_params` order.
    pub fn with_params(&self, new: &mut impl Iterator<Item = Tensor>) -> ModuleInst {
        let mut m = self.clone();
        for (_, t) in &mut m.params {
            if let Some(n) = new.next() {
                *t = n;
            }
        }
        m.subs = self.subs.iter().map(|(name, s)| (name.clone(), Rc::new(s.with_params(new)))).collect();
        m.stack = self.stack.iter().map(|s| Rc::new(s.with_params(new))).collect();
        m
    }

    pub fn member_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.consts.iter().map(|(n, _)| n.clone()).collect();
        names.extend(self.params.iter().map(|(n, _)| n.clone()));
        names.extend(self.subs.iter().map(|(n, _)| n.clone()));
        names
    }
}

impl Value {
    /// How the value is described in diagnostics ("a module `Mlp`").
    pub fn describe(&self, shape_of: impl Fn(ValueId) -> Shape) -> String {
        match self {
            Value::Tensor(t) => format!("a tensor {}", shape_of(t.id)),
            Value::Number { value, .. } => format!("the number {value}"),
            Value::Str(_) => "a string".into(),
            Value::List(_) => "a list".into(),
            Value::Module(m) => format!("a module `{}`", m.def_name),
            Value::Func(_) => "a function".into(),
            Value::Data { name, split: None } => format!("the data set `{name}`"),
            Value::Data { name, split: Some(s) } => format!("the data split `{name}.{s}`"),
            Value::SymDim(d) => format!("the dimension `{d}`"),
            Value::DimVar { name, .. } => format!("the dimension `{name}`"),
            Value::Unbound(_) => "an unknown name".into(),
        }
    }
}

/// One argument of a call, already evaluated.
#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Value,
    pub span: Span,
}
