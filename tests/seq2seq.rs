//! The encoder–decoder family end to end (issue 5), through the real `nnc`
//! binary: `examples/seq2seq.nn` trains a Transformer with cross-attention to
//! reverse digit strings of 8 to 12 digits, and decodes the held-out strings
//! token by token, greedily and with beam search, to at least 95 % exact
//! match; misusing the decoding metric is an error, not a panic.

mod common;
use common::{metric, nnc, root, run_json};

/// `"7295260243 → 3420625927  ✓"`: the source and output digits, and whether
/// the line says they match.
fn parse_decode(line: &str) -> (String, String, bool) {
    let (source, rest) = line.split_once(" → ").unwrap_or_else(|| panic!("no arrow in {line:?}"));
    let output = rest.split("  ").next().unwrap_or_default();
    (source.to_string(), output.to_string(), rest.contains('✓'))
}

#[test]
fn seq2seq_reverses_held_out_digit_strings() {
    let v = run_json("examples/seq2seq.nn");
    let greedy = metric(&v, "s2s", "exact_match(greedy) on reversal.test");
    let beam = metric(&v, "s2s", "exact_match(beam: 4) on reversal.test");
    let loss = metric(&v, "s2s", "loss on reversal.test");
    eprintln!(
        "seq2seq: held-out exact match greedy {:.2} %, beam (width 4) {:.2} %, test loss {loss:.4}, training {:.1} s",
        greedy * 100.0,
        beam * 100.0,
        v["runs"]["s2s"]["train_seconds"].as_f64().unwrap_or(f64::NAN)
    );
    assert!(greedy >= 0.95, "greedy exact match {greedy} is below the 95 % bar");
    assert!(beam >= greedy, "beam search ({beam}) does worse than greedy decoding ({greedy})");
    // The run prints its first held-out rows as each decoding read them.
    let decodes = v["runs"]["s2s"]["decodes"].as_object().expect("decodes in the JSON summary");
    assert_eq!(decodes.len(), 2, "{decodes:?}");
    for (label, rows) in decodes {
        let rows = rows.as_array().expect("a list of rows");
        assert_eq!(rows.len(), 4, "{label}");
        eprintln!("{label}:");
        for row in rows {
            let line = row.as_str().expect("a line");
            eprintln!("  {line}");
            let (source, output, ok) = parse_decode(line);
            assert!((8..=12).contains(&source.len()) && source.bytes().all(|b| b.is_ascii_digit()), "{line}");
            let reversed: String = source.chars().rev().collect();
            assert_eq!(ok, output == reversed, "the mark disagrees with the digits: {line}");
        }
    }
}

/// `exact_match` on data without target sequences is a diagnostic at the
/// metric (exit status 1), never a panic; the golden files in `tests/ui`
/// hold the full text of this and the other sequence-to-sequence mistakes.
#[test]
fn exact_match_on_class_labels_is_an_error() {
    let out = nnc(&["check", "tests/ui/exact_match_without_target_sequences.nn"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("decodes target sequences, but `digits` has none"), "{stderr}");
    assert!(stderr.contains("exact_match_without_target_sequences.nn:19:"), "the error points at the metric:\n{stderr}");
    assert!(root().join("tests/ui/exact_match_without_target_sequences.stderr").exists());
}
