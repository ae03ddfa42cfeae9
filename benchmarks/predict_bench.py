"""Cost of ntkfast.predict against one eigendecomposition of the train kernel, in one process.

    python benchmarks/predict_bench.py [--n-train 5000] [--n-test 1000] [--n-times 100]
                                       [--repeats 3] [--nt-python PATH]
                                       [-o benchmarks/results/predict_bench.txt]

Measures, on the same NTK (an MLP(3, relu) Gram of standard-normal points):
  * one eigh of the n_train x n_train kernel: NumPy (np.linalg.eigh), SciPy 'evd', SciPy 'evr';
  * gradient_descent_mse end to end from a cold start (its one eigh + the projections + the
    train and test outputs at n_times times, all in one batched product), and warm (the cached
    eigendecomposition reused for a new set of times);
  * t = None through the Cholesky solve;
  * neural-tangents' predict and JAX's eigh on the same arrays, run by the interpreter given
    with --nt-python (a venv with neural-tangents 0.6.5, see docs/performance.md), float64.
The target (issue 3): predictions at 100 times cost <= 1.1 x one eigh of the kernel. On a
shared machine timings fluctuate, so each is taken several times and the best is compared.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np
import scipy
import scipy.linalg

import ntkfast
from ntkfast import _predict_linalg


def _machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        keep = ("Model name", "CPU(s):", "Thread(s) per core", "L3 cache")
        lines = [line.strip() for line in out.splitlines() if line.strip().startswith(keep)]
    except (OSError, subprocess.CalledProcessError):
        lines = [platform.processor() or "unknown CPU"]
    with open("/proc/meminfo") as f:
        mem = next(line for line in f if line.startswith("MemTotal")).split()[1]
    return lines + [f"memory: {int(mem) / 2**20:.1f} GiB"]


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-outputs", type=int, default=10)
    parser.add_argument("--n-times", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-o", "--output", type=pathlib.Path, default=None)
    parser.add_argument("--nt-python", help="interpreter with neural-tangents installed")
    args = parser.parse_args(argv)

    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    say(f"# ntkfast.predict benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}")
    for line in _machine():
        say(f"# {line}")
    say(f"# python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"ntkfast {ntkfast.__version__}; load average at start {os.getloadavg()[0]:.2f}")
    blas = {lib["filepath"].split("/")[-1]: (lib.get("version"), lib.get("num_threads"))
            for lib in __import__("threadpoolctl").threadpool_info() if lib["user_api"] == "blas"}
    say(f"# BLAS/LAPACK libraries (version, threads): {blas}")

    n, m, k, n_times = args.n_train, args.n_test, args.n_outputs, args.n_times
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n + m, 64))
    y = np.eye(k)[rng.integers(0, k, n)] - 1.0 / k
    net = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)
    t_gram, ntk = _timed(lambda: ntkfast.gram(x[:n], net=net, get="ntk"))
    ntk_test = ntkfast.gram(x[n:], x[:n], net=net, get="ntk")
    say(f"# problem: n_train={n}, n_test={m}, n_outputs={k}, {n_times} times; kernel {net!r} "
        f"({t_gram:.1f} s for the train NTK, not counted below)")
    times = np.logspace(-1, 5, n_times)
    driver = _predict_linalg.cpu_eigh_driver(n)

    measured = {}  # label -> list of seconds, one per repeat

    def record(label, seconds):
        measured.setdefault(label, []).append(seconds)

    for _ in range(args.repeats):
        record("numpy.linalg.eigh", _timed(lambda: np.linalg.eigh(ntk))[0])
        record("scipy.linalg.eigh driver='evd'",
               _timed(lambda: scipy.linalg.eigh(ntk, driver="evd", check_finite=False))[0])
        record("scipy.linalg.eigh driver='evr'",
               _timed(lambda: scipy.linalg.eigh(ntk, driver="evr", check_finite=False))[0])
        t_build, fn = _timed(lambda: ntkfast.predict.gradient_descent_mse(ntk, y))
        record("gradient_descent_mse(...): input checks", t_build)
        t_first, (f_train, f_test) = _timed(
            lambda: fn(t=times, fx_train_0=0.0, fx_test_0=0.0, k_test_train=ntk_test))
        record(f"first call: eigh + {n_times} times (train+test)", t_first)
        assert f_train.shape == (n_times, n, k) and f_test.shape == (n_times, m, k)
        assert np.isfinite(f_train).all() and np.isfinite(f_test).all()
        record(f"later call: {n_times} new times (eigh cached)", _timed(
            lambda: fn(t=times * 1.5, fx_train_0=0.0, fx_test_0=0.0, k_test_train=ntk_test))[0])
        record("t=None: Cholesky solve (train+test)", _timed(
            lambda: fn(t=None, fx_train_0=0.0, fx_test_0=0.0, k_test_train=ntk_test))[0])

    best = {label: min(values) for label, values in measured.items()}
    own = best[f"scipy.linalg.eigh driver='{driver}'"]
    cold = best["gradient_descent_mse(...): input checks"] + \
        best[f"first call: eigh + {n_times} times (train+test)"]
    beyond = best["gradient_descent_mse(...): input checks"] + \
        best[f"later call: {n_times} new times (eigh cached)"]
    rows = [(label, values) for label, values in measured.items()]
    rows.append((f"cold total (checks + first call) / one eigh ('{driver}', predict's driver)",
                 cold / own))
    rows.append((f"(one eigh + checks + {n_times} times) / one eigh, from the cached call",
                 (own + beyond) / own))
    if args.nt_python:
        rows.extend(_neural_tangents(args.nt_python, ntk, ntk_test, y, times, args.repeats))
    else:
        rows.append(("neural-tangents, jax: not measured (pass --nt-python PATH)", None))
    width = max(len(label) for label, _ in rows)
    say("")
    say(f"{'measurement':<{width}}  best of {args.repeats} [all runs], seconds")
    for label, value in rows:
        if value is None:
            say(label)
        elif isinstance(value, list):
            say(f"{label:<{width}}  {min(value):8.2f} [{', '.join(f'{v:.2f}' for v in value)}]")
        else:
            say(f"{label:<{width}}  {value:8.3f}x")
    say("")
    say(f"# load average at end {os.getloadavg()[0]:.2f} (2-core machine: above ~2 means other "
        "processes competed for the CPU during the run)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n")
    return 0


_NT_WORKER = """
import sys, time
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from neural_tangents import predict
data = np.load(sys.argv[1])
k, k_td, y, times = (jnp.asarray(data[name]) for name in ("k", "k_td", "y", "times"))
repeats = int(sys.argv[2])
def best(fn):
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds.append(time.perf_counter() - start)
    return seconds
eigh = best(lambda: jnp.linalg.eigh(k))
run = best(lambda: predict.gradient_descent_mse(k, y)(times, 0.0, 0.0, k_td))
print(repr((jax.__version__, eigh, run)))
"""


def _neural_tangents(python, ntk, ntk_test, y, times, repeats):
    """jnp.linalg.eigh and neural-tangents' gradient_descent_mse (its eigh + the same times),
    float64, in a subprocess of the given interpreter."""
    import ast
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "problem.npz"
        np.savez(path, k=ntk, k_td=ntk_test, y=y, times=times)
        proc = subprocess.run([python, "-c", _NT_WORKER, str(path), str(repeats)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        return [(f"neural-tangents: failed ({proc.stderr.strip().splitlines()[-1]})", None)]
    version, eigh, run = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    return [(f"jax {version}: jnp.linalg.eigh (float64)", eigh),
            (f"neural-tangents: gradient_descent_mse, {len(times)} times (train+test)", run)]


if __name__ == "__main__":
    sys.exit(main())
