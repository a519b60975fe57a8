//! Tasks cut from a text corpus (notes §20): BERT's masked language model
//! (`text(..., mask: 0.15)`), and typo detection (`text(..., typos: 8)`), a
//! downstream task for the features it learns.
//!
//! Masking follows BERT: in each window of `T` tokens, `round(rate · T)`
//! positions (at least one) are picked; 80 % of them become the `[MASK]` token
//! (id `V`, one past the tokenizer's vocabulary), 10 % a random token of the
//! vocabulary, 10 % stay as they are. The label of a picked position is its
//! original token, every other position gets [`IGNORE`] (PyTorch's
//! `ignore_index`, −100), so `cross_entropy(logits, y, mask: padding_mask(y,
//! -100))` and the `accuracy` metric count the picked positions only.
//!
//! The masks loaded with the data (what metrics, `let`s and `report`s see) are
//! fixed per row. Training batches are masked afresh every epoch (RoBERTa's
//! dynamic masking) from the original window, which `x` and `y` together still
//! hold: a picked position's original is its label, every other position is
//! unchanged in `x`.

use crate::data::Table;
use crate::rng::{self, ChaCha8Rng, SeedableRng};
use ndarray::Array2;
use nnc_compiler::ast::{Expr, Span};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::train::constant_number;

/// The label of a position that is not predicted.
pub const IGNORE: f32 = -100.0;

/// BERT-style masking of token windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Masking {
    /// Fraction of each window's positions that are predicted.
    pub rate: f64,
    pub seed: u64,
    /// Tokens `0..vocab` are the tokenizer's; `vocab` itself is `[MASK]`.
    pub vocab: usize,
}

impl Masking {
    /// The id of the `[MASK]` token.
    pub fn mask_id(&self) -> usize {
        self.vocab
    }

    /// Positions picked in a window of `len` tokens.
    pub fn picked(&self, len: usize) -> usize {
        ((self.rate * len as f64).round() as usize).clamp(1, len)
    }

    /// Mask one window: `tokens` are the original ids; `x` gets the masked
    /// ids and `y` the labels.
    pub fn mask_window(&self, tokens: &[f32], x: &mut [f32], y: &mut [f32], rng: &mut ChaCha8Rng) {
        x.copy_from_slice(tokens);
        y.fill(IGNORE);
        let len = tokens.len();
        // The first `picked` entries of a partial Fisher–Yates shuffle.
        let mut order: Vec<usize> = (0..len).collect();
        for i in 0..self.picked(len) {
            let j = i + rng::below(rng, len - i);
            order.swap(i, j);
            let at = order[i];
            y[at] = tokens[at];
            let u = rng::unit_f64(rng);
            if u < 0.8 {
                x[at] = self.mask_id() as f32;
            } else if u < 0.9 {
                x[at] = rng::below(rng, self.vocab) as f32;
            }
        }
    }

    /// The masks every split starts with: one per row of the corpus, fixed.
    pub fn mask_table(&self, table: &mut Table) {
        let width = table.features.ncols();
        let mut labels = Array2::from_elem((table.n_rows(), width), IGNORE);
        let mut masked = vec![0.0f32; width];
        for (row, (mut x, mut y)) in table.features.rows_mut().into_iter().zip(labels.rows_mut()).enumerate() {
            let (Some(xs), Some(ys)) = (x.as_slice_mut(), y.as_slice_mut()) else { continue };
            self.mask_window(xs, &mut masked, ys, &mut self.rng(0, row));
            xs.copy_from_slice(&masked);
        }
        table.labels = labels;
        table.label_name = "masked".into();
    }

    /// Mask a training batch afresh for `epoch`: `x` and `y` hold rows `rows`
    /// of the split (`x.len() / rows.len()` tokens each) as loaded.
    pub fn remask(&self, x: &mut [f32], y: &mut [f32], rows: &[usize], epoch: usize) {
        let width = x.len() / rows.len().max(1);
        let mut tokens = vec![0.0f32; width];
        for ((xs, ys), &row) in x.chunks_exact_mut(width).zip(y.chunks_exact_mut(width)).zip(rows) {
            for ((t, &xv), &yv) in tokens.iter_mut().zip(xs.iter()).zip(ys.iter()) {
                *t = if yv == IGNORE { xv } else { yv };
            }
            self.mask_window(&tokens, xs, ys, &mut self.rng(epoch + 1, row));
        }
    }

    /// The generator of one row's masks in `epoch` (0: the masks loaded with the data).
    fn rng(&self, epoch: usize, row: usize) -> ChaCha8Rng {
        row_rng(self.seed, b"masking\0", epoch, row)
    }
}

/// The generator of one row: ChaCha keyed by the seed, a tag and the epoch,
/// on the row's stream. The tag keeps these choices apart from `shuffle` and
/// `augment` with the same seed.
fn row_rng(seed: u64, tag: &[u8; 8], epoch: usize, row: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(tag);
    key[16..24].copy_from_slice(&(epoch as u64).to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(row as u64);
    rng
}

/// Typos, a task for the features a masked language model learns: half the
/// windows (drawn per row from the seed) get `pairs` transpositions of two
/// adjacent, different tokens (`thier`); the label is 1 for such a window, 0
/// for an intact one. A window keeps its bag of tokens, so only the order
/// tells the two apart.
pub fn transpose_pairs(table: &mut Table, pairs: usize, seed: u64) {
    let width = table.features.ncols();
    let mut labels = Array2::zeros((table.n_rows(), 1));
    for (row, mut x) in table.features.rows_mut().into_iter().enumerate() {
        let mut rng = row_rng(seed, b"typos\0\0\0", 0, row);
        let (Some(xs), true) = (x.as_slice_mut(), width >= 2) else { continue };
        if rng::unit_f64(&mut rng) >= 0.5 {
            continue;
        }
        for _ in 0..pairs {
            // A pair of equal tokens would not change: draw again (a few times).
            for _ in 0..16 {
                let at = rng::below(&mut rng, width - 1);
                if xs[at] != xs[at + 1] {
                    xs.swap(at, at + 1);
                    break;
                }
            }
        }
        labels[[row, 0]] = 1.0;
    }
    table.labels = labels;
    table.label_name = "typos".into();
}

/// The task options of `text(...)`: `mask: RATE`, `typos: PAIRS`, `seed: N`.
#[derive(Clone, Debug, Default)]
pub struct TextTask {
    mask: Option<(f64, Span)>,
    typos: Option<(usize, Span)>,
    seed: u64,
}

impl TextTask {
    /// Record option `key` (one of `mask`, `typos`, `seed`) of `text(...)`.
    pub fn option(&mut self, key: &str, value: &Expr) -> Result<(), Diagnostic> {
        let v = constant_number(value);
        let bad = |what: &str, example: &str| {
            Diagnostic::new(format!("`{key}` must be {what}")).label(value.span, format!("expected e.g. `{key}: {example}`"))
        };
        let whole = v.filter(|n| *n >= 0.0 && n.fract() == 0.0).map(|n| n as usize);
        match key {
            "seed" => self.seed = whole.ok_or_else(|| bad("a non-negative whole number", "0"))? as u64,
            "mask" => match v {
                Some(r) if r > 0.0 && r < 1.0 => self.mask = Some((r, value.span)),
                _ => return Err(bad("the fraction of positions to predict, between 0 and 1", "0.15")),
            },
            _ => match whole {
                Some(n) if n >= 1 => self.typos = Some((n, value.span)),
                _ => return Err(bad("a positive whole number of transpositions", "8")),
            },
        }
        if let (Some((_, first)), Some((_, second))) = (self.mask, self.typos) {
            let (first, second) = if first.start < second.start { (first, second) } else { (second, first) };
            return Err(Diagnostic::new("`text` makes one kind of row: `mask:` or `typos:`, not both")
                .label(second, "the second task")
                .label(first, "the first task")
                .note("declare two data sets over the same file, one per task"));
        }
        Ok(())
    }

    /// Turn the windows (next-token labels) into this task's rows, for a
    /// tokenizer of `vocab` tokens. Returns the number of classes, the labels
    /// per row (`None`: one) and the masking training batches redraw.
    pub fn apply(&self, table: &mut Table, vocab: usize) -> Result<(usize, Option<usize>, Option<Masking>), Diagnostic> {
        let context = table.n_features();
        if let Some((rate, _)) = self.mask {
            let m = Masking { rate, seed: self.seed, vocab };
            m.mask_table(table);
            return Ok((vocab + 1, Some(context), Some(m)));
        }
        if let Some((pairs, span)) = self.typos {
            if pairs >= context {
                return Err(Diagnostic::new(format!("{pairs} typos do not fit a window of {context} tokens"))
                    .label(span, format!("expected fewer than {context}")));
            }
            transpose_pairs(table, pairs, self.seed);
            return Ok((2, None, None));
        }
        Ok((vocab, Some(context), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_table(rows: usize, width: usize, vocab: usize) -> Table {
        let ids: Vec<f32> = (0..rows * width).map(|i| ((i * 7 + i / 3) % vocab) as f32).collect();
        Table {
            features: Array2::from_shape_vec((rows, width), ids).unwrap(),
            labels: Array2::zeros((rows, width)),
            feature_names: Vec::new(),
            label_name: String::new(),
        }
    }

    #[test]
    fn typos_keep_the_bag_and_are_labelled() {
        let original = corpus_table(2000, 16, 50);
        let mut t = original.clone();
        transpose_pairs(&mut t, 3, 0);
        let with_typos = t.labels.iter().filter(|&&v| v == 1.0).count();
        assert!((900..1100).contains(&with_typos), "{with_typos} of 2000 windows with typos");
        for ((x, y), o) in t.features.rows().into_iter().zip(t.labels.rows()).zip(original.features.rows()) {
            let changed = x.iter().zip(&o).filter(|(a, b)| a != b).count();
            if y[0] == 0.0 {
                assert_eq!(changed, 0);
            } else {
                // Three transpositions move 2 to 6 tokens (one may undo or overlap another).
                assert!(changed <= 6, "{changed} tokens moved");
                let (mut a, mut b) = (x.to_vec(), o.to_vec());
                a.sort_by(f32::total_cmp);
                b.sort_by(f32::total_cmp);
                assert_eq!(a, b, "the same tokens, in another order");
            }
        }
    }

    #[test]
    fn masks_fifteen_percent_with_the_80_10_10_rule() {
        let m = Masking { rate: 0.15, seed: 3, vocab: 82 };
        let original = corpus_table(4000, 64, 82);
        let mut t = original.clone();
        m.mask_table(&mut t);
        let (mut picked, mut masked, mut random, mut kept) = (0usize, 0usize, 0usize, 0usize);
        for ((x, y), o) in t.features.rows().into_iter().zip(t.labels.rows()).zip(original.features.rows()) {
            // Exactly round(0.15 · 64) = 10 positions per window.
            assert_eq!(y.iter().filter(|&&v| v != IGNORE).count(), 10);
            for ((&xv, &yv), &ov) in x.iter().zip(&y).zip(&o) {
                if yv == IGNORE {
                    assert_eq!(xv, ov, "an unpicked position is unchanged");
                    continue;
                }
                assert_eq!(yv, ov, "the label is the original token");
                picked += 1;
                if xv == 82.0 {
                    masked += 1;
                } else if xv == ov {
                    kept += 1;
                } else {
                    assert!((0.0..82.0).contains(&xv));
                    random += 1;
                }
            }
        }
        let share = |k: usize| k as f64 / picked as f64;
        // A random replacement equals the original 1 time in 82, so "kept" is 10 % + 0.1 %.
        assert!((share(masked) - 0.8).abs() < 0.01, "[MASK] {}", share(masked));
        assert!((share(random) - 0.1 * 81.0 / 82.0).abs() < 0.01, "random {}", share(random));
        assert!((share(kept) - (0.1 + 0.1 / 82.0)).abs() < 0.01, "kept {}", share(kept));
        assert_eq!(picked, 4000 * 10);
    }

    #[test]
    fn masks_are_deterministic_and_redrawn_each_epoch() {
        let m = Masking { rate: 0.15, seed: 0, vocab: 50 };
        let original = corpus_table(64, 32, 50);
        let (mut a, mut b) = (original.clone(), original.clone());
        m.mask_table(&mut a);
        m.mask_table(&mut b);
        assert_eq!(a, b, "same seed, same masks");
        let mut c = original.clone();
        Masking { seed: 1, ..m.clone() }.mask_table(&mut c);
        assert_ne!(a.features, c.features, "another seed, other masks");

        // Re-masking a batch restores the original window before drawing anew.
        let rows: Vec<usize> = (0..64).collect();
        let epoch = |e: usize| {
            let (mut x, mut y) = (a.features.as_slice().unwrap().to_vec(), a.labels.as_slice().unwrap().to_vec());
            m.remask(&mut x, &mut y, &rows, e);
            (x, y)
        };
        let (x0, y0) = epoch(0);
        assert_eq!(epoch(0), (x0.clone(), y0.clone()), "an epoch's masks are reproducible");
        let (x1, y1) = epoch(1);
        assert_ne!(y0, y1, "each epoch draws new positions");
        for (x, y) in [(&x0, &y0), (&x1, &y1)] {
            let restored: Vec<f32> = x.iter().zip(y.iter()).map(|(&xv, &yv)| if yv == IGNORE { xv } else { yv }).collect();
            assert_eq!(restored, original.features.as_slice().unwrap());
        }
    }
}
