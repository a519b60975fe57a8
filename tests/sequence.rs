//! The sequence family end to end (issue 5), through the real `nnc` binary:
//! a character-level GPT trains on the Shakespeare corpus to a validation loss
//! well below the corpus' unigram entropy, `nnc sample` continues a prompt with
//! each strategy, the same with byte-pair tokens and rotary positions, and an
//! id outside an embedding table is an error at its line.

use std::collections::HashMap;
use std::io::Read;

mod common;
use common::{metric, nnc, root, run_json};

fn corpus() -> String {
    let raw = std::fs::read(root().join("examples/data/shakespeare.txt.gz")).expect("corpus");
    let mut text = String::new();
    flate2::read::GzDecoder::new(raw.as_slice()).read_to_string(&mut text).expect("gzip text");
    text
}

/// The entropy (nats per character) of the corpus' character frequencies: the
/// loss of the best model that ignores context.
fn unigram_entropy(text: &str) -> f64 {
    let mut counts: HashMap<char, usize> = HashMap::new();
    for c in text.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let n = text.chars().count() as f64;
    counts.values().map(|&k| k as f64 / n).map(|p| -p * p.ln()).sum()
}

/// Train `file`'s run `name`, print its validation figures, and require its
/// validation loss to be "well below" the unigram entropy: at most 70 % of it
/// (about 1 nat less).
fn trains_below_unigram(file: &str, name: &str, unigram: f64) {
    let v = run_json(file);
    let loss = metric(&v, name, "loss on");
    eprintln!("{file}: validation loss {loss:.4} nats/char, accuracy {:.4}; unigram entropy {unigram:.4}", metric(&v, name, "accuracy on"));
    assert!(loss < 0.7 * unigram, "validation loss {loss} nats/char vs unigram entropy {unigram}");
}

/// `nnc sample` from `example`'s checkpoint (`examples/EXAMPLE.nn`): the text it prints.
fn sample(example: &str, prompt: &str, tokens: usize, strategy: &str, seed: &str, extra: &[&str]) -> String {
    let (file, ckpt) = (format!("examples/{example}.nn"), format!("examples/{example}.safetensors"));
    let tokens = tokens.to_string();
    let args = ["sample", &file, "--checkpoint", &ckpt, "--prompt", prompt, "--tokens", &tokens, "--strategy", strategy, "--seed", seed];
    let out = nnc(&[&args[..], extra].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nnc sample --strategy {strategy} {extra:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string()
}

#[test]
fn gpt_charlm_learns_and_samples() {
    let text = corpus();
    let unigram = unigram_entropy(&text);
    assert!((3.0..3.5).contains(&unigram), "unigram entropy {unigram}");
    trains_below_unigram("examples/gpt_charlm.nn", "gpt", unigram);

    let prompt = "ROMEO:\n";
    let mut outputs = Vec::new();
    for strategy in ["greedy", "temperature", "top-k", "greedy", "beam"] {
        let continuation = sample("gpt_charlm", prompt, 120, strategy, "3", &[]);
        assert!(continuation.starts_with(prompt), "{strategy}: {continuation:?}");
        assert_eq!(continuation.chars().count(), prompt.chars().count() + 120, "{strategy}: {continuation:?}");
        assert!(continuation.chars().all(|c| text.contains(c)), "{strategy}: characters outside the corpus");
        outputs.push(continuation);
    }
    assert_eq!(outputs[0], outputs[3], "greedy decoding is deterministic");
    // The key/value cache changes the cost of a token, not the text.
    for (strategy, cached) in [("greedy", &outputs[0]), ("beam", &outputs[4])] {
        assert_eq!(&sample("gpt_charlm", prompt, 120, strategy, "3", &["--no-cache"]), cached, "{strategy} with and without the cache");
    }
    assert_ne!(outputs[0], outputs[1], "temperature sampling differs from greedy");
    for (strategy, sample) in ["greedy", "temperature", "top-k", "greedy", "beam"].iter().zip(&outputs) {
        eprintln!("--- {strategy}:\n{sample}");
    }
}

/// The recurrent counterpart: an LSTM (a `scan` trained by backpropagation
/// through time) on the same windows, steps and split as the GPT above.
#[test]
fn lstm_charlm_learns_and_samples() {
    let text = corpus();
    let unigram = unigram_entropy(&text);
    trains_below_unigram("examples/lstm_charlm.nn", "lstm", unigram);
    let mut samples = Vec::new();
    let prompt = "JULIET:\n";
    // Beam search moves between hypotheses: the cached recurrent states must be restored.
    for (strategy, cache) in [("greedy", true), ("greedy", false), ("temperature", true), ("beam", true), ("beam", false)] {
        let no_cache: &[&str] = if cache { &[] } else { &["--no-cache"] };
        let continuation = sample("lstm_charlm", prompt, 50, strategy, "5", no_cache);
        assert!(continuation.starts_with(prompt), "{strategy}: {continuation:?}");
        assert_eq!(continuation.chars().count(), prompt.chars().count() + 50, "{strategy}: {continuation:?}");
        eprintln!("--- lstm {strategy} (cache: {cache}):\n{continuation}");
        samples.push(continuation);
    }
    assert_eq!(samples[0], samples[1], "greedy with and without the cached state");
    assert_eq!(samples[3], samples[4], "beam search with and without the cached states");
}

/// The subword counterpart (`examples/gpt_bpe.nn`): byte-pair tokens learned
/// from the corpus and rotary positions. Its loss is per token; per character
/// (divided by the characters per token of the same tokenizer, rebuilt here
/// from the file) it must clear the character models' bar, and it must beat
/// the tokens' own unigram entropy by a nat. Sampling rotates each new query
/// and key by its own position: the cached and uncached texts agree.
#[test]
fn gpt_bpe_learns_and_samples() {
    let text = corpus();
    let vocab = nnc_runtime::text::Vocab::bpe_of(&text, 512);
    assert_eq!(vocab.len(), 512);
    let ids = vocab.encode(&text).expect("the corpus encodes");
    assert_eq!(vocab.decode(&ids), text, "BPE round-trips the corpus");
    let chars_per_token = text.chars().count() as f64 / ids.len() as f64;
    let mut counts = vec![0usize; vocab.len()];
    ids.iter().for_each(|&i| counts[i as usize] += 1);
    let n = ids.len() as f64;
    let token_unigram: f64 = counts.iter().filter(|&&k| k > 0).map(|&k| k as f64 / n).map(|p| -p * p.ln()).sum();

    let v = run_json("examples/gpt_bpe.nn");
    let loss = metric(&v, "gpt", "loss on");
    let per_char = loss / chars_per_token;
    eprintln!(
        "gpt_bpe: validation loss {loss:.4} nats/token = {per_char:.4} nats/char ({} tokens, {chars_per_token:.3} chars/token), \
         accuracy {:.4}; token unigram entropy {token_unigram:.4}, character unigram {:.4}",
        ids.len(),
        metric(&v, "gpt", "accuracy on"),
        unigram_entropy(&text)
    );
    // "Well below" as for the characters: a nat under the best context-free model.
    assert!(loss < token_unigram - 1.0, "validation loss {loss} nats/token vs the tokens' unigram entropy {token_unigram}");
    assert!(per_char < 0.7 * unigram_entropy(&text), "validation loss {per_char} nats/char");

    let prompt = "ROMEO:\n";
    let mut outputs = Vec::new();
    for (strategy, extra) in
        [("greedy", &[][..]), ("greedy", &["--no-cache"][..]), ("top-k", &[][..]), ("beam", &[][..]), ("beam", &["--no-cache"][..])]
    {
        // Past the 64-token window: the oldest tokens drop out as the text grows.
        let continuation = sample("gpt_bpe", prompt, 80, strategy, "7", extra);
        assert!(continuation.starts_with(prompt), "{strategy}: {continuation:?}");
        let added = &continuation[prompt.len()..];
        assert!(vocab.encode(added).is_ok(), "{strategy}: characters outside the corpus: {added:?}");
        // 80 tokens of one to a dozen characters each.
        assert!((80..=960).contains(&added.chars().count()), "{strategy}: {continuation:?}");
        eprintln!("--- gpt_bpe {strategy} {extra:?}:\n{continuation}");
        outputs.push(continuation);
    }
    assert_eq!(outputs[0], outputs[1], "greedy with and without the key/value cache");
    assert_eq!(outputs[3], outputs[4], "beam search with and without the key/value cache");
}

/// A table with fewer rows than the vocabulary: the first lookup of a larger
/// id stops training with an error at the `embedding` call, never a wild read.
#[test]
fn an_id_outside_the_table_is_an_error_at_its_line() {
    let dir = std::env::temp_dir().join(format!("nnc-seq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let corpus = root().join("examples/data/shakespeare.txt.gz");
    let file = dir.join("small_table.nn");
    let source = format!(
        "module Lm {{\n  param E: [10, 8] = normal(std: 0.1)\n  param W: [8, 82] = zeros\n  fn forward(ids: [B, 16] int) -> [B, 16, 82] = embedding(ids, E) @ W\n}}\n\
         data text = text(\"{}\", context: 16) {{ train = rows[..64] }}\n\
         train lm = Lm on text.train {{ loss = cross_entropy, optimizer = sgd(lr: 0.1), batch = 8, epochs = 1 }}\n",
        corpus.display()
    );
    std::fs::write(&file, source).expect("write");
    let out = nnc(&["run", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("out of range") && stderr.contains("rows 0..10"), "{stderr}");
    assert!(stderr.contains("small_table.nn:4:"), "the error points at the lookup's line:\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
