"""Independent oracles for the dual activations: the functions φ, φ' themselves, integrated by
2-D quadrature and by Monte-Carlo sampling over (u, v) ~ N(0, [[q1, c], [c, q2]])."""
from __future__ import annotations

import math

import numpy as np
from scipy import special

import ntkfast as nf
from numpy_reference import ABRELU_FAMILY, abrelu_slopes

SQRT2PI = math.sqrt(2 * math.pi)


def functions(layer):
    """(φ, φ', kinks): the activation, its derivative (a.e.), and whether it has kinks/jumps at 0."""
    if isinstance(layer, ABRELU_FAMILY):
        a, b = abrelu_slopes(layer)
        return (lambda x: a * np.minimum(x, 0) + b * np.maximum(x, 0),
                lambda x: np.where(x < 0, a, b), True)
    if isinstance(layer, (nf.Erf, nf.Sigmoid_like)):
        a, b, c = (0.5, 1 / 2.4020563531719796, 0.5) if isinstance(layer, nf.Sigmoid_like) \
            else (layer.a, layer.b, layer.c)
        return (lambda x: a * special.erf(b * x) + c,
                lambda x: a * b * 2 / math.sqrt(math.pi) * np.exp(-(b * x) ** 2), False)
    if isinstance(layer, nf.Gelu):
        return (lambda x: x * special.ndtr(x),
                lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / SQRT2PI, False)
    if isinstance(layer, (nf.Sin, nf.Cos)):
        a, b, c = layer.a, layer.b, layer.c + (math.pi / 2 if isinstance(layer, nf.Cos) else 0)
        return (lambda x: a * np.sin(b * x + c), lambda x: a * b * np.cos(b * x + c), False)
    if isinstance(layer, nf.Rbf):
        w = math.sqrt(2 * layer.gamma)
        return (lambda x: math.sqrt(2) * np.sin(w * x + math.pi / 4),
                lambda x: math.sqrt(2) * w * np.cos(w * x + math.pi / 4), False)
    if isinstance(layer, nf.Exp):
        a, b = layer.a, layer.b
        return (lambda x: a * np.exp(b * x), lambda x: a * b * np.exp(b * x), False)
    if isinstance(layer, nf.Gaussian):
        a, b = layer.a, layer.b
        return (lambda x: a * np.exp(b * x * x), lambda x: 2 * a * b * x * np.exp(b * x * x), False)
    if isinstance(layer, nf.Gabor):
        return (lambda x: np.exp(-x * x) * np.sin(x),
                lambda x: np.exp(-x * x) * (np.cos(x) - 2 * x * np.sin(x)), False)
    if isinstance(layer, nf.Sign):
        return np.sign, lambda x: np.zeros_like(x), True
    if isinstance(layer, nf.RectifiedMonomial):
        n = layer.degree
        return (lambda x: np.where(x > 0, np.abs(x) ** n, 0.0),
                lambda x: np.where(x > 0, n * np.abs(x) ** max(n - 1, 0), 0.0) if n else np.zeros_like(x),
                True)
    if isinstance(layer, (nf.Polynomial, nf.Monomial)):
        coef = list(layer.coef) if isinstance(layer, nf.Polynomial) else [0.0] * layer.degree + [1.0]
        p = np.polynomial.Polynomial(coef)
        dp = p.deriv()
        return p, dp, False
    if isinstance(layer, nf.Hermite):
        n = layer.degree
        he = special.hermitenorm(n)
        norm = math.sqrt(math.factorial(n))
        return (lambda x: he(x) / norm, lambda x: he.deriv()(x) / norm if n else np.zeros_like(x), False)
    raise NotImplementedError(layer)


def _pair(q1, q2, c, z1, z2):
    """(u, v) with covariance [[q1, c], [c, q2]] from independent standard normals."""
    s1 = math.sqrt(q1)
    slope = c / s1
    rest = math.sqrt(max(q2 - slope * slope, 0.0))
    return s1 * z1, slope * z1 + rest * z2


def gauss_hermite(f, g, q1, q2, c, n=None):
    """E[f(u) g(v)] by an n x n Gauss-Hermite rule (exponentially accurate for smooth f, g; the
    default n grows with the variances, since f(√q z) varies faster in z as q grows)."""
    if n is None:
        n = 150 if max(q1, q2) <= 2 else 400
    x, w = special.roots_hermite(n)
    z1, z2 = np.meshgrid(math.sqrt(2) * x, math.sqrt(2) * x, indexing="ij")
    u, v = _pair(q1, q2, c, z1, z2)
    return float(np.sum(np.outer(w, w) * f(u) * g(v)) / math.pi)


def _legendre(a, b, n):
    x, w = np.polynomial.legendre.leggauss(n)
    return (b - a) / 2 * x + (a + b) / 2, (b - a) / 2 * w


def piecewise_quadrature(f, g, q1, q2, c, n=100, half_width=12.0):
    """E[f(u) g(v)] for f, g smooth except at 0: Gauss-Legendre on pieces split at u = 0 (z1 = 0)
    and, for each z1, at v = 0, so every piece is smooth (exponentially accurate again)."""
    s1 = math.sqrt(q1)
    slope = c / s1
    rest = math.sqrt(max(q2 - slope * slope, 0.0))
    x, w = np.polynomial.legendre.leggauss(n)
    total = 0.0
    for za, zb in ((-half_width, 0.0), (0.0, half_width)):
        z1 = (zb - za) / 2 * x + (za + zb) / 2
        w1 = (zb - za) / 2 * w * np.exp(-z1 * z1 / 2) / SQRT2PI
        fu = f(s1 * z1) * w1
        if rest == 0.0:
            total += float(np.sum(fu * g(slope * z1)))
            continue
        root = np.clip(-slope * z1 / rest, -half_width, half_width)[:, None]  # v = 0 there
        for lo, hi in ((-half_width, root), (root, half_width)):
            z2 = (hi - lo) / 2 * x[None, :] + (hi + lo) / 2
            w2 = (hi - lo) / 2 * w[None, :] * np.exp(-z2 * z2 / 2) / SQRT2PI
            total += float(np.sum(fu[:, None] * w2 * g(slope * z1[:, None] + rest * z2)))
    return total


def quadrature(f, g, q1, q2, c, kinked):
    return (piecewise_quadrature if kinked else gauss_hermite)(f, g, q1, q2, c)


def monte_carlo(f, g, q1, q2, c, n_samples=400_000, seed=0):
    """(mean, standard error) of f(u) g(v) over seeded samples."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((2, n_samples))
    u, v = _pair(q1, q2, c, z[0], z[1])
    values = f(u) * g(v)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n_samples))


def ntkfast_dual(layer, q1, q2, c):
    """(E[φφ], E[φ'φ']) as ntkfast computes them: a Dense(W_std=1, no bias) on 2-D points whose
    input Gram is exactly [[q1, c], [c, q2]], then the activation; the NTK entry is E[φ'φ']·c."""
    rho = c / math.sqrt(q1 * q2)
    x1 = np.array([[math.sqrt(2 * q1), 0.0]])
    x2 = np.array([[math.sqrt(2 * q2) * rho, math.sqrt(2 * q2 * max(1 - rho * rho, 0.0))]])
    k = nf.gram(x1, x2, net=nf.serial(nf.Dense(W_std=1.0), layer))
    exact = (float(x1[0] @ x1[0]) / 2, float(x2[0] @ x2[0]) / 2, float(x1[0] @ x2[0]) / 2)  # used
    return float(k.nngp[0, 0]), float(k.ntk[0, 0]) / exact[2], exact
