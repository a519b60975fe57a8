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


def he(layer, fan_in):
    """He-normal weights (std sqrt(2 / fan_in)), zero biases."""
    torch.nn.init.normal_(layer.weight, 0.0, (2.0 / fan_in) ** 0.5)
    torch.nn.init.zeros_(layer.bias)
    return layer


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        lin = he(torch.nn.Linear(a, b), a)
        layers += [lin, torch.nn.ReLU()] if i < len(sizes) - 2 else [lin]
    return torch.nn.Sequential(*layers)


def cnn(w):
    """W3: conv3x3 1->32, ReLU, conv3x3 32->64, ReLU, maxpool 2, flatten, 1024->128, ReLU, 128->10 (NCHW)."""
    c, h, wd = w["image"]
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (c, h, wd)),
        he(torch.nn.Conv2d(c, 32, 3, padding=1), c * 9), torch.nn.ReLU(),
        he(torch.nn.Conv2d(32, 64, 3, padding=1), 32 * 9), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        he(torch.nn.Linear(64 * (h // 2) * (wd // 2), 128), 64 * (h // 2) * (wd // 2)), torch.nn.ReLU(),
        he(torch.nn.Linear(128, w["sizes"][-1]), 128))


class Block(torch.nn.Module):
    """Pre-LayerNorm: x + attention(LN(x)), then + MLP(LN(x)) with a 4x GELU hidden layer."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.up, self.down = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(o.transpose(1, 2).reshape(b, t, d))
        return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))


class Gpt(torch.nn.Module):
    """W4: token embedding + learned positions, pre-LN blocks, final LN, linear read-out."""

    def __init__(self, w):
        super().__init__()
        t, vocab, d = w["sizes"][0], w["sizes"][1], w["d_model"]
        self.tokens = torch.nn.Embedding(vocab, d)
        self.positions = torch.nn.Parameter(torch.randn(t, d) * 0.02)
        torch.nn.init.normal_(self.tokens.weight, 0.0, 0.02)
        self.blocks = torch.nn.Sequential(*[Block(d, w["heads"]) for _ in range(w["blocks"])])
        self.ln, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab)

    def forward(self, ids):
        return self.head(self.ln(self.blocks(self.tokens(ids) + self.positions)))


class CharLstm(torch.nn.Module):
    """W5: embedding, one LSTM layer (cuDNN-style fused gates), linear read-out."""

    def __init__(self, w):
        super().__init__()
        vocab = w["sizes"][1]
        self.tokens = torch.nn.Embedding(vocab, w["embed"])
        self.lstm = torch.nn.LSTM(w["embed"], w["hidden"], batch_first=True)
        self.head = torch.nn.Linear(w["hidden"], vocab)

    def forward(self, ids):
        h, _ = self.lstm(self.tokens(ids))
        return self.head(h)


def main(name, compiled):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    w = workloads.WORKLOADS[name]
    if w.get("lstm"):
        model = CharLstm(w)
        opt = torch.optim.Adam(model.parameters(), lr=workloads.LR)
    elif w.get("text"):
        model = Gpt(w)
        opt = torch.optim.AdamW(model.parameters(), lr=workloads.LR, weight_decay=0.01)
    else:
        model = cnn(w) if "image" in w else mlp(w["sizes"])
        opt = torch.optim.Adam(model.parameters(), lr=workloads.LR)

    def loss_fn(x, y):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

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
