//! `nnc sample`: text generation with a trained language model.
//!
//! The model is the file's `train` block over a text data set, with its
//! parameters from a checkpoint; the tokenizer is rebuilt from the same data
//! declaration, so ids mean what they meant in training. The model's forward
//! function maps a window `[1, T]` of ids to next-token logits `[1, T, V]`;
//! the logits at the last filled position pick the next token.
//!
//! With causal attention a position sees only itself and earlier positions, so
//! a window shorter than `T` is padded on the right and the padding cannot
//! change the logits read. While the text fits the window, each new token runs
//! a step graph for its position only, from cached keys and values (or the
//! recurrent state) of the earlier positions (`incremental`); past the window the
//! compiled forward function runs over the last `T` tokens (absolute learned
//! positions shift, so nothing can be reused).

use crate::check::plans_and_data;
use crate::dataset::Dataset;
use crate::exec::Exec;
use crate::incremental::Incremental;
use crate::resume::load_params;
use crate::rng;
use crate::text::Vocab;
use nnc_compiler::ast::Program;
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::train::TrainPlan;
use nnc_compiler::ir::{Dim, SizeEnv};
use std::path::Path;

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// The most likely token.
    Greedy,
    /// A draw from softmax(logits / temperature).
    Temperature(f64),
    /// A draw from the `k` most likely tokens, renormalised, at `temperature`.
    TopK { k: usize, temperature: f64 },
    /// The most likely whole continuation found by beam search of this width
    /// (see `beam_search`).
    Beam { width: usize },
}

pub struct SampleOptions<'a> {
    /// The `train` block whose model generates (needed when there are several).
    pub model: Option<&'a str>,
    pub checkpoint: &'a Path,
    pub prompt: &'a str,
    pub tokens: usize,
    pub strategy: Strategy,
    pub seed: u64,
    /// Decode one position at a time from cached keys and values where the model allows it.
    pub cache: bool,
}

/// A model ready to generate: compiled forward function, tokenizer, window length.
pub struct Generator {
    exec: Exec,
    pub vocab: Vocab,
    context: usize,
    /// One position per run from cached keys and values (or states), while the
    /// text fits the window; `Err` says why the model cannot (then every token
    /// runs the whole window).
    pub incremental: Result<Incremental, String>,
}

fn error(title: impl Into<String>) -> Vec<Diagnostic> {
    vec![Diagnostic::new(title)]
}

impl Generator {
    /// Compile the chosen run's model and load its checkpoint.
    pub fn new(program: &Program, base_dir: &Path, model: Option<&str>, checkpoint: &Path) -> Result<Generator, Vec<Diagnostic>> {
        let (plans, datasets) = plans_and_data(program, base_dir)?;
        let plan = choose(&plans, &datasets, model)?;
        let Some(vocab) = datasets.iter().find(|d| d.name == plan.data).and_then(|d| d.vocab.clone()) else {
            return Err(vec![Diagnostic::new(format!("`{}` is not trained on text", plan.name))
                .label(plan.span, format!("its data `{}` has no tokenizer", plan.data))
                .note("`nnc sample` needs a language model trained on `text(...)` data")]);
        };
        // A next-token model has one logit per token at each position (not a
        // masked language model's extra [MASK], nor a classifier's classes).
        let output = plan.forward_graph.outputs.first().map(|&o| plan.forward_graph.ty(o).shape.clone());
        if let Some(shape) = output.filter(|s| s.rank() != 3 || s.dims().last() != Some(&Dim::Known(vocab.len()))) {
            return Err(vec![Diagnostic::new(format!("`{}` is not a next-token model of this vocabulary", plan.name))
                .label(plan.span, format!("it outputs {shape}, not [B, T, {}] next-token logits", vocab.len()))
                .note("`nnc sample` continues text with a model trained on `text(...)` without `mask:` or `typos:`")]);
        }
        let params = load_params(plan, checkpoint, plan.span).map_err(|d| vec![d])?;
        let sizes: SizeEnv = [("B".to_string(), 1)].into_iter().collect();
        let mut exec = Exec::compile(&plan.forward_graph, &sizes, &[], nnc_compiler::codegen::CompileOptions::default())
            .map_err(|e| error(format!("cannot compile `{}`: {e}", plan.name)))?;
        let mut incremental = Incremental::new(&plan.forward_graph, plan.features);
        for (path, _, v) in &params.tensors {
            exec.set(path, v);
            if let Ok(inc) = incremental.as_mut() {
                inc.set(path, v);
            }
        }
        Ok(Generator { exec, vocab, context: plan.features, incremental })
    }

    /// Next-token logits after `ids` (the last `context` of them are seen).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, Diagnostic> {
        if let Ok(inc) = self.incremental.as_mut() {
            if (1..=inc.context()).contains(&ids.len()) {
                return inc.logits(ids);
            }
        }
        let window = &ids[ids.len().saturating_sub(self.context)..];
        let mut x = vec![0.0f32; self.context];
        for (slot, &id) in x.iter_mut().zip(window) {
            *slot = id as f32;
        }
        self.exec.set("x", &x);
        self.exec.run()?;
        let v = self.vocab.len();
        let at = window.len().saturating_sub(1);
        Ok(self.exec.output(0).get(at * v..(at + 1) * v).map(<[f32]>::to_vec).unwrap_or_default())
    }

    /// `prompt` continued by `tokens` new tokens.
    pub fn generate(&mut self, prompt: &str, tokens: usize, strategy: Strategy, seed: u64) -> Result<String, Diagnostic> {
        let mut ids = self.vocab.encode(prompt).map_err(|e| Diagnostic::new(format!("cannot encode the prompt: {e}")))?;
        if ids.is_empty() {
            // No prompt: start after a line break, as the corpus' lines do.
            ids = self.vocab.encode("\n").unwrap_or_else(|_| vec![0]);
        }
        let start = ids.len();
        if let Strategy::Beam { width } = strategy {
            let mut fault = None;
            let mut scorer = |seq: &[u32]| match self.logits(seq) {
                Ok(l) => log_softmax(&l),
                Err(d) => {
                    fault.get_or_insert(d);
                    Vec::new()
                }
            };
            let best = beam_search(&mut scorer, &ids, tokens, Beam::fixed(width));
            if let Some(d) = fault {
                return Err(d);
            }
            return Ok(format!("{prompt}{}", self.vocab.decode(&best.tokens[start..])));
        }
        let mut rng = rng::seeded(seed, 0);
        for _ in 0..tokens {
            let logits = self.logits(&ids)?;
            ids.push(pick(&logits, strategy, &mut rng));
        }
        Ok(format!("{prompt}{}", self.vocab.decode(&ids[start..])))
    }
}

/// The run to sample from: the named one, or the only one trained on text.
fn choose<'p>(plans: &'p [TrainPlan], datasets: &[Dataset], model: Option<&str>) -> Result<&'p TrainPlan, Vec<Diagnostic>> {
    if let Some(m) = model {
        return plans.iter().find(|p| p.name == m).ok_or_else(|| {
            let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
            error(format!("no `train {m}` in this file (it trains: {})", names.join(", ")))
        });
    }
    let on_text = |p: &&TrainPlan| datasets.iter().any(|d| d.name == p.data && d.vocab.is_some());
    let candidates: Vec<&TrainPlan> = plans.iter().filter(on_text).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(error("this file trains no model on text data, so there is nothing to sample from")),
        many => Err(error(format!(
            "this file trains several language models ({}): choose one with --model",
            many.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The next token under `strategy`.
pub fn pick(logits: &[f32], strategy: Strategy, rng: &mut impl rng::Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] { i } else { best }) as u32;
    let (k, temperature) = match strategy {
        Strategy::Greedy | Strategy::Beam { .. } => return argmax(),
        Strategy::Temperature(t) => (logits.len(), t),
        Strategy::TopK { k, temperature } => (k.clamp(1, logits.len().max(1)), temperature),
    };
    if temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(k);
    let top = order.first().map_or(0.0, |&i| f64::from(logits[i]));
    let weights: Vec<f64> = order.iter().map(|&i| ((f64::from(logits[i]) - top) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng::unit_f64(rng) * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order.last().map_or(0, |&i| i as u32)
}

/// `log softmax(logits)` in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let lse = max + logits.iter().map(|&v| (f64::from(v) - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&v| f64::from(v) - lse).collect()
}

/// The result of `beam_search`: the whole sequence (prompt included), its
/// summed log-probability, and the score it won by (see `Beam`).
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    pub log_prob: f64,
    pub score: f64,
}

/// How `beam_search` searches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Beam {
    /// Hypotheses kept at each step; 1 is greedy decoding.
    pub width: usize,
    /// The token that ends a hypothesis (EOS); `None`: every continuation
    /// runs for all `steps` tokens.
    pub end: Option<u32>,
    /// Length normalisation: a hypothesis of n generated tokens (its end
    /// token included) scores log-probability / n^alpha. 0 ranks by the
    /// summed log-probability, which favours short hypotheses; 1 by the mean
    /// log-probability per token.
    pub alpha: f64,
}

impl Beam {
    /// Continuations of a fixed length (no end token): length normalisation
    /// cannot change the winner, so there is none.
    pub fn fixed(width: usize) -> Beam {
        Beam { width, end: None, alpha: 0.0 }
    }

    fn score(&self, log_prob: f64, generated: usize) -> f64 {
        if self.alpha == 0.0 {
            log_prob
        } else {
            log_prob / (generated.max(1) as f64).powf(self.alpha)
        }
    }
}

/// Beam search from one prompt: see `beam_search_many`.
pub fn beam_search(log_probs: &mut dyn FnMut(&[u32]) -> Vec<f64>, prompt: &[u32], steps: usize, beam: Beam) -> Hypothesis {
    let mut batched = |queries: &[(usize, &[u32])]| queries.iter().map(|(_, seq)| log_probs(seq)).collect();
    let prompts = [prompt.to_vec()];
    let mut best = beam_search_many(&mut batched, &prompts, steps, beam);
    best.pop().unwrap_or(Hypothesis { tokens: prompt.to_vec(), log_prob: 0.0, score: 0.0 })
}

/// Next-token log-probabilities of `(prompt index, sequence)` pairs, one
/// vector per pair (see `beam_search_many`).
pub type Scorer<'a> = dyn FnMut(&[(usize, &[u32])]) -> Vec<Vec<f64>> + 'a;

/// Beam search from several prompts in lockstep, so that one call of
/// `log_probs` scores the hypotheses of every prompt at once. `log_probs`
/// gets `(prompt index, sequence)` pairs and returns each sequence's
/// next-token log-probabilities.
///
/// Each prompt keeps the `width` best partial hypotheses. At each of up to
/// `steps` steps every one is extended by every token, with log-probabilities
/// summed along the way, and the `width` best extensions by summed
/// log-probability are kept (all have the same length, so this is also their
/// order by normalised score). Those ending in `end` are finished and leave
/// the beam; the others go on. Unfinished hypotheses after `steps` tokens are
/// finished as they are. The best finished hypothesis by normalised score
/// (`Beam::alpha`) wins.
///
/// A prompt stops early once no hypothesis left can beat its best finished
/// one: log-probabilities only fall, so a hypothesis at log-probability l
/// cannot finish above l / steps^alpha. Width 1 is greedy decoding (stopping
/// at `end`); a width of at least V^steps keeps every hypothesis and is exact.
pub fn beam_search_many(log_probs: &mut Scorer<'_>, prompts: &[Vec<u32>], steps: usize, beam: Beam) -> Vec<Hypothesis> {
    struct Search {
        prompt: usize,
        alive: Vec<(Vec<u32>, f64)>,
        best: Option<Hypothesis>,
    }
    let finish = |s: &mut Search, tokens: Vec<u32>, log_prob: f64| {
        let score = beam.score(log_prob, tokens.len() - s.prompt);
        let better = match &s.best {
            None => true,
            Some(b) => score > b.score || (score == b.score && tokens < b.tokens),
        };
        if better {
            s.best = Some(Hypothesis { tokens, log_prob, score });
        }
    };
    let mut searches: Vec<Search> = prompts.iter().map(|p| Search { prompt: p.len(), alive: vec![(p.clone(), 0.0)], best: None }).collect();
    for _ in 0..steps {
        let queries: Vec<(usize, &[u32])> =
            searches.iter().enumerate().flat_map(|(i, s)| s.alive.iter().map(move |(seq, _)| (i, seq.as_slice()))).collect();
        if queries.is_empty() {
            break;
        }
        let mut scores = log_probs(&queries).into_iter();
        for s in &mut searches {
            let mut next: Vec<(Vec<u32>, f64)> = Vec::new();
            for (seq, lp) in &s.alive {
                for (t, l) in scores.next().unwrap_or_default().into_iter().enumerate() {
                    let mut longer = seq.clone();
                    longer.push(t as u32);
                    next.push((longer, lp + l));
                }
            }
            // Best first; ties broken by the token sequence so the result is deterministic.
            next.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            next.truncate(beam.width.max(1));
            s.alive.clear();
            for (seq, lp) in next {
                if beam.end.is_some() && seq.last().copied() == beam.end {
                    finish(s, seq, lp);
                } else {
                    s.alive.push((seq, lp));
                }
            }
            let reachable = s.alive.first().map_or(f64::NEG_INFINITY, |(_, lp)| beam.score(*lp, steps));
            if s.best.as_ref().is_some_and(|b| b.score > reachable) {
                s.alive.clear();
            }
        }
    }
    searches
        .into_iter()
        .zip(prompts)
        .map(|(mut s, prompt)| {
            for (seq, lp) in std::mem::take(&mut s.alive) {
                finish(&mut s, seq, lp);
            }
            s.best.unwrap_or(Hypothesis { tokens: prompt.clone(), log_prob: 0.0, score: 0.0 })
        })
        .collect()
}

/// `nnc sample`: the prompt and its continuation.
pub fn sample(program: &Program, base_dir: &Path, opts: &SampleOptions) -> Result<String, Vec<Diagnostic>> {
    let mut g = Generator::new(program, base_dir, opts.model, opts.checkpoint)?;
    if !opts.cache {
        g.incremental = Err("--no-cache".into());
    }
    g.generate(opts.prompt, opts.tokens, opts.strategy, opts.seed).map_err(|d| vec![d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_k() {
        let logits = [0.1f32, 2.0, -1.0, 1.9];
        let mut r = rng::seeded(0, 0);
        assert_eq!(pick(&logits, Strategy::Greedy, &mut r), 1);
        // Top-1 at any temperature is greedy; top-2 only ever draws 1 or 3.
        assert_eq!(pick(&logits, Strategy::TopK { k: 1, temperature: 5.0 }, &mut r), 1);
        for _ in 0..200 {
            let t = pick(&logits, Strategy::TopK { k: 2, temperature: 1.0 }, &mut r);
            assert!(t == 1 || t == 3, "{t}");
        }
    }

    /// A toy model over 3 tokens whose next-token distribution depends on the
    /// whole prefix (a hash of it), so greedy choices can be led astray.
    fn toy(seq: &[u32]) -> Vec<f64> {
        let h = seq.iter().fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(u64::from(t) + 1));
        let raw: Vec<f32> = (0..3).map(|t| ((h.wrapping_mul(2654435761).wrapping_add(t * 97) % 1000) as f32) / 250.0).collect();
        log_softmax(&raw)
    }

    /// The best of all 3^6 continuations, by brute force.
    fn exhaustive(prompt: &[u32], steps: u32) -> (Vec<u32>, f64) {
        let mut best = (Vec::new(), f64::NEG_INFINITY);
        for code in 0..3u32.pow(steps) {
            let (mut seq, mut lp) = (prompt.to_vec(), 0.0);
            for i in 0..steps {
                let t = code / 3u32.pow(steps - 1 - i) % 3;
                lp += toy(&seq)[t as usize];
                seq.push(t);
            }
            if lp > best.1 {
                best = (seq, lp);
            }
        }
        best
    }

    #[test]
    fn beam_search_finds_the_exhaustive_optimum() {
        let prompt = [1u32, 2];
        let (best, best_lp) = exhaustive(&prompt, 6);
        // Wide enough to keep every prefix: exact.
        let wide = beam_search(&mut |s| toy(s), &prompt, 6, Beam::fixed(3usize.pow(5)));
        assert_eq!(wide.tokens, best);
        assert!((wide.log_prob - best_lp).abs() < 1e-12);
        // Width 1 is greedy decoding, never better than the optimum.
        let greedy = beam_search(&mut |s| toy(s), &prompt, 6, Beam::fixed(1));
        let mut seq = prompt.to_vec();
        for _ in 0..6 {
            let lp = toy(&seq);
            let t = (0..3).fold(0, |b, i| if lp[i] > lp[b] { i } else { b });
            seq.push(t as u32);
        }
        assert_eq!(greedy.tokens, seq);
        assert!(greedy.log_prob <= best_lp + 1e-12);
        // No width beats the optimum, and each result's log-probability is its sequence's.
        for width in [2, 4, 9, 27] {
            let h = beam_search(&mut |s| toy(s), &prompt, 6, Beam::fixed(width));
            assert!(h.log_prob <= best_lp + 1e-12, "width {width}");
            let replay: f64 = (prompt.len()..h.tokens.len()).map(|i| toy(&h.tokens[..i])[h.tokens[i] as usize]).sum();
            assert!((replay - h.log_prob).abs() < 1e-12, "width {width}");
        }
    }

    /// Token 0 ends a hypothesis in these tests.
    const END: u32 = 0;

    /// The best hypothesis by normalised score among all that end at `END`
    /// within `steps` tokens or run for all `steps` without it, by brute force.
    fn exhaustive_ended(prompt: &[u32], steps: u32, alpha: f64) -> (Vec<u32>, f64) {
        let mut best = (Vec::new(), f64::NEG_INFINITY);
        for len in 1..=steps {
            for code in 0..3u32.pow(len) {
                let tokens: Vec<u32> = (0..len).map(|i| code / 3u32.pow(len - 1 - i) % 3).collect();
                // END only last; without END only at full length.
                let ended = tokens.last() == Some(&END);
                if tokens[..tokens.len() - 1].contains(&END) || (!ended && len < steps) {
                    continue;
                }
                let mut seq = prompt.to_vec();
                let mut lp = 0.0;
                for &t in &tokens {
                    lp += toy(&seq)[t as usize];
                    seq.push(t);
                }
                let score = lp / f64::from(len).powf(alpha);
                if score > best.1 {
                    best = (seq, score);
                }
            }
        }
        best
    }

    #[test]
    fn length_normalised_beam_search_with_end_tokens_finds_the_exhaustive_optimum() {
        let mut winners_differ = false;
        for prompt in [[1u32, 2], [2, 2], [1, 1], [2, 1]] {
            let mut winners = Vec::new();
            for alpha in [0.0, 0.6, 1.0] {
                let (best, best_score) = exhaustive_ended(&prompt, 5, alpha);
                let beam = Beam { width: 3usize.pow(5), end: Some(END), alpha };
                let wide = beam_search(&mut |s| toy(s), &prompt, 5, beam);
                assert_eq!(wide.tokens, best, "prompt {prompt:?}, alpha {alpha}");
                assert!((wide.score - best_score).abs() < 1e-12);
                // Narrow beams never beat the optimum and score their own sequence.
                for width in [1, 2, 4] {
                    let h = beam_search(&mut |s| toy(s), &prompt, 5, Beam { width, ..beam });
                    assert!(h.score <= best_score + 1e-12);
                    let replay: f64 = (prompt.len()..h.tokens.len()).map(|i| toy(&h.tokens[..i])[h.tokens[i] as usize]).sum();
                    assert!((replay - h.log_prob).abs() < 1e-12);
                    let n = (h.tokens.len() - prompt.len()) as f64;
                    assert!((h.score - h.log_prob / n.powf(alpha)).abs() < 1e-12);
                }
                winners.push(best);
            }
            winners_differ |= winners[0] != winners[2];
        }
        // Normalisation matters here: summed log-probabilities prefer shorter hypotheses.
        assert!(winners_differ, "alpha 0 and 1 pick the same hypothesis for every prompt");
    }

    #[test]
    fn width_one_with_an_end_token_is_greedy_decoding() {
        for prompt in [[1u32, 2], [2, 2], [1, 1], [2, 1]] {
            let mut seq = prompt.to_vec();
            while seq.len() < prompt.len() + 5 {
                let lp = toy(&seq);
                let t = (0..3).fold(0, |b, i| if lp[i] > lp[b] { i } else { b }) as u32;
                seq.push(t);
                if t == END {
                    break;
                }
            }
            let h = beam_search(&mut |s| toy(s), &prompt, 5, Beam { width: 1, end: Some(END), alpha: 1.0 });
            assert_eq!(h.tokens, seq);
        }
    }

    #[test]
    fn prompts_searched_in_lockstep_match_one_at_a_time() {
        let prompts: Vec<Vec<u32>> = vec![vec![1, 2], vec![2], vec![1, 1, 2], vec![2, 1]];
        let beam = Beam { width: 3, end: Some(END), alpha: 1.0 };
        let mut calls = 0;
        let many = beam_search_many(
            &mut |q| {
                calls += 1;
                q.iter().map(|(_, s)| toy(s)).collect()
            },
            &prompts,
            6,
            beam,
        );
        assert!(calls <= 6, "one call per step");
        for (p, h) in prompts.iter().zip(&many) {
            assert_eq!(*h, beam_search(&mut |s| toy(s), p, 6, beam));
        }
    }

    #[test]
    fn temperature_draws_follow_softmax() {
        let logits = [0.0f32, (3.0f32).ln()];
        let mut r = rng::seeded(1, 0);
        let n = 20000;
        let ones = (0..n).filter(|_| pick(&logits, Strategy::Temperature(1.0), &mut r) == 1).count();
        // P(1) = 3/4; the 4-sigma band of a binomial with n = 20000 is ±0.012.
        let p = ones as f64 / n as f64;
        assert!((p - 0.75).abs() < 0.012, "{p}");
    }
}
