//! `exact_match(greedy | beam: W) on data.split`: decode every row's target
//! with the compiled forward function, token by token, and count the rows
//! whose whole decoded sequence is the target.
//!
//! A sequence-to-sequence model's forward maps the source `x: [B, S]` and a
//! decoder input `[B, T]` to next-token logits `[B, T, V]`. Decoding starts
//! from `BOS` and calls it on the prefix decoded so far, right-padded to `T`:
//! the decoder's causal self-attention never reads the padding, so the logits
//! at the prefix's last position are those of the prefix alone. Each step
//! recomputes the encoder and the whole prefix (no cache). The hypotheses of
//! all rows of a split are scored together, in chunks of the batch the
//! function is compiled for (`beam_search_many`).

use crate::dataset::Split;
use crate::exec::Exec;
use crate::sample::{beam_search_many, log_softmax, Beam};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::train::{Decoding, DECODER_INPUT};
use nnc_compiler::elaborate::Seq2Seq;

/// Rows shown in a run's summary after training (`TrainResult::decodes`).
pub const SHOWN: usize = 4;

/// The beam a decoding uses: greedy decoding is a beam of width 1.
pub fn beam(decoding: Decoding, tokens: Seq2Seq) -> Beam {
    match decoding {
        Decoding::Greedy => Beam { width: 1, end: Some(tokens.eos), alpha: 0.0 },
        Decoding::Beam { width, alpha } => Beam { width, end: Some(tokens.eos), alpha },
    }
}

/// One decoded row: the source's digits, and the target and output ids after
/// BOS (EOS included).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub source: Vec<u32>,
    pub target: Vec<u32>,
    pub output: Vec<u32>,
}

impl Decoded {
    /// `31415 → 51413  ✓`, or `… ✗ (target 51413)`, digits as text; an
    /// output that never reached EOS ends in `…`.
    pub fn describe(&self, eos: u32) -> String {
        let show = |ids: &[u32]| match ids.split_last() {
            Some((&last, rest)) if last == eos => crate::tasks::show(rest).trim().to_string(),
            _ => format!("{} …", crate::tasks::show(ids).trim()),
        };
        let mut line = format!("{} → {}", crate::tasks::show(&self.source), show(&self.output));
        if self.output == self.target {
            line.push_str("  ✓");
        } else {
            line.push_str(&format!("  ✗ (target {})", show(&self.target)));
        }
        line
    }
}

/// The target of a row: the ids after BOS up to and including EOS.
fn target(row: &[f32], tokens: Seq2Seq) -> Vec<u32> {
    let ids: Vec<u32> = row.iter().skip(1).map(|&v| v as u32).collect();
    match ids.iter().position(|&t| t == tokens.eos) {
        Some(end) => ids[..=end].to_vec(),
        None => ids,
    }
}

/// The fraction of `split`'s rows that `exec` (the forward function, compiled
/// for `chunk` rows, with the trained parameters set) decodes exactly, and
/// the first `SHOWN` rows as decoded.
pub fn exact_match(
    exec: &mut Exec,
    chunk: usize,
    decoding: Decoding,
    tokens: Seq2Seq,
    split: &Split,
) -> Result<(f64, Vec<Decoded>), Diagnostic> {
    let (n, src_width) = split.x.dim();
    let steps = split.y.ncols().saturating_sub(1);
    if n == 0 || steps == 0 {
        return Ok((0.0, Vec::new()));
    }
    let x = split.x.as_slice().unwrap_or(&[]);
    let mut xbuf = vec![tokens.pad as f32; chunk * src_width];
    let mut dbuf = vec![tokens.pad as f32; chunk * steps];
    let mut fault = None;
    let mut scorer = |queries: &[(usize, &[u32])]| -> Vec<Vec<f64>> {
        let mut out = Vec::with_capacity(queries.len());
        for group in queries.chunks(chunk) {
            for (slot, (row, prefix)) in group.iter().enumerate() {
                xbuf[slot * src_width..(slot + 1) * src_width].copy_from_slice(&x[row * src_width..(row + 1) * src_width]);
                let dec = &mut dbuf[slot * steps..(slot + 1) * steps];
                dec.fill(tokens.pad as f32);
                for (d, &t) in dec.iter_mut().zip(prefix.iter()) {
                    *d = t as f32;
                }
            }
            exec.set("x", &xbuf);
            exec.set(DECODER_INPUT, &dbuf);
            if let Err(d) = exec.run() {
                fault.get_or_insert(d);
                return Vec::new();
            }
            let logits = exec.output(0);
            let vocab = logits.len() / (chunk * steps);
            for (slot, (_, prefix)) in group.iter().enumerate() {
                let at = (slot * steps + prefix.len().clamp(1, steps) - 1) * vocab;
                out.push(log_softmax(logits.get(at..at + vocab).unwrap_or(&[])));
            }
        }
        out
    };
    let prompts = vec![vec![tokens.bos]; n];
    let best = beam_search_many(&mut scorer, &prompts, steps, beam(decoding, tokens));
    if let Some(d) = fault {
        return Err(d);
    }
    let mut correct = 0;
    let mut shown = Vec::new();
    for (r, h) in best.iter().enumerate() {
        let output = h.tokens.get(1..).unwrap_or(&[]).to_vec();
        let target = split.y.row(r).as_slice().map(|row| target(row, tokens)).unwrap_or_default();
        if output == target {
            correct += 1;
        }
        if r < SHOWN {
            let special = [tokens.pad, tokens.bos, tokens.eos];
            let source = split.x.row(r).iter().map(|&v| v as u32).filter(|t| !special.contains(t)).collect();
            shown.push(Decoded { source, target, output });
        }
    }
    Ok((correct as f64 / n as f64, shown))
}
