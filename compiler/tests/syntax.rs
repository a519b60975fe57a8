//! The parser: the full example program, precedence, spans, and one clear
//! diagnostic per syntax error. It must never panic.

use nnc_compiler::ast::*;
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::syntax::parse;

const EXAMPLE: &str = r#"// The example from the language description.
module Linear(in: int, out: int) {          // const params
  param W: [in, out] = he_normal
  param b: [out] = zeros
  fn forward(x: [B, in]) -> [B, out] = x @ W + b
}
module Mlp {
  l1 = Linear(64, 256)
  hidden = [Linear(256, 256); 2]
  l3 = Linear(256, 10)
  fn forward(x: [B, 64]) -> [B, 10] {
    let h = relu(l1(x))
    let h: [B, 256] = hidden(h);
    l3(h)
  }
}
/* a block
   comment */
fn loss(m: Mlp, x: [B, 64], y: [B] int) -> scalar = cross_entropy(m(x), y, smoothing: 0.1)
data digits = csv("data/digits.csv", label: "label", scale: 1/16) {
  train = rows[0..1437] shuffle(seed: 0)
  test  = rows[1437..]
}
data diabetes = csv("data/diabetes.csv", target: "target", standardize: train) {
  train = rows where i % 5 != 4
  test  = rows where i % 5 == 4
}
train m = Mlp on digits.train {
  loss = loss
  optimizer = adam(lr: 1e-3)
  batch = 64
  epochs = 30
  metrics = [accuracy on digits.test, loss on digits.test]
}
let beta = ridge(diabetes.train.x, diabetes.train.y, 0.1)
report "closed-form test MSE" = mse(diabetes.test.x @ beta, diabetes.test.y)
plot "out/optimizers.png" = [gd, sgd, adam]
"#;

fn text(src: &str, span: Span) -> &str {
    &src[span.start..span.end]
}

fn parse_ok(src: &str) -> Program {
    match parse(src) {
        Ok(p) => p,
        Err(d) => panic!("unexpected syntax error in {src:?}: {d:#?}"),
    }
}

/// Parse `let e = <src>` and return the expression, with the source it indexes.
fn expr_of(src: &str) -> (String, Expr) {
    let full = format!("let e = {src}");
    let program = parse_ok(&full);
    match program.items.into_iter().next() {
        Some(Item::Let(l)) => (full, l.value),
        other => panic!("expected a let, got {other:?}"),
    }
}

fn name(e: &Expr) -> &str {
    match &e.kind {
        ExprKind::Name(n) => n,
        other => panic!("expected a name, got {other:?}"),
    }
}

fn binary(e: &Expr) -> (BinOp, &Expr, &Expr) {
    match &e.kind {
        ExprKind::Binary { op, lhs, rhs } => (*op, lhs, rhs),
        other => panic!("expected a binary expression, got {other:?}"),
    }
}

fn number(e: &Expr) -> (f64, bool) {
    match e.kind {
        ExprKind::Number { value, is_int } => (value, is_int),
        ref other => panic!("expected a number, got {other:?}"),
    }
}

fn call(e: &Expr) -> (&Expr, &[CallArg]) {
    match &e.kind {
        ExprKind::Call { callee, args } => (callee, args),
        other => panic!("expected a call, got {other:?}"),
    }
}

fn field(e: &Expr) -> (&Expr, &str) {
    match &e.kind {
        ExprKind::Field(base, f) => (base, &f.name),
        other => panic!("expected a field access, got {other:?}"),
    }
}

/// Render an expression back to fully parenthesised text.
fn show(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { value, .. } => format!("{value}"),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Field(b, f) => format!("{}.{}", show(b), f.name),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}: {}", n.name, show(&a.value)),
                    None => show(&a.value),
                })
                .collect();
            format!("{}({})", show(callee), args.join(", "))
        }
        ExprKind::Index { base, indices } => {
            let items: Vec<String> = indices
                .iter()
                .map(|i| match i {
                    IndexItem::Single(e) => show(e),
                    IndexItem::Range { start, end, .. } => {
                        format!("{}:{}", start.as_ref().map(show).unwrap_or_default(), end.as_ref().map(show).unwrap_or_default())
                    }
                })
                .collect();
            format!("{}[{}]", show(base), items.join(", "))
        }
        ExprKind::Binary { op, lhs, rhs } => {
            format!("({} {} {})", show(lhs), op.symbol(), show(rhs))
        }
        ExprKind::Neg(x) => format!("(-{})", show(x)),
        ExprKind::List(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", ")),
        ExprKind::Repeat { item, count } => format!("[{}; {}]", show(item), show(count)),
        ExprKind::On { what, data } => format!("({} on {})", show(what), show(data)),
    }
}

fn shown(src: &str) -> String {
    show(&expr_of(src).1)
}

#[test]
fn full_example() {
    let src = EXAMPLE;
    let program = parse_ok(src);
    assert_eq!(program.items.len(), 9);

    // module Linear(in: int, out: int) { ... }
    let Item::Module(linear) = &program.items[0] else { panic!("item 0: {:?}", program.items[0]) };
    assert_eq!(linear.name.name, "Linear");
    assert_eq!(text(src, linear.name.span), "Linear");
    assert!(text(src, linear.span).starts_with("module Linear(in: int, out: int) {"));
    assert!(text(src, linear.span).ends_with("x @ W + b\n}"));
    let cps: Vec<(&str, &str)> = linear.const_params.iter().map(|c| (c.name.name.as_str(), c.ty.name.as_str())).collect();
    assert_eq!(cps, [("in", "int"), ("out", "int")]);
    assert_eq!(text(src, linear.const_params[1].span), "out: int");
    assert_eq!(linear.members.len(), 3);
    let Member::Param(w) = &linear.members[0] else { panic!() };
    assert_eq!(w.name.name, "W");
    assert_eq!(w.shape.iter().map(name).collect::<Vec<_>>(), ["in", "out"]);
    assert_eq!(text(src, w.shape_span), "[in, out]");
    assert_eq!(name(&w.init), "he_normal");
    assert_eq!(text(src, w.span), "param W: [in, out] = he_normal");
    let Member::Param(b) = &linear.members[1] else { panic!() };
    assert_eq!((b.name.name.as_str(), name(&b.init)), ("b", "zeros"));
    let Member::Fn(fwd) = &linear.members[2] else { panic!() };
    assert_eq!(fwd.name.name, "forward");
    assert_eq!(fwd.args.len(), 1);
    assert_eq!(fwd.args[0].name.name, "x");
    let TypeAnn::Tensor { dims, int, span } = &fwd.args[0].ty else { panic!() };
    assert_eq!((dims.iter().map(name).collect::<Vec<_>>(), *int), (vec!["B", "in"], false));
    assert_eq!(text(src, *span), "[B, in]");
    assert!(matches!(&fwd.ret, Some(TypeAnn::Tensor { dims, .. }) if dims.len() == 2));
    assert!(fwd.body.stmts.is_empty());
    assert_eq!(show(&fwd.body.result), "((x @ W) + b)");
    assert_eq!(text(src, fwd.body.result.span), "x @ W + b");
    assert_eq!(text(src, fwd.span), "fn forward(x: [B, in]) -> [B, out] = x @ W + b");

    // module Mlp { ... }
    let Item::Module(mlp) = &program.items[1] else { panic!() };
    assert_eq!(mlp.name.name, "Mlp");
    assert!(mlp.const_params.is_empty());
    assert_eq!(mlp.members.len(), 4);
    let Member::Sub(l1) = &mlp.members[0] else { panic!() };
    assert_eq!(l1.name.name, "l1");
    assert_eq!(show(&l1.value), "Linear(64, 256)");
    assert_eq!(text(src, l1.value.span), "Linear(64, 256)");
    assert_eq!(text(src, l1.span), "l1 = Linear(64, 256)");
    let Member::Sub(hidden) = &mlp.members[1] else { panic!() };
    let ExprKind::Repeat { item, count } = &hidden.value.kind else { panic!("{:?}", hidden.value) };
    assert_eq!(show(item), "Linear(256, 256)");
    assert_eq!(number(count), (2.0, true));
    assert_eq!(text(src, hidden.value.span), "[Linear(256, 256); 2]");
    let Member::Fn(fwd) = &mlp.members[3] else { panic!() };
    assert_eq!(fwd.body.stmts.len(), 2);
    let h1 = &fwd.body.stmts[0];
    assert_eq!((h1.name.name.as_str(), h1.ty.is_none()), ("h", true));
    assert_eq!(show(&h1.value), "relu(l1(x))");
    assert_eq!(text(src, h1.span), "let h = relu(l1(x))");
    let h2 = &fwd.body.stmts[1];
    assert!(matches!(&h2.ty, Some(TypeAnn::Tensor { dims, int: false, .. }) if dims.len() == 2));
    assert_eq!(text(src, h2.span), "let h: [B, 256] = hidden(h)");
    assert_eq!(show(&fwd.body.result), "l3(h)");

    // fn loss(m: Mlp, x: [B, 64], y: [B] int) -> scalar = ...
    let Item::Function(loss) = &program.items[2] else { panic!() };
    assert_eq!(loss.name.name, "loss");
    let TypeAnn::Module(m_ty) = &loss.args[0].ty else { panic!() };
    assert_eq!(m_ty.name, "Mlp");
    assert_eq!(text(src, m_ty.span), "Mlp");
    let TypeAnn::Tensor { dims, int: true, span } = &loss.args[2].ty else { panic!("{:?}", loss.args[2]) };
    assert_eq!(dims.len(), 1);
    assert_eq!(text(src, *span), "[B] int");
    let Some(TypeAnn::Scalar(s)) = &loss.ret else { panic!() };
    assert_eq!(text(src, *s), "scalar");
    let (callee, args) = call(&loss.body.result);
    assert_eq!(name(callee), "cross_entropy");
    assert_eq!(args.len(), 3);
    assert!(args[0].name.is_none() && args[1].name.is_none());
    let smoothing = args[2].name.as_ref().expect("named argument");
    assert_eq!((smoothing.name.as_str(), text(src, smoothing.span)), ("smoothing", "smoothing"));
    assert_eq!(number(&args[2].value), (0.1, false));
    assert_eq!(text(src, loss.body.result.span), "cross_entropy(m(x), y, smoothing: 0.1)");

    // data digits = csv(...) { ... }
    let Item::Data(digits) = &program.items[3] else { panic!() };
    assert_eq!(digits.name.name, "digits");
    assert_eq!(show(&digits.source), "csv(\"data/digits.csv\", label: \"label\", scale: (1 / 16))");
    assert_eq!(digits.splits.len(), 2);
    let train = &digits.splits[0];
    assert_eq!(train.name.name, "train");
    let RowSelect::Range { start: Some(s0), end: Some(e0), span } = &train.rows else { panic!() };
    assert_eq!((number(s0), number(e0)), ((0.0, true), (1437.0, true)));
    assert_eq!(text(src, *span), "rows[0..1437]");
    assert_eq!(train.modifiers.iter().map(show).collect::<Vec<_>>(), ["shuffle(seed: 0)"]);
    assert_eq!(text(src, train.span), "train = rows[0..1437] shuffle(seed: 0)");
    let test = &digits.splits[1];
    assert!(matches!(&test.rows, RowSelect::Range { start: Some(_), end: None, .. }));
    assert!(test.modifiers.is_empty());

    let Item::Data(diabetes) = &program.items[4] else { panic!() };
    let (_, args) = call(&diabetes.source);
    assert_eq!(args[2].name.as_ref().map(|n| n.name.as_str()), Some("standardize"));
    assert_eq!(name(&args[2].value), "train");
    let RowSelect::Modulo { modulus, remainder, equal, span } = &diabetes.splits[0].rows else { panic!() };
    assert_eq!((number(modulus), number(remainder), *equal), ((5.0, true), (4.0, true), false));
    assert_eq!(text(src, *span), "rows where i % 5 != 4");
    assert!(matches!(&diabetes.splits[1].rows, RowSelect::Modulo { equal: true, .. }));

    // train m = Mlp on digits.train { ... }
    let Item::Train(t) = &program.items[5] else { panic!() };
    assert_eq!(t.name.name, "m");
    assert_eq!(name(&t.model), "Mlp");
    assert_eq!(show(&t.data), "digits.train");
    assert_eq!(text(src, t.data.span), "digits.train");
    let keys: Vec<&str> = t.fields.iter().map(|f| f.key.name.as_str()).collect();
    assert_eq!(keys, ["loss", "optimizer", "batch", "epochs", "metrics"]);
    assert_eq!(show(&t.fields[1].value), "adam(lr: 0.001)");
    assert_eq!(number(&call(&t.fields[1].value).1[0].value), (1e-3, false));
    assert_eq!(text(src, t.fields[2].span), "batch = 64");
    assert_eq!(show(&t.fields[4].value), "[(accuracy on digits.test), (loss on digits.test)]");
    assert!(text(src, t.span).starts_with("train m = Mlp on digits.train {"));
    assert!(text(src, t.span).ends_with("loss on digits.test]\n}"));

    let Item::Let(beta) = &program.items[6] else { panic!() };
    assert_eq!(beta.name.name, "beta");
    assert_eq!(show(&beta.value), "ridge(diabetes.train.x, diabetes.train.y, 0.1)");
    let (callee, args) = call(&beta.value);
    let (inner, f) = field(&args[0].value);
    assert_eq!(f, "x");
    assert_eq!(field(inner).1, "train");
    assert_eq!(name(callee), "ridge");
    assert_eq!(text(src, args[0].value.span), "diabetes.train.x");

    let Item::Report(r) = &program.items[7] else { panic!() };
    assert_eq!(r.label, "closed-form test MSE");
    assert_eq!(show(&r.value), "mse((diabetes.test.x @ beta), diabetes.test.y)");

    let Item::Plot(p) = &program.items[8] else { panic!() };
    assert_eq!(p.path, "out/optimizers.png");
    assert_eq!(p.runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["gd", "sgd", "adam"]);
    assert_eq!(text(src, p.runs[1].span), "sgd");
    assert_eq!(text(src, p.span), "plot \"out/optimizers.png\" = [gd, sgd, adam]");
}

#[test]
fn precedence() {
    assert_eq!(shown("a + b * c"), "(a + (b * c))");
    assert_eq!(shown("a * b + c"), "((a * b) + c)");
    assert_eq!(shown("a - b - c"), "((a - b) - c)");
    assert_eq!(shown("a / b * c"), "((a / b) * c)");
    assert_eq!(shown("-x ** 2"), "(-(x ** 2))");
    assert_eq!(shown("a ** b ** c"), "(a ** (b ** c))");
    assert_eq!(shown("2 ** -x ** 2"), "(2 ** (-(x ** 2)))");
    assert_eq!(shown("- -x * y"), "((-(-x)) * y)");
    assert_eq!(shown("x |> f |> g"), "((x |> f) |> g)");
    assert_eq!(shown("x + 1 |> f"), "((x + 1) |> f)");
    assert_eq!(shown("a @ b + c"), "((a @ b) + c)");
    assert_eq!(shown("(a + b) * c"), "((a + b) * c)");
    assert_eq!(shown("m(x) |> f on d.test"), "((m(x) |> f) on d.test)");
    assert_eq!(shown("a.b.c(1)[0].d"), "a.b.c(1)[0].d");
    assert_eq!(shown("-f(x).y"), "(-f(x).y)");
    assert_eq!(shown("x - -1"), "(x - (-1))");
}

#[test]
fn binary_spans() {
    let (src, e) = expr_of("a + b * c");
    assert_eq!(text(&src, e.span), "a + b * c");
    let (op, lhs, rhs) = binary(&e);
    assert_eq!(op, BinOp::Add);
    assert_eq!(text(&src, lhs.span), "a");
    assert_eq!(text(&src, rhs.span), "b * c");

    let (src, e) = expr_of("-x ** 2");
    let ExprKind::Neg(inner) = &e.kind else { panic!("{e:?}") };
    assert_eq!(text(&src, e.span), "-x ** 2");
    assert_eq!(text(&src, inner.span), "x ** 2");
    assert_eq!(binary(inner).0, BinOp::Pow);

    let (src, e) = expr_of("x |> f |> g");
    let (op, lhs, rhs) = binary(&e);
    assert_eq!((op, name(rhs)), (BinOp::Pipe, "g"));
    assert_eq!(text(&src, lhs.span), "x |> f");

    let (src, e) = expr_of("( a + b ) * c");
    let (_, lhs, _) = binary(&e);
    assert_eq!(text(&src, lhs.span), "( a + b )");
    assert_eq!(text(&src, e.span), "( a + b ) * c");
}

#[test]
fn calls_of_calls() {
    let (src, e) = expr_of("grad(f)(x, y)");
    let (callee, args) = call(&e);
    assert_eq!(args.len(), 2);
    let (inner_callee, inner_args) = call(callee);
    assert_eq!(name(inner_callee), "grad");
    assert_eq!(name(&inner_args[0].value), "f");
    assert_eq!(text(&src, e.span), "grad(f)(x, y)");
    assert_eq!(text(&src, callee.span), "grad(f)");

    let (_, e) = expr_of("f(a, k: b + 1, j: [1, 2],)");
    let (_, args) = call(&e);
    let names: Vec<Option<&str>> = args.iter().map(|a| a.name.as_ref().map(|n| n.name.as_str())).collect();
    assert_eq!(names, [None, Some("k"), Some("j")]);
    assert_eq!(show(&args[1].value), "(b + 1)");
    assert_eq!(shown("f()"), "f()");
}

#[test]
fn indexing() {
    let (src, e) = expr_of("x[0:3, :, 2]");
    let ExprKind::Index { base, indices } = &e.kind else { panic!("{e:?}") };
    assert_eq!(name(base), "x");
    assert_eq!(text(&src, e.span), "x[0:3, :, 2]");
    assert_eq!(indices.len(), 3);
    let IndexItem::Range { start: Some(a), end: Some(b), span } = &indices[0] else { panic!() };
    assert_eq!((number(a).0, number(b).0, text(&src, *span)), (0.0, 3.0, "0:3"));
    assert!(matches!(&indices[1], IndexItem::Range { start: None, end: None, .. }));
    assert!(matches!(&indices[2], IndexItem::Single(e) if number(e) == (2.0, true)));
    assert_eq!(shown("x[:-1, 2:]"), "x[:(-1), 2:]");
    assert_eq!(shown("x[i + 1]"), "x[(i + 1)]");
    // At atom position brackets are a list, after an operand an index.
    assert_eq!(shown("[a, b][0]"), "[a, b][0]");
    assert_eq!(shown("f([a])"), "f([a])");
}

#[test]
fn lists_and_repeats() {
    let (src, e) = expr_of("[Block(4); 3]");
    let ExprKind::Repeat { item, count } = &e.kind else { panic!("{e:?}") };
    assert_eq!(show(item), "Block(4)");
    assert_eq!(number(count), (3.0, true));
    assert_eq!(text(&src, e.span), "[Block(4); 3]");
    assert!(matches!(expr_of("[]").1.kind, ExprKind::List(ref v) if v.is_empty()));
    assert_eq!(shown("[1, 2, 3,]"), "[1, 2, 3]");
    assert_eq!(shown("[[1, 2], [3, 4]]"), "[[1, 2], [3, 4]]");
}

#[test]
fn literals() {
    assert_eq!(number(&expr_of("1").1), (1.0, true));
    assert_eq!(number(&expr_of("2.5").1), (2.5, false));
    assert_eq!(number(&expr_of("1e-3").1), (1e-3, false));
    assert_eq!(number(&expr_of("3E2").1), (300.0, false));
    let (src, e) = expr_of(r#""a \"quoted\" \\ path""#);
    assert_eq!(e.kind, ExprKind::Str(r#"a "quoted" \ path"#.to_string()));
    assert_eq!(text(&src, e.span), r#""a \"quoted\" \\ path""#);
    // Names that merely start with a keyword, and words that are not reserved.
    assert_eq!(shown("trainer + on_x + in + out + int + float + i"), "((((((trainer + on_x) + in) + out) + int) + float) + i)");
}

#[test]
fn small_forms() {
    // Semicolons and commas as optional separators, comments anywhere.
    let src = "module M { a = f(1); fn g() = a /* c */ ; }; fn h(x: [], y: [2*d, (n+1)/2] int,) { let z = x; z; }\n\
               train t = Linear(3, 1) |> prep on d.train { epochs = 1, batch = 2; lr = 3 }";
    let program = parse_ok(src);
    assert_eq!(program.items.len(), 3);
    let Item::Module(m) = &program.items[0] else { panic!() };
    assert_eq!(m.members.len(), 2);
    let Member::Fn(g) = &m.members[1] else { panic!() };
    assert!(g.args.is_empty() && g.ret.is_none());
    let Item::Function(h) = &program.items[1] else { panic!() };
    assert!(matches!(&h.args[0].ty, TypeAnn::Tensor { dims, int: false, .. } if dims.is_empty()));
    let TypeAnn::Tensor { dims, int: true, .. } = &h.args[1].ty else { panic!() };
    assert_eq!(dims.iter().map(show).collect::<Vec<_>>(), ["(2 * d)", "((n + 1) / 2)"]);
    let Item::Train(t) = &program.items[2] else { panic!() };
    assert_eq!(show(&t.model), "(Linear(3, 1) |> prep)");
    assert_eq!(t.fields.len(), 3);
    assert_eq!(parse_ok("").items.len(), 0);
    assert_eq!(parse_ok("  // only a comment\n").items.len(), 0);
    let program = parse_ok("data d = csv(\"x\") { a = rows[..10], b = rows[10..] }");
    let Item::Data(d) = &program.items[0] else { panic!() };
    assert!(matches!(&d.splits[0].rows, RowSelect::Range { start: None, end: Some(_), .. }));
}

// ---------------------------------------------------------------- errors

fn parse_err(src: &str) -> Diagnostic {
    match parse(src) {
        Ok(p) => panic!("expected a syntax error in {src:?}, got {p:#?}"),
        Err(mut d) => {
            assert_eq!(d.len(), 1, "exactly one diagnostic for {src:?}: {d:#?}");
            d.remove(0)
        }
    }
}

fn primary(d: &Diagnostic) -> (Span, &str) {
    let l = d.labels.first().expect("a label");
    (l.span, l.message.as_str())
}

#[test]
fn error_missing_paren() {
    let src = "let y = f(1, 2\nlet z = 3";
    let d = parse_err(src);
    let (span, msg) = primary(&d);
    assert_eq!(d.title, "unexpected keyword `let`");
    assert_eq!(text(src, span), "let");
    assert_eq!(span.start, src.rfind("let").unwrap_or(0));
    assert_eq!(msg, "expected `,` or `)` here, found keyword `let`");

    // At end of file, the unclosed `(` is pointed out too.
    let src = "let y = f(1, 2";
    let d = parse_err(src);
    assert_eq!(d.title, "unexpected end of file");
    assert_eq!(primary(&d), (Span::new(src.len(), src.len()), "expected `,` or `)` here, found end of file"));
    assert_eq!(text(src, d.labels[1].span), "(");
}

#[test]
fn error_expected_expression() {
    let src = "let y = (1 + )";
    let d = parse_err(src);
    assert_eq!(d.title, "unexpected `)`");
    let (span, msg) = primary(&d);
    assert_eq!((span.start, text(src, span)), (13, ")"));
    assert_eq!(msg, "expected an expression here, found `)`");
}

#[test]
fn error_missing_eq_in_param() {
    let src = "module M {\n  param W: [3, 4] he_normal\n}";
    let d = parse_err(src);
    let (span, msg) = primary(&d);
    assert_eq!(text(src, span), "he_normal");
    assert_eq!(d.title, "unexpected `he_normal`");
    assert_eq!(msg, "expected `=` here, found `he_normal`");
}

#[test]
fn error_stray_token_at_top_level() {
    let src = "fn f(x: [3]) = x\n) let y = 2";
    let d = parse_err(src);
    let (span, msg) = primary(&d);
    assert_eq!((span.start, text(src, span)), (17, ")"));
    assert_eq!(d.title, "unexpected `)`");
    assert!(msg.starts_with("expected an item (`module`, `fn`"), "{msg}");
    assert!(msg.ends_with("here, found `)`"), "{msg}");

    let src = "42";
    let d = parse_err(src);
    assert_eq!(text(src, primary(&d).0), "42");
}

#[test]
fn error_unterminated_string() {
    let src = "report \"test MSE = mse(a, b)\nlet x = 1";
    let d = parse_err(src);
    assert_eq!(d.title, "unterminated string");
    let (span, msg) = primary(&d);
    assert_eq!(text(src, span), "\"test MSE = mse(a, b)");
    assert_eq!(msg, "this string is never closed");

    let src = "let s = csv(\"abc";
    let d = parse_err(src);
    assert_eq!(d.title, "unterminated string");
    assert_eq!(text(src, primary(&d).0), "\"abc");
}

#[test]
fn error_unclosed_brace_at_eof() {
    let src = "module Mlp {\n  l1 = Linear(64, 256)\n  fn forward(x: [B, 64]) -> [B, 10] = l1(x)\n";
    let d = parse_err(src);
    assert_eq!(d.title, "unexpected end of file");
    let (span, msg) = primary(&d);
    assert_eq!(text(src, span), "module Mlp {");
    assert_eq!(msg, "expected `}` to close the module `Mlp` that starts here");
    assert_eq!(d.labels[1].span, Span::new(src.len(), src.len()));

    let src = "module M {\n  fn f(x: [3]) -> [3] {\n    let y = x\n    y\n";
    let d = parse_err(src);
    let (span, msg) = primary(&d);
    assert_eq!(text(src, span), "fn f(x: [3]) -> [3] {");
    assert_eq!(msg, "expected `}` to close the body of function `f` that starts here");

    let src = "train m = Mlp on digits.train {\n  epochs = 3\n";
    let d = parse_err(src);
    let (span, msg) = primary(&d);
    assert_eq!(text(src, span), "train m = Mlp on digits.train {");
    assert_eq!(msg, "expected `}` to close the training run `m` that starts here");

    let src = "data d = csv(\"x\", standardize: train) {\n  train = rows[0..10]\n";
    let d = parse_err(src);
    let (span, msg) = primary(&d);
    assert_eq!(text(src, span), "data d = csv(\"x\", standardize: train) {");
    assert_eq!(msg, "expected `}` to close the data definition `d` that starts here");
}

#[test]
fn error_keyword_as_name() {
    let src = "let module = 1";
    let d = parse_err(src);
    assert_eq!(d.title, "expected a name, found keyword `module`");
    let (span, msg) = primary(&d);
    assert_eq!((span.start, text(src, span)), (4, "module"));
    assert_eq!(msg, "`module` is a reserved keyword and cannot be used as a name");

    let src = "fn f(on: [3]) = on";
    let d = parse_err(src);
    assert_eq!(text(src, primary(&d).0), "on");
    assert_eq!(d.title, "expected a name, found keyword `on`");
}

#[test]
fn error_misc_messages() {
    let cases: &[(&str, &str, &str)] = &[
        ("fn f(x: [3]) x", "x", "expected `->`, `=` or `{` here, found `x`"),
        ("fn f(x) = x", ")", "expected `:` here, found `)`"),
        ("fn f(x: 3) = x", "3", "expected a type such as `[B, 64]` here, found `3`"),
        ("module M(n: double) { }", "double", "expected `int` or `float` here, found `double`"),
        ("module M { 3 }", "3", "expected a module member (`param`, `fn` or `name = ...`) or `}` here, found `3`"),
        ("data d = csv(\"x\") { a = 3 }", "3", "expected `rows` here, found `3`"),
        ("data d = csv(\"x\") { a = rows where i % 2 = 1 }", "=", "expected `==` or `!=` here, found `=`"),
        ("train m = Mlp { }", "{", "expected `on` here, found `{`"),
        ("let x = [1, 2", "", "expected `,` or `]` here, found end of file"),
        ("plot \"p.png\" = [a, 3]", "3", "expected a name or `]` here, found `3`"),
        (
            "let x = a on b on c",
            "on",
            "expected an item (`module`, `fn`, `data`, `train`, `let`, `report` or `plot`) here, found keyword `on`",
        ),
    ];
    for (src, found, message) in cases {
        let d = parse_err(src);
        let (span, msg) = primary(&d);
        assert_eq!((text(src, span), msg), (*found, *message), "for {src:?}: {d:#?}");
    }
    let d = parse_err("let s = \"a\\qb\"");
    assert_eq!(d.title, "unknown escape `\\q` in string");
    let d = parse_err("let s = 1 /* never closed");
    assert_eq!(d.title, "unterminated block comment");
}

#[test]
fn too_deep_is_an_error_not_a_crash() {
    let deep = format!("let x = {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(parse_err(&deep).title, "brackets are nested too deeply");
    let negs = format!("let x = {}1", "-".repeat(100_000));
    assert_eq!(parse_err(&negs).title, "expression is nested too deeply");
    let chain = format!("let x = 1{}", " + 1".repeat(100_000));
    assert_eq!(parse_err(&chain).title, "expression is nested too deeply");
    let pows = format!("let x = 2{}", " ** 2".repeat(100_000));
    assert_eq!(parse_err(&pows).title, "expression is nested too deeply");
    let calls = format!("let x = f{}", "()".repeat(100_000));
    assert_eq!(parse_err(&calls).title, "expression is nested too deeply");
    // Moderate nesting is fine, on a small stack too.
    let ok = format!("let x = {}1{}", "(".repeat(60), ")".repeat(60));
    let handle = std::thread::Builder::new().stack_size(1 << 20).spawn(move || parse(&ok).is_ok());
    assert!(handle.expect("spawn").join().expect("no crash"));
}

/// A tiny deterministic generator (no dependencies).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn never_panics() {
    // Every prefix of the example (at char boundaries) parses or yields one diagnostic
    // whose spans lie inside the text.
    let check = |src: &str| match parse(src) {
        Ok(_) => {}
        Err(ds) => {
            assert_eq!(ds.len(), 1, "{src:?}");
            for l in &ds[0].labels {
                assert!(l.span.start <= l.span.end && l.span.end <= src.len(), "{src:?}: {:?}", ds[0]);
                assert!(src.is_char_boundary(l.span.start) && src.is_char_boundary(l.span.end), "{src:?}");
            }
            assert!(!ds[0].title.is_empty());
            assert_ne!(ds[0].title, "internal parser error", "{src:?}: {:?}", ds[0]);
        }
    };
    for (i, _) in EXAMPLE.char_indices() {
        check(&EXAMPLE[..i]);
        check(&EXAMPLE[i..]);
    }
    // Random garbage from the language's alphabet, and random edits of the example.
    let alphabet: Vec<char> = "()[]{}<>,;:.=+-*/@|!%\"\\ \n\tazAZ_09ié#\u{0}".chars().collect();
    let words = [
        "module", "fn", "let", "train", "on", "rows", "where", "param", "data", "x", "1", "2.5", "\"s\"", "//", "/*", "*/", "**", "|>",
        "->", "..",
    ];
    let mut rng = Lcg(12345);
    for _ in 0..3000 {
        let len = (rng.next() % 40) as usize;
        let mut s = String::new();
        for _ in 0..len {
            if rng.next().is_multiple_of(3) {
                s.push_str(words[(rng.next() as usize) % words.len()]);
                s.push(' ');
            } else {
                s.push(alphabet[(rng.next() as usize) % alphabet.len()]);
            }
        }
        check(&s);
    }
    let chars: Vec<char> = EXAMPLE.chars().collect();
    for _ in 0..300 {
        let mut c = chars.clone();
        for _ in 0..3 {
            let at = (rng.next() as usize) % c.len();
            match rng.next() % 3 {
                0 => {
                    c.remove(at);
                }
                1 => c.insert(at, alphabet[(rng.next() as usize) % alphabet.len()]),
                _ => {
                    let other = (rng.next() as usize) % c.len();
                    c.swap(at, other)
                }
            }
        }
        check(&c.into_iter().collect::<String>());
    }
}

#[test]
fn diagnostics_render() {
    let src = "let y = (1 + )";
    let out = nnc_compiler::diagnostic::render(&[parse_err(src)], "t.nn", src, false);
    assert!(out.contains("unexpected `)`"), "{out}");
    assert!(out.contains("expected an expression here, found `)`"), "{out}");
}

#[test]
fn spans_exclude_trailing_comments() {
    let src = "module M {\n  param W: [3] = normal(0.02) // init\n  s = [Block(4); 3] /* stack */\n}\n\
               let y = x[0:3 , 1] // trailing\n";
    let program = parse_ok(src);
    let Item::Module(m) = &program.items[0] else { panic!() };
    let Member::Param(w) = &m.members[0] else { panic!() };
    assert_eq!(text(src, w.span), "param W: [3] = normal(0.02)");
    assert_eq!(text(src, w.init.span), "normal(0.02)");
    let Member::Sub(s) = &m.members[1] else { panic!() };
    assert_eq!(text(src, s.span), "s = [Block(4); 3]");
    assert!(text(src, m.span).ends_with("/* stack */\n}"));
    let Item::Let(y) = &program.items[1] else { panic!() };
    assert_eq!(text(src, y.span), "let y = x[0:3 , 1]");
    let ExprKind::Index { indices, .. } = &y.value.kind else { panic!() };
    let IndexItem::Range { span, .. } = &indices[0] else { panic!() };
    assert_eq!(text(src, *span), "0:3");
}

#[test]
fn error_block_without_result() {
    let src = "fn f(x: [3]) -> [3] {\n  let y = x\n}";
    let d = parse_err(src);
    assert_eq!(text(src, primary(&d).0), "}");
    assert_eq!(primary(&d).1, "expected `let` or an expression here, found `}`");
    assert_eq!(d.notes.len(), 1);
}
