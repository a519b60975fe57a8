//! Source text → AST: pest parses with `grammar/nn.pest`, this module walks
//! the parse tree into `ast::Program`, and `errors` turns pest's failure into
//! one readable `Diagnostic`.
//!
//! Nothing here panics on any input: the tree walk reports an unexpected tree
//! shape as an internal error, over-deep nesting is rejected before pest runs,
//! and expression depth is capped while the tree is built.

mod errors;

use crate::ast::{
    BinOp, Block, CallArg, ConstParam, DataDef, Expr, ExprKind, Field, FnArg, FnDef, Ident, IndexItem, Item, LetStmt, Member, ModuleDef,
    ParamDecl, PlotItem, Program, ReportItem, RowSelect, Span, SplitDef, SubDecl, TrainDef, TypeAnn,
};
use crate::diagnostic::Diagnostic;
use crate::elaborate::range::MAX_WHOLE;
use pest::iterators::Pair;
use pest::Parser as _;

mod grammar {
    #[derive(pest_derive::Parser)]
    #[grammar = "../../grammar/nn.pest"]
    pub struct NnParser;
}

use grammar::{NnParser, Rule};

/// The deepest expression tree accepted (later stages walk expressions
/// recursively; nothing sensible comes near this).
const MAX_EXPR_DEPTH: usize = 200;
/// The deepest nesting of `(`, `[` and `{` accepted.
const MAX_NESTING: usize = 64;

/// Parse a whole `.nn` file. On a syntax error the result holds exactly one
/// diagnostic, pointing at the offending text.
pub fn parse(source: &str) -> Result<Program, Vec<Diagnostic>> {
    if let Some(d) = errors::check_nesting(source, MAX_NESTING) {
        return Err(vec![d]);
    }
    let mut pairs = NnParser::parse(Rule::program, source).map_err(|e| vec![errors::convert(source, &e)])?;
    let program = pairs.next().ok_or_else(|| vec![internal(Span::new(0, 0), "empty parse")])?;
    build_program(program).map_err(|d| vec![d])
}

type R<T> = Result<T, Diagnostic>;

/// An expression together with the depth of its tree.
struct Ex {
    e: Expr,
    depth: usize,
}

/// The text a pair covers, without the whitespace and comments pest lets a
/// rule swallow after its last part when that part is optional (`x = 1 // c`).
/// Every literal in a non-atomic rule is its own rule, so the end of the
/// last descendant is where the text really ends.
fn span_of(p: &Pair<'_, Rule>) -> Span {
    let start = p.as_span().start();
    let mut last = p.clone();
    while let Some(c) = last.clone().into_inner().next_back() {
        last = c;
    }
    Span::new(start, last.as_span().end())
}

fn internal(span: Span, what: &str) -> Diagnostic {
    Diagnostic::new("internal parser error")
        .label(span, format!("the parser could not build this: {what}"))
        .note("this is a bug in nnc, not in your program")
}

/// Children that carry meaning: punctuation and keywords are dropped.
fn kids<'i>(p: Pair<'i, Rule>) -> Vec<Pair<'i, Rule>> {
    p.into_inner()
        .filter(|c| {
            !matches!(
                c.as_rule(),
                Rule::lparen
                    | Rule::call_open
                    | Rule::index_open
                    | Rule::rparen
                    | Rule::lbrack
                    | Rule::rbrack
                    | Rule::lbrace
                    | Rule::rbrace
                    | Rule::comma
                    | Rule::colon
                    | Rule::arg_colon
                    | Rule::eq
                    | Rule::arrow
                    | Rule::dot
                    | Rule::dotdot
                    | Rule::percent
                    | Rule::kw_module
                    | Rule::kw_param
                    | Rule::kw_fn
                    | Rule::kw_let
                    | Rule::kw_data
                    | Rule::kw_train
                    | Rule::kw_report
                    | Rule::kw_plot
                    | Rule::kw_rows
                    | Rule::kw_where
                    | Rule::train_on
                    | Rule::row_var
                    | Rule::EOI
            )
        })
        .collect()
}

fn need<T>(v: Option<T>, span: Span, what: &str) -> R<T> {
    v.ok_or_else(|| internal(span, what))
}

fn ident(p: &Pair<'_, Rule>) -> Ident {
    Ident { name: p.as_str().to_string(), span: span_of(p) }
}

fn node(kind: ExprKind, span: Span, depth: usize) -> R<Ex> {
    if depth > MAX_EXPR_DEPTH {
        return Err(Diagnostic::new("expression is nested too deeply")
            .label(span, format!("this expression is more than {MAX_EXPR_DEPTH} levels deep"))
            .note("split it into smaller parts with `let`"));
    }
    Ok(Ex { e: Expr { kind, span }, depth })
}

// ---------------------------------------------------------------- items

fn build_program(p: Pair<'_, Rule>) -> R<Program> {
    let mut items = Vec::new();
    for c in kids(p) {
        if c.as_rule() == Rule::item {
            items.push(build_item(c)?);
        }
    }
    Ok(Program { items })
}

fn build_item(p: Pair<'_, Rule>) -> R<Item> {
    let span = span_of(&p);
    let c = need(p.into_inner().next(), span, "an item")?;
    Ok(match c.as_rule() {
        Rule::module_def => Item::Module(build_module(c)?),
        Rule::fn_def => Item::Function(build_fn(c)?),
        Rule::data_def => Item::Data(build_data(c)?),
        Rule::train_def => Item::Train(build_train(c)?),
        Rule::let_stmt => Item::Let(build_let(c)?),
        Rule::report_item => Item::Report(build_report(c)?),
        Rule::plot_item => Item::Plot(build_plot(c)?),
        _ => return Err(internal(span, "an item")),
    })
}

fn build_module(p: Pair<'_, Rule>) -> R<ModuleDef> {
    let span = span_of(&p);
    let (mut name, mut const_params, mut members) = (None, Vec::new(), Vec::new());
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::const_params => {
                for cp in kids(c) {
                    const_params.push(build_const_param(cp)?);
                }
            }
            Rule::member => members.push(build_member(c)?),
            _ => return Err(internal(span_of(&c), "a module")),
        }
    }
    Ok(ModuleDef { name: need(name, span, "a module name")?, const_params, members, span })
}

fn build_const_param(p: Pair<'_, Rule>) -> R<ConstParam> {
    let span = span_of(&p);
    let (mut name, mut ty) = (None, None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::const_ty => ty = Some(ident(&c)),
            _ => return Err(internal(span_of(&c), "a module parameter")),
        }
    }
    Ok(ConstParam { name: need(name, span, "a parameter name")?, ty: need(ty, span, "a parameter type")?, span })
}

fn build_member(p: Pair<'_, Rule>) -> R<Member> {
    let span = span_of(&p);
    let c = need(p.into_inner().next(), span, "a module member")?;
    Ok(match c.as_rule() {
        Rule::param_decl => Member::Param(build_param(c)?),
        Rule::sub_decl => Member::Sub(build_sub(c)?),
        Rule::fn_def => Member::Fn(build_fn(c)?),
        _ => return Err(internal(span, "a module member")),
    })
}

fn build_param(p: Pair<'_, Rule>) -> R<ParamDecl> {
    let span = span_of(&p);
    let (mut name, mut shape, mut init, mut buffer) = (None, None, None, false);
    for c in kids(p) {
        match c.as_rule() {
            Rule::kw_param => {}
            Rule::kw_buffer => buffer = true,
            Rule::ident => name = Some(ident(&c)),
            Rule::shape => {
                let shape_span = span_of(&c);
                let dims = kids(c).into_iter().map(build_expr).collect::<R<Vec<_>>>()?;
                shape = Some((dims, shape_span));
            }
            Rule::expr => init = Some(build_expr(c)?),
            _ => return Err(internal(span_of(&c), "a parameter declaration")),
        }
    }
    let (shape, shape_span) = need(shape, span, "a parameter shape")?;
    let init = need(init, span, "an initialiser")?;
    Ok(ParamDecl { name: need(name, span, "a parameter name")?, shape, shape_span, init, buffer, span })
}

fn build_sub(p: Pair<'_, Rule>) -> R<SubDecl> {
    let span = span_of(&p);
    let (mut name, mut value) = (None, None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::expr => value = Some(build_expr(c)?),
            _ => return Err(internal(span_of(&c), "a submodule declaration")),
        }
    }
    Ok(SubDecl { name: need(name, span, "a submodule name")?, value: need(value, span, "a submodule value")?, span })
}

fn build_fn(p: Pair<'_, Rule>) -> R<FnDef> {
    let span = span_of(&p);
    let (mut name, mut args, mut ret, mut body) = (None, Vec::new(), None, None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::fn_arg => args.push(build_fn_arg(c)?),
            Rule::type_ann => ret = Some(build_type(c)?),
            Rule::eq_body => {
                let s = span_of(&c);
                let e = need(kids(c).into_iter().next(), s, "a function body")?;
                body = Some(Block { stmts: Vec::new(), result: build_expr(e)? });
            }
            Rule::block => body = Some(build_block(c)?),
            _ => return Err(internal(span_of(&c), "a function")),
        }
    }
    Ok(FnDef { name: need(name, span, "a function name")?, args, ret, body: need(body, span, "a function body")?, span })
}

fn build_fn_arg(p: Pair<'_, Rule>) -> R<FnArg> {
    let span = span_of(&p);
    let (mut name, mut ty) = (None, None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::type_ann => ty = Some(build_type(c)?),
            _ => return Err(internal(span_of(&c), "a function argument")),
        }
    }
    Ok(FnArg { name: need(name, span, "an argument name")?, ty: need(ty, span, "an argument type")? })
}

fn build_block(p: Pair<'_, Rule>) -> R<Block> {
    let span = span_of(&p);
    let (mut stmts, mut result) = (Vec::new(), None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::let_stmt => stmts.push(build_let(c)?),
            Rule::expr => result = Some(build_expr(c)?),
            _ => return Err(internal(span_of(&c), "a block")),
        }
    }
    Ok(Block { stmts, result: need(result, span, "a block result")? })
}

fn build_let(p: Pair<'_, Rule>) -> R<LetStmt> {
    let span = span_of(&p);
    let (mut name, mut ty, mut value) = (None, None, None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::type_ann => ty = Some(build_type(c)?),
            Rule::expr => value = Some(build_expr(c)?),
            _ => return Err(internal(span_of(&c), "a `let`")),
        }
    }
    Ok(LetStmt { name: need(name, span, "a `let` name")?, ty, value: need(value, span, "a `let` value")?, span })
}

fn build_type(p: Pair<'_, Rule>) -> R<TypeAnn> {
    let span = span_of(&p);
    let c = need(p.into_inner().next(), span, "a type")?;
    let cspan = span_of(&c);
    match c.as_rule() {
        Rule::tensor_type => {
            let (mut dims, mut int) = (Vec::new(), false);
            for d in kids(c) {
                match d.as_rule() {
                    Rule::expr => dims.push(build_expr(d)?),
                    Rule::int_kw => int = true,
                    _ => return Err(internal(span_of(&d), "a tensor type")),
                }
            }
            Ok(TypeAnn::Tensor { dims, int, span: cspan })
        }
        Rule::scalar_type => Ok(TypeAnn::Scalar(cspan)),
        Rule::module_type => {
            let id = need(c.into_inner().next(), cspan, "a module type")?;
            Ok(TypeAnn::Module(ident(&id)))
        }
        _ => Err(internal(cspan, "a type")),
    }
}

fn build_data(p: Pair<'_, Rule>) -> R<DataDef> {
    let span = span_of(&p);
    let (mut name, mut source, mut splits) = (None, None, Vec::new());
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::expr => source = Some(build_expr(c)?),
            Rule::split_def => splits.push(build_split(c)?),
            _ => return Err(internal(span_of(&c), "a data definition")),
        }
    }
    Ok(DataDef { name: need(name, span, "a data set name")?, source: need(source, span, "a data source")?, splits, span })
}

fn build_split(p: Pair<'_, Rule>) -> R<SplitDef> {
    let span = span_of(&p);
    let (mut name, mut rows, mut modifiers) = (None, None, Vec::new());
    for c in kids(p) {
        match c.as_rule() {
            Rule::split_name => name = Some(ident(&c)),
            Rule::row_range => {
                let rspan = span_of(&c);
                let (mut start, mut end, mut seen_dots) = (None, None, false);
                for r in c.into_inner() {
                    match r.as_rule() {
                        Rule::dotdot => seen_dots = true,
                        Rule::expr if seen_dots => end = Some(build_expr(r)?),
                        Rule::expr => start = Some(build_expr(r)?),
                        _ => {}
                    }
                }
                rows = Some(RowSelect::Range { start, end, span: rspan });
            }
            Rule::row_modulo => {
                let rspan = span_of(&c);
                let (mut modulus, mut remainder, mut equal) = (None, None, true);
                for r in kids(c) {
                    match r.as_rule() {
                        Rule::expr if modulus.is_none() => modulus = Some(build_expr(r)?),
                        Rule::expr => remainder = Some(build_expr(r)?),
                        Rule::cmp_op => equal = r.as_str() == "==",
                        _ => return Err(internal(span_of(&r), "a row filter")),
                    }
                }
                rows = Some(RowSelect::Modulo {
                    modulus: need(modulus, rspan, "a modulus")?,
                    remainder: need(remainder, rspan, "a remainder")?,
                    equal,
                    span: rspan,
                });
            }
            Rule::modifier => {
                let mut inner = c.into_inner();
                let head = need(inner.next(), span, "a modifier name")?;
                let base = node(ExprKind::Name(head.as_str().to_string()), span_of(&head), 1)?;
                modifiers.push(apply_suffixes(base, inner)?.e);
            }
            _ => return Err(internal(span_of(&c), "a split")),
        }
    }
    Ok(SplitDef { name: need(name, span, "a split name")?, rows: need(rows, span, "a row selection")?, modifiers, span })
}

fn build_train(p: Pair<'_, Rule>) -> R<TrainDef> {
    let span = span_of(&p);
    let (mut name, mut exprs, mut fields) = (None, Vec::new(), Vec::new());
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => name = Some(ident(&c)),
            Rule::pipe => exprs.push(build_expr(c)?),
            Rule::field => fields.push(build_field(c)?),
            _ => return Err(internal(span_of(&c), "a training run")),
        }
    }
    let mut exprs = exprs.into_iter();
    let model = need(exprs.next(), span, "a model")?;
    let data = need(exprs.next(), span, "a training split")?;
    Ok(TrainDef { name: need(name, span, "a training run name")?, model, data, fields, span })
}

fn build_field(p: Pair<'_, Rule>) -> R<Field> {
    let span = span_of(&p);
    let (mut key, mut value) = (None, None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::ident => key = Some(ident(&c)),
            Rule::expr => value = Some(build_expr(c)?),
            _ => return Err(internal(span_of(&c), "a training setting")),
        }
    }
    Ok(Field { key: need(key, span, "a setting name")?, value: need(value, span, "a setting value")?, span })
}

fn build_report(p: Pair<'_, Rule>) -> R<ReportItem> {
    let span = span_of(&p);
    let (mut label, mut value) = (None, None);
    for c in kids(p) {
        match c.as_rule() {
            Rule::string => label = Some(unescape(c.as_str())),
            Rule::expr => value = Some(build_expr(c)?),
            _ => return Err(internal(span_of(&c), "a report")),
        }
    }
    Ok(ReportItem { label: need(label, span, "a report label")?, value: need(value, span, "a report value")?, span })
}

fn build_plot(p: Pair<'_, Rule>) -> R<PlotItem> {
    let span = span_of(&p);
    let (mut path, mut runs) = (None, Vec::new());
    for c in kids(p) {
        match c.as_rule() {
            Rule::string => path = Some(unescape(c.as_str())),
            Rule::ident => runs.push(ident(&c)),
            _ => return Err(internal(span_of(&c), "a plot")),
        }
    }
    Ok(PlotItem { path: need(path, span, "a plot path")?, runs, span })
}

/// The text of a string literal (with its quotes) with escapes resolved.
fn unescape(raw: &str) -> String {
    let inner = raw.strip_prefix('"').unwrap_or(raw);
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------- expressions

fn build_expr(p: Pair<'_, Rule>) -> R<Expr> {
    Ok(expr(p)?.e)
}

fn expr(p: Pair<'_, Rule>) -> R<Ex> {
    let span = span_of(&p);
    match p.as_rule() {
        Rule::expr => {
            let mut parts = p.into_inner().filter(|c| c.as_rule() != Rule::kw_on);
            let what = expr(need(parts.next(), span, "an expression")?)?;
            match parts.next() {
                None => Ok(what),
                Some(d) => {
                    let data = expr(d)?;
                    let (s, depth) = (what.e.span.to(data.e.span), 1 + what.depth.max(data.depth));
                    node(ExprKind::On { what: Box::new(what.e), data: Box::new(data.e) }, s, depth)
                }
            }
        }
        Rule::pipe | Rule::sum | Rule::product => {
            let mut parts = p.into_inner();
            let mut acc = expr(need(parts.next(), span, "an operand")?)?;
            while let Some(op) = parts.next() {
                let op = match (op.as_rule(), op.as_str()) {
                    (Rule::pipe_op, _) => BinOp::Pipe,
                    (Rule::add_op, "+") => BinOp::Add,
                    (Rule::add_op, _) => BinOp::Sub,
                    (Rule::mul_op, "*") => BinOp::Mul,
                    (Rule::mul_op, "/") => BinOp::Div,
                    (Rule::mul_op, _) => BinOp::MatMul,
                    _ => return Err(internal(span_of(&op), "an operator")),
                };
                let rhs = expr(need(parts.next(), span, "an operand")?)?;
                acc = binary(op, acc, rhs)?;
            }
            Ok(acc)
        }
        Rule::unary => {
            let mut negs = Vec::new();
            let mut operand = None;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::neg_op => negs.push(span_of(&c)),
                    _ => operand = Some(expr(c)?),
                }
            }
            wrap_negs(&negs, need(operand, span, "an operand")?)
        }
        Rule::power => {
            // operands[i] is preceded by the `-`s in negs[i] (none for the first).
            let mut operands: Vec<Ex> = Vec::new();
            let mut negs: Vec<Vec<Span>> = vec![Vec::new()];
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::pow_op => negs.push(Vec::new()),
                    Rule::neg_op => {
                        if let Some(last) = negs.last_mut() {
                            last.push(span_of(&c));
                        }
                    }
                    _ => operands.push(expr(c)?),
                }
            }
            if operands.len() != negs.len() {
                return Err(internal(span, "a power"));
            }
            // Right to left: a ** (-(b ** c)).
            let mut acc = need(operands.pop(), span, "an operand")?;
            while let Some(lhs) = operands.pop() {
                let these = need(negs.pop(), span, "an exponent")?;
                acc = wrap_negs(&these, acc)?;
                acc = binary(BinOp::Pow, lhs, acc)?;
            }
            Ok(acc)
        }
        Rule::postfix => {
            let mut parts = p.into_inner();
            let base = atom(need(parts.next(), span, "an operand")?)?;
            apply_suffixes(base, parts)
        }
        _ => atom(p),
    }
}

fn binary(op: BinOp, lhs: Ex, rhs: Ex) -> R<Ex> {
    let span = lhs.e.span.to(rhs.e.span);
    let depth = 1 + lhs.depth.max(rhs.depth);
    node(ExprKind::Binary { op, lhs: Box::new(lhs.e), rhs: Box::new(rhs.e) }, span, depth)
}

/// Apply prefix `-`s (given left to right) to `operand`, innermost last.
fn wrap_negs(negs: &[Span], operand: Ex) -> R<Ex> {
    let mut acc = operand;
    for neg in negs.iter().rev() {
        let span = neg.to(acc.e.span);
        let depth = acc.depth + 1;
        acc = node(ExprKind::Neg(Box::new(acc.e)), span, depth)?;
    }
    Ok(acc)
}

fn apply_suffixes<'i>(base: Ex, suffixes: impl Iterator<Item = Pair<'i, Rule>>) -> R<Ex> {
    let mut acc = base;
    for s in suffixes {
        let sspan = span_of(&s);
        let span = acc.e.span.to(sspan);
        match s.as_rule() {
            Rule::call_suffix => {
                let mut args = Vec::new();
                let mut depth = acc.depth;
                for a in kids(s) {
                    let aspan = span_of(&a);
                    let (mut name, mut value) = (None, None);
                    for part in kids(a) {
                        match part.as_rule() {
                            Rule::arg_name => name = Some(ident(&part)),
                            _ => value = Some(expr(part)?),
                        }
                    }
                    let value = need(value, aspan, "an argument")?;
                    depth = depth.max(value.depth);
                    args.push(CallArg { name, value: value.e });
                }
                acc = node(ExprKind::Call { callee: Box::new(acc.e), args }, span, depth + 1)?;
            }
            Rule::index_suffix => {
                let mut indices = Vec::new();
                let mut depth = acc.depth;
                for item in kids(s) {
                    let ispan = span_of(&item);
                    let (mut start, mut end, mut range) = (None, None, false);
                    for part in item.into_inner() {
                        match part.as_rule() {
                            Rule::range_colon => range = true,
                            _ => {
                                let e = expr(part)?;
                                depth = depth.max(e.depth);
                                if range {
                                    end = Some(e.e);
                                } else {
                                    start = Some(e.e);
                                }
                            }
                        }
                    }
                    if range {
                        indices.push(IndexItem::Range { start, end, span: ispan });
                    } else {
                        indices.push(IndexItem::Single(need(start, ispan, "an index")?));
                    }
                }
                acc = node(ExprKind::Index { base: Box::new(acc.e), indices }, span, depth + 1)?;
            }
            Rule::field_suffix => {
                let name = need(kids(s).into_iter().next(), sspan, "a field name")?;
                let depth = acc.depth + 1;
                acc = node(ExprKind::Field(Box::new(acc.e), ident(&name)), span, depth)?;
            }
            _ => return Err(internal(sspan, "a postfix operation")),
        }
    }
    Ok(acc)
}

fn atom(p: Pair<'_, Rule>) -> R<Ex> {
    let span = span_of(&p);
    match p.as_rule() {
        Rule::number => {
            let text = p.as_str();
            let value: f64 = text.parse().map_err(|_| internal(span, "a number"))?;
            let is_int = !text.contains(['.', 'e', 'E']);
            // 1e400 would be inf, and a 20-digit integer another integer: refuse both.
            if value.is_infinite() || (is_int && value > MAX_WHOLE as f64) {
                return Err(errors::number_too_large(span, text, is_int));
            }
            node(ExprKind::Number { value, is_int }, span, 1)
        }
        Rule::string => node(ExprKind::Str(unescape(p.as_str())), span, 1),
        Rule::name => node(ExprKind::Name(p.as_str().to_string()), span, 1),
        Rule::paren => {
            // The parentheses belong to the expression's text.
            let inner = need(kids(p).into_iter().next(), span, "a parenthesised expression")?;
            let mut e = expr(inner)?;
            e.e.span = span;
            Ok(e)
        }
        Rule::list => {
            let mut items = Vec::new();
            let mut repeat = false;
            for c in p.into_inner() {
                match c.as_rule() {
                    Rule::repeat_semi => repeat = true,
                    Rule::expr => items.push(expr(c)?),
                    _ => {}
                }
            }
            let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
            if repeat {
                let mut it = items.into_iter();
                let item = need(it.next(), span, "a repeated item")?;
                let count = need(it.next(), span, "a repeat count")?;
                node(ExprKind::Repeat { item: Box::new(item.e), count: Box::new(count.e) }, span, depth)
            } else {
                node(ExprKind::List(items.into_iter().map(|i| i.e).collect()), span, depth)
            }
        }
        _ => Err(internal(span, "an expression")),
    }
}
