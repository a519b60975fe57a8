//! Sequence-to-sequence training (encoder–decoder models on `digit_task`
//! data, see `super::Seq2Seq`): the decoder input the model's `forward`
//! takes besides the source, and the `exact_match` metric that decodes with it.

use super::error::{ErrorKind, SequenceMetricProblem};
use super::range;
use super::train::{literal_natural, literal_number, MetricKind};
use super::value::{Arg, Tensor, Value};
use super::{Ctx, DataShape, ElabError};
use crate::ast::{CallArg, ExprKind, Span};
use crate::ir::{Dim, InputKind};

/// How `exact_match` decodes: token by token with the compiled forward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decoding {
    /// The most likely token each step (beam search of width 1).
    Greedy,
    /// Beam search, the finished hypotheses ranked by summed log-probability
    /// divided by (generated tokens)^alpha.
    Beam { width: usize, alpha: f64 },
}

/// `alpha` when `exact_match(beam: W)` does not give one: the average
/// log-probability per token (fairseq's and Hugging Face's default).
pub const DEFAULT_ALPHA: f64 = 1.0;

/// The widest beam `exact_match` searches with (each row keeps `width`
/// hypotheses and scores `width` × vocabulary extensions a step).
pub const MAX_WIDTH: usize = 256;

/// The forward function's second input for sequence-to-sequence data.
pub const DECODER_INPUT: &str = "decoder_input";

/// The decoder input `[B, T − 1] int` of a sequence-to-sequence model (see
/// `super::Seq2Seq`), as the forward function's second argument.
pub(crate) fn decoder_input(cx: &mut Ctx, shape: &DataShape, span: Span) -> Option<Arg> {
    let ty = shape.decoder_input_type(Dim::Sym("B".into()))?;
    let id = cx.builder(span).input(DECODER_INPUT, InputKind::Data, ty);
    let names = vec![Some("B".to_string()), None];
    Some(Arg { name: None, value: Value::Tensor(Tensor { id, names }), span })
}

/// `exact_match(greedy)`, `exact_match(beam: 4)` or `exact_match(beam: 4, alpha: 0.6)`.
pub(super) fn decoding(cx: &Ctx, span: Span, args: &[CallArg]) -> Result<Decoding, ElabError> {
    let bad = || {
        cx.err(ErrorKind::Builtin {
            span,
            title: "`exact_match` decodes with `greedy` or `beam: WIDTH`".into(),
            label: "expected e.g. `exact_match(greedy)` or `exact_match(beam: 4)`".into(),
            note: Some(format!(
                "the beam width is 1 to {MAX_WIDTH}; `alpha: NUMBER` (0 or more, default 1) sets the length normalisation, as in `exact_match(beam: 4, alpha: 0.6)`"
            )),
        })
    };
    match args {
        [a] if a.name.is_none() && matches!(&a.value.kind, ExprKind::Name(n) if n == "greedy") => Ok(Decoding::Greedy),
        [w, rest @ ..] if w.name.as_ref().is_some_and(|n| n.name == "beam") && rest.len() <= 1 => {
            let width = literal_natural(cx, &w.value, &range::BEAM_WIDTH)?;
            let alpha = match rest {
                [] => DEFAULT_ALPHA,
                [a] if a.name.as_ref().is_some_and(|n| n.name == "alpha") => literal_number(cx, &a.value, &range::BEAM_ALPHA)?,
                _ => return Err(bad()),
            };
            Ok(Decoding::Beam { width, alpha })
        }
        _ => Err(bad()),
    }
}

/// Decoding needs target sequences shaped as the model was trained on; the
/// per-row metrics need one prediction per row.
pub(super) fn check_metric_data(
    cx: &Ctx,
    kind: MetricKind,
    span: Span,
    data: &str,
    (train_data, train_shape): (&str, &DataShape),
) -> Result<(), ElabError> {
    let Some(shape) = cx.session.data.get(data) else { return Ok(()) };
    let metric = kind.name();
    let same = |a: &DataShape, b: &DataShape| a.features == b.features && a.label_width == b.label_width && a.seq2seq == b.seq2seq;
    let problem = match kind {
        MetricKind::ExactMatch(_) if shape.seq2seq.is_none() => Some((data, SequenceMetricProblem::NoTargets)),
        MetricKind::ExactMatch(_) if !same(shape, train_shape) => {
            Some((data, SequenceMetricProblem::OtherShape { train_data: train_data.into() }))
        }
        MetricKind::Accuracy | MetricKind::Mse if shape.seq2seq.is_some() => Some((data, SequenceMetricProblem::PerRow)),
        MetricKind::Accuracy | MetricKind::Mse if train_shape.seq2seq.is_some() => Some((train_data, SequenceMetricProblem::PerRow)),
        _ => None,
    };
    match problem {
        Some((data, problem)) => Err(cx.err(ErrorKind::SequenceMetric { span, metric, data: data.into(), problem })),
        None => Ok(()),
    }
}
