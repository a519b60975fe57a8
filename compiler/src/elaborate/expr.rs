//! Expressions, names, calls, signatures and module instantiation.

use super::error::{closest, ErrorKind};
use super::range::{self, Rule};
use super::value::{Arg, Func, ModuleInst, Tensor, Value};
use super::{builtins, Ctx, ElabError, ParamSpec, Scope, MAX_CALL_DEPTH};
use crate::ast::{BinOp, CallArg, Expr, ExprKind, FnDef, Ident, IndexItem, Member, ModuleDef, Span, TypeAnn};
use crate::builder::broadcast_shapes;
use crate::ir::{DType, Dim, InputKind, Shape, TensorType};
use crate::ops::{BinaryOp, Op};
use std::rc::Rc;

/// How much stack must remain before `expr` or `instantiate_in` recurses, and
/// the size of each extra segment `stacker` allocates when it does not. The
/// parser bounds one expression's depth and `MAX_CALL_DEPTH` the calls, but
/// the two multiply: 80 functions each calling the next 190 levels deep used
/// all of the main thread's 8 MiB (about 550 bytes a level), so the walk grows
/// its stack on the heap instead (as rustc's `ensure_sufficient_stack` does).
const STACK_RED_ZONE: usize = 128 * 1024;
const STACK_SEGMENT: usize = 4 * 1024 * 1024;

impl<'s, 'p> Ctx<'s, 'p> {
    pub(crate) fn expr(&mut self, e: &Expr, scope: &Scope) -> Result<Value, ElabError> {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.expr_kind(e, scope))
    }

    fn expr_kind(&mut self, e: &Expr, scope: &Scope) -> Result<Value, ElabError> {
        match &e.kind {
            ExprKind::Number { value, is_int } => Ok(Value::Number { value: *value, is_int: *is_int }),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Name(n) => self.lookup(n, e.span, scope),
            ExprKind::Field(base, field) => {
                let b = self.expr(base, scope)?;
                self.field(b, field, base.span)
            }
            ExprKind::Call { callee, args } => {
                let f = self.expr(callee, scope).map_err(|e| e.in_callee(callee.span))?;
                let args = self.args(args, scope)?;
                self.call(f, args, e.span, callee.span)
            }
            ExprKind::Index { base, indices } => {
                let b = self.expr(base, scope)?;
                self.index(b, indices, scope, e.span)
            }
            ExprKind::Binary { op: BinOp::Pipe, lhs, rhs } => {
                let x = self.expr(lhs, scope)?;
                let f = self.expr(rhs, scope).map_err(|e| e.in_callee(rhs.span))?;
                let arg = Arg { name: None, value: x, span: lhs.span };
                self.call(f, vec![arg], e.span, rhs.span)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let l = self.expr(lhs, scope)?;
                let r = self.expr(rhs, scope)?;
                self.binary(*op, l, r, lhs.span, rhs.span, e.span)
            }
            ExprKind::Neg(x) => {
                let v = self.expr(x, scope)?;
                self.binary(BinOp::Mul, Value::Number { value: -1.0, is_int: true }, v, e.span, x.span, e.span)
            }
            ExprKind::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    out.push((self.expr(it, scope)?, it.span));
                }
                Ok(Value::List(out))
            }
            ExprKind::Repeat { .. } => Err(self.err(ErrorKind::WrongKind {
                span: e.span,
                expected: "an expression".into(),
                found: "a stack of modules (allowed only as a module member)".into(),
            })),
            ExprKind::On { .. } => Err(self.err(ErrorKind::WrongKind {
                span: e.span,
                expected: "an expression".into(),
                found: "a metric (allowed only in `metrics = [...]`)".into(),
            })),
        }
    }

    fn args(&mut self, args: &[CallArg], scope: &Scope) -> Result<Vec<Arg>, ElabError> {
        let mut out = Vec::with_capacity(args.len());
        for a in args {
            // A bare shape variable or module constant may name an axis (`sum(x, C)`, `sum(h, out)`).
            if let ExprKind::Name(n) = &a.value.kind {
                let module_const = scope.this.as_ref().and_then(|m| m.consts.iter().find(|(c, _)| c == n)).and_then(|(_, v)| match v {
                    Value::Number { value, is_int: true } => Some(Dim::Known(*value as usize)),
                    _ => None,
                });
                let dim = scope.dims.get(n).map(|(d, _)| d.clone()).or(module_const);
                // A signature dimension named like a parameter of the module (`W` in
                // `x: [B, C, H, W]` and `param W`) hides it: an error if used, except as an axis.
                if let (Some(e), false) = (self.shadowed_member(n, a.value.span, scope), scope.vars.contains_key(n)) {
                    out.push(Arg { name: a.name.clone(), value: Value::Unbound(Box::new(e)), span: a.value.span });
                    continue;
                }
                if let (Some(dim), false) = (dim, scope.vars.contains_key(n)) {
                    let value = Value::DimVar { name: n.clone(), dim };
                    out.push(Arg { name: a.name.clone(), value, span: a.value.span });
                    continue;
                }
            }
            // A bare unknown name may be an axis name (`sum(x, B)`): keep it unresolved.
            let value = match (&a.value.kind, self.expr(&a.value, scope)) {
                (ExprKind::Name(_), Err(e)) if matches!(*e.kind, ErrorKind::UnknownName { .. }) => Value::Unbound(Box::new(e)),
                (_, r) => r?,
            };
            out.push(Arg { name: a.name.clone(), value, span: a.value.span });
        }
        Ok(out)
    }

    /// The error for `name` used at `span` when it is a dimension of the
    /// signature that hides a parameter or buffer of the same name.
    fn shadowed_member(&self, name: &str, span: Span, scope: &Scope) -> Option<ElabError> {
        let (dim, dim_span) = scope.dims.get(name)?;
        let this = scope.this.as_ref()?;
        let member = if this.params.iter().any(|(n, _)| n == name) {
            "parameter"
        } else if this.buffers.iter().any(|(n, _)| n == name) {
            "buffer"
        } else {
            return None;
        };
        let decl = self.session.modules.get(&this.def_name).and_then(|def| {
            def.members.iter().find_map(|m| match m {
                Member::Param(p) if p.name.name == name => Some(p.name.span),
                _ => None,
            })
        });
        Some(self.err(ErrorKind::ShadowedMember {
            span,
            name: name.to_string(),
            dim: dim.to_string(),
            dim_span: *dim_span,
            member: member.into(),
            member_span: decl,
        }))
    }

    /// Resolve a name: locals, then the current module's members, then globals, then builtins.
    pub(crate) fn lookup(&mut self, name: &str, span: Span, scope: &Scope) -> Result<Value, ElabError> {
        if let Some(v) = scope.vars.get(name) {
            return Ok(v.clone());
        }
        if let Some((d, _)) = scope.dims.get(name) {
            return Ok(match d {
                Dim::Known(n) => Value::Number { value: *n as f64, is_int: true },
                Dim::Sym(s) => Value::SymDim(s.clone()),
            });
        }
        if let Some(this) = &scope.this {
            if let Some(v) = member(this, name, self) {
                return Ok(v);
            }
        }
        let s = self.session;
        if s.functions.contains_key(name) {
            return Ok(Value::Func(Func::User(name.to_string())));
        }
        if s.data.contains_key(name) || s.data_defs.contains_key(name) {
            return Ok(Value::Data { name: name.to_string(), split: None });
        }
        if let Some(&(value, is_int)) = s.consts.get(name) {
            return Ok(Value::Number { value, is_int });
        }
        if let Some(ty) = s.lets.get(name) {
            let t = self.lazy_input(&format!("let.{name}"), InputKind::Data, ty.clone(), span);
            return Ok(Value::Tensor(t));
        }
        if let Some(tm) = s.trained.get(name).cloned() {
            let m = self.trained_model(name, &tm.model, span)?;
            return Ok(Value::Module(m));
        }
        if let Some(b) = builtins::lookup(name) {
            return Ok(Value::Func(Func::Builtin(b)));
        }
        if s.modules.contains_key(name) {
            return Err(self.err(ErrorKind::WrongKind {
                span,
                expected: "a value".into(),
                found: format!("the module type `{name}` (instantiate it as a member, e.g. `layer = {name}(...)`)"),
            }));
        }
        let mut candidates: Vec<&str> = scope.vars.keys().map(String::as_str).collect();
        candidates.extend(s.functions.keys().map(String::as_str));
        candidates.extend(s.data_defs.keys().map(String::as_str));
        candidates.extend(s.lets.keys().map(String::as_str));
        candidates.extend(s.consts.keys().map(String::as_str));
        candidates.extend(s.trained.keys().map(String::as_str));
        candidates.extend(builtins::NAMES.iter().chain(super::vision::NAMES).chain(super::sequence::NAMES).copied());
        let this_names = scope.this.as_ref().map(|t| t.member_names()).unwrap_or_default();
        candidates.extend(this_names.iter().map(String::as_str));
        let suggestion = closest(name, candidates);
        Err(self.err(ErrorKind::UnknownName { name: name.to_string(), span, suggestion }))
    }

    fn field(&mut self, base: Value, field: &Ident, base_span: Span) -> Result<Value, ElabError> {
        let span = field.span;
        match base {
            Value::Module(m) => match member(&m, &field.name, self) {
                Some(v) => Ok(v),
                None => Err(self.err(ErrorKind::UnknownField {
                    field: field.name.clone(),
                    span,
                    of: m.def_name.clone(),
                    available: m.member_names(),
                })),
            },
            Value::Data { name, split: None } => {
                let shape = self.session.data.get(&name);
                let known: Vec<String> = match (shape, self.session.data_defs.get(&name)) {
                    (Some(d), _) => d.splits.iter().map(|(s, _)| s.clone()).collect(),
                    (None, Some(def)) => def.splits.iter().map(|s| s.name.name.clone()).collect(),
                    (None, None) => Vec::new(),
                };
                if known.contains(&field.name) {
                    Ok(Value::Data { name, split: Some(field.name.clone()) })
                } else {
                    Err(self.err(ErrorKind::UnknownField { field: field.name.clone(), span, of: name, available: known }))
                }
            }
            Value::Data { name, split: Some(split) } => self.data_field(&name, &split, field),
            Value::Tensor(t) if field.name == "T" => {
                let id = self.builder(span).matrix_transpose(t.id);
                let mut names = t.names.clone();
                let r = names.len();
                if r >= 2 {
                    names.swap(r - 1, r - 2);
                }
                Ok(Value::Tensor(Tensor { id, names }))
            }
            other => {
                let found = other.describe(|id| self.graph.shape(id).clone());
                Err(self.err(ErrorKind::UnknownField {
                    field: field.name.clone(),
                    span: base_span.to(span),
                    of: found,
                    available: vec!["T".into()],
                }))
            }
        }
    }

    /// `digits.test.x` / `digits.test.y` in a top-level expression.
    fn data_field(&mut self, name: &str, split: &str, field: &Ident) -> Result<Value, ElabError> {
        let shape = self.session.data.get(name).cloned();
        let Some(d) = shape else {
            return Err(self.err(ErrorKind::Internal { span: field.span, message: format!("data `{name}` not loaded") }));
        };
        let rows = d.splits.iter().find(|(s, _)| s == split).map_or(0, |(_, n)| *n);
        let (ty, label) = match field.name.as_str() {
            "x" => (d.x_type(Dim::Known(rows)), "x"),
            "y" => (d.y_type(Dim::Known(rows)), "y"),
            _ => {
                return Err(self.err(ErrorKind::UnknownField {
                    field: field.name.clone(),
                    span: field.span,
                    of: format!("{name}.{split}"),
                    available: vec!["x".into(), "y".into()],
                }))
            }
        };
        let t = self.lazy_input(&format!("{name}.{split}.{label}"), InputKind::Data, ty, field.span);
        Ok(Value::Tensor(t))
    }

    /// Apply a callable value to arguments.
    pub(crate) fn call(&mut self, f: Value, args: Vec<Arg>, span: Span, callee_span: Span) -> Result<Value, ElabError> {
        match f {
            Value::Func(Func::User(name)) => {
                let Some(def) = self.session.functions.get(&name).copied() else {
                    return Err(self.err(ErrorKind::Internal { span, message: format!("function {name} vanished") }));
                };
                self.call_user(def, None, args, span)
            }
            Value::Func(Func::Method(inst, name)) => self.call_method(&inst, &name, args, span),
            Value::Module(inst) => self.call_module(&inst, args, span),
            Value::Func(Func::Builtin(name)) => {
                // Built-ins make tensors of sizes the user gives (`eye(n)`,
                // `one_hot(y, n)`) with the builder's helpers: any too large
                // is reported here, at the node, in this call's context.
                let from = self.graph.nodes.len();
                let v = builtins::call(self, name, args, span)?;
                match super::first_too_large(&self.graph, from) {
                    Some((span, error)) => Err(self.err(ErrorKind::TooLarge { span, error, param: None })),
                    None => Ok(v),
                }
            }
            Value::Func(Func::Grad(inner)) => self.call_grad(*inner, args, span),
            Value::Unbound(e) => Err(*e),
            other => {
                let what = other.describe(|id| self.graph.shape(id).clone());
                Err(self.err(ErrorKind::NotCallable { span: callee_span, what }))
            }
        }
    }

    fn call_module(&mut self, inst: &Rc<ModuleInst>, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
        // `nnc info` lists every module call with the graph nodes it added
        // (a no-op unless `self.layers` is set; see `crate::info`).
        let layer = self.enter_layer(inst);
        let out = self.call_module_body(inst, args, span);
        self.exit_layer(layer, &out);
        out
    }

    fn call_module_body(&mut self, inst: &Rc<ModuleInst>, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
        if inst.stack.is_empty() {
            return self.call_method(inst, "forward", args, span);
        }
        // A stack: each layer's output feeds the next.
        let mut args = args;
        let mut out = Value::List(Vec::new());
        for layer in &inst.stack {
            out = self.call_module(layer, args, span)?;
            args = vec![Arg { name: None, value: out.clone(), span }];
        }
        Ok(out)
    }

    fn call_method(&mut self, inst: &Rc<ModuleInst>, name: &str, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
        let def = self.session.modules.get(&inst.def_name).copied();
        let method = def.and_then(|d| {
            d.members.iter().find_map(|m| match m {
                Member::Fn(f) if f.name.name == name => Some(f),
                _ => None,
            })
        });
        match method {
            Some(f) => self.call_user(f, Some(inst.clone()), args, span),
            None => Err(self.err(ErrorKind::UnknownField {
                field: name.into(),
                span,
                of: inst.def_name.clone(),
                available: inst.member_names(),
            })),
        }
    }

    /// Inline a user function: bind and check arguments, evaluate the body, check the result.
    pub(crate) fn call_user(&mut self, def: &FnDef, this: Option<Rc<ModuleInst>>, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
        let qualified = match &this {
            Some(m) => format!("{}.{}", m.def_name, def.name.name),
            None => def.name.name.clone(),
        };
        if self.call_stack.iter().any(|(_, n)| *n == qualified) {
            return Err(self.err(ErrorKind::Recursion { span, name: qualified }));
        }
        self.check_call_depth(span, &qualified)?;
        if let Some(a) = args.iter().find(|a| a.name.is_some()) {
            let keyword = a.name.as_ref().map(|n| n.name.clone()).unwrap_or_default();
            let known: Vec<String> = def.args.iter().map(|p| p.name.name.clone()).collect();
            if !known.contains(&keyword) {
                let span = a.name.as_ref().map_or(a.span, |n| n.span);
                return Err(self.err(ErrorKind::UnknownKeyword { span, callee: qualified, keyword, allowed: known }));
            }
        }
        if args.len() != def.args.len() {
            return Err(self.err(ErrorKind::Arity {
                span,
                callee: qualified,
                expected: def.args.len(),
                found: args.len(),
                def_span: Some(def.name.span),
            }));
        }
        let mut scope = Scope { this: this.clone(), ..Scope::default() };
        // Named arguments go to their parameter; the rest fill the others in order.
        let mut slots: Vec<Option<Arg>> = vec![None; def.args.len()];
        let mut positional = Vec::new();
        for a in args {
            match a.name.as_ref().and_then(|n| def.args.iter().position(|p| p.name.name == n.name)) {
                Some(i) => slots[i] = Some(a),
                None => positional.push(a),
            }
        }
        let mut positional = positional.into_iter();
        for slot in &mut slots {
            if slot.is_none() {
                *slot = positional.next();
            }
        }
        self.call_stack.push((span, qualified.clone()));
        for (param, arg) in def.args.iter().zip(slots) {
            let Some(arg) = arg else {
                self.call_stack.pop();
                return Err(self.err(ErrorKind::MissingArgument { span, callee: qualified, name: param.name.name.clone() }));
            };
            let what = format!("argument `{}`", param.name.name);
            let v = self.check_type(arg.value, arg.span, &param.ty, &mut scope, &what)?;
            scope.vars.insert(param.name.name.clone(), v);
        }
        for stmt in &def.body.stmts {
            let mut v = self.expr(&stmt.value, &scope)?;
            if let Some(ty) = &stmt.ty {
                v = self.check_type(v, stmt.value.span, ty, &mut scope, &format!("`{}`", stmt.name.name))?;
            }
            scope.vars.insert(stmt.name.name.clone(), v);
        }
        let mut result = self.expr(&def.body.result, &scope)?;
        if let Some(ret) = &def.ret {
            result = self.check_type(result, def.body.result.span, ret, &mut scope, &format!("the result of `{qualified}`"))?;
        }
        self.call_stack.pop();
        Ok(result)
    }

    /// Refuse a call or module instance nested deeper than `MAX_CALL_DEPTH`.
    fn check_call_depth(&self, span: Span, callee: &str) -> Result<(), ElabError> {
        if self.call_stack.len() < MAX_CALL_DEPTH {
            return Ok(());
        }
        Err(self.err(ErrorKind::CallDepth { span, callee: callee.to_string(), limit: MAX_CALL_DEPTH }))
    }

    /// Check a value against an annotation, binding shape variables; returns
    /// the value with axis names taken from the annotation.
    pub(crate) fn check_type(&mut self, v: Value, span: Span, ann: &TypeAnn, scope: &mut Scope, what: &str) -> Result<Value, ElabError> {
        match ann {
            TypeAnn::Module(name) => match &v {
                Value::Module(m) if m.def_name == name.name => Ok(v),
                other => {
                    let found = other.describe(|id| self.graph.shape(id).clone());
                    Err(self.err(ErrorKind::WrongKind { span, expected: format!("a module `{}`", name.name), found }))
                }
            },
            TypeAnn::Scalar(ann_span) => {
                let t = self.tensor_of(v, span)?;
                let ty = self.ty(&t);
                if ty.shape.rank() != 0 {
                    return Err(self.err(ErrorKind::TypeMismatch {
                        span,
                        ann_span: *ann_span,
                        expected: "a scalar".into(),
                        found: ty,
                        what: what.into(),
                        flattened: None,
                    }));
                }
                Ok(Value::Tensor(t))
            }
            TypeAnn::Tensor { dims, int, span: ann_span } => {
                let t = self.tensor_of(v, span)?;
                let ty = self.ty(&t);
                let expected_text = self.annotation_text(dims, *int, scope);
                let mismatch = |cx: &Self| {
                    cx.err(ErrorKind::TypeMismatch {
                        span,
                        ann_span: *ann_span,
                        expected: expected_text.clone(),
                        found: ty.clone(),
                        what: what.into(),
                        flattened: None,
                    })
                };
                let want_dtype = if *int { DType::I32 } else { DType::F32 };
                if ty.shape.rank() != dims.len() || ty.dtype != want_dtype {
                    return Err(mismatch(self));
                }
                let mut names = Vec::with_capacity(dims.len());
                for (d, actual) in dims.iter().zip(ty.shape.dims()) {
                    if let ExprKind::Name(n) = &d.kind {
                        let is_const = scope.vars.contains_key(n)
                            || self.session.consts.contains_key(n)
                            || scope.this.as_ref().is_some_and(|m| m.consts.iter().any(|(c, _)| c == n));
                        if !is_const {
                            match scope.dims.get(n) {
                                Some((bound, first_span)) if bound != actual => {
                                    return Err(self.err(ErrorKind::DimConflict {
                                        span,
                                        ann_span: *first_span,
                                        var: n.clone(),
                                        first: bound.to_string(),
                                        second: actual.to_string(),
                                    }))
                                }
                                Some(_) => {}
                                None => {
                                    scope.dims.insert(n.clone(), (actual.clone(), d.span));
                                }
                            }
                            names.push(Some(n.clone()));
                            continue;
                        }
                        names.push(Some(n.clone()));
                    } else {
                        names.push(None);
                    }
                    let want = self.const_dim(d, scope)?;
                    if Dim::Known(want) != *actual {
                        let mut e = mismatch(self);
                        if let ErrorKind::TypeMismatch { flattened, .. } = &mut *e.kind {
                            // `names` already holds this axis.
                            let axis = names.len().saturating_sub(1);
                            *flattened = self.flattened_from(t.id, axis).map(|(s, from)| (s, from, want));
                        }
                        return Err(e);
                    }
                }
                Ok(Value::Tensor(Tensor { id: t.id, names }))
            }
        }
    }

    /// If `id` is `[N, F]` made by flattening (`flatten`, or `reshape`) a
    /// tensor `[N, ...]` of higher rank, and `axis` is its axis 1: where, and
    /// the shape before, so a size mismatch can say where `F` came from.
    fn flattened_from(&self, id: crate::ir::ValueId, axis: usize) -> Option<(Span, Shape)> {
        let node = self.graph.node(id);
        let (Op::Reshape { shape }, [src]) = (&node.op, node.args.as_slice()) else { return None };
        let from = self.graph.shape(*src).clone();
        let keeps_batch = from.dims().first() == shape.dims().first();
        (axis == 1 && shape.rank() == 2 && from.rank() > 2 && keeps_batch).then_some((node.span, from))
    }

    /// An annotation as text with constants filled in: `[B, 64]`.
    fn annotation_text(&mut self, dims: &[Expr], int: bool, scope: &Scope) -> String {
        let parts: Vec<String> = dims
            .iter()
            .map(|d| match &d.kind {
                ExprKind::Name(n)
                    if !scope.vars.contains_key(n)
                        && !self.session.consts.contains_key(n)
                        && !scope.this.as_ref().is_some_and(|m| m.consts.iter().any(|(c, _)| c == n)) =>
                {
                    scope.dims.get(n).map_or_else(|| n.clone(), |(dim, _)| dim.to_string())
                }
                _ => self.const_dim(d, scope).map_or_else(|_| "?".into(), |n| n.to_string()),
            })
            .collect();
        format!("[{}]{}", parts.join(", "), if int { " int" } else { "" })
    }

    /// A dimension expression that must be a known positive integer.
    pub(crate) fn const_dim(&mut self, d: &Expr, scope: &Scope) -> Result<usize, ElabError> {
        let v = self.expr(d, scope)?;
        match v {
            Value::Number { value, .. } if value >= 1.0 && value.fract() == 0.0 => Ok(value as usize),
            Value::Number { value, .. } => Err(self.err(ErrorKind::BadDim { span: d.span, found: value.to_string() })),
            other => {
                let found = other.describe(|id| self.graph.shape(id).clone());
                Err(self.err(ErrorKind::BadDim { span: d.span, found }))
            }
        }
    }

    /// A compile-time number (hyperparameters, counts) in its rule's range.
    pub(crate) fn number(&mut self, v: &Value, span: Span, rule: &Rule) -> Result<f64, ElabError> {
        let n = self.any_number(v, span, rule)?;
        rule.check(n).map_err(|problem| self.err(ErrorKind::NumberOutOfRange { span, problem }))
    }

    /// A compile-time whole number in its rule's range (an index, an axis).
    pub(crate) fn whole(&mut self, v: &Value, span: Span, rule: &Rule) -> Result<i64, ElabError> {
        let n = self.any_number(v, span, rule)?;
        rule.check_whole(n).map_err(|problem| self.err(ErrorKind::NumberOutOfRange { span, problem }))
    }

    /// A compile-time count or size in its rule's range (which starts at 0 or 1).
    pub(crate) fn natural(&mut self, v: &Value, span: Span, rule: &Rule) -> Result<usize, ElabError> {
        let n = self.any_number(v, span, rule)?;
        rule.check_natural(n).map_err(|problem| self.err(ErrorKind::NumberOutOfRange { span, problem }))
    }

    fn any_number(&mut self, v: &Value, span: Span, rule: &Rule) -> Result<f64, ElabError> {
        match v {
            Value::Number { value, .. } => Ok(*value),
            Value::DimVar { dim: Dim::Known(n), .. } => Ok(*n as f64),
            Value::Unbound(e) => Err((**e).clone()),
            _ => Err(self.err(ErrorKind::NotConstant { span, what: rule.name() })),
        }
    }

    // ---- arithmetic -------------------------------------------------------------

    pub(crate) fn binary(&mut self, op: BinOp, l: Value, r: Value, lspan: Span, rspan: Span, span: Span) -> Result<Value, ElabError> {
        let (l, r) = (known_dim_as_number(l), known_dim_as_number(r));
        // Numbers fold at compile time.
        if let (Value::Number { value: a, is_int: ia }, Value::Number { value: b, is_int: ib }) = (&l, &r) {
            let (a, b) = (*a, *b);
            let value = match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                BinOp::Pow => a.powf(b),
                BinOp::MatMul | BinOp::Pipe => f64::NAN,
            };
            if !value.is_nan() {
                let is_int = *ia && *ib && !matches!(op, BinOp::Div) && value.fract() == 0.0;
                return Ok(Value::Number { value, is_int });
            }
        }
        if let Some(v) = self.module_arith(op, &l, &r, lspan, rspan, span)? {
            return Ok(v);
        }
        if op == BinOp::Pow {
            if let Value::Number { value, .. } = r {
                if value == 2.0 {
                    return self.binary(BinOp::Mul, l.clone(), l, lspan, lspan, span);
                }
            }
        }
        let lt = self.tensor_of(l, lspan)?;
        let rt = self.tensor_of(r, rspan)?;
        if op == BinOp::MatMul {
            return builtins::matmul(self, &lt, &rt, lspan, rspan, span).map(Value::Tensor);
        }
        let bop = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            BinOp::Pow => BinaryOp::Pow,
            BinOp::MatMul | BinOp::Pipe => BinaryOp::Add,
        };
        self.elementwise(bop, &lt, &rt, lspan, rspan, span, op.symbol()).map(Value::Tensor)
    }

    /// An elementwise binary op with NumPy broadcasting.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn elementwise(
        &mut self,
        op: BinaryOp,
        l: &Tensor,
        r: &Tensor,
        lspan: Span,
        rspan: Span,
        span: Span,
        symbol: &str,
    ) -> Result<Tensor, ElabError> {
        let (ls, rs) = (self.shape(l), self.shape(r));
        let Some(shape) = broadcast_shapes(&ls, &rs) else {
            return Err(self.err(ErrorKind::Broadcast { op: symbol.into(), span, lhs_span: lspan, rhs_span: rspan, lhs: ls, rhs: rs }));
        };
        let names = merge_names(&l.names, &r.names, shape.rank());
        let mut b = self.builder(span);
        let lb = b.broadcast(l.id, &shape);
        let rb = b.broadcast(r.id, &shape);
        let id = self.op(Op::Binary(op), &[lb, rb], span)?;
        Ok(Tensor { id, names })
    }

    /// `m - 0.01 * g` where `m` and `g` are modules: arithmetic parameter by parameter.
    fn module_arith(&mut self, op: BinOp, l: &Value, r: &Value, lspan: Span, rspan: Span, span: Span) -> Result<Option<Value>, ElabError> {
        let template = match (l, r) {
            (Value::Module(m), _) | (_, Value::Module(m)) => m.clone(),
            _ => return Ok(None),
        };
        let parts = |v: &Value| -> Option<Vec<Value>> {
            match v {
                Value::Module(m) => Some(m.all_params().into_iter().map(|(_, t)| Value::Tensor(t)).collect()),
                _ => None,
            }
        };
        let n = template.all_params().len();
        let lp = parts(l).unwrap_or_else(|| vec![l.clone(); n]);
        let rp = parts(r).unwrap_or_else(|| vec![r.clone(); n]);
        if lp.len() != rp.len() {
            return Err(self.err(ErrorKind::WrongKind {
                span,
                expected: "modules of the same type".into(),
                found: "different modules".into(),
            }));
        }
        let mut out = Vec::with_capacity(n);
        for (a, b) in lp.into_iter().zip(rp) {
            let v = self.binary(op, a, b, lspan, rspan, span)?;
            out.push(self.tensor_of(v, span)?);
        }
        Ok(Some(Value::Module(Rc::new(template.with_params(&mut out.into_iter())))))
    }

    // ---- indexing -----------------------------------------------------------------

    fn index(&mut self, base: Value, items: &[IndexItem], scope: &Scope, span: Span) -> Result<Value, ElabError> {
        if let Value::Module(m) = &base {
            if let ([IndexItem::Single(i)], false) = (items, m.stack.is_empty()) {
                let v = self.expr(i, scope)?;
                let k = self.whole(&v, i.span, &range::LAYER_INDEX)?;
                let n = m.stack.len();
                return match usize::try_from(k).ok().and_then(|k| m.stack.get(k)) {
                    Some(layer) => Ok(Value::Module(layer.clone())),
                    None => Err(self.err(ErrorKind::AxisOutOfRange { span: i.span, axis: k, rank: n })),
                };
            }
        }
        let t = self.tensor_of(base, span)?;
        let shape = self.shape(&t);
        if items.len() > shape.rank() {
            return Err(self.err(ErrorKind::AxisOutOfRange { span, axis: items.len() as i64 - 1, rank: shape.rank() }));
        }
        let mut id = t.id;
        let mut names = t.names.clone();
        let mut squeeze = Vec::new();
        for (axis, item) in items.iter().enumerate() {
            let Some(Dim::Known(n)) = shape.dims().get(axis).cloned() else {
                if matches!(item, IndexItem::Range { start: None, end: None, .. }) {
                    continue;
                }
                return Err(self.err(ErrorKind::Slice { span, shape: shape.clone(), axis, start: 0, end: 0 }));
            };
            let (start, end, item_span) = match item {
                IndexItem::Single(e) => {
                    let v = self.expr(e, scope)?;
                    let i = self.whole(&v, e.span, &range::INDEX)?;
                    let i = if i < 0 { i + n as i64 } else { i };
                    squeeze.push(axis);
                    (i, i + 1, e.span)
                }
                IndexItem::Range { start, end, span: s } => {
                    let lo = match start {
                        Some(e) => {
                            let v = self.expr(e, scope)?;
                            self.whole(&v, e.span, &range::SLICE_BOUND)?
                        }
                        None => 0,
                    };
                    let hi = match end {
                        Some(e) => {
                            let v = self.expr(e, scope)?;
                            self.whole(&v, e.span, &range::SLICE_BOUND)?
                        }
                        None => n as i64,
                    };
                    (lo, hi, *s)
                }
            };
            let norm = |i: i64| if i < 0 { i + n as i64 } else { i };
            let (a, b) = (norm(start), norm(end));
            if a < 0 || b > n as i64 || a > b {
                return Err(self.err(ErrorKind::Slice { span: item_span, shape: shape.clone(), axis, start, end }));
            }
            if a != 0 || b != n as i64 {
                id = self.op(Op::Slice { axis, start: a as usize, end: b as usize }, &[id], span)?;
            }
        }
        if !squeeze.is_empty() {
            let cur = self.graph.shape(id).clone();
            let dims: Vec<Dim> = cur.dims().iter().enumerate().filter(|(i, _)| !squeeze.contains(i)).map(|(_, d)| d.clone()).collect();
            id = self.op(Op::Reshape { shape: Shape(dims) }, &[id], span)?;
            names = names.into_iter().enumerate().filter(|(i, _)| !squeeze.contains(i)).map(|(_, n)| n).collect();
        }
        Ok(Value::Tensor(Tensor { id, names }))
    }

    // ---- modules --------------------------------------------------------------------

    /// Instantiate the module a train header or trained-model reference names
    /// (`Mlp` or `Linear(10, 1)`), with its parameters as graph inputs under `path`.
    pub(crate) fn instantiate_expr(&mut self, e: &Expr, path: &str, span: Span) -> Result<Rc<ModuleInst>, ElabError> {
        let scope = Scope::default();
        self.instantiate_in(e, path, &scope).map_err(|mut err| {
            if err.context.is_empty() {
                err.context.push((span, "model".into()));
            }
            err
        })
    }

    fn instantiate_in(&mut self, e: &Expr, path: &str, scope: &Scope) -> Result<Rc<ModuleInst>, ElabError> {
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || self.instantiate_kind(e, path, scope))
    }

    fn instantiate_kind(&mut self, e: &Expr, path: &str, scope: &Scope) -> Result<Rc<ModuleInst>, ElabError> {
        match &e.kind {
            ExprKind::Name(n) => self.instantiate(n, Vec::new(), e.span, path),
            ExprKind::Call { callee, args } => {
                let ExprKind::Name(n) = &callee.kind else {
                    return Err(self.err(ErrorKind::WrongKind {
                        span: callee.span,
                        expected: "a module name".into(),
                        found: "an expression".into(),
                    }));
                };
                let args = self.args(args, scope)?;
                self.instantiate(n, args, e.span, path)
            }
            ExprKind::Repeat { item, count } => {
                let c = self.expr(count, scope)?;
                let k = self.natural(&c, count.span, &range::REPEAT)?;
                let mut stack = Vec::new();
                for i in 0..k {
                    stack.push(self.instantiate_in(item, &format!("{path}{i}."), scope)?);
                }
                let name = stack.first().map(|m| m.def_name.clone()).unwrap_or_default();
                Ok(Rc::new(ModuleInst {
                    def_name: format!("[{name}; {k}]"),
                    path: path.to_string(),
                    consts: Vec::new(),
                    params: Vec::new(),
                    buffers: Vec::new(),
                    subs: Vec::new(),
                    stack,
                }))
            }
            _ => Err(self.err(ErrorKind::WrongKind {
                span: e.span,
                expected: "a module such as `Linear(64, 10)`".into(),
                found: "an expression".into(),
            })),
        }
    }

    fn instantiate(&mut self, name: &str, args: Vec<Arg>, span: Span, path: &str) -> Result<Rc<ModuleInst>, ElabError> {
        let Some(def) = self.session.modules.get(name).copied() else {
            let suggestion = closest(name, self.session.modules.keys().map(String::as_str));
            return Err(self.err(ErrorKind::UnknownName { name: name.to_string(), span, suggestion }));
        };
        if args.len() != def.const_params.len() {
            return Err(self.err(ErrorKind::Arity {
                span,
                callee: name.into(),
                expected: def.const_params.len(),
                found: args.len(),
                def_span: Some(def.name.span),
            }));
        }
        let mut inst = ModuleInst {
            def_name: name.into(),
            path: path.into(),
            consts: Vec::new(),
            params: Vec::new(),
            buffers: Vec::new(),
            subs: Vec::new(),
            stack: Vec::new(),
        };
        let args = self.bind_module_args(name, def, args)?;
        for (p, a) in def.const_params.iter().zip(args) {
            let is_int = p.ty.name == "int";
            let n = self.number(&a.value, a.span, if is_int { &range::MODULE_INT } else { &range::MODULE_FLOAT })?;
            inst.consts.push((p.name.name.clone(), Value::Number { value: n, is_int }));
        }
        self.check_call_depth(span, name)?;
        self.call_stack.push((span, name.to_string()));
        let r = self.instantiate_members(def, inst);
        self.call_stack.pop();
        r.map(Rc::new)
    }

    /// Put named module arguments (`Linear(out: 1, in: 10)`) in parameter order.
    fn bind_module_args(&self, name: &str, def: &ModuleDef, args: Vec<Arg>) -> Result<Vec<Arg>, ElabError> {
        let mut slots: Vec<Option<Arg>> = vec![None; def.const_params.len()];
        let mut positional = Vec::new();
        for a in args {
            match &a.name {
                Some(n) => match def.const_params.iter().position(|p| p.name.name == n.name) {
                    Some(i) => slots[i] = Some(a),
                    None => {
                        let allowed = def.const_params.iter().map(|p| p.name.name.clone()).collect();
                        return Err(self.err(ErrorKind::UnknownKeyword {
                            span: n.span,
                            callee: name.into(),
                            keyword: n.name.clone(),
                            allowed,
                        }));
                    }
                },
                None => positional.push(a),
            }
        }
        let mut positional = positional.into_iter();
        let mut out = Vec::with_capacity(slots.len());
        for (slot, p) in slots.into_iter().zip(&def.const_params) {
            match slot.or_else(|| positional.next()) {
                Some(a) => out.push(a),
                None => {
                    return Err(self.err(ErrorKind::MissingArgument {
                        span: def.name.span,
                        callee: name.into(),
                        name: p.name.name.clone(),
                    }))
                }
            }
        }
        Ok(out)
    }

    fn instantiate_members(&mut self, def: &ModuleDef, mut inst: ModuleInst) -> Result<ModuleInst, ElabError> {
        let mut seen: Vec<(String, Span)> = inst.consts.iter().map(|(n, _)| (n.clone(), def.name.span)).collect();
        for m in &def.members {
            let (ident, ..) = match m {
                Member::Param(p) => (&p.name, ()),
                Member::Sub(s) => (&s.name, ()),
                Member::Fn(f) => (&f.name, ()),
            };
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == ident.name) {
                return Err(self.err(ErrorKind::Duplicate { span: ident.span, first: *first, name: ident.name.clone() }));
            }
            seen.push((ident.name.clone(), ident.span));
            let scope = Scope { this: Some(Rc::new(inst.clone())), ..Scope::default() };
            match m {
                Member::Param(p) => {
                    let mut dims = Vec::with_capacity(p.shape.len());
                    for d in &p.shape {
                        dims.push(self.const_dim(d, &scope)?);
                    }
                    let init = self.param_init(&p.init, &scope)?;
                    let full = format!("{}{}", inst.path, p.name.name);
                    let ty = TensorType::f32(Shape::known(&dims));
                    if let Err(error) = ty.shape.check_size() {
                        return Err(self.err(ErrorKind::TooLarge { span: p.span, error, param: Some(full) }));
                    }
                    let kind = if p.buffer { InputKind::Buffer } else { InputKind::Param };
                    let id = self.builder(p.span).input(&full, kind, ty);
                    let spec = ParamSpec { path: full, shape: dims, init };
                    let t = (p.name.name.clone(), Tensor { id, names: Vec::new() });
                    if p.buffer {
                        self.buffers.push(spec);
                        inst.buffers.push(t);
                    } else {
                        self.params.push(spec);
                        inst.params.push(t);
                    }
                }
                Member::Sub(s) => {
                    let sub = self.instantiate_in(&s.value, &format!("{}{}.", inst.path, s.name.name), &scope)?;
                    inst.subs.push((s.name.name.clone(), sub));
                }
                Member::Fn(_) => {}
            }
        }
        Ok(inst)
    }
}

/// A known dimension used as a number.
pub(crate) fn known_dim_as_number(v: Value) -> Value {
    match v {
        Value::DimVar { dim: Dim::Known(n), .. } => Value::Number { value: n as f64, is_int: true },
        Value::DimVar { name, dim: Dim::Sym(_) } => Value::SymDim(name),
        other => other,
    }
}

/// A member of a module instance as a value: constant, parameter, submodule or method.
fn member(m: &Rc<ModuleInst>, name: &str, cx: &Ctx) -> Option<Value> {
    if let Some((_, v)) = m.consts.iter().find(|(n, _)| n == name) {
        return Some(v.clone());
    }
    if let Some((_, t)) = m.params.iter().chain(&m.buffers).find(|(n, _)| n == name) {
        return Some(Value::Tensor(t.clone()));
    }
    if let Some((_, s)) = m.subs.iter().find(|(n, _)| n == name) {
        return Some(Value::Module(s.clone()));
    }
    let def = cx.session.modules.get(&m.def_name)?;
    def.members.iter().find_map(|mem| match mem {
        Member::Fn(f) if f.name.name == name => Some(Value::Func(Func::Method(m.clone(), name.to_string()))),
        _ => None,
    })
}

/// Axis names of a broadcast result: aligned on the right, left operand first.
pub(crate) fn merge_names(l: &[Option<String>], r: &[Option<String>], rank: usize) -> Vec<Option<String>> {
    let at = |v: &[Option<String>], i: usize| -> Option<String> {
        let off = rank.checked_sub(v.len())?;
        i.checked_sub(off).and_then(|j| v.get(j).cloned().flatten())
    };
    (0..rank).map(|i| at(l, i).or_else(|| at(r, i))).collect()
}
