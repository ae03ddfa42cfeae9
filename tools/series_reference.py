"""30-digit reference values of E[φ(u)φ(v)] and E[φ'(u)φ'(v)] for the Hermite-series activations
(tests/test_series.py), by mpmath: the inner integral over z2 for each z1, split where v = 0 and
where φ(v) changes fastest, then the outer one split at u = 0.

    python tools/series_reference.py -o tests/data/series_reference.json     # ~1.5 h

An existing output file is extended: only the (activation, case) pairs it lacks are computed.

Cases: variances 1e-3 .. 1e3 and correlations up to 1 - 1e-12 (the hard corner of Mehler's series).
"""
import argparse
import json
import time

import mpmath as mp

mp.mp.dps = 30


def _sigmoid(x):
    return 1 / (1 + mp.exp(-x))


def _softplus(x):
    return mp.log1p(mp.exp(x)) if x < 30 else x + mp.log1p(mp.exp(-x))


SELU_ALPHA = mp.mpf("1.6732632423543772848170429916717")
SELU_SCALE = mp.mpf("1.0507009873554804934193349852946")

ACTIVATIONS = {
    "tanh": (mp.tanh, lambda x: 1 / mp.cosh(x) ** 2),
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * _sigmoid(-x)),
    "softplus": (_softplus, _sigmoid),
    "silu": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) * (1 + x * _sigmoid(-x))),
    "elu": (lambda x: x if x > 0 else mp.expm1(x), lambda x: mp.mpf(1) if x > 0 else mp.exp(x)),
    "selu": (lambda x: SELU_SCALE * (x if x > 0 else SELU_ALPHA * mp.expm1(x)),
             lambda x: SELU_SCALE * (mp.mpf(1) if x > 0 else SELU_ALPHA * mp.exp(x))),
    "mish": (lambda x: x * mp.tanh(_softplus(x)),
             lambda x: mp.tanh(_softplus(x)) + x * _sigmoid(x) / mp.cosh(_softplus(x)) ** 2),
    "gelu_numerical": (lambda x: x * mp.ncdf(x),
                       lambda x: mp.ncdf(x) + x * mp.npdf(x)),
}

CASES = [  # (q1, q2, 1 - ρ)
    (1e-3, 1e-3, 0.5), (1e-3, 1e-3, 1e-12), (1.0, 1.0, 1.9), (1.0, 1.0, 1e-2), (1.0, 1.0, 1e-6),
    (1.0, 1.0, 1e-12), (1.0, 4.0, 1e-6), (1e-3, 1e3, 0.2), (1e3, 1e3, 0.9), (1e3, 1e3, 1e-12),
    # where the series needs its fallback at every distance from ρ = ±1 (1 - ρ = 2 - 1e-12 is
    # exact in float64, so ρ = -1 + 1e-12 is the same number here and in the tests)
    (10.0, 10.0, 1e-3), (1e3, 1e3, 1e-4), (1e3, 300.0, 1e-9), (1.0, 1.0, 2 - 1e-9),
    (1e3, 1e3, 2 - 1e-12),
]


_GL_CACHE = {}


def _gauss_legendre(n):
    """n-point Gauss-Legendre nodes and weights on [-1, 1] at the working precision (Newton on
    P_n from the float64 nodes)."""
    if n not in _GL_CACHE:
        import numpy as np

        nodes = []
        for x0 in np.polynomial.legendre.leggauss(n)[0]:
            x = mp.mpf(float(x0))
            for _ in range(6):
                p, dp = mp.legendre(n, x), n * (x * mp.legendre(n, x) - mp.legendre(n - 1, x)) / (x * x - 1)
                x -= p / dp
            dp = n * (x * mp.legendre(n, x) - mp.legendre(n - 1, x)) / (x * x - 1)
            nodes.append((x, 2 / ((1 - x * x) * dp * dp)))
        _GL_CACHE[n] = nodes
    return _GL_CACHE[n]


def _panels(center, width, lo, hi):
    """Breakpoints on [lo, hi]: geometric (ratio 2) away from `center` from panels of `width`,
    then at most unit panels."""
    points = {mp.mpf(lo), mp.mpf(hi)}
    center = min(max(center, mp.mpf(lo)), mp.mpf(hi))  # a feature outside: grade from the end
    if lo < center < hi:
        points.add(center)
    for sign in (-1, 1):
        step, x = width, center
        while True:
            x = x + sign * step
            if not lo < x < hi:
                break
            points.add(x)
            step = min(2 * step, mp.mpf(1))
    return sorted(points)


def _integrate(h, points, n):
    rule = _gauss_legendre(n)
    total = mp.mpf(0)
    for a, b in zip(points[:-1], points[1:]):
        half, mid = (b - a) / 2, (a + b) / 2
        total += half * mp.fsum(w * h(mid + half * x) for x, w in rule)
    return total


def expectation(f, g, q1, q2, rho, n=12):
    """E[f(√q1 z1) g(√q2 (ρ z1 + s z2))] for standard normal z1, z2, s = √(1 - ρ²): composite
    Gauss-Legendre on panels graded towards u = 0 (outer) and v = 0 (inner), where φ has its
    features (scale 1/√q) and kinks; |z| <= 13 (the Gaussian below 1e-37 beyond)."""
    s1, s2 = mp.sqrt(q1), mp.sqrt(q2)
    s = mp.sqrt(1 - rho * rho)
    # Outer panels resolve u's features (1/√q1) and where v = 0 enters the inner range (~13 s).
    w1 = min(1 / s1, mp.mpf(1), 13 * s) / 16 if s > 0 else min(1 / s1, mp.mpf(1)) / 16

    def inner(z1):
        a = s2 * rho * z1
        if s == 0:
            return g(a)
        root = -rho * z1 / s  # v = 0 there
        width = min(1 / (s2 * s), mp.mpf(1)) / 16
        return _integrate(lambda z2: g(a + s2 * s * z2) * mp.npdf(z2),
                          _panels(root, width, -13, 13), n)

    return _integrate(lambda z1: f(s1 * z1) * inner(z1) * mp.npdf(z1), _panels(0, w1, -13, 13), n)


def expectation_1d(f, g, q):
    """E[f(√q z) g(√q z)] (ρ = 1, q1 = q2)."""
    s1 = mp.sqrt(q)
    return _integrate(lambda z: f(s1 * z) * g(s1 * z) * mp.npdf(z),
                      _panels(0, min(1 / s1, mp.mpf(1)) / 16, -13, 13), 24)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--only", nargs="*", help="activation names (default: all)")
    args = parser.parse_args()
    out = {"mpmath_dps": mp.mp.dps, "cases": {}}
    try:
        with open(args.output) as fh:
            out = json.load(fh)
    except FileNotFoundError:
        pass
    for name, (f, df) in ACTIVATIONS.items():
        if args.only and name not in args.only:
            continue
        cases = out["cases"].setdefault(name, [])
        done = {(c["q1"], c["q2"], c["one_minus_rho"]) for c in cases}
        for q1, q2, omr in CASES:
            if (q1, q2, omr) in done:
                continue
            start = time.time()
            q1m, q2m, rho = mp.mpf(q1), mp.mpf(q2), 1 - mp.mpf(omr)
            nngp = expectation(f, f, q1m, q2m, rho)
            dot = expectation(df, df, q1m, q2m, rho)
            diag = [expectation_1d(f, f, q) for q in (q1m, q2m)]
            diag_dot = [expectation_1d(df, df, q) for q in (q1m, q2m)]
            cases.append({"q1": q1, "q2": q2, "one_minus_rho": omr,
                          "nngp": mp.nstr(nngp, 25), "dot": mp.nstr(dot, 25),
                          "scale": float(max(abs(v) for v in diag)),
                          "scale_dot": float(max(abs(v) for v in diag_dot)),
                          "slope": float(mp.sqrt(q1m * q2m) * abs(dot))})
            print(f"{name} q=({q1:g}, {q2:g}) 1-rho={omr:g}: {mp.nstr(nngp, 12)} "
                  f"{mp.nstr(dot, 12)} ({time.time() - start:.1f} s)", flush=True)
            with open(args.output, "w") as fh:  # after every case: an interrupted run resumes
                json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
