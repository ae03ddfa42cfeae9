"""The cost of one layer map per Gram entry: ns per entry-layer per thread, against a floor.

    python benchmarks/layer_steps.py [-o benchmarks/results/layer_steps.md]
    python benchmarks/layer_steps.py --baseline-python /tmp/headvenv/bin/python   # before/after

For each CPU kernel variant this machine supports (NTKFAST_CPU_DISPATCH=avx512 / avx2, each in a
fresh process), each activation (ReLU, Erf, Gelu) and output dtype (float64, float32):
ntkfast.gram of N points with d = 8 features (the input Gram is then negligible) on one thread,
NNGP + NTK, for MLP(depth) at depth 2 and depth 12, alternately, best of --repeat each, timed
as the CPU time of the calling thread (the engine runs there with num_threads=1), which other
processes on a shared machine do not inflate the way they do wall time; the difference is ten
layers (Dense + activation) on N²/2 entries:

    ns per entry-layer per thread = (T(12) - T(2)) / (10 · N²/2)

The kernel alone is benchmarks/tile_kernel.cpp: the engine's tile kernel (cpu_kernels.cpp of this
source tree, and of --baseline-src if given) compiled here for each instruction set with the
library's flags, on one full 384 x 384 tile in L2: the same difference without the rest of the
engine (GEMM, tile copies, the wasted lanes of the diagonal tiles' ragged rows).

The floor is benchmarks/step_floor.cpp, compiled here for each instruction set with the
library's floating-point flags (g++; skipped without one): a standalone fused Dense + ReLU step
on a chunk in L1 (ρ from tabulated 1/√q, clip, θ = acos ρ, sin θ, both updates), with a
polynomial acos and with glibc's vector acos (libmvec), in float64 and float32 arithmetic. It is
cheaper than the engine's map, not an alternative to it: it loses the relative accuracy of 1 - ρ
that the engine keeps (see step_floor.cpp).

--baseline-python runs the same engine measurement with another interpreter (e.g. a venv with
today's main installed), in the same run, so that before and after share the machine's state.
The load average is recorded before and after: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ACTIVATIONS = ("relu", "erf", "gelu")
DTYPES = ("float64", "float32")
# The library's floating-point flags (CMakeLists.txt), per instruction set.
FLOOR_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
ISA_FLAGS = {"avx512": ["-mavx512f", "-mavx512dq", "-mavx2", "-mfma"], "avx2": ["-mavx2", "-mfma"]}

WORKER = r"""
import json, sys, time
import numpy as np
import ntkfast as nf
n, repeat = int(sys.argv[1]), int(sys.argv[2])
x64 = np.random.default_rng(0).standard_normal((n, 8))
out = {"kernels": nf.get_config()["cpu"]["kernels"]}
for act in %(activations)r:
    for dtype in %(dtypes)r:
        x = x64.astype(dtype)
        nets = {depth: nf.MLP(depth, act, W_std=1.5, b_std=0.05) for depth in (2, 12)}
        best = {depth: float("inf") for depth in nets}
        for depth, net in nets.items():
            nf.gram(x[:200], net=net, num_threads=1)
        for _ in range(repeat):
            for depth, net in nets.items():
                start = time.thread_time()
                nf.gram(x, net=net, num_threads=1)
                best[depth] = min(best[depth], time.thread_time() - start)
        out[act + " " + dtype] = (best[12] - best[2]) / (10 * n * n / 2) * 1e9
print(json.dumps(out))
""" % {"activations": ACTIVATIONS, "dtypes": DTYPES}


def engine(python: str, isa: str, n: int, repeat: int) -> dict:
    env = dict(os.environ, NTKFAST_CPU_DISPATCH=isa, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as cwd:  # away from the source tree's python/ntkfast
        result = subprocess.run([python, "-c", WORKER, str(n), str(repeat)], env=env, cwd=cwd,
                                capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{python} ({isa}) failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_lines(exe) -> dict:
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    values = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            values[f"{parts[0]} {parts[1]}"] = float(parts[2])
    return values


def kernel_alone(src: pathlib.Path, isa: str) -> dict:
    """benchmarks/tile_kernel.cpp against the cpu_kernels.cpp of the source tree `src`."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if not cxx or not (src / "src/cpp/ntkfast/cpu_kernels.cpp").exists():
        return {}
    includes = [f"-I{src / 'src/cpp'}", f"-I{src / 'src/common'}"]
    with tempfile.TemporaryDirectory() as tmp:
        obj, exe = pathlib.Path(tmp) / "k.o", pathlib.Path(tmp) / "tile_kernel"
        subprocess.run([cxx, *FLOOR_FLAGS, *ISA_FLAGS[isa], f"-DNTKFAST_ISA_NAMESPACE={isa}",
                        *includes, "-c", str(src / "src/cpp/ntkfast/cpu_kernels.cpp"), "-o",
                        str(obj)], check=True, capture_output=True)
        # series_fallback.cpp: the Series ops' quadrature, which cpu_kernels.cpp calls
        fallback = src / "src/cpp/ntkfast/series_fallback.cpp"
        subprocess.run([cxx, "-O2", "-std=c++17", *includes, str(HERE / "tile_kernel.cpp"),
                        str(obj), *([str(fallback)] if fallback.exists() else []), "-o", str(exe)],
                       check=True, capture_output=True)
        return _run_lines(exe)


def floor(isa: str) -> dict:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if not cxx:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        exe = pathlib.Path(tmp) / "step_floor"
        source = str(HERE / "step_floor.cpp")
        base = [cxx, *FLOOR_FLAGS, *ISA_FLAGS[isa], source, "-o", str(exe)]
        built = subprocess.run(base[:-2] + ["-DFLOOR_LIBMVEC"] + base[-2:] + ["-lmvec"],
                               capture_output=True, text=True)
        if built.returncode:  # no libmvec: the polynomial floor only
            built = subprocess.run(base, capture_output=True, text=True)
            if built.returncode:
                return {}
        return _run_lines(exe)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3072)  # whole 384-tiles: no ragged edge
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--isas", nargs="+", default=None,
                        help="kernel variants (default: avx512 and avx2 where supported)")
    parser.add_argument("--baseline-python", help="also measure the ntkfast this interpreter imports")
    parser.add_argument("--baseline-label", default="baseline")
    parser.add_argument("--baseline-src", type=pathlib.Path,
                        help="source tree of the baseline (e.g. a git worktree), for its kernel alone")
    parser.add_argument("-o", "--output", type=pathlib.Path)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from compare import machine_info  # noqa: E402
    import ntkfast

    supported = ntkfast.get_config()["cpu"]["supported_kernels"]
    isas = args.isas or [isa for isa in ("avx512", "avx2") if isa in supported]
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    load_start = os.getloadavg()
    say("# Layer maps: ns per entry-layer per thread")
    say("")
    say("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine_info().items() if v))
    say(f"Load average at start: {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} "
        f"(1/5/15 min; {os.cpu_count()} CPUs)")
    say("")
    say(f"ntkfast.gram on N = {args.n} points, d = 8, one thread, NNGP + NTK, "
        f"MLP(depth, act, W_std=1.5, b_std=0.05): (T(12) - T(2)) / (10 · N²/2), T the thread's "
        f"CPU time, best of {args.repeat} per depth. A layer is Dense + the activation. Floor: "
        "benchmarks/step_floor.cpp (fused Dense + ReLU step in L1; see its header).")
    say("")
    results = {}
    for isa in isas:
        results[("this build", isa)] = engine(sys.executable, isa, args.n, args.repeat)
        if args.baseline_python:
            results[(args.baseline_label, isa)] = engine(args.baseline_python, isa, args.n,
                                                         args.repeat)
        results[("kernel alone", isa)] = kernel_alone(HERE.parent, isa)
        if args.baseline_src:
            results[(f"{args.baseline_label}, kernel alone", isa)] = kernel_alone(
                args.baseline_src, isa)
        results[("floor", isa)] = floor(isa)
    builds = ["this build"] + ([args.baseline_label] if args.baseline_python else [])
    builds += [b for b in ("kernel alone", f"{args.baseline_label}, kernel alone")
               if results.get((b, isas[0]))]
    header = "| step | output | " + " | ".join(
        f"{b} ({isa})" for isa in isas for b in builds) + " |"
    say(header)
    say("|---|---|" + "---:|" * (len(isas) * len(builds)))
    for act in ACTIVATIONS:
        for dtype in DTYPES:
            cells = [f"{results[(b, isa)].get(f'{act} {dtype}', float('nan')):.2f}"
                     for isa in isas for b in builds]
            say(f"| {act} | {dtype} | " + " | ".join(cells) + " |")
    say("")
    say("| floor (fused Dense + ReLU, step_floor.cpp) | " + " | ".join(isas) + " |")
    say("|---|" + "---:|" * len(isas))
    keys = sorted({k for isa in isas for k in results[("floor", isa)]})
    for key in keys:
        cells = [f"{results[('floor', isa)].get(key, float('nan')):.2f}" for isa in isas]
        say(f"| {key} arithmetic | " + " | ".join(cells) + " |")
    load_end = os.getloadavg()
    say("")
    say(f"Load average at end: {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}")
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
