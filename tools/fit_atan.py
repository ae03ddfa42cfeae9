"""Minimax polynomials for the layer maps' inverse trigonometric functions (layer_math.hpp) and
for the standalone fused-step floor of the benchmarks (benchmarks/step_floor.cpp).

    python tools/fit_atan.py                   # the engine's atan (degree 9) and the floor's asin
    python tools/fit_atan.py atan 8 9 10       # other degrees, to see what each one costs

For f(w) = w + w z P(z), z = w² (atan on |w| <= tan(π/8), the range left by layer_math.hpp's
reductions; asin on |w| <= 1/2, the range left by acos's reduction in the floor), P of degree n
is the Remez (equioscillation) solution of

    minimize max_z |w z (P(z) - g(z))| / |f(w)|,   g(z) = (f(√z)/√z - 1) / z,

i.e. the relative error of f itself, computed in 60-digit arithmetic (mpmath). The script then
rounds the coefficients to float64 (or float32), evaluates f the way the C++ code does (Horner's
rule in fused multiply-adds, each rounded once; the last step w z·P + w) on 20,001 points and
prints the maximum relative error against mpmath in ulps. For atan, degree 9 is the lowest whose
rounded result stays within ~1 ulp (the approximation error is 0.16 ulp; degree 8's is 4.4 ulp).
"""
from __future__ import annotations

import sys
from fractions import Fraction

import mpmath as mp
import numpy as np

mp.mp.dps = 60

FUNCTIONS = {
    # name: (f, z_max)
    "atan": (mp.atan, mp.tan(mp.pi / 8) ** 2),
    "asin": (mp.asin, mp.mpf(1) / 4),
}


G_AT_ZERO = {"atan": mp.mpf(-1) / 3, "asin": mp.mpf(1) / 6}  # the limits of g at z = 0


def _g(name, z):
    if z == 0:
        return G_AT_ZERO[name]
    w = mp.sqrt(z)
    return (FUNCTIONS[name][0](w) / w - 1) / z


def remez(name: str, degree: int, iterations: int = 40):
    """Coefficients c_0..c_degree of P and the minimax relative error of f (before rounding)."""
    f, zmax = FUNCTIONS[name]

    def weight(z):  # |w z| / |f(w)|: P's error, relative to f
        w = mp.sqrt(z)
        return z * w / abs(f(w)) if z > 0 else mp.mpf(0)

    m = degree + 2
    points = [zmax * (1 - mp.cos(mp.pi * (k + mp.mpf(1) / 2) / m)) / 2 for k in range(m)]
    grid = [zmax * k / 3000 for k in range(1, 3001)]
    for _ in range(iterations):
        a = mp.matrix(m, m)
        b = mp.matrix(m, 1)
        for i, z in enumerate(points):
            for j in range(degree + 1):
                a[i, j] = weight(z) * z**j
            a[i, degree + 1] = (-1) ** i
            b[i] = weight(z) * _g(name, z)
        solution = mp.lu_solve(a, b)
        coefficients = [solution[j] for j in range(degree + 1)]
        errors = [weight(z) * (mp.polyval(coefficients[::-1], z) - _g(name, z)) for z in grid]
        # the new reference: one extremum per sign change of the error, the largest in each run
        runs = []
        for z, e in zip(grid, errors):
            if runs and mp.sign(e) == mp.sign(runs[-1][1]):
                if abs(e) > abs(runs[-1][1]):
                    runs[-1] = (z, e)
            else:
                runs.append((z, e))
        while len(runs) > m:
            runs.pop(0 if abs(runs[0][1]) < abs(runs[-1][1]) else -1)
        if len(runs) < m:
            break
        new_points = [z for z, _ in runs]
        if new_points == points:  # converged: the reference no longer moves
            break
        points = new_points
    return coefficients, max(abs(e) for e in errors)


def _round(x: Fraction, dtype) -> Fraction:
    return Fraction(float(dtype(float(x)))) if dtype is np.float32 else Fraction(float(x))


def evaluated_error_ulps(name: str, coefficients, dtype=np.float64, samples: int = 20001) -> float:
    """Max relative error of f as the C++ code evaluates it (each FMA rounded once), in ulps."""
    f, zmax = FUNCTIONS[name]
    c = [Fraction(float(dtype(float(x)))) for x in coefficients]
    eps = float(np.finfo(dtype).eps)
    worst = 0.0
    for w_float in np.linspace(0, float(mp.sqrt(zmax)), samples)[1:].astype(dtype):
        w = Fraction(float(w_float))
        z = _round(w * w, dtype)
        p = c[-1]
        for ck in reversed(c[:-1]):
            p = _round(p * z + ck, dtype)
        wz = _round(w * z, dtype)
        value = _round(wz * p + w, dtype)
        exact = f(mp.mpf(float(w_float)))
        worst = max(worst, float(abs((mp.mpf(value.numerator) / value.denominator - exact) / exact)))
    return worst / eps


def report(name: str, degree: int, dtype=np.float64) -> None:
    coefficients, error = remez(name, degree)
    eps = float(np.finfo(dtype).eps)
    print(f"{name}, degree {degree}, {np.dtype(dtype).name}: minimax {float(error) / eps:.3f} ulp, "
          f"evaluated {evaluated_error_ulps(name, coefficients, dtype):.3f} ulp")
    cast = (lambda x: repr(float(np.float32(float(x)))) + "f") if dtype is np.float32 else (
        lambda x: repr(float(x)))
    print("  c0..c%d (Horner from the last):" % degree, ", ".join(cast(x) for x in coefficients))


def main(argv):
    if len(argv) >= 2:
        for degree in map(int, argv[1:]):
            report(argv[0], degree)
        return
    report("atan", 9)   # layer_math.hpp, base_plus_atan
    report("asin", 11)  # benchmarks/step_floor.cpp, float64
    report("asin", 4, np.float32)  # benchmarks/step_floor.cpp, float32


if __name__ == "__main__":
    main(sys.argv[1:])
