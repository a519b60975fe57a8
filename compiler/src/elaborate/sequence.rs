//! Built-ins of the sequence family (notes §12–14, §17–20): embedding lookup,
//! masks and scaled dot-product attention. `embedding` is the `Gather`
//! primitive; attention is a composite of matmuls, a masked softmax and
//! reshapes, so it needs no derivative rule of its own.

use super::builtins::{bind, take, tensor_arg};
use super::error::ErrorKind;
use super::range;
use super::value::{Arg, Tensor, Value};
use super::{Ctx, ElabError};
use crate::ast::Span;
use crate::ir::{DType, Dim, Shape, ValueId};
use crate::ops::{BinaryOp, Op, UnaryOp};

pub const NAMES: &[&str] = &["embedding", "causal_mask", "padding_mask", "attention", "sinusoidal_positions", "rotary", "scan"];

/// Added to the scores of masked-out positions: exp(-1e9 - max) is exactly 0
/// in f32, and unlike -inf it keeps a fully masked row finite (uniform).
const MASKED: f64 = -1e9;

pub(super) fn call(cx: &mut Ctx, name: &'static str, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
    let t = match name {
        "scan" => return super::recurrence::scan(cx, args, span),
        "embedding" => {
            let mut a = bind(cx, name, args, &["ids", "table"], 2, span)?;
            let ia = take(&mut a[0]);
            let ids_span = ia.as_ref().map_or(span, |a| a.span);
            let ids = tensor_arg(cx, ia, span)?;
            let table = tensor_arg(cx, take(&mut a[1]), span)?;
            embedding(cx, &ids, ids_span, &table, span)?
        }
        "causal_mask" => {
            let mut a = bind(cx, name, args, &["size"], 1, span)?;
            let Some(n) = take(&mut a[0]) else { return Err(super::builtins::internal(cx, span)) };
            let size = cx.natural(&n.value, n.span, &range::SEQUENCE_LENGTH)?;
            causal_mask(cx, size, span)
        }
        "sinusoidal_positions" => {
            let mut a = bind(cx, name, args, &["length", "width"], 2, span)?;
            let (Some(t), Some(d)) = (take(&mut a[0]), take(&mut a[1])) else { return Err(super::builtins::internal(cx, span)) };
            let t = cx.natural(&t.value, t.span, &range::POSITIONS)?;
            let d = cx.natural(&d.value, d.span, &range::POSITION_WIDTH)?;
            if d % 2 != 0 {
                return Err(cx.err(ErrorKind::Builtin {
                    span,
                    title: format!("sinusoidal positions pair a sine with a cosine, so the width must be even, found {d}"),
                    label: "here".into(),
                    note: None,
                }));
            }
            sinusoidal(cx, t, d, span)
        }
        "rotary" => {
            let mut a = bind(cx, name, args, &["x"], 1, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            rotary(cx, &x, span)?
        }
        "padding_mask" => {
            let mut a = bind(cx, name, args, &["ids", "pad"], 2, span)?;
            let ia = take(&mut a[0]);
            let ids_span = ia.as_ref().map_or(span, |a| a.span);
            let ids = tensor_arg(cx, ia, span)?;
            let Some(p) = take(&mut a[1]) else { return Err(super::builtins::internal(cx, span)) };
            let pad = cx.whole(&p.value, p.span, &range::PAD_ID)? as f64;
            let ty = cx.ty(&ids);
            if ty.dtype != DType::I32 {
                return Err(cx.err(ErrorKind::Builtin {
                    span: ids_span,
                    title: format!("`padding_mask` compares token ids, but these are floats: {ty}"),
                    label: "expected an int tensor".into(),
                    note: None,
                }));
            }
            let mut b = cx.builder(span);
            let padv = b.full(pad, &ty.shape);
            let is_pad = b.binary(BinaryOp::Eq, ids.id, padv);
            let one = b.full(1.0, &ty.shape);
            let id = b.sub(one, is_pad);
            Tensor { id, names: ids.names.clone() }
        }
        "attention" => {
            let mut a = bind(cx, name, args, &["q", "k", "v", "mask"], 3, span)?;
            let q = tensor_arg(cx, take(&mut a[0]), span)?;
            let k = tensor_arg(cx, take(&mut a[1]), span)?;
            let v = tensor_arg(cx, take(&mut a[2]), span)?;
            let mask = match take(&mut a[3]) {
                Some(m) => Some((tensor_arg(cx, Some(m.clone()), span)?, m.span)),
                None => None,
            };
            attention(cx, &q, &k, &v, mask, span)?
        }
        _ => return Err(super::builtins::internal(cx, span)),
    };
    Ok(Value::Tensor(t))
}

/// The angle `p · 10000^(−2i/d)` of position `p` and pair `i`, on `[t, d/2, 1]`.
fn angles(cx: &mut Ctx, t: usize, d: usize, span: Span) -> ValueId {
    let shape = Shape::known(&[t, d / 2, 1]);
    let mut b = cx.builder(span);
    let p = b.iota(&shape, 0);
    let i = b.iota(&shape, 1);
    let e = b.scale(i, -2.0 * 10000f64.ln() / d as f64);
    let freq = b.exp(e);
    b.mul(p, freq)
}

/// `[t, d]`: sin(angle) in the even columns, cos(angle) in the odd ones
/// (Vaswani et al.), added to token embeddings as fixed positions.
fn sinusoidal(cx: &mut Ctx, t: usize, d: usize, span: Span) -> Tensor {
    let a = angles(cx, t, d, span);
    let pairs = Shape::known(&[t, d / 2, 2]);
    let mut b = cx.builder(span);
    let a = b.broadcast(a, &pairs);
    // cos x = sin(x + π/2): column 2i + 1 is shifted by a quarter turn.
    let odd = b.iota(&pairs, 2);
    let quarter = b.scale(odd, std::f64::consts::FRAC_PI_2);
    let shifted = b.add(a, quarter);
    let v = b.unary(UnaryOp::Sin, shifted);
    let id = b.reshape(v, &Shape::known(&[t, d]));
    Tensor { id, names: Vec::new() }
}

/// Rotary positions (Su et al.): each pair `(x[2i], x[2i+1])` of a query or key
/// at position `p` (axis −2) is the complex number `x[2i] + i·x[2i+1]`,
/// multiplied by `e^{i·p·θ_i}`, θ_i = 10000^(−2i/d). Dot products of rotated
/// queries and keys then depend on positions only through their difference.
fn rotary(cx: &mut Ctx, x: &Tensor, span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(x);
    let r = shape.rank();
    let dims = shape.dims();
    let (t, d) = match (r >= 2).then(|| (dims[r - 2].known(), dims[r - 1].known())) {
        Some((Some(t), Some(d))) if d % 2 == 0 => (t, d),
        _ => {
            return Err(cx.err(ErrorKind::Builtin {
                span,
                title: format!("`rotary` rotates pairs of the last axis by the position on the axis before it: it needs [.., T, even width] with both known, found {shape}"),
                label: "here".into(),
                note: None,
            }))
        }
    };
    let a = angles(cx, t, d, span);
    let mut pairs = dims[..r - 1].to_vec();
    pairs.extend([Dim::Known(d / 2), Dim::Known(2)]);
    let pairs = Shape(pairs);
    let mut half = pairs.0.clone();
    half[r] = Dim::Known(1);
    let half = Shape(half);
    let mut b = cx.builder(span);
    let (c, s) = (b.unary(UnaryOp::Cos, a), b.unary(UnaryOp::Sin, a));
    let (c, s) = (b.broadcast(c, &half), b.broadcast(s, &half));
    let xp = b.reshape(x.id, &pairs);
    let (re, im) = (b.slice(xp, r, 0, 1), b.slice(xp, r, 1, 2));
    // (re + i·im)(c + i·s) = (re·c − im·s) + i·(re·s + im·c)
    let (rc, is) = (b.mul(re, c), b.mul(im, s));
    let out_re = b.sub(rc, is);
    let (rs, ic) = (b.mul(re, s), b.mul(im, c));
    let out_im = b.add(rs, ic);
    let joined = b.concat(&[out_re, out_im], r);
    let id = b.reshape(joined, &shape);
    Ok(Tensor { id, names: x.names.clone() })
}

/// Rows `ids` of `table [V, d..]`: `[ids.., d..]`.
fn embedding(cx: &mut Ctx, ids: &Tensor, ids_span: Span, table: &Tensor, span: Span) -> Result<Tensor, ElabError> {
    let ty = cx.ty(ids);
    if ty.dtype != DType::I32 {
        return Err(cx.err(ErrorKind::Builtin {
            span: ids_span,
            title: format!("`embedding` looks rows up by integer id, but these ids are floats: {ty}"),
            label: "expected an int tensor".into(),
            note: Some("token ids come from a text data set (`x: [B, T] int`) or from `argmax`".into()),
        }));
    }
    let ts = cx.shape(table);
    if ts.rank() < 2 {
        return Err(cx.err(ErrorKind::Builtin {
            span,
            title: format!("an embedding table is `[vocab, width]`, found {ts}"),
            label: "here".into(),
            note: None,
        }));
    }
    let id = cx.op(Op::Gather, &[table.id, ids.id], span)?;
    let mut names = ids.names.clone();
    names.resize(ids.names.len().max(cx.shape(ids).rank()), None);
    names.extend(std::iter::repeat_n(None, ts.rank() - 1));
    Ok(Tensor { id, names })
}

/// `[n, n]` with 1 where key position `j <= i` (query `i` may look at it), else 0.
fn causal_mask(cx: &mut Ctx, n: usize, span: Span) -> Tensor {
    let shape = Shape::known(&[n, n]);
    let mut b = cx.builder(span);
    let (i, j) = (b.iota(&shape, 0), b.iota(&shape, 1));
    let future = b.binary(BinaryOp::Gt, j, i);
    let one = b.full(1.0, &shape);
    let id = b.sub(one, future);
    Tensor { id, names: Vec::new() }
}

/// `softmax(q kᵀ / √d + masked) v` over the last two axes, batched over the
/// leading ones: `q [.., Tq, d]`, `k [.., Tk, d]`, `v [.., Tk, dv]` →
/// `[.., Tq, dv]`. `mask` (1 = attend, 0 = not) broadcasts to `[.., Tq, Tk]`.
fn attention(cx: &mut Ctx, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<(Tensor, Span)>, span: Span) -> Result<Tensor, ElabError> {
    let (qs, ks) = (cx.shape(q), cx.shape(k));
    let r = qs.rank();
    let d = match qs.dims().last() {
        Some(Dim::Known(d)) if r >= 2 && ks.rank() == r => *d,
        _ => {
            return Err(cx.err(ErrorKind::Builtin {
                span,
                title: format!("`attention` takes q, k, v of the same rank ≥ 2 with a known head width, found q {qs} and k {ks}"),
                label: "here".into(),
                note: Some("for multi-head attention, reshape to [B, heads, T, head_width] first".into()),
            }))
        }
    };
    let kt = cx.builder(span).matrix_transpose(k.id);
    let kt = Tensor { id: kt, names: Vec::new() };
    let scores = super::builtins::matmul(cx, q, &kt, span, span, span)?;
    let scaled = cx.builder(span).scale(scores.id, 1.0 / (d as f64).sqrt());
    let mut logits = Tensor { id: scaled, names: Vec::new() };
    if let Some((m, mspan)) = mask {
        // (mask − 1)·1e9: 0 where attended, −1e9 where masked.
        let off = cx.builder(mspan).offset(m.id, -1.0);
        let pen = cx.builder(mspan).scale(off, -MASKED);
        let pen = Tensor { id: pen, names: Vec::new() };
        logits = cx.elementwise(BinaryOp::Add, &logits, &pen, span, mspan, span, "attention mask")?;
    }
    let last = cx.shape(&logits).rank() - 1;
    let p = cx.builder(span).softmax(logits.id, &[last]);
    let p = Tensor { id: p, names: Vec::new() };
    super::builtins::matmul(cx, &p, v, span, span, span)
}
