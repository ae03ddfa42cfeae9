"""Iterative solvers on a symmetric positive semi-definite kernel operator, for kernels too large
to hold or to eigendecompose.

They touch the kernel only through a small operator protocol (the matrix-free
``ntkfast.KernelOperator`` has it; :class:`DenseOperator` wraps an in-memory matrix)::

    op.shape -> (n, n)      op.dtype            op.diagonal() -> (n,) float64 = diag(K)
    op.matmat(V) -> K @ V   (V: (n, k) float64, result (n, k) float64)
    op.columns(idx) -> K[:, idx]  ((n, len(idx)) float64)

* :func:`nystrom_preconditioner` -- a rank-r Nyström approximation K̂ ≈ K by block randomly
  pivoted Cholesky (Chen, Epperly, Tropp & Webber 2023), applied as a preconditioner for
  K + shift·I (Frangella, Tropp & Udell 2023; Díaz, Epperly, Frangella, Tropp & Webber 2023);
* :func:`block_cg` -- (K + shift·I) X = B for many right-hand sides: independent preconditioned
  conjugate gradient recurrences (Hestenes & Stiefel 1952), one per column, sharing one
  ``matmat`` per iteration;
* :func:`lanczos_functions` -- f(K + shift·I) b for many functions f sharing one Krylov basis
  (Lanczos with full reorthogonalisation; Saad 1992, Higham 2008 ch. 13);
* :func:`dynamics_functions` -- the functions of ntkfast.predict's gradient-flow dynamics,
  e^{−λτ/N} and (1 − e^{−λτ/N})/λ, for many times at once, in predict's convention.

Every solver works in float64 whatever the kernel's dtype; ``op.dtype`` only sets the default
tolerance (:func:`default_tol`). None of them returns an answer that missed its tolerance
silently: they raise :class:`ConvergenceError` (or warn, with ``on_nonconvergence="warn"``).
"""
from __future__ import annotations

import dataclasses
import numbers
import time
import warnings

import numpy as np

from ._predict_checks import real_scalar
from ._predict_core import KernelSystem

__all__ = ["ConvergenceError", "DenseOperator", "NystromPreconditioner", "SolveInfo",
           "LanczosInfo", "DynamicsFunctions", "nystrom_preconditioner", "block_cg",
           "lanczos_functions", "dynamics_functions", "default_tol"]


class ConvergenceError(RuntimeError):
    """An iterative solver did not reach its tolerance.

    Attributes
    ----------
    residuals : ndarray
        The achieved relative residuals (block_cg) or error estimates (lanczos_functions), per
        right-hand side (and function).
    info : SolveInfo or LanczosInfo or None
        The solver's report for the returned best iterate.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((300, 5))
    >>> op = ntkfast.KernelOperator(x, net=ntkfast.MLP(2), storage="memory")
    >>> fn = ntkfast.predict.gradient_descent_mse(op, np.ones((300, 1)), maxiter=2,
    ...                                           preconditioner_rank=0)
    >>> try:
    ...     fn(t=None, fx_train_0=None, fx_test_0=0.0, k_test_train=op)
    ... except ntkfast.ConvergenceError as error:
    ...     print(type(error.residuals).__name__)
    ndarray
    """

    def __init__(self, message, residuals=None, info=None):
        super().__init__(message)
        self.residuals = residuals
        self.info = info


def default_tol(dtype):
    """The default relative tolerance for an operator of this dtype: 1e-10 for float64 (and
    wider), 1e-5 for float32 and narrower. A float32 kernel's entries carry relative errors of
    ~6e-8, so a residual below ~1e-5 would only fit its rounding noise more closely."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize < 8:
        return 1e-5
    return 1e-10


# ----------------------------------------------------------------------------------------------
# The operator protocol.

class DenseOperator:
    """The operator protocol for an in-memory symmetric matrix ``k`` (NumPy, not copied).

    Parameters
    ----------
    k : (n, n) array
        Symmetric positive semi-definite (not checked: O(n²) per check).
    """

    def __init__(self, k):
        arr = np.asarray(k)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"k must be a real matrix, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise ValueError(f"k must be a square (n, n) matrix, got shape {arr.shape}")
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float64)
        self.k = arr
        self.shape = arr.shape
        self.dtype = arr.dtype

    def matmat(self, v):
        return np.asarray(self.k @ np.asarray(v, dtype=np.float64), dtype=np.float64)

    def diagonal(self):
        return np.diagonal(self.k).astype(np.float64)

    def columns(self, idx):
        return np.asarray(self.k[:, np.asarray(idx, dtype=np.intp)], dtype=np.float64)

    def __repr__(self):
        return f"DenseOperator(shape={self.shape}, dtype={self.dtype})"


def _check_operator(op, name="op", need=("matmat",)):
    shape = getattr(op, "shape", None)
    try:
        n1, n2 = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a kernel operator with .shape (n, n), .matmat(V), "
                        f".diagonal() and .columns(idx) (e.g. DenseOperator(k) or "
                        f"ntkfast.KernelOperator), got {type(op).__name__}") from None
    if n1 != n2 or n1 < 1:
        raise ValueError(f"{name} must be a square, non-empty operator, got shape {tuple(shape)}")
    for method in need:
        if not callable(getattr(op, method, None)):
            raise TypeError(f"{name} must have a callable .{method}() (the kernel operator "
                            f"protocol), {type(op).__name__} has none")
    return n1


def _op_dtype(op):
    try:
        return np.dtype(getattr(op, "dtype", np.float64))
    except TypeError:
        return np.dtype(np.float64)


def _matmat(op, v, shift, what):
    """(K + shift·I) V, checked: a NaN or Inf from the operator is an error, not an iterate."""
    out = np.asarray(op.matmat(np.ascontiguousarray(v)), dtype=np.float64)
    if out.shape != v.shape:
        raise ValueError(f"op.matmat returned shape {out.shape} for input of shape {v.shape}; "
                         "expected the same shape")
    if shift:
        out = out + shift * v
    if not np.isfinite(out).all():
        raise FloatingPointError(f"op.matmat returned NaN or Inf ({what}); the kernel operator "
                                 "or the right-hand side is not finite")
    return out


def _rhs(b, n, name):
    """b as a float64 (n, k) array and whether it was 1-D."""
    if isinstance(b, (str, bytes)) or b is None:
        raise TypeError(f"{name} must be an array of shape (n,) or (n, k), got {type(b).__name__}")
    arr = np.asarray(b)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k) to match the operator's "
                         f"shape ({n}, {n}), got shape {arr.shape}")
    arr = np.array(arr, dtype=np.float64, ndmin=1, copy=True).reshape(n, -1)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr, np.ndim(b) == 1


def _tol(tol, op, name="tol"):
    if tol is None:
        return default_tol(_op_dtype(op))
    tol = real_scalar(tol, name)
    if not 0 < tol < 1:
        raise ValueError(f"{name} must be in (0, 1) (a relative tolerance), got {tol!r}")
    return tol


def _positive_int(value, name, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")
    return int(value)


def _nonconvergence_policy(value):
    if value not in ("raise", "warn"):
        raise ValueError(f"on_nonconvergence must be 'raise' or 'warn', got {value!r}")
    return value


def _rng(rng):
    if rng is None:
        return np.random.default_rng(0)  # reproducible by default: same preconditioner per run
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {rng!r}")


class _Bar:
    """A tqdm bar (progress=True), closed however the loop ends."""

    def __init__(self, progress, total, desc):
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True)

    def update(self, value, **postfix):
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.2e}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(value)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------
# Nyström preconditioner.

class NystromPreconditioner:
    """P⁻¹ for K + shift·I from a Nyström approximation K̂ = U diag(Λ) Uᵀ (U: n x r orthonormal):

        P⁻¹ = U (Λ + shift)⁻¹ Uᵀ + (I − U Uᵀ) / (ρ + shift)

    the form of Frangella, Tropp & Udell 2023 ("Randomized Nyström preconditioning", divided by
    the scalar λ_r + shift, to which CG is invariant) with ρ = λ_r = min Λ: the complement,
    where K + shift·I acts with eigenvalues in [shift, shift + ‖K − K̂‖], is scaled like the
    bottom of the captured spectrum, and P⁻¹ stays defined at shift = 0. (ρ = ‖K − K̂‖'s lower
    bound max_i (K − K̂)_ii, the Woodbury form's choice at shift → 0, measured 2x more
    iterations on the digits NTK.) Where K̂ = K to round-off (rank(K) ≤ r), ρ = 0: P = K + shift·I
    exactly (one CG iteration); at shift = 0 ρ is then λ_r again (two iterations: consistent
    right-hand sides lie in range(U) up to round-off).

    Attributes: ``U`` (n, r), ``eigenvalues`` Λ (r,), ``shift``, ``rho``, ``rank`` (r, the
    numerical rank reached, which can be below the requested one), ``pivots`` (selected
    indices), ``residual_trace`` tr(K − K̂), ``residual_max`` max_i (K − K̂)_ii.
    """

    def __init__(self, u, eigenvalues, shift, rho, pivots, residual_trace, residual_max):
        self.U = u
        self.eigenvalues = eigenvalues
        self.shift = float(shift)
        self.rho = float(rho)
        self.pivots = pivots
        self.residual_trace = float(residual_trace)
        self.residual_max = float(residual_max)
        self.rank = int(eigenvalues.shape[0])
        self._inner = 1.0 / (eigenvalues + self.shift)
        self._outer = 1.0 / (self.rho + self.shift)

    @property
    def shape(self):
        return (self.U.shape[0], self.U.shape[0])

    def apply(self, r):
        """P⁻¹ R for R of shape (n,) or (n, k)."""
        r = np.asarray(r, dtype=np.float64)
        coef = self.U.T @ r
        scale = (self._inner - self._outer)
        coef = coef * (scale[:, None] if coef.ndim == 2 else scale)
        return self.U @ coef + self._outer * r

    __call__ = apply

    def __repr__(self):
        return (f"NystromPreconditioner(n={self.U.shape[0]}, rank={self.rank}, "
                f"shift={self.shift:g}, rho={self.rho:.3g})")


def nystrom_preconditioner(op, rank, shift, *, rng=None, method="rpcholesky", block_size=128):
    """A rank-``rank`` Nyström preconditioner for K + shift·I.

    K̂ = F Fᵀ is built from ``op.diagonal()`` and ``op.columns(idx)`` only (O(n·rank) memory,
    ``rank`` kernel columns in calls of at most ``block_size`` columns):

    * ``method="rpcholesky"`` (default): block randomly pivoted Cholesky (Chen, Epperly, Tropp &
      Webber 2023): each block samples pivots with probability proportional to the diagonal of
      the residual K − F Fᵀ, so points the factor already explains (duplicates, near-duplicates)
      are not picked again; within a block the pivot submatrix is factored by a truncated
      eigendecomposition, which drops dependent pivots (e.g. duplicates drawn together).
      Stops early, with a lower rank, once the residual diagonal is at round-off level
      (rank(K) < ``rank``).
    * ``method="uniform"``: ``rank`` landmarks drawn uniformly without replacement, K̂ =
      C W⁺ Cᵀ (the classical Nyström method; no adaptivity, for comparison or as a fallback).

    Then F = U Σ Vᵀ (thin SVD) gives K̂ = U Σ² Uᵀ; see :class:`NystromPreconditioner` for how
    it is applied.

    Parameters
    ----------
    op : kernel operator (n x n, PSD)
    rank : int
        Requested rank, 1 ≤ rank ≤ n.
    shift : float
        ≥ 0, the shift of the system K + shift·I to be preconditioned.
    rng : None, int or numpy.random.Generator
        None uses a fixed seed (0): the same preconditioner on every run.
    method : {'rpcholesky', 'uniform'}
    block_size : int
        Pivots per ``op.columns`` call (each call is one kernel evaluation of n x block_size).

    Returns
    -------
    NystromPreconditioner
    """
    n = _check_operator(op, need=("diagonal", "columns"))
    rank = _positive_int(rank, "rank", maximum=n)
    shift = real_scalar(shift, "shift", minimum=0.0)
    block_size = _positive_int(block_size, "block_size")
    if method not in ("rpcholesky", "uniform"):
        raise ValueError(f"method must be 'rpcholesky' or 'uniform', got {method!r}")
    gen = _rng(rng)
    diag = np.asarray(op.diagonal(), dtype=np.float64).reshape(-1)
    if diag.shape != (n,):
        raise ValueError(f"op.diagonal() returned shape {diag.shape}, expected ({n},)")
    if not np.isfinite(diag).all():
        raise FloatingPointError("op.diagonal() contains NaN or Inf")
    if (diag < 0).any():
        i = int(diag.argmin())
        raise ValueError(f"op must be positive semi-definite, but its diagonal entry {i} is "
                         f"{diag[i]:.6g} < 0")
    eps = float(np.finfo(np.float64).eps)
    top = float(diag.max())
    # a residual diagonal entry (a Schur complement) at or below this is round-off of zero:
    # the kernel's entries carry ~ε·max diag errors, which the elimination accumulates.
    floor = 10.0 * max(n, 1) * eps * top if top > 0 else 0.0

    def columns(idx):
        cols = np.asarray(op.columns(idx), dtype=np.float64)
        if cols.shape != (n, len(idx)):
            raise ValueError(f"op.columns returned shape {cols.shape} for {len(idx)} indices, "
                             f"expected ({n}, {len(idx)})")
        if not np.isfinite(cols).all():
            raise FloatingPointError("op.columns returned NaN or Inf")
        return cols

    factor = np.zeros((n, rank))
    k = 0
    pivots = []
    residual = diag.copy()
    if method == "uniform":
        chosen = np.sort(gen.choice(n, size=rank, replace=False))
        c = np.empty((n, rank))
        for start in range(0, rank, block_size):
            c[:, start:start + block_size] = columns(chosen[start:start + block_size])
        k = _append_nystrom(factor, 0, c, chosen, floor)
        pivots = list(chosen)
        residual = np.maximum(diag - np.einsum("ij,ij->i", factor[:, :k], factor[:, :k]), 0.0)
    else:
        while k < rank:
            candidates = np.flatnonzero(residual > floor)
            total = float(residual[candidates].sum())
            if candidates.size == 0 or total <= floor:
                break  # K̂ = K to round-off: rank(K) < requested rank
            size = min(block_size, rank - k, candidates.size)
            prob = residual[candidates] / total
            chosen = np.sort(gen.choice(candidates, size=size, replace=False, p=prob))
            # residual columns (K − F Fᵀ)[:, S]: the Schur complement the next pivots factor
            g = columns(chosen) - factor[:, :k] @ factor[chosen, :k].T
            added = _append_nystrom(factor, k, g, chosen, floor)
            if added == 0:
                break  # every sampled pivot was dependent: the residual is round-off
            pivots.extend(chosen.tolist())
            residual -= np.einsum("ij,ij->i", factor[:, k:k + added], factor[:, k:k + added])
            np.maximum(residual, 0.0, out=residual)
            k += added
    f = factor[:, :k]
    if k:
        # K̂ = F Fᵀ = U Λ Uᵀ from the r×r Gram FᵀF = W Λ Wᵀ, U = F W Λ^{-1/2}: two GEMMs and an
        # r×r eigh instead of an n×r SVD (5 s → 0.5 s at n = 5000, r = 1000 here). Squaring
        # the condition number is harmless: eigenvalues below the floor are dropped anyway.
        lam, w = np.linalg.eigh(f.T @ f)
        keep = lam > max(floor, lam.max(initial=0.0) * f.shape[0] * np.finfo(float).eps)
        lam, w = lam[keep], w[:, keep]
        u = (f @ w) / np.sqrt(lam)
    else:
        u, lam = np.zeros((n, 0)), np.zeros(0)
    residual_max = float(residual.max())
    exact = residual_max <= floor or not lam.size
    rho = 0.0 if exact else float(lam.min())
    if rho + shift <= 0.0:  # shift = 0 and K̂ = K: Frangella's λ_r keeps P⁻¹ defined (a smaller
        # ρ would amplify the round-off part of consistent right-hand sides outside range(U))
        rho = float(lam.min()) if lam.size else (top or 1.0)
    return NystromPreconditioner(u, lam, shift, rho, np.asarray(pivots, dtype=np.intp),
                                 float(residual.sum()), residual_max)


def _append_nystrom(factor, k, g, chosen, floor):
    """Append G H⁺^{1/2} to factor[:, k:] where H = G[chosen] (the pivot block of the residual),
    through a truncated eigendecomposition of H: eigenvalues at round-off level (dependent
    pivots, duplicate points) are dropped, not inverted. Returns the number of columns added."""
    h = g[chosen]
    h = 0.5 * (h + h.T)
    w, v = np.linalg.eigh(h)
    keep = w > max(floor, h.shape[0] * np.finfo(float).eps * max(float(w[-1]), 0.0))
    if not keep.any():
        return 0
    added = int(keep.sum())
    factor[:, k:k + added] = g @ (v[:, keep] / np.sqrt(w[keep]))
    return added


# ----------------------------------------------------------------------------------------------
# Conjugate gradients.

@dataclasses.dataclass
class SolveInfo:
    """What :func:`block_cg` did.

    iterations : int -- CG iterations (matmats of the recurrence; the most any column needed)
    iterations_per_column : ndarray of int
    residuals : ndarray -- true relative residuals ‖B − (K + shift·I)X‖/‖B‖ per column,
        recomputed from the returned X with one extra matmat (0 for a zero column)
    converged : bool -- every column's true residual ≤ tol
    converged_columns : ndarray of bool
    matmats : int -- calls of op.matmat (the recurrence, the final check and any restarts)
    elapsed : float -- seconds
    tol : float
    restarts : int -- restarts from the true residual (where the recurrence drifted from it)
    """

    iterations: int
    iterations_per_column: np.ndarray
    residuals: np.ndarray
    converged: bool
    converged_columns: np.ndarray
    matmats: int
    elapsed: float
    tol: float
    restarts: int = 0


def _default_maxiter(n):
    # Exact arithmetic needs at most n iterations; ill-conditioned kernels in floating point may
    # need somewhat more, but past ~2000 matmats (each a full kernel evaluation for a
    # matrix-free operator) a preconditioner is the answer, not more iterations.
    return max(10, min(2 * n, 2000))


def block_cg(op, B, *, shift=0.0, precond=None, tol=None, maxiter=None, x0=None, progress=False,
             callback=None, on_nonconvergence="raise"):
    """Solve (K + shift·I) X = B for all columns of B by preconditioned conjugate gradients.

    One standard PCG recurrence per column (Hestenes & Stiefel 1952), advanced together so that
    each iteration costs one ``op.matmat`` on the still-active columns; each column stops when
    its own residual is small. (True block CG, O'Leary 1980, shares one Krylov space across
    columns and can converge in fewer iterations, but breaks down when the block's search
    directions become dependent, which happens for correlated targets; independent
    recurrences cannot.)

    Parameters
    ----------
    op : kernel operator (n x n, symmetric positive semi-definite)
    B : array, shape (n,) or (n, k)
    shift : float
        ≥ 0.
    precond : None, NystromPreconditioner, object with .apply(R), or callable(R)
        Applies an approximation of (K + shift·I)⁻¹ to an (n, m) array; must be symmetric
        positive definite.
    tol : float, optional
        Relative residual per column, ‖b − (K + shift·I)x‖ ≤ tol·‖b‖. Default
        :func:`default_tol` of op.dtype: 1e-10 (float64), 1e-5 (float32).
    maxiter : int, optional
        Default max(10, min(2n, 2000)).
    x0 : array like B, optional
        Initial guess (default 0).
    progress : bool
        A tqdm bar with the iteration and the largest relative residual of the active columns.
    callback : callable(iteration, residuals), optional
        Called after every iteration with the recurrence's relative residuals (k,). It may raise
        (e.g. KeyboardInterrupt) to stop: nothing is left half-updated (all state is local).
    on_nonconvergence : {'raise', 'warn'}
        'raise' (default): :class:`ConvergenceError` when a column misses ``tol``. 'warn': a
        RuntimeWarning, and X holds each column's best iterate.

    Returns
    -------
    X : ndarray, shape of B
    info : SolveInfo
        With the true residuals, recomputed from X.

    Raises
    ------
    ConvergenceError
        A column did not reach ``tol`` within ``maxiter``, or its recurrence broke down (on a
        singular K + shift·I with B outside its range: an inconsistent system has no solution).
    FloatingPointError
        The operator or preconditioner produced NaN or Inf.
    """
    t_start = time.perf_counter()
    n = _check_operator(op)
    b, vector = _rhs(B, n, "B")
    shift = real_scalar(shift, "shift", minimum=0.0)
    tol = _tol(tol, op)
    maxiter = _default_maxiter(n) if maxiter is None else _positive_int(maxiter, "maxiter")
    policy = _nonconvergence_policy(on_nonconvergence)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable(iteration, residuals) or None, got "
                        f"{type(callback).__name__}")
    apply = _preconditioner(precond, n)
    k = b.shape[1]
    if x0 is None:
        x = np.zeros_like(b)
    else:
        x, _ = _rhs(x0, n, "x0")
        if x.shape != b.shape:
            raise ValueError(f"x0 must have the shape of B, {np.shape(B)}, got {np.shape(x0)}")

    bnorm = np.linalg.norm(b, axis=0)
    nonzero = bnorm > 0
    x[:, ~nonzero] = 0.0  # the solution of a zero right-hand side is 0, whatever x0
    safe_bnorm = np.where(nonzero, bnorm, 1.0)
    target = tol * bnorm
    matmats = 0
    iterations = np.zeros(k, dtype=np.int64)
    total_iterations = 0
    restarts = 0
    broke_down = np.zeros(k, dtype=bool)
    bar = _Bar(progress, maxiter, "block_cg")
    try:
        # r = b − A x (one matmat only where x0 is nonzero)
        if x0 is not None and np.any(x[:, nonzero]):
            r = b - _matmat(op, x, shift, "initial residual")
            matmats += 1
        else:
            r = b.copy()
        best_x = x.copy()
        best_norm = np.linalg.norm(r, axis=0)
        true_norm = best_norm.copy()
        settled = ~nonzero | (best_norm <= target)  # columns that take no more iterations
        last_restart = np.full(k, np.inf)
        while not settled.all() and total_iterations < maxiter:
            used = _pcg(op, shift, apply, x, r, ~settled, target, maxiter - total_iterations,
                        best_x, best_norm, iterations, broke_down, bar, callback, safe_bnorm,
                        total_iterations)
            total_iterations += used
            matmats += used
            # the true residual of the best iterates: the recurrence drifts from it by round-off
            cols = np.flatnonzero(nonzero)
            r_true = np.zeros_like(b)
            r_true[:, cols] = b[:, cols] - _matmat(op, best_x[:, cols], shift, "true residual")
            matmats += 1
            true_norm = np.linalg.norm(r_true, axis=0)
            # restart from the true residual where the recurrence claimed convergence (or
            # stopped) but the true residual did not follow -- while restarts still gain 2x
            retry = (nonzero & (true_norm > target) & ~broke_down
                     & (true_norm < 0.5 * last_restart))
            settled = ~retry
            if not retry.any() or total_iterations >= maxiter:
                break
            restarts += 1
            last_restart = np.where(retry, true_norm, last_restart)
            x[:, retry] = best_x[:, retry]
            r[:, retry] = r_true[:, retry]
            best_norm[retry] = true_norm[retry]
    finally:
        bar.close()

    residuals = np.where(nonzero, true_norm / safe_bnorm, 0.0)
    ok = residuals <= tol
    info = SolveInfo(int(total_iterations), iterations, residuals, bool(ok.all()), ok, matmats,
                     time.perf_counter() - t_start, tol, restarts)
    out = best_x[:, 0] if vector else best_x
    if not info.converged:
        bad = np.flatnonzero(~ok)
        worst = int(bad[np.argmax(residuals[bad])])
        why = ("its recurrence broke down (pᵀ(K + shift·I)p ≤ 0: K + shift·I is singular and B "
               "is not in its range, i.e. the system is inconsistent -- use shift > 0 -- or the "
               "operator is not positive semi-definite)" if broke_down[worst] else
               f"maxiter={maxiter} iterations were not enough (the kernel is ill-conditioned: "
               "pass a preconditioner, e.g. nystrom_preconditioner(op, rank, shift), a larger "
               "shift or a larger maxiter)")
        msg = (f"block_cg did not converge for {bad.size} of {k} right-hand side(s): column "
               f"{worst} reached relative residual {residuals[worst]:.3e} > tol = {tol:.3e} "
               f"after {total_iterations} iterations; {why}")
        if policy == "raise":
            raise ConvergenceError(msg, residuals=residuals, info=info)
        warnings.warn(msg + "; returning the best iterate", RuntimeWarning, stacklevel=2)
    return out, info


def _preconditioner(precond, n):
    if precond is None:
        return None
    fn = getattr(precond, "apply", None)
    if fn is None and callable(precond):
        fn = precond
    if not callable(fn):
        raise TypeError(f"precond must be None, an object with .apply(R) (e.g. "
                        f"nystrom_preconditioner(...)) or a callable, got {type(precond).__name__}")
    shape = getattr(precond, "shape", None)
    if shape is not None and tuple(shape) != (n, n):
        raise ValueError(f"precond has shape {tuple(shape)}, but the operator is ({n}, {n})")

    def apply(r):
        z = np.asarray(fn(r), dtype=np.float64)
        if z.shape != r.shape:
            raise ValueError(f"precond returned shape {z.shape} for input of shape {r.shape}")
        if not np.isfinite(z).all():
            raise FloatingPointError("precond returned NaN or Inf")
        return z

    return apply


def _pcg(op, shift, apply, x, r, active, target, budget, best_x, best_norm, iterations,
         broke_down, bar, callback, bnorm, done_before):
    """PCG recurrences for the ``active`` columns (x, r updated in place; the best iterate of
    each column, by recurrence residual, kept in best_x/best_norm). Returns iterations used."""
    cols = np.flatnonzero(active)
    z = r[:, cols] if apply is None else apply(r[:, cols])
    rz = np.einsum("ij,ij->j", r[:, cols], z)
    if apply is not None and not (rz > 0).all():
        raise ValueError("precond is not positive definite: rᵀ P⁻¹ r ≤ 0 for a nonzero residual")
    p = z.copy()
    used = 0
    while cols.size and used < budget:
        ap = _matmat(op, p, shift, f"iteration {done_before + used + 1}")
        used += 1
        pap = np.einsum("ij,ij->j", p, ap)
        ok = pap > 0  # ≤ 0: a direction in the null space of a singular K + shift·I (or not PSD)
        broke_down[cols[~ok]] = True
        alpha = np.where(ok, rz / np.where(ok, pap, 1.0), 0.0)
        x[:, cols] += alpha * p
        r[:, cols] -= alpha * ap
        norms = np.linalg.norm(r[:, cols], axis=0)
        iterations[cols] += 1
        better = ok & (norms < best_norm[cols])
        if better.any():
            best_x[:, cols[better]] = x[:, cols[better]]
            best_norm[cols[better]] = norms[better]
        rel = best_norm / bnorm
        if callback is not None:
            callback(done_before + used, rel.copy())
        bar.update(1, residual=float(np.max(norms / bnorm[cols])))
        keep = ok & (norms > target[cols])
        if not keep.all():
            cols, p, rz = cols[keep], p[:, keep], rz[keep]
            if not cols.size:
                break
        z = r[:, cols] if apply is None else apply(r[:, cols])
        rz_new = np.einsum("ij,ij->j", r[:, cols], z)
        beta = rz_new / rz
        p = z + beta * p
        rz = rz_new
    return used


# ----------------------------------------------------------------------------------------------
# Lanczos approximation of f(K + shift·I) b.

@dataclasses.dataclass
class LanczosInfo:
    """What :func:`lanczos_functions` did.

    steps : ndarray of int -- Lanczos steps (Krylov dimension) per column of b
    error_estimates : ndarray (n_funcs, m) -- estimated ‖error‖ / ‖result‖ per function and
        column: the change of the approximation over the last check interval (0 where the
        Krylov space became invariant, i.e. the result is exact up to round-off)
    converged : bool
    matmats : int
    elapsed : float
    tol : float
    ritz_min, ritz_max : float -- the smallest and largest Ritz value seen at any check, over
        all columns (NaN when no column ran a step). Ritz values of K + shift·I lie inside its
        spectrum, so ritz_min ≥ λ_min and ritz_max ≤ λ_max up to round-off: a clearly negative
        ritz_min proves the operator is not positive semi-definite.
    """

    steps: np.ndarray
    error_estimates: np.ndarray
    converged: bool
    matmats: int
    elapsed: float
    tol: float
    ritz_min: float = float("nan")
    ritz_max: float = float("nan")


#: The smallest Ritz value must have moved by less than this (relative) over the last
#: (1 − _LOOKBACK) fraction of the steps before a column may stop: the difference estimate
#: cannot see eigenvalues the Krylov space has not reached (e^{−λτ} at large τ looks
#: converged at 0 until the small eigenvalues are found).
_RITZ_SETTLED = 1e-2
_LOOKBACK = 0.8


def lanczos_functions(op, b, functions, *, steps=None, tol=None, reorthogonalize=True,
                      shift=0.0, progress=False, callback=None, check_every=5,
                      on_nonconvergence="raise"):
    """f(K + shift·I) b for several functions f at once, by the Lanczos method.

    With Q_k = [q₁ … q_k] (q₁ = b/‖b‖) an orthonormal basis of the Krylov space and
    T_k = Q_kᵀ (K + shift·I) Q_k tridiagonal, f(K + shift·I) b ≈ ‖b‖ Q_k f(T_k) e₁, with
    f(T_k) from the eigendecomposition of T_k (Saad 1992; Higham 2008, ch. 13). All functions
    share the basis, so the dynamics at many times cost one Krylov space. Full
    reorthogonalisation (classical Gram–Schmidt, twice) keeps Q_k orthonormal, so no ghost
    Ritz values; memory is 8·n·steps bytes per column of b.

    Stopping, per column: every ``check_every`` steps the approximation is compared with the
    previous check; the column stops when, for every function, that change is ≤ tol·‖result‖
    (plus a round-off floor n·ε·‖b‖·max|f(Ritz values)|) at two consecutive checks and the
    smallest Ritz value has settled (changed < 1% over the last 20% of steps), or when the
    Krylov space becomes invariant (the result is then exact up to round-off).

    Parameters
    ----------
    op : kernel operator (n x n, symmetric positive semi-definite)
    b : array, shape (n,) or (n, m)
        One Lanczos process per column; they share each ``op.matmat``.
    functions : callable(λ) -> (len(λ), n_funcs) array
        Vectorised over the eigenvalue array λ (1-D float64) and over all functions at once
        (e.g. :func:`dynamics_functions`).
    steps : int, optional
        Maximum Krylov dimension, default min(n, 1000).
    tol : float, optional
        Relative accuracy per function, default :func:`default_tol` (1e-10 float64, 1e-5
        float32).
    reorthogonalize : bool
        Full reorthogonalisation (default). Without it (O(n) memory for the recurrence, but
        the basis is still stored) the basis loses orthogonality as Ritz values converge.
    shift : float
        ≥ 0.
    progress : bool
        tqdm bar with the step and the largest error estimate.
    callback : callable(step, estimates), optional
        Called at every check with the (n_funcs, m) relative error estimates.
    check_every : int
        Steps between checks (each costs an eigendecomposition of the k x k T_k per column).
    on_nonconvergence : {'raise', 'warn'}

    Returns
    -------
    Y : ndarray, shape (n_funcs, n) for 1-D b, (n_funcs, n, m) for 2-D b
    info : LanczosInfo
    """
    t_start = time.perf_counter()
    n = _check_operator(op)
    bb, vector = _rhs(b, n, "b")
    if not callable(functions):
        raise TypeError(f"functions must be callable(eigenvalues) -> (len(eigenvalues), n_funcs) "
                        f"array, got {type(functions).__name__}")
    steps = min(n, 1000) if steps is None else _positive_int(steps, "steps")
    steps = min(steps, n)  # the Krylov space cannot exceed n dimensions
    tol = _tol(tol, op)
    shift = real_scalar(shift, "shift", minimum=0.0)
    check_every = _positive_int(check_every, "check_every")
    policy = _nonconvergence_policy(on_nonconvergence)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable(step, estimates) or None, got "
                        f"{type(callback).__name__}")
    reorthogonalize = bool(reorthogonalize)

    m = bb.shape[1]
    eps = float(np.finfo(np.float64).eps)
    beta0 = np.linalg.norm(bb, axis=0)
    n_funcs = _evaluate(functions, np.array([1.0, 2.0]) + shift).shape[1]
    result = np.zeros((n_funcs, n, m))
    estimates = np.zeros((n_funcs, m))
    steps_done = np.zeros(m, dtype=np.int64)
    converged = beta0 == 0  # f(K)·0 = 0
    cap = min(steps + 1, 64)
    q = np.empty((m, cap, n))  # per column, a contiguous basis (reorthogonalisation is GEMV)
    alpha = np.zeros((m, steps))
    beta = np.zeros((m, steps))
    theta_min = np.full((m, steps), np.nan)
    prev = [None] * m  # coefficients at the previous check
    prev_ok = np.zeros(m, dtype=bool)
    exact = np.zeros(m, dtype=bool)
    active = ~converged
    q[active, 0] = (bb[:, active] / np.where(active, beta0, 1.0)[active]).T
    matmats = 0
    ritz_min, ritz_max = np.inf, -np.inf
    bar = _Bar(progress, steps, "lanczos")
    try:
        for j in range(steps):
            cols = np.flatnonzero(active)
            if not cols.size:
                break
            if j + 1 >= q.shape[1]:
                grown = np.empty((m, min(2 * q.shape[1], steps + 1), n))
                grown[:, :j + 1] = q[:, :j + 1]
                q = grown
            w = _matmat(op, q[cols, j].T, shift, f"Lanczos step {j + 1}").T.copy()  # (a, n)
            matmats += 1
            for i, c in enumerate(cols):
                a = float(q[c, j] @ w[i])
                w[i] -= a * q[c, j]
                if j:
                    w[i] -= beta[c, j - 1] * q[c, j - 1]
                if reorthogonalize:
                    basis = q[c, :j + 1]
                    for _ in range(2):  # "twice is enough" (Giraud, Langou & Rozložník 2005)
                        w[i] -= basis.T @ (basis @ w[i])
                alpha[c, j] = a
                beta[c, j] = float(np.linalg.norm(w[i]))
            steps_done[cols] = j + 1
            # invariant Krylov space (or the full space): T_k carries all of b, the result is exact
            scale_t = np.max(np.abs(alpha[cols, :j + 1]), axis=1) + np.max(beta[cols, :j + 1],
                                                                          axis=1)
            invariant = (beta[cols, j] <= max(n, 10) * eps * scale_t) | (j + 1 == n)
            for i, c in enumerate(cols):
                if not invariant[i]:
                    q[c, j + 1] = w[i] / beta[c, j]
            check = (j + 1) % check_every == 0 or j + 1 == steps
            for i, c in enumerate(cols):
                if not (check or invariant[i]):
                    continue
                coef, ritz, fmax = _krylov_coefficients(functions, alpha[c, :j + 1],
                                                        beta[c, :j], n_funcs)
                theta_min[c, j] = ritz[0]
                ritz_min, ritz_max = min(ritz_min, ritz[0]), max(ritz_max, ritz[-1])
                norm = beta0[c] * np.linalg.norm(coef, axis=0)
                if invariant[i]:
                    exact[c] = True
                    estimates[:, c] = 0.0
                    done = True
                else:
                    if prev[c] is None:
                        change = np.full(n_funcs, np.inf)
                    else:
                        diff = coef.copy()
                        diff[:prev[c].shape[0]] -= prev[c]
                        change = beta0[c] * np.linalg.norm(diff, axis=0)
                    floor = n * eps * beta0[c] * fmax
                    estimates[:, c] = change / np.maximum(norm, np.finfo(float).tiny)
                    small = bool((change <= tol * norm + floor).all())
                    back = int(_LOOKBACK * (j + 1)) - 1
                    settled_at = theta_min[c, :back + 1]
                    settled_at = settled_at[np.isfinite(settled_at)]
                    settled = (settled_at.size > 0 and
                               abs(settled_at[-1] - ritz[0])
                               <= _RITZ_SETTLED * max(abs(ritz[0]), eps * abs(ritz[-1])))
                    done = small and prev_ok[c] and settled
                    prev_ok[c] = small
                prev[c] = coef
                if done or j + 1 == steps:
                    # y = ‖b‖ Q_k f(T_k) e₁ for every function: one GEMM per column
                    k1 = j + 1
                    result[:, :, c] = beta0[c] * (coef.T @ q[c, :k1])
                    if done:
                        converged[c] = True
                        active[c] = False
            if check and callback is not None:
                callback(j + 1, estimates.copy())
            bar.update(1, error=float(estimates[:, cols].max()) if np.isfinite(
                estimates[:, cols]).all() else float("inf"))
    finally:
        bar.close()

    # columns still active ran out of steps (their result was formed at the last step)
    seen = ritz_min <= ritz_max
    info = LanczosInfo(steps_done, estimates, bool(converged.all()), matmats,
                       time.perf_counter() - t_start, tol,
                       float(ritz_min) if seen else float("nan"),
                       float(ritz_max) if seen else float("nan"))
    if not info.converged:
        bad = np.flatnonzero(~converged)
        worst = int(bad[np.argmax(estimates[:, bad].max(axis=0))])
        msg = (f"lanczos_functions did not converge for {bad.size} of {m} column(s) in "
               f"steps={steps}: column {worst} has estimated relative error "
               f"{estimates[:, worst].max():.3e} (tol = {tol:.3e}); pass a larger steps (memory "
               f"8·n·steps bytes per column) or a larger shift, or, for t = ∞, solve with "
               f"block_cg")
        if policy == "raise":
            raise ConvergenceError(msg, residuals=estimates, info=info)
        warnings.warn(msg + "; returning the last approximation", RuntimeWarning, stacklevel=2)
    out = result[:, :, 0] if vector else result
    return out, info


def _evaluate(functions, lam):
    values = np.asarray(functions(lam), dtype=np.float64)
    if values.ndim == 1 and values.shape[0] == lam.shape[0]:
        values = values[:, None]  # one function
    if values.ndim != 2 or values.shape[0] != lam.shape[0] or values.shape[1] < 1:
        raise ValueError(f"functions must map an eigenvalue array of shape ({lam.shape[0]},) to "
                         f"an array of shape ({lam.shape[0]}, n_funcs), got shape "
                         f"{values.shape}")
    if not np.isfinite(values).all():
        raise FloatingPointError("functions returned NaN or Inf for eigenvalues in "
                                 f"[{lam.min():.6g}, {lam.max():.6g}]")
    return values


def _krylov_coefficients(functions, alpha, beta, n_funcs):
    """c = f(T) e₁ (k, n_funcs) for the tridiagonal T(alpha, beta), its Ritz values (ascending)
    and max |f| over them."""
    from scipy.linalg import eigh_tridiagonal

    if alpha.shape[0] == 1:
        ritz, s = alpha.copy(), np.ones((1, 1))
    else:
        ritz, s = eigh_tridiagonal(alpha, beta, check_finite=False)
    values = _evaluate(functions, ritz)
    if values.shape[1] != n_funcs:
        raise ValueError(f"functions returned {values.shape[1]} functions for {ritz.shape[0]} "
                         f"eigenvalues but {n_funcs} before; the number must not change")
    coef = s @ (values * s[0][:, None])
    return coef, ritz, float(np.abs(values).max(initial=0.0))


# ----------------------------------------------------------------------------------------------
# The functions of the gradient-flow dynamics.

class _Spectrum:
    """Stands in for a KernelSystem (eig, xp, null_tol) so that KernelSystem.time_factors --
    ntkfast.predict's own, numerically careful decay/growth -- is evaluated on Ritz values."""

    xp = np

    def __init__(self, mu):
        self.eig = (mu, None)
        self.null_tol = 0.0  # unused: τ = ∞ is refused (a solve, not a function of Ritz values)


class DynamicsFunctions:
    """λ ↦ [h(λ, τ₁) … h(λ, τ_T), g(λ, τ₁) … g(λ, τ_T)], an (len(λ), 2T) array, with

        h(λ, τ) = e^{−λ₊τ/scale}              (decay: train outputs y + h(K̃)(f₀ − y))
        g(λ, τ) = (1 − e^{−λ₊τ/scale})/λ₊     (growth, τ/scale at λ₊ = 0:
                                              test outputs f₀* + K*ᵀ g(K̃)(y − f₀))

    λ₊ = max(λ, 0), exactly as ntkfast.predict.gradient_descent_mse computes them
    (KernelSystem.time_factors: ``expm1``, the λ → 0 limit). Use :meth:`split` on the output of
    :func:`lanczos_functions` to get the (T, …) decay and growth parts.
    """

    def __init__(self, tau, scale):
        self.tau = tau
        self.scale = scale
        self.n_times = tau.shape[0]

    def __call__(self, lam):
        mu = np.asarray(lam, dtype=np.float64).reshape(-1)
        decay, _, growth = KernelSystem.time_factors(_Spectrum(mu), self.tau, self.scale)
        return np.concatenate([decay.T, growth.T], axis=1)

    def split(self, values):
        """(decay part, growth part) of a result with the functions on axis 0 (T each)."""
        values = np.asarray(values)
        if values.shape[0] != 2 * self.n_times:
            raise ValueError(f"values must have 2·{self.n_times} = {2 * self.n_times} functions "
                             f"on axis 0, got shape {values.shape}")
        return values[:self.n_times], values[self.n_times:]

    def __repr__(self):
        return f"DynamicsFunctions(n_times={self.n_times}, scale={self.scale:g})"


def dynamics_functions(times, scale):
    """The gradient-flow functions of ntkfast.predict for all times at once (see
    :class:`DynamicsFunctions`).

    Parameters
    ----------
    times : array of τ = learning_rate · t, each finite and ≥ 0
        t = ∞ is a solve, not a function of a Krylov space's Ritz values: use :func:`block_cg`
        (the limit g(λ) → 1/λ on a singular kernel needs its null space, which Lanczos does
        not resolve).
    scale : float
        > 0, the loss normalisation: N = y_train.size for neural-tangents' mean loss
        (loss_scale='mean'), 1 for the ½·sum loss.

    Returns
    -------
    DynamicsFunctions
        A callable λ (k,) -> (k, 2T) array for :func:`lanczos_functions`.
    """
    if isinstance(times, (str, bytes)) or times is None:
        raise TypeError(f"times must be an array of times τ ≥ 0, got {times!r}")
    try:
        tau = np.asarray(times, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"times must be an array of real numbers, got {times!r}") from None
    if tau.size == 0:
        raise ValueError("times is empty: pass at least one time")
    if np.isnan(tau).any() or (tau < 0).any():
        raise ValueError(f"times must be >= 0 and not NaN, got min {np.nanmin(tau)!r}"
                         if not np.isnan(tau).all() else "times must not be NaN")
    if np.isinf(tau).any():
        raise ValueError("times must be finite: t = ∞ is the solve (K + λI)⁻¹(y − f₀), use "
                         "block_cg for it")
    scale = real_scalar(scale, "scale", strictly_positive=True)
    return DynamicsFunctions(tau, scale)
