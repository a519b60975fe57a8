"""PyTorch side: eager, or `--compile` (torch.compile of the loss and of the Adam step).

    side_torch.py WORKLOAD [--compile]   -> one JSON line on stdout

Same training loop as nnc: reshuffle every epoch, gather the batch rows, one Adam step
per batch (last partial batch kept). steps/s is measured after the first epoch;
first_step_seconds counts from BENCH_T0 (set by run.py just before starting the process).
"""
import json
import os
import sys
import time

T0 = float(os.environ.get("BENCH_T0", time.time()))

import numpy as np
import torch

import workloads


def main(name, compiled):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    w = workloads.WORKLOADS[name]
    layers = []
    for i, (a, b) in enumerate(zip(w["sizes"], w["sizes"][1:])):
        lin = torch.nn.Linear(a, b)
        torch.nn.init.normal_(lin.weight, 0.0, (2.0 / a) ** 0.5)
        torch.nn.init.zeros_(lin.bias)
        layers += [lin, torch.nn.ReLU()] if i < len(w["sizes"]) - 2 else [lin]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=workloads.LR)

    def loss_fn(x, y):
        return torch.nn.functional.cross_entropy(model(x), y)

    def opt_step():
        opt.step()

    if compiled:
        loss_fn, opt_step = torch.compile(loss_fn), torch.compile(opt_step)

    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in workloads.load(name))
    ytr, yte = ytr.long(), yte.long()
    n, batch, rng = len(xtr), w["batch"], np.random.default_rng(0)
    steps, first, t_epoch1, steps_epoch1, loss = 0, None, None, 0, None
    for epoch in range(w["epochs"]):
        perm = torch.from_numpy(rng.permutation(n))
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            loss = loss_fn(xtr[idx], ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt_step()
            steps += 1
            if first is None:
                loss.item()
                first = time.time() - T0
        if epoch == 0:
            t_epoch1, steps_epoch1 = time.perf_counter(), steps
    final_loss = loss.item()
    timed = steps - steps_epoch1
    out = dict(steps=steps, first_step_seconds=first, train_loss=final_loss,
               steps_per_second=timed / (time.perf_counter() - t_epoch1) if timed else None)
    if len(xte):
        with torch.no_grad():
            out["test_accuracy"] = (model(xte).argmax(1) == yte).float().mean().item()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], "--compile" in sys.argv)
