"""Large-N evidence for the iterative path of ntkfast.predict (docs/large.md).

Modes (one per process, so each peak RSS is its own):
  agreement  N points: the iterative path (KernelOperator + PCG / Lanczos) against the exact one
             (dense NTK + Cholesky / eigh) at t = ∞ and at --times finite times, train and test
             means; max relative differences, iterations, times.
  speed      N points, t = ∞ only: the iterative path alone (time, iterations with and without the
             preconditioner), to compare with the recorded dense eigh at N = 32768
             (results/eigh_large.txt).
  product    one operator product (1 and --columns vectors) against one symmetric Gram (NTK),
             recompute and stored; stored products as GB/s against a BLAS ?gemv (1 vector) and
             as GFLOP/s against BLAS ?gemm and ?symm (--columns vectors) on the same matrix.
  operator   one recompute product alone, for N whose Gram does not fit in memory.
  scale      N points with the float32 NTK stored in a file (storage='file'): one Gram
             computation (the file's set-up), one product, PCG at t = ∞ with and without the
             preconditioner, Lanczos dynamics at --times times, test predictions; every time
             also as a multiple of the Gram computation; peak RSS beyond the inputs. Lines are
             written to -o as they come.

The data are ntkfast.demo.generated_regression: structured, not i.i.d. Gaussian (whose NTK is
nearly a multiple of I, which is too easy for CG): x = tanh(Z W) on a 20-dimensional latent Z,
d = 784; targets y = sin of 10 random projections of Z.

    python benchmarks/large_n.py agreement --n 5000 -o benchmarks/results/large_n_agreement_5000.md
"""
from __future__ import annotations

import argparse
import datetime
import os
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
    load_before = os.getloadavg()
    lines = [f"# Operator product vs one symmetric Gram, N = {args.n}, d = {args.d}, 3-layer ReLU NTK",
             f"machine: {machine()}", "", "| what | best of 3 | ratio to the Gram |", "|---|---:|---:|"]

    def best(fn):
        # OpenBLAS's threads spin for ~0.1 s after a threaded call (a ?gemv or ?gemm floor): on
        # two cores they would halve the next measurement's, so each starts after a pause.
        time.sleep(0.5)
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
    # Stored: a product reads the upper triangle's bands once (N²/2 entries) and sums in float64.
    # One column is memory-bound: its floor is a multithreaded BLAS ?gemv over the same matrix
    # (N² entries), in this run. Many columns are compute-bound (2 FMAs per stored entry and
    # column, as many as a ?gemm over the full matrix): their floors are BLAS ?gemm and ?symm
    # (which reads one triangle) on the same matrix, in its dtype (float32 sums for float32).
    from scipy.linalg import blas

    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        stored = nf.KernelOperator(x, net=NET, storage="memory", dtype=dtype)
        k = stored._matrix
        ones = np.ones(args.n, dtype)
        t_gemv = best(lambda: k @ ones)
        floor = k.nbytes / t_gemv / 1e9
        lines.append(f"| BLAS ?gemv, the full {name} matrix (memory-bandwidth floor) "
                     f"| {t_gemv * 1e3:.2f} ms ({floor:.1f} GB/s) | {t_gemv / t_gram:.3f} |")
        v = rng.standard_normal((args.n, 1))
        t = best(lambda: stored @ v)
        rate = stored.nbytes / 2 / t / 1e9
        lines.append(f"| memory ({name}): K @ V, 1 column | {t * 1e3:.2f} ms ({rate:.1f} GB/s of "
                     f"stored entries, {rate / floor:.0%} of the floor) | {t / t_gram:.3f} |")
        cols = args.columns
        flops = 2 * args.n ** 2 * cols
        v = rng.standard_normal((args.n, cols))
        v_blas = np.asfortranarray(v, dtype=dtype)
        symm = blas.dsymm if dtype == np.float64 else blas.ssymm
        t_gemm = best(lambda: k @ v_blas)
        t_symm = best(lambda: symm(1.0, k.T, v_blas))  # k.T: k as a Fortran array, no copy
        for what, t_blas in (("?gemm", t_gemm), ("?symm", t_symm)):
            lines.append(f"| BLAS {what}, the full {name} matrix, {cols} columns (compute floor) | "
                         f"{t_blas * 1e3:.1f} ms ({flops / t_blas / 1e9:.0f} GFLOP/s) | "
                         f"{t_blas / t_gram:.3f} |")
        t = best(lambda: stored @ v)
        lines.append(f"| memory ({name}): K @ V, {cols} columns | {t * 1e3:.1f} ms "
                     f"({flops / t / 1e9:.0f} GFLOP/s; {t / t_gemm:.2f}x ?gemm, "
                     f"{t / t_symm:.2f}x ?symm) | {t / t_gram:.3f} |")
        del stored, k
    lines += ["", f"peak RSS: {peak_gb():.2f} GB",
              f"load average (1, 5, 15 min) before: {load_before}, after: {os.getloadavg()}"]
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


def scale(args):
    x, y, x_test = data(args.n, args.d)
    y, x_test = y[:, :args.targets], x_test[:args.n_test]
    inputs = (x.nbytes + y.nbytes + x_test.nbytes) / 1e9
    times = np.logspace(0, 5, args.times)
    out = open(args.output, "w") if args.output else None

    def emit(*new):
        for line in new:
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()

    emit(f"# Large-N kernel regression and dynamics, N = {args.n}, d = {args.d}, 3-layer ReLU NTK "
         f"(float32 kernel, sums in float64), {args.targets} target column(s), "
         f"{len(x_test)} test points, diag_reg = {args.diag_reg}, tol = {args.tol}",
         f"machine: {machine()}", "")
    cluster = None
    start = time.perf_counter()
    if args.dask_workers:
        import distributed
        import ntkfast.dask as nd

        cluster = distributed.LocalCluster(n_workers=args.dask_workers, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
        t_cluster = time.perf_counter() - start
        start = time.perf_counter()
        op = nd.KernelOperator(x, net=NET, client=client, dtype=np.float32, storage="file")
        t_gram = time.perf_counter() - start
        emit(f"operator: {op!r}", f"LocalCluster of {args.dask_workers} single-threaded worker "
             f"processes (start-up {t_cluster:.0f} s), each writing its share of the bands to a "
             "file in its local directory", "")
    else:
        op = nf.KernelOperator(x, net=NET, dtype=np.float32, storage="file", path=args.path,
                               progress=args.progress)
        t_gram = time.perf_counter() - start
        store = op._store
        emit(f"operator: {op!r}", f"file: {store.nbytes / 1e9:.1f} GB in {len(store.bounds)} "
             f"bands, of which the first {store.cache_bytes / 1e9:.1f} GB are left to the page "
             "cache", "")
    emit(
         "| step | time | × one Gram | iterations | relative residual |",
         "|---|---:|---:|---:|---:|",
         f"| one symmetric Gram computation (the operator's set-up: all bands computed and "
         f"written) | {t_gram:.0f} s | 1.00 | | |")
    cross = nf.KernelOperator(x_test, x, net=NET, dtype=np.float32, storage="recompute")
    v = np.ones(args.n)
    for label in ("first", "second"):
        start = time.perf_counter()
        op @ v
        elapsed = time.perf_counter() - start
        emit(f"| one product K @ v ({label}) | {elapsed:.1f} s | {elapsed / t_gram:.3f} | | |")
    start = time.perf_counter()
    cross @ np.ones((args.n, args.targets))
    elapsed = time.perf_counter() - start
    emit(f"| one test product K(test, train) @ V, recomputed | {elapsed:.1f} s | "
         f"{elapsed / t_gram:.3f} | | |")
    results = {}
    for rank in args.ranks:
        fn = nf.predict.gradient_descent_mse(op, y, diag_reg=args.diag_reg, tol=args.tol,
                                             preconditioner_rank=rank, maxiter=args.maxiter,
                                             progress=args.progress)
        start = time.perf_counter()
        try:
            results[rank] = fn(t=None, fx_train_0=0.0, fx_test_0=0.0, k_test_train=cross)[1]
            info, note = fn.info, ""
        except nf.ConvergenceError as error:
            info, note = error.info, f" (not converged within {args.maxiter})"
        elapsed = time.perf_counter() - start
        emit(f"| PCG, t = ∞, preconditioner rank {rank}{note} (incl. its set-up) | {elapsed:.0f} s "
             f"| {elapsed / t_gram:.2f} | {info.iterations} | {float(np.max(info.residuals)):.1e} |")
        if rank == args.ranks[0] and args.times:
            start = time.perf_counter()
            dyn = fn(t=times, fx_train_0=0.0, fx_test_0=0.0, k_test_train=cross)
            elapsed = time.perf_counter() - start
            info = fn.info
            emit(f"| Lanczos dynamics, {args.times} times in [1, 1e5], train and test means | "
                 f"{elapsed:.0f} s | {elapsed / t_gram:.2f} | {int(np.max(info.steps))} steps | "
                 f"{'converged' if info.converged else 'NOT converged'} (tol {info.tol:.0e}) |")
            results["dynamics"] = dyn[1]
    if args.save:
        np.savez(args.save, **{str(key): value for key, value in results.items()})
    if len(results) > 1:
        ranks = [r for r in args.ranks if r in results]
        emit("", *[f"test means, t = ∞, rank {a} vs rank {b}: max relative difference "
                   f"{rel(results[a], results[b]):.1e}" for a, b in zip(ranks, ranks[1:])])
    if args.compare:
        other, mine = np.load(args.compare), {str(k): v for k, v in results.items()}
        emit("")
        for key in other.files:
            if key in mine:
                what = "dynamics, all times" if key == "dynamics" else f"t = ∞, rank {key}"
                emit(f"test means ({what}) vs {args.compare}: max relative difference "
                     f"{rel(mine[key], other[key]):.1e}")
    emit("", f"peak RSS: {peak_gb():.2f} GB, {peak_gb() - inputs:.2f} GB beyond the inputs "
         f"({inputs:.2f} GB)")
    if cluster is not None:
        workers = op.client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
        emit(f"peak RSS of the workers: {', '.join(f'{v:.2f}' for v in workers.values())} GB "
             "(each holds a copy of the points)")
        op.close()
        op.client.close()
        cluster.close()
    else:
        op.close()
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("agreement", "speed", "product", "operator", "scale"))
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--times", type=int, default=20)
    parser.add_argument("--diag-reg", type=float, default=1e-4)
    parser.add_argument("--tol", type=float, default=1e-10)
    parser.add_argument("--storage", default="auto")
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 1000])
    parser.add_argument("--maxiter", type=int, default=2000)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--path", help="scale: the kernel's file (default: a temporary file)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--save", help="scale: .npz of the test means (for dask_bench.py scale)")
    parser.add_argument("--dask-workers", type=int, default=0,
                        help="scale: run the operator on a LocalCluster of this many "
                             "single-threaded worker processes (ntkfast.dask, storage='file')")
    parser.add_argument("--compare", help="scale: .npz of another run's test means to compare")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    if args.mode == "scale":
        scale(args)
        return
    lines = {"agreement": agreement, "speed": speed, "product": product,
             "operator": operator}[args.mode](args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
