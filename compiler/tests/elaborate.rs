//! Elaboration semantics that are easy to get subtly wrong: argument binding,
//! constants, literals, and what a training loss may read.

use nnc_compiler::elaborate::{DataShape, Session};
use nnc_compiler::ir::DType;
use nnc_compiler::syntax;

fn digits() -> DataShape {
    DataShape {
        features: 64,
        features_int: false,
        label_int: true,
        classes: Some(10),
        label_width: None,
        splits: vec![("train".into(), 100), ("test".into(), 20)],
        seq2seq: None,
    }
}

/// Build the plan of the program's first train block (data shaped like digits).
fn plan_error(src: &str) -> Option<String> {
    let program = syntax::parse(src).unwrap();
    let mut s = Session::new(&program).unwrap();
    s.add_data("digits", digits());
    for item in &program.items {
        if let nnc_compiler::ast::Item::Let(l) = item {
            s.add_const(&l.name.name, &l.value);
        }
        if let nnc_compiler::ast::Item::Train(t) = item {
            return s.train_plan(t).err().map(|d| d[0].title.clone());
        }
    }
    None
}

const HEADER: &str = "data digits = csv(\"unused.csv\", label: \"label\") { train = rows[0..100]  test = rows[100..] }\n";

#[test]
fn module_arguments_bind_by_name() {
    let src = format!(
        "{HEADER}module Linear(in: int, out: int) {{ param W: [in, out] = zeros  fn forward(x: [B, in]) -> [B, out] = x @ W }}
         train m = Linear(out: 10, in: 64) on digits.train {{ loss = cross_entropy  optimizer = sgd(lr: 0.1)  batch = 10  epochs = 1 }}"
    );
    assert_eq!(plan_error(&src), None);
}

#[test]
fn top_level_constants_work_in_annotations_and_settings() {
    let src = format!(
        "{HEADER}let width = 16
         let rate = 1 / 10
         let steps = width * 2
         module Net {{ param W: [64, width] = zeros  param V: [width, 10] = zeros
           fn forward(x: [B, 64]) -> [B, 10] {{ let h: [B, width] = x @ W; h @ V }} }}
         train m = Net on digits.train {{ loss = cross_entropy  optimizer = sgd(lr: rate)  batch = steps  epochs = 1 }}"
    );
    assert_eq!(plan_error(&src), None);
    // The annotation `[B, width]` is a constant 16, not a fresh shape variable.
    let bad = src.replace("let h: [B, width] = x @ W", "let h: [B, width] = concat([x @ W, x @ W], 1)");
    let err = plan_error(&bad).expect("a width mismatch");
    assert!(err.contains("[B, 32]") && err.contains("[B, 16]"), "{err}");
}

#[test]
fn a_loss_cannot_read_data_outside_its_batch() {
    let src = format!(
        "{HEADER}module Net {{ param W: [64, 10] = zeros  fn forward(x: [B, 64]) -> [B, 10] = x @ W }}
         fn leaky(m: Net, x: [B, 64], y: [B] int) -> scalar = cross_entropy(m(x), y) + mean(digits.test.x)
         train m = Net on digits.train {{ loss = leaky  optimizer = sgd(lr: 0.1)  batch = 10  epochs = 1 }}"
    );
    let err = plan_error(&src).expect("an error");
    assert!(err.contains("digits.test.x") && err.contains("not part of a training batch"), "{err}");
}

#[test]
fn literals_with_one_float_are_float() {
    let program = syntax::parse("fn f(x: [2]) -> [2] = x * [1, 2.5]\nfn g(x: [2]) -> scalar = sum([1, 2.5])").unwrap();
    let s = Session::new(&program).unwrap();
    let ty = nnc_compiler::ir::TensorType::f32(nnc_compiler::ir::Shape::known(&[2]));
    for f in ["f", "g"] {
        let g = s.function_graph(f, std::slice::from_ref(&ty)).unwrap();
        assert_eq!(g.ty(g.outputs[0]).dtype, DType::F32, "{f}");
    }
}

#[test]
fn a_module_constant_names_its_axis() {
    // `out` is 10 here; read as a number it would be an axis out of range.
    let src = format!(
        "{HEADER}module M(out: int) {{ param W: [64, out] = zeros
           fn forward(x: [B, 64]) -> [B, out] {{ let h: [B, out] = x @ W; h - sum(h, out, keepdims: 1) }} }}
         train m = M(10) on digits.train {{ loss = cross_entropy  optimizer = sgd(lr: 0.1)  batch = 10  epochs = 1 }}"
    );
    assert_eq!(plan_error(&src), None);
}

/// A sequence-to-sequence model: `forward(source, decoder_input)`, decoded by
/// `exact_match`, whose spellings give these labels; bad spellings are refused.
#[test]
fn exact_match_metrics_and_the_decoder_input() {
    let pairs = DataShape {
        features: 5,
        features_int: true,
        label_int: true,
        classes: Some(13),
        label_width: Some(6),
        splits: vec![("train".into(), 100), ("test".into(), 20)],
        seq2seq: Some(nnc_compiler::elaborate::Seq2Seq { pad: 0, bos: 1, eos: 2 }),
    };
    let src = |metrics: &str| {
        format!(
            "data pairs = digit_task(reverse, length: [2, 4], count: 120) {{ train = rows[..100]  test = rows[100..] }}
             module Copy {{ param E: [13, 8] = zeros  param W: [8, 13] = zeros
               fn forward(src: [B, 5] int, tgt: [B, 5] int) -> [B, 5, 13] = (embedding(src, E) + embedding(tgt, E)) @ W }}
             fn loss(m: Copy, x: [B, 5] int, y: [B, 6] int) -> scalar = cross_entropy(m(x, y[:, :-1]), y[:, 1:])
             train m = Copy on pairs.train {{ loss = loss  optimizer = adam  batch = 10  epochs = 1  metrics = [{metrics}] }}"
        )
    };
    let plan = |metrics: &str| {
        let program = syntax::parse(&src(metrics)).unwrap();
        let mut s = Session::new(&program).unwrap();
        s.add_data("pairs", pairs.clone());
        let train = program.items.iter().find_map(|i| match i {
            nnc_compiler::ast::Item::Train(t) => Some(t),
            _ => None,
        });
        s.train_plan(train.unwrap()).map_err(|d| d[0].title.clone())
    };
    let ok = plan("exact_match(greedy) on pairs.test, exact_match(beam: 4) on pairs.test, exact_match(beam: 2, alpha: 0.5) on pairs.test")
        .expect("a plan");
    let labels: Vec<String> = ok.metrics.iter().map(|m| m.label()).collect();
    assert_eq!(
        labels,
        ["exact_match(greedy) on pairs.test", "exact_match(beam: 4) on pairs.test", "exact_match(beam: 2, alpha: 0.5) on pairs.test"]
    );
    let decoder = ok.forward_graph.input("decoder_input").expect("the forward takes the decoder input");
    assert_eq!(ok.forward_graph.ty(decoder).dtype, DType::I32);
    assert_eq!(ok.forward_graph.shape(decoder).to_string(), "[B, 5]");
    // Numbers outside their range are refused by the range table's rule.
    for (bad, why) in [
        ("exact_match(beam: 0)", "`beam` of `exact_match` must be a whole number from 1 to 256, found 0"),
        ("exact_match(beam: 1000)", "`beam` of `exact_match` must be a whole number from 1 to 256, found 1000"),
        ("exact_match(beam: 4, alpha: -1)", "`alpha` of `exact_match` must be a number of at least 0, found -1"),
    ] {
        let err = plan(&format!("{bad} on pairs.test")).expect_err(bad);
        assert_eq!(err, why, "{bad}");
    }
    for bad in ["exact_match(top_k: 3)", "exact_match(greedy, beam: 2)"] {
        let err = plan(&format!("{bad} on pairs.test")).expect_err(bad);
        assert_eq!(err, "`exact_match` decodes with `greedy` or `beam: WIDTH`", "{bad}");
    }
}
