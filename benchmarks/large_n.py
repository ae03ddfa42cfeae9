"""Large-N evidence for the iterative path of ntkfast.predict (docs/large.md).

Modes (one per process, so each peak RSS is its own):
  agreement  N points: the iterative path (KernelOperator + PCG / Lanczos) against the exact one
             (dense NTK + Cholesky / eigh) at t = ∞ and at --times finite times, train and test
             means; max relative differences, iterations, times.
  speed      N points, t = ∞ only: the iterative path alone (time, iterations with and without the
             preconditioner), to compare with the recorded dense eigh at N = 32768
             (results/eigh_large.txt).
  product    one operator product (1 and --columns vectors) against one symmetric Gram (NTK),
             recompute and stored; stored products as GB/s.
  operator   one recompute product alone, for N whose Gram does not fit in memory.

The data are ntkfast.demo.generated_regression: structured, not i.i.d. Gaussian (whose NTK is
nearly a multiple of I, which is too easy for CG): x = tanh(Z W) on a 20-dimensional latent Z,
d = 784; targets y = sin of 10 random projections of Z.

    python benchmarks/large_n.py agreement --n 5000 -o benchmarks/results/large_n_agreement_5000.md
"""
from __future__ import annotations

import argparse
import datetime
import platform
import resource
import subprocess
import time

import numpy as np

import ntkfast as nf
from ntkfast.demo import generated_regression

NET = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)


def data(n, d, seed=0):
    x, y, x_test, _ = generated_regression(n, d, seed=seed)
    return x, y, x_test


def machine():
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                     if line.startswith("Model name"))
    except (StopIteration, OSError):
        model = platform.processor()
    flags = open("/proc/cpuinfo").read()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "baseline"
    cfg = nf.get_config()["cpu"]
    return (f"{model}, {cfg['threads']} threads, {isa} (engine kernels: {cfg['kernels']}); "
            f"ntkfast {nf.__version__}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def agreement(args):
    x, y, x_test = data(args.n, args.d)
    times = np.logspace(0, 5, args.times)
    lines = []
    start = time.perf_counter()
    k = nf.gram(x, net=NET, get="ntk")
    k_td = nf.gram(x_test, x, net=NET, get="ntk")
    t_gram = time.perf_counter() - start
    exact = nf.predict.gradient_descent_mse(k, y, diag_reg=args.diag_reg)
    start = time.perf_counter()
    e_inf = exact(t=None, fx_train_0=0.0, fx_test_0=0.0, k_test_train=k_td)
    t_chol = time.perf_counter() - start
    start = time.perf_counter()
    e_t = exact(t=times, fx_train_0=0.0, fx_test_0=0.0, k_test_train=k_td)
    t_eigh = time.perf_counter() - start
    del k

    op = nf.KernelOperator(x, net=NET, storage=args.storage)
    cross = nf.KernelOperator(x_test, x, net=NET, storage="recompute")
    iterative = nf.predict.gradient_descent_mse(op, y, diag_reg=args.diag_reg, tol=args.tol)
    start = time.perf_counter()
    i_inf = iterative(t=None, fx_train_0=0.0, fx_test_0=0.0, k_test_train=cross)
    t_cg = time.perf_counter() - start
    cg_info = iterative.info
    start = time.perf_counter()
    i_t = iterative(t=times, fx_train_0=0.0, fx_test_0=0.0, k_test_train=cross)
    t_lanczos = time.perf_counter() - start
    lanczos_info = iterative.info

    lines += [
        f"# Iterative vs exact predict, N = {args.n}, d = {args.d}, 3-layer ReLU NTK, "
        f"diag_reg = {args.diag_reg}, tol = {args.tol}, {args.times} times in [1, 1e5]",
        f"machine: {machine()}",
        f"operator storage: {op.storage}",
        "",
        "| quantity | max relative difference (iterative vs exact) |",
        "|---|---:|",
        f"| train mean, t = ∞ | {rel(i_inf[0], e_inf[0]):.2e} |",
        f"| test mean, t = ∞ | {rel(i_inf[1], e_inf[1]):.2e} |",
        f"| train mean, {args.times} times | {rel(i_t[0], e_t[0]):.2e} |",
        f"| test mean, {args.times} times | {rel(i_t[1], e_t[1]):.2e} |",
        "",
        "| step | time |",
        "|---|---:|",
        f"| exact: NTK train + test Gram | {t_gram:.1f} s |",
        f"| exact: Cholesky solve (t = ∞) | {t_chol:.1f} s |",
        f"| exact: eigh + {args.times} times | {t_eigh:.1f} s |",
        f"| iterative: PCG (t = ∞), {cg_info.iterations} iterations, residual "
        f"{float(np.max(cg_info.residuals)):.1e} | {t_cg:.1f} s |",
        f"| iterative: Lanczos ({args.times} times), {int(np.max(lanczos_info.steps))} steps | "
        f"{t_lanczos:.1f} s |",
        "",
        f"peak RSS of the process (both paths): {peak_gb():.2f} GB",
    ]
    return lines


def speed(args):
    x, y, x_test = data(args.n, args.d)
    lines = [f"# Iterative kernel regression (t = ∞), N = {args.n}, d = {args.d}, 3-layer ReLU NTK, "
             f"diag_reg = {args.diag_reg}, tol = {args.tol}",
             f"machine: {machine()}", ""]
    start = time.perf_counter()
    op = nf.KernelOperator(x, net=NET, storage=args.storage)
    t_op = time.perf_counter() - start
    lines.append(f"operator storage: {op.storage} (set-up {t_op:.1f} s: the one Gram computation "
                 "when stored)")
    lines += ["", "| preconditioner rank | iterations | residual | time (solve) |", "|---:|---:|---:|---:|"]
    for rank in args.ranks:
        fn = nf.predict.gradient_descent_mse(op, y, diag_reg=args.diag_reg, tol=args.tol,
                                             preconditioner_rank=rank,
                                             maxiter=args.maxiter)
        start = time.perf_counter()
        try:
            fn(t=None, fx_train_0=None, fx_test_0=0.0,
               k_test_train=nf.KernelOperator(x_test[:10], x, net=NET, storage="recompute"))
            info = fn.info
            lines.append(f"| {rank} | {info.iterations} | {float(np.max(info.residuals)):.1e} | "
                         f"{time.perf_counter() - start:.1f} s |")
        except nf.ConvergenceError as error:
            lines.append(f"| {rank} | > {args.maxiter} (not converged: {float(np.max(error.residuals)):.1e}) | | "
                         f"{time.perf_counter() - start:.1f} s |")
    lines += ["", f"peak RSS: {peak_gb():.2f} GB (inputs: {x.nbytes / 1e9:.2f} GB)"]
    return lines


def product(args):
    x, _, _ = data(args.n, args.d)
    rng = np.random.default_rng(1)
    lines = [f"# Operator product vs one symmetric Gram, N = {args.n}, d = {args.d}, 3-layer ReLU NTK",
             f"machine: {machine()}", "", "| what | best of 3 | ratio to the Gram |", "|---|---:|---:|"]

    def best(fn):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    t_gram = best(lambda: nf.gram(x, net=NET, get="ntk"))
    lines.append(f"| ntkfast.gram(x, get='ntk') | {t_gram:.2f} s | 1.00 |")
    op = nf.KernelOperator(x, net=NET, storage="recompute")
    for cols in (1, args.columns):
        v = rng.standard_normal((args.n, cols))
        t = best(lambda: op @ v)
        lines.append(f"| recompute: K @ V, {cols} column(s) | {t:.2f} s | {t / t_gram:.2f} |")
    stored = nf.KernelOperator(x, net=NET, storage="memory")
    for cols in (1, args.columns):
        v = rng.standard_normal((args.n, cols))
        t = best(lambda: stored @ v)
        lines.append(f"| memory: K @ V, {cols} column(s) | {t:.3f} s ({stored.nbytes / t / 1e9:.1f} GB/s "
                     f"read) | {t / t_gram:.3f} |")
    lines += ["", f"peak RSS: {peak_gb():.2f} GB"]
    return lines


def operator(args):
    """One recompute product at an N whose Gram does not fit in memory (no Gram baseline)."""
    x, _, _ = data(args.n, args.d)
    v = np.random.default_rng(1).standard_normal((args.n, args.columns))
    op = nf.KernelOperator(x, net=NET, storage="recompute")
    start = time.perf_counter()
    op @ v
    elapsed = time.perf_counter() - start
    return [f"# One KernelOperator product (recompute), N = {args.n}, d = {args.d}, 3-layer ReLU NTK, "
            f"V: {args.n} x {args.columns}",
            f"machine: {machine()}", "",
            f"time: {elapsed:.1f} s ({args.n ** 2 / 2 / elapsed / 1e6:.0f} M kernel entries/s, "
            f"upper triangle); matrix would take {op.nbytes / 1e9:.0f} GB",
            f"peak RSS: {peak_gb():.2f} GB (inputs: {x.nbytes / 1e9:.2f} GB)"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("agreement", "speed", "product", "operator"))
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--times", type=int, default=20)
    parser.add_argument("--diag-reg", type=float, default=1e-4)
    parser.add_argument("--tol", type=float, default=1e-10)
    parser.add_argument("--storage", default="auto")
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 1000])
    parser.add_argument("--maxiter", type=int, default=2000)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    lines = {"agreement": agreement, "speed": speed, "product": product,
             "operator": operator}[args.mode](args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
