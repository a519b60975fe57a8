"""Machine peak: a 2048x2048 float32 matmul in NumPy or JAX (2 threads), in GFLOP/s.

    side_peak.py numpy|jax   -> one JSON line: {"gflops": best of 20, "gflops_median": ...}
"""
import json
import sys
import time

import numpy as np

N, REPS = 2048, 20


def main(lib):
    a, b = (np.random.default_rng(i).standard_normal((N, N), dtype=np.float32) for i in (0, 1))
    if lib == "jax":
        import jax
        import jax.numpy as jnp
        a, b = jnp.asarray(a), jnp.asarray(b)
        mm = jax.jit(jnp.matmul)
        run = lambda: mm(a, b).block_until_ready()
    else:
        run = lambda: a @ b
    run()
    times = []
    for _ in range(REPS):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    flop = 2 * N ** 3
    print(json.dumps(dict(gflops=flop / min(times) / 1e9, gflops_median=flop / float(np.median(times)) / 1e9)))


if __name__ == "__main__":
    main(sys.argv[1])
