//! Built-ins of the vision family (notes §7–10): convolution, pooling and the
//! normalisations, written as composites of primitives (`Pad`, `Unfold`,
//! `MatMul`, reductions), so they need no derivative rules of their own.
//!
//! Layout is NCHW throughout: `x [N, C, H, W]`, conv weights `[O, C/groups, KH, KW]`.

use super::builtins::{bind, internal, reduction, take, tensor_arg};
use super::error::ErrorKind;
use super::range::{self, Rule};
use super::value::{Arg, Tensor, Value};
use super::{Ctx, ElabError};
use crate::ast::Span;
use crate::ir::{Dim, Shape, ValueId};
use crate::ops::{Op, Window};

pub const NAMES: &[&str] = &[
    "conv2d",
    "max_pool",
    "avg_pool",
    "global_avg_pool",
    "flatten",
    "layer_norm",
    "instance_norm",
    "group_norm",
    "batch_norm",
    "dropout",
    "stochastic_depth",
];

pub(super) fn call(cx: &mut Ctx, name: &'static str, args: Vec<Arg>, span: Span) -> Result<Value, ElabError> {
    let t = match name {
        "conv2d" => {
            let mut a = bind(cx, name, args, &["x", "weight", "stride", "padding", "dilation", "groups"], 2, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let wa = take(&mut a[1]);
            let w_span = wa.as_ref().map_or(span, |a| a.span);
            let w = tensor_arg(cx, wa, span)?;
            let stride = pair(cx, take(&mut a[2]), 1, &range::CONV_STRIDE)?;
            let padding = pair(cx, take(&mut a[3]), 0, &range::CONV_PADDING)?;
            let dilation = pair(cx, take(&mut a[4]), 1, &range::CONV_DILATION)?;
            let groups = match take(&mut a[5]) {
                Some(g) => cx.natural(&g.value, g.span, &range::GROUPS)?,
                None => 1,
            };
            conv2d(cx, &x, &w, w_span, Conv { stride, padding, dilation, groups }, span)?
        }
        "max_pool" | "avg_pool" => {
            let mut a = bind(cx, name, args, &["x", "size", "stride", "padding"], 2, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let size = pair(cx, take(&mut a[1]), 1, &range::POOL_SIZE)?;
            let stride = match take(&mut a[2]) {
                Some(s) => pair(cx, Some(s), 1, &range::CONV_STRIDE)?,
                None => size,
            };
            let padding = pair(cx, take(&mut a[3]), 0, &range::CONV_PADDING)?;
            pool(cx, name, &x, Window { kernel: size, stride, dilation: [1, 1], lead: 0 }, padding, span)?
        }
        "global_avg_pool" => {
            let mut a = bind(cx, name, args, &["x"], 1, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let (r, shape) = (cx.shape(&x).rank(), cx.shape(&x));
            if r < 3 {
                return Err(layout_err(cx, name, "[N, C, H, W]", &shape, span));
            }
            reduction(cx, "mean", &x, &[r - 2, r - 1], false, span)?
        }
        "flatten" => {
            let mut a = bind(cx, name, args, &["x"], 1, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let shape = cx.shape(&x);
            let Some((first, rest)) = shape.dims().split_first() else {
                return Err(layout_err(cx, name, "a tensor with a batch axis", &shape, span));
            };
            let flat = Shape(vec![first.clone(), Dim::product(rest)]);
            let id = cx.op(Op::Reshape { shape: flat }, &[x.id], span)?;
            let names = x.names.first().map(|n| vec![n.clone(), None]).unwrap_or_default();
            Tensor { id, names }
        }
        "layer_norm" | "instance_norm" | "group_norm" => {
            let params: &[&str] = match name {
                "group_norm" => &["x", "gamma", "beta", "groups", "eps"],
                _ => &["x", "gamma", "beta", "eps", "axis"],
            };
            let required = if name == "group_norm" { 4 } else { 3 };
            let mut a = bind(cx, name, args, params, required, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let ga = take(&mut a[1]);
            let g_span = ga.as_ref().map_or(span, |a| a.span);
            let gamma = tensor_arg(cx, ga, span)?;
            let ba = take(&mut a[2]);
            let b_span = ba.as_ref().map_or(span, |a| a.span);
            let beta = tensor_arg(cx, ba, span)?;
            let eps_slot = if name == "group_norm" { 4 } else { 3 };
            let eps = match take(&mut a[eps_slot]) {
                Some(e) => cx.number(&e.value, e.span, &range::NORM_EPS)?,
                None => 1e-5,
            };
            let affine = Affine { gamma, beta, spans: [g_span, b_span] };
            match name {
                "layer_norm" => {
                    let axis = match take(&mut a[4]) {
                        Some(ax) => Some(super::builtins::axes_arg(cx, &x, Some(ax), span)?.first().copied().unwrap_or(0)),
                        None => None,
                    };
                    layer_norm(cx, &x, affine, axis, eps, span)?
                }
                "instance_norm" => instance_norm(cx, &x, affine, eps, span)?,
                _ => {
                    let Some(g) = take(&mut a[3]) else { return Err(internal(cx, span)) };
                    let groups = cx.natural(&g.value, g.span, &range::GROUPS)?;
                    group_norm(cx, &x, affine, groups, g.span, eps, span)?
                }
            }
        }
        "dropout" | "stochastic_depth" => {
            let mut a = bind(cx, name, args, &["x", "p"], 2, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let Some(p) = take(&mut a[1]) else { return Err(internal(cx, span)) };
            let rate = cx.number(&p.value, p.span, &range::DROP_RATE)?;
            if !cx.training || rate == 0.0 {
                // Evaluation: the identity (inverted scaling happened in training).
                x
            } else {
                drop_mask(cx, name, &x, rate, span)?
            }
        }
        "batch_norm" => {
            let params = ["x", "gamma", "beta", "running_mean", "running_var", "momentum", "eps"];
            let mut a = bind(cx, name, args, &params, 5, span)?;
            let x = tensor_arg(cx, take(&mut a[0]), span)?;
            let ga = take(&mut a[1]);
            let g_span = ga.as_ref().map_or(span, |a| a.span);
            let gamma = tensor_arg(cx, ga, span)?;
            let ba = take(&mut a[2]);
            let b_span = ba.as_ref().map_or(span, |a| a.span);
            let beta = tensor_arg(cx, ba, span)?;
            let mut stats = Vec::new();
            for slot in [3, 4] {
                let arg = take(&mut a[slot]).ok_or_else(|| internal(cx, span))?;
                let s = arg.span;
                stats.push((tensor_arg(cx, Some(arg), span)?, s));
            }
            let momentum = match take(&mut a[5]) {
                Some(m) => cx.number(&m.value, m.span, &range::BN_MOMENTUM)?,
                None => 0.1,
            };
            let eps = match take(&mut a[6]) {
                Some(e) => cx.number(&e.value, e.span, &range::NORM_EPS)?,
                None => 1e-5,
            };
            let affine = Affine { gamma, beta, spans: [g_span, b_span] };
            batch_norm(cx, &x, affine, [&stats[0], &stats[1]], momentum, eps, span)?
        }
        _ => return Err(cx.err(ErrorKind::Internal { span, message: format!("built-in `{name}` has no definition") })),
    };
    Ok(Value::Tensor(t))
}

fn builtin_err(cx: &Ctx, span: Span, title: String, label: String, note: Option<String>) -> ElabError {
    cx.err(ErrorKind::Builtin { span, title, label, note })
}

fn layout_err(cx: &Ctx, name: &str, expected: &str, found: &Shape, span: Span) -> ElabError {
    builtin_err(cx, span, format!("`{name}` expects {expected}, found {found}"), format!("this is {found}"), None)
}

/// `layout_err` for a built-in that needs images: a batch of flat rows `[N, F]`
/// gets a hint to reshape them (`[N, 1, 8, 8]` when `F` is a square).
fn image_layout_err(cx: &Ctx, name: &str, expected: &str, found: &Shape, span: Span) -> ElabError {
    let help = match found.dims() {
        [n, f] => {
            let side = f.known().map(|f| (f, (f as f64).sqrt().round() as usize)).filter(|&(f, s)| s * s == f);
            Some(match side {
                Some((_, s)) => format!(
                    "help: {found} is a batch of flat rows; reshape them into images first, e.g. `reshape(x, [{n}, 1, {s}, {s}])` for one channel of {s}x{s}"
                ),
                None => format!("help: {found} is a batch of flat rows; reshape them into images [{n}, C, H, W] first with `reshape`"),
            })
        }
        _ => None,
    };
    builtin_err(cx, span, format!("`{name}` expects {expected}, found {found}"), format!("this is {found}, of rank {}", found.rank()), help)
}

/// `2` or `[2, 1]`: a size along (H, W).
fn pair(cx: &mut Ctx, a: Option<Arg>, default: usize, rule: &Rule) -> Result<[usize; 2], ElabError> {
    let Some(a) = a else { return Ok([default, default]) };
    match &a.value {
        Value::List(items) => match items.as_slice() {
            [(h, hs), (w, ws)] => Ok([cx.natural(h, *hs, rule)?, cx.natural(w, *ws, rule)?]),
            _ => {
                let found = "something else".to_string();
                let expected = format!("`{}` as an integer or a pair `[h, w]` of integers", rule.keyword);
                Err(cx.err(ErrorKind::WrongKind { span: a.span, expected, found }))
            }
        },
        v => {
            let n = cx.natural(v, a.span, rule)?;
            Ok([n, n])
        }
    }
}

/// The known sizes of the last `k` axes, or `None`.
fn known_tail(shape: &Shape, k: usize) -> Option<Vec<usize>> {
    let d = shape.dims();
    d.get(d.len().checked_sub(k)?..)?.iter().map(Dim::known).collect()
}

#[derive(Clone, Copy)]
struct Conv {
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
}

/// Pad the last two axes by `p` on each side with `value`.
fn pad_hw(cx: &mut Ctx, x: ValueId, p: [usize; 2], value: f64, span: Span) -> Result<ValueId, ElabError> {
    let r = cx.graph.shape(x).rank();
    let mut id = x;
    for (k, &pk) in p.iter().enumerate() {
        if pk > 0 {
            id = cx.op(Op::Pad { axis: r - 2 + k, before: pk, after: pk, value }, &[id], span)?;
        }
    }
    Ok(id)
}

/// Check that `w` fits the (padded) spatial size `hw`, with the notes' formula in the message.
fn check_fit(cx: &Ctx, what: &str, hw: [usize; 2], w: &Window, pad: [usize; 2], span: Span) -> Result<[usize; 2], ElabError> {
    let mut out = [0; 2];
    for a in 0..2 {
        // Saturating: padding too large for any tensor is refused at the `Pad`.
        let padded = hw[a].saturating_add(pad[a].saturating_mul(2));
        match w.out_size(a, padded) {
            Some(n) => out[a] = n,
            None => {
                let axis = ["height", "width"][a];
                let ext = w.extent(a);
                let dil = if w.dilation[a] > 1 { format!(" (dilation {}: spans {ext})", w.dilation[a]) } else { String::new() };
                return Err(builtin_err(
                    cx,
                    span,
                    format!(
                        "the {what} does not fit the input: {axis} {} with padding {} is {padded}, the window needs {ext}",
                        hw[a], pad[a]
                    ),
                    format!("kernel {}x{}{dil} on a {}x{} input", w.kernel[0], w.kernel[1], hw[0], hw[1]),
                    Some(format!(
                        "output size = (N - K + 2P)/S + 1 = ({} - {ext} + 2·{})/{} + 1 < 1; use more padding or a smaller kernel",
                        hw[a], pad[a], w.stride[a]
                    )),
                ));
            }
        }
    }
    Ok(out)
}

fn conv2d(cx: &mut Ctx, x: &Tensor, w: &Tensor, w_span: Span, c: Conv, span: Span) -> Result<Tensor, ElabError> {
    let (xs, ws) = (cx.shape(x), cx.shape(w));
    let (Some(xt), 4) = (known_tail(&xs, 3), xs.rank()) else {
        return Err(image_layout_err(cx, "conv2d", "an input [N, C, H, W] with known C, H and W", &xs, span));
    };
    let (Some(wt), 4) = (known_tail(&ws, 4), ws.rank()) else {
        return Err(layout_err(cx, "conv2d", "a weight [out_channels, in_channels / groups, KH, KW]", &ws, w_span));
    };
    let (ch, hw) = (xt[0], [xt[1], xt[2]]);
    let (o, cg, kernel) = (wt[0], wt[1], [wt[2], wt[3]]);
    let g = c.groups;
    if ch % g != 0 || o % g != 0 {
        let (what, n) = if ch % g != 0 { ("input channels", ch) } else { ("output channels", o) };
        return Err(builtin_err(
            cx,
            span,
            format!("`conv2d` with groups = {g}: the {n} {what} are not divisible by {g}"),
            format!("{n} {what} in {g} groups"),
            Some("every group convolves channels / groups input channels into out_channels / groups outputs".into()),
        ));
    }
    if cg != ch / g {
        let (title, label) = if g == 1 {
            (
                format!("`conv2d`: the weight {ws} expects {cg} input channels, but the input {xs} has {ch}"),
                format!("weight [out, in, KH, KW] = {ws}: {cg} input channels"),
            )
        } else {
            (
                format!("`conv2d`: the weight {ws} expects {cg} input channels per group, the input {xs} has {ch} / {g} = {}", ch / g),
                format!("weight [out, in / groups, KH, KW] = {ws}: {cg} input channels per group"),
            )
        };
        // [in, out, KH, KW] (a transposed convolution's layout) instead of [out, in, KH, KW].
        let note = if g == 1 && o == ch {
            format!(
                "help: this weight looks like [in, out, KH, KW]; `conv2d` wants [out, in, KH, KW], here [{cg}, {ch}, {}, {}]: swap the first two dimensions where it is declared",
                kernel[0], kernel[1]
            )
        } else {
            format!("for this input the weight needs shape [{o}, {}, {}, {}]", ch / g, kernel[0], kernel[1])
        };
        return Err(builtin_err(cx, w_span, title, label, Some(note)));
    }
    if cg == 1 && o == ch {
        return depthwise(cx, x, w, [ch, hw[0], hw[1]], kernel, c, span);
    }
    // The whole batch is one matrix product per group (im2col):
    //   x [N, C, H, W] → (pad) → view [G, C/G, N, H, W] → unfold → [G, KH, KW, C/G, N, OH, OW]
    //   = [G, KH·KW·C/G, N·OH·OW];  weights [O, C/G, KH, KW] → [G, O/G, KH·KW·C/G];
    //   product [G, O/G, N·OH·OW] = [O, N, OH, OW], viewed as [N, O, OH, OW].
    // One large product keeps both cores busy and packs the weights once.
    let window = Window { kernel, stride: c.stride, dilation: c.dilation, lead: 1 };
    let [oh, ow] = check_fit(cx, &format!("{}x{} convolution kernel", kernel[0], kernel[1]), hw, &window, c.padding, span)?;
    let n = xs.dims()[0].clone();
    let (og, kk) = (o / g, cg * kernel[0] * kernel[1]);
    let known = |v: &[usize]| v.iter().map(|&d| Dim::Known(d)).collect::<Vec<_>>();
    let xp = pad_hw(cx, x.id, c.padding, 0.0, span)?;
    let [ph, pw] = [hw[0] + 2 * c.padding[0], hw[1] + 2 * c.padding[1]];
    let mut grouped = vec![n.clone()];
    grouped.extend(known(&[g, cg, ph, pw]));
    let x5 = cx.op(Op::Reshape { shape: Shape(grouped) }, &[xp], span)?;
    let xt = cx.op(Op::Transpose { perm: vec![1, 2, 0, 3, 4] }, &[x5], span)?;
    let cols = cx.op(Op::Unfold { window }, &[xt], span)?;
    let npix = Dim::product(&[n.clone(), Dim::Known(oh * ow)]);
    let cols = cx.op(Op::Reshape { shape: Shape(vec![Dim::Known(g), Dim::Known(kk), npix]) }, &[cols], span)?;
    let w5 = cx.op(Op::Reshape { shape: Shape::known(&[g, og, cg, kernel[0], kernel[1]]) }, &[w.id], span)?;
    let wt = cx.op(Op::Transpose { perm: vec![0, 1, 3, 4, 2] }, &[w5], span)?;
    let wm = cx.op(Op::Reshape { shape: Shape::known(&[g, og, kk]) }, &[wt], span)?;
    let y = cx.op(Op::MatMul, &[wm, cols], span)?;
    let mut onhw = vec![Dim::Known(o), n];
    onhw.extend(known(&[oh, ow]));
    let y = cx.op(Op::Reshape { shape: Shape(onhw) }, &[y], span)?;
    let id = cx.op(Op::Transpose { perm: vec![1, 0, 2, 3] }, &[y], span)?;
    Ok(Tensor { id, names: batch_names(x, 4) })
}

/// A depthwise convolution (one input channel per group, `O = C`) as one fused
/// loop: `y[n, c] = Σ_ij w[c, i, j] · x[n, c, p·S + i·D, q·S + j·D]`, the
/// window read in place (an inlined `Unfold`), no im2col matrix. Its backward
/// pass is likewise a `Fold` of a fused product and a reduction.
fn depthwise(cx: &mut Ctx, x: &Tensor, w: &Tensor, chw: [usize; 3], kernel: [usize; 2], c: Conv, span: Span) -> Result<Tensor, ElabError> {
    let [ch, h, wd] = chw;
    let window = Window { kernel, stride: c.stride, dilation: c.dilation, lead: 0 };
    let what = format!("{}x{} convolution kernel", kernel[0], kernel[1]);
    let [oh, ow] = check_fit(cx, &what, [h, wd], &window, c.padding, span)?;
    let n = cx.shape(x).dims()[0].clone();
    let xp = pad_hw(cx, x.id, c.padding, 0.0, span)?;
    let u = cx.op(Op::Unfold { window }, &[xp], span)?; // [KH, KW, N, C, OH, OW]
    let full = cx.shape(&Tensor { id: u, names: Vec::new() });
    let w3 = cx.op(Op::Reshape { shape: Shape::known(&[ch, kernel[0], kernel[1]]) }, &[w.id], span)?;
    let wt = cx.op(Op::Transpose { perm: vec![1, 2, 0] }, &[w3], span)?;
    let w6 = cx.op(Op::Reshape { shape: Shape::known(&[kernel[0], kernel[1], 1, ch, 1, 1]) }, &[wt], span)?;
    let mut b = cx.builder(span);
    let wb = b.broadcast(w6, &full);
    let prod = b.mul(u, wb);
    let sum = b.reduce_sum(prod, &[0, 1]);
    let out = Shape(vec![n, Dim::Known(ch), Dim::Known(oh), Dim::Known(ow)]);
    let id = cx.op(Op::Reshape { shape: out }, &[sum], span)?;
    Ok(Tensor { id, names: batch_names(x, 4) })
}

/// The batch axis keeps its name; the others are new.
fn batch_names(x: &Tensor, rank: usize) -> Vec<Option<String>> {
    match x.names.first() {
        Some(Some(n)) => std::iter::once(Some(n.clone())).chain(std::iter::repeat_n(None, rank - 1)).collect(),
        _ => Vec::new(),
    }
}

fn pool(cx: &mut Ctx, name: &str, x: &Tensor, window: Window, padding: [usize; 2], span: Span) -> Result<Tensor, ElabError> {
    let xs = cx.shape(x);
    let r = xs.rank();
    let Some(hw) = known_tail(&xs, 2).filter(|_| r >= 3) else {
        return Err(image_layout_err(cx, name, "an input [N, C, H, W] with known H and W", &xs, span));
    };
    if padding.iter().zip(window.kernel).any(|(&p, k)| 2 * p > k) {
        return Err(builtin_err(
            cx,
            span,
            format!(
                "`{name}`: padding {}x{} is more than half the {}x{} window",
                padding[0], padding[1], window.kernel[0], window.kernel[1]
            ),
            "here".into(),
            Some("a window would then cover only padding".into()),
        ));
    }
    let [oh, ow] =
        check_fit(cx, &format!("{}x{} pooling window", window.kernel[0], window.kernel[1]), [hw[0], hw[1]], &window, padding, span)?;
    let mut dims = xs.dims()[..r - 2].to_vec();
    dims.extend([Dim::Known(oh), Dim::Known(ow)]);
    let tiles = window.stride == window.kernel && padding == [0, 0] && hw[0] % window.kernel[0] == 0 && hw[1] % window.kernel[1] == 0;
    if tiles {
        // Windows that tile the image (2x2, stride 2): a reshape to
        // [.., OH, KH, OW, KW] is a view, and reducing it needs no im2col copy
        // and no col2im in the backward pass.
        let mut split = xs.dims()[..r - 2].to_vec();
        split.extend([oh, window.kernel[0], ow, window.kernel[1]].map(Dim::Known));
        let v = cx.op(Op::Reshape { shape: Shape(split) }, &[x.id], span)?;
        // Window axes first ([KH, KW, .., OH, OW]), so the reduction's inner
        // loop runs along OW rather than along a window of two.
        let mut perm = vec![r - 1, r + 1];
        perm.extend(0..r - 2);
        perm.extend([r - 2, r]);
        let v = cx.op(Op::Transpose { perm }, &[v], span)?;
        let red = reduce_window_axes(cx, name, v, &window, span);
        let id = cx.op(Op::Reshape { shape: Shape(dims) }, &[red], span)?;
        if let Some(rec) = cx.layers.as_mut() {
            rec.window(id, window);
        }
        return Ok(Tensor { id, names: batch_names(x, r) });
    }
    // Max pooling pads with −∞ so padding never wins; average pooling counts
    // padded zeros (PyTorch's default, `count_include_pad=True`).
    let fill = if name == "max_pool" { f64::NEG_INFINITY } else { 0.0 };
    let xp = pad_hw(cx, x.id, padding, fill, span)?;
    // [KH, KW, N, C, OH, OW]: reduce the two window axes.
    let u = cx.op(Op::Unfold { window }, &[xp], span)?;
    let red = reduce_window_axes(cx, name, u, &window, span);
    let id = cx.op(Op::Reshape { shape: Shape(dims) }, &[red], span)?;
    Ok(Tensor { id, names: batch_names(x, r) })
}

/// The maximum (`max_pool`) or mean (`avg_pool`) over the window axes 0 and 1
/// of `[KH, KW, .., OH, OW]`, kept with size 1.
fn reduce_window_axes(cx: &mut Ctx, name: &str, windows: ValueId, w: &Window, span: Span) -> ValueId {
    let mut b = cx.builder(span);
    if name == "max_pool" {
        return b.reduce_max(windows, &[0, 1]);
    }
    let s = b.reduce_sum(windows, &[0, 1]);
    b.scale(s, 1.0 / (w.kernel[0] * w.kernel[1]) as f64)
}

/// Learnable scale and shift of a normalisation.
struct Affine {
    gamma: Tensor,
    beta: Tensor,
    /// Where `gamma` and `beta` are passed.
    spans: [Span; 2],
}

/// `(x − mean) / sqrt(var + eps)` over `axes` (biased variance, as every framework normalises).
fn normalize(cx: &mut Ctx, x: &Tensor, axes: &[usize], eps: f64, span: Span) -> Result<Tensor, ElabError> {
    normalize_with_stats(cx, x, axes, eps, span).map(|(y, _)| y)
}

/// `normalize`, also returning the mean and (biased) variance it used, with
/// the reduced axes kept (batch norm's running statistics are made from them).
fn normalize_with_stats(cx: &mut Ctx, x: &Tensor, axes: &[usize], eps: f64, span: Span) -> Result<(Tensor, [ValueId; 2]), ElabError> {
    let shape = cx.shape(x);
    let mean = reduction(cx, "mean", x, axes, true, span)?;
    let mut b = cx.builder(span);
    let mb = b.broadcast(mean.id, &shape);
    let d = b.sub(x.id, mb);
    let sq = b.mul(d, d);
    let sq = Tensor { id: sq, names: Vec::new() };
    let var = reduction(cx, "mean", &sq, axes, true, span)?;
    let mut b = cx.builder(span);
    let v = b.offset(var.id, eps);
    let s = b.sqrt(v);
    let sb = b.broadcast(s, &shape);
    let id = b.div(d, sb);
    Ok((Tensor { id, names: x.names.clone() }, [mean.id, var.id]))
}

/// `y · gamma + beta` with `gamma`, `beta` of shape `want`, placed on the axes `at` of `y`
/// (all others broadcast).
fn apply_affine(cx: &mut Ctx, y: Tensor, a: &Affine, want: &[Dim], at: &[usize], span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(&y);
    for ((t, s), which) in [&a.gamma, &a.beta].into_iter().zip(a.spans).zip(["scale (gamma)", "shift (beta)"]) {
        let ts = cx.shape(t);
        if ts.dims() != want {
            let want = Shape(want.to_vec());
            return Err(builtin_err(
                cx,
                s,
                format!("the {which} of this normalisation must have shape {want}, found {ts}"),
                format!("this is {ts}, expected {want}"),
                Some(format!(
                    "the input is {shape}; the scale and shift have one value per entry of its axes {at:?}, and are placed on them (broadcast over the rest) by the normalisation itself"
                )),
            ));
        }
    }
    // Reshape [C] to [C, 1, 1] (or similar) so right-aligned broadcasting places it on `at`.
    let r = shape.rank();
    let first = at.first().copied().unwrap_or(0);
    let mut dims: Vec<Dim> = (first..r).map(|i| if at.contains(&i) { shape.dims()[i].clone() } else { Dim::Known(1) }).collect();
    if dims.is_empty() {
        dims.push(Dim::Known(1));
    }
    let mut b = cx.builder(span);
    let g = b.reshape(a.gamma.id, &Shape(dims.clone()));
    let be = b.reshape(a.beta.id, &Shape(dims));
    let gb = b.broadcast(g, &shape);
    let bb = b.broadcast(be, &shape);
    let m = b.mul(y.id, gb);
    let id = b.add(m, bb);
    Ok(Tensor { id, names: y.names })
}

/// Over the trailing axes that `gamma` covers (PyTorch's `normalized_shape`),
/// or over the single axis `axis` (ConvNeXt's channels-first layer norm).
fn layer_norm(cx: &mut Ctx, x: &Tensor, a: Affine, axis: Option<usize>, eps: f64, span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(x);
    let r = shape.rank();
    let axes: Vec<usize> = match axis {
        Some(ax) => vec![ax],
        None => {
            let k = cx.shape(&a.gamma).rank().clamp(1, r.max(1));
            (r.saturating_sub(k)..r).collect()
        }
    };
    let want: Vec<Dim> = axes.iter().filter_map(|&i| shape.dims().get(i).cloned()).collect();
    let y = normalize(cx, x, &axes, eps, span)?;
    apply_affine(cx, y, &a, &want, &axes, span)
}

/// Per sample and channel over the spatial axes; scale and shift per channel.
fn instance_norm(cx: &mut Ctx, x: &Tensor, a: Affine, eps: f64, span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(x);
    let r = shape.rank();
    if r < 3 {
        return Err(layout_err(cx, "instance_norm", "[N, C, H, W] (or [N, C, L])", &shape, span));
    }
    let axes: Vec<usize> = (2..r).collect();
    let y = normalize(cx, x, &axes, eps, span)?;
    apply_affine(cx, y, &a, &shape.dims()[1..2], &[1], span)
}

/// Channels split into `groups`, each normalised over its channels and the
/// spatial axes; scale and shift per channel.
fn group_norm(cx: &mut Ctx, x: &Tensor, a: Affine, groups: usize, g_span: Span, eps: f64, span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(x);
    let r = shape.rank();
    let c = shape.dims().get(1).and_then(Dim::known);
    let Some(c) = c.filter(|_| r >= 2) else {
        return Err(layout_err(cx, "group_norm", "[N, C, ...] with a known channel count", &shape, span));
    };
    if c % groups != 0 {
        return Err(builtin_err(
            cx,
            g_span,
            format!("`group_norm`: {c} channels cannot be split into {groups} groups"),
            format!("{groups} groups"),
            Some(format!("the channel count must be a multiple of the number of groups ({c} % {groups} = {})", c % groups)),
        ));
    }
    let rest = Dim::product(&shape.dims()[2..]);
    let grouped = Shape(vec![shape.dims()[0].clone(), Dim::Known(groups), Dim::product(&[Dim::Known(c / groups), rest])]);
    let xg = cx.op(Op::Reshape { shape: grouped }, &[x.id], span)?;
    let y = normalize(cx, &Tensor { id: xg, names: Vec::new() }, &[2], eps, span)?;
    let back = cx.op(Op::Reshape { shape: shape.clone() }, &[y.id], span)?;
    apply_affine(cx, Tensor { id: back, names: x.names.clone() }, &a, &shape.dims()[1..2], &[1], span)
}

/// Training-mode dropout (per element) or stochastic depth (per sample: a
/// whole residual branch is dropped for that example): keep with probability
/// 1 − p and scale kept values by 1/(1 − p), so evaluation is the identity
/// (inverted scaling, as PyTorch's `Dropout` and torchvision's `StochasticDepth`).
fn drop_mask(cx: &mut Ctx, name: &str, x: &Tensor, p: f64, span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(x);
    let mask_shape = if name == "dropout" {
        shape.clone()
    } else {
        let Some(first) = shape.dims().first() else {
            return Err(layout_err(cx, name, "a tensor with a batch axis", &shape, span));
        };
        Shape(std::iter::once(first.clone()).chain(std::iter::repeat_n(Dim::Known(1), shape.rank() - 1)).collect())
    };
    let u = cx.random_uniform(&mask_shape, span);
    let mut b = cx.builder(span);
    let rate = b.full(p, &mask_shape);
    let keep = b.binary(crate::ops::BinaryOp::Gt, u, rate);
    let scaled = b.scale(keep, 1.0 / (1.0 - p));
    let mb = b.broadcast(scaled, &shape);
    let id = b.mul(x.id, mb);
    Ok(Tensor { id, names: x.names.clone() })
}

/// The path of a `buffer` input, or an error saying what batch norm needs.
fn buffer_path(cx: &Ctx, t: &Tensor, span: Span) -> Result<String, ElabError> {
    match &cx.graph.node(t.id).op {
        Op::Input { name, kind: crate::ir::InputKind::Buffer } => Ok(name.clone()),
        op => {
            let (label, how) = match op {
                Op::Input { kind: crate::ir::InputKind::Param, .. } => {
                    ("this is a `param`: the optimizer would train it", "with `buffer` instead of `param`")
                }
                _ => ("this is not a `buffer`", "in the module"),
            };
            Err(builtin_err(
                cx,
                span,
                "`batch_norm`'s running statistics must be module buffers, which batch norm updates itself".into(),
                label.into(),
                Some(format!("declare them {how}: `buffer mean: [C] = zeros` and `buffer var: [C] = ones`")),
            ))
        }
    }
}

/// Batch normalisation over every axis but the channels (axis 1). Training:
/// normalise with the batch's mean and (biased) variance and record the new
/// running statistics, `(1 − m)·old + m·batch` (the variance unbiased, as
/// PyTorch does). Evaluation: normalise with the running statistics.
fn batch_norm(cx: &mut Ctx, x: &Tensor, a: Affine, stats: [&(Tensor, Span); 2], m: f64, eps: f64, span: Span) -> Result<Tensor, ElabError> {
    let shape = cx.shape(x);
    let r = shape.rank();
    if r < 2 {
        return Err(layout_err(cx, "batch_norm", "[N, C] or [N, C, H, W]", &shape, span));
    }
    let channels = shape.dims()[1..2].to_vec();
    for (t, s) in stats {
        let ts = cx.shape(t);
        if ts.dims() != channels.as_slice() {
            return Err(builtin_err(
                cx,
                *s,
                format!(
                    "`batch_norm` normalises axis 1 (the {} channels) of {shape}, so its running statistics must be {}, found {ts}",
                    channels[0],
                    Shape(channels.clone())
                ),
                format!("this is {ts}"),
                Some("batch norm keeps one mean and variance per channel (axis 1 of an NCHW tensor)".into()),
            ));
        }
    }
    let (mean_path, var_path) = (buffer_path(cx, &stats[0].0, stats[0].1)?, buffer_path(cx, &stats[1].0, stats[1].1)?);
    let axes: Vec<usize> = (0..r).filter(|&i| i != 1).collect();
    let stat_shape: Vec<Dim> = (0..r).map(|i| if i == 1 { shape.dims()[1].clone() } else { Dim::Known(1) }).collect();
    let stat_shape = Shape(stat_shape);
    let y = if cx.training {
        let (y, batch) = normalize_with_stats(cx, x, &axes, eps, span)?;
        record_running_stats(cx, x, &axes, batch, [(&stats[0].0, mean_path), (&stats[1].0, var_path)], m, span);
        y
    } else {
        let mut b = cx.builder(span);
        let rm = b.reshape(stats[0].0.id, &stat_shape);
        let rv = b.reshape(stats[1].0.id, &stat_shape);
        let rmb = b.broadcast(rm, &shape);
        let d = b.sub(x.id, rmb);
        let v = b.offset(rv, eps);
        let s = b.sqrt(v);
        let sb = b.broadcast(s, &shape);
        Tensor { id: b.div(d, sb), names: x.names.clone() }
    };
    apply_affine(cx, y, &a, &shape.dims()[1..2], &[1], span)
}

/// The new running mean and variance of batch norm, from the batch's own
/// (`batch`: mean and biased variance, reduced axes kept), as graph values the
/// training step outputs and feeds back into the buffers. The variance is made
/// unbiased, n/(n − 1), as PyTorch does; no gradient flows into the statistics.
fn record_running_stats(cx: &mut Ctx, x: &Tensor, axes: &[usize], batch: [ValueId; 2], stats: [(&Tensor, String); 2], m: f64, span: Span) {
    let mut b = cx.builder(span);
    let ones = b.full_like(1.0, x.id);
    let count = b.reduce_sum(ones, axes);
    let dof = b.offset(count, -1.0);
    let ratio = b.div(count, dof);
    let mean = b.stop_gradient(batch[0]);
    let biased = b.stop_gradient(batch[1]);
    let var = b.mul(biased, ratio);
    let [(rm, mean_path), (rv, var_path)] = stats;
    for (old, new, path) in [(rm, mean, mean_path), (rv, var, var_path)] {
        let os = cx.shape(old);
        let mut b = cx.builder(span);
        let flat = b.reshape(new, &os);
        let keep = b.scale(old.id, 1.0 - m);
        let add = b.scale(flat, m);
        let updated = b.add(keep, add);
        cx.buffer_updates.push((path, updated));
    }
}
