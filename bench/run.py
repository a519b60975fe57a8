#!/usr/bin/env python3
"""Compare nnc with PyTorch (eager, torch.compile) and JAX (jax.jit) on CPU, 2 threads.

    python3 bench/run.py [--repeats 3] [--workloads W1,W2,W3,W4,W5,MNIST] [--sides nnc,torch,...] [--out NAME]

Creates bench/.venv (from bench/requirements.txt) on first use and re-runs itself there,
builds nnc (cargo build --release), writes the random data to bench/data/, then for every
workload runs each side once as a warm-up and --repeats times timed, each run a separate
process pinned to 2 CPUs, the repeats interleaved across sides (round-robin) so that
load from other users of the machine spreads over all sides. Writes
bench/results/results.json and bench/results/results.md; a run of other workloads than the
default set writes e.g. w3.json / w3.md (--workloads W3) instead, --out NAME: NAME.json / NAME.md.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv")
VPY = os.path.join(VENV, "bin", "python")
NNC = os.path.join(ROOT, "target", "release", "nnc")
NNC_RUN = NNC  # the private copy that is actually run (see snapshot_nnc)
RESULTS = os.path.join(BENCH, "results")

THREAD_ENV = {
    "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
    "MATMUL_NUM_THREADS": "2", "RAYON_NUM_THREADS": "2",
    "TORCHINDUCTOR_COMPILE_THREADS": "1",  # compile in-process: no worker pool, RSS is all ours
    "PYTHONUNBUFFERED": "1",
    # OpenMP's wait policy is left at its default: PASSIVE slows eager PyTorch on small ops,
    # and the peers run as their users run them. A contended repeat is discarded instead.
}
SIDES = ["nnc", "torch eager", "torch.compile", "jax.jit"]
TIMEOUT = 1800


def ensure_venv():
    """Re-exec under bench/.venv, creating it / installing requirements when needed."""
    req = os.path.join(BENCH, "requirements.txt")
    stamp = os.path.join(VENV, ".requirements")
    want = open(req).read()
    if not (os.path.exists(stamp) and open(stamp).read() == want):
        if not os.path.exists(VPY):
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([VPY, "-m", "pip", "install", "-q", "-r", req])
        open(stamp, "w").write(want)
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(VPY, [VPY, os.path.abspath(__file__), *sys.argv[1:]])


def pin_to_two_cpus():
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cpus)


def poll_hwm(p, peak):
    """Poll the child's VmHWM (peak RSS of its current address space) until it exits.

    Not ru_maxrss: after fork+exec that includes the parent's RSS copied by the fork."""
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
            peak[0] = max(peak[0], hwm)  # kB
        except (OSError, StopIteration):
            pass
        time.sleep(0.01)


def run_once(cmd, extra_env=None):
    """Run one process; returns its JSON line (a dict) plus peak_rss_mb and wall_seconds, or an error."""
    env = {**os.environ, **THREAD_ENV, **(extra_env or {})}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env["BENCH_T0"] = repr(time.time())
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=out, stderr=err, preexec_fn=pin_to_two_cpus)
        peak = [0]
        poller = threading.Thread(target=poll_hwm, args=(p, peak), daemon=True)
        poller.start()
        try:
            p.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        poller.join()
        wall = time.perf_counter() - t
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    lines = [l[l.index("{"):] for l in stdout.splitlines() if "{" in l]
    try:
        res = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = [l for l in stderr.strip().splitlines() if l.strip()][-3:] or ["no output"]
        return {"error": f"exit status {p.returncode}: " + " / ".join(tail)[-300:]}
    res["peak_rss_mb"] = peak[0] / 1024
    res["wall_seconds"] = wall
    return res


def side_cmd(side, workload, w):
    if side == "nnc":
        return [NNC_RUN, "run", os.path.join(BENCH, w["nn"]), "--json", "--quiet"] if w["nn"] else None
    script = "side_jax.py" if side == "jax.jit" else "side_torch.py"
    return [VPY, script, workload] + (["--compile"] if side == "torch.compile" else [])


def snapshot_nnc():
    """Run a private copy of target/release/nnc: others building in this tree replace the binary
    (a run that starts while it is being linked fails), and every run should use the same one."""
    global NNC_RUN
    d = tempfile.mkdtemp(prefix="nnc-bench-")
    NNC_RUN = os.path.join(d, "nnc")
    shutil.copy2(NNC, NNC_RUN)
    return d


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def bench_workload(name, w, sides, repeats, log):
    cmds = {s: side_cmd(s, name, w) for s in sides}
    runs = {s: [] for s in sides}
    errors = {s: None for s in sides}
    for s in sides:
        if cmds[s] is None:
            errors[s] = "n/a: no .nn file for this workload"
    for rep in range(repeats + 1):  # rep 0 is the warm-up
        for s in sides:
            if errors[s]:
                continue
            env = {}
            if s == "torch.compile":  # a fresh inductor cache: every run compiles cold, like nnc and jax
                env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
            r = run_once(cmds[s], env)
            if "TORCHINDUCTOR_CACHE_DIR" in env:
                shutil.rmtree(env["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
            log(f"  {name} {s:<14} {'warm-up' if rep == 0 else f'run {rep}'}: " +
                (f"FAILED {r['error']}" if "error" in r else
                 f"{r['steps_per_second']:.1f} steps/s, first step {r['first_step_seconds']:.2f}s, "
                 f"{r['peak_rss_mb']:.0f} MB"))
            if "error" in r:
                errors[s] = r["error"]
            elif rep > 0:
                runs[s].append(r)
    out = {}
    for s in sides:
        if errors[s]:
            out[s] = {"error": errors[s]}
            continue
        rs = runs[s]
        out[s] = {"steps_per_second": med(rs, "steps_per_second"),
                  "steps_per_second_all": [r["steps_per_second"] for r in rs],
                  "first_step_seconds": med(rs, "first_step_seconds"),
                  "peak_rss_mb": med(rs, "peak_rss_mb"),
                  "steps": rs[0].get("steps"), "train_loss": med(rs, "train_loss"),
                  "test_accuracy": med(rs, "test_accuracy"),
                  "wall_seconds": med(rs, "wall_seconds")}
        if name == "W2":
            import workloads
            out[s]["gflops"] = 6 * workloads.n_params(w["sizes"]) * w["batch"] * out[s]["steps_per_second"] / 1e9
    peers = {s: v for s, v in out.items() if s != "nnc" and v.get("steps_per_second")}
    if out.get("nnc", {}).get("steps_per_second") and peers:
        best = max(peers, key=lambda s: peers[s]["steps_per_second"])
        fastest_start = min(peers, key=lambda s: peers[s]["first_step_seconds"])
        out["nnc"]["vs_best_peer"] = {
            "steps_per_second_ratio": out["nnc"]["steps_per_second"] / peers[best]["steps_per_second"],
            "best_peer": best,
            "first_step_ratio": out["nnc"]["first_step_seconds"] / peers[fastest_start]["first_step_seconds"],
            "fastest_start_peer": fastest_start}
    return out


def machine_info():
    from importlib.metadata import version
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": model, "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": version("torch"), "jax": version("jax"),
            "numpy": version("numpy"), "nnc_commit": rev, "loadavg_start": os.getloadavg()}


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def markdown(res):
    m = res["machine"]
    lines = [f"# nnc vs PyTorch / JAX (CPU, 2 threads)", "",
             f"{m['date']}, {m['cpu']} ({m['cpus']} CPUs), nnc {m['nnc_commit']}, torch {m['torch']}, "
             f"jax {m['jax']}, numpy {m['numpy']}. Load average at start {m['loadavg_start'][0]:.1f}, "
             f"at end {m['loadavg_end'][0]:.1f} (shared machine: timings are noisy).", "",
             f"Medians of {res['repeats']} timed runs (separate processes, after one warm-up run). "
             "steps/s: over the training steps (nnc: every step, evaluation between epochs excluded; Python sides: after the first epoch). "
             "First step: seconds from process start to the end of the first training step "
             "(imports, data loading, compilation included). Peak RSS: the process's VmHWM, polled by the parent every 10 ms.", "",
             "Wall: the whole process, start to exit (for MNIST: load, compile, 3 epochs, test evaluation).", "",
             "| workload | side | steps/s | runs | first step (s) | wall (s) | peak RSS (MB) | GFLOP/s | nnc / best peer |",
             "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for name, sides in res["workloads"].items():
        for s, v in sides.items():
            if "error" in v:
                lines.append(f"| {name} | {s} | {v['error'].replace('|', '/')} | | | | | | |")
                continue
            ratio = ""
            if "vs_best_peer" in v:
                q = v["vs_best_peer"]
                ratio = (f"{q['steps_per_second_ratio']:.2f}× steps/s of {q['best_peer']}; "
                         f"{q['first_step_ratio']:.2f}× first-step time of {q['fastest_start_peer']}")
            acc = f" (test acc {100 * v['test_accuracy']:.1f}%)" if v.get("test_accuracy") else ""
            lines.append(f"| {name} | {s}{acc} | {fmt(v['steps_per_second'], '.1f')} | "
                         f"{' '.join(fmt(x, '.0f') for x in v['steps_per_second_all'])} | "
                         f"{fmt(v['first_step_seconds'], '.2f')} | {fmt(v.get('wall_seconds'), '.1f')} | {fmt(v['peak_rss_mb'], '.0f')} | "
                         f"{fmt(v.get('gflops'), '.1f') if name == 'W2' else ''} | {ratio} |")
        if name == "W2" and res.get("peak"):
            for lib, p in res["peak"].items():
                lines.append(f"| W2 peak | 2048² matmul, {lib} | | | | | | {fmt(p.get('gflops'), '.1f')} | "
                             f"{p.get('error', 'machine peak (median of runs, best of 20 matmuls each)')} |")
    lines += ["", "Workloads: " + "; ".join(f"{k} = {w['title']} {w.get('arch') or '→'.join(map(str, w['sizes']))}, batch {w['batch']}, "
                                             f"{w['rows']} rows × {w['epochs']} epochs" for k, w in res["definitions"].items()) +
              ". Float32, softmax cross-entropy, Adam lr 1e-3 (W4: AdamW, weight decay 0.01), He-normal init (W4, W5: "
              "normal embeddings, Xavier-uniform linear layers; PyTorch's LSTM keeps its own init); W1/W2/W3 on random data "
              "(bench/data/*.csv, read by every side), W4 and W5 on random text over 65 characters (bench/data/w4.txt, w5.txt). "
              "W2 GFLOP/s = 6 · params · batch · steps/s."]
    return "\n".join(lines) + "\n"


def main():
    ensure_venv()
    sys.path.insert(0, BENCH)
    import workloads
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default="W1,W2,W3,W4,W5,MNIST")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--out", default=None,
                    help="write bench/results/OUT.json and OUT.md; default: 'results' for the full default "
                         "set of workloads, else the workload names (--workloads W3 writes w3.md, w3.json)")
    args = ap.parse_args()
    names = args.workloads.split(",")
    if args.out is None:
        args.out = "results" if args.workloads == ap.get_default("workloads") else "-".join(names).lower()
    unknown = [n for n in names if n not in workloads.WORKLOADS]
    if unknown:
        sys.exit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(workloads.WORKLOADS)}")
    log = lambda s: print(s, flush=True)

    log("building nnc (cargo build --release)")
    if subprocess.call(["cargo", "build", "--release", "-q"], cwd=ROOT) != 0:
        if not os.path.exists(NNC):
            sys.exit("cargo build --release failed and there is no target/release/nnc")
        log("WARNING: cargo build --release failed; using the existing target/release/nnc")
    snapshot_dir = snapshot_nnc()
    res = {"machine": machine_info(), "repeats": args.repeats, "workloads": {}, "peak": {},
           "definitions": {k: {x: w[x] for x in ("title", "sizes", "batch", "rows", "epochs", "arch") if x in w}
                           for k, w in workloads.WORKLOADS.items() if k in names}}
    sides = args.sides.split(",")
    for name in names:
        w = workloads.WORKLOADS[name]
        if name == "MNIST" and not workloads.mnist_available():
            res["workloads"][name] = {s: {"error": f"skipped: no MNIST files in {workloads.MNIST_DIR}"} for s in sides}
            continue
        if name != "MNIST":
            workloads.generate(name)
        log(f"{name}: {w['title']}")
        res["workloads"][name] = bench_workload(name, w, sides, args.repeats, log)
        if name == "W2":
            for lib in ("numpy", "jax"):
                rs = [run_once([VPY, "side_peak.py", lib]) for _ in range(args.repeats)]
                ok = [r for r in rs if "error" not in r]
                res["peak"][lib] = {"gflops": med(ok, "gflops")} if ok else {"error": rs[0]["error"]}
                log(f"  peak {lib}: {res['peak'][lib]}")
    res["machine"]["loadavg_end"] = os.getloadavg()
    shutil.rmtree(snapshot_dir, ignore_errors=True)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.out}.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(RESULTS, f"{args.out}.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
