"""One kernel-operator product on a Dask cluster vs in-process vs one symmetric Gram.

    python benchmarks/dask_bench.py [--n 20000] [--k 1] [-o benchmarks/results/dask_bench.md]

Times, for a depth-3 ReLU NTK on N standard-normal points in d = 784 dimensions:
  * ``ntkfast.gram(x, get="ntk")``: the symmetric Gram matrix (the floor of one product's work);
  * ``ntkfast.KernelOperator(x, storage="recompute") @ V`` in this process (all cores);
  * ``ntkfast.dask.KernelOperator(x) @ V`` on a ``distributed.LocalCluster`` of 2 worker processes
    with 1 thread each (the points scattered once, at construction, timed separately).
Both operators compute the block pairs J ≥ I once each (the same blocks where
the block sizes agree, as at N = 20000), so the ratio of the two product times is the
overhead of distributing them (scheduling, moving V and the partial products, summing on the
client). Prints a markdown table; ``-o`` also writes it to a file.
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

import ntkfast


def machine():
    """(CPU model, SIMD flags, logical CPUs) from lscpu."""
    model, simd = platform.processor() or "unknown", []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "Flags":
            flags = value.split()
            simd = [f for f in ("avx2", "fma", "avx512f", "avx512dq", "avx512vl") if f in flags]
    return model, simd, os.cpu_count()


def timed(fn, repeats=1):
    """(best time, all times, last result) over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), times, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="points (default 20000)")
    parser.add_argument("--d", type=int, default=784, help="features (default 784)")
    parser.add_argument("--k", type=int, default=1, help="columns of V (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="calls of each; the table shows the best (default 2: the first dask "
                             "product also pays the workers' imports of ntkfast)")
    parser.add_argument("-o", "--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)

    import dask
    import distributed

    import ntkfast.dask

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d))
    v = rng.standard_normal((args.n, args.k))
    net = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)

    load_before = os.getloadavg()[0]
    t_gram, _, _ = timed(lambda: ntkfast.gram(x, net=net, get="ntk"), args.repeats)
    ref = ntkfast.KernelOperator(x, net=net, storage="recompute")
    t_local, _, y_local = timed(lambda: ref @ v, args.repeats)
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        t_setup, _, op = timed(lambda: ntkfast.dask.KernelOperator(x, net=net, client=client))
        t_dask, dask_times, y_dask = timed(lambda: op @ v, args.repeats)
        blocks, pairs = op.block_size, len(op._pairs(op.block_size))
        op.close()
        del op
    err = float(np.abs(y_dask - y_local).max() / np.abs(y_local).max())

    model, simd, cpus = machine()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [
        f"# ntkfast.dask operator product, N = {args.n}, d = {args.d}, depth-3 ReLU NTK, "
        f"V: {args.n} x {args.k}",
        "",
        f"- date: {now}",
        f"- machine: {model}, {cpus} logical CPUs, SIMD: {' '.join(simd) or 'none found'}; "
        f"load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f} "
        f"(above ~0 means other work shared the CPUs)",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, dask {dask.__version__}, "
        f"distributed {distributed.__version__}, ntkfast {ntkfast.__version__}",
        f"- dask operator: blocks of {blocks} rows, {pairs} block pairs (J ≥ I) per product, "
        f"LocalCluster of {args.workers} worker processes x 1 thread; in-process operator: "
        f"blocks of {ref.block_size} rows, all {cpus} CPUs",
        f"- best of {args.repeats} calls each; dask products: "
        f"{', '.join(f'{t:.2f}' for t in dask_times)} s",
        f"- dask vs in-process product: max relative difference {err:.1e}",
        "",
        "| what | time (s) | vs in-process product |",
        "|---|---:|---:|",
        f"| `ntkfast.gram(x, get='ntk')` (symmetric, one call) | {t_gram:.2f} | "
        f"{t_gram / t_local:.2f} |",
        f"| `ntkfast.KernelOperator(storage='recompute') @ V` | {t_local:.2f} | 1.00 |",
        f"| `ntkfast.dask.KernelOperator @ V` | {t_dask:.2f} | {t_dask / t_local:.2f} |",
        f"| `ntkfast.dask.KernelOperator(...)` construction (scatter x) | {t_setup:.2f} | "
        f"{t_setup / t_local:.2f} |",
        "",
        f"Overhead ratio (dask product / in-process product): **{t_dask / t_local:.2f}**; "
        f"dask product / one symmetric Gram: {t_dask / t_gram:.2f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
