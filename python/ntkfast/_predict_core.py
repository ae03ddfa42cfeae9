"""The numerical core of :mod:`ntkfast.predict`: one train kernel's factorisations and the
functions of it that the dynamics and posteriors need.

Notation (docs/dynamics.md; Lee et al. 2019, "Wide neural networks of any depth evolve as
linear models under gradient descent"): K̃ = K + λI = V diag(μ) Vᵀ, τ = η t, and
``scale`` is the loss normalisation (N = y_train.size for neural-tangents' mean loss, 1 for
the ½·sum loss), so that the flow is df/dt = −(η/scale) K̃ (f − y). Per eigenvalue:

    decay  = exp(−μ₊ τ/scale)                         (e^{−K̃τ/scale})
    rise   = −expm1(−μ₊ τ/scale) = 1 − decay          (I − e^{−K̃τ/scale})
    growth = rise / μ₊, and τ/scale at μ₊ = 0         (K̃⁻¹ (I − e^{−K̃τ/scale}))

with μ₊ = max(μ, 0): negative eigenvalues within ``psd_tolerance`` are round-off of a positive
semi-definite kernel; below it the kernel is not a kernel (ValueError, see ``check_psd``).
The λ → 0 limit keeps growth finite where neural-tangents divides 0 by 0.

At τ = ∞ the limit is taken in exact arithmetic for a Gram matrix: eigenvalues at or below
``null_tol`` = n·ε·μ_max are the numerical null space of K̃; for a Gram matrix of feature
maps, K(x*, X) v = 0 for such v, so they contribute nothing (pseudo-inverse semantics) and
the training outputs keep their initial component there (decay = 1).
"""
from __future__ import annotations

import numpy as np

_MISSING = object()

#: A PSD kernel's computed eigenvalues can be negative by round-off: backward-stable ``eigh``
#: errs by O(n·ε·‖K‖₂), and a kernel whose entries carry relative errors of a few ε is within
#: n·(few ε)·max|K| ≤ few·n·ε·λ_max of an exact one. Measured on rank-deficient ntkfast kernels
#: (duplicate points, N ≫ n_features, float32 and float64, N ≤ 2000): at most 0.2·n·ε·λ_max.
#: Eigenvalues below −PSD_TOL_FACTOR·n·ε·max|μ| are therefore a kernel that is not PSD.
PSD_TOL_FACTOR = 10.0


def psd_tolerance(n, eps, scale):
    """The most negative eigenvalue accepted as round-off for an n x n kernel with largest
    eigenvalue magnitude ``scale``: PSD_TOL_FACTOR · n · ε · scale."""
    return PSD_TOL_FACTOR * max(n, 1) * eps * scale


def check_psd(lowest, highest, n, eps, name, reg=0.0):
    """ValueError naming the kernel unless ``lowest`` (its smallest eigenvalue, of K + reg·I)
    is at least −psd_tolerance: gradient flow along a negative eigenvalue diverges, and clipping
    it would silently freeze those outputs instead."""
    tol = psd_tolerance(n, eps, max(abs(lowest), abs(highest)))
    if lowest >= -tol:
        return
    found = (f"it has eigenvalue {lowest:.6g} (largest {highest:.6g})" if not reg else
             f"{name} + {reg:.6g}·I (diag_reg) has eigenvalue {lowest:.6g} (largest "
             f"{highest:.6g}), i.e. {name} has eigenvalue {lowest - reg:.6g}")
    raise ValueError(f"{name} must be positive semi-definite (a kernel matrix), but {found}; "
                     f"round-off allows eigenvalues down to -{tol:.3g} "
                     f"(= {PSD_TOL_FACTOR:g}·n·eps·max|eigenvalue|)")


def batched_products(xp, lefts, factors, rhs):
    """lefts[0] @ ... @ lefts[-1] @ (factors[t][:, None] * rhs) for every t, as one GEMM per
    left factor (never a Python loop over times).

    Parameters
    ----------
    lefts : sequence of arrays, the last of shape (p, n)
    factors : (T, n) array
    rhs : (n, k) array

    Returns
    -------
    (T, p0, k) array, p0 = lefts[0].shape[0]
    """
    n_times, n = factors.shape
    k = rhs.shape[1]
    scaled = factors.T[:, :, None] * rhs[:, None, :]  # (n, T, k): slab t scales the rows of rhs
    out = scaled.reshape(n, n_times * k)
    for left in reversed(lefts):
        out = left @ out
    return xp.ascontiguousarray(out.reshape(out.shape[0], n_times, k).transpose(1, 0, 2))


def symmetrize(xp, a):
    """(a + aᵀ)/2 on the last two axes: exact symmetry, changed by rounding only."""
    return 0.5 * (a + xp.swapaxes(a, -1, -2))


class KernelSystem:
    """K̃ = K + λI for one train kernel, with ``eigh`` and Cholesky computed on first use.

    Parameters
    ----------
    backend : _predict_linalg.Backend
    k : (n, n) array
        The (validated, symmetric) train kernel; never modified.
    reg : float
        λ, the absolute diagonal regulariser.
    name : str
        The kernel's argument name, for the positive semi-definiteness error.
    """

    def __init__(self, backend, k, reg, name="k_train_train"):
        self.backend = backend
        self.xp = backend.xp
        self.k = k
        self.reg = float(reg)
        self.name = name
        self.n = k.shape[0]
        self.eps = float(np.finfo(k.dtype).eps)
        self._eig = None
        self._chol = _MISSING
        self._projections = {}

    # -- factorisations ------------------------------------------------------------------------

    @property
    def eig(self):
        """(μ, V): eigenvalues (ascending) and eigenvectors of K̃, computed once; a ValueError
        where K̃ has an eigenvalue below round-off (not a kernel)."""
        if self._eig is None:
            mu, v = self.backend.eigh(self.k, self.reg)
            if mu.shape[0]:
                check_psd(float(mu[0]), float(mu[-1]), self.n, self.eps, self.name, self.reg)
            self._eig = (mu, v)
        return self._eig

    @property
    def null_tol(self):
        """Eigenvalues of K̃ at or below this are numerically zero (n·ε·μ_max)."""
        mu = self.eig[0]
        top = float(mu[-1]) if mu.shape[0] else 0.0
        return max(self.n, 1) * self.eps * max(top, 0.0)

    @property
    def cholesky(self):
        """Lower Cholesky factor of K̃, or None where K̃ is numerically singular (reciprocal
        condition number below n·ε): the solves then use the eigendecomposition's
        pseudo-inverse instead, which stays finite and is the t → ∞ limit of the flow.

        A factorisation that succeeds proves K̃ numerically positive definite; one that fails
        (an indefinite K̃ always does) falls back to ``eig``, which checks the eigenvalues."""
        if self._chol is _MISSING:
            factor, rcond = self.backend.cholesky(self.k, self.reg)
            if factor is not None and rcond < max(self.n, 1) * self.eps:
                factor = None
            if factor is None:
                self.eig  # noqa: B018 - raises for a kernel that is not PSD
            self._chol = factor
        return self._chol

    @property
    def singular(self):
        return self.cholesky is None

    def to_eigenbasis(self, b, key=None):
        """Vᵀ b; with a ``key``, computed once and cached (the targets, projected once)."""
        if key is None:
            return self.eig[1].T @ b
        if key not in self._projections:
            self._projections[key] = self.eig[1].T @ b
        return self._projections[key]

    # -- t = ∞: solves -------------------------------------------------------------------------

    def _pinv_eigenvalues(self, power):
        mu, _ = self.eig
        keep = mu > self.null_tol
        safe = self.xp.where(keep, mu, 1.0)
        return self.xp.where(keep, safe ** power, 0.0)

    def solve(self, b):
        """K̃⁻¹ b (K̃⁺ b where K̃ is numerically singular); b of shape (n, r)."""
        factor = self.cholesky
        if factor is not None:
            st = self.backend.solve_triangular
            return st(factor, st(factor, b, lower=True, trans=0), lower=True, trans=1)
        mu, v = self.eig
        return v @ (self._pinv_eigenvalues(-1.0)[:, None] * (v.T @ b))

    def half_solve(self, b):
        """W with bᵀ K̃⁻¹ b = Wᵀ W (L⁻¹ b, or diag(μ^{-1/2}) Vᵀ b on the numerical range)."""
        factor = self.cholesky
        if factor is not None:
            return self.backend.solve_triangular(factor, b, lower=True, trans=0)
        _, v = self.eig
        return self._pinv_eigenvalues(-0.5)[:, None] * (v.T @ b)

    def null_projection(self, b):
        """P₀ b, the part of b in the numerical null space of K̃ (zero when it is regular)."""
        if not self.singular:
            return self.xp.zeros_like(b)
        mu, v = self.eig
        null = (mu <= self.null_tol).astype(v.dtype)
        return v @ (null[:, None] * (v.T @ b))

    # -- finite t: functions of the eigenvalues ------------------------------------------------

    def time_factors(self, tau, scale):
        """(decay, rise, growth), each (T, n), for the times τ (T,) (τ = ∞ allowed)."""
        xp = self.xp
        mu, _ = self.eig
        mu_pos = xp.maximum(mu, 0.0)
        tau = xp.asarray(tau, dtype=mu.dtype)[:, None]
        finite = xp.isfinite(tau)
        tau_f = xp.where(finite, tau, 0.0)
        time = tau_f / scale
        with np.errstate(over="ignore"):  # μ·τ = inf at absurd times: e^{-x} = 0, rise = 1
            x = mu_pos[None, :] * time
        rise = -xp.expm1(-x)
        decay = xp.exp(-x)
        # growth = rise/μ. For x < 1 it is written time·(1 − e^{−x})/x, whose limit 1 at x = 0
        # also covers a tiny μ > 0 whose μ·time underflows; for x ≥ 1 (μ ≥ 1/time > 0) as rise/μ,
        # which stays right where x overflows.
        small = x < 1
        growth = xp.where(small, time * xp.where(x > 0, rise / xp.where(x > 0, x, 1.0), 1.0),
                          rise / xp.where(small, 1.0, mu_pos[None, :]))
        if not bool(finite.all()):
            trained = (mu > self.null_tol)[None, :]
            inv = xp.where(trained, 1.0 / xp.where(trained, mu, 1.0), 0.0)
            decay = xp.where(finite, decay, xp.where(trained, 0.0, 1.0))
            rise = xp.where(finite, rise, xp.where(trained, 1.0, 0.0))
            growth = xp.where(finite, growth, inv)
        return decay, rise, growth
