"""Workload definitions shared by every side, and the deterministic random data.

Throughput workloads train on random data (uniform integer pixels 0..255 scaled by
1/255, uniform labels 0..9) written once to bench/data/*.csv; every side reads the
same file, so data loading costs the same work everywhere.
"""
import gzip
import os

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(BENCH, "data")
MNIST_DIR = os.path.normpath(os.path.join(BENCH, "..", "examples", "data"))

# name: layer sizes, batch, rows in the data file (a multiple of batch), epochs, .nn file
WORKLOADS = {
    "W1": dict(title="MLP-small", sizes=[64, 256, 256, 10], batch=64, rows=64 * 50, epochs=100,
               nn="w1_mlp_small.nn"),
    "W2": dict(title="MLP-large", sizes=[784, 1024, 1024, 10], batch=256, rows=256 * 10, epochs=10,
               nn="w2_mlp_large.nn"),
    "MNIST": dict(title="MNIST (W2 net, 10k/10k, 3 epochs)", sizes=[784, 1024, 1024, 10], batch=256,
                  rows=10000, epochs=3, nn="../examples/mlp_mnist.nn"),
    # sizes: features in, classes out (what the data needs); the layers are in `arch`.
    "W3": dict(title="CNN-small", sizes=[64, 10], batch=64, rows=64 * 50, epochs=15,
               nn="w3_cnn_small.nn", image=(1, 8, 8),
               arch="[1,8,8] conv3x3 32 → conv3x3 64 → maxpool 2 → 1024→128→10"),
    # A character-level GPT on random text over 65 symbols (windows of 64, next-token labels).
    "W4": dict(title="GPT-small", sizes=[64, 65], batch=32, rows=32 * 40, epochs=4, nn="w4_gpt.nn",
               text=True, d_model=128, heads=4, blocks=2,
               arch="vocab 65, context 64, d_model 128, 4 heads, 2 pre-LN blocks (causal attention + 4x GELU MLP), "
                    "learned positions, AdamW lr 1e-3 wd 0.01"),
    # A character-level LSTM on the same kind of random text.
    "W5": dict(title="LSTM", sizes=[64, 65], batch=32, rows=32 * 40, epochs=4, nn="w5_lstm.nn",
               text=True, lstm=True, embed=64, hidden=256,
               arch="vocab 65, sequence 64, embedding 64, one LSTM layer of 256, linear read-out, Adam lr 1e-3"),
}
LR = 1e-3


def n_params(sizes):
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def csv_path(name):
    return os.path.join(DATA, f"{name.lower()}.csv")


ALPHABET = "".join(chr(33 + i) for i in range(65))  # '!' .. 'a': 65 distinct characters


def text_path(name):
    return os.path.join(DATA, f"{name.lower()}.txt")


def generate(name):
    """Write the random data set of a throughput workload (deterministic, seed 0)."""
    w = WORKLOADS[name]
    if w.get("text"):
        path = text_path(name)
        if not os.path.exists(path):
            os.makedirs(DATA, exist_ok=True)
            ids = np.random.default_rng(0).integers(0, len(ALPHABET), size=w["rows"] * w["sizes"][0] + 1)
            with open(path + ".tmp", "w") as f:
                f.write("".join(ALPHABET[i] for i in ids))
            os.replace(path + ".tmp", path)
        return path
    path = csv_path(name)
    if os.path.exists(path):
        return path
    os.makedirs(DATA, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(w["rows"], w["sizes"][0]))
    y = rng.integers(0, w["sizes"][-1], size=(w["rows"], 1))
    header = ",".join([f"f{i}" for i in range(w["sizes"][0])] + ["label"])
    np.savetxt(path + ".tmp", np.hstack([x, y]), fmt="%d", delimiter=",", header=header, comments="")
    os.replace(path + ".tmp", path)
    return path


def load(name):
    """(x_train, y_train, x_test, y_test) as float32 / int32 numpy arrays."""
    if name == "MNIST":
        def idx(f):
            with gzip.open(os.path.join(MNIST_DIR, f)) as fh:
                raw = fh.read()
            ndim = raw[3]
            return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
        xs = [idx(f"mnist-{s}-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255 for s in ("train10k", "t10k")]
        ys = [idx(f"mnist-{s}-labels-idx1-ubyte.gz").astype(np.int32) for s in ("train10k", "t10k")]
        return xs[0], ys[0], xs[1], ys[1]
    w = WORKLOADS[name]
    if w.get("text"):
        # As nnc's text(..., context: T): sorted-character vocabulary, consecutive windows.
        text = open(text_path(name)).read()
        vocab = {c: i for i, c in enumerate(sorted(set(text)))}
        ids = np.array([vocab[c] for c in text], dtype=np.int32)
        t = w["sizes"][0]
        rows = (len(ids) - 1) // t
        x = np.stack([ids[r * t:r * t + t] for r in range(rows)])
        y = np.stack([ids[r * t + 1:r * t + t + 1] for r in range(rows)])
        return x, y, x[:0], y[:0]
    raw = np.loadtxt(csv_path(name), delimiter=",", skiprows=1, dtype=np.float32)
    x, y = raw[:, :-1] / 255, raw[:, -1].astype(np.int32)
    return x, y, x[:0], y[:0]


def mnist_available():
    return os.path.exists(os.path.join(MNIST_DIR, "mnist-t10k-images-idx3-ubyte.gz"))
