"""eigh of an N x N NTK at N >= 32768 on the CPU, the path ntkfast.predict takes there.

    nohup python benchmarks/eigh_large.py --n 32768 -o benchmarks/results/eigh_large.txt &

Run by hand, once, not in CI: at N = 32768 it holds two N x N float64 arrays (the kernel,
overwritten by LAPACK, and the eigenvectors: 17.2 GB) and takes hours on a few cores.

Why: LP64 LAPACK (SciPy's wheels, JAX's CPU backend, NumPy < 2) sizes ?syevd's workspace,
lwork = 1 + 6N + 2N², in a 32-bit integer; from N = 32767 on it wraps, the workspace query
returns a far too small size and ?syevd writes past its workspace. ntkfast uses ?syevr (MRRR,
O(N) workspace) there (``ntkfast._predict_linalg.cpu_eigh_driver``). This script records:
  1. what the LP64 ?syevd workspace query returns at this N (the overflow) -- a query only;
  2. what NumPy does at this N, in a subprocess under an address-space limit (so a failed
     allocation is an exception, not the kernel's OOM killer);
  3. ntkfast's eigh (SciPy driver chosen by ntkfast) of the NTK: time, and
     max |V Λ Vᵀ − K| / max |K| on sampled rows (recomputed with ntkfast.gram, since LAPACK
     overwrote K), and the orthogonality of sampled eigenvector columns.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import resource
import subprocess
import sys
import textwrap
import time

import numpy as np
import scipy
import scipy.linalg
from scipy.linalg import lapack

import ntkfast
from ntkfast import _predict_linalg

NET = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)


def _lscpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [platform.processor() or "unknown CPU"]
    keep = ("Architecture", "Model name", "CPU(s):", "Thread(s) per core", "Core(s) per socket",
            "L2 cache", "L3 cache", "Hypervisor vendor")
    return [line.strip() for line in out.splitlines() if line.strip().startswith(keep)]


def _meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def _syevd_query(n):
    """(what the LP64 ?syevd workspace query returns, what the formula needs) at n."""
    probe = np.zeros((1, 1))
    query = lapack.get_lapack_funcs("syevd_lwork", (probe,))
    work, iwork, info = query(n, compute_v=1, lower=1)
    return int(work), int(iwork), 1 + 6 * n + 2 * n * n, 3 + 5 * n, query.int_dtype


_NUMPY_PROBE = textwrap.dedent("""
    import resource, sys, time, numpy as np
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    n = int(sys.argv[1])
    a = np.zeros((n, n))
    a.flat[::n + 1] = np.arange(1.0, n + 1.0)   # a diagonal matrix: content is irrelevant here
    start = time.perf_counter()
    try:
        w, v = np.linalg.eigh(a)
        print(f"numpy.linalg.eigh returned after {time.perf_counter() - start:.1f} s")
    except BaseException as error:
        print(f"numpy.linalg.eigh raised {error!r} after {time.perf_counter() - start:.1f} s "
              "(the input itself was allocated)")
""")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--sample", type=int, default=256, help="rows checked after eigh")
    parser.add_argument("--skip-numpy", action="store_true")
    parser.add_argument("--probes-only", action="store_true",
                        help="only steps 1 and 2 (the LAPACK query and NumPy), no eigh")
    parser.add_argument("-o", "--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    n = args.n
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)
        if args.output:  # written as we go: a long run that dies still leaves its record
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text("\n".join(lines) + "\n")

    say(f"# eigh at N = {n}: {datetime.datetime.now().isoformat(timespec='seconds')}")
    for line in _lscpu():
        say(f"# {line}")
    say(f"# memory: {_meminfo('MemTotal') / 2**30:.1f} GiB total, "
        f"{_meminfo('MemAvailable') / 2**30:.1f} GiB available at start")
    say(f"# python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"ntkfast {ntkfast.__version__}; SciPy LAPACK ILP64: {lapack.HAS_ILP64}")
    np_blas = [lib for lib in __import__("threadpoolctl").threadpool_info()
               if "numpy" in lib.get("filepath", "")]
    say(f"# NumPy's BLAS/LAPACK: {[lib.get('filepath', '').split('/')[-1] for lib in np_blas]}")

    say("")
    say("## 1. LP64 ?syevd workspace query at this N (SciPy's LAPACK)")
    work, iwork, need, ineed, int_dtype = _syevd_query(n)
    say(f"integer type {int_dtype}; query returns lwork = {work:,}, liwork = {iwork:,}; the "
        f"routine needs lwork = 1 + 6N + 2N² = {need:,} (> 2^31 - 1 = {2**31 - 1:,}: "
        f"{need > 2**31 - 1}), liwork = {ineed:,}")
    if work < need:
        say("-> the query under-reports the workspace by "
            f"{need / max(work, 1):,.0f}x: ?syevd ('evd', NumPy < 2's and JAX's path) would write "
            "past its buffer. Not run.")
    driver = _predict_linalg.cpu_eigh_driver(n)
    say(f"ntkfast's driver at this N: scipy.linalg.eigh(driver={driver!r})")

    if not args.skip_numpy:
        say("")
        say("## 2. numpy.linalg.eigh at this N (subprocess, address space limited to the memory "
            "available now)")
        limit = int(_meminfo("MemAvailable") * 0.9)
        say(f"needs: input N² + internal copy N² + output N² + ?syevd workspace 2N² doubles = "
            f"{5 * n * n * 8 / 1e9:.1f} GB; limit {limit / 1e9:.1f} GB")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _NUMPY_PROBE, str(n), str(limit)],
                              capture_output=True, text=True)
        say(f"{proc.stdout.strip() or proc.stderr.strip()[-500:]} "
            f"(exit {proc.returncode}, {time.perf_counter() - start:.1f} s)")

    if args.probes_only:
        return 0
    say("")
    say(f"## 3. ntkfast: eigh of the NTK of {NET!r} at N = {n} (float64)")
    need_bytes = 2 * n * n * 8
    available = _meminfo("MemAvailable")
    if available is not None and available < need_bytes * 1.05:
        say(f"not enough memory: needs {need_bytes / 1e9:.1f} GB, {available / 1e9:.1f} GB "
            "available; stopping")
        return 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, args.features))
    start = time.perf_counter()
    kernel = ntkfast.gram(x, net=NET, get="ntk")
    say(f"kernel computed in {time.perf_counter() - start:.1f} s; "
        f"max |K| = {np.abs(kernel).max():.6g}")
    scale = float(np.abs(kernel).max())
    say(f"starting eigh at {datetime.datetime.now().isoformat(timespec='seconds')}, load average "
        f"{os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    # overwrite=True: LAPACK works in the kernel's own memory (two N x N arrays in total)
    eigenvalues, eigenvectors = _predict_linalg.CPU.eigh(kernel, 0.0, overwrite=True)
    elapsed = time.perf_counter() - start
    del kernel
    say(f"eigh ({driver}) took {elapsed:.1f} s = {elapsed / 3600:.2f} h; eigenvalues in "
        f"[{eigenvalues[0]:.6g}, {eigenvalues[-1]:.6g}], all finite: "
        f"{bool(np.isfinite(eigenvalues).all() and np.isfinite(eigenvectors[::97]).all())}")

    rows = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    exact_rows = ntkfast.gram(x[rows], x, net=NET, get="ntk")
    rebuilt = (eigenvectors[rows] * eigenvalues) @ eigenvectors.T
    err = np.abs(rebuilt - exact_rows).max() / scale
    cols = eigenvectors[:, rows]
    orth = np.abs(cols.T @ cols - np.eye(len(rows))).max()
    say(f"check on {len(rows)} sampled rows: max |V Λ Vᵀ - K| / max |K| = {err:.3e}; "
        f"sampled eigenvector columns: max |VᵀV - I| = {orth:.3e}")
    say(f"# finished {datetime.datetime.now().isoformat(timespec='seconds')}; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB; "
        f"load average (1, 5, 15 min) {os.getloadavg()}: a 2-core machine shared with other "
        "work, so the time is an upper bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
