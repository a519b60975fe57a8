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


def main(name):
    w = workloads.WORKLOADS[name]
    key, params = jax.random.PRNGKey(0), []
    for a, b in zip(w["sizes"], w["sizes"][1:]):
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (a, b), jnp.float32) * (2.0 / a) ** 0.5, jnp.zeros((b,), jnp.float32)))

    def forward(params, x):
        for wt, b in params[:-1]:
            x = jax.nn.relu(x @ wt + b)
        wt, b = params[-1]
        return x @ wt + b

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    opt = optax.adam(workloads.LR)
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
