"""JAX side: jax.jit of the whole update step (forward, grad, optax Adam update).

    side_jax.py WORKLOAD   -> one JSON line on stdout

Same loop and timing rules as side_torch.py.
"""
import json
import os
import sys
import time

T0 = float(os.environ.get("BENCH_T0", time.time()))

import jax
import jax.numpy as jnp
import numpy as np
import optax

import workloads


def he(key, shape, fan_in):
    """He-normal weights (std sqrt(2 / fan_in))."""
    return jax.random.normal(key, shape, jnp.float32) * (2.0 / fan_in) ** 0.5


def mlp(sizes):
    key, params = jax.random.PRNGKey(0), []
    for a, b in zip(sizes, sizes[1:]):
        key, k = jax.random.split(key)
        params.append((he(k, (a, b), a), jnp.zeros((b,), jnp.float32)))

    def forward(params, x):
        for wt, b in params[:-1]:
            x = jax.nn.relu(x @ wt + b)
        wt, b = params[-1]
        return x @ wt + b
    return params, forward


def cnn(w):
    """W3: conv3x3 1->32, ReLU, conv3x3 32->64, ReLU, maxpool 2, flatten, 1024->128, ReLU, 128->10.

    NCHW activations and OIHW kernels (as PyTorch and nnc), lax.conv_general_dilated."""
    c, h, wd = w["image"]
    flat = 64 * (h // 2) * (wd // 2)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = [(he(k[0], (32, c, 3, 3), c * 9), jnp.zeros((32,), jnp.float32)),
              (he(k[1], (64, 32, 3, 3), 32 * 9), jnp.zeros((64,), jnp.float32)),
              (he(k[2], (flat, 128), flat), jnp.zeros((128,), jnp.float32)),
              (he(k[3], (128, w["sizes"][-1]), 128), jnp.zeros((w["sizes"][-1],), jnp.float32))]

    def conv(x, kern, b):
        y = jax.lax.conv_general_dilated(x, kern, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None, :, None, None]

    def forward(params, x):
        (k1, b1), (k2, b2), (w1, c1), (w2, c2) = params
        x = x.reshape(x.shape[0], c, h, wd)
        x = jax.nn.relu(conv(x, k1, b1))
        x = jax.nn.relu(conv(x, k2, b2))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        x = jax.nn.relu(x.reshape(x.shape[0], -1) @ w1 + c1)
        return x @ w2 + c2
    return params, forward


def gpt(w):
    """W4: token embedding + learned positions, pre-LN blocks (causal multi-head attention,
    4x GELU MLP), final LN, linear read-out; the same shapes as side_torch.Gpt and w4_gpt.nn."""
    t, vocab, d, heads = w["sizes"][0], w["sizes"][1], w["d_model"], w["heads"]
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))

    def linear(a, b):
        bound = (6.0 / (a + b)) ** 0.5
        return {"w": jax.random.uniform(next(keys), (a, b), jnp.float32, -bound, bound), "b": jnp.zeros((b,), jnp.float32)}

    def norm():
        return {"g": jnp.ones((d,), jnp.float32), "b": jnp.zeros((d,), jnp.float32)}

    params = {
        "tokens": jax.random.normal(next(keys), (vocab, d), jnp.float32) * 0.02,
        "positions": jax.random.normal(next(keys), (t, d), jnp.float32) * 0.02,
        "blocks": [{"ln1": norm(), "qkv": linear(d, 3 * d), "proj": linear(d, d), "ln2": norm(),
                    "up": linear(d, 4 * d), "down": linear(4 * d, d)} for _ in range(w["blocks"])],
        "ln": norm(), "head": linear(d, vocab),
    }
    causal = jnp.tril(jnp.ones((t, t), bool))

    def ln(p, x):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(v + 1e-5) * p["g"] + p["b"]

    def lin(p, x):
        return x @ p["w"] + p["b"]

    def forward(params, ids):
        x = params["tokens"][ids] + params["positions"]
        b = x.shape[0]
        for p in params["blocks"]:
            q, k, v = lin(p["qkv"], ln(p["ln1"], x)).reshape(b, t, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
            s = q @ k.transpose(0, 1, 3, 2) / (d // heads) ** 0.5
            a = jax.nn.softmax(jnp.where(causal, s, -1e9), axis=-1)
            x = x + lin(p["proj"], (a @ v).transpose(0, 2, 1, 3).reshape(b, t, d))
            x = x + lin(p["down"], jax.nn.gelu(lin(p["up"], ln(p["ln2"], x)), approximate=False))
        return lin(params["head"], ln(params["ln"], x))
    return params, forward


def lstm(w):
    """W5: embedding, one LSTM layer as a lax.scan over time (gates i, f, g, o from one
    product with [x_t, h_{t-1}]'s weights, the input half computed before the loop), read-out."""
    vocab, e, hdim = w["sizes"][1], w["embed"], w["hidden"]
    k = jax.random.split(jax.random.PRNGKey(0), 4)

    def xavier(key, a, b):
        bound = (6.0 / (a + b)) ** 0.5
        return jax.random.uniform(key, (a, b), jnp.float32, -bound, bound)
    params = {"tokens": jax.random.normal(k[0], (vocab, e), jnp.float32) * 0.1,
              "wx": xavier(k[1], e, 4 * hdim), "wh": xavier(k[2], hdim, 4 * hdim), "b": jnp.zeros((4 * hdim,), jnp.float32),
              "head": xavier(k[3], hdim, vocab), "head_b": jnp.zeros((vocab,), jnp.float32)}

    def forward(params, ids):
        zx = params["tokens"][ids] @ params["wx"] + params["b"]  # [B, T, 4H]

        def step(carry, z_t):
            h, c = carry
            z = z_t + h @ params["wh"]
            f, i, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        zero = jnp.zeros((ids.shape[0], hdim), jnp.float32)
        _, hs = jax.lax.scan(step, (zero, zero), zx.transpose(1, 0, 2))
        return hs.transpose(1, 0, 2) @ params["head"] + params["head_b"]
    return params, forward


def main(name):
    w = workloads.WORKLOADS[name]
    if w.get("lstm"):
        params, forward = lstm(w)
    elif w.get("text"):
        params, forward = gpt(w)
    else:
        params, forward = cnn(w) if "image" in w else mlp(w["sizes"])

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    opt = optax.adamw(workloads.LR, weight_decay=0.01) if w.get("text") and not w.get("lstm") else optax.adam(workloads.LR)
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    xtr, ytr, xte, yte = workloads.load(name)
    n, batch, rng = len(xtr), w["batch"], np.random.default_rng(0)
    steps, first, t_epoch1, steps_epoch1, loss = 0, None, None, 0, None
    for epoch in range(w["epochs"]):
        perm = rng.permutation(n)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            params, state, loss = step(params, state, xtr[idx], ytr[idx])
            steps += 1
            if first is None:
                loss.block_until_ready()
                first = time.time() - T0
        if epoch == 0:
            loss.block_until_ready()
            t_epoch1, steps_epoch1 = time.perf_counter(), steps
    final_loss = float(loss)  # waits for the last step
    timed = steps - steps_epoch1
    out = dict(steps=steps, first_step_seconds=first, train_loss=final_loss,
               steps_per_second=timed / (time.perf_counter() - t_epoch1) if timed else None)
    if len(xte):
        out["test_accuracy"] = float((forward(params, xte).argmax(1) == yte).mean())
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
