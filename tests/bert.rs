//! The masked language model end to end (issue 5), through the real `nnc`
//! binary: `examples/bert_mlm.nn` trains a BERT-style encoder on Shakespeare
//! with 15 % of the characters masked, whose masked-character accuracy must be
//! far above the unigram baseline (the most frequent character's share), and
//! then a small head on the frozen encoder's features, which must spot typos
//! far better than the same head on an untrained encoder or on the characters.

use std::collections::HashMap;
use std::io::Read;

mod common;
use common::{metric, root, run_json};

/// The example's windows: 64 characters each, validation rows 66827..68827.
const CONTEXT: usize = 64;
const VALID: std::ops::Range<usize> = 66827..68827;
const TRAIN_ROWS: usize = 30000;

fn corpus() -> Vec<char> {
    let raw = std::fs::read(root().join("examples/data/shakespeare.txt.gz")).expect("corpus");
    let mut text = String::new();
    flate2::read::GzDecoder::new(raw.as_slice()).read_to_string(&mut text).expect("gzip text");
    text.chars().collect()
}

fn counts(chars: &[char]) -> HashMap<char, usize> {
    let mut counts = HashMap::new();
    for &c in chars {
        *counts.entry(c).or_default() += 1;
    }
    counts
}

/// The unigram baseline: the entropy (nats per character) of the training
/// text's character frequencies, and the accuracy on the validation text of
/// always guessing its most frequent character. The masked positions are a
/// uniform sample of the validation text, so these are what a model that
/// ignores the context gets on them.
fn unigram_baseline(text: &[char]) -> (f64, f64) {
    let train = counts(&text[..TRAIN_ROWS * CONTEXT]);
    let n = (TRAIN_ROWS * CONTEXT) as f64;
    let entropy = train.values().map(|&k| k as f64 / n).map(|p| -p * p.ln()).sum();
    let (&top, _) = train.iter().max_by_key(|(_, &k)| k).expect("characters");
    let valid = &text[VALID.start * CONTEXT..VALID.end * CONTEXT];
    let accuracy = valid.iter().filter(|&&c| c == top).count() as f64 / valid.len() as f64;
    (entropy, accuracy)
}

#[test]
fn bert_mlm_beats_the_unigram_baseline_and_its_features_spot_typos() {
    let (entropy, top_share) = unigram_baseline(&corpus());
    assert!((3.0..3.5).contains(&entropy) && (0.1..0.2).contains(&top_share), "entropy {entropy}, top share {top_share}");
    let started = std::time::Instant::now();
    let v = run_json("examples/bert_mlm.nn");
    let seconds = started.elapsed().as_secs_f64();

    let (bert_loss, bert_acc) = (metric(&v, "bert", "loss on"), metric(&v, "bert", "accuracy on"));
    let (uni_loss, uni_acc) = (metric(&v, "unigram", "loss on"), metric(&v, "unigram", "accuracy on"));
    let (probe, random, chars) =
        (metric(&v, "probe", "accuracy on"), metric(&v, "random", "accuracy on"), metric(&v, "chars", "accuracy on"));
    eprintln!(
        "bert_mlm ({seconds:.0} s): masked accuracy {bert_acc:.4} (unigram run {uni_acc:.4}, most frequent character {top_share:.4}), \
         validation loss {bert_loss:.4} (unigram run {uni_loss:.4}, unigram entropy {entropy:.4}); \
         typos: probe {probe:.4}, untrained encoder {random:.4}, characters {chars:.4}"
    );

    // The in-file baseline is the unigram model it claims to be: its masked
    // accuracy is the most frequent character's share of the held-out text.
    assert!((uni_acc - top_share).abs() < 0.015, "unigram run {uni_acc} vs most frequent character {top_share}");
    assert!(uni_loss > entropy - 0.05, "a context-free model cannot beat the unigram entropy: {uni_loss} vs {entropy}");
    // "Clearly above": more than twice the baseline's accuracy, and a loss at
    // most 75 % of the unigram entropy.
    assert!(bert_acc > 2.0 * top_share, "masked accuracy {bert_acc} vs unigram baseline {top_share}");
    assert!(bert_loss < 0.75 * entropy, "validation loss {bert_loss} vs unigram entropy {entropy}");

    // Feature extraction: windows with typos hold the same characters as
    // intact ones, so the character head is at chance (2,000 test windows: a
    // standard error of 1.1 points); the trained features beat both baselines
    // by ten points or more.
    assert!((0.45..0.55).contains(&chars), "the character head should be at chance: {chars}");
    assert!(probe > 0.6, "head on the MLM features: {probe}");
    assert!(probe > random.max(chars) + 0.1, "head on the MLM features {probe} vs untrained encoder {random}, characters {chars}");
}

/// `nnc sample` continues text with a next-token model; a masked language
/// model's extra `[MASK]` logit makes it something else: an error, not text.
#[test]
fn sampling_from_the_masked_language_model_is_an_error() {
    let args = ["sample", "examples/bert_mlm.nn", "--model", "bert", "--checkpoint", "bert.safetensors", "--prompt", "ROMEO"];
    let out = common::nnc(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`bert` is not a next-token model") && stderr.contains("[B, 64, 83]"), "{stderr}");
}
