"""A plain float64 NumPy implementation of the kernels: the first oracle.

Full matrices, one layer after the other, textbook formulas (arccos, arcsin, Isserlis moments);
no tiling, no shared code with the engine. Conventions: Lee et al. 2018 (NNGP), Jacot et al.
2018 and Arora et al. 2019 (the NTK recursion), Cho & Saul 2009 (arc-cosine kernels);
docs/dynamics.md for the dynamics.
"""
from __future__ import annotations

import math

import numpy as np

import ntkfast as nf


def _theta(c, q1, q2):
    """arccos(ρ), with ρ clipped, computed as 2·atan2(√(1-ρ), √(1+ρ)) (accurate near ±1), and
    π/2 where a variance is zero (the uncorrelated zero-variance limit)."""
    prod = q1 * q2
    zero = prod <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(zero, 0.0, c / np.sqrt(np.where(zero, 1.0, prod)))
    rho = np.clip(rho, -1.0, 1.0)
    return 2.0 * np.arctan2(np.sqrt(1.0 - rho), np.sqrt(1.0 + rho))


def _double_factorial(n):
    return 1 if n <= 0 else n * _double_factorial(n - 2)


def _moment(j, k, c, q1, q2):
    """E[u^j v^k] for (u, v) ~ N(0, [[q1, c], [c, q2]]) by Isserlis' theorem: sum over the number
    m of u-v pairs of C(j,m) C(k,m) m! (j-m-1)!! (k-m-1)!! c^m q1^((j-m)/2) q2^((k-m)/2)."""
    total = 0.0
    for m in range(min(j, k) + 1):
        if (j - m) % 2 or (k - m) % 2:
            continue
        count = (math.comb(j, m) * math.comb(k, m) * math.factorial(m)
                 * _double_factorial(j - m - 1) * _double_factorial(k - m - 1))
        total = total + count * c ** m * q1 ** ((j - m) // 2) * q2 ** ((k - m) // 2)
    return total


def _poly_dual(coef, c, q1, q2):
    return sum(a * b * _moment(j, k, c, q1, q2)
               for j, a in enumerate(coef) for k, b in enumerate(coef) if a and b)


ABRELU_FAMILY = (nf.Relu, nf.LeakyRelu, nf.Abs, nf.ABRelu)


def abrelu_slopes(layer):
    """(a, b) of a·min(x, 0) + b·max(x, 0) for the ReLU family."""
    if isinstance(layer, nf.LeakyRelu):
        return layer.alpha, 1.0
    if isinstance(layer, nf.ABRelu):
        return layer.a, layer.b
    return {nf.Relu: (0.0, 1.0), nf.Abs: (-1.0, 1.0)}[type(layer)]


def activation_dual(layer, c, q1, q2):
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) for (u, v) ~ N(0, [[q1, c], [c, q2]]), elementwise."""
    c = np.asarray(c, dtype=np.float64)
    if isinstance(layer, nf.DualKernel):  # the user's own dual kernels, on full matrices
        return (layer.nngp_fn(c, q1, q2) + np.zeros_like(c),
                layer.d_nngp_fn(c, q1, q2) + np.zeros_like(c))
    if isinstance(layer, ABRELU_FAMILY):
        a, b = abrelu_slopes(layer)
        th = _theta(c, q1, q2)
        s = np.sqrt(q1 * q2)
        e = (a - b) ** 2 / (2 * np.pi) * s * (np.sin(th) - th * np.cos(th)) + (a * a + b * b) / 2 * c
        de = (a * a + b * b) * (np.pi - th) / (2 * np.pi) + a * b * th / np.pi
        return e, de
    if isinstance(layer, (nf.Erf, nf.Sigmoid_like)):
        a, b, off = (0.5, 1 / 2.4020563531719796, 0.5) if isinstance(layer, nf.Sigmoid_like) \
            else (layer.a, layer.b, layer.c)
        c_, q1_, q2_ = b * b * c, b * b * q1, b * b * q2
        e = 2 / np.pi * np.arcsin(np.clip(2 * c_ / np.sqrt((1 + 2 * q1_) * (1 + 2 * q2_)), -1, 1))
        de = 4 / np.pi / np.sqrt((1 + 2 * q1_) * (1 + 2 * q2_) - 4 * c_ ** 2)
        return a * a * e + off * off, a * a * b * b * de
    if isinstance(layer, nf.Gelu):
        pp1 = (1 + q1) * (1 + q2)
        d2 = pp1 - c ** 2
        d = np.sqrt(d2)
        ang = np.arctan2(c, d)
        e = ((c ** 2 + q1 * q2 * d2) / (pp1 * d) + c * ang) / (2 * np.pi) + c / 4
        de = c / d / (2 * np.pi) * (1 / d2 + (1 - q1 * q2) / pp1 + 1) + 0.25 + ang / (2 * np.pi)
        return e, de
    if isinstance(layer, (nf.Sin, nf.Cos)):
        beta = layer.c + (np.pi / 2 if isinstance(layer, nf.Cos) else 0.0)
        a, b = layer.a, layer.b
        c_, half = b * b * c, b * b * (q1 + q2) / 2
        e1, e2 = np.exp(c_ - half), np.cos(2 * beta) * np.exp(-c_ - half)
        return a * a / 2 * (e1 - e2), a * a * b * b / 2 * (e1 + e2)
    if isinstance(layer, nf.Rbf):
        e = np.exp(-layer.gamma * (q1 + q2 - 2 * c))
        return e, 2 * layer.gamma * e
    if isinstance(layer, nf.Exp):
        e = np.exp(layer.b ** 2 * ((q1 + q2) / 2 + c))
        return layer.a ** 2 * e, layer.a ** 2 * layer.b ** 2 * e
    if isinstance(layer, nf.ExpNormalized):
        s = np.sqrt(q1 * q2)
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(s > 0, c / np.where(s > 0, s, 1.0), 0.0)
        if layer.do_clip:
            rho = np.clip(rho, -1, 1)
        ex = np.exp(layer.gamma * (rho + layer.shift))
        return s * ex, layer.gamma * ex
    if isinstance(layer, nf.Gaussian):
        a, b = layer.a, layer.b
        det = np.sqrt((1 - 2 * b * q1) * (1 - 2 * b * q2) - 4 * b * b * c ** 2)
        return a * a / det, a * a * 4 * b * b * c / det ** 3
    if isinstance(layer, nf.Gabor):
        # exp(-x²) sin x = Im exp(-x² + i x): E[φ(u)φ(v)] = ½ Re(E[e^{-u²-v²} (e^{i(u-v)} - e^{i(u+v)})])
        # with E[exp(-wᵀw + i kᵀw)] = |I + 2Λ|^{-1/2} exp(-½ kᵀ Λ (I + 2Λ)^{-1} k).
        det = (1 + 2 * q1) * (1 + 2 * q2) - 4 * c ** 2

        def quad(k1, k2):  # kᵀ Λ (I + 2Λ)^{-1} k = (|k|² - kᵀ (I + 2Λ)^{-1} k) / 2
            inv = (k1 * k1 * (1 + 2 * q2) + k2 * k2 * (1 + 2 * q1) - 4 * k1 * k2 * c) / det
            return (k1 * k1 + k2 * k2 - inv) / 2

        e = 0.5 / np.sqrt(det) * (np.exp(-quad(1, -1) / 2) - np.exp(-quad(1, 1) / 2))
        return e, _gabor_dot(c, q1, q2)
    if isinstance(layer, nf.Sign):
        th = _theta(c, q1, q2)
        return 1 - 2 * th / np.pi, np.zeros_like(c)
    if isinstance(layer, nf.RectifiedMonomial):
        n = layer.degree
        th = _theta(c, q1, q2)
        s = np.sqrt(q1 * q2)
        j = [np.pi - th, np.sin(th) + (np.pi - th) * np.cos(th),
             3 * np.sin(th) * np.cos(th) + (np.pi - th) * (1 + 2 * np.cos(th) ** 2)]
        # higher orders: J_n = (2n-1) cos θ J_{n-1} + (n-1)² sin²θ J_{n-2} (checked by quadrature)
        for k in range(3, n + 1):
            j.append((2 * k - 1) * np.cos(th) * j[k - 1] + (k - 1) ** 2 * np.sin(th) ** 2 * j[k - 2])
        e = s ** n * j[n] / (2 * np.pi)
        de = np.zeros_like(c) if n == 0 else n * n * s ** (n - 1) * j[n - 1] / (2 * np.pi)
        return e, de
    if isinstance(layer, (nf.Polynomial, nf.Monomial)):
        coef = list(layer.coef) if isinstance(layer, nf.Polynomial) else [0.0] * layer.degree + [1.0]
        dcoef = [k * coef[k] for k in range(1, len(coef))]
        e = _poly_dual(coef, c, q1, q2)
        de = _poly_dual(dcoef, c, q1, q2) if dcoef else 0.0
        return e + np.zeros_like(c), de + np.zeros_like(c)
    if isinstance(layer, nf.Hermite):
        n = layer.degree
        return c ** n, (n * c ** (n - 1) if n else np.zeros_like(c))
    raise NotImplementedError(layer)


def _gabor_dot(c, q1, q2):
    """∂/∂c of the Gabor NNGP, analytically (Price's theorem gives E[φ'(u)φ'(v)])."""
    det = (1 + 2 * q1) * (1 + 2 * q2) - 4 * c ** 2
    ddet = -8 * c
    total = 0.0
    for sign in (+1, -1):
        k1, k2 = 1, -sign  # sign=+1: k = (1, -1) enters with +, k = (1, 1) with -
        num = k1 * k1 * (1 + 2 * q2) + k2 * k2 * (1 + 2 * q1) - 4 * k1 * k2 * c
        dnum = -4 * k1 * k2
        inv = num / det
        dinv = (dnum * det - num * ddet) / det ** 2
        quad = (k1 * k1 + k2 * k2 - inv) / 2
        g = np.exp(-quad / 2)
        dg = g * dinv / 4
        term = 0.5 * (dg / np.sqrt(det) - 0.5 * g * ddet / det ** 1.5)
        total = total + sign * term
    return total


def kernels(net, x1, x2=None):
    """(nngp, ntk) of ``net`` by a plain layer loop on full float64 matrices."""
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    d = x1.shape[1]
    s = x1 @ x2.T / d
    q1 = np.sum(x1 * x1, axis=1) / d
    q2 = np.sum(x2 * x2, axis=1) / d
    # Parallel inputs (duplicates, negated or scaled rows) have |ρ| = 1 exactly; make the rounded
    # Gram say so, or discontinuous activations (Sign, step) amplify ~1e-16 into ~1e-4 errors.
    bound = np.sqrt(np.outer(q1, q2))
    parallel = np.abs(s) >= (1 - 1e-12) * bound
    s = np.where(parallel, np.sign(s) * bound, s)
    t = np.zeros_like(s)
    tq1, tq2 = np.zeros_like(q1), np.zeros_like(q2)
    layers = net.layers if isinstance(net, nf.Serial) else (net,)
    fan_in = d
    for layer in layers:
        if isinstance(layer, nf.Dense):
            w2 = layer.W_std ** 2
            b2 = 0.0 if layer.b_std is None else layer.b_std ** 2
            new = [w2 * m + b2 for m in (s, q1, q2)]
            if layer.parameterization == "ntk":
                t, tq1, tq2 = (new[0] + w2 * t, new[1] + w2 * tq1, new[2] + w2 * tq2)
            else:
                bias = 0.0 if layer.b_std is None else 1.0
                t, tq1, tq2 = (fan_in * s + w2 * t + bias, fan_in * q1 + w2 * tq1 + bias,
                               fan_in * q2 + w2 * tq2 + bias)
            s, q1, q2 = new
            fan_in = layer.out_dim
        elif isinstance(layer, nf.Identity):
            continue
        else:
            Q1, Q2 = q1[:, None], q2[None, :]
            s_new, ds = activation_dual(layer, s, Q1, Q2)
            q1_new, dq1 = activation_dual(layer, q1, q1, q1)
            q2_new, dq2 = activation_dual(layer, q2, q2, q2)
            t, tq1, tq2 = ds * t, dq1 * tq1, dq2 * tq2
            s, q1, q2 = s_new, q1_new, q2_new
    return s, t
