"""One large Gram matrix in RAM and into a memmap, against the N²-scaled NumPy x @ x.T.

    python benchmarks/large_gram.py [--n 40000] [-o benchmarks/results/large_gram_40000.md]
    python benchmarks/large_gram.py --baseline-python /tmp/headvenv/bin/python   # before/after

The float32 NTK (get="ntk") of MLP(3, relu, W_std=1.5, b_std=0.05) on N x 784 standard-normal
points, symmetric, both threads, best of --repeat, each run into a fresh output:
  RAM        np.empty((N, N)), the default when no out= is given (untouched anonymous memory)
  memmap     np.memmap(w+) on a new file in --memmap-dir (the call only; the flush that follows,
             i.e. the rest of the write-back to disk, is timed separately); ntkfast writes a
             file-backed output a row panel at a time (engine.hpp GramOptions::panel_writes)
and, to see where the time goes:
  RAM, pre-faulted   the same output a second time (its pages already mapped): no page faults
  maps + writes      the same Gram of N x 8 points (the input GEMM then negligible), pre-faulted
  x @ x.T            NumPy (OpenBLAS SYRK) at --ref-n points, scaled by (N / ref_n)²: NumPy's
                     own x @ x.T crashes at N = 40000 (OpenBLAS ?syrk, docs/large.md)
  ..., fill alone    no Gram at all: the same fresh output (RAM, or a memmap whose blocks are
                     reserved with posix_fallocate as ntkfast does) filled by NumPy on two
                     threads, the cost of producing that much fresh memory or page cache on this
                     machine, which no order of the engine's writes avoids
Each run records wall time, CPU time in user and kernel mode and minor page faults (getrusage):
kernel time is page faults, zeroing of fresh pages and, for the memmap, page-cache work and
write-back throttling.

With --baseline-python the same measurements run with another interpreter (e.g. today's main)
in the same session, one after the other (never at once: each needs the N x N output in RAM).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = pathlib.Path(__file__).resolve().parent


def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _timed(fn):
    u0, s0, f0 = _usage()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    u1, s1, f1 = _usage()
    return {"wall": wall, "user": u1 - u0, "sys": s1 - s0, "faults": f1 - f0,
            "load": os.getloadavg()[0]}


def worker(args):
    import numpy as np

    import ntkfast as nf

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, 784), dtype=np.float32)
    narrow = rng.standard_normal((args.n, 8), dtype=np.float32)
    net = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
    nf.gram(x[:500], net=net, get="ntk")  # threads, BLAS, page cache of the library
    out = {"kernels": nf.get_config()["cpu"]["kernels"], "runs": {}}

    def record(name, run):
        out["runs"].setdefault(name, []).append(run)
        print(name, json.dumps(run), file=sys.stderr, flush=True)

    ref = x[:args.ref_n]
    for _ in range(args.repeat):
        run = _timed(lambda: ref @ ref.T)
        run["scaled"] = run["wall"] * (args.n / args.ref_n) ** 2
        record("x @ x.T", run)
    def gram_into(points, k):
        return lambda: nf.gram(points, net=net, get="ntk", out=k)

    for _ in range(args.repeat):
        k = np.empty((args.n, args.n), dtype=np.float32)
        record("RAM", _timed(gram_into(x, k)))
        record("RAM, pre-faulted", _timed(gram_into(x, k)))
        record("maps + writes (d = 8), pre-faulted", _timed(gram_into(narrow, k)))
        k = None  # the next output is a fresh allocation, not this one

    def on_fresh_memmap(name, work, reserve=False):
        """Records work(k) on a fresh np.memmap output k, and the flush after it; reserve: its
        blocks allocated first, untimed (ntkfast does it inside the call)."""
        path = pathlib.Path(tempfile.mkdtemp(dir=args.memmap_dir)) / "ntk.f32"
        try:
            k = np.memmap(path, dtype=np.float32, mode="w+", shape=(args.n, args.n))
            if reserve:
                with open(path, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, k.nbytes)
            run = _timed(lambda: work(k))
            run["flush"] = _timed(k.flush)["wall"]
            record(name, run)
            k = None  # unmaps the file before it is deleted
        finally:
            path.unlink(missing_ok=True)
            path.parent.rmdir()

    for _ in range(args.repeat):
        on_fresh_memmap("memmap", lambda k: gram_into(x, k)())

    def fill(k):  # two threads, as the engine has (NumPy releases the GIL for the assignment)
        halves = (slice(0, args.n // 2), slice(args.n // 2, None))
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda rows: k.__setitem__(rows, 1.0), halves))

    for _ in range(args.repeat):
        record("RAM, fill alone", _timed(lambda: fill(np.empty((args.n, args.n), np.float32))))
        on_fresh_memmap("memmap, fill alone", fill, reserve=True)
    print(json.dumps(out))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=40000)
    parser.add_argument("--ref-n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memmap-dir", default=tempfile.gettempdir())
    parser.add_argument("--baseline-python")
    parser.add_argument("--baseline-label", default="baseline")
    parser.add_argument("-o", "--output", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(HERE))
    from compare import machine_info  # noqa: E402

    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    say(f"# Large Gram: N = {args.n}, d = 784, float32 NTK, MLP(3, relu), symmetric")
    say("")
    say("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine_info().items() if v))
    say(f"Load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    say("")
    builds = [("this build", sys.executable)]
    if args.baseline_python:
        builds.append((args.baseline_label, args.baseline_python))
    worker_args = ["--worker", "--n", str(args.n), "--ref-n", str(args.ref_n),
                   "--repeat", str(args.repeat), "--memmap-dir", args.memmap_dir]
    for label, python in builds:
        with tempfile.TemporaryDirectory() as cwd:
            result = subprocess.run([python, str(pathlib.Path(__file__).resolve()), *worker_args],
                                    cwd=cwd, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{label}: {result.stderr[-3000:]}")
        data = json.loads(result.stdout.strip().splitlines()[-1])
        runs = data["runs"]
        ref = min(r["scaled"] for r in runs["x @ x.T"])
        say(f"## {label} (kernels: {data['kernels']})")
        say("")
        say(f"x @ x.T at N = {args.ref_n}: best {min(r['wall'] for r in runs['x @ x.T']):.2f} s, "
            f"scaled to N = {args.n}: **{ref:.2f} s**")
        say("")
        say("| output | best wall | / scaled x @ x.T | all runs (wall) | user CPU | kernel CPU | "
            "minor faults | flush after | load |")
        say("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for name in ("RAM", "memmap", "RAM, pre-faulted", "maps + writes (d = 8), pre-faulted",
                     "RAM, fill alone", "memmap, fill alone"):
            rs = runs[name]
            best = min(rs, key=lambda r: r["wall"])
            flush = f"{best['flush']:.1f} s" if "flush" in best else ""
            walls = ", ".join(f"{r['wall']:.2f}" for r in rs)
            say(f"| {name} | {best['wall']:.2f} s | {best['wall'] / ref:.2f} | {walls} | "
                f"{best['user']:.1f} s | "
                f"{best['sys']:.1f} s | {best['faults']} | {flush} | {best['load']:.1f} |")
        say("")
    say(f"Load average at end: {os.getloadavg()[0]:.2f}")
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
