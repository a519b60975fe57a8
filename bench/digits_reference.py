"""Digits accuracy reference: the mlp_digits recipe in PyTorch and JAX (+optax).

Recipe: MLP 64-256-256-10, ReLU, He init N(0, 2/fan_in) on weights, zero biases,
softmax cross-entropy (mean over the batch), Adam lr 1e-3 (0.9/0.999, eps 1e-8,
bias-corrected), batch 64 (last partial batch kept), 30 epochs, reshuffled every
epoch, float32, 2 threads. Data: examples/data/digits.csv, train = rows 0-1436,
test = rows 1437-1796, pixels / 16. Test accuracy is measured once, after training.

    bench/.venv/bin/python bench/digits_reference.py            # the recipe + default init
    bench/.venv/bin/python bench/digits_reference.py --variants # also the diagnostic variants

Variants (--variants) change exactly one thing, to see which deviation from the
recipe would move the median into 94.4-95.0 %.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = range(10)
EPOCHS, BATCH, LR = 30, 64, 1e-3
SIZES = [64, 256, 256, 10]


def load_digits(scale=1 / 16, split="contiguous", standardize=False):
    raw = np.loadtxt(os.path.join(ROOT, "examples/data/digits.csv"), delimiter=",", skiprows=1)
    x, y = (raw[:, :64] * scale).astype(np.float32), raw[:, 64].astype(np.int64)
    if standardize:  # z-score each pixel with train-split statistics (sklearn StandardScaler)
        mu, sd = x[:1437].mean(0), x[:1437].std(0)
        x = ((x - mu) / np.where(sd > 0, sd, 1)).astype(np.float32)
    if split == "random":  # a shuffled 1437/360 split (writers shared between train and test)
        p = np.random.default_rng(0).permutation(len(x))
        x, y = x[p], y[p]
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


def batches(n, rng, drop_last=False):
    perm = rng.permutation(n)
    stop = n - n % BATCH if drop_last else n
    for i in range(0, stop, BATCH):
        yield perm[i:i + BATCH]


# Weight initialisations: "he" = the recipe, N(0, 2/fan_in), zero bias; "torch" = PyTorch's
# nn.Linear default, U(+-1/sqrt(fan_in)) for weights and biases; "lecun" = N(0, 1/fan_in),
# zero bias (flax's Dense default); "glorot" = U(+-sqrt(6/(fan_in+fan_out))), zero bias (Keras).


# ---------------------------------------------------------------- PyTorch
def run_torch(seed, data, init="he", drop_last=False, best_epoch=False):
    import torch
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        lin = torch.nn.Linear(a, b)  # PyTorch default: kaiming_uniform(a=sqrt 5) W, U(+-1/sqrt fan_in) b
        if init != "torch":
            torch.nn.init.zeros_(lin.bias)
        if init in ("he", "lecun"):
            torch.nn.init.normal_(lin.weight, 0.0, ((2.0 if init == "he" else 1.0) / a) ** 0.5)
        elif init == "glorot":
            torch.nn.init.xavier_uniform_(lin.weight)
        layers += [lin, torch.nn.ReLU()] if i < len(SIZES) - 2 else [lin]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    (xtr, ytr), (xte, yte) = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    rng = np.random.default_rng(seed)

    def accuracy():
        with torch.no_grad():
            return (model(xte).argmax(1) == yte).float().mean().item()

    best = 0.0
    for _ in range(EPOCHS):
        for idx in batches(len(xtr), rng, drop_last):
            idx = torch.from_numpy(idx)
            loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if best_epoch:
            best = max(best, accuracy())
    return best if best_epoch else accuracy()


# ---------------------------------------------------------------- JAX + optax
def run_jax(seed, data, init="he", drop_last=False, best_epoch=False):
    import jax
    import jax.numpy as jnp
    import optax

    key = jax.random.PRNGKey(seed)
    params = []
    for a, b in zip(SIZES, SIZES[1:]):
        key, kw, kb = jax.random.split(key, 3)
        bias = jnp.zeros((b,), jnp.float32)
        if init in ("he", "lecun"):
            w = jax.random.normal(kw, (a, b), jnp.float32) * ((2.0 if init == "he" else 1.0) / a) ** 0.5
        else:
            lim = 1.0 / a ** 0.5 if init == "torch" else (6.0 / (a + b)) ** 0.5
            w = jax.random.uniform(kw, (a, b), jnp.float32, -lim, lim)
            if init == "torch":
                bias = jax.random.uniform(kb, (b,), jnp.float32, -lim, lim)
        params.append((w, bias))

    def forward(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    opt = optax.adam(LR, b1=0.9, b2=0.999, eps=1e-8)
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    (xtr, ytr), (xte, yte) = data
    xtr_j, ytr_j = jnp.asarray(xtr), jnp.asarray(ytr.astype(np.int32))
    rng = np.random.default_rng(seed)
    accuracy = lambda: float((forward(params, jnp.asarray(xte)).argmax(1) == yte).mean())
    best = 0.0
    for _ in range(EPOCHS):
        for idx in batches(len(xtr), rng, drop_last):
            params, state, _ = step(params, state, xtr_j[idx], ytr_j[idx])
        if best_epoch:
            best = max(best, accuracy())
    return best if best_epoch else accuracy()


def report(name, fn, **kw):
    data = load_digits(**{k: kw.pop(k) for k in ("scale", "split", "standardize") if k in kw})
    accs = [100 * fn(s, data, **kw) for s in SEEDS]
    print(f"{name:<44} median {np.median(accs):6.2f}  min {min(accs):6.2f}  max {max(accs):6.2f}  | "
          + " ".join(f"{a:.2f}" for a in accs), flush=True)
    return accs


if __name__ == "__main__":
    print(f"test accuracy (%) over seeds {SEEDS.start}..{SEEDS.stop - 1}, 30 epochs, final epoch")
    for fw, fn in (("torch", run_torch), ("jax", run_jax)):
        report(f"{fw}: recipe (He init, zero bias)", fn)
        report(f"{fw}: PyTorch default nn.Linear init", fn, init="torch")
        if "--variants" in sys.argv:
            report(f"{fw}: best epoch instead of final", fn, best_epoch=True)
            report(f"{fw}: pixels not divided by 16", fn, scale=1.0)
            report(f"{fw}: pixels divided by 255", fn, scale=1 / 255)
            report(f"{fw}: pixels standardized (train mean/std)", fn, standardize=True)
            report(f"{fw}: LeCun normal init (flax default)", fn, init="lecun")
            report(f"{fw}: Glorot uniform init (Keras default)", fn, init="glorot")
            report(f"{fw}: drop last partial batch", fn, drop_last=True)
            report(f"{fw}: random 1437/360 split", fn, split="random")
