//! Generated sequence-to-sequence tasks:
//! `digit_task(reverse | sort, length: [8, 12], count: N, seed: s)`.
//!
//! Each row is a random string of decimal digits, its length drawn uniformly
//! from the range, and the target is what the task makes of it (the digits
//! reversed, or sorted in ascending order). Token ids:
//!
//! | id | token |
//! |---|---|
//! | 0 | PAD |
//! | 1 | BOS (begin the target) |
//! | 2 | EOS (end the target) |
//! | 3 + d | the digit d |
//!
//! A row's `x` is `source EOS PAD …` (`[max + 1]` ids: the end token marks
//! where the string ends, as T5's inputs do); its `y` is
//! `BOS target EOS PAD …` (`[max + 2]` ids). Every source string is drawn
//! once at most, so splits of the rows never share a sequence.

use crate::data::Table;
use nnc_compiler::ast::{CallArg, ExprKind, Span};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::range::{self, Rule};
use nnc_compiler::elaborate::train::constant_number;
use nnc_compiler::elaborate::Seq2Seq;
use std::collections::HashSet;

/// The special tokens of every digit task.
pub const TOKENS: Seq2Seq = Seq2Seq { pad: 0, bos: 1, eos: 2 };
/// The id of the digit 0; the digit d is `DIGIT_0 + d`.
pub const DIGIT_0: u32 = 3;
/// PAD, BOS, EOS and the ten digits.
pub const VOCAB: usize = 13;
/// The most token ids a task may hold (400 MB as f32).
const MAX_IDS: usize = 100_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Reverse,
    Sort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    pub task: Task,
    pub min_len: usize,
    pub max_len: usize,
    pub rows: usize,
    pub seed: u64,
    /// The call, for errors.
    pub span: Span,
}

const USAGE: &str =
    "digit_task(reverse | sort, length: N or [MIN, MAX], count: ROWS, seed: N): random digit strings and their reversal or sorting";

fn error(span: Span, title: impl Into<String>, label: impl Into<String>) -> Diagnostic {
    Diagnostic::new(title).label(span, label).note(USAGE)
}

/// Read the arguments of `digit_task(...)`.
pub fn parse(args: &[CallArg], span: Span) -> Result<TaskSpec, Diagnostic> {
    let (mut task, mut length, mut rows, mut seed) = (None, None, None, 0u64);
    let whole = |e: &nnc_compiler::ast::Expr, rule: &Rule| match constant_number(e) {
        Some(v) => rule.check_natural(v).map_err(|problem| problem.diagnostic(e.span).note(USAGE)),
        None => Err(error(e.span, format!("{} must be a constant number", rule.name()), "here")),
    };
    for (i, a) in args.iter().enumerate() {
        match (a.name.as_ref().map(|n| n.name.as_str()), &a.value.kind) {
            (None, ExprKind::Name(t)) | (Some("task"), ExprKind::Name(t)) if i == 0 || a.name.is_some() => {
                task = Some(match t.as_str() {
                    "reverse" => Task::Reverse,
                    "sort" => Task::Sort,
                    _ => return Err(error(a.value.span, format!("unknown task `{t}`"), "expected `reverse` or `sort`")),
                })
            }
            (Some("length"), ExprKind::List(items)) => match items.as_slice() {
                [lo, hi] => length = Some((whole(lo, &range::TASK_LENGTH)?, whole(hi, &range::TASK_LENGTH)?)),
                _ => return Err(error(a.value.span, "`length` is one length or a range `[MIN, MAX]`", "expected e.g. `[8, 12]`")),
            },
            (Some("length"), _) => {
                let n = whole(&a.value, &range::TASK_LENGTH)?;
                length = Some((n, n));
            }
            (Some("count"), _) => rows = Some(whole(&a.value, &range::TASK_COUNT)?),
            (Some("seed"), _) => seed = whole(&a.value, &range::TASK_SEED)? as u64,
            _ => {
                let at = a.name.as_ref().map_or(a.value.span, |n| n.span);
                return Err(error(at, "unexpected argument to `digit_task`", "here"));
            }
        }
    }
    let task = task.ok_or_else(|| error(span, "`digit_task` needs a task", "add `reverse` or `sort` as the first argument"))?;
    let (min_len, max_len) = length.ok_or_else(|| error(span, "`digit_task` needs the string lengths", "add e.g. `length: [8, 12]`"))?;
    let rows = rows.ok_or_else(|| error(span, "`digit_task` needs the number of rows", "add e.g. `count: 10000`"))?;
    if min_len > max_len {
        return Err(error(
            span,
            format!("the length range [{min_len}, {max_len}] is empty"),
            "the first length must not exceed the second",
        ));
    }
    // Stop counting once there are enough: the lengths may run to 2^53, and
    // 10^l passes any row count by l = 20.
    let distinct = (min_len..=max_len)
        .try_fold(0usize, |n, l| {
            let n = n.saturating_add(10usize.saturating_pow(u32::try_from(l).unwrap_or(u32::MAX)));
            if n >= rows {
                Err(n)
            } else {
                Ok(n)
            }
        })
        .unwrap_or_else(|enough| enough);
    if rows > distinct {
        return Err(error(
            span,
            format!("{rows} rows asked for, but there are only {distinct} distinct digit strings of these lengths"),
            "every row is a different string",
        ));
    }
    if rows.saturating_mul(2 * max_len + 3) > MAX_IDS {
        return Err(error(span, format!("{rows} rows of up to {max_len} digits are too many to generate"), "too many rows")
            .note(format!("a task holds at most {MAX_IDS} token ids, sources and targets together")));
    }
    Ok(TaskSpec { task, min_len, max_len, rows, seed, span })
}

/// The rows of the task: distinct random sources and their targets.
pub fn generate(spec: &TaskSpec) -> Table {
    let mut rng = crate::rng::seeded(spec.seed, 0);
    let (sw, tw) = (spec.max_len + 1, spec.max_len + 2);
    let mut x = ndarray::Array2::<f32>::from_elem((spec.rows, sw), TOKENS.pad as f32);
    let mut y = ndarray::Array2::<f32>::from_elem((spec.rows, tw), TOKENS.pad as f32);
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(spec.rows);
    let mut r = 0;
    while r < spec.rows {
        let len = spec.min_len + crate::rng::below(&mut rng, spec.max_len - spec.min_len + 1);
        let digits: Vec<u8> = (0..len).map(|_| crate::rng::below(&mut rng, 10) as u8).collect();
        if !seen.insert(digits.clone()) {
            continue;
        }
        let mut target = digits.clone();
        match spec.task {
            Task::Reverse => target.reverse(),
            Task::Sort => target.sort_unstable(),
        }
        let id = |d: u8| (DIGIT_0 + u32::from(d)) as f32;
        for (i, &d) in digits.iter().enumerate() {
            x[[r, i]] = id(d);
        }
        x[[r, len]] = TOKENS.eos as f32;
        y[[r, 0]] = TOKENS.bos as f32;
        for (i, &d) in target.iter().enumerate() {
            y[[r, i + 1]] = id(d);
        }
        y[[r, len + 1]] = TOKENS.eos as f32;
        r += 1;
    }
    let feature_names = (0..sw).map(|i| format!("s{i}")).collect();
    Table { features: x, labels: y, feature_names, label_name: "target".into() }
}

/// Token ids as text: digits as themselves, the special tokens by name.
pub fn show(ids: &[u32]) -> String {
    ids.iter()
        .map(|&t| match t {
            t if t == TOKENS.pad => " <pad>".to_string(),
            t if t == TOKENS.bos => "<bos> ".to_string(),
            t if t == TOKENS.eos => " <eos>".to_string(),
            t if (DIGIT_0..DIGIT_0 + 10).contains(&t) => (t - DIGIT_0).to_string(),
            t => format!(" <{t}>"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(task: Task, rows: usize) -> TaskSpec {
        TaskSpec { task, min_len: 2, max_len: 4, rows, seed: 7, span: Span::default() }
    }

    /// The ids of one row's source digits and target digits (without specials).
    fn digits(t: &Table, r: usize) -> (Vec<u32>, Vec<u32>) {
        let ids = |row: ndarray::ArrayView1<f32>| row.iter().map(|&v| v as u32).filter(|&v| v >= DIGIT_0).collect::<Vec<_>>();
        (ids(t.features.row(r)), ids(t.labels.row(r)))
    }

    #[test]
    fn rows_are_distinct_padded_and_framed() {
        let t = generate(&spec(Task::Reverse, 500));
        assert_eq!(t.features.dim(), (500, 5));
        assert_eq!(t.labels.dim(), (500, 6));
        let mut sources = HashSet::new();
        let mut lengths = [0usize; 5];
        for r in 0..500 {
            let (src, tgt) = digits(&t, r);
            let n = src.len();
            lengths[n] += 1;
            assert!(sources.insert(src.clone()), "row {r} repeats a source");
            let mut rev = src.clone();
            rev.reverse();
            assert_eq!(tgt, rev);
            // Source: n digits, EOS, padding; target: BOS, n digits, EOS, padding.
            assert_eq!(t.features[[r, n]], TOKENS.eos as f32);
            assert!(t.features.row(r).iter().skip(n + 1).all(|&v| v == 0.0));
            assert_eq!(t.labels[[r, 0]], TOKENS.bos as f32);
            assert_eq!(t.labels[[r, n + 1]], TOKENS.eos as f32);
            assert!(t.labels.row(r).iter().skip(n + 2).all(|&v| v == 0.0));
        }
        assert!(lengths[2..].iter().all(|&c| c > 30), "every length occurs: {lengths:?}");
        assert_eq!(generate(&spec(Task::Reverse, 500)), t, "deterministic given the seed");
    }

    /// The arguments of a `digit_task(...)` written in a data declaration.
    fn parsed(call: &str) -> Result<TaskSpec, String> {
        let program = nnc_compiler::syntax::parse(&format!("data d = {call} {{ train = rows[..] }}")).map_err(|d| d[0].title.clone())?;
        let Some(nnc_compiler::ast::Item::Data(def)) = program.items.first() else { return Err("no data item".into()) };
        let ExprKind::Call { args, .. } = &def.source.kind else { return Err("not a call".into()) };
        parse(args, def.source.span).map_err(|d| d.title)
    }

    #[test]
    fn arguments_are_read_and_checked() {
        let spec = parsed("digit_task(sort, length: [3, 5], count: 40, seed: 2)").unwrap();
        assert_eq!((spec.task, spec.min_len, spec.max_len, spec.rows, spec.seed), (Task::Sort, 3, 5, 40, 2));
        let spec = parsed("digit_task(task: reverse, length: 4, count: 10)").unwrap();
        assert_eq!((spec.task, spec.min_len, spec.max_len, spec.seed), (Task::Reverse, 4, 4, 0));
        for (call, title) in [
            ("digit_task(rotate, length: 4, count: 10)", "unknown task `rotate`"),
            ("digit_task(sort, length: [5, 3], count: 10)", "the length range [5, 3] is empty"),
            ("digit_task(sort, length: [0, 3], count: 10)", "`length` of `digit_task` must be a whole number of at least 1, found 0"),
            (
                "digit_task(sort, length: [1, 2.5], count: 10)",
                "`length` of `digit_task` must be a whole number of at least 1, found 2.5, which is not a whole number",
            ),
            ("digit_task(sort, count: 10)", "`digit_task` needs the string lengths"),
            (
                "digit_task(sort, length: 2, count: 101)",
                "101 rows asked for, but there are only 100 distinct digit strings of these lengths",
            ),
            ("digit_task(sort, length: 20, count: 10000000)", "10000000 rows of up to 20 digits are too many to generate"),
            ("digit_task(sort, length: 2, count: 10, size: 3)", "unexpected argument to `digit_task`"),
            // Lengths up to 2^53 are counted in a few steps (this hung, counting to usize::MAX).
            ("digit_task(sort, length: [1, 2 ** 53], count: 10)", "10 rows of up to 9007199254740992 digits are too many to generate"),
        ] {
            assert_eq!(parsed(call).unwrap_err(), title, "{call}");
        }
    }

    #[test]
    fn sort_sorts() {
        let t = generate(&spec(Task::Sort, 100));
        for r in 0..100 {
            let (mut src, tgt) = digits(&t, r);
            src.sort_unstable();
            assert_eq!(src, tgt);
        }
        assert_eq!(show(&[1, 3, 12, 2, 0]), "<bos> 09 <eos> <pad>");
    }
}
