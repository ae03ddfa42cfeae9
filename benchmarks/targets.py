"""The core engine's performance targets (issue 2), measured in one process on this machine.

    python benchmarks/targets.py [--repeat 5] [-o benchmarks/results/targets.md]

1. N = 8000, d = 784, symmetric, NNGP + NTK, MLP(depth, relu, W_std=1.5, b_std=0.05), depths
   3 and 10, float64 and float32: time(ntkfast.gram) / time(NumPy x @ x.T), the two timed
   alternately in this process (best of --repeat each, and the median of the per-repeat ratios).
   Targets: <= 1.3 (depth 3) and <= 1.6 (depth 10).
2. N = 3000: ntkfast.gram against the plain float64 NumPy reference of the test suite
   (tests/numpy_reference.py, the first oracle; full matrices per layer). Target: >= 10x.
3. Which input Gram wins: ntkfast's GEMM per tile (then all layers in cache, one write) or
   NumPy's x @ x.T followed by the layer maps. The latter costs at least time(x @ x.T) +
   time(the maps and the output writes alone), the second term measured as ntkfast.gram on
   d = 8 features (its GEMM then negligible); a real in-place pass would also re-read the
   N x N Gram from memory.
4. Peak memory over the two N x N outputs: measured per run in a fresh process by
   benchmarks/compare.py (the 'peak / outputs' column of results/compare.md). Target: <= 1.15.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time

import numpy as np

import ntkfast

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import numpy_reference  # noqa: E402  (the test suite's oracle)
from compare import machine_info  # noqa: E402

TARGETS = {3: 1.3, 10: 1.6}


def _seconds(fn):
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--n-reference", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("-o", "--output", type=pathlib.Path)
    args = parser.parse_args(argv)
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    say("# ntkfast.gram against its targets")
    say("")
    say(f"{datetime.datetime.now().isoformat(timespec='seconds')}; load average at start "
        f"{os.getloadavg()[0]:.2f} (2 cores); "
        + "; ".join(f"{k}: {v}" for k, v in machine_info().items() if v))
    say("")
    say(f"## 1. time(gram) / time(x @ x.T), N = {args.n}, d = {args.d}, symmetric, NNGP + NTK, "
        f"best of {args.repeat}")
    say("")
    say("| dtype | depth | x @ x.T | gram | ratio of bests | median ratio | target |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    x64 = np.random.default_rng(0).standard_normal((args.n, args.d))
    for dtype in ("float64", "float32"):
        x = x64.astype(dtype)
        for depth, target in TARGETS.items():
            net = ntkfast.MLP(depth, "relu", W_std=1.5, b_std=0.05)
            ntkfast.gram(x[:500], net=net)  # warm up: threads, BLAS, page cache
            gemm, gram = [], []
            for _ in range(args.repeat):  # alternate, so drifts hit both alike
                gemm.append(_seconds(lambda: x @ x.T))
                gram.append(_seconds(lambda: ntkfast.gram(x, net=net)))
            ratios = [g / m for g, m in zip(gram, gemm)]
            best = min(gram) / min(gemm)
            say(f"| {dtype} | {depth} | {min(gemm):.3f} s | {min(gram):.3f} s | {best:.2f} | "
                f"{statistics.median(ratios):.2f} | <= {target} "
                f"{'met' if best <= target else 'NOT met'} |")
    say("")
    n = args.n_reference
    say(f"## 2. against the test suite's NumPy reference (float64 full matrices), N = {n}, "
        f"d = {args.d}")
    say("")
    say("| depth | NumPy reference | ntkfast.gram | speed-up | target |")
    say("|---:|---:|---:|---:|---:|")
    x = x64[:n]
    for depth in TARGETS:
        net = ntkfast.MLP(depth, "relu", W_std=1.5, b_std=0.05)
        reference = min(_seconds(lambda: numpy_reference.kernels(net, x)) for _ in range(2))
        ours = min(_seconds(lambda: ntkfast.gram(x, net=net)) for _ in range(args.repeat))
        say(f"| {depth} | {reference:.3f} s | {ours:.3f} s | {reference / ours:.1f}x | >= 10x "
            f"{'met' if reference / ours >= 10 else 'NOT met'} |")
    say("")
    say(f"## 3. GEMM per tile vs NumPy's x @ x.T followed by the maps, N = {args.n}, "
        f"d = {args.d}, best of {args.repeat}")
    say("")
    say("| dtype | depth | gram (GEMM per tile) | x @ x.T | maps + writes alone (gram, d = 8) | "
        "x @ x.T + maps: lower bound | per tile faster by |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    narrow64 = np.random.default_rng(1).standard_normal((args.n, 8))
    for dtype in ("float64", "float32"):
        x, narrow = x64.astype(dtype), narrow64.astype(dtype)
        for depth in TARGETS:
            net = ntkfast.MLP(depth, "relu", W_std=1.5, b_std=0.05)
            tiled = min(_seconds(lambda: ntkfast.gram(x, net=net)) for _ in range(args.repeat))
            gemm = min(_seconds(lambda: x @ x.T) for _ in range(args.repeat))
            maps = min(_seconds(lambda: ntkfast.gram(narrow, net=net))
                       for _ in range(args.repeat))
            say(f"| {dtype} | {depth} | {tiled:.3f} s | {gemm:.3f} s | {maps:.3f} s | "
                f"{gemm + maps:.3f} s | {(gemm + maps) / tiled:.2f}x |")
    say("")
    say(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
