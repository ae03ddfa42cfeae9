"""Activations without a closed form (Hermite series): accuracy against 30-digit references and
speed against the ReLU Gram, with neural-tangents' ElementwiseNumerical on the same cases.

    python benchmarks/activations.py accuracy [--nt-python ~/nt-venv/bin/python] -o results/activations_accuracy.md
    python benchmarks/activations.py speed [--nt-python ...] -o results/activations_speed.md

accuracy: every case of tests/data/series_reference.json (tools/series_reference.py, mpmath at 30
digits): the relative error of E[φφ] and E[φ'φ'] (to the layer's largest value), for ntkfast and
for neural-tangents' ElementwiseNumerical(fn, deg=25) and deg=100 (its Gauss-Hermite quadrature),
plus whether ntkfast warned (a warned case states a bound that must cover the error).
speed: gram(x, net=MLP(depth, act, W_std=1.5, b_std=0.05)), NNGP + NTK, symmetric, N = 8000,
d = 784, depth 3 and 10, float64 and float32, best of --repeat, as a ratio to ReLU in the same
process; neural-tangents at a smaller N (its quadrature holds N² deg² values), for a ratio.
dual: the cost of dual kernels given as Python functions (DualKernel, called once per tile):
erf's arc-sine kernel in NumPy against the built-in Erf, same network and sizes, float64.

    python benchmarks/activations.py dual -o results/dual_kernels_speed.md
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REFERENCE = HERE.parent / "tests" / "data" / "series_reference.json"

NT_FUNCTIONS = {  # jax.numpy expressions of φ for neural-tangents (its derivative by autodiff)
    "tanh": "jnp.tanh(x)", "softplus": "jax.nn.softplus(x)", "silu": "x * jax.nn.sigmoid(x)",
    "elu": "jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0.0)))", "sigmoid": "jax.nn.sigmoid(x)",
    "mish": "x * jnp.tanh(jax.nn.softplus(x))",
    "selu": "1.0507009873554805 * jnp.where(x > 0, x, 1.6732632423543772 * jnp.expm1(jnp.minimum(x, 0.0)))",
    "gelu_numerical": "x * jax.scipy.stats.norm.cdf(x)",
}


def _layers():
    import ntkfast as nf
    from scipy import special

    return {"tanh": nf.Tanh(), "softplus": nf.Softplus(), "silu": nf.Silu(), "elu": nf.Elu(),
            "mish": nf.Mish(), "sigmoid": nf.Sigmoid(), "selu": nf.Selu(),
            "gelu_numerical": nf.ElementwiseNumerical(
                lambda x: x * special.ndtr(x),
                df=lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))}


def _points(q1, q2, rho):
    """Two 2-D points whose Gram / 2 is [[q1, c], [c, q2]] (as tests/oracles.py ntkfast_dual)."""
    x1 = np.array([[math.sqrt(2 * q1), 0.0]])
    x2 = np.array([[math.sqrt(2 * q2) * rho, math.sqrt(2 * q2 * max(1 - rho * rho, 0.0))]])
    return x1, x2


@contextlib.contextmanager
def _fallback_counter():
    """Collects the engine's counts of entries computed by the 2-D quadrature fallback."""
    from ntkfast import _series

    counts = []
    original = _series.SeriesInputs.warn_if_slow

    def count(self, pairs, entries):
        counts.append(pairs)
        return original(self, pairs, entries)

    _series.SeriesInputs.warn_if_slow = count
    try:
        yield counts
    finally:
        _series.SeriesInputs.warn_if_slow = original


def _ntkfast_case(layer, q1, q2, omr):
    """(E[φφ], E[φ'φ'], warned, whether the engine's 2-D quadrature fallback computed it)."""
    import ntkfast as nf

    rho = 1.0 - omr
    x1, x2 = _points(q1, q2, rho)
    with _fallback_counter() as counts, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = nf.gram(x1, x2, net=nf.serial(nf.Dense(W_std=1.0), layer))
    c = float(x1[0] @ x2[0]) / 2
    return float(k.nngp[0, 0]), float(k.ntk[0, 0]) / c, bool(caught), sum(counts) > 0


NT_SCRIPT = r"""
import json, math, sys, time
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from neural_tangents import stax
spec = json.loads(sys.argv[1])
fn = eval("lambda x: " + spec["fn"])
out = []
if spec["mode"] == "accuracy":
    for q1, q2, omr, deg in spec["cases"]:
        rho = 1.0 - omr
        x1 = np.array([[math.sqrt(2 * q1), 0.0]])
        x2 = np.array([[math.sqrt(2 * q2) * rho, math.sqrt(2 * q2 * max(1 - rho * rho, 0.0))]])
        _, _, kernel_fn = stax.serial(stax.Dense(1, W_std=1.0, b_std=None),
                                      stax.ElementwiseNumerical(fn, deg=deg))
        k = kernel_fn(x1, x2, ("nngp", "ntk"))
        c = float(x1[0] @ x2[0]) / 2
        out.append([float(k.nngp[0, 0]), float(k.ntk[0, 0]) / c])
else:
    n, d, depth, deg = spec["n"], spec["d"], spec["depth"], spec["deg"]
    x = np.random.default_rng(0).standard_normal((n, d))
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=1.5, b_std=0.05), stax.ElementwiseNumerical(fn, deg=deg)]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=1.5, b_std=0.05))
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    best = float("inf")
    for _ in range(spec["repeat"]):
        start = time.perf_counter()
        k = kernel_fn(x, None, get=("nngp", "ntk"))
        k.ntk.block_until_ready()
        best = min(best, time.perf_counter() - start)
    out = {"seconds": best}
print(json.dumps(out))
"""


def _nt(python, spec, timeout=3600):
    proc = subprocess.run([python, "-c", NT_SCRIPT, json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine():
    """CPU model, threads, ISA and the engine's kernels (AVX-512 or AVX2 hosts differ)."""
    import ntkfast as nf

    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), "unknown CPU")
    flags = pathlib.Path("/proc/cpuinfo").read_text()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "baseline"
    cfg = nf.get_config()["cpu"]
    return (f"{model}, {cfg['threads']} threads, {isa} (engine kernels: {cfg['kernels']}); "
            f"ntkfast {nf.__version__}")


def accuracy(args):
    data = json.loads(REFERENCE.read_text())
    layers = _layers()
    lines = ["# Hermite-series activations against 30-digit references (mpmath, "
             "tools/series_reference.py)", "",
             f"machine: {_machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "Relative error of E[φ(u)φ(v)] and E[φ'(u)φ'(v)] (to the larger of the two rows' "
             "own values), one layer, u, v with variances q1, q2 and correlation ρ. ntkfast: "
             "float64, default deg ('path': the Hermite series, or the engine's 2-D quadrature "
             "where the series cannot converge; 'warned': ntkfast raised a warning). "
             "neural-tangents 0.6.5: ElementwiseNumerical(fn, deg) (deg × deg Gauss-Hermite), "
             "float64.", "",
             "| activation | q1 | q2 | 1 − ρ | ntkfast E[φφ] | ntkfast E[φ'φ'] | path | warned | "
             "NT deg=25 E[φφ] | NT deg=25 E[φ'φ'] | NT deg=100 E[φφ] | NT deg=100 E[φ'φ'] |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    worst = {}
    for name, cases in data["cases"].items():
        nt = {}
        if args.nt_python:
            for deg in (25, 100):
                spec = {"mode": "accuracy", "fn": NT_FUNCTIONS[name],
                        "cases": [[c["q1"], c["q2"], c["one_minus_rho"], deg] for c in cases]}
                nt[deg] = _nt(args.nt_python, spec)
        for k, case in enumerate(cases):
            got_nngp, got_dot, warned, fallback = _ntkfast_case(
                layers[name], case["q1"], case["q2"], case["one_minus_rho"])
            ref_nngp, ref_dot = float(case["nngp"]), float(case["dot"])

            def err(value, ref, scale):
                return abs(value - ref) / scale

            e = (err(got_nngp, ref_nngp, case["scale"]), err(got_dot, ref_dot, case["scale_dot"]))
            if not warned:
                worst[name] = max(worst.get(name, 0.0), *e)
            cells = [f"{v:.1e}" for v in e] + ["2-D quadrature" if fallback else "series",
                                                 "yes" if warned else "no"]
            for deg in (25, 100):
                if deg in nt:
                    cells += [f"{err(nt[deg][k][0], ref_nngp, case['scale']):.1e}",
                              f"{err(nt[deg][k][1], ref_dot, case['scale_dot']):.1e}"]
                else:
                    cells += ["–", "–"]
            omr = case["one_minus_rho"]
            omr_text = f"{omr:g}" if omr <= 1 else f"2 − {2 - omr:.0e}"
            lines.append(f"| {name} | {case['q1']:g} | {case['q2']:g} | {omr_text} "
                         f"| " + " | ".join(cells) + " |")
    lines += ["", "Largest ntkfast error where it did not warn, per activation: " +
              ", ".join(f"{k} {v:.1e}" for k, v in worst.items()),
              "", "SELU's E[φ'φ'] at |ρ| = 1 − 1e-12 is the rounding of the inputs, not of the "
              "method: its φ' jumps by J = 0.71 at 0, so E[φ'φ'] moves by J²/(2π√(1 − ρ²)) ≈ "
              "6e4 per unit of ρ there, and ρ from rounded points is off by ~2e-16 (the tests "
              "allow that slope's share; at exactly representable ρ the fallback alone is within "
              "1e-13 of closed forms with such jumps, tests/test_series.py)."]
    return lines


def _time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def speed(args):
    import ntkfast as nf

    lines = ["# Hermite-series activations: Gram time against ReLU, in one process", "",
             f"machine: {_machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"load average before: {os.getloadavg()}", "",
             f"gram(x, net=MLP(depth, act, W_std=1.5, b_std=0.05)), NNGP + NTK, symmetric, "
             f"N = {args.n}, d = {args.d}; best of {args.repeat}.", "",
             "| dtype | depth | activation | time | × ReLU |", "|---|---:|---|---:|---:|"]
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((args.n, args.d))
    for dtype in (np.float64, np.float32):
        x = x64.astype(dtype)
        for depth in (3, 10):
            relu = _time(lambda: nf.gram(x, net=nf.MLP(depth, "relu", W_std=1.5, b_std=0.05)),
                         args.repeat)
            lines.append(f"| {np.dtype(dtype).name} | {depth} | relu | {relu:.2f} s | 1.00 |")
            for act in args.activations:
                net = nf.MLP(depth, act, W_std=1.5, b_std=0.05)
                with _fallback_counter() as counts, \
                        warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    t = _time(lambda: nf.gram(x, net=net), args.repeat)
                note = " (warned)" if caught else ""
                if counts and counts[-1]:
                    note += f" ({counts[-1]} entries by 2-D quadrature)"
                lines.append(f"| {np.dtype(dtype).name} | {depth} | {act}{note} | {t:.2f} s | "
                             f"{t / relu:.2f} |")
    if args.nt_python:
        n = args.nt_n
        lines += ["", f"neural-tangents 0.6.5 ElementwiseNumerical(tanh, deg=25), float32 (its "
                  f"default), N = {n} (its quadrature holds N² deg² values), against ntkfast's "
                  "Tanh at the same N, float64:", "",
                  "| depth | neural-tangents | ntkfast | ratio |", "|---:|---:|---:|---:|"]
        x = rng.standard_normal((n, args.d))
        for depth in (3, 10):
            nt = _nt(args.nt_python, {"mode": "speed", "fn": NT_FUNCTIONS["tanh"], "n": n,
                                      "d": args.d, "depth": depth, "deg": 25,
                                      "repeat": args.repeat})["seconds"]
            net = nf.MLP(depth, "tanh", W_std=1.5, b_std=0.05)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = _time(lambda: nf.gram(x, net=net), args.repeat)
            lines.append(f"| {depth} | {nt:.2f} s | {ours:.3f} s | {nt / ours:.0f}× |")
    lines += ["", f"load average after: {os.getloadavg()}"]
    return lines


def _erf_dual_kernel():
    import ntkfast as nf

    def nngp(c, q1, q2):  # Williams 1997
        return 2 / np.pi * np.arcsin(2 * c / np.sqrt((1 + 2 * q1) * (1 + 2 * q2)))

    def d_nngp(c, q1, q2):
        return 4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * c ** 2)

    return nf.DualKernel(nngp, d_nngp)


def dual(args):
    import ntkfast as nf

    lines = ["# Dual kernels as Python functions (DualKernel): Gram time against the built-in "
             "closed form", "",
             f"machine: {_machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"load average before: {os.getloadavg()}", "",
             f"gram(x, net=MLP(depth, act, W_std=1.5, b_std=0.05)), NNGP + NTK, symmetric, "
             f"N = {args.n}, d = {args.d}, float64; best of {args.repeat}. `DualKernel(erf)`: "
             "erf's arc-sine kernel and its derivative as NumPy functions (arcsin, sqrt), called "
             "once per tile and layer; `Erf()`: the same kernel in the engine (C++).", "",
             "| depth | Erf() | DualKernel(erf) | ratio | max rel. difference |",
             "|---:|---:|---:|---:|---:|"]
    x = np.random.default_rng(0).standard_normal((args.n, args.d))
    for depth in (3, 10):
        builtin = nf.MLP(depth, "erf", W_std=1.5, b_std=0.05)
        user = nf.MLP(depth, _erf_dual_kernel(), W_std=1.5, b_std=0.05)
        t_builtin = _time(lambda: nf.gram(x, net=builtin), args.repeat)
        t_user = _time(lambda: nf.gram(x, net=user), args.repeat)
        a, b = nf.gram(x, net=user, get="ntk"), nf.gram(x, net=builtin, get="ntk")
        diff = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        lines.append(f"| {depth} | {t_builtin:.2f} s | {t_user:.2f} s | "
                     f"{t_user / t_builtin:.1f}× | {diff:.1e} |")
    lines += ["", f"load average after: {os.getloadavg()}"]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("accuracy", "speed", "dual"))
    parser.add_argument("--nt-python", help="interpreter with neural-tangents installed")
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--nt-n", type=int, default=500)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--activations", nargs="+", default=["tanh", "silu", "softplus", "elu"])
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    lines = {"accuracy": accuracy, "speed": speed, "dual": dual}[args.mode](args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
