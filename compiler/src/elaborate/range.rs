//! The valid range of every number a user writes: one `Rule` per keyword
//! argument of a built-in, layer, optimizer, schedule, initialiser, train
//! setting, data option and command-line flag, all in the table `RULES`.
//!
//! A number is read through its rule (`Ctx::number`, `Ctx::whole`, `Rule::check`),
//! so a new built-in cannot take a number without naming its range, and the
//! reference's table (docs/language.md, "Valid numbers") is checked against
//! `RULES` by `tests/docs.rs`. `OutOfRange::explain` is the one place that
//! words a number outside its range, for the compiler, the runtime and the CLI.
//!
//! Whole numbers: where a whole number is expected, any exact whole value is
//! accepted however it is written (`2`, `2.0`, `1e4`, `n / 2` when even), and
//! anything else is refused (`1.5`, `-0.5`, NaN). A whole number above 2^53
//! is refused too: past it an f64 (which is how the source holds numbers)
//! skips whole numbers, so `99999999999999999999` would silently be another
//! number.

use crate::ast::Span;
use crate::diagnostic::Diagnostic;

/// 2^53: every whole number up to here is held exactly as an f64.
pub const MAX_WHOLE: i64 = 1 << 53;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Range {
    /// A whole number in `[min, max]`.
    Whole { min: i64, max: i64 },
    /// A finite number between `low` and `high`; an open end is excluded.
    Real { low: f64, high: f64, low_open: bool, high_open: bool },
}

/// A whole number of at least 1: a count, a size, a number of epochs.
pub const COUNT: Range = Range::Whole { min: 1, max: MAX_WHOLE };
/// A whole number of at least 0: a seed, a padding, a token id.
pub const NATURAL: Range = Range::Whole { min: 0, max: MAX_WHOLE };
/// Any whole number: an index or an axis, which may count from the end.
pub const INTEGER: Range = Range::Whole { min: -MAX_WHOLE, max: MAX_WHOLE };
/// A switch: 0 (off) or 1 (on).
pub const FLAG: Range = Range::Whole { min: 0, max: 1 };
/// A finite number above 0: a learning rate, an epsilon, a temperature.
pub const POSITIVE: Range = Range::Real { low: 0.0, high: f64::INFINITY, low_open: true, high_open: true };
/// A finite number of at least 0: a weight decay, a standard deviation.
pub const NON_NEGATIVE: Range = Range::Real { low: 0.0, high: f64::INFINITY, low_open: false, high_open: true };
/// Any finite number.
pub const FINITE: Range = Range::Real { low: f64::NEG_INFINITY, high: f64::INFINITY, low_open: true, high_open: true };
/// A probability below 1: a drop rate, a momentum, Adam's β (1 would never forget).
pub const FRACTION: Range = Range::Real { low: 0.0, high: 1.0, low_open: false, high_open: true };
/// A fraction from 0 to 1, both included.
pub const UNIT: Range = Range::Real { low: 0.0, high: 1.0, low_open: false, high_open: false };
/// Strictly between 0 and 1.
pub const OPEN_UNIT: Range = Range::Real { low: 0.0, high: 1.0, low_open: true, high_open: true };

/// The number a keyword argument of `callee` takes (`adam(beta1: ...)`), and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    pub callee: &'static str,
    pub keyword: &'static str,
    pub range: Range,
    /// A sentence on what the number means, for the error.
    pub why: Option<&'static str>,
}

const fn rule(callee: &'static str, keyword: &'static str, range: Range) -> Rule {
    Rule { callee, keyword, range, why: None }
}

const fn explained(callee: &'static str, keyword: &'static str, range: Range, why: &'static str) -> Rule {
    Rule { callee, keyword, range, why: Some(why) }
}

// ---- the expression language ---------------------------------------------------------

pub const INDEX: Rule = explained("x[i]", "index", INTEGER, "an index is a whole number; -1 is the last entry");
pub const SLICE_BOUND: Rule = explained("x[a:b]", "bound", INTEGER, "a slice bound is a whole number; -1 is the last entry");
pub const LAYER_INDEX: Rule = rule("stack[i]", "index", INTEGER);
pub const REPEAT: Rule = explained("[M; n]", "count", COUNT, "a stack holds a whole number of copies, at least one");
pub const MODULE_INT: Rule = rule("module argument", "int", INTEGER);
pub const MODULE_FLOAT: Rule = rule("module argument", "float", FINITE);
pub const AXIS: Rule =
    explained("sum, mean, max, logsumexp, softmax, log_softmax, concat, layer_norm", "axis", INTEGER, "-1 is the last axis");
pub const KEEPDIMS: Rule = rule("sum, mean, max, logsumexp", "keepdims", FLAG);
pub const CLASSES: Rule = rule("one_hot", "classes", COUNT);
pub const SMOOTHING: Rule = explained(
    "cross_entropy",
    "smoothing",
    UNIT,
    "label smoothing α puts 1 − α on the true class and α spread over all classes, as PyTorch's `label_smoothing`",
);
pub const PERMUTATION: Rule = rule("transpose", "perm", NATURAL);
pub const SHAPE_ENTRY: Rule = rule("zeros, ones", "shape", NATURAL);
pub const EYE: Rule = rule("eye", "n", COUNT);
pub const CONV_STRIDE: Rule = explained(
    "conv2d, max_pool, avg_pool",
    "stride",
    COUNT,
    "the stride is how far the window moves at each step: 1 visits every position, 2 every other",
);
pub const CONV_PADDING: Rule = explained(
    "conv2d, max_pool, avg_pool",
    "padding",
    NATURAL,
    "padding adds rows and columns of zeros around the input; to crop it, slice it",
);
pub const CONV_DILATION: Rule = explained("conv2d", "dilation", COUNT, "dilation 1 is an ordinary window; d spaces its taps d apart");
pub const POOL_SIZE: Rule = explained("max_pool, avg_pool", "size", COUNT, "the window covers this many rows and columns");
pub const GROUPS: Rule = rule("conv2d, group_norm", "groups", COUNT);
pub const NORM_EPS: Rule =
    explained("layer_norm, instance_norm, group_norm, batch_norm", "eps", POSITIVE, "eps is added to the variance before its square root");
pub const BN_MOMENTUM: Rule = explained("batch_norm", "momentum", FRACTION, "the weight of each batch's statistics in the running ones");
pub const DROP_RATE: Rule = explained("dropout, stochastic_depth", "p", FRACTION, "the probability of dropping each value");
pub const SEQUENCE_LENGTH: Rule = rule("causal_mask", "size", COUNT);
pub const POSITIONS: Rule = rule("sinusoidal_positions", "length", COUNT);
pub const POSITION_WIDTH: Rule = rule("sinusoidal_positions", "width", COUNT);
pub const PAD_ID: Rule =
    explained("padding_mask", "pad", INTEGER, "the id that marks padding; a negative one (-100) marks labels to ignore");
pub const REVERSE: Rule = rule("scan", "reverse", FLAG);

// ---- train blocks ------------------------------------------------------------------------

pub const BATCH: Rule = rule("train", "batch", COUNT);
pub const EPOCHS: Rule = rule("train", "epochs", COUNT);
pub const SEED: Rule = rule("train", "seed", NATURAL);
pub const LR: Rule = rule("gd, sgd, momentum, nesterov, adam, adamw", "lr", POSITIVE);
pub const MOMENTUM: Rule = explained("momentum, nesterov", "momentum", FRACTION, "1 or more makes the velocity grow without bound");
pub const BETA1: Rule = explained("adam, adamw", "beta1", FRACTION, "β is the decay of a moving average: 1 or more never forgets");
pub const BETA2: Rule = explained("adam, adamw", "beta2", FRACTION, "β is the decay of a moving average: 1 or more never forgets");
pub const ADAM_EPS: Rule = explained("adam, adamw", "eps", POSITIVE, "eps keeps the step finite where the second moment is 0");
pub const WEIGHT_DECAY: Rule = rule("adamw", "weight_decay", NON_NEGATIVE);
pub const COSINE_MIN: Rule = explained("cosine", "min", UNIT, "the final learning rate as a fraction of the first");
pub const STEP_EVERY: Rule = rule("step", "every", COUNT);
pub const STEP_GAMMA: Rule = rule("step", "gamma", POSITIVE);
pub const WARMUP_EPOCHS: Rule = explained("warmup", "epochs", POSITIVE, "a fraction of an epoch is fine: 0.1");
pub const NORMAL_STD: Rule = rule("normal", "std", NON_NEGATIVE);
pub const UNIFORM_LOW: Rule = rule("uniform", "low", FINITE);
pub const UNIFORM_HIGH: Rule = rule("uniform", "high", FINITE);
pub const BEAM_WIDTH: Rule = rule("exact_match", "beam", Range::Whole { min: 1, max: super::seq2seq::MAX_WIDTH as i64 });
pub const BEAM_ALPHA: Rule =
    explained("exact_match", "alpha", NON_NEGATIVE, "the length normalisation: 0 none, 1 the mean log-probability");

// ---- data declarations -------------------------------------------------------------------

pub const SCALE: Rule = explained(
    "csv, idx",
    "scale",
    Range::Real { low: 0.0, high: f32::MAX as f64, low_open: true, high_open: false },
    "every feature is multiplied by the scale, as a 32-bit float",
);
pub const TASK_LENGTH: Rule = rule("digit_task", "length", COUNT);
pub const TASK_COUNT: Rule = rule("digit_task", "count", COUNT);
pub const TASK_SEED: Rule = rule("digit_task", "seed", NATURAL);

// ---- the command line --------------------------------------------------------------------

pub const CLI_EPOCHS: Rule = rule("nnc run", "--epochs", COUNT);
pub const CLI_TOKENS: Rule = rule("nnc sample", "--tokens", COUNT);
pub const CLI_WIDTH: Rule = rule("nnc sample", "--width", Range::Whole { min: 1, max: super::seq2seq::MAX_WIDTH as i64 });
pub const CLI_TEMPERATURE: Rule =
    explained("nnc sample", "--temperature", POSITIVE, "logits are divided by the temperature: below 1 is sharper, above 1 flatter");
pub const CLI_K: Rule = rule("nnc sample", "--k", COUNT);

/// Every rule, for the reference's table.
pub const RULES: &[Rule] = &[
    INDEX,
    SLICE_BOUND,
    LAYER_INDEX,
    REPEAT,
    MODULE_INT,
    MODULE_FLOAT,
    AXIS,
    KEEPDIMS,
    CLASSES,
    SMOOTHING,
    PERMUTATION,
    SHAPE_ENTRY,
    EYE,
    CONV_STRIDE,
    CONV_PADDING,
    CONV_DILATION,
    POOL_SIZE,
    GROUPS,
    NORM_EPS,
    BN_MOMENTUM,
    DROP_RATE,
    SEQUENCE_LENGTH,
    POSITIONS,
    POSITION_WIDTH,
    PAD_ID,
    REVERSE,
    BATCH,
    EPOCHS,
    SEED,
    LR,
    MOMENTUM,
    BETA1,
    BETA2,
    ADAM_EPS,
    WEIGHT_DECAY,
    COSINE_MIN,
    STEP_EVERY,
    STEP_GAMMA,
    WARMUP_EPOCHS,
    NORMAL_STD,
    UNIFORM_LOW,
    UNIFORM_HIGH,
    BEAM_WIDTH,
    BEAM_ALPHA,
    SCALE,
    TASK_LENGTH,
    TASK_COUNT,
    TASK_SEED,
    CLI_EPOCHS,
    CLI_TOKENS,
    CLI_WIDTH,
    CLI_TEMPERATURE,
    CLI_K,
];

/// The reference's table of valid numbers (docs/language.md, "Valid numbers"),
/// one row per rule; `tests/docs.rs` checks that the reference holds it verbatim.
pub fn table() -> String {
    let mut out = String::from("| where | number | valid values |\n|---|---|---|\n");
    for r in RULES {
        let callees: Vec<String> = r.callee.split(", ").map(|c| format!("`{c}`")).collect();
        out.push_str(&format!("| {} | `{}` | {} |\n", callees.join(", "), r.keyword, r.range.describe()));
    }
    out
}

/// A number outside its rule's range.
#[derive(Clone, Debug, PartialEq)]
pub struct OutOfRange {
    pub rule: Rule,
    pub found: f64,
}

impl Rule {
    /// The number's name in a message: "`beta1`", "the index in `x[i]`".
    pub fn name(&self) -> String {
        match (self.callee, self.keyword) {
            ("module argument", ty) => format!("a module argument of type `{ty}`"),
            (callee, keyword) if callee.contains('[') => format!("the {keyword} in `{callee}`"),
            // A rule shared by several callees (`adam, adamw`) names the keyword alone.
            (callee, keyword) if callee.contains([',', ' ']) => format!("`{keyword}`"),
            (callee, keyword) => format!("`{keyword}` of `{callee}`"),
        }
    }

    /// The value, if it lies in the range.
    pub fn check(&self, found: f64) -> Result<f64, OutOfRange> {
        if self.range.contains(found) {
            Ok(found)
        } else {
            Err(OutOfRange { rule: *self, found })
        }
    }

    /// A whole value in the range, as an integer (`check` has bounded it by 2^53).
    pub fn check_whole(&self, found: f64) -> Result<i64, OutOfRange> {
        match self.range {
            Range::Whole { .. } => self.check(found).map(|v| v as i64),
            // A rule over reals asked for a whole number: a mistake in nnc, refused rather than truncated.
            Range::Real { .. } => Err(OutOfRange { rule: *self, found }),
        }
    }

    /// A whole value that is at least 0, as a count or size.
    pub fn check_natural(&self, found: f64) -> Result<usize, OutOfRange> {
        let v = self.check_whole(found)?;
        usize::try_from(v).map_err(|_| OutOfRange { rule: *self, found })
    }
}

/// A number as a message shows it: `1.5`, `inf`, and `3.4028234663852886e38` rather than 39 digits.
fn show(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e16 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

impl Range {
    pub fn contains(&self, v: f64) -> bool {
        match *self {
            Range::Whole { min, max } => v.fract() == 0.0 && v >= min as f64 && v <= max as f64,
            Range::Real { low, high, low_open, high_open } => {
                let above = if low_open { v > low } else { v >= low };
                let below = if high_open { v < high } else { v <= high };
                v.is_finite() && above && below
            }
        }
    }

    /// The range in words: "a whole number of at least 1", "a number in [0, 1)".
    pub fn describe(&self) -> String {
        match *self {
            Range::Whole { min: 0, max: 1 } => "0 or 1".into(),
            Range::Whole { min, max: MAX_WHOLE } if min == -MAX_WHOLE => "a whole number".into(),
            Range::Whole { min, max: MAX_WHOLE } => format!("a whole number of at least {min}"),
            Range::Whole { min, max } => format!("a whole number from {min} to {max}"),
            Range::Real { low, high, low_open, high_open } => match (low.is_finite(), high.is_finite()) {
                (false, false) => "a finite number".into(),
                (true, false) if low_open => format!("a number above {}", show(low)),
                (true, false) => format!("a number of at least {}", show(low)),
                (false, true) if high_open => format!("a number below {}", show(high)),
                (false, true) => format!("a number of at most {}", show(high)),
                (true, true) => {
                    let (open, close) = (if low_open { "(" } else { "[" }, if high_open { ")" } else { "]" });
                    format!("a number in {open}{}, {}{close}", show(low), show(high))
                }
            },
        }
    }
}

impl OutOfRange {
    /// The error, labelled at the number.
    pub fn diagnostic(&self, span: Span) -> Diagnostic {
        let (title, label, note) = self.explain();
        let d = Diagnostic::new(title).label(span, label);
        match note {
            Some(n) => d.note(n),
            None => d,
        }
    }

    /// The message's title, its label (what was expected, what was found) and a note.
    pub fn explain(&self) -> (String, String, Option<String>) {
        let Rule { range, why, .. } = self.rule;
        let v = self.found;
        let expected = range.describe();
        let found = match range {
            _ if v.is_nan() => "NaN".to_string(),
            Range::Whole { .. } if v.is_finite() && v.fract() != 0.0 => format!("{}, which is not a whole number", show(v)),
            Range::Whole { max: MAX_WHOLE, .. } if v.is_finite() && v.abs() > MAX_WHOLE as f64 => {
                format!("{}, beyond 2^53, past which whole numbers are not held exactly", show(v))
            }
            _ => show(v),
        };
        let title = format!("{} must be {expected}, found {found}", self.rule.name());
        let label = format!("expected {expected}, found {found}");
        let percentage = matches!(range, Range::Real { high: 1.0, .. }) && (2.0..=100.0).contains(&v) && v.fract() == 0.0;
        let note = match why {
            _ if percentage => Some(format!("help: this looks like a percentage; for {v}%, write {}", v / 100.0)),
            Some(w) => Some(w.to_string()),
            None => None,
        };
        (title, label, note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_exact_and_bounded() {
        assert!(COUNT.contains(2.0));
        assert!(COUNT.contains(1e4));
        assert!(!COUNT.contains(1.5));
        assert!(!COUNT.contains(0.0));
        assert!(!COUNT.contains(f64::NAN));
        assert!(!COUNT.contains(f64::INFINITY));
        assert!(!COUNT.contains(1e20));
        assert!(COUNT.contains(MAX_WHOLE as f64));
        assert!(!INTEGER.contains(-0.5));
        assert!(INTEGER.contains(-3.0));
    }

    #[test]
    fn reals_are_finite_and_respect_open_ends() {
        assert!(FRACTION.contains(0.0));
        assert!(!FRACTION.contains(1.0));
        assert!(!POSITIVE.contains(0.0));
        assert!(!POSITIVE.contains(f64::INFINITY));
        assert!(UNIT.contains(1.0));
        assert!(!FINITE.contains(f64::NAN));
    }

    #[test]
    fn the_message_says_what_was_expected_and_found() {
        let (title, label, note) = BETA1.check(1.5).unwrap_err().explain();
        assert_eq!(title, "`beta1` must be a number in [0, 1), found 1.5");
        assert_eq!(label, "expected a number in [0, 1), found 1.5");
        assert_eq!(note.as_deref(), BETA1.why);
        let (_, _, note) = DROP_RATE.check(50.0).unwrap_err().explain();
        assert_eq!(note.as_deref(), Some("help: this looks like a percentage; for 50%, write 0.5"));
        let (title, _, _) = INDEX.check(1.5).unwrap_err().explain();
        assert_eq!(title, "the index in `x[i]` must be a whole number, found 1.5, which is not a whole number");
    }
}
