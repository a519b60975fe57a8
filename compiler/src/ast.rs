//! The syntax tree that `syntax` builds from pest's parse and every later stage reads.
//!
//! Every node carries the byte span of the text it came from, so any stage can
//! point a diagnostic at the exact place the user wrote.

/// A half-open byte range `start..end` in the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole `.nn` file: items run top to bottom.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Program {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Module(ModuleDef),
    Function(FnDef),
    Data(DataDef),
    Train(TrainDef),
    /// `let beta = expr` at top level: evaluated once, in file order.
    Let(LetStmt),
    /// `report "label" = expr`: evaluated and printed (and put in the JSON summary).
    Report(ReportItem),
    /// `plot "file.png" = [run_a, run_b]`: loss curves of named training runs as PNG + CSV.
    Plot(PlotItem),
}

/// `module Linear(in: int, out: int) { param ..., sub = Other(...), fn forward(...) ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleDef {
    pub name: Ident,
    pub const_params: Vec<ConstParam>,
    pub members: Vec<Member>,
    pub span: Span,
}

/// A compile-time parameter of a module: `in: int` or `eps: float`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstParam {
    pub name: Ident,
    pub ty: Ident,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    /// `param W: [in, out] = he_normal`
    Param(ParamDecl),
    /// `l1 = Linear(64, 256)` or a stack `blocks = [Block(64); 3]`
    Sub(SubDecl),
    /// `fn forward(x: [B, in]) -> [B, out] = ...`
    Fn(FnDef),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    pub name: Ident,
    pub shape: Vec<Expr>,
    pub shape_span: Span,
    /// An initialiser: a name (`zeros`, `he_normal`) or a call (`normal(0.02)`).
    pub init: Expr,
    /// Declared with `buffer`: model state, not trained.
    pub buffer: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubDecl {
    pub name: Ident,
    /// A module instantiation `Linear(64, 256)`, or `[Block(64); 3]` (an `ExprKind::Repeat`).
    pub value: Expr,
    pub span: Span,
}

/// A function, at top level or inside a module. `fn f(x: [B, 64], y: [B] int) -> scalar = expr`
/// or with a block body `{ let h = ...; h }`.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: Ident,
    pub args: Vec<FnArg>,
    pub ret: Option<TypeAnn>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnArg {
    pub name: Ident,
    pub ty: TypeAnn,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeAnn {
    /// `[B, 64]`, `[B] int`; each dim is an expression over names and integers (`in`, `2*d`).
    Tensor { dims: Vec<Expr>, int: bool, span: Span },
    /// `scalar` (same as `[]`).
    Scalar(Span),
    /// A module type, e.g. `m: Mlp`.
    Module(Ident),
}

impl TypeAnn {
    pub fn span(&self) -> Span {
        match self {
            TypeAnn::Tensor { span, .. } | TypeAnn::Scalar(span) => *span,
            TypeAnn::Module(id) => id.span,
        }
    }
}

/// `{ let a = ...; let b = ...; result }` (a `= expr` body is a block with no statements).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<LetStmt>,
    pub result: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LetStmt {
    pub name: Ident,
    pub ty: Option<TypeAnn>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal; `is_int` when written without `.` or exponent.
    Number {
        value: f64,
        is_int: bool,
    },
    Str(String),
    Name(String),
    /// `a.b`
    Field(Box<Expr>, Ident),
    /// `f(a, b, key: c)`; the callee may itself be a call: `grad(f)(x)`.
    Call {
        callee: Box<Expr>,
        args: Vec<CallArg>,
    },
    /// `x[0:3, :, 2]`
    Index {
        base: Box<Expr>,
        indices: Vec<IndexItem>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Neg(Box<Expr>),
    /// `[a, b, c]`
    List(Vec<Expr>),
    /// `[Block(64); 3]`: a stack of `count` independent instances applied in sequence.
    Repeat {
        item: Box<Expr>,
        count: Box<Expr>,
    },
    /// `accuracy on digits.test` (a metric evaluated on a data split).
    On {
        what: Box<Expr>,
        data: Box<Expr>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct CallArg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    /// `i` (removes the axis)
    Single(Expr),
    /// `a:b`, `:b`, `a:`, `:`; bounds may be negative (from the end).
    Range { start: Option<Expr>, end: Option<Expr>, span: Span },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `@`
    MatMul,
    /// `**`
    Pow,
    /// `x |> f` is `f(x)`
    Pipe,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Pow => "**",
            BinOp::Pipe => "|>",
        }
    }
}

/// `data digits = csv("data/digits.csv", label: "label", scale: 1/16) { train = ..., test = ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct DataDef {
    pub name: Ident,
    /// The source call, e.g. `csv("path", label: "label", scale: 1/16, standardize: train)`.
    pub source: Expr,
    pub splits: Vec<SplitDef>,
    pub span: Span,
}

/// `train = rows[0..1437] shuffle(seed: 0)` or `test = rows where i % 5 == 4`
#[derive(Clone, Debug, PartialEq)]
pub struct SplitDef {
    pub name: Ident,
    pub rows: RowSelect,
    /// Trailing calls such as `shuffle(seed: 0)`.
    pub modifiers: Vec<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RowSelect {
    /// `rows[a..b]`, `rows[a..]`, `rows[..b]`
    Range { start: Option<Expr>, end: Option<Expr>, span: Span },
    /// `rows where i % m == r` (`equal`) or `rows where i % m != r`
    Modulo { modulus: Expr, remainder: Expr, equal: bool, span: Span },
}

/// `train m = Mlp on digits.train { loss = ..., optimizer = adam(lr: 1e-3), ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDef {
    /// The name the trained model is known by afterwards (`m.l1.W`, `m(x)`).
    pub name: Ident,
    /// The module to instantiate: `Mlp` or `Linear(10, 1)`.
    pub model: Expr,
    /// The training split: `digits.train`.
    pub data: Expr,
    pub fields: Vec<Field>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub key: Ident,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReportItem {
    pub label: String,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlotItem {
    pub path: String,
    pub runs: Vec<Ident>,
    pub span: Span,
}
