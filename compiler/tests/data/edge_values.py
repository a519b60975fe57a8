#!/usr/bin/env python3
"""Expected values and derivatives of nnc's elementwise ops and reductions at
the edges (0, -0, +-1e-9, +-1, +-20, +-88, +-1e4, +-inf, NaN, huge logits),
written to edge_values.txt beside this file, which
compiler/tests/edge_values.rs reads (the Rust test needs no Python).

    python3 compiler/tests/data/edge_values.py

Every value is float64. Each op's value, first derivative and (for smooth
ops) second derivative are written below as PyTorch defines them: the
forward formula and the derivative formula of its autograd
(tools/autograd/derivatives.yaml), evaluated with IEEE float64 special values
(0 * inf = NaN, inf - inf = NaN), so a NaN where PyTorch's formula gives NaN
is expected as NaN. The conventions at kinks and ties are PyTorch's:
relu'(0) = 0, abs'(0) = 0, maximum shares a tie equally, amax shares the
gradient among the maximal elements; pow's derivative is 0 for x ** 0 in x and
for 0 ** y (y >= 0) in y; logsumexp shifts by 0 where the maximum is
infinite. Derivatives at NaN are not recorded ("-"): PyTorch's formulas
disagree among themselves there (some mask NaN to 0), and the value, NaN, is
what matters.

Independent check: at every finite point where an op is smooth, the value is
compared with mpmath at 40 digits and the derivatives with mpmath.diff
(numerical differentiation at 40 digits); the script stops if any differs by
more than 1e-9 relative (plus 1e-15 absolute: float64's own rounding, e.g.
1 - tanh(20)**2, is 0 in float64 as in PyTorch). (PyTorch itself could not be installed where this
table was made; the formulas are its.)

Format, one record per line, fields separated by single spaces:
    case NAME                      then the nnc function on the next line
    fn NAME(x: [..], ...) -> ... = BODY
    f32atol v                      (optional) absolute error allowed compiled (F32_ATOL)
    in ARG DIMS v v ...            an input (DIMS like 3,2), row-major
    value v v ...                  the output, row-major
    d1 ARG v v ...                 d sum(output) / d ARG
    d2 ARG v v ...                 d sum(d1 ARG) / d ARG (the Hessian times ones)
    end
Numbers are Python's repr (inf, -inf, nan, -0.0); "-" is not recorded.
"""

import math
import os
import struct

import mpmath

mpmath.mp.dps = 40
INF = math.inf
NAN = math.nan
POINTS = [0.0, -0.0, 1e-9, -1e-9, 1.0, -1.0, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, INF, -INF, NAN]


# ---- IEEE float64 helpers (Python raises where IEEE returns inf or NaN) ----


def finite(*xs):
    return all(math.isfinite(x) for x in xs)


def div(a, b):
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return NAN
        return math.copysign(INF, a) * math.copysign(1.0, b)
    return a / b


def exp(x):
    if math.isnan(x):
        return NAN
    try:
        return math.exp(x)
    except OverflowError:
        return INF


def log(x):
    if math.isnan(x) or x < 0:
        return NAN
    if x == 0:
        return -INF
    return math.log(x)


def sqrt(x):
    return NAN if (math.isnan(x) or x < 0) else math.sqrt(x)


def trig(f, x):
    return f(x) if math.isfinite(x) else NAN


def pow_(x, y):
    """C99 pow (as Rust's powf and PyTorch's pow)."""
    if y == 0:
        return 1.0
    if x == 1:
        return 1.0
    if math.isnan(x) or math.isnan(y):
        return NAN
    try:
        return math.pow(x, y)
    except ValueError:  # negative base, non-integer exponent; or 0 ** negative
        if x == 0:
            odd = y.is_integer() and int(y) % 2 == 1
            return math.copysign(INF, x) if odd else INF
        return NAN
    except OverflowError:
        odd = y.is_integer() and abs(y) < 2**53 and int(y) % 2 == 1
        return -INF if (x < 0 and odd) else INF


def sign(x):
    return NAN if math.isnan(x) else float((x > 0) - (x < 0))


def gt(a, b):
    return 1.0 if a > b else 0.0


def eq(a, b):
    return 1.0 if a == b else 0.0


PHI_K = 1.0 / math.sqrt(2 * math.pi)


def cdf(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def pdf(x):
    return exp(-0.5 * x * x) * PHI_K


def sigmoid(x):
    return div(1.0, 1.0 + exp(-x))


# ---- unary ops: (name, nnc body, value, d1, d2 or None) --------------------

UNARY = [
    ("neg", "-x", lambda x: -x, lambda x: -1.0, lambda x: 0.0),
    ("exp", "exp(x)", exp, exp, exp),
    ("log", "log(x)", log, lambda x: div(1.0, x), lambda x: -div(1.0, x * x)),
    ("sqrt", "sqrt(x)", sqrt, lambda x: div(1.0, 2.0 * sqrt(x)), lambda x: -div(1.0, 4.0 * sqrt(x) * x)),
    ("abs", "abs(x)", abs, sign, lambda x: 0.0),
    ("tanh", "tanh(x)", math.tanh, lambda x: 1.0 - math.tanh(x) ** 2, lambda x: -2.0 * math.tanh(x) * (1.0 - math.tanh(x) ** 2)),
    ("sigmoid", "sigmoid(x)", sigmoid, lambda x: sigmoid(x) * (1.0 - sigmoid(x)), lambda x: sigmoid(x) * (1.0 - sigmoid(x)) * (1.0 - 2.0 * sigmoid(x))),
    ("relu", "relu(x)", lambda x: x if (x > 0 or math.isnan(x)) else 0.0, lambda x: gt(x, 0.0), lambda x: 0.0),
    (
        "erf",
        "erf(x)",
        math.erf,
        lambda x: 2.0 / math.sqrt(math.pi) * exp(-(x * x)),
        lambda x: 2.0 / math.sqrt(math.pi) * exp(-(x * x)) * (-2.0 * x),
    ),
    ("gelu", "gelu(x)", lambda x: x * cdf(x), lambda x: cdf(x) + x * pdf(x), lambda x: pdf(x) * (2.0 - x * x)),
    ("sin", "sin(x)", lambda x: trig(math.sin, x), lambda x: trig(math.cos, x), lambda x: -trig(math.sin, x)),
    ("cos", "cos(x)", lambda x: trig(math.cos, x), lambda x: -trig(math.sin, x), lambda x: -trig(math.cos, x)),
    (
        # PyTorch's softplus (beta 1, threshold 20): x above the threshold.
        "softplus",
        "softplus(x)",
        lambda x: NAN if math.isnan(x) else x if x > 20 else math.log1p(exp(x)),
        lambda x: 1.0 if x > 20 else div(exp(x), exp(x) + 1.0),
        # Not recorded at 0: nnc's max(x, 0) + log(1 + exp(-|x|)) has no curvature
        # from |x| there, so its second derivative at exactly 0 is 0, not 1/4.
        lambda x: None if x == 0 else 0.0 if x > 20 else sigmoid(x) * (1.0 - sigmoid(x)),
    ),
]

MPMATH_UNARY = {
    "neg": lambda x: -x,
    "exp": mpmath.exp,
    "log": mpmath.log,
    "sqrt": mpmath.sqrt,
    "abs": abs,
    "tanh": mpmath.tanh,
    "sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
    "relu": lambda x: max(x, 0),
    "erf": mpmath.erf,
    "gelu": lambda x: x * (1 + mpmath.erf(x / mpmath.sqrt(2))) / 2,
    "sin": mpmath.sin,
    "cos": mpmath.cos,
    "softplus": lambda x: mpmath.log(1 + mpmath.exp(x)),
}


def smooth_unary(name, x):
    """Where mpmath's value and numerical derivatives are meaningful."""
    if not math.isfinite(x):
        return False
    if name in ("log", "sqrt") and x <= 0:
        return False
    if name in ("abs", "relu") and x == 0:
        return False
    # x = +-1e4 is past float64 for these (exp(1e4) overflows).
    return not (name in ("exp", "sigmoid", "softplus", "gelu", "erf", "tanh") and abs(x) > 700)


# Absolute error allowed in compiled (float32) results beyond a few ulp of the
# result, where float32 itself cannot do better with the formula:
F32_ATOL = {
    # The rational is 1 - 2.4e-7 at saturation (docs/performance.md: 2.7e-7),
    # so 1 - tanh^2 is 4.8e-7 where it is 0, and its derivative twice that.
    "tanh": 1e-6,
    # sigma(20) and sigma(1e-9) round to 1 and 0.5 in float32, so sigma (1 - sigma)
    # is 0 where it is 2e-9 (as in PyTorch's float32), and 1 - 2 sigma likewise.
    "sigmoid": 3e-9,
    # log(1 + e^-20): 1 + 2e-9 rounds to 1 in float32 (no log1p; docs/performance.md).
    "softplus": 3e-9,
}

# ---- binary ops: (name, nnc body, value, dx, dy, dxx, dyy) -----------------


def f32_integer_only(x, y, k):
    """y - k is an integer in float32 but not in float64 (y = 1e-9: 1e-9 - 1
    rounds to -1 in float32), so a negative base's power is finite compiled
    and NaN in float64; such derivatives are not recorded."""
    if not (x < 0 and math.isfinite(y)):
        return False
    f32 = struct.unpack("f", struct.pack("f", y))[0]
    g = struct.unpack("f", struct.pack("f", f32 - k))[0]
    return g.is_integer() and not (y - k).is_integer()


def pow_dx(x, y):
    if f32_integer_only(x, y, 1.0):
        return None
    return 0.0 if y == 0 else y * pow_(x, y - 1.0)


def pow_dy(x, y):
    return 0.0 if (x == 0 and y >= 0) else pow_(x, y) * log(x)


def pow_dxx(x, y):
    if f32_integer_only(x, y, 1.0) or f32_integer_only(x, y, 2.0):
        return None
    return 0.0 if y in (0.0, 1.0) else y * ((y - 1.0) * pow_(x, y - 2.0))


def pow_dyy(x, y):
    return 0.0 if (x == 0 and y >= 0) else pow_(x, y) * log(x) * log(x)


def maximum(x, y):
    return x if (x > y or math.isnan(x)) else y


BINARY = [
    ("add", "x + y", lambda x, y: x + y, lambda x, y: 1.0, lambda x, y: 1.0, lambda x, y: 0.0, lambda x, y: 0.0),
    ("sub", "x - y", lambda x, y: x - y, lambda x, y: 1.0, lambda x, y: -1.0, lambda x, y: 0.0, lambda x, y: 0.0),
    ("mul", "x * y", lambda x, y: x * y, lambda x, y: y, lambda x, y: x, lambda x, y: 0.0, lambda x, y: 0.0),
    (
        "div",
        "x / y",
        div,
        lambda x, y: div(1.0, y),
        lambda x, y: -div(x, y * y),
        lambda x, y: 0.0,
        lambda x, y: div(2.0 * x, y * y * y),
    ),
    ("pow", "x ** y", pow_, pow_dx, pow_dy, pow_dxx, pow_dyy),
    (
        "maximum",
        "maximum(x, y)",
        maximum,
        lambda x, y: gt(x, y) + 0.5 * eq(x, y),
        lambda x, y: gt(y, x) + 0.5 * eq(x, y),
        lambda x, y: 0.0,
        lambda x, y: 0.0,
    ),
]

MPMATH_BINARY = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / y,
    "pow": lambda x, y: mpmath.power(x, y),
    "maximum": max,
}


def smooth_binary(name, x, y):
    if not finite(x, y):
        return False
    if name == "div":
        return y != 0
    if name == "maximum":
        return x != y
    if name == "pow":
        # mpmath's power is complex for negative bases; large results leave float64.
        return x > 0 and abs(y * math.log(x)) < 600
    return True


# ---- checks against mpmath --------------------------------------------------


def close(a, b, what):
    b = float(b)
    if math.isinf(b) and a == b:
        return
    # Relative, with an absolute floor for float64's own cancellation
    # (1 - tanh(20)**2 is 0 in float64, 1.7e-17 exactly; PyTorch's is 0 too).
    if a is not None and abs(a - b) > 1e-9 * abs(b) + 1e-15:
        raise SystemExit(f"{what}: formula {a!r} vs mpmath {b!r}")


def check_unary(name, x, v, d1, d2):
    f = MPMATH_UNARY[name]
    mx = mpmath.mpf(x)
    close(v, f(mx), f"{name}({x})")
    close(d1, mpmath.diff(f, mx), f"{name}'({x})")
    if d2 is not None:
        close(d2, mpmath.diff(f, mx, 2), f"{name}''({x})")


def check_binary(name, x, y, row):
    f = MPMATH_BINARY[name]
    mx, my = mpmath.mpf(x), mpmath.mpf(y)
    v, dx, dy, dxx, dyy = row
    close(v, f(mx, my), f"{name}({x}, {y})")
    close(dx, mpmath.diff(f, (mx, my), (1, 0)), f"d/dx {name}({x}, {y})")
    close(dy, mpmath.diff(f, (mx, my), (0, 1)), f"d/dy {name}({x}, {y})")
    close(dxx, mpmath.diff(f, (mx, my), (2, 0)), f"d2/dx2 {name}({x}, {y})")
    close(dyy, mpmath.diff(f, (mx, my), (0, 2)), f"d2/dy2 {name}({x}, {y})")


# ---- rows for reductions ----------------------------------------------------

PAIRS = [[a, b] for a in POINTS for b in POINTS]
LOGIT_ROWS = [
    [-INF, 0.0, 0.0],
    [0.0, -INF, 0.0],
    [-INF, -INF, 0.0],
    [-INF, -INF, -INF],
    [INF, 0.0, 0.0],
    [1e4, 0.0, -1e4],
    [-1e4, 1e4, 0.0],
    [1e30, -1e30, 0.0],
    [88.0, 88.0, 88.0],
    [-88.0, 0.0, 88.0],
    [20.0, -20.0, 1e-9],
    [0.0, -0.0, 0.0],
    [1.0, 2.0, 3.0],
    [NAN, 0.0, 1.0],
    [-1e4, -1e4, -1e4],
]


def amax(row):
    m = -INF
    for v in row:
        if v > m or math.isnan(v):
            m = v
    return m


def amax_grad(row):
    m = amax(row)
    hits = [eq(v, m) for v in row]
    n = sum(hits)
    return [div(h, n) for h in hits]


def lse(row):
    m = amax(row)
    shift = m if math.isfinite(m) else 0.0
    return log(sum(exp(v - shift) for v in row)) + shift


def softmax(row):
    # PyTorch's softmax: exp(x - max) / sum (no shift guard: NaN for rows whose max is infinite).
    m = amax(row)
    e = [exp(v - m) for v in row]
    s = sum(e)
    return [div(v, s) for v in e]


def lse_grad(row):
    # PyTorch's logsumexp backward: grad * exp(self - result). Not recorded
    # for a finite element past 709 beside a +inf (rows [1e4, inf]): there
    # PyTorch gives 0 and nnc, whose derivative is exp(x) / sum(exp(x)) with
    # the shift 0, gives inf / inf = NaN. The value (inf) agrees.
    r = lse(row)
    overflow = INF in row
    return [None if (overflow and math.isfinite(v) and v > 709) else exp(v - r) for v in row]


WEIGHTS = [1.0, 2.0, 3.0]


def log_softmax_grad(row, w):
    # PyTorch's log_softmax backward: g - exp(out) * sum(g).
    out = [v - lse_softmax_shift(row) for v in row]
    s = sum(w)
    return [wi - exp(o) * s for wi, o in zip(w, out)]


def lse_softmax_shift(row):
    # log_softmax is x - max - log(sum(exp(x - max))), unguarded.
    m = amax(row)
    return m + log(sum(exp(v - m) for v in row))


def softmax_grad(row, w):
    # PyTorch's softmax backward: y * (g - sum(g * y)).
    y = softmax(row)
    dot = sum(wi * yi for wi, yi in zip(w, y))
    return [yi * (wi - dot) for wi, yi in zip(w, y)]


def cross_entropy(row, label, alpha):
    # PyTorch's cross_entropy is nll_loss(log_softmax(x)): unguarded shift.
    logp = [v - lse_softmax_shift(row) for v in row]
    k = len(row)
    nll = -logp[label]
    if alpha == 0:
        return nll
    return (1 - alpha) * nll + alpha / k * -sum(logp)


def cross_entropy_grad(row, label, alpha):
    # softmax - target; PyTorch computes it from log_softmax's backward.
    k = len(row)
    target = [(1 - alpha) * eq(i, label) + alpha / k for i in range(k)]
    lsm = [v - lse_softmax_shift(row) for v in row]
    return [exp(o) * sum(target) - t for o, t in zip(lsm, target)]


# ---- output -----------------------------------------------------------------


def fmt(values):
    return " ".join("-" if v is None else repr(float(v)) for v in values)


def no_nan_points(values, xs):
    """Derivatives are not recorded where an input is NaN."""
    return [None if any(math.isnan(x) for x in pts) else v for v, pts in zip(values, xs)]


def record(out, name, fn_line, inputs, value, d1, d2, f32_atol=None):
    out.append(f"case {name}")
    out.append(fn_line)
    if f32_atol is not None:
        out.append(f"f32atol {f32_atol!r}")
    for arg, dims, vals in inputs:
        out.append(f"in {arg} {','.join(map(str, dims))} {fmt(vals)}")
    out.append(f"value {fmt(value)}")
    for arg, vals in d1:
        out.append(f"d1 {arg} {fmt(vals)}")
    for arg, vals in d2:
        out.append(f"d2 {arg} {fmt(vals)}")
    out.append("end")


def unary_cases(out):
    n = len(POINTS)
    for name, body, f, f1, f2 in UNARY:
        vals, d1, d2 = [], [], []
        for x in POINTS:
            v, a, b = f(x), f1(x), f2(x)
            if smooth_unary(name, x):
                check_unary(name, x, v, a, b)
            vals.append(v)
            d1.append(a)
            d2.append(b)
        pts = [(x,) for x in POINTS]
        fn = f"fn u_{name}(x: [{n}]) -> [{n}] = {body}"
        d1, d2 = no_nan_points(d1, pts), no_nan_points(d2, pts)
        record(out, f"u_{name}", fn, [("x", [n], POINTS)], vals, [("x", d1)], [("x", d2)], F32_ATOL.get(name))


def binary_cases(out):
    xs = [p[0] for p in PAIRS]
    ys = [p[1] for p in PAIRS]
    n = len(PAIRS)
    for name, body, f, fx, fy, fxx, fyy in BINARY:
        rows = [(f(x, y), fx(x, y), fy(x, y), fxx(x, y), fyy(x, y)) for x, y in PAIRS]
        for (x, y), row in zip(PAIRS, rows):
            if smooth_binary(name, x, y):
                check_binary(name, x, y, row)
        cols = list(zip(*rows))
        fn = f"fn b_{name}(x: [{n}], y: [{n}]) -> [{n}] = {body}"
        record(
            out,
            f"b_{name}",
            fn,
            [("x", [n], xs), ("y", [n], ys)],
            cols[0],
            [("x", no_nan_points(cols[1], PAIRS)), ("y", no_nan_points(cols[2], PAIRS))],
            [("x", no_nan_points(cols[3], PAIRS)), ("y", no_nan_points(cols[4], PAIRS))],
        )


def reduction_cases(out):
    flat = [v for r in PAIRS for v in r]
    n = len(PAIRS)
    nan_rows = [tuple(r) for r in PAIRS for _ in r]
    reductions = [
        ("sum", "sum(x, 1)", sum, lambda r: [1.0, 1.0], lambda r: [0.0, 0.0]),
        ("mean", "mean(x, 1)", lambda r: sum(r) / 2, lambda r: [0.5, 0.5], lambda r: [0.0, 0.0]),
        ("max", "max(x, 1)", amax, amax_grad, lambda r: [None, None]),
        # The Hessian of logsumexp times ones is 0 (its gradient sums to 1).
        ("logsumexp", "logsumexp(x, 1)", lse, lse_grad, lambda r: [0.0, 0.0] if finite(*r) else [None, None]),
    ]
    for name, body, f, g, h in reductions:
        d1 = [v for r in PAIRS for v in g(r)]
        d2 = [v for r in PAIRS for v in h(r)]
        fn = f"fn r_{name}(x: [{n}, 2]) -> [{n}] = {body}"
        record(out, f"r_{name}", fn, [("x", [n, 2], flat)], [f(r) for r in PAIRS], [("x", no_nan_points(d1, nan_rows))], [("x", no_nan_points(d2, nan_rows))])
    for r in PAIRS:
        if finite(*r):
            close(lse(r), mpmath.log(sum(mpmath.exp(mpmath.mpf(v)) for v in r)), f"logsumexp({r})")

    rows, k = LOGIT_ROWS, 3
    flat = [v for r in rows for v in r]
    n = len(rows)
    nan_rows = [tuple(r) for r in rows for _ in r]
    weights = ", ".join(str(int(w)) for w in WEIGHTS)
    for name, body, f, g in [
        ("softmax", f"softmax(x) * [{weights}]", lambda r: [a * w for a, w in zip(softmax(r), WEIGHTS)], softmax_grad),
        (
            "log_softmax",
            f"log_softmax(x) * [{weights}]",
            lambda r: [(v - lse_softmax_shift(r)) * w for v, w in zip(r, WEIGHTS)],
            log_softmax_grad,
        ),
    ]:
        value = [v for r in rows for v in f(r)]
        d1 = [v for r in rows for v in g(r, WEIGHTS)]
        fn = f"fn r_{name}(x: [{n}, {k}]) -> [{n}, {k}] = {body}"
        record(out, f"r_{name}", fn, [("x", [n, k], flat)], value, [("x", no_nan_points(d1, nan_rows))], [])

    # gather: row i picks entry ids[i] (its gradient is the one-hot, whatever the row holds).
    ids = [i % k for i in range(n)]
    flat = [v for r in rows for v in r]
    value = [r[p] for r, p in zip(rows, ids)]
    d1 = [eq(j, p) for p in ids for j in range(k)]
    fn = f"fn r_gather(x: [{n}, {k}]) -> [{n}] = gather(x, [{', '.join(map(str, ids))}])"
    record(out, "r_gather", fn, [("x", [n, k], flat)], value, [("x", d1)], [])
    gather_masked_rows(out)

    # cross_entropy: one row per case (the loss is a mean over rows).
    for i, r in enumerate(rows):
        for label in range(k):
            for alpha in (0.0, 0.1):
                tag = f"ce_{i}_{label}" + ("_smooth" if alpha else "")
                smooth = f", smoothing: {alpha}" if alpha else ""
                fn = f"fn {tag}(x: [1, {k}]) -> scalar = cross_entropy(x, [{label}]{smooth})"
                nan = any(math.isnan(v) for v in r)
                d1 = [None] * k if nan else cross_entropy_grad(r, label, alpha)
                record(out, tag, fn, [("x", [1, k], r)], [cross_entropy(r, label, alpha)], [("x", d1)], [])
                if finite(*r):
                    mr = [mpmath.mpf(v) for v in r]
                    want = mpmath.log(sum(mpmath.exp(v) for v in mr)) - mr[label]
                    if alpha == 0:
                        close(cross_entropy(r, label, alpha), want, f"cross_entropy({r}, {label})")


def gather_masked_rows(out):
    """gather of rows that hold inf and NaN only where they are not picked."""
    rows = [[1.0, INF, NAN], [-INF, 2.0, NAN], [NAN, INF, -3.0], [-0.0, -INF, INF]]
    ids = [0, 1, 2, 0]
    flat = [v for r in rows for v in r]
    value = [r[p] for r, p in zip(rows, ids)]
    d1 = [eq(j, p) for p in ids for j in range(3)]
    fn = f"fn r_gather_masked(x: [4, 3]) -> [4] = gather(x, [{', '.join(map(str, ids))}])"
    record(out, "r_gather_masked", fn, [("x", [4, 3], flat)], value, [("x", d1)], [])


def main():
    out = []
    unary_cases(out)
    binary_cases(out)
    reduction_cases(out)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edge_values.txt")
    with open(path, "w") as f:
        f.write("# Generated by edge_values.py beside this file: do not edit by hand.\n")
        f.write("\n".join(out) + "\n")
    print(f"wrote {sum(1 for l in out if l.startswith('case '))} cases to {path}")


if __name__ == "__main__":
    main()
