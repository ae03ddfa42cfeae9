"""Side-by-side timings of ntkfast.gram against its baselines, in one run on one machine.

    python benchmarks/compare.py                       # N = 1k..16k, depths 3 and 10, float32/64
    python benchmarks/compare.py --n 8000 --impls ntkfast numpy-gemm
    python benchmarks/compare.py --nt-python ~/nt-venv/bin/python   # adds neural-tangents

Implementations (``--impls``):
  ntkfast          ntkfast.gram(x, net=MLP(depth, activation, W_std, b_std)), NNGP + NTK, symmetric
  numpy-gemm       NumPy's BLAS x @ x.T: the main term of the hardware floor
  numpy            a plain NumPy implementation (benchmarks/baselines.py): full matrices per layer
  neural-tangents  neural_tangents.stax kernel_fn (jit, float64 via jax_enable_x64 where asked),
                   run by the interpreter given with --nt-python (see docs/performance.md for the
                   venv: neural-tangents 0.6.5 needs jax/jaxlib 0.4.23 and numpy 1.26)

Every measurement runs in a fresh subprocess: the time is the best of --repeat runs, the peak
memory is the process's maximum RSS above what it held before the first run (inputs included).
The ntkfast worker also times numpy-gemm in the same process, so the ratio is same-process.
Prints a markdown table (and writes it with --out), and a log-log plot of time against N (--plot).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _points(n, d, dtype, seed=0):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def worker(spec):
    """Runs one measurement in this (fresh) process and returns a dict."""
    import numpy as np

    impl, n, d, depth, dtype = spec["impl"], spec["n"], spec["d"], spec["depth"], spec["dtype"]
    x = _points(n, d, dtype)
    before = _rss_bytes()
    result = {**spec}

    def best_of(fn):
        times = []
        for _ in range(spec["repeat"]):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
            del out
        return min(times)

    if impl == "ntkfast":
        import ntkfast

        net = ntkfast.MLP(depth, spec["activation"], W_std=spec["W_std"], b_std=spec["b_std"])
        ntkfast.gram(x[:64], net=net)  # load the BLAS, build the program
        before = _rss_bytes()
        gram_times, gemm_times = [], []
        for _ in range(spec["repeat"]):  # interleaved, so both see the same machine state
            start = time.perf_counter()
            k = ntkfast.gram(x, net=net)
            gram_times.append(time.perf_counter() - start)
            del k
            start = time.perf_counter()
            g = x @ x.T
            gemm_times.append(time.perf_counter() - start)
            del g
        result.update(time=min(gram_times), gemm_time=min(gemm_times),
                      peak=_peak_bytes() - before, kernels=ntkfast.get_config()["cpu"]["kernels"])
    elif impl == "numpy-gemm":
        result.update(time=best_of(lambda: x @ x.T), peak=_peak_bytes() - before)
    elif impl == "numpy":
        sys.path.insert(0, str(HERE))
        from baselines import numpy_kernels

        result.update(time=best_of(lambda: numpy_kernels(x, depth=depth, activation=spec["activation"],
                                                          W_std=spec["W_std"], b_std=spec["b_std"])),
                      peak=_peak_bytes() - before)
    else:
        raise ValueError(impl)
    result["output_bytes"] = 2 * n * n * np.dtype(dtype).itemsize
    return result


_NT_SCRIPT = r"""
import json, os, resource, sys, time
spec = json.loads(sys.argv[1])
if spec["dtype"] == "float64":
    from jax import config
    config.update("jax_enable_x64", True)
import numpy as np, jax, neural_tangents as nt
from neural_tangents import stax
x = np.random.default_rng(0).standard_normal((spec["n"], spec["d"])).astype(spec["dtype"])
act = {"relu": stax.Relu(), "erf": stax.Erf()}[spec["activation"]]
layers = []
for _ in range(spec["depth"]):
    layers += [stax.Dense(512, W_std=spec["W_std"], b_std=spec["b_std"]), act]
_, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=spec["W_std"], b_std=spec["b_std"]))
kernel_fn = jax.jit(kernel_fn, static_argnames="get")
def statm():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
kernel_fn(x[:64], None, get=("nngp", "ntk")).ntk.block_until_ready()
before = statm()
times = []
for _ in range(spec["repeat"]):
    t = time.perf_counter()
    k = kernel_fn(x, None, get=("nngp", "ntk"))
    k.ntk.block_until_ready()
    times.append(time.perf_counter() - t)
    del k
spec.update(time=min(times), peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before,
            output_bytes=2 * spec["n"] ** 2 * np.dtype(spec["dtype"]).itemsize, version=nt.__version__)
print(json.dumps(spec))
"""


def run_one(spec, nt_python=None, timeout=3600):
    if spec["impl"] == "neural-tangents":
        cmd = [nt_python, "-c", _NT_SCRIPT, json.dumps(spec)]
    else:
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["?"]
        # the exception line, not a trailing note (JAX ends with one about its traceback)
        errors = [line for line in lines if "Error" in line.split(":")[0]]
        return {**spec, "error": (errors or lines)[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info():
    import numpy
    import scipy

    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "scipy": scipy.__version__, "cpu": platform.processor()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "L2 cache", "L3 cache", "Flags"):
                value = value.strip()
                if key.strip() == "Flags":
                    value = " ".join(f for f in value.split() if f.startswith(("avx", "fma")))
                info[key.strip()] = value
    except OSError:
        pass
    try:
        import ntkfast

        cfg = ntkfast.get_config()
        info["ntkfast"] = cfg["version"]
        info["ntkfast kernels"] = cfg["cpu"]["kernels"]
        info["blas"] = " ".join(str(cfg["blas"].get(k, "")) for k in ("name", "version"))
    except ImportError:
        pass
    return info


def _fmt_time(t):
    return "—" if t is None else (f"{t:.3f} s" if t < 100 else f"{t:.0f} s")


def table(results):
    rows = ["| N | depth | dtype | impl | time | ×(x@xᵀ same process) | ntkfast speed-up | peak / outputs |",
            "|---:|---:|---|---|---:|---:|---:|---:|"]
    by_key = {}
    for r in results:
        by_key.setdefault((r["n"], r["depth"], r["dtype"]), {})[r["impl"]] = r
    for (n, depth, dtype), impls in sorted(by_key.items()):
        ours = impls.get("ntkfast", {}).get("time")
        for impl, r in impls.items():
            if "error" in r:
                rows.append(f"| {n} | {depth} | {dtype} | {impl} | failed: {r['error']} | | | |")
                continue
            ratio = f"{r['time'] / r['gemm_time']:.2f}" if "gemm_time" in r else ""
            speedup = f"{r['time'] / ours:.1f}×" if ours and impl != "ntkfast" else ""
            mem = f"{r['peak'] / r['output_bytes']:.2f}" if r.get("peak") is not None else ""
            rows.append(f"| {n} | {depth} | {dtype} | {impl} | {_fmt_time(r['time'])} | {ratio} | "
                        f"{speedup} | {mem} |")
    return "\n".join(rows)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["depth"], r["dtype"]) for r in results})
    fig, axes = plt.subplots(1, len(combos), figsize=(4.2 * len(combos), 3.8), squeeze=False)
    for ax, (depth, dtype) in zip(axes[0], combos):
        for impl in ("ntkfast", "numpy-gemm", "numpy", "neural-tangents"):
            pts = sorted((r["n"], r["time"]) for r in results
                         if r["impl"] == impl and r["depth"] == depth and r["dtype"] == dtype
                         and "error" not in r)
            if pts:
                ax.loglog(*zip(*pts), "o-", label=impl)
        ax.set_title(f"depth {depth}, {dtype}")
        ax.set_xlabel("N (symmetric Gram, d = 784)")
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 16000])
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--depths", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    parser.add_argument("--activation", default="relu", choices=["relu", "erf"])
    parser.add_argument("--W-std", dest="W_std", type=float, default=1.5)
    parser.add_argument("--b-std", dest="b_std", type=float, default=0.05)
    parser.add_argument("--impls", nargs="+", default=["ntkfast", "numpy-gemm", "numpy", "neural-tangents"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-numpy-n", type=int, default=8000,
                        help="skip the plain NumPy baseline above this N (it needs ~12 N² doubles)")
    parser.add_argument("--nt-python", help="interpreter with neural-tangents installed")
    parser.add_argument("--out", help="write the markdown report here")
    parser.add_argument("--plot", help="write a log-log PNG of time against N here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    impls = [i for i in args.impls if i != "neural-tangents" or args.nt_python]
    if "neural-tangents" in args.impls and not args.nt_python:
        print("(neural-tangents skipped: pass --nt-python PATH, see docs/performance.md)", file=sys.stderr)
    info = machine_info()
    results = []
    for dtype in args.dtypes:
        for depth in args.depths:
            for n in args.n:
                for impl in impls:
                    if impl == "numpy" and n > args.max_numpy_n:
                        continue
                    if impl == "numpy-gemm" and "ntkfast" in impls:
                        continue  # measured inside the ntkfast worker, same process
                    spec = dict(impl=impl, n=n, d=args.d, depth=depth, dtype=dtype,
                                activation=args.activation, W_std=args.W_std, b_std=args.b_std,
                                repeat=args.repeat)
                    r = run_one(spec, args.nt_python)
                    results.append(r)
                    if impl == "ntkfast" and "gemm_time" in r:
                        results.append({**spec, "impl": "numpy-gemm", "time": r["gemm_time"],
                                        "peak": None, "output_bytes": r["output_bytes"]})
                    print(f"  {impl:16s} N={n:6d} depth={depth:3d} {dtype}: "
                          f"{r.get('error') or _fmt_time(r['time'])}", file=sys.stderr, flush=True)
    lines = ["# ntkfast.gram vs baselines", "",
             "Symmetric NNGP + NTK Gram of MLP(depth, "
             f"{args.activation}, W_std={args.W_std}, b_std={args.b_std}) on N x {args.d} standard "
             f"normal points; best of {args.repeat}; peak = max RSS above the process's RSS before "
             "the first timed run, over the two N x N outputs (the plain NumPy and neural-tangents "
             "peaks include their temporaries).", "",
             "Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()), "",
             table(results), ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        pathlib.Path(args.out).write_text(report)
        pathlib.Path(args.out).with_suffix(".json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
