"""Evidence for ntkfast's float32 policy: evaluate the layer maps in float64, round once.

For float32 inputs, compares against a float64 reference (the same float32 points, everything in
float64) the error of
  (a) ntkfast: float32 GEMM, layer maps in float64, result rounded to float32 (what it ships);
  (b) the layer maps evaluated in float32 (a plain NumPy float32 recursion: what a float32
      epilogue would give),
over depths 1..50, for ReLU and Erf networks, as max |error| / max |K| of the NTK, and the error
of the entries of a duplicated row against the diagonal. Writes benchmarks/results/accuracy_float32.txt.

    python benchmarks/accuracy_float32.py [-o benchmarks/results/accuracy_float32.txt]
"""
from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

import numpy as np

import ntkfast

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from baselines import numpy_kernels  # noqa: E402


def float32_recursion(x, depth, activation, w_std, b_std):
    """The layer maps in float32 arithmetic (ρ by atan2 of r = √(q1q2 - c²), as a careful float32
    kernel would), the diagonal from the per-row recursion."""
    f = np.float32
    x = x.astype(f)
    d = x.shape[1]
    w2, b2 = f(w_std * w_std), f(b_std * b_std)
    s = w2 * (x @ x.T) / f(d) + b2
    q = w2 * np.einsum("ij,ij->i", x, x) / f(d) + b2
    t = s.copy()
    for _ in range(depth):
        qq = np.outer(q, q)
        if activation == "relu":
            r = np.sqrt(np.maximum(qq - s * s, f(0)))
            theta = np.arctan2(r, s)
            dot = (f(np.pi) - theta) / f(2 * np.pi)
            s = (r + (f(np.pi) - theta) * s) / f(2 * np.pi)
            q = q / f(2)
        else:
            p = np.outer(1 + 2 * q, 1 + 2 * q).astype(f)
            root = np.sqrt(np.maximum(p - 4 * s * s, f(0)))
            dot = f(4 / np.pi) / root
            s = f(2 / np.pi) * np.arctan2(2 * s, root)
            q = f(2 / np.pi) * np.arctan2(2 * q, np.sqrt(1 + 4 * q))
        s = w2 * s + b2
        q = w2 * q + b2
        t = s + w2 * dot * t
        np.fill_diagonal(s, q)
    return s, t


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 64)).astype(np.float32)
    x[7] = x[3]  # a duplicate row
    lines = [f"# float32 policy evidence, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"# ntkfast {ntkfast.__version__}; 400 float32 points, d = 64, row 7 duplicates row 3",
             "# error = max |K - K_ref| / max |K_ref| of the NTK; K_ref: same points, all in float64",
             "", "| activation | depth | ntkfast float32 output | float32 layer maps | dup-vs-diag (maps in float32) |",
             "|---|---:|---:|---:|---:|"]
    for activation, w_std in (("relu", 1.5), ("erf", 1.3)):
        for depth in (1, 3, 10, 30, 50):
            net = ntkfast.MLP(depth, activation, W_std=w_std, b_std=0.05)
            ref = ntkfast.gram(x.astype(np.float64), net=net, get="ntk")
            _, plain = numpy_kernels(x.astype(np.float64), depth=depth, activation=activation,
                                     W_std=w_std, b_std=0.05)
            # the reference agrees with an independent NumPy evaluation (whose arccos loses ~√ε at
            # ρ = 1, on the diagonal: hence 1e-6, not 1e-15)
            assert np.abs(plain - ref).max() <= 1e-6 * np.abs(ref).max()
            ours = ntkfast.gram(x, net=net, get="ntk")
            _, maps32 = float32_recursion(x, depth, activation, w_std, 0.05)
            scale = np.abs(ref).max()
            dup = abs(float(maps32[7, 3]) - float(maps32[3, 3])) / abs(float(maps32[3, 3]))
            lines.append(f"| {activation} | {depth} | {np.abs(ours - ref).max() / scale:.1e} | "
                         f"{np.abs(maps32 - ref).max() / scale:.1e} | {dup:.1e} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output:
        pathlib.Path(args.output).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
