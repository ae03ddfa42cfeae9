"""Baselines the benchmarks compare ntkfast against (importable by compare.py and the asv suite).

- ``numpy_gemm``: NumPy's BLAS ``x @ x.T`` -- the main term of ntkfast's hardware floor.
- ``numpy_kernels``: a plain NumPy implementation of the same kernels: the whole Gram matrix per
  layer with vectorised full-matrix formulas (the way one writes it without ntkfast).
"""
from __future__ import annotations

import numpy as np


def numpy_gemm(x, x2=None):
    return x @ (x if x2 is None else x2).T


def numpy_kernels(x, x2=None, *, depth, activation="relu", W_std=1.5, b_std=0.05):
    """(nngp, ntk) of MLP(depth, activation, W_std, b_std) with full NumPy matrices (float64 or
    float32, as x). Supports 'relu' and 'erf'."""
    x2 = x if x2 is None else x2
    d = x.shape[1]
    w2, b2 = W_std ** 2, b_std ** 2
    s = w2 * (x @ x2.T) / d + b2
    q1 = w2 * np.einsum("ij,ij->i", x, x) / d + b2
    q2 = w2 * np.einsum("ij,ij->i", x2, x2) / d + b2
    t = s.copy()
    for _ in range(depth):
        if activation == "relu":
            norm = np.sqrt(np.outer(q1, q2))
            rho = np.clip(s / norm, -1.0, 1.0)
            theta = np.arccos(rho)
            s_act = norm * (np.sin(theta) + (np.pi - theta) * rho) / (2 * np.pi)
            dot = (np.pi - theta) / (2 * np.pi)
            q1, q2 = q1 / 2, q2 / 2
        elif activation == "erf":
            p1, p2 = 1 + 2 * q1, 1 + 2 * q2
            root = np.sqrt(np.outer(p1, p2))
            s_act = 2 / np.pi * np.arcsin(2 * s / root)
            dot = 4 / np.pi / np.sqrt(np.outer(p1, p2) - 4 * s * s)
            q1, q2 = 2 / np.pi * np.arcsin(2 * q1 / p1), 2 / np.pi * np.arcsin(2 * q2 / p2)
        else:
            raise ValueError(f"numpy_kernels supports relu and erf, not {activation!r}")
        s = w2 * s_act + b2
        t = s + w2 * dot * t
        q1, q2 = w2 * q1 + b2, w2 * q2 + b2
    return s, t
