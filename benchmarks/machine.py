"""The ceilings of this machine that bound ntkfast.gram: GEMM rate and memory bandwidth.

    python benchmarks/machine.py [-o benchmarks/results/machine.txt]

Measures, with NumPy (its BLAS, all threads) and SciPy's BLAS single-threaded (what each of
ntkfast's OpenMP threads calls per tile): DGEMM/SGEMM GF/s on large square products and on
256 x 784 tiles; NumPy's x @ x.T (a SYRK, N²·d flops) at N = 8000, d = 784; and the memory
bandwidth of writing, copying and reading a 1 GiB array.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys
import time

import numpy as np


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output")
    args = parser.parse_args(argv)
    lines = [f"# machine ceilings, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"]
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        keep = ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache", "CPU max MHz")
        lines += [f"# {line.strip()}" for line in out.splitlines() if line.split(":")[0].strip() in keep]
        flags = [l for l in out.splitlines() if l.startswith("Flags")]
        if flags:
            lines.append("# SIMD: " + " ".join(f for f in flags[0].split() if f.startswith(("avx", "fma"))))
    except OSError:
        pass
    lines.append(f"# numpy {np.__version__}; load average {os.getloadavg()[0]:.2f} (2 cores: > ~1 means "
                 "other work competed)")
    rng = np.random.default_rng(0)
    rows = []
    for dtype in (np.float64, np.float32):
        a = rng.standard_normal((4096, 4096)).astype(dtype)
        t = best(lambda: a @ a)
        rows.append((f"NumPy GEMM 4096³ {np.dtype(dtype).name} (all threads)", t, 2 * 4096 ** 3 / t / 1e9, "GF/s"))
        x = rng.standard_normal((8000, 784)).astype(dtype)
        t = best(lambda: x @ x.T)
        rows.append((f"NumPy x @ x.T, N = 8000, d = 784, {np.dtype(dtype).name}", t,
                     8000 ** 2 * 784 / t / 1e9, "GF/s (SYRK flops N²d)"))
        from scipy.linalg import blas
        from threadpoolctl import threadpool_limits

        name = "dgemm" if dtype == np.float64 else "sgemm"
        gemm = getattr(blas, name)
        xa = np.asfortranarray(x[:256])
        xb = np.asfortranarray(x[256:512])
        with threadpool_limits(1, user_api="blas"):
            t = best(lambda: [gemm(1.0, xa, xb, trans_b=True) for _ in range(20)]) / 20
        rows.append((f"SciPy {name} 256 x 256 x 784 tile, 1 thread", t, 2 * 256 * 256 * 784 / t / 1e9,
                     "GF/s per thread"))
    big = np.empty(1 << 27)  # 1 GiB
    t = best(lambda: big.fill(1.0))
    rows.append(("write 1 GiB (fill)", t, big.nbytes / t / 1e9, "GB/s"))
    other = np.empty_like(big)
    t = best(lambda: np.copyto(other, big))
    rows.append(("copy 1 GiB", t, 2 * big.nbytes / t / 1e9, "GB/s (read + write)"))
    t = best(lambda: big.sum())
    rows.append(("read 1 GiB (sum)", t, big.nbytes / t / 1e9, "GB/s"))
    lines += ["", "| measurement | seconds | rate |", "|---|---:|---:|"]
    lines += [f"| {name} | {t:.4f} | {rate:.1f} {unit} |" for name, t, rate, unit in rows]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        pathlib.Path(args.output).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
